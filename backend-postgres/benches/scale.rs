//! PostgreSQL at scale (issue 26, point 2): what ten million records cost.
//!
//! `make bench-postgres` (also run by `make bench`) measures, in one run:
//!
//! - **latency**: the store's claim and completion of new keys (and a duplicate's claim, and
//!   a batch of 100 claimed and completed) on a table holding `BENCH_PG_RECORDS` records
//!   (default 10,000,000), paired with the same call on an empty table (10,000 records,
//!   analyzed, so that it runs the plans of a table in use): the two calls alternate
//!   (which one goes first alternating too), so both see the same moments of the
//!   machine; the ratio is the full table's p50 over the empty one's;
//! - **the curve**: while the full table is filled, the fill stops at a tenth, a fifth,
//!   two, three and four fifths of it and at the end, and measures there the bytes per
//!   record and the p50 of a new key's claim and completion (paired with the empty table,
//!   `CURVE_PAIRS` pairs); the points are kept beside the table (`full_records_curve`), so
//!   a later run that keeps the table keeps its curve;
//! - **size**: `pg_total_relation_size` (table, indexes, TOAST) divided by the rows, on a
//!   table of `BENCH_PG_SIZE_RECORDS` (default 1,000,000) records written by this version's migrations, on one of the
//!   layout migrations 0001 and 0002 created (the layout before migration 0003), and on
//!   the full table;
//! - **expiry**: ingest through the batch calls (`try_claim_many` + `complete_many`,
//!   chunks of 1,000, the guard's batch path) on a table of its own, records kept for
//!   `BENCH_PG_TTL_SECS` (default 30 s). The reaper starts only after the first records
//!   have been expired for as long again, so it starts behind; it then runs beside the
//!   ingest until the end (`BENCH_PG_STEADY_SECS` after it starts, default 120 s). Every
//!   5 s a line gives the table's rows and bytes. The reaper's rate while it catches up
//!   (rows deleted per second, with the ingest running) is compared with the ingest's
//!   own rate before the reaper started.
//!
//! Records are written the way the guard writes them: keys
//! `huleedu:idempotency:v2:bench-scale:bench_order_placed_v1:` + 32 hex digits (the
//! guard's key shape), owner tokens of the guard's shape. The full table is filled by
//! `INSERT ... SELECT ... generate_series` in chunks (one statement per chunk, not a
//! round trip per record), and kept between runs in its own database (`eventonce_bench`,
//! created if missing; schema `eventonce_scale`), so a later run only checks its row
//! count; `BENCH_PG_DROP=1` drops the schema at the end. Writes
//! `target/criterion-latency/postgres-scale/scale.json`, which `benches/summary.py`
//! turns into rows of `benches/RESULTS.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventonce_core::{Claim, Completion, IdempotencyStore};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use serde_json::{json, Value};
use sqlx::postgres::PgPool;
use sqlx::AssertSqlSafe;

/// The database the bench works in, apart from the tests' own.
const DATABASE: &str = "eventonce_bench";
/// The schema of its tables.
const SCHEMA: &str = "eventonce_scale";
/// Every key's first part: the guard's key shape (`{prefix}:{service}:{event type}:`).
const PREFIX: &str = "huleedu:idempotency:v2:bench-scale:bench_order_placed_v1:";
/// The owner of the latency rows' records (the filled records' owners start `3f2a-`).
const LATENCY_OWNER: &str = "3f2b-1c41d2e07b5a6f18-1";
/// The records of the "empty" side of the latency rows.
const EMPTY_RECORDS: i64 = 10_000;
/// How many records one fill statement inserts.
const FILL_CHUNK: i64 = 500_000;
/// The batch path's chunk (the store's `max_batch_chunk`).
const INGEST_BATCH: usize = 1_000;
/// Pairs of the single-call rows, and of the batch row.
const PAIRS: usize = 2_000;
const BATCH_PAIRS: usize = 200;
/// Pairs of each point of the latency and size curve.
const CURVE_PAIRS: usize = 400;
/// Where the curve's points are measured while the full table is filled, as fractions of
/// its records.
const CURVE_AT: [f64; 6] = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0];
/// How often the expiry phase prints the table's size.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The migrations before the compact layout, to build a table as they left it.
const MIGRATION_0001: &str = include_str!("../migrations/0001_create_records.sql");
const MIGRATION_0002: &str = include_str!("../migrations/0002_add_result.sql");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (splitmix64) for the keys the bench claims.
struct Keys(u64);

