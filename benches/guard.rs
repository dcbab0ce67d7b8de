//! What a guarded event costs, side by side with the floor it stands on: the same work
//! done with the raw client. `make bench` runs it and prints medians, p50/p99 per event and
//! ratios (`benches/summary.py`, also written to `benches/RESULTS.md`).
//!
//! Groups: `memory` (`MemoryStore`'s claim and completion called bare vs through `Guard`;
//! the `idempotent` crate's memory store), `redis` (raw
//! `SET NX PX`; `SET NX PX` + an `EVALSHA` completion; one `EVALSHA` claiming 100 keys;
//! one script claiming a batch of 100 or 1,000 keys and one completing them, paired with
//! the guard's batches of the same sizes;
//! the guard's new events, duplicates, failures, deferred completion, cached duplicates,
//! batches of 10/100/1000, and `FailMode::Open` with its Redis down), `postgres` (raw
//! `INSERT ... ON CONFLICT`; the guard's new events, duplicates, deferred completion and
//! a batch of 100). A group whose server is not reachable is skipped with a message.
//!
//! Peers, doing the same work for one event: the `idempotent` crate on its in-memory store
//! (memory group) and its Redis store (redis group), in `peers/idempotent_crate.rs`. The
//! Python peers run apart, in `make bench-peers` (`benches/peers.py`).
//!
//! Besides criterion's medians, every row is timed once more event by event (or batch by
//! batch) for its p50 and p99, written under `target/criterion-latency/`, and the Redis
//! memory of a completed key is compared with a bare key of the same name.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use eventonce::IdempotencyStore as _;
use eventonce::{
    CachedStore, EventEnvelope, FailMode, Guard, IdempotencyConfig, MemoryStore, PostgresOptions,
    PostgresStore, RedisStore,
};
use serde_json::json;

#[path = "peers/idempotent_crate.rs"]
mod idempotent_crate;

static N: AtomicU64 = AtomicU64::new(0);

fn unique() -> u64 {
    N.fetch_add(1, Ordering::Relaxed)
}

fn event(n: u64) -> EventEnvelope {
    EventEnvelope::new(
        "bench.order.placed.v1",
        json!({"order": n, "lines": [1, 2, 3]}),
    )
    .with_event_id(format!("bench-{n}"))
}

fn batch(size: usize) -> Vec<EventEnvelope> {
    (0..size).map(|_| event(unique())).collect()
}

fn run_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    )
}

fn config(service: &str) -> eventonce::ConfigBuilder {
    IdempotencyConfig::builder(service).key_prefix("huleedu:idempotency:bench")
}

fn guard_on<S: eventonce::IdempotencyStore + 'static>(
    store: S,
    builder: eventonce::ConfigBuilder,
) -> Guard {
    Guard::new(store, builder.build().expect("config"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Whether criterion runs `group/name` in this invocation: no latency pass for a row the
/// command line filtered out (a substring match of criterion's positional filter), nor
/// under `--profile-time`, nor in `cargo test`'s quick check of the bench.
fn selected(group: &str, name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--profile-time" || a == "--test" || a == "--list")
    {
        return false;
    }
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--noise-threshold",
        "--significance-level",
        "--confidence-level",
        "--nresamples",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--format",
    ];
    let mut filter = None;
    let mut skip = false;
    for a in &args {
        if skip {
            skip = false;
        } else if WITH_VALUE.contains(&a.as_str()) {
            skip = true;
        } else if !a.starts_with("--") {
            filter = Some(a.clone());
            break;
        }
    }
    filter.is_none_or(|f| format!("{group}/{name}").contains(&f))
}

/// How many events (or batches) the latency pass of a row times one by one.
const LATENCY_SAMPLES: usize = 2000;

/// Times `LATENCY_SAMPLES` calls of `call` one by one and writes the p50 and p99 per event
/// (a batch's time divided by its size) to `target/criterion-latency/{group}/{name}.json`.
fn latency<F, Fut>(
    rt: &tokio::runtime::Runtime,
    group: &str,
    name: &str,
    events: usize,
    mut call: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    if !selected(group, name) {
        return;
    }
    let samples = (LATENCY_SAMPLES / events).clamp(50, LATENCY_SAMPLES);
    let mut ns: Vec<f64> = rt.block_on(async {
        let mut ns = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            call().await;
            ns.push(t.elapsed().as_nanos() as f64 / events as f64);
        }
        ns
    });
    ns.sort_by(f64::total_cmp);
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize];
    write_extra(
        group,
        name,
        json!({"group": group, "name": name, "p50_ns": at(0.50), "p99_ns": at(0.99), "samples": samples}),
    );
}

