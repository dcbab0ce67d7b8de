//! `make bench` (concurrency): events/s of N tasks sharing one guard against N tasks making
//! the same store calls bare, on one store, measured in turn (the order alternating from
//! round to round), so that the ratio is paired. For each backend (memory, Redis,
//! PostgreSQL) and N from 1 to 64; for Redis and PostgreSQL at 1, 8 and 64 tasks also with
//! a CPU-bound neighbour process (a busy loop on one core) beside them, where the guard's
//! CPU per event shows.
//!
//! The bare sides ("raw"):
//! - memory: `MemoryStore::try_claim` then `complete`, called bare;
//! - Redis: the same two round trips on one shared multiplexed connection of the `redis`
//!   crate: `SET key value NX PX` and an `EVALSHA` completing it, with keys and values as
//!   long as the guard's;
//! - PostgreSQL: the store's own claim and completion statements sent with sqlx on the
//!   store's pool (the same pool size).
//!
//! Writes `target/criterion-latency/concurrency/results.json` for `benches/summary.py`
//! (the concurrency table, the scale curves and the targets). Knobs:
//! `BENCH_CONCURRENCY_SECS` (each measurement, default 0.5), `BENCH_CONCURRENCY_ROUNDS`
//! (default 7: short rounds, many, so that the machine's moments fall on both sides), `BENCH_CONCURRENCY_BACKENDS` (default `memory,redis,postgres`),
//! `BENCH_CONCURRENCY_TASKS` (some task counts only, e.g. `8,64`: printed, not written).
//! Without `--bench` (a `cargo test` of the benches) it runs one short round as a check.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventonce::{Guard, IdempotencyConfig, IdempotencyStore, Identity, MemoryStore};
use eventonce::{PostgresOptions, PostgresStore, RedisStore};
use serde_json::json;

/// The task counts of the scale curves.
const CURVE: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// The task counts measured with a neighbour too, and judged by the targets.
const TARGETED: [usize; 3] = [1, 8, 64];

/// The raw sides' values: as long as the guard's `p|<ms>|<owner token>`.
const RAW_CLAIMED: &str = "p|1764633600000|1a2b-0123456789abcdef-3c4d";
const RAW_COMPLETED: &str = "c|1764633600000|1a2b-0123456789abcdef-3c4d";
/// The raw side's owner token, as long as the guard's.
const RAW_OWNER: &str = "1a2b-0123456789abcdef-3c4d";

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}", nanos % (1 << 40))
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A busy loop on one core until killed: the neighbour process.
fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
}

/// The neighbour: this program again, spinning, killed when dropped.
struct Neighbour(Child);