impl Keys {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new key of the guard's shape: the prefix and 32 random hex digits.
    fn key(&mut self) -> String {
        format!("{PREFIX}{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id())
}

/// The `p`-quantile of `v` (sorted here), in microseconds.
fn quantile_us(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize] / 1000.0
}

fn elapsed_ns(t: Instant) -> f64 {
    t.elapsed().as_nanos() as f64
}

/// The test database's URL (`EVENTONCE_POSTGRES_URL`) with the bench's database instead.
fn bench_url(base: &str) -> Result<String, String> {
    let mut url = url::Url::parse(base).map_err(|e| format!("{base}: {e}"))?;
    url.set_path(&format!("/{DATABASE}"));
    Ok(url.to_string())
}

async fn ensure_database(base: &str) -> Result<(), String> {
    let pool = PgPool::connect(base)
        .await
        .map_err(|e| format!("connecting to {base}: {e}"))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DATABASE)
            .fetch_one(&pool)
            .await
            .map_err(|e| format!("looking for database {DATABASE}: {e}"))?;
    if !exists {
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {DATABASE}")))
            .execute(&pool)
            .await
            .map_err(|e| format!("creating database {DATABASE}: {e}"))?;
    }
    pool.close().await;
    Ok(())
}

async fn store(url: &str, table: &str, connections: u32) -> PostgresStore {
    PostgresStore::connect_with(
        url,
        PostgresOptions::default()
            .schema(SCHEMA)
            .table(table)
            .max_connections(connections),
    )
    .await
    .unwrap_or_else(|e| panic!("the scale bench needs PostgreSQL at {url}: {e}"))
}

