//! `make sim`: a seeded simulation of the guard.
//!
//! Several consumers (guards) share one store, each through a fault injector the seed
//! drives: errors, answers past the store timeout, hangs, latency, batch calls reaching
//! part of the store, renewals failing, whole fault windows, crashes that take a
//! consumer's in-flight runs and its guard with them. Events arrive with duplicates and
//! are redelivered until their answers are final, through `run`, `run_batch`, deferred
//! completion and `CachedStore`, mixed. On the memory store the run is on Tokio's paused
//! clock, so a seed takes milliseconds and replays exactly.
//!
//! An oracle logs every handler run and checks, for every seed:
//!
//! - P1 no second run of an event under protection, unless the first run's consumer
//!   crashed after its effect, or the first run's claim lapsed after a fault of at least
//!   half the lease on its consumer (fail-open runs may repeat; they are counted);
//! - P2 no handler starts on a claim that is no longer held;
//! - P3 no `Duplicate` for an event that never ran;
//! - P4 once the faults stop and deliveries are retried until their answers are final,
//!   every event was processed and is recorded completed, none of them unprotected;
//! - P5 every delivery answers (every store call is bounded);
//! - P6 no key outside the service's namespace;
//! - P7 no panic but the handlers' own;
//! - P8 every answer is borne out by the handler runs (`Processed` carries a protected
//!   run's effect, `Unprotected` an unprotected one's);
//! - P9 one delivery runs an event's handler at most once;
//! - P10 (memory seeds, `hostile.rs`) event types of every length and records of another
//!   kind at an event's key, which the store refuses as data: such an event is answered
//!   `InvalidEvent` and never runs, every other event runs once, nothing runs unprotected
//!   and the circuit breaker never opens;
//! - P11 (the `stored` seeds: every delivery through `run_stored` or `run_batch_stored`)
//!   a `Replayed` answer carries the value of a protected run of that same event with an
//!   effect, and a completion of that run's own claim reached the store with exactly that
//!   value (through every path a result travels: a completion written at once, deferred
//!   and carried by a claim, retried after a fault, settled by a dropped run, a batch's).
//!
//! A fifth of the memory seeds run on a small store (a capacity of 4 to 16 records, below
//! their events; completed records kept a few leases; more and longer handlers): P1 also
//! allows a second run once the first's completed record has expired, or when the store
//! counted an eviction of a completed record (a late duplicate of an evicted event runs
//! again, as documented), never when a live claim was lost; a claim the full store refuses
//! is a store error (the fail mode applies: `Unprotected` or `Store`); P4 accepts an event
//! whose completed record expired or was evicted by the end.
//!
//! The identity model (`identity.rs`, `SIM_STORE=identity`) checks, over generated
//! payloads built to collide: PK1 different events never share a key, PK2 the same event
//! always gets the same key, PK3 each distinct event's handler runs once.
//!
//! docs/guarantees.md names, for each guarantee, the properties that check it.
//!
//! Knobs: `SIM_SEEDS` (memory seeds, default 5,000), `SIM_STORED_SEEDS` (the `stored`
//! seeds, on the memory store, default 1,000), `SIM_FIRST` (first seed, default 0), `SIM_REAL_SEEDS` (seeds on Redis and on PostgreSQL, default 8, with the `redis` and
//! `postgres` features), `SIM_STORE` (`memory,stored,identity,redis,postgres`), `SIM_SEED=<n>`
//! (replay one seed, with its trace; `SIM_STORE=identity` or `stored` for those), `SIM_TRACE=1`, `SIM_LOG=1` (the guard's warnings in the
//! trace), `SIM_THREADS`.

mod faulty;
mod hostile;
mod identity;
mod oracle;
mod plan;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod real;
mod rng;
mod world;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventonce::{IdempotencyStore, MemoryStore};

use crate::plan::Params;
use crate::world::{Report, Stats};

thread_local! {
    /// Panics on this thread other than the handlers' deliberate ones.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<world::SimPanic>().is_some() {
            return;
        }
        PANICS.with(|p| p.borrow_mut().push(info.to_string()));
        default(info);
    }));
}

/// This thread's unexpected panics since the last call, as violations.
fn take_panics() -> Vec<String> {
    PANICS
        .with(|p| std::mem::take(&mut *p.borrow_mut()))
        .into_iter()
        .map(|p| format!("P7 panic: {p}"))
        .collect()
}