fn write_extra(group: &str, name: &str, value: serde_json::Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion-latency")
        .join(group);
    let _ = std::fs::create_dir_all(&dir);
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let _ = std::fs::write(dir.join(format!("{file}.json")), value.to_string());
}

/// A criterion row and its latency pass, for one event per iteration.
fn row<F, Fut>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    group: &str,
    name: &str,
    mut call: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| b.to_async(rt).iter(&mut call));
    latency(rt, group, name, 1, call);
}

/// How many pairs a paired comparison times.
const PAIRED_SAMPLES: usize = 2000;

/// A paired comparison: `floor` and `ours` one event each, alternately, so that both see
/// the same moments of the machine (a loopback round trip on a virtual machine varies by
/// a factor of two from one second to the next), and the ratio of their p50s written to
/// `target/criterion-latency/{group}/paired__{name}.json`: what the targets are judged on.
fn paired<FA, FutA, FB, FutB>(
    rt: &tokio::runtime::Runtime,
    group: &str,
    name: &str,
    floor: FA,
    ours: FB,
) where
    FA: FnMut() -> FutA,
    FutA: Future<Output = ()>,
    FB: FnMut() -> FutB,
    FutB: Future<Output = ()>,
{
    paired_n(rt, group, name, PAIRED_SAMPLES, floor, ours);
}

/// [`paired`] with `pairs` pairs (fewer for batches, each of which takes many events).
fn paired_n<FA, FutA, FB, FutB>(
    rt: &tokio::runtime::Runtime,
    group: &str,
    name: &str,
    pairs: usize,
    mut floor: FA,
    mut ours: FB,
) where
    FA: FnMut() -> FutA,
    FutA: Future<Output = ()>,
    FB: FnMut() -> FutB,
    FutB: Future<Output = ()>,
{
    if !selected(group, name) {
        return;
    }
    let (mut a, mut b) = rt.block_on(async {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..pairs {
            let t = Instant::now();
            floor().await;
            a.push(t.elapsed().as_nanos() as f64);
            let t = Instant::now();
            ours().await;
            b.push(t.elapsed().as_nanos() as f64);
        }
        (a, b)
    });
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (fa, fb) = (a[a.len() / 2], b[b.len() / 2]);
    write_extra(
        group,
        &format!("paired: {name}"),
        json!({"name": name, "floor_p50_ns": fa, "ours_p50_ns": fb, "ratio": fa / fb, "pairs": pairs}),
    );
}

/// One new event through `guard`.
async fn guard_new(guard: &Guard) {
    let e = event(unique());
    let _ = guard
        .run(&e, async { Ok::<_, String>(()) })
        .await
        .expect("run");
}

/// `dup` again through `guard` (it was processed before).
async fn guard_dup(guard: &Guard, dup: &EventEnvelope) {
    let out = guard
        .run(dup, async { Ok::<_, String>(()) })
        .await
        .expect("dup");
    assert!(out.is_duplicate());
}

/// One new event whose handler fails.
async fn guard_fail(guard: &Guard) {
    let e = event(unique());
    let _ = guard
        .run(&e, async { Err::<(), _>("failed".to_owned()) })
        .await;
}

/// `events`, all new, through `guard.run_batch`: each is processed.
async fn guard_batch(guard: &Guard, events: &[EventEnvelope]) {
    let answers = guard
        .run_batch(events, |_| async { Ok::<_, String>(()) })
        .await;
    assert!(answers
        .iter()
        .all(|a| matches!(a, Ok(o) if !o.is_duplicate())));
}