async fn exec(pool: &PgPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar_i64(pool: &PgPool, sql: String) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.clone()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Inserts records `from..=to` (completed, kept 30 days) into `table` in one statement:
/// keys of the guard's shape (32 hex digits of md5 of the number), owners of its shape.
fn fill_sql(table: &str, from: i64, to: i64) -> String {
    format!(
        "INSERT INTO {table} (key, state, owner, updated_at, expires_at)
         SELECT '{PREFIX}' || md5(i::text), 'completed', '3f2a-9c41d2e07b5a6f18-' || to_hex(i),
                now(), now() + interval '30 days'
           FROM generate_series({from}::int8, {to}::int8) AS i"
    )
}

/// Fills `table` (empty or holding `have` records numbered from 1) up to `want` records,
/// chunk by chunk; returns the seconds the inserts took.
async fn fill(pool: &PgPool, table: &str, have: i64, want: i64) -> f64 {
    let t = Instant::now();
    let mut at = have;
    while at < want {
        let to = (at + FILL_CHUNK).min(want);
        exec(pool, fill_sql(table, at + 1, to)).await;
        at = to;
        println!(
            "scale: {table}: {at} records ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    t.elapsed().as_secs_f64()
}

/// Table, indexes and TOAST of `table`, in bytes, and its rows.
async fn size(pool: &PgPool, table: &str) -> (i64, i64) {
    let bytes = scalar_i64(
        pool,
        format!("SELECT pg_total_relation_size('{table}')::int8"),
    )
    .await;
    let rows = scalar_i64(pool, format!("SELECT count(*)::int8 FROM {table}")).await;
    (bytes, rows)
}

async fn vacuum(pool: &PgPool, table: &str) {
    exec(pool, format!("VACUUM (ANALYZE) {table}")).await;
}

/// Bytes per record of a fresh table of `SIZE_RECORDS` records written by this version's
/// migrations, and of one in the layout migrations 0001 and 0002 created.
async fn sizes(url: &str, pool: &PgPool) -> Value {
    let records = env_u64("BENCH_PG_SIZE_RECORDS", 1_000_000) as i64;
    // A new table, through every migration of this version.
    exec(
        pool,
        format!(
            "DROP TABLE IF EXISTS \"{SCHEMA}\".size_records, \"{SCHEMA}\".size_records_migrations"
        ),
    )
    .await;
    let current = store(url, "size_records", 2).await;
    let table = current.table();
    fill(current.pool(), &table, 0, records).await;
    vacuum(current.pool(), &table).await;
    let (bytes, rows) = size(current.pool(), &table).await;
    let layout = bytes as f64 / rows as f64;
    exec(
        current.pool(),
        format!("DROP TABLE {table}, \"{SCHEMA}\".size_records_migrations"),
    )
    .await;

    let old = format!("\"{SCHEMA}\".\"size_old_layout\"");
    exec(current.pool(), format!("DROP TABLE IF EXISTS {old}")).await;
    for migration in [MIGRATION_0001, MIGRATION_0002] {
        let sql = migration
            .replace("{schema}", &format!("\"{SCHEMA}\""))
            .replace("{table_unquoted}", "size_old_layout")
            .replace("{table}", "\"size_old_layout\"");
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(current.pool())
            .await
            .expect("old layout");
    }
    fill(current.pool(), &old, 0, records).await;
    vacuum(current.pool(), &old).await;
    let (old_bytes, old_rows) = size(current.pool(), &old).await;
    let old_layout = old_bytes as f64 / old_rows as f64;
    exec(current.pool(), format!("DROP TABLE {old}")).await;
    println!(
        "scale: bytes per record at {records} records: {layout:.1} (this layout), {old_layout:.1} (migrations 0001+0002)"
    );
    json!({"records": records, "bytes_per_record": layout, "old_layout_bytes_per_record": old_layout})
}

/// The p50/p99 of both sides of a paired row, and the ratio of the full table's p50 to
/// the empty one's.
fn paired_row(name: &str, empty: &mut [f64], full: &mut [f64]) -> Value {
    let (e50, e99) = (quantile_us(empty, 0.5), quantile_us(empty, 0.99));
    let (f50, f99) = (quantile_us(full, 0.5), quantile_us(full, 0.99));
    let ratio = f50 / e50;
    println!(
        "scale: {name}: empty p50 {e50:.1} us p99 {e99:.1} us; full p50 {f50:.1} us p99 {f99:.1} us; full / empty {ratio:.3}x"
    );
    json!({"name": name, "empty_p50_us": e50, "empty_p99_us": e99,
           "full_p50_us": f50, "full_p99_us": f99, "ratio": ratio, "pairs": empty.len()})
}

/// Times `call` on the empty store and on the full one, alternately (which goes first
/// alternating too).
async fn time_pair<F, Fut>(
    empty: &PostgresStore,
    full: &PostgresStore,
    i: usize,
    call: F,
) -> (f64, f64)
where
    F: Fn(PostgresStore) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut e, mut f) = (0.0, 0.0);
    for side in 0..2 {
        let on_empty = (i + side).is_multiple_of(2);
        let t = Instant::now();
        call(if on_empty {
            empty.clone()
        } else {
            full.clone()
        })
        .await;
        if on_empty {
            e = elapsed_ns(t);
        } else {
            f = elapsed_ns(t);
        }
    }
    (e, f)
}

/// How long the latency rows' claims are leased, and their completions kept.
const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(30 * 86_400);

/// Each side's timings of `pairs` new keys claimed and then completed, alternating between
/// the empty store and the full one: (claims on empty, on full, completions on empty, on
/// full, the keys completed on the empty side).
struct Pairs {
    claim_e: Vec<f64>,
    claim_f: Vec<f64>,
    done_e: Vec<f64>,
    done_f: Vec<f64>,
    completed_e: Vec<String>,
}

async fn claim_complete_pairs(
    empty: &PostgresStore,
    full: &PostgresStore,
    keys: &mut Keys,
    pairs: usize,
) -> Pairs {
    let owner = LATENCY_OWNER;
    // Warm both sides' connections and plans.
    for store in [empty, full] {
        for _ in 0..50 {
            let key = keys.key();
            let _ = store.try_claim(&key, owner, LEASE).await;
            let _ = store.complete(&key, owner, TTL).await;
        }
    }
    let mut out = Pairs {
        claim_e: Vec::new(),
        claim_f: Vec::new(),
        done_e: Vec::new(),
        done_f: Vec::new(),
        completed_e: Vec::new(),
    };
    for i in 0..pairs {
        let (ke, kf) = (keys.key(), keys.key());
        let key_of = |s: &PostgresStore| {
            if s.table() == empty.table() {
                ke.clone()
            } else {
                kf.clone()
            }
        };
        let (e, f) = time_pair(empty, full, i, |s| {
            let key = key_of(&s);
            async move {
                assert_eq!(
                    s.try_claim(&key, owner, LEASE).await.expect("claim"),
                    Claim::Acquired
                );
            }
        })
        .await;
        out.claim_e.push(e);
        out.claim_f.push(f);
        let (e, f) = time_pair(empty, full, i, |s| {
            let key = key_of(&s);
            async move {
                assert!(s.complete(&key, owner, TTL).await.expect("complete"));
            }
        })
        .await;
        out.done_e.push(e);
        out.done_f.push(f);
        out.completed_e.push(ke);
    }
    out
}

async fn latency(empty: &PostgresStore, full: &PostgresStore, keys: &mut Keys) -> Value {
    let mut p = claim_complete_pairs(empty, full, keys, PAIRS).await;
    json!({
        "claim": paired_row("claim, new key", &mut p.claim_e, &mut p.claim_f),
        "complete": paired_row("completion", &mut p.done_e, &mut p.done_f),
        "duplicate": duplicates(empty, full, &p.completed_e).await,
        "batch_100": batches(empty, full).await,
    })
}

/// The table where a fill keeps the curve it measured, beside the full table.
fn curve_table() -> String {
    format!("\"{SCHEMA}\".full_records_curve")
}

/// One point of the latency and size curve, measured while the full table is filled: its
/// records, bytes per record (`pg_total_relation_size` over the records, analyzed but not
/// vacuumed: the table as a steady ingest leaves it), and the p50 of a new key's claim and
/// completion there and on the empty table (`CURVE_PAIRS` pairs). Kept in the curve table,
/// and the latency rows' records removed again.
async fn curve_point(
    empty: &PostgresStore,
    full: &PostgresStore,
    records: i64,
    keys: &mut Keys,
) -> Value {
    let table = full.table();
    exec(full.pool(), format!("ANALYZE {table}")).await;
    let bytes = scalar_i64(
        full.pool(),
        format!("SELECT pg_total_relation_size('{table}')::int8"),
    )
    .await;
    let mut p = claim_complete_pairs(empty, full, keys, CURVE_PAIRS).await;
    exec(
        full.pool(),
        format!("DELETE FROM {table} WHERE owner = '{LATENCY_OWNER}'"),
    )
    .await;
    let point = json!({
        "records": records,
        "bytes_per_record": bytes as f64 / records.max(1) as f64,
        "claim_p50_us": quantile_us(&mut p.claim_f, 0.5),
        "claim_empty_p50_us": quantile_us(&mut p.claim_e, 0.5),
        "complete_p50_us": quantile_us(&mut p.done_f, 0.5),
        "complete_empty_p50_us": quantile_us(&mut p.done_e, 0.5),
        "pairs": CURVE_PAIRS,
    });
    println!(
        "scale: curve: {records} records, {:.1} bytes per record; claim p50 {:.1} us (empty {:.1}), completion p50 {:.1} us (empty {:.1})",
        point["bytes_per_record"].as_f64().unwrap_or_default(),
        point["claim_p50_us"].as_f64().unwrap_or_default(),
        point["claim_empty_p50_us"].as_f64().unwrap_or_default(),
        point["complete_p50_us"].as_f64().unwrap_or_default(),
        point["complete_empty_p50_us"].as_f64().unwrap_or_default(),
    );
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {} (records, point) VALUES ($1, $2)
         ON CONFLICT (records) DO UPDATE SET point = excluded.point",
        curve_table()
    )))
    .bind(records)
    .bind(point.to_string())
    .execute(full.pool())
    .await
    .expect("keeping a curve point");
    point
}

