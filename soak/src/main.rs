//! The chaos soak: N events, a share of them delivered again, pushed through `Guard::run`
//! on Redis by several worker processes, with random handler failures, workers SIGKILLed
//! at random and Redis restarted once. Side effects are recorded in PostgreSQL, which also
//! serves as the at-least-once queue (a delivery is acknowledged only after the guard's
//! outcome is final). The result is a table; the exit code is non-zero if an event was
//! lost, or processed twice where nothing excuses it.
//!
//! A second effect is excused when the first ran unprotected (fail open during the Redis
//! outage), or when the worker that applied the first was killed before it could mark the
//! event completed: the lease then expires and the redelivery runs again. That window is
//! the price of keeping the record outside the effect's database; the transactional mode
//! (`Guard::run_in_transaction`) closes it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use eventonce_core::{EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, Outcome};
use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::RedisProcess;
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::AssertSqlSafe;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "eventonce-soak",
    about = "Chaos soak of eventonce on Redis, effects in PostgreSQL"
)]
struct Args {
    /// Distinct events.
    #[arg(long, default_value_t = 2000)]
    events: u32,
    /// Worker processes at a time.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Share of events delivered twice.
    #[arg(long, default_value_t = 0.2)]
    duplicate_rate: f64,
    /// Share of handler runs that fail (before their effect).
    #[arg(long, default_value_t = 0.05)]
    fail_rate: f64,
    /// Workers SIGKILLed during the run.
    #[arg(long, default_value_t = 6)]
    kills: u32,
    /// Longest random handler duration, in milliseconds.
    #[arg(long, default_value_t = 4)]
    handler_ms: u64,
    /// Claim lease in milliseconds: how long a killed worker's event stays blocked.
    #[arg(long, default_value_t = 1500)]
    lease_ms: u64,
    /// PostgreSQL URL for the queue and the effects.
    #[arg(
        long,
        env = "EVENTONCE_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, hide = true)]
    worker: Option<u32>,
    #[arg(long, hide = true)]
    schema: Option<String>,
    #[arg(long, hide = true)]
    redis: Option<String>,
}

/// A small deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 1_000_000) as f64 / 1_000_000.0 < p
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = match args.worker {
        Some(id) => runtime.block_on(worker(args.clone(), id)),
        None => runtime.block_on(coordinator(args.clone())),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A pool for the queue and the effects. The soak kills consumers, never PostgreSQL, so
/// commits need not wait for the disk (`synchronous_commit = off`): a committed row stays
/// visible to every later reader, which is all the verdict needs.
async fn pool(url: &str, connections: u32) -> Res<PgPool> {
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    let options = options.options([("synchronous_commit", "off")]);
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(options)
        .await?)
}