/// The guard's rows every group has: new events, the same event again, a failing handler.
fn guard_rows(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    group: &str,
    guard: &Guard,
) {
    row(g, rt, group, "guard: new event", || guard_new(guard));
    let dup = event(u64::MAX - unique());
    let _ = rt.block_on(guard.run(&dup, async { Ok::<_, String>(()) }));
    row(g, rt, group, "guard: duplicate", || guard_dup(guard, &dup));
    row(g, rt, group, "guard: handler failure", || guard_fail(guard));
}

/// `run_batch` rows: new events in batches of `size`, criterion counting events.
fn batch_row(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    group: &str,
    guard: &Guard,
    size: usize,
) {
    let name = format!("guard: batch of {size}");
    let call = || async { guard_batch(guard, &batch(size)).await };
    g.throughput(Throughput::Elements(size as u64));
    g.bench_function(&name, |b| b.to_async(rt).iter(call));
    latency(rt, group, &name, size, call);
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("memory");
    // The store alone: a claim and a completion of a new key, without the guard's work.
    let bare = MemoryStore::with_capacity(10_000_000);
    row(
        &mut g,
        &rt,
        "memory",
        "floor: MemoryStore claim + complete",
        || async {
            let key = format!("huleedu:idempotency:bench:svc:t:{:032x}", unique());
            let claim = bare.try_claim(&key, "owner", Duration::from_secs(30)).await;
            assert_eq!(claim.ok(), Some(eventonce::Claim::Acquired));
            let done = bare
                .complete(&key, "owner", Duration::from_secs(86_400))
                .await;
            assert_eq!(done.ok(), Some(true));
        },
    );
    let guard = guard_on(
        MemoryStore::with_capacity(10_000_000),
        config("bench-memory"),
    );
    guard_rows(&mut g, &rt, "memory", &guard);
    batch_row(&mut g, &rt, "memory", &guard, 100);
    g.throughput(Throughput::Elements(1));
    idempotent_crate::memory_rows(&mut g, &rt, &guard);
    g.finish();
}

/// The raw claim: `SET key value NX PX 300000`, one round trip.
async fn set_nx_px(raw: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(FLOOR_CLAIMED)
        .arg("NX")
        .arg("PX")
        .arg(300_000)
        .query_async(raw)
        .await
        .expect("set");
}

/// The floors' values, as long as the guard's (`p|<ms>|<owner token>` and `c|...`): the
/// floors write the same bytes as the guard, only without its work.
const FLOOR_CLAIMED: &str = "p|1764633600000|1a2b-0123456789abcdef-3c4d";
const FLOOR_COMPLETED: &str = "c|1764633600000|1a2b-0123456789abcdef-3c4d";