/// The curve kept beside the full table by the run that filled it, by records held.
async fn kept_curve(pool: &PgPool) -> Vec<Value> {
    let points: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT point FROM {} ORDER BY records",
        curve_table()
    )))
    .fetch_all(pool)
    .await
    .expect("reading the curve");
    points
        .iter()
        .filter_map(|p| serde_json::from_str(p).ok())
        .collect()
}

/// The records at which a fill to `records` stops to measure a point of the curve.
fn curve_stops(records: i64) -> Vec<i64> {
    let mut stops: Vec<i64> = CURVE_AT
        .iter()
        .map(|f| (records as f64 * f).round() as i64)
        .filter(|&n| n > 0)
        .collect();
    stops.dedup();
    stops
}

/// Duplicates: records the full table was filled with, and those `completed` on the empty
/// one.
async fn duplicates(empty: &PostgresStore, full: &PostgresStore, completed: &[String]) -> Value {
    let existing: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT key FROM {} TABLESAMPLE SYSTEM (0.2) LIMIT {PAIRS}",
        full.table()
    )))
    .fetch_all(full.pool())
    .await
    .expect("sample");
    let (mut dup_e, mut dup_f) = (Vec::new(), Vec::new());
    for (i, (ke, kf)) in completed.iter().zip(&existing).enumerate() {
        let (e, f) = time_pair(empty, full, i, |s| {
            let key = if s.table() == empty.table() {
                ke.clone()
            } else {
                kf.clone()
            };
            async move {
                assert_eq!(
                    s.try_claim(&key, LATENCY_OWNER, LEASE)
                        .await
                        .expect("claim"),
                    Claim::Completed
                );
            }
        })
        .await;
        dup_e.push(e);
        dup_f.push(f);
    }
    paired_row("claim, duplicate", &mut dup_e, &mut dup_f)
}

