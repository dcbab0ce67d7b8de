//! `MemoryStore` at its capacity: new events, each claimed and completed through a `Guard`
//! (a handler that does nothing), pushed through a store whose capacity is reached early,
//! every event's latency recorded. `make bench` runs it; `benches/summary.py` reads what it
//! writes.
//!
//! Each run sends `CAPACITY_EVENTS` (default 10,000,000) new events through one store of
//! `CAPACITY_RECORDS` (default 1,000,000) records, on `CAPACITY_TASKS` (default `1,2,8`)
//! concurrent tasks of a multi-thread Tokio runtime with one worker per core. The first
//! capacity's worth of events fill the store ("empty"); every later one finds the store
//! full and makes room by evicting the least recently used completed record ("at
//! capacity"), on the caller's thread. A task yields to the runtime every 64 events, as a
//! consumer reading from a queue would, outside the timed part.
//!
//! Printed and written to `target/criterion-latency/memory/capacity.json`: per run, the
//! p50/p99/p99.9/max latency of a new event while the store fills and once it is full, the
//! count of events slower than 5 ms (stalls), events/s, and the resident memory per record
//! when the store first became full.
//!
//! The machine is shared: a thread can be taken off its core in the middle of an event for
//! longer than 5 ms, and so can a thread holding a lock another event waits for. So each
//! event is also given the time the runtime's worker threads waited for a core while it
//! ran, summed over the workers (the `run_delay` of each worker's `/proc/<tid>/schedstat`,
//! read outside the timed part), and a stall still over 5 ms without that wait is counted
//! apart: the event's own time, which is what the store's work on the caller's thread can
//! cost. The time the virtual machine's cores were stolen by its host during the run
//! (`steal` in `/proc/stat`) is reported beside it: the guest sees none of it as waiting.
//! `CAPACITY_PATH=store` times `MemoryStore`'s claim and completion called bare instead of
//! the guard, and `CAPACITY_BREAKER=off` turns the guard's circuit breaker off (one lock
//! the tasks share at every store call), both for profiling.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventonce_core::{Claim, EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore};
use eventonce_memory::MemoryStore;
use serde_json::{json, Value};

/// An event slower than this is a stall.
const STALL: Duration = Duration::from_millis(5);

/// Events a task runs between two yields to the runtime.
const YIELD_EVERY: u64 = 64;

/// What one run measures: the guard's new event, or the store's claim and completion.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Guard,
    Store,
}

struct Settings {
    events: u64,
    capacity: u64,
    tasks: Vec<usize>,
    path: Path,
    breaker: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.replace(['_', ','], "").parse().ok())
                .unwrap_or(default)
        };
        // `cargo test --benches` runs a bench once to check it: a small run.
        let quick = std::env::args().any(|a| a == "--test");
        let (events, capacity) = if quick {
            (20_000, 2_000)
        } else {
            (
                number("CAPACITY_EVENTS", 10_000_000),
                number("CAPACITY_RECORDS", 1_000_000),
            )
        };
        let tasks = std::env::var("CAPACITY_TASKS")
            .ok()
            .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
            .filter(|t: &Vec<usize>| !t.is_empty() && !t.contains(&0))
            .unwrap_or_else(|| vec![1, 2, 8]);
        let path = match std::env::var("CAPACITY_PATH").as_deref() {
            Ok("store") => Path::Store,
            _ => Path::Guard,
        };
        Settings {
            events,
            capacity,
            tasks,
            path,
            breaker: std::env::var("CAPACITY_BREAKER").as_deref() != Ok("off"),
        }
    }
}

/// The `schedstat` files of a runtime's worker threads, each opened on its thread.
#[derive(Default)]
struct Workers {
    files: Vec<File>,
}

impl Workers {
    /// Each worker's time on a core and time waiting for one so far (the first two fields
    /// of its `schedstat`; the first is brought up to date at each tick, 4 ms here, and
    /// leaves out time the host took the core, where the kernel accounts steal). Empty
    /// where there is no such file.
    fn read(&self, out: &mut Vec<[Duration; 2]>) {
        out.clear();
        for file in &self.files {
            let mut buf = [0u8; 96];
            let Ok(n) = file.read_at(&mut buf, 0) else {
                continue;
            };
            let text = std::str::from_utf8(&buf[..n]).unwrap_or("");
            let mut fields = text
                .split_whitespace()
                .map(|f| Duration::from_nanos(f.parse().unwrap_or(0)));
            let ran = fields.next().unwrap_or_default();
            out.push([ran, fields.next().unwrap_or_default()]);
        }
    }