impl Neighbour {
    fn start() -> Option<Neighbour> {
        let exe = std::env::current_exe().ok()?;
        let child = Command::new(exe)
            .arg("--busy-neighbour")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // Let it reach its loop.
        std::thread::sleep(Duration::from_millis(200));
        Some(Neighbour(child))
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Events per second of `tasks` tasks calling `one(n)` (n distinct per call) for `secs`.
fn measure<F, Fut>(rt: &tokio::runtime::Runtime, tasks: usize, secs: f64, one: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let one = Arc::new(one);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    rt.block_on(async {
        let mut handles = Vec::with_capacity(tasks);
        for _ in 0..tasks {
            let (one, done) = (Arc::clone(&one), Arc::clone(&done));
            handles.push(tokio::spawn(async move {
                while Instant::now() < until {
                    one(next()).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for h in handles {
            h.await.expect("a bench task panicked");
        }
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// One backend's two sides: what one raw event and one guarded event do.
struct Sides<R, G> {
    raw: R,
    guard: G,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `rounds` paired rounds at each task count of `counts`: per round the raw side and the
/// guard in turn (the order alternating), then the medians and each round's ratio.
fn rows<R, RF, G, GF>(
    rt: &tokio::runtime::Runtime,
    backend: &str,
    neighbour: bool,
    counts: &[usize],
    rounds: usize,
    secs: f64,
    sides: &Sides<R, G>,
) -> Vec<serde_json::Value>
where
    R: Fn(u64) -> RF + Clone + Send + Sync + 'static,
    RF: Future<Output = ()> + Send + 'static,
    G: Fn(u64) -> GF + Clone + Send + Sync + 'static,
    GF: Future<Output = ()> + Send + 'static,
{
    let _busy = if neighbour { Neighbour::start() } else { None };
    let mut out = Vec::new();
    for &tasks in counts {
        let (mut raw, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        // A short warm-up of both sides (connections, statements, script cache).
        let _ = measure(rt, tasks, secs / 10.0, sides.raw.clone());
        let _ = measure(rt, tasks, secs / 10.0, sides.guard.clone());
        for round in 0..rounds {
            let (r, g) = if round % 2 == 0 {
                let r = measure(rt, tasks, secs, sides.raw.clone());
                (r, measure(rt, tasks, secs, sides.guard.clone()))
            } else {
                let g = measure(rt, tasks, secs, sides.guard.clone());
                (measure(rt, tasks, secs, sides.raw.clone()), g)
            };
            raw.push(r);
            ours.push(g);
            ratios.push(g / r);
        }
        let row = json!({
            "backend": backend,
            "neighbour": neighbour,
            "tasks": tasks,
            "raw": raw.clone(),
            "guard": ours.clone(),
            "ratios": ratios.clone(),
            "raw_median": median(&mut raw),
            "guard_median": median(&mut ours),
            "ratio_median": median(&mut ratios),
        });
        println!(
            "concurrency {backend:<8} {:<14} {tasks:>2} tasks: raw {:>9.0} events/s, guard {:>9.0} events/s, ratio {:.2} (rounds {})",
            if neighbour { "with neighbour" } else { "quiet" },
            row["raw_median"].as_f64().unwrap_or_default(),
            row["guard_median"].as_f64().unwrap_or_default(),
            row["ratio_median"].as_f64().unwrap_or_default(),
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
        );
        out.push(row);
    }
    out
}

fn config(service: &str) -> IdempotencyConfig {
    IdempotencyConfig::builder(service)
        .default_ttl(Duration::from_secs(60))
        .build()
        .expect("config")
}

fn identity(n: u64) -> Identity {
    Identity::new("bench.concurrency.v1", n.to_string())
}

/// A key as long as the guard's, distinct per call.
fn raw_key(run: &str, n: u64, len: usize) -> String {
    let mut key = format!("bench:{run}:raw:{n}:");
    let pad = len.saturating_sub(key.len());
    key.extend(std::iter::repeat_n('x', pad));
    key
}

fn memory_sides() -> (Side, Side) {
    let store = MemoryStore::new();
    let guard = Guard::new(store.clone(), config("bench-concurrency-memory"));
    let run = run_id();
    let key_len = guard.key_for(&identity(0)).map_or(0, |k| k.len());
    let lease = Duration::from_secs(60);
    let ttl = Duration::from_secs(60);
    let raw_side: Side = Arc::new(move |n| {
        let (store, key) = (store.clone(), raw_key(&run, n, key_len));
        Box::pin(async move {
            let _ = store.try_claim(&key, RAW_OWNER, lease).await;
            let _ = store.complete(&key, RAW_OWNER, ttl).await;
        })
    });
    let guard_side = guard_side(guard);
    (raw_side, guard_side)
}

type Boxed = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
type Side = Arc<dyn Fn(u64) -> Boxed + Send + Sync>;

/// The guarded side: one new event through `guard`, its handler doing nothing.
fn guard_side(guard: Guard) -> Side {
    Arc::new(move |n| {
        let guard = guard.clone();
        Box::pin(async move {
            let _ = guard
                .run(&identity(n), async { Ok::<_, std::io::Error>(()) })
                .await;
        })
    })
}

async fn redis_sides(url: &str) -> Option<(Side, Side)> {
    let store = RedisStore::connect(url).await.ok()?;
    let raw = redis::Client::open(url)
        .ok()?
        .get_multiplexed_async_connection()
        .await
        .ok()?;
    let guard = Guard::new(store, config(&format!("bench-concurrency-{}", run_id())));
    let run = run_id();
    let key_len = guard.key_for(&identity(0)).map_or(0, |k| k.len());
    let complete = Arc::new(redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2]) and 1 end return 0",
    ));
    let raw_side: Side = Arc::new(move |n| {
        let mut raw = raw.clone();
        let key = raw_key(&run, n, key_len);
        let complete = Arc::clone(&complete);
        Box::pin(async move {
            let _: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(RAW_CLAIMED)
                .arg("NX")
                .arg("PX")
                .arg(60_000)
                .query_async(&mut raw)
                .await
                .expect("SET NX PX");
            let _: i64 = complete
                .key(&key)
                .arg(RAW_CLAIMED)
                .arg(60_000)
                .arg(RAW_COMPLETED)
                .invoke_async(&mut raw)
                .await
                .expect("EVALSHA");
        })
    });
    let guard_side = guard_side(guard);
    Some((raw_side, guard_side))
}

async fn postgres_sides(url: &str, schema: &str) -> Option<(Side, Side, PostgresStore)> {
    let store = PostgresStore::connect_with(url, PostgresOptions::default().schema(schema))
        .await
        .ok()?;
    let (claim, complete) = store.claim_and_complete_statements();
    let pool = store.pool().clone();
    let guard = Guard::new(store.clone(), config("bench-concurrency-postgres"));
    let run = run_id();
    let key_len = guard.key_for(&identity(0)).map_or(0, |k| k.len());
    let raw_side: Side = Arc::new(move |n| {
        let (pool, claim, complete) = (pool.clone(), Arc::clone(&claim), Arc::clone(&complete));
        let key = raw_key(&run, n, key_len);
        Box::pin(async move {
            let _: Option<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(claim))
                .bind(&key)
                .bind(RAW_OWNER)
                .bind(60_000.0_f64)
                .fetch_optional(&pool)
                .await
                .expect("claim statement");
            sqlx::query(sqlx::AssertSqlSafe(complete))
                .bind(&key)
                .bind(RAW_OWNER)
                .bind(60_000.0_f64)
                .execute(&pool)
                .await
                .expect("complete statement");
        })
    });
    let guard_side = guard_side(guard);
    Some((raw_side, guard_side, store))
}

/// Both sides of a backend measured quiet over `curve`, then with the neighbour over
/// `targeted` (when `neighbour`).
#[allow(
    clippy::too_many_arguments,
    reason = "the run's settings, passed through"
)]
fn backend_rows(
    rt: &tokio::runtime::Runtime,
    backend: &str,
    raw: &Side,
    guard: &Side,
    curve: &[usize],
    targeted: &[usize],
    neighbour: bool,
    rounds: usize,
    secs: f64,
) -> Vec<serde_json::Value> {
    let sides = Sides {
        raw: {
            let raw = Arc::clone(raw);
            move |n| raw(n)
        },
        guard: {
            let guard = Arc::clone(guard);
            move |n| guard(n)
        },
    };
    let mut out = rows(rt, backend, false, curve, rounds, secs, &sides);
    if neighbour {
        out.extend(rows(rt, backend, true, targeted, rounds, secs, &sides));
    }
    out
}

/// `BENCH_CONCURRENCY_PROFILE=<backend>:<raw|guard>:<tasks>`: that side alone for the
/// run's seconds (to run under `perf record`), its events/s printed.
fn profile(rt: &tokio::runtime::Runtime, only: &str, secs: f64) {
    let parts: Vec<&str> = only.split(':').collect();
    let [backend, side, tasks] = parts[..] else {
        eprintln!("BENCH_CONCURRENCY_PROFILE={only:?}: expected <backend>:<raw|guard>:<tasks>");
        return;
    };
    let Ok(tasks) = tasks.parse::<usize>() else {
        eprintln!("BENCH_CONCURRENCY_PROFILE={only:?}: {tasks:?} is not a task count");
        return;
    };
    let schema = format!("eventonce_bench_conc_{}", run_id());
    let sides = match backend {
        "memory" => Some(memory_sides()),
        "redis" => rt.block_on(redis_sides("redis://127.0.0.1:6379")),
        "postgres" => rt
            .block_on(postgres_sides(
                "postgres://postgres@127.0.0.1:5432/test",
                &schema,
            ))
            .map(|(raw, guard, _)| (raw, guard)),
        _ => None,
    };
    let Some((raw, guard)) = sides else {
        eprintln!("BENCH_CONCURRENCY_PROFILE={only:?}: no such backend, or it is not running");
        return;
    };
    if side == "guard" {
        // What each task moves and keeps per event (issue 26's profile: the move of this
        // future shows in the guard's CPU).
        let guard = Guard::new(MemoryStore::new(), config("bench-concurrency-size"));
        let event = identity(0);
        let run = guard.run(&event, async { Ok::<_, std::io::Error>(()) });
        println!(
            "the run future of Guard::run: {} bytes",
            std::mem::size_of_val(&run)
        );
    }
    let one = if side == "raw" { raw } else { guard };
    let eps = measure(rt, tasks, secs, move |n| one(n));
    println!("{backend} {side} {tasks} tasks: {eps:.0} events/s");
}

/// The task counts of the curve and of the neighbour's rows, and whether they were chosen
/// by `BENCH_CONCURRENCY_TASKS` (`64`, or `8,64`: only these, quiet and with the neighbour;
/// the results file is then not written, the table needs the whole curve).
fn task_counts(full: bool) -> (Vec<usize>, Vec<usize>, bool) {
    let only: Vec<usize> = std::env::var("BENCH_CONCURRENCY_TASKS")
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_default();
    if !only.is_empty() {
        (only.clone(), only, true)
    } else if full {
        (CURVE.to_vec(), TARGETED.to_vec(), false)
    } else {
        (vec![1, 8], vec![8], false)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--busy-neighbour") {
        spin();
    }
    let full = args.iter().any(|a| a == "--bench");
    let secs = if full {
        env_f64("BENCH_CONCURRENCY_SECS", 0.5)
    } else {
        0.05
    };
    let rounds = if full {
        env_f64("BENCH_CONCURRENCY_ROUNDS", 7.0).max(1.0) as usize
    } else {
        1
    };
    let (curve, targeted, only) = task_counts(full);
    let (curve, targeted) = (&curve[..], &targeted[..]);
    let backends = std::env::var("BENCH_CONCURRENCY_BACKENDS")
        .unwrap_or_else(|_| "memory,redis,postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(only) = std::env::var("BENCH_CONCURRENCY_PROFILE") {
        profile(&rt, &only, secs);
        return;
    }
    let mut rows_out = Vec::new();
    if backends.contains("memory") {
        let (raw, guard) = memory_sides();
        rows_out.extend(backend_rows(
            &rt, "memory", &raw, &guard, curve, targeted, false, rounds, secs,
        ));
    }
    if backends.contains("redis") {
        let url = std::env::var("EVENTONCE_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        match rt.block_on(redis_sides(&url)) {
            Some((raw, guard)) => rows_out.extend(backend_rows(
                &rt, "redis", &raw, &guard, curve, targeted, full, rounds, secs,
            )),
            None => eprintln!("concurrency: redis skipped, no Redis at {url}"),
        }
    }
    if backends.contains("postgres") {
        let url = std::env::var("EVENTONCE_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("eventonce_bench_conc_{}", run_id());
        match rt.block_on(postgres_sides(&url, &schema)) {
            Some((raw, guard, store)) => {
                rows_out.extend(backend_rows(
                    &rt, "postgres", &raw, &guard, curve, targeted, full, rounds, secs,
                ));
                let _ = rt.block_on(
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA \"{schema}\" CASCADE"
                    )))
                    .execute(store.pool()),
                );
            }
            None => eprintln!("concurrency: postgres skipped, no PostgreSQL at {url}"),
        }
    }
    if !full || only {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion-latency/concurrency");
    let _ = std::fs::create_dir_all(&dir);
    let doc = json!({
        "secs": secs,
        "rounds": rounds,
        "rows": rows_out,
    });
    let _ = std::fs::write(dir.join("results.json"), doc.to_string());
}