/// Batches of 100 new keys, claimed and completed.
async fn batches(empty: &PostgresStore, full: &PostgresStore) -> Value {
    let owner = LATENCY_OWNER;
    let (mut batch_e, mut batch_f) = (Vec::new(), Vec::new());
    for i in 0..BATCH_PAIRS {
        let (e, f) = time_pair(empty, full, i, |s| {
            let batch: Vec<String> = (0..100).map(|_| keys_key()).collect();
            async move {
                let claims = s
                    .try_claim_many(&batch, owner, LEASE)
                    .await
                    .expect("claim many");
                assert!(claims.iter().all(|c| *c == Claim::Acquired));
                let completions: Vec<Completion> = batch
                    .iter()
                    .map(|k| Completion::new(k.clone(), owner, TTL))
                    .collect();
                let done = s.complete_many(&completions).await.expect("complete many");
                assert!(done.iter().all(|d| *d));
            }
        })
        .await;
        batch_e.push(e);
        batch_f.push(f);
    }
    paired_row(
        "batch of 100, claimed and completed",
        &mut batch_e,
        &mut batch_f,
    )
}

/// A key for the batch row (its closure cannot borrow the caller's generator twice).
fn keys_key() -> String {
    thread_local! {
        static KEYS: std::cell::RefCell<Keys> = std::cell::RefCell::new(Keys(seed()));
    }
    KEYS.with(|k| k.borrow_mut().key())
}

/// Cumulative counts over time, shared by the expiry phase's tasks.
#[derive(Default)]
struct Counts {
    ingested: AtomicU64,
    reaped: AtomicU64,
    /// (seconds since the start, records ingested by then), one entry per batch.
    timeline: Mutex<Vec<(f64, u64)>>,
    /// The reaper's passes: (start, end) in seconds since the start, and rows deleted.
    passes: Mutex<Vec<(f64, f64, u64)>>,
}

impl Counts {
    /// Records ingested by `at` seconds.
    fn ingested_by(&self, at: f64) -> u64 {
        let timeline = self.timeline.lock().expect("timeline");
        let i = timeline.partition_point(|&(t, _)| t <= at);
        if i == 0 {
            0
        } else {
            timeline[i - 1].1
        }
    }
}

