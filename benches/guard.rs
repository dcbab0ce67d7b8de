//! What a guarded event costs, side by side with the floor it stands on: the same work
//! done with the raw client. `make bench` runs it and prints medians and ratios
//! (`benches/summary.py`, also written to `benches/RESULTS.md`).
//!
//! Groups: `memory` (bare moka insert vs `MemoryStore` through `Guard`), `redis` (raw
//! `SET NX PX`; `SET NX PX` + an `EVALSHA` completion; the guard's new events and
//! duplicates), `postgres` (raw `INSERT ... ON CONFLICT`; the guard's new events and
//! duplicates). A group whose server is not reachable is skipped with a message.
//!
//! Peers, doing the same work for one event: the `idempotent` crate on its in-memory store
//! (memory group) and its Redis store (redis group), in `peers/idempotent_crate.rs`. The
//! Python peers run apart, in `make bench-peers` (`benches/peers.py`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use eventonce::{
    EventEnvelope, Guard, IdempotencyConfig, MemoryStore, PostgresOptions, PostgresStore,
    RedisStore,
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

fn config(service: &str) -> IdempotencyConfig {
    IdempotencyConfig::builder(service)
        .key_prefix("huleedu:idempotency:bench")
        .build()
        .expect("config")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The guard's rows every group has: new events, and the same event again.
fn new_and_duplicate(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    guard: &Guard,
) {
    g.bench_function("guard: new event", |b| {
        b.to_async(rt).iter(|| async {
            let e = event(unique());
            guard
                .run(&e, async { Ok::<_, String>(()) })
                .await
                .expect("run")
        })
    });
    let dup = event(u64::MAX);
    let _ = rt.block_on(async {
        guard
            .run(&dup, async { Ok::<_, String>(()) })
            .await
            .expect("first")
    });
    g.bench_function("guard: duplicate", |b| {
        b.to_async(rt).iter(|| async {
            guard
                .run(&dup, async { Ok::<_, String>(()) })
                .await
                .expect("dup")
        })
    });
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("memory");
    let cache: moka::future::Cache<String, u64> = moka::future::Cache::new(10_000_000);
    g.bench_function("floor: moka insert", |b| {
        b.to_async(&rt).iter(|| async {
            let n = unique();
            cache
                .insert(format!("huleedu:idempotency:bench:svc:t:{n:032x}"), n)
                .await;
        })
    });
    let guard = Guard::new(
        MemoryStore::with_capacity(10_000_000),
        config("bench-memory"),
    );
    new_and_duplicate(&mut g, &rt, &guard);
    g.bench_function("guard: handler failure", |b| {
        b.to_async(&rt).iter(|| async {
            let e = event(unique());
            let _ = guard
                .run(&e, async { Err::<(), _>("failed".to_owned()) })
                .await;
        })
    });
    idempotent_crate::memory_rows(&mut g, &rt);
    g.finish();
}

/// The raw claim: `SET key value NX PX 300000`, one round trip.
async fn set_nx_px(raw: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg("p|owner")
        .arg("NX")
        .arg("PX")
        .arg(300_000)
        .query_async(raw)
        .await
        .expect("set");
}

fn redis_group(c: &mut Criterion) {
    let rt = runtime();
    let url =
        std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let Some((store, mut raw)) = rt.block_on(async {
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
    let complete = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], 'c', 'PX', ARGV[2]) and 1 end return 0",
    );
    let mut g = c.benchmark_group("redis");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("floor: SET NX PX (1 round trip)", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let key = format!("huleedu:idempotency:bench:{run}:raw:{}", unique());
            async move {
                set_nx_px(&mut raw, &key).await;
            }
        })
    });
    g.bench_function("floor: SET NX PX + EVALSHA (2 round trips)", |b| {
        b.to_async(&rt).iter(|| {
            let mut raw = raw.clone();
            let key = format!("huleedu:idempotency:bench:{run}:raw2:{}", unique());
            let complete = &complete;
            async move {
                set_nx_px(&mut raw, &key).await;
                let _: i64 = complete
                    .key(&key)
                    .arg("p|owner")
                    .arg(86_400_000)
                    .invoke_async(&mut raw)
                    .await
                    .expect("evalsha");
            }
        })
    });
    let guard = Guard::new(store, config(&format!("bench-redis-{run}")));
    new_and_duplicate(&mut g, &rt, &guard);
    idempotent_crate::redis_rows(&mut g, &rt, &url);
    g.finish();
    let _: Result<(), _> =
        rt.block_on(async { redis::cmd("PING").query_async::<()>(&mut raw).await });
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
        "INSERT INTO \"{schema}\".eventonce_records (key, state, owner, expires_at) VALUES ($1, 'processing', 'o', now() + interval '5 minutes') ON CONFLICT (key) DO NOTHING"
    );
    let mut g = c.benchmark_group("postgres");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("floor: INSERT ON CONFLICT (1 statement)", |b| {
        b.to_async(&rt).iter(|| async {
            sqlx::query(sqlx::AssertSqlSafe(floor_sql.clone()))
                .bind(format!("raw:{}", unique()))
                .execute(store.pool())
                .await
                .expect("insert");
        })
    });
    let guard = Guard::new(store.clone(), config("bench-postgres"));
    new_and_duplicate(&mut g, &rt, &guard);
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