/// A floor's key: distinct per call, as long as the guard's keys (`len` bytes; the guard's
/// keys carry the service, the event type and a 32-digit hash).
fn floor_key(run: &str, tag: &str, len: usize) -> String {
    let mut key = format!("huleedu:idempotency:bench:{run}:{tag}:{}:", unique());
    let pad = len.saturating_sub(key.len());
    key.extend(std::iter::repeat_n('x', pad));
    key
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark group, read top to bottom"
)]
fn redis_group(c: &mut Criterion) {
    let rt = runtime();
    let url =
        std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let Some((store, raw)) = rt.block_on(async {
        let store = RedisStore::connect(&url).await.ok()?;
        let raw = redis::Client::open(url.as_str())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()?;
        Some((store, raw))
    }) else {
        eprintln!("redis group skipped: no Redis at {url}");
        return;
    };
    let run = run_id();
    let service = format!("bench-redis-{run}");
    let key_len = config(&service)
        .build()
        .ok()
        .and_then(|c| c.event_key(&event(0)).ok())
        .map_or(0, |k| k.len());
    let complete = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2]) and 1 end return 0",
    );
    let claim_many = redis::Script::new(
        "local out = {} for i = 1, #KEYS do out[i] = redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0 end return out",
    );
    let mut g = c.benchmark_group("redis");
    g.measurement_time(Duration::from_secs(5));
    let floor_1rt = || {
        let mut raw = raw.clone();
        let key = floor_key(&run, "raw", key_len);
        async move { set_nx_px(&mut raw, &key).await }
    };
    let floor_2rt = || {
        let mut raw = raw.clone();
        let key = floor_key(&run, "raw2", key_len);
        let complete = &complete;
        async move {
            set_nx_px(&mut raw, &key).await;
            let _: i64 = complete
                .key(&key)
                .arg(FLOOR_CLAIMED)
                .arg(86_400_000)
                .arg(FLOOR_COMPLETED)
                .invoke_async(&mut raw)
                .await
                .expect("evalsha");
        }
    };
    row(
        &mut g,
        &rt,
        "redis",
        "floor: SET NX PX (1 round trip)",
        floor_1rt,
    );
    row(
        &mut g,
        &rt,
        "redis",
        "floor: SET NX PX + EVALSHA (2 round trips)",
        floor_2rt,
    );
    let name = "floor: EVALSHA claiming 100 keys (1 round trip)";
    let call = || {
        let mut raw = raw.clone();
        let mut invocation = claim_many.prepare_invoke();
        for _ in 0..100 {
            invocation.key(floor_key(&run, "raw3", key_len));
        }
        invocation.arg(FLOOR_CLAIMED).arg(300_000);
        async move {
            let _: Vec<i64> = invocation.invoke_async(&mut raw).await.expect("evalsha");
        }
    };
    g.throughput(Throughput::Elements(100));
    g.bench_function(name, |b| b.to_async(&rt).iter(call));
    latency(&rt, "redis", name, 100, call);

    let guard = guard_on(store.clone(), config(&service));
    guard_rows(&mut g, &rt, "redis", &guard);
    let deferred = guard_on(
        store.clone(),
        config(&service).defer_completion(Duration::from_millis(5)),
    );
    row(
        &mut g,
        &rt,
        "redis",
        "guard: new event (deferred completion)",
        || guard_new(&deferred),
    );
    let _ = rt.block_on(deferred.flush());
    let cached = guard_on(
        CachedStore::new(store.clone(), 100_000, Duration::from_secs(60)),
        config(&service),
    );
    let dup = event(u64::MAX - unique());
    let _ = rt.block_on(cached.run(&dup, async { Ok::<_, String>(()) }));
    row(
        &mut g,
        &rt,
        "redis",
        "guard: duplicate (local cache)",
        || guard_dup(&cached, &dup),
    );
    let dup_paired = event(u64::MAX - unique());
    let _ = rt.block_on(guard.run(&dup_paired, async { Ok::<_, String>(()) }));
    paired(
        &rt,
        "redis",
        "guard: new event / 2 round trips",
        floor_2rt,
        || guard_new(&guard),
    );
    paired(
        &rt,
        "redis",
        "guard: new event (deferred completion) / 2 round trips",
        floor_2rt,
        || guard_new(&deferred),
    );
    let _ = rt.block_on(deferred.flush());
    paired(
        &rt,
        "redis",
        "guard: duplicate / 1 round trip",
        floor_1rt,
        || guard_dup(&guard, &dup_paired),
    );
    paired(
        &rt,
        "redis",
        "guard: handler failure / 2 round trips",
        floor_2rt,
        || guard_fail(&guard),
    );
    for size in [10, 100, 1000] {
        batch_row(&mut g, &rt, "redis", &guard, size);
    }
    redis_batch_floors(&mut g, &rt, &raw, &run, &guard);
    g.throughput(Throughput::Elements(1));
    idempotent_crate::redis_rows(&mut g, &rt, &url, &guard);

    // FailMode::Open with its Redis gone: the breaker answers, handlers run unprotected.
    let mut doomed = eventonce_testkit::RedisProcess::start();
    let down = rt
        .block_on(RedisStore::connect(&doomed.url()))
        .expect("throwaway redis");
    doomed.kill();
    let open = guard_on(
        down,
        config(&service)
            .on_store_error(FailMode::Open)
            .store_timeout(Duration::from_millis(100)),
    );
    row(
        &mut g,
        &rt,
        "redis",
        "guard: fail open, Redis down",
        || async {
            let e = event(unique());
            let out = open.run(&e, async { Ok::<_, String>(()) }).await;
            assert!(matches!(out, Ok(eventonce::Outcome::Unprotected(()))));
        },
    );
    g.finish();
    redis_memory(&rt, &raw, &guard);
    // Every key this process wrote: its own rows and the peer's carry its pid.
    purge(
        &rt,
        &raw,
        &format!("huleedu:idempotency:bench:*{}-*", std::process::id()),
    );
}