    /// The time the workers ran and the time they waited for a core between two readings,
    /// each summed over the workers: an event waits for its own thread and for a thread
    /// holding a lock it needs, one after the other.
    fn between(before: &[[Duration; 2]], after: &[[Duration; 2]]) -> [Duration; 2] {
        let mut sum = [Duration::ZERO; 2];
        for (b, a) in before.iter().zip(after) {
            for i in 0..2 {
                sum[i] += a[i].saturating_sub(b[i]);
            }
        }
        sum
    }
}

/// One task's latencies, in nanoseconds: events that found the store filling, and events
/// that found it full; and its stalls.
#[derive(Default)]
struct Samples {
    empty: Vec<u32>,
    full: Vec<u32>,
    /// Events slower than [`STALL`]: the event's number, its time, the time the workers
    /// waited for a core meanwhile and the time they ran.
    stalls: Vec<(u64, Duration, Duration, Duration)>,
    /// The longest event once that wait is taken out.
    longest_own: Duration,
    /// Resident bytes when the first event found the store full (the task that ran it).
    resident_at_full: Option<u64>,
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// The time this machine's cores were stolen by its host so far (the `steal` column of
/// `/proc/stat`, in clock ticks of 10 ms), where Linux reports it.
fn stolen() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The resident memory of this process, in bytes, where Linux reports it.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn event(n: u64) -> EventEnvelope {
    EventEnvelope::new("bench.capacity.v1", json!({ "n": n, "lines": [1, 2, 3] }))
        .with_event_id(format!("cap-{n}"))
}

/// One new event, timed: through the guard, or the store's own claim and completion.
async fn one(path: Path, guard: &Guard, store: &MemoryStore, n: u64) -> Duration {
    match path {
        Path::Guard => {
            let e = event(n);
            let t = Instant::now();
            let out = guard.run(&e, async { Ok::<_, String>(()) }).await;
            let took = t.elapsed();
            assert!(matches!(out, Ok(ref o) if !o.is_duplicate()), "event {n}");
            took
        }
        Path::Store => {
            let key = format!("bench:capacity:svc:t:{n:032x}");
            let t = Instant::now();
            let claim = store
                .try_claim(&key, "owner", Duration::from_secs(300))
                .await;
            let done = store
                .complete(&key, "owner", Duration::from_secs(86_400))
                .await;
            let took = t.elapsed();
            assert_eq!(claim.ok(), Some(Claim::Acquired), "event {n}");
            assert_eq!(done.ok(), Some(true), "event {n}");
            took
        }
    }
}

/// What a run's tasks share.
struct Shared {
    path: Path,
    guard: Guard,
    store: MemoryStore,
    next: AtomicU64,
    events: u64,
    capacity: u64,
    workers: Arc<Workers>,
}

/// A task's share of the run: events numbered from the shared counter until `events`.
async fn task(shared: Arc<Shared>) -> Samples {
    let mut samples = Samples::default();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut since_yield = 0;
    // The workers' waits read after the last event, while the task has not yielded since:
    // the next event's starting point.
    let mut fresh = false;
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if n >= shared.events {
            return samples;
        }
        if n == shared.capacity {
            samples.resident_at_full = resident_bytes();
        }
        if !fresh {
            shared.workers.read(&mut before);
        }
        let took = one(shared.path, &shared.guard, &shared.store, n).await;
        shared.workers.read(&mut after);
        let [ran, wait] = Workers::between(&before, &after);
        std::mem::swap(&mut before, &mut after);
        fresh = true;
        samples.longest_own = samples.longest_own.max(took.saturating_sub(wait));
        if took > STALL {
            samples.stalls.push((n, took, wait, ran));
        }
        if n < shared.capacity {
            samples.empty.push(nanos(took));
        } else {
            samples.full.push(nanos(took));
        }
        since_yield += 1;
        if since_yield == YIELD_EVERY {
            since_yield = 0;
            fresh = false;
            tokio::task::yield_now().await;
        }
    }
}