async fn exec(pool: &PgPool, sql: String) -> Res<()> {
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

fn spawn_worker(args: &Args, id: u32, schema: &str, redis: &str) -> Res<Child> {
    let exe = std::env::current_exe()?;
    Ok(Command::new(exe)
        .args([
            "--worker",
            &id.to_string(),
            "--schema",
            schema,
            "--redis",
            redis,
        ])
        .args([
            "--postgres",
            &args.postgres,
            "--fail-rate",
            &args.fail_rate.to_string(),
        ])
        .args([
            "--handler-ms",
            &args.handler_ms.to_string(),
            "--lease-ms",
            &args.lease_ms.to_string(),
        ])
        .args(["--seed", &(args.seed + u64::from(id) * 7919).to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?)
}

async fn coordinator(args: Args) -> Res<bool> {
    let started = Instant::now();
    let mut rng = Rng(args.seed);
    // Redis with an append-only file synced on every write, so that its restart keeps
    // what it acknowledged (without persistence a restart forgets completed events).
    let mut redis =
        RedisProcess::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false);
    let pool = pool(&args.postgres, 4).await?;
    let schema = format!(
        "eventonce_soak_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    create_schema(&pool, &schema).await?;
    let (rows, resent) = stream(&args, &mut rng)?;
    let total = rows.len();
    load(&pool, &schema, &rows).await?;
    let chaos = run_workers(&args, &mut rng, &pool, &schema, &mut redis, total).await?;
    let verdict = verdict(&args, &pool, &schema, &chaos.killed).await?;
    println!("eventonce soak: {} events, {} workers at a time, {} kills, Redis restarted {}, lease {} ms", args.events, args.workers, chaos.killed.len(), if chaos.redis_restarted { "once" } else { "never" }, args.lease_ms);
    verdict.print(&args, total, resent, chaos.killed.len());
    println!();
    println!(
        "elapsed {:.1} s; schema {schema}",
        started.elapsed().as_secs_f64()
    );
    for (event, runs) in verdict.violations.iter().take(10) {
        println!("VIOLATION: event {event} applied by {runs:?}");
    }
    let Verdict {
        lost,
        twice,
        unfinished,
        ..
    } = verdict;
    let ok = lost == 0 && twice == 0 && unfinished == 0;
    if ok {
        exec(&pool, format!("DROP SCHEMA \"{schema}\" CASCADE")).await?;
        println!(
            "soak: OK (no event lost, none processed twice outside an unprotected or crash window)"
        );
    } else {
        println!("soak: FAILED (lost {lost}, processed twice {twice}, unfinished {unfinished}); schema {schema} kept for inspection");
    }
    drop(redis);
    Ok(ok)
}

/// The queue (`deliveries`), the effects and every worker's outcomes.
async fn create_schema(pool: &PgPool, schema: &str) -> Res<()> {
    exec(pool, format!("CREATE SCHEMA \"{schema}\"")).await?;
    exec(pool, format!("CREATE TABLE \"{schema}\".deliveries (id bigserial PRIMARY KEY, event int NOT NULL, payload text NOT NULL, visible_at timestamptz NOT NULL DEFAULT now(), done bool NOT NULL DEFAULT false)")).await?;
    exec(
        pool,
        format!("CREATE INDEX ON \"{schema}\".deliveries (visible_at) WHERE NOT done"),
    )
    .await?;
    exec(pool, format!("CREATE TABLE \"{schema}\".effects (id bigserial PRIMARY KEY, event int NOT NULL, worker int NOT NULL, unprotected bool NOT NULL DEFAULT false)")).await?;
    exec(pool, format!("CREATE TABLE \"{schema}\".outcomes (worker int NOT NULL, event int NOT NULL, kind text NOT NULL)")).await
}

/// The stream: every event once, a share again (re-serialized: another key order).
/// Returns the deliveries and how many were sent again.
fn stream(args: &Args, rng: &mut Rng) -> Res<(Vec<(u32, String)>, u32)> {
    let mut rows: Vec<(u32, String)> = Vec::new();
    let mut resent = 0u32;
    for i in 0..args.events {
        let e = EventEnvelope::new(
            "soak.order.placed.v1",
            json!({"order": i, "lines": [i % 7, i % 11]}),
        )
        .with_event_id(format!("soak-{i}"));
        let payload = serde_json::to_string(&e)?;
        rows.push((i, payload.clone()));
        if rng.chance(args.duplicate_rate) {
            let pretty = serde_json::to_string_pretty(&e)?;
            let at = rows.len() + rng.below(200) as usize;
            rows.push((i, pretty));
            let last = rows.len() - 1;
            rows.swap(last, at.min(last));
            resent += 1;
        }
    }
    Ok((rows, resent))
}

async fn load(pool: &PgPool, schema: &str, rows: &[(u32, String)]) -> Res<()> {
    for chunk in rows.chunks(1000) {
        let mut q = sqlx::QueryBuilder::new(format!(
            "INSERT INTO \"{schema}\".deliveries (event, payload) "
        ));
        q.push_values(chunk, |mut b, (event, payload)| {
            b.push_bind(*event as i32).push_bind(payload.clone());
        });
        q.build().execute(pool).await?;
    }
    Ok(())
}

/// What the chaos did: the workers killed and whether Redis restarted.
struct Chaos {
    killed: Vec<u32>,
    redis_restarted: bool,
}

/// The workers under chaos until every delivery is acknowledged (or the run gives up).
async fn run_workers(
    args: &Args,
    rng: &mut Rng,
    pool: &PgPool,
    schema: &str,
    redis: &mut RedisProcess,
    total: usize,
) -> Res<Chaos> {
    let redis_url = redis.url();
    let mut workers: HashMap<u32, Child> = HashMap::new();
    let mut next_id = 0u32;
    for _ in 0..args.workers {
        workers.insert(next_id, spawn_worker(args, next_id, schema, &redis_url)?);
        next_id += 1;
    }
    let mut chaos = Chaos {
        killed: Vec::new(),
        redis_restarted: false,
    };
    let mut last_vacuum = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let done_sql = format!("SELECT count(*) FROM \"{schema}\".deliveries WHERE done");
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done: i64 = sqlx::query_scalar(AssertSqlSafe(done_sql.clone()))
            .fetch_one(pool)
            .await?;
        let progress = done as f64 / total as f64;
        if done as usize == total {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("soak: gave up with {done}/{total} deliveries acknowledged");
            break;
        }
        // Kills spread over the first 80% of the run.
        let due = ((progress / 0.8) * f64::from(args.kills)).ceil() as u32;
        if (chaos.killed.len() as u32) < due.min(args.kills) && !workers.is_empty() {
            let ids: Vec<u32> = workers.keys().copied().collect();
            let victim = ids[rng.below(ids.len() as u64) as usize];
            if let Some(mut child) = workers.remove(&victim) {
                let _ = child.kill();
                let _ = child.wait();
                chaos.killed.push(victim);
            }
            workers.insert(next_id, spawn_worker(args, next_id, schema, &redis_url)?);
            next_id += 1;
        }
        // The queue's frequent updates leave dead rows faster than autovacuum clears them
        // on a small machine; vacuum it now and then so taking a delivery stays cheap.
        if last_vacuum.elapsed() > Duration::from_secs(5) {
            exec(pool, format!("VACUUM \"{schema}\".deliveries")).await?;
            last_vacuum = Instant::now();
        }
        if !chaos.redis_restarted && progress >= 0.4 {
            redis.restart();
            chaos.redis_restarted = true;
        }
        // A worker that exited by itself (it should not) is replaced.
        let exited: Vec<u32> = workers
            .iter_mut()
            .filter_map(|(id, c)| c.try_wait().ok().flatten().map(|_| *id))
            .collect();
        for id in exited {
            workers.remove(&id);
            workers.insert(next_id, spawn_worker(args, next_id, schema, &redis_url)?);
            next_id += 1;
        }
    }
    for (_, mut child) in workers {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(chaos)
}

/// The verdict, per event.
struct Verdict {
    once: usize,
    lost: usize,
    twice: usize,
    twice_unprotected: usize,
    twice_crash: usize,
    unfinished: usize,
    violations: Vec<(i32, Vec<(i32, bool)>)>,
    /// Outcome kinds recorded by the workers, one per run.
    outcomes: Vec<String>,
}

async fn verdict(args: &Args, pool: &PgPool, schema: &str, killed: &[u32]) -> Res<Verdict> {
    let effects: Vec<(i32, i32, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event, worker, unprotected FROM \"{schema}\".effects ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    let outcomes: Vec<(i32, i32, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT worker, event, kind FROM \"{schema}\".outcomes"
    )))
    .fetch_all(pool)
    .await?;
    let mut by_event: HashMap<i32, Vec<(i32, bool)>> = HashMap::new();
    for (event, worker, unprotected) in effects {
        by_event
            .entry(event)
            .or_default()
            .push((worker, unprotected));
    }
    let finished: std::collections::HashSet<(i32, i32)> = outcomes
        .iter()
        .filter(|(_, _, k)| k == "processed" || k == "unprotected")
        .map(|(w, e, _)| (*w, *e))
        .collect();
    let unacknowledged: std::collections::HashSet<i32> = sqlx::query_scalar(AssertSqlSafe(
        format!("SELECT DISTINCT event FROM \"{schema}\".deliveries WHERE NOT done"),
    ))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let mut v = Verdict {
        once: 0,
        lost: 0,
        twice: 0,
        twice_unprotected: 0,
        twice_crash: 0,
        unfinished: 0,
        violations: Vec::new(),
        outcomes: outcomes.into_iter().map(|(_, _, k)| k).collect(),
    };
    for event in 0..args.events as i32 {
        let runs = by_event.get(&event).cloned().unwrap_or_default();
        match runs.len() {
            0 if unacknowledged.contains(&event) => v.unfinished += 1,
            0 => v.lost += 1,
            1 => v.once += 1,
            _ => {
                if runs.iter().any(|(_, unprotected)| *unprotected) {
                    v.twice_unprotected += 1;
                } else if runs[..runs.len() - 1]
                    .iter()
                    .all(|(w, _)| killed.contains(&(*w as u32)) && !finished.contains(&(*w, event)))
                {
                    v.twice_crash += 1;
                } else {
                    v.twice += 1;
                    v.violations.push((event, runs));
                }
            }
        }
    }
    Ok(v)
}

impl Verdict {
    fn count(&self, kind: &str) -> usize {
        self.outcomes.iter().filter(|k| *k == kind).count()
    }

    fn print(&self, args: &Args, total: usize, resent: u32, killed: usize) {
        println!();
        println!("| {:<44} | {:>9} |", "what", "count");
        println!("|{:-<46}|{:->11}|", "", "");
        for (what, n) in [
            ("events", args.events as usize),
            ("deliveries (incl. duplicates sent)", total),
            ("duplicates sent by the producer", resent as usize),
            ("processed once", self.once),
            ("duplicates skipped", self.count("duplicate")),
            (
                "retried (handler failed, redelivered)",
                self.count("failed"),
            ),
            (
                "in progress elsewhere, redelivered",
                self.count("in_progress"),
            ),
            ("lost (acknowledged, never applied)", self.lost),
            ("not finished when the run gave up", self.unfinished),
            ("processed twice", self.twice),
            (
                "processed twice, first run unprotected",
                self.twice_unprotected,
            ),
            (
                "processed twice, killed before completion",
                self.twice_crash,
            ),
            ("unprotected runs", self.count("unprotected")),
            ("workers SIGKILLed", killed),
        ] {
            println!("| {what:<44} | {n:>9} |");
        }
    }
}

async fn worker(args: Args, id: u32) -> Res<bool> {
    let schema = args.schema.clone().ok_or("--schema")?;
    let redis = args.redis.clone().ok_or("--redis")?;
    let mut rng = Rng(args.seed);
    let pool = pool(&args.postgres, 2).await?;
    let timeout = Duration::from_millis(200);
    let store = connect(&redis, timeout).await?;
    let config = IdempotencyConfig::builder("soak-consumer")
        .lease(Duration::from_millis(args.lease_ms))
        .store_timeout(timeout)
        .circuit_breaker(3, Duration::from_millis(300))
        .on_store_error(FailMode::Open)
        .build()?;
    let guard = Guard::new(store, config);
    let sql = Statements::new(&schema, args.lease_ms);
    loop {
        let row: Option<(i64, i32, String)> = sqlx::query_as(AssertSqlSafe(sql.take.clone()))
            .fetch_optional(&pool)
            .await?;
        let Some((delivery, event, payload)) = row else {
            let left: i64 = sqlx::query_scalar(AssertSqlSafe(sql.remaining.clone()))
                .fetch_one(&pool)
                .await?;
            if left == 0 {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let envelope = EventEnvelope::from_slice(payload.as_bytes())?;
        let fail = rng.chance(args.fail_rate);
        let pause = Duration::from_millis(rng.below(args.handler_ms + 1));
        let result = guard
            .run(&envelope, async {
                tokio::time::sleep(pause).await;
                if fail {
                    return Err("injected handler failure".to_owned());
                }
                let id: i64 = sqlx::query_scalar(AssertSqlSafe(sql.effect.clone()))
                    .bind(event)
                    .bind(id as i32)
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(id)
            })
            .await;
        let (kind, retry_ms) = sql.settle(&pool, result).await?;
        sql.record(&pool, id, event, kind, delivery, retry_ms)
            .await?;
    }
}

/// A worker started while Redis restarts waits for it, as a consumer's start-up would.
async fn connect(redis: &str, timeout: Duration) -> Res<RedisStore> {
    let connect_until = Instant::now() + Duration::from_secs(30);
    loop {
        match RedisStore::connect_with(redis, RedisOptions::default().timeouts(timeout, timeout))
            .await
        {
            Ok(store) => return Ok(store),
            Err(e) if Instant::now() > connect_until => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A worker's statements on the queue, the effects and the outcomes.
struct Statements {
    take: String,
    effect: String,
    mark_unprotected: String,
    ack: String,
    again: String,
    outcome: String,
    remaining: String,
}

impl Statements {
    fn new(schema: &str, lease_ms: u64) -> Statements {
        // A delivery taken by a worker that dies reappears a little after the lease, as a
        // broker redelivers after a consumer's session times out.
        let visibility = (lease_ms + 500) as f64 / 1000.0;
        Statements {
            take: format!(
                "UPDATE \"{schema}\".deliveries SET visible_at = now() + make_interval(secs => {visibility})
          WHERE id = (SELECT id FROM \"{schema}\".deliveries WHERE NOT done AND visible_at <= now()
                      ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
          RETURNING id, event, payload"
            ),
            effect: format!(
                "INSERT INTO \"{schema}\".effects (event, worker) VALUES ($1, $2) RETURNING id"
            ),
            mark_unprotected: format!(
                "UPDATE \"{schema}\".effects SET unprotected = true WHERE id = $1"
            ),
            ack: format!("UPDATE \"{schema}\".deliveries SET done = true WHERE id = $1"),
            again: format!("UPDATE \"{schema}\".deliveries SET visible_at = now() + make_interval(secs => $2::float8 / 1000) WHERE id = $1"),
            outcome: format!(
                "INSERT INTO \"{schema}\".outcomes (worker, event, kind) VALUES ($1, $2, $3)"
            ),
            remaining: format!("SELECT count(*) FROM \"{schema}\".deliveries WHERE NOT done"),
        }
    }

    /// The outcome's kind and, for a delivery to retry, its delay in milliseconds.
    async fn settle(
        &self,
        pool: &PgPool,
        result: Result<Outcome<i64>, GuardError<String>>,
    ) -> Res<(&'static str, Option<f64>)> {
        Ok(match result {
            Ok(Outcome::Processed(_)) => ("processed", None),
            Ok(Outcome::Duplicate) => ("duplicate", None),
            Ok(Outcome::Unprotected(effect_id)) => {
                sqlx::query(AssertSqlSafe(self.mark_unprotected.clone()))
                    .bind(effect_id)
                    .execute(pool)
                    .await?;
                ("unprotected", None)
            }
            Err(GuardError::Handler(_)) => ("failed", Some(50.0)),
            Err(GuardError::InProgress) => ("in_progress", Some(200.0)),
            Err(other) => return Err(other.to_string().into()),
        })
    }

    /// Records the outcome, then acknowledges the delivery or makes it visible again later.
    async fn record(
        &self,
        pool: &PgPool,
        worker: u32,
        event: i32,
        kind: &str,
        delivery: i64,
        retry_ms: Option<f64>,
    ) -> Res<()> {
        sqlx::query(AssertSqlSafe(self.outcome.clone()))
            .bind(worker as i32)
            .bind(event)
            .bind(kind)
            .execute(pool)
            .await?;
        match retry_ms {
            None => {
                sqlx::query(AssertSqlSafe(self.ack.clone()))
                    .bind(delivery)
                    .execute(pool)
                    .await?
            }
            Some(ms) => {
                sqlx::query(AssertSqlSafe(self.again.clone()))
                    .bind(delivery)
                    .bind(ms)
                    .execute(pool)
                    .await?
            }
        };
        Ok(())
    }
}