/// The run's settings, read from the environment: `SIM_SEED` (replay one seed, traced, on
/// the memory store unless `SIM_STORE` says otherwise), `SIM_SEEDS` and `SIM_FIRST` (how
/// many seeds, from which), `SIM_REAL_SEEDS` (seeds on the real servers), `SIM_STORE` (a
/// comma-separated list of stores), `SIM_TRACE=1` and `SIM_THREADS`.
pub struct Env {
    seed: Option<u64>,
    seeds: u64,
    stored_seeds: u64,
    first: u64,
    real_seeds: u64,
    stores: Vec<String>,
    trace: bool,
    threads: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

impl Env {
    fn read() -> Env {
        let seed = env_u64("SIM_SEED");
        Env {
            seed,
            seeds: env_u64("SIM_SEEDS").unwrap_or(5_000),
            stored_seeds: env_u64("SIM_STORED_SEEDS").unwrap_or(1_000),
            first: env_u64("SIM_FIRST").unwrap_or(0),
            real_seeds: env_u64("SIM_REAL_SEEDS").unwrap_or(8),
            stores: std::env::var("SIM_STORE")
                .unwrap_or_else(|_| {
                    if seed.is_some() {
                        "memory".into()
                    } else {
                        "memory,stored,identity,redis,postgres".into()
                    }
                })
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect(),
            trace: seed.is_some() || std::env::var("SIM_TRACE").is_ok_and(|v| v == "1"),
            threads: env_u64("SIM_THREADS").map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get().min(2)),
                |n| n.max(1) as usize,
            ),
        }
    }

    fn runs(&self, store: &str) -> bool {
        self.stores.iter().any(|s| s == store)
    }

    /// The seeds to run on a store: the replayed one, or `count` from `SIM_FIRST`.
    fn seeds(&self, count: u64) -> Vec<u64> {
        match self.seed {
            Some(seed) => vec![seed],
            None => (self.first..self.first + count).collect(),
        }
    }
}

/// Whether the test harness' arguments filter this test out (`cargo test some_name`).
fn filtered_out(args: &[String]) -> bool {
    let mut free = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if arg.starts_with('-') {
            skip_value = !arg.contains('=')
                && matches!(
                    arg.as_str(),
                    "--test-threads" | "--skip" | "--color" | "--format" | "--logfile" | "-Z"
                );
        } else {
            free.push(arg.as_str());
        }
    }
    !free.is_empty() && !free.iter().any(|f| "sim".contains(f) || f.contains("sim"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("sim: test");
        return;
    }
    if filtered_out(&args) {
        return;
    }
    install_panic_hook();
    if std::env::var("SIM_LOG").is_ok_and(|v| v == "1") {
        // The guard's warnings and errors, in the trace of a replayed seed.
        tracing_subscriber::fmt()
            .with_writer(|| world::LogWriter)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_max_level(tracing::Level::WARN)
            .init();
    }
    let env = Env::read();
    // The real stores' seeds mostly wait on their clock: they run beside the memory seeds.
    let results = std::thread::scope(|s| {
        #[cfg(any(feature = "redis", feature = "postgres"))]
        let real = s.spawn(|| real::run(&env));
        let mut results = Vec::new();
        if env.runs("memory") {
            results.push(run_memory(&env, "memory", env.seeds));
        }
        if env.runs("stored") {
            results.push(run_memory(&env, "stored", env.stored_seeds));
        }
        if env.runs("identity") {
            results.push(identity::run(&env));
        }
        #[cfg(any(feature = "redis", feature = "postgres"))]
        results.extend(real.join().expect("the real stores' simulation"));
        results
    });
    let mut passed = 0;
    let mut failed = 0;
    for (ok, output) in results {
        print!("{output}");
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("sim: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// The memory seeds (`kind` "memory"), or the `stored` seeds, whose deliveries keep their
/// handlers' answers.
fn run_memory(env: &Env, kind: &str, count: u64) -> (bool, String) {
    let seeds = env.seeds(count);
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..env.threads.clamp(1, seeds.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else {
                    break;
                };
                let report = memory_seed(seed, env.trace, kind == "stored");
                reports
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(report);
            });
        }
    });
    let mut reports = reports
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    reports.sort_by_key(|r| r.seed);
    summarize(kind, &reports, started.elapsed(), |seed| match kind {
        "memory" => format!("SIM_SEED={seed} make sim"),
        _ => format!("SIM_SEED={seed} SIM_STORE={kind} make sim"),
    })
}

