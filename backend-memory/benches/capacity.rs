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
//! count of events slower than 5 ms (stalls), and events/s. The machine is shared: a
//! thread can be taken off its core in the middle of an event for longer than that, so
//! each stall is also split into the time its thread waited for a core (the `run_delay`
//! of `/proc/thread-self/schedstat`, read outside the timed part) and the rest, the event's
//! own time. `CAPACITY_PATH=store` times `MemoryStore`'s claim and completion called bare
//! instead of the guard (for profiling).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicU64, Ordering};
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
        }
    }
}

/// One task's latencies, in nanoseconds: events that found the store filling, and events
/// that found it full; and its stalls.
#[derive(Default)]
struct Samples {
    empty: Vec<u32>,
    full: Vec<u32>,
    /// Events slower than [`STALL`], each with the time its thread waited for a core
    /// meanwhile (`None` where that could not be read).
    stalls: Vec<(bool, Duration, Option<Duration>)>,
    /// The longest event once the time its thread waited for a core is taken out.
    longest_own: Duration,
}

thread_local! {
    /// This thread's `/proc/thread-self/schedstat`, opened on first use.
    static SCHEDSTAT: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// How long this thread has waited for a core since it started (the second field of
/// `/proc/thread-self/schedstat`); `None` where there is no such file.
fn waited() -> Option<Duration> {
    SCHEDSTAT.with(|cell| {
        let mut file = cell.borrow_mut();
        if file.is_none() {
            *file = File::open("/proc/thread-self/schedstat").ok();
        }
        let mut buf = [0u8; 96];
        let n = file.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let nanos = text.split_whitespace().nth(1)?.parse().ok()?;
        Some(Duration::from_nanos(nanos))
    })
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
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
            let claim = store.try_claim(&key, "owner", Duration::from_secs(300)).await;
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

/// A task's share of the run: events numbered from the shared counter until `events`.
async fn task(
    path: Path,
    guard: Guard,
    store: MemoryStore,
    next: &'static AtomicU64,
    events: u64,
    capacity: u64,
) -> Samples {
    let mut samples = Samples::default();
    let mut since_yield = 0;
    // The thread's wait read after the last event, while the task has not yielded since
    // (the task stays on its thread): the next event's starting point.
    let mut last = None;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= events {
            return samples;
        }
        let before = last.or_else(waited);
        let took = one(path, &guard, &store, n).await;
        let after = waited();
        last = after;
        let wait = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        samples.longest_own = samples
            .longest_own
            .max(took.saturating_sub(wait.unwrap_or_default()));
        if took > STALL {
            samples.stalls.push((n < capacity, took, wait));
        }
        if n < capacity {
            samples.empty.push(nanos(took));
        } else {
            samples.full.push(nanos(took));
        }
        since_yield += 1;
        if since_yield == YIELD_EVERY {
            since_yield = 0;
            last = None;
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

fn run(settings: &Settings, tasks: usize) -> Value {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, usize::from))
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryStore::with_capacity(settings.capacity);
    let config = IdempotencyConfig::builder("bench-capacity")
        .key_prefix("bench:capacity")
        .default_ttl(Duration::from_secs(86_400))
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config);
    // Leaked once per run: a task borrows it for the runtime's `'static`.
    let next: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let (events, capacity, path) = (settings.events, settings.capacity, settings.path);
    let start = Instant::now();
    let parts = runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (guard, store) = (guard.clone(), store.clone());
                tokio::spawn(task(path, guard, store, next, events, capacity))
            })
            .collect();
        let mut parts = Vec::with_capacity(tasks);
        for handle in handles {
            parts.push(handle.await.expect("task"));
        }
        parts
    });
    let seconds = start.elapsed().as_secs_f64();
    let stats = store.stats();
    let (mut empty, mut full, mut stalls) = (Vec::new(), Vec::new(), Vec::new());
    let mut longest_own = Duration::ZERO;
    for part in parts {
        empty.extend(part.empty);
        full.extend(part.full);
        stalls.extend(part.stalls);
        longest_own = longest_own.max(part.longest_own);
    }
    let stalls_empty = stalls.iter().filter(|s| s.0).count();
    let stalls_full = stalls.len() - stalls_empty;
    // A stall is the thread's own when it stays over the bound without the wait for a core.
    let own = |s: &&(bool, Duration, Option<Duration>)| {
        s.1.saturating_sub(s.2.unwrap_or_default()) > STALL
    };
    let stalls_own = stalls.iter().filter(own).count();
    let waited_ms: Vec<Value> = stalls
        .iter()
        .map(|s| {
            json!([
                s.1.as_secs_f64() * 1e3,
                s.2.map(|w| w.as_secs_f64() * 1e3)
            ])
        })
        .collect();
    empty.sort_unstable();
    full.sort_unstable();
    let (empty, full) = (summary(&empty), summary(&full));
    let ratio = full["p99_ns"].as_f64().unwrap_or(0.0) / empty["p99_ns"].as_f64().unwrap_or(1.0);
    let row = json!({
        "tasks": tasks,
        "events": events,
        "seconds": seconds,
        "events_per_s": events as f64 / seconds,
        "empty": empty,
        "full": full,
        "p99_ratio": ratio,
        "stalls": stalls.len(),
        "stalls_empty": stalls_empty,
        "stalls_full": stalls_full,
        "stalls_own": stalls_own,
        "stalls_ms_and_waited_ms": waited_ms,
        "longest_own_ns": longest_own.as_nanos() as u64,
        "records": stats.records,
        "evictions": stats.evictions,
        "refused_claims": stats.refused_claims,
    });
    print_row(&row);
    // The store's records are freed here, outside the timed part.
    drop((guard, store));
    drop(runtime);
    row
}

fn us(row: &Value, phase: &str, field: &str) -> String {
    format!("{:.1} us", row[phase][field].as_f64().unwrap_or(0.0) / 1000.0)
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
         {} full; {} still over 5 ms without the thread's wait for a core, longest event \
         without it {:.2} ms); {:.0} events/s over {:.1} s; {} records, {} evictions, {} \
         refused claims",
        row["tasks"],
        row["p99_ratio"].as_f64().unwrap_or(0.0),
        row["stalls"],
        row["stalls_empty"],
        row["stalls_full"],
        row["stalls_own"],
        row["longest_own_ns"].as_f64().unwrap_or(0.0) / 1e6,
        row["events_per_s"].as_f64().unwrap_or(0.0),
        row["seconds"].as_f64().unwrap_or(0.0),
        row["records"],
        row["evictions"],
        row["refused_claims"],
    );
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
        "capacity": settings.capacity,
        "events": settings.events,
        "stall_ns": STALL.as_nanos() as u64,
        "cores": std::thread::available_parallelism().map_or(0, usize::from),
        "runs": runs,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/criterion-latency")
        .join("memory");
    let file = dir.join("capacity.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, out.to_string())) {
        Ok(()) => println!("capacity: wrote {}", file.display()),
        Err(err) => eprintln!("capacity: could not write {}: {err}", file.display()),
    }
}