/// The raw floor of a batch: one script claiming the `n` keys (`SET NX PX` each), then one
/// script completing them with an owner check (`GET`, compare, `SET PX` each), keys and
/// values as long as the guard's.
async fn two_scripts(
    raw: &mut redis::aio::MultiplexedConnection,
    scripts: &(redis::Script, redis::Script),
    keys: &[String],
) {
    let mut claim = scripts.0.prepare_invoke();
    let mut complete = scripts.1.prepare_invoke();
    for key in keys {
        claim.key(key);
        complete.key(key);
    }
    claim.arg(FLOOR_CLAIMED).arg(300_000);
    complete
        .arg(FLOOR_CLAIMED)
        .arg(86_400_000)
        .arg(FLOOR_COMPLETED);
    let claimed: Vec<i64> = claim.invoke_async(raw).await.expect("evalsha");
    let completed: Vec<i64> = complete.invoke_async(raw).await.expect("evalsha");
    assert!(claimed.iter().chain(&completed).all(|&c| c == 1));
}

/// The two-script floors of batches of 100 and 1,000 (criterion rows), and the guard's
/// batches paired with them; the guard's events are built before the pairs are timed, as
/// the floor's keys are built in its timing.
fn redis_batch_floors(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    raw: &redis::aio::MultiplexedConnection,
    run: &str,
    guard: &Guard,
) {
    let key_len = guard.key_for(&event(0)).map_or(0, |k| k.len());
    let scripts = (
        redis::Script::new(
            "local out = {} for i = 1, #KEYS do out[i] = redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0 end return out",
        ),
        redis::Script::new(
            "local out = {} for i = 1, #KEYS do if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('SET', KEYS[i], ARGV[3], 'PX', ARGV[2]) out[i] = 1 else out[i] = 0 end end return out",
        ),
    );
    for size in [100, 1000] {
        let name = format!("floor: 2 scripts, batch of {size} (claim, complete)");
        let floor = || {
            let mut raw = raw.clone();
            let keys: Vec<String> = (0..size).map(|_| floor_key(run, "raw4", key_len)).collect();
            let scripts = &scripts;
            async move { two_scripts(&mut raw, scripts, &keys).await }
        };
        g.throughput(Throughput::Elements(size as u64));
        g.bench_function(&name, |b| b.to_async(rt).iter(floor));
        latency(rt, "redis", &name, size, floor);
        let pairs = (PAIRED_SAMPLES * 10 / size).clamp(100, PAIRED_SAMPLES);
        let batches = std::cell::RefCell::new((0..pairs).map(|_| batch(size)).collect::<Vec<_>>());
        let ours = || {
            let events = batches.borrow_mut().pop().unwrap_or_else(|| batch(size));
            async move { guard_batch(guard, &events).await }
        };
        paired_n(
            rt,
            "redis",
            &format!("guard: batch of {size} / 2 scripts"),
            pairs,
            floor,
            ours,
        );
    }
}

/// Deletes the keys of `pattern` (`SCAN`, never `KEYS`): a run leaves a million records
/// behind otherwise, and a Redis holding millions of expiring keys slows the next run.
fn purge(rt: &tokio::runtime::Runtime, raw: &redis::aio::MultiplexedConnection, pattern: &str) {
    let mut raw = raw.clone();
    rt.block_on(async {
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut raw)
                .await
            else {
                return;
            };
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> =
                    redis::cmd("UNLINK").arg(&keys).query_async(&mut raw).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    });
}