async fn ingest(
    store: PostgresStore,
    ttl: Duration,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let mut keys = Keys(seed() ^ 0x5eed);
    let owner = "3f2a-9c41d2e07b5a6f18-2";
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<String> = (0..INGEST_BATCH).map(|_| keys.key()).collect();
        let claims = match store
            .try_claim_many(&batch, owner, Duration::from_secs(60))
            .await
        {
            Ok(claims) => claims,
            Err(e) => {
                eprintln!("scale: ingest claim failed: {e}");
                continue;
            }
        };
        let completions: Vec<Completion> = batch
            .iter()
            .zip(&claims)
            .filter(|(_, c)| **c == Claim::Acquired)
            .map(|(k, _)| Completion::new(k.clone(), owner, ttl))
            .collect();
        if let Err(e) = store.complete_many(&completions).await {
            eprintln!("scale: ingest completion failed: {e}");
        }
        let n = counts
            .ingested
            .fetch_add(completions.len() as u64, Ordering::Relaxed)
            + completions.len() as u64;
        counts
            .timeline
            .lock()
            .expect("timeline")
            .push((start.elapsed().as_secs_f64(), n));
    }
}

/// The reaper as `spawn_reaper(1 s, 1,000)` runs it (one pass over the table per tick of
/// 1 s, each statement deleting at most 1,000 records), counting what each pass deletes.
async fn reap(store: PostgresStore, counts: Arc<Counts>, stop: Arc<AtomicBool>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let began = start.elapsed().as_secs_f64();
        match store.reap_pass(1_000).await {
            Ok(n) => {
                counts.reaped.fetch_add(n, Ordering::Relaxed);
                let ended = start.elapsed().as_secs_f64();
                println!(
                    "scale: reaper pass {began:.1}-{ended:.1} s: {n} deleted ({:.0} rows/s)",
                    n as f64 / (ended - began).max(1e-3)
                );
                counts
                    .passes
                    .lock()
                    .expect("passes")
                    .push((began, ended, n));
            }
            Err(e) => eprintln!("scale: reaper failed: {e}"),
        }
    }
}

/// The table's updates and HOT updates so far (the server's statistics).
async fn updates(pool: &PgPool, table: &str) -> (i64, i64) {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"
    )))
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0))
}

/// The table's updates and HOT updates since `before`, printed.
async fn updates_since(pool: &PgPool, table: &str, before: (i64, i64)) -> (i64, i64) {
    // The server's statistics arrive within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = updates(pool, table).await;
    let (updated, hot) = (after.0 - before.0, after.1 - before.1);
    println!(
        "scale: expiry: {updated} completions, {hot} of them HOT updates ({:.1}%)",
        100.0 * hot as f64 / updated.max(1) as f64
    );
    (updated, hot)
}

/// One line of the table's size over time.
async fn sample(pool: &PgPool, table: &str, counts: &Counts, ttl: Duration, now: f64) -> Value {
    let ingested = counts.ingested.load(Ordering::Relaxed);
    let reaped = counts.reaped.load(Ordering::Relaxed);
    let expired = counts
        .ingested_by(now - ttl.as_secs_f64())
        .saturating_sub(reaped);
    let bytes = scalar_i64(
        pool,
        format!("SELECT pg_total_relation_size('{table}')::int8"),
    )
    .await;
    let rows = ingested - reaped;
    println!(
        "scale: expiry t={now:>5.0}s rows {rows:>9} (expired, not yet deleted {expired:>8}) table {:>7.1} MB ingested {ingested:>9} deleted {reaped:>9}",
        bytes as f64 / 1e6
    );
    json!({"t": now, "rows": rows, "expired": expired, "bytes": bytes,
           "ingested": ingested, "reaped": reaped})
}

/// The reaper's rate while it catches up: its first pass, which starts with a TTL's worth
/// of expired records (and meets more as it goes), with the ingest beside it; whether it
/// caught up (after that pass fewer expired records wait than when it began), and when
/// the pass ended with how many expired records waited when it began and when it ended.
fn first_pass(counts: &Counts, ttl: Duration) -> (f64, bool, Option<(f64, u64, u64)>) {
    let first = counts.passes.lock().expect("passes").first().copied();
    let Some((began, ended, n)) = first else {
        return (0.0, false, None);
    };
    let waiting = |t: f64, reaped: u64| {
        counts
            .ingested_by(t - ttl.as_secs_f64())
            .saturating_sub(reaped)
    };
    let (before, after) = (waiting(began, 0), waiting(ended, n));
    (
        n as f64 / (ended - began).max(1e-3),
        after < before,
        Some((ended, before, after)),
    )
}