/// p50, p99, p99.9 and max of `sorted` (ascending), in nanoseconds.
fn summary(sorted: &[u32]) -> Value {
    let at = |q: f64| {
        if sorted.is_empty() {
            return 0;
        }
        let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
        sorted[i]
    };
    json!({
        "count": sorted.len(),
        "p50_ns": at(0.50),
        "p99_ns": at(0.99),
        "p999_ns": at(0.999),
        "max_ns": sorted.last().copied().unwrap_or(0),
    })
}

/// A multi-thread runtime with one worker per core, and its workers' `schedstat` files.
fn runtime() -> (tokio::runtime::Runtime, Arc<Workers>) {
    let count = std::thread::available_parallelism().map_or(2, usize::from);
    let opened: Arc<Mutex<Vec<File>>> = Arc::default();
    let register = Arc::clone(&opened);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(count)
        .on_thread_start(move || {
            if let Ok(file) = File::open("/proc/thread-self/schedstat") {
                register.lock().expect("workers").push(file);
            }
        })
        .enable_all()
        .build()
        .expect("runtime");
    // The workers start as the runtime is built; wait for them to register (a second at
    // most: without schedstat files there is nothing to wait for).
    let deadline = Instant::now() + Duration::from_secs(1);
    while opened.lock().expect("workers").len() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let files = std::mem::take(&mut *opened.lock().expect("workers"));
    (runtime, Arc::new(Workers { files }))
}

fn run(settings: &Settings, tasks: usize) -> Value {
    let (runtime, workers) = runtime();
    let store = MemoryStore::with_capacity(settings.capacity);
    let mut config = IdempotencyConfig::builder("bench-capacity")
        .key_prefix("bench:capacity")
        .default_ttl(Duration::from_secs(86_400));
    if !settings.breaker {
        config = config.circuit_breaker(0, Duration::from_secs(1));
    }
    let config = config.build().expect("config");
    let guard = Guard::new(store.clone(), config);
    let shared = Arc::new(Shared {
        path: settings.path,
        guard,
        store: store.clone(),
        next: AtomicU64::new(0),
        events: settings.events,
        capacity: settings.capacity,
        workers,
    });
    let resident_before = resident_bytes();
    let stolen_before = stolen();
    let start = Instant::now();
    let parts = runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| tokio::spawn(task(Arc::clone(&shared))))
            .collect();
        let mut parts = Vec::with_capacity(tasks);
        for handle in handles {
            parts.push(handle.await.expect("task"));
        }
        parts
    });
    let seconds = start.elapsed().as_secs_f64();
    let stolen_ms = stolen_before
        .zip(stolen())
        .map(|(b, a)| a.saturating_sub(b).as_secs_f64() * 1e3);
    let mut row = measured(parts, settings.capacity);
    let stats = store.stats();
    let per_record = resident_before
        .zip(row["resident_at_full"].as_u64())
        .map(|(b, a)| a.saturating_sub(b) as f64 / settings.capacity as f64);
    let more = json!({
        "tasks": tasks,
        "events": settings.events,
        "seconds": seconds,
        "events_per_s": settings.events as f64 / seconds,
        "resident_bytes_per_record": per_record,
        "stolen_ms": stolen_ms,
        "records": stats.records,
        "evictions": stats.evictions,
        "refused_claims": stats.refused_claims,
    });
    if let (Some(row), Value::Object(more)) = (row.as_object_mut(), more) {
        row.extend(more);
    }
    print_row(&row);
    // The store's records are freed here, outside the timed part.
    drop((shared, store));
    drop(runtime);
    row
}