/// One seed on a fresh `MemoryStore`, on a paused clock; `stored`: every delivery keeps
/// its handler's answer.
fn memory_seed(seed: u64, trace: bool, stored: bool) -> Report {
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let params = if stored {
            Params::stored()
        } else {
            Params::memory()
        };
        let capacity = plan::draw_store(seed, &params).capacity;
        let memory = MemoryStore::with_capacity(capacity.unwrap_or(100_000));
        let store: Arc<dyn IdempotencyStore> = Arc::new(memory.clone());
        let mut report = runtime.block_on(world::simulate(
            seed,
            params,
            store,
            Some(memory),
            "sim".into(),
            trace,
        ));
        if !stored {
            report
                .violations
                .extend(runtime.block_on(hostile::check(seed)));
        }
        report
    }));
    let mut report = run.unwrap_or_else(|_| Report {
        seed,
        violations: vec!["P7 the simulation itself panicked".into()],
        stats: Stats::default(),
        plan: String::new(),
        trace: Vec::new(),
    });
    report.violations.extend(take_panics());
    report
}

/// Whether every seed passed, and what to print: the failing seeds (at most a few in
/// full), the properties they broke, and the summary line.
pub fn summarize(
    store: &str,
    reports: &[Report],
    elapsed: Duration,
    replay: impl Fn(u64) -> String,
) -> (bool, String) {
    let mut out = String::new();
    let mut total = Stats::default();
    for r in reports {
        total.add(&r.stats);
        if r.violations.is_empty() && !r.trace.is_empty() {
            // A replayed seed that passes: its plan and trace all the same.
            let _ = writeln!(out, "sim[{store}]: seed {} passed:", r.seed);
            let _ = write!(out, "{}", r.plan);
            for line in &r.trace {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    let failing: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    for r in failing.iter().take(3) {
        let _ = writeln!(
            out,
            "sim[{store}]: seed {} FAILED, {} violation(s):",
            r.seed,
            r.violations.len()
        );
        for v in r.violations.iter().take(10) {
            let _ = writeln!(out, "  {v}");
        }
        let _ = write!(out, "{}", r.plan);
        for line in &r.trace {
            let _ = writeln!(out, "    {line}");
        }
        let _ = writeln!(out, "  replay: {}", replay(r.seed));
    }
    if !failing.is_empty() {
        let _ = writeln!(
            out,
            "sim[{store}]: {} failing seeds: {}",
            failing.len(),
            broken_properties(&failing)
        );
    }
    let t = &total;
    let replays = if store == "stored" {
        format!(", {} replayed answers", t.replays)
    } else {
        String::new()
    };
    let _ = writeln!(
            out,
        "sim[{store}]: {} seeds ({} on a small store), {} deliveries, {} handler runs ({} unprotected), {} effects; second runs allowed: {} fail-open, {} crash after the effect, {} lease lost to a fault, {} completion lost to a fault, {} after the TTL, {} after an eviction; {} evictions, {} refused claims; {} faulted calls, {} crashes, {} dropped deliveries, {} completions retried, {} abandoned, {} claims lost{replays}; {} failed, in {:.1} s",
        reports.len(),
        t.small_stores,
        t.deliveries,
        t.runs,
        t.unprotected_runs,
        t.effects,
        t.reruns_unprotected,
        t.reruns_crash,
        t.reruns_lease_lost,
        t.reruns_completion_lost,
        t.reruns_expired,
        t.reruns_evicted,
        t.evictions,
        t.refused_claims,
        t.faulted_calls,
        t.crashes,
        t.cancels,
        t.completions_retried,
        t.completions_abandoned,
        t.claims_lost,
        failing.len(),
        elapsed.as_secs_f64()
    );
    (failing.is_empty(), out)
}

/// Each property the failing seeds broke: how many seeds, and the first few.
fn broken_properties(failing: &[&Report]) -> String {
    let mut by_property: Vec<(String, usize, Vec<u64>)> = Vec::new();
    for r in failing {
        let mut seen: Vec<&str> = r
            .violations
            .iter()
            .filter_map(|v| v.split_whitespace().find(|w| w.starts_with('P')))
            .collect();
        seen.sort();
        seen.dedup();
        for p in seen {
            match by_property.iter_mut().find(|(q, _, _)| q == p) {
                Some((_, n, seeds)) => {
                    *n += 1;
                    if seeds.len() < 5 {
                        seeds.push(r.seed);
                    }
                }
                None => by_property.push((p.to_owned(), 1, vec![r.seed])),
            }
        }
    }
    by_property.sort();
    let properties: Vec<String> = by_property
        .iter()
        .map(|(p, n, seeds)| format!("{p} in {n} (seeds {seeds:?})"))
        .collect();
    properties.join(", ")
}