/// `MEMORY USAGE` of a key the guard completed, against a bare key of the same length
/// holding `1` (what a plain `SET key 1 NX EX ttl` would store).
fn redis_memory(
    rt: &tokio::runtime::Runtime,
    raw: &redis::aio::MultiplexedConnection,
    guard: &Guard,
) {
    let mut raw = raw.clone();
    let measured = rt.block_on(async {
        let mut ours = Vec::new();
        let mut bare = Vec::new();
        for _ in 0..100 {
            let e = event(unique());
            let _ = guard.run(&e, async { Ok::<_, String>(()) }).await;
            let key = guard.key_for(&e).expect("key");
            let twin = format!("{}x", &key[..key.len() - 1]);
            let _: () = redis::cmd("SET")
                .arg(&twin)
                .arg(1)
                .arg("EX")
                .arg(86_400)
                .query_async(&mut raw)
                .await
                .ok()?;
            let a: i64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .ok()?;
            let b: i64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&twin)
                .query_async(&mut raw)
                .await
                .ok()?;
            let _: i64 = redis::cmd("DEL")
                .arg(&twin)
                .query_async(&mut raw)
                .await
                .ok()?;
            ours.push(a);
            bare.push(b);
        }
        let mean = |v: &[i64]| v.iter().sum::<i64>() as f64 / v.len() as f64;
        Some((mean(&ours), mean(&bare)))
    });
    if let Some((ours, bare)) = measured {
        write_extra(
            "redis",
            "memory per key",
            json!({"completed_key_bytes": ours, "bare_key_bytes": bare}),
        );
    }
}

fn postgres_group(c: &mut Criterion) {
    let rt = runtime();
    let url = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("eventonce_bench_{}", run_id().replace('-', "_"));
    let Some(store) = rt.block_on(async {
        PostgresStore::connect_with(
            &url,
            PostgresOptions::default()
                .schema(schema.clone())
                .max_connections(2),
        )
        .await
        .ok()
    }) else {
        eprintln!("postgres group skipped: no PostgreSQL at {url}");
        return;
    };
    let floor_sql = format!(
        "INSERT INTO \"{schema}\".eventonce_records (key, state, owner, expires_at) VALUES ($1, 'p', 'o', now() + interval '5 minutes') ON CONFLICT (key_digest) DO NOTHING"
    );
    let mut g = c.benchmark_group("postgres");
    g.measurement_time(Duration::from_secs(5));
    let floor = || async {
        sqlx::query(sqlx::AssertSqlSafe(floor_sql.clone()))
            .bind(format!("raw:{}", unique()))
            .execute(store.pool())
            .await
            .expect("insert");
    };
    row(
        &mut g,
        &rt,
        "postgres",
        "floor: INSERT ON CONFLICT (1 statement)",
        floor,
    );
    let guard = guard_on(store.clone(), config("bench-postgres"));
    guard_rows(&mut g, &rt, "postgres", &guard);
    let deferred = guard_on(
        store.clone(),
        config("bench-postgres").defer_completion(Duration::from_millis(5)),
    );
    row(
        &mut g,
        &rt,
        "postgres",
        "guard: new event (deferred completion)",
        || guard_new(&deferred),
    );
    let _ = rt.block_on(deferred.flush());
    paired(
        &rt,
        "postgres",
        "guard: new event / 1 statement",
        floor,
        || guard_new(&guard),
    );
    paired(
        &rt,
        "postgres",
        "guard: new event (deferred completion) / 1 statement",
        floor,
        || guard_new(&deferred),
    );
    let _ = rt.block_on(deferred.flush());
    batch_row(&mut g, &rt, "postgres", &guard, 100);
    g.finish();
    let _ = rt.block_on(async {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(store.pool())
        .await
    });
}

criterion_group!(benches, memory, redis_group, postgres_group);
criterion_main!(benches);
