//! The simulation on the real Redis and PostgreSQL (`EVENTONCE_REDIS_URL`,
//! `EVENTONCE_POSTGRES_URL`, the local servers by default): fewer seeds, on the real clock
//! with a short lease, run side by side, each seed under a service name of its own; the
//! keys (Redis) and the schema (PostgreSQL) are removed afterwards. A seed replays the
//! same plan, not the same interleaving.

use std::sync::Arc;
use std::time::Instant;

use eventonce::IdempotencyStore;

use crate::plan::Params;
use crate::world::{self, Report};
use crate::{summarize, take_panics, Env};

/// Runs the stores the features and `SIM_STORE` ask for, in parallel; each one's result
/// and output.
pub(crate) fn run(env: &Env) -> Vec<(bool, String)> {
    let mut jobs: Vec<(&'static str, Job)> = Vec::new();
    #[cfg(feature = "redis")]
    if env.runs("redis") {
        jobs.push(("redis", Job::Redis));
    }
    #[cfg(feature = "postgres")]
    if env.runs("postgres") {
        jobs.push(("postgres", Job::Postgres));
    }
    let seeds = env.seeds(env.real_seeds);
    let trace = env.trace;
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(name, job)| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    let started = Instant::now();
                    let reports = job.run(&seeds, trace);
                    (name, reports, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (name, reports, elapsed) = h.join().expect("the simulation thread");
                summarize(name, &reports, elapsed, |seed| {
                    format!("SIM_SEED={seed} SIM_STORE={name} make sim")
                })
            })
            .collect()
    })
}

enum Job {
    #[cfg(feature = "redis")]
    Redis,
    #[cfg(feature = "postgres")]
    Postgres,
}

fn service(seed: u64) -> String {
    format!("sim-{}-{seed}", std::process::id())
}

impl Job {
    fn run(self, seeds: &[u64], trace: bool) -> Vec<Report> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut reports = runtime.block_on(async {
            match self {
                #[cfg(feature = "redis")]
                Job::Redis => redis(seeds, trace).await,
                #[cfg(feature = "postgres")]
                Job::Postgres => postgres(seeds, trace).await,
            }
        });
        drop(runtime);
        let panics = take_panics();
        if let Some(first) = reports.first_mut() {
            first.violations.extend(panics);
        }
        reports
    }
}

/// Every seed at once on `store`.
async fn seeds_at_once(
    store: Arc<dyn IdempotencyStore>,
    seeds: &[u64],
    trace: bool,
) -> Vec<Report> {
    let runs = seeds.iter().map(|&seed| {
        let store = Arc::clone(&store);
        tokio::spawn(world::simulate(
            seed,
            Params::real(),
            store,
            None,
            service(seed),
            trace,
        ))
    });
    let handles: Vec<_> = runs.collect();
    let mut reports = Vec::new();
    for (handle, &seed) in handles.into_iter().zip(seeds) {
        reports.push(
            handle
                .await
                .unwrap_or_else(|_| failed(seed, "the simulation itself panicked")),
        );
    }
    reports
}

fn failed(seed: u64, why: &str) -> Report {
    Report {
        seed,
        violations: vec![format!("P7 {why}")],
        stats: Default::default(),
        plan: String::new(),
        trace: Vec::new(),
    }
}

#[cfg(feature = "redis")]
async fn redis(seeds: &[u64], trace: bool) -> Vec<Report> {
    let url =
        std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = match eventonce::RedisStore::connect(&url).await {
        Ok(store) => store,
        Err(err) => {
            return seeds
                .iter()
                .map(|&s| failed(s, &format!("the simulation needs Redis at {url}: {err}")))
                .collect()
        }
    };
    let reports = seeds_at_once(Arc::new(store), seeds, trace).await;
    // Remove the run's keys.
    let config = |seed| {
        eventonce::IdempotencyConfig::builder(service(seed))
            .build()
            .expect("a valid service name")
            .service_namespace()
    };
    if let Ok(client) = redis::Client::open(url.as_str()) {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            for &seed in seeds {
                let pattern = format!("{}*", config(seed));
                let mut cursor: u64 = 0;
                loop {
                    let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1_000)
                        .query_async(&mut conn)
                        .await;
                    let Ok((next, keys)) = page else { break };
                    if !keys.is_empty() {
                        let _: redis::RedisResult<()> =
                            redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
        }
    }
    reports
}

#[cfg(feature = "postgres")]
async fn postgres(seeds: &[u64], trace: bool) -> Vec<Report> {
    let url = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("eventonce_sim_{}", std::process::id());
    let options = eventonce::PostgresOptions::default()
        .schema(schema.clone())
        .max_connections(16);
    let store = match eventonce::PostgresStore::connect_with(&url, options).await {
        Ok(store) => store,
        Err(err) => {
            return seeds
                .iter()
                .map(|&s| {
                    failed(
                        s,
                        &format!("the simulation needs PostgreSQL at {url}: {err}"),
                    )
                })
                .collect()
        }
    };
    let pool = store.pool().clone();
    let reports = seeds_at_once(Arc::new(store), seeds, trace).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await;
    reports
}