/// The tasks' samples as a row: latencies while the store filled and once it was full,
/// and the stalls.
fn measured(parts: Vec<Samples>, capacity: u64) -> Value {
    let (mut empty, mut full, mut stalls) = (Vec::new(), Vec::new(), Vec::new());
    let (mut longest_own, mut resident_at_full) = (Duration::ZERO, None);
    for part in parts {
        empty.extend(part.empty);
        full.extend(part.full);
        stalls.extend(part.stalls);
        longest_own = longest_own.max(part.longest_own);
        resident_at_full = resident_at_full.or(part.resident_at_full);
    }
    let stalls_empty = stalls.iter().filter(|s| s.0 < capacity).count();
    // A stall is the event's own when it stays over the bound without the wait for a core.
    let stalls_own = stalls
        .iter()
        .filter(|s| s.1.saturating_sub(s.2) > STALL)
        .count();
    let stalls_ms: Vec<Value> = stalls
        .iter()
        .map(|s| {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            json!([s.0, ms(s.1), ms(s.2), ms(s.3)])
        })
        .collect();
    empty.sort_unstable();
    full.sort_unstable();
    let (empty, full) = (summary(&empty), summary(&full));
    let ratio = full["p99_ns"].as_f64().unwrap_or(0.0) / empty["p99_ns"].as_f64().unwrap_or(1.0);
    json!({
        "empty": empty,
        "full": full,
        "p99_ratio": ratio,
        "stalls": stalls.len(),
        "stalls_empty": stalls_empty,
        "stalls_full": stalls.len() - stalls_empty,
        "stalls_own": stalls_own,
        "stalls_event_ms_wait_ms_ran_ms": stalls_ms,
        "longest_own_ns": longest_own.as_nanos() as u64,
        "resident_at_full": resident_at_full,
    })
}

fn us(row: &Value, phase: &str, field: &str) -> String {
    format!(
        "{:.1} us",
        row[phase][field].as_f64().unwrap_or(0.0) / 1000.0
    )
}

fn print_row(row: &Value) {
    for phase in ["empty", "full"] {
        println!(
            "capacity: {} task(s), {:<5} {:>9} events: p50 {:>9} p99 {:>9} p99.9 {:>9} max {:>10}",
            row["tasks"],
            phase,
            row[phase]["count"],
            us(row, phase, "p50_ns"),
            us(row, phase, "p99_ns"),
            us(row, phase, "p999_ns"),
            us(row, phase, "max_ns"),
        );
    }
    println!(
        "capacity: {} task(s): p99 at capacity / empty {:.2}x; stalls over 5 ms: {} ({} filling, \
         {} full), {} of them over 5 ms without the workers' wait for a core (longest event \
         without it {:.2} ms); cores stolen by the host {:.0} ms; {:.0} events/s over {:.1} s; \
         {:.0} resident bytes per record (a process's first run only); {} records, {} \
         evictions, {} refused claims",
        row["tasks"],
        row["p99_ratio"].as_f64().unwrap_or(0.0),
        row["stalls"],
        row["stalls_empty"],
        row["stalls_full"],
        row["stalls_own"],
        row["longest_own_ns"].as_f64().unwrap_or(0.0) / 1e6,
        row["stolen_ms"].as_f64().unwrap_or(0.0),
        row["events_per_s"].as_f64().unwrap_or(0.0),
        row["seconds"].as_f64().unwrap_or(0.0),
        row["resident_bytes_per_record"].as_f64().unwrap_or(0.0),
        row["records"],
        row["evictions"],
        row["refused_claims"],
    );
}

/// Where the JSON goes: `target/criterion-latency/memory/` of the workspace, where
/// `benches/summary.py` reads the guard bench's files.
fn out_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion-latency/memory")
}

fn main() {
    let settings = Settings::from_env();
    let path = match settings.path {
        Path::Guard => "Guard::run",
        Path::Store => "MemoryStore try_claim + complete",
    };
    println!(
        "capacity: {} new events per run through {path} on MemoryStore::with_capacity({}), \
         tasks {:?}",
        settings.events, settings.capacity, settings.tasks
    );
    let runs: Vec<Value> = settings
        .tasks
        .iter()
        .map(|&tasks| run(&settings, tasks))
        .collect();
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    let out = json!({
        "path": path,
        "breaker": settings.breaker,
        "capacity": settings.capacity,
        "events": settings.events,
        "stall_ns": STALL.as_nanos() as u64,
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "runs": runs,
    });
    let dir = out_dir();
    let file = dir.join("capacity.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, out.to_string())) {
        Ok(()) => println!("capacity: wrote target/criterion-latency/memory/capacity.json"),
        Err(err) => eprintln!("capacity: could not write {}: {err}", file.display()),
    }
}