async fn expiry(url: &str) -> Value {
    let ttl = Duration::from_secs(env_u64("BENCH_PG_TTL_SECS", 30));
    let steady = Duration::from_secs(env_u64("BENCH_PG_STEADY_SECS", 120));
    let ingest_store = store(url, "steady_records", 2).await;
    let reap_store = store(url, "steady_records", 2).await;
    let table = ingest_store.table();
    exec(ingest_store.pool(), format!("TRUNCATE {table}")).await;
    let updates_before = updates(ingest_store.pool(), &table).await;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let ingest_task = tokio::spawn(ingest(
        ingest_store.clone(),
        ttl,
        Arc::clone(&counts),
        Arc::clone(&stop),
        start,
    ));
    // The reaper starts once the first records have been expired for a TTL: behind by a
    // TTL's worth of ingest.
    let reaper_at = 2.0 * ttl.as_secs_f64();
    let end = reaper_at + steady.as_secs_f64();
    let mut reaper_task = None;
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    println!("scale: expiry: records kept {} s; the reaper starts at {reaper_at:.0} s; the run ends at {end:.0} s", ttl.as_secs());
    loop {
        tick.tick().await;
        let now = start.elapsed().as_secs_f64();
        if reaper_task.is_none() && now >= reaper_at {
            reaper_task = Some(tokio::spawn(reap(
                reap_store.clone(),
                Arc::clone(&counts),
                Arc::clone(&stop),
                start,
            )));
        }
        samples.push(sample(ingest_store.pool(), &table, &counts, ttl, now).await);
        if now >= end {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ingest_task.await;
    if let Some(task) = reaper_task {
        let _ = task.await;
    }
    // The ingest's own rate: before the reaper started.
    let alone = counts.ingested_by(reaper_at) as f64 / reaper_at;
    let ingest_after = (counts.ingested.load(Ordering::Relaxed) - counts.ingested_by(reaper_at))
        as f64
        / (end - reaper_at);
    let (reaper_rate, drained, drained_at) = first_pass(&counts, ttl);
    let passes = counts.passes.lock().expect("passes").clone();
    let (bytes, rows) = size(ingest_store.pool(), &table).await;
    let (updated, hot) = updates_since(ingest_store.pool(), &table, updates_before).await;
    println!(
        "scale: expiry: ingest alone {alone:.0} events/s, {ingest_after:.0} events/s beside the reaper; the reaper deleted {reaper_rate:.0} rows/s {} ({:.2}x the ingest alone); at the end {rows} rows, {:.1} bytes per record",
        if drained { "in its first pass, and caught up" } else { "in its first pass, and never caught up" },
        reaper_rate / alone,
        bytes as f64 / rows.max(1) as f64
    );
    json!({
        "ttl_s": ttl.as_secs(), "reaper_start_s": reaper_at, "run_s": end,
        "ingest_alone_per_s": alone, "ingest_beside_reaper_per_s": ingest_after,
        "reaper_rows_per_s": reaper_rate, "caught_up": drained,
        "caught_up_at_s": drained_at.map(|d| d.0),
        "first_pass_found_expired": drained_at.map(|d| d.1),
        "first_pass_left_expired": drained_at.map(|d| d.2),
        "passes": passes.iter().map(|(b, e, n)| json!({"start_s": b, "end_s": e, "deleted": n})).collect::<Vec<_>>(),
        "end_rows": rows, "end_bytes": bytes,
        "updates": updated, "hot_updates": hot,
        "samples": samples,
    })
}

/// Fills the full table from `have` to `records` records, stopping at each point of the
/// curve to measure it; a kept table (`reused`) keeps the curve its fill measured. The
/// seconds the inserts took, and the curve.
async fn fill_with_curve(
    empty: &PostgresStore,
    full: &PostgresStore,
    have: i64,
    records: i64,
    reused: bool,
    keys: &mut Keys,
) -> (f64, Vec<Value>) {
    let table = full.table();
    exec(
        full.pool(),
        format!(
            "CREATE TABLE IF NOT EXISTS {} (records int8 PRIMARY KEY, point text NOT NULL)",
            curve_table()
        ),
    )
    .await;
    let mut curve = if reused {
        kept_curve(full.pool()).await
    } else {
        exec(full.pool(), format!("TRUNCATE {}", curve_table())).await;
        Vec::new()
    };
    if reused && curve.is_empty() {
        println!("scale: no curve was kept with {table} (filled by an earlier bench): BENCH_PG_DROP=1 refills it next run");
    }
    let (mut fill_s, mut at) = (0.0, have);
    for stop in curve_stops(records) {
        if stop <= at {
            continue;
        }
        fill_s += fill(full.pool(), &table, at, stop).await;
        at = stop;
        curve.push(curve_point(empty, full, stop, keys).await);
    }
    (fill_s, curve)
}

async fn run() -> Result<Value, String> {
    let base = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    ensure_database(&base).await?;
    let url = bench_url(&base)?;
    let records = env_u64("BENCH_PG_RECORDS", 10_000_000) as i64;

    // Connecting migrates: a table of an older layout is upgraded in place, timed here.
    let migrating = Instant::now();
    let full = store(&url, "full_records", 2).await;
    let connect_s = migrating.elapsed().as_secs_f64();
    println!("scale: connected to the full table, migrations included, in {connect_s:.1} s");
    let empty = store(&url, "empty_records", 2).await;
    let table = full.table();
    let have = scalar_i64(full.pool(), format!("SELECT count(*)::int8 FROM {table}")).await;
    let (have, reused) = if have == records {
        println!("scale: {table} already holds {records} records: kept");
        (have, true)
    } else {
        exec(full.pool(), format!("TRUNCATE {table}")).await;
        (0, false)
    };
    // The "empty" side holds a few records, analyzed, so that both sides run the plans a
    // table in use gets (a table planned while empty is scanned whole, however large it
    // has grown since, until it is analyzed again).
    exec(empty.pool(), format!("TRUNCATE {}", empty.table())).await;
    fill(empty.pool(), &empty.table(), 0, EMPTY_RECORDS).await;
    vacuum(empty.pool(), &empty.table()).await;

    let mut keys = Keys(seed());
    let (fill_s, curve) = fill_with_curve(&empty, &full, have, records, reused, &mut keys).await;
    // Autovacuum may be off (it is on the project's test server): the rows earlier runs'
    // latency rows left dead are vacuumed once they are many.
    let dead = scalar_i64(
        full.pool(),
        format!("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"),
    )
    .await;
    if !reused || dead > 100_000 {
        vacuum(full.pool(), &table).await;
    }
    let (full_bytes, full_rows) = size(full.pool(), &table).await;
    println!(
        "scale: {table}: {full_rows} records, {:.1} bytes per record",
        full_bytes as f64 / full_rows as f64
    );

    let latency = latency(&empty, &full, &mut keys).await;
    // What the latency rows added to the full table: removed again, so the next run
    // finds exactly `records` records.
    exec(
        full.pool(),
        format!("DELETE FROM {table} WHERE owner = '{LATENCY_OWNER}'"),
    )
    .await;
    let sizes = sizes(&url, full.pool()).await;
    let expiry = expiry(&url).await;
    if std::env::var("BENCH_PG_DROP").is_ok_and(|v| v == "1") {
        exec(full.pool(), format!("DROP SCHEMA \"{SCHEMA}\" CASCADE")).await;
    }
    Ok(json!({
        "records": full_rows,
        "reused": reused,
        "fill_s": fill_s,
        "curve": curve,
        "connect_s": connect_s,
        "full_bytes_per_record": full_bytes as f64 / full_rows as f64,
        "latency": latency,
        "size": sizes,
        "expiry": expiry,
    }))
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or `--list` asks for nothing this runs.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run()) {
        Ok(value) => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/criterion-latency/postgres-scale");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join("scale.json");
            match std::fs::write(&path, value.to_string()) {
                Ok(()) => println!("scale: wrote {}", path.display()),
                Err(e) => eprintln!("scale: writing {}: {e}", path.display()),
            }
        }
        Err(e) => {
            eprintln!("scale: skipped: {e}");
        }
    }
}
