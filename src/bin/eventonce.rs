//! The `eventonce` command: `eventonce demo` shows the guard at work; `keys`, `show`,
//! `release` and `stats` let an operator look at and fix the records in Redis or PostgreSQL.

#[path = "eventonce/admin.rs"]
mod admin;
#[path = "eventonce/connect.rs"]
mod connect;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use eventonce::{
    EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, MemoryStore, Outcome,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use connect::Backend;

#[derive(Parser)]
#[command(name = "eventonce", version, about = "Process each event once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push a stream of events with duplicates, failures and a crash through the guard,
    /// on the embedded in-memory store (or Redis, or PostgreSQL), and print what happened.
    Demo(DemoArgs),
    /// List keys with their state, owner, age and TTL left (SCAN on Redis, paged SQL on
    /// PostgreSQL; never KEYS).
    Keys(admin::KeysArgs),
    /// Show one record, decoded: by key, or computed from an event.
    Show(admin::ShowArgs),
    /// Remove one record so that its event can be processed again (asks first).
    Release(admin::ReleaseArgs),
    /// Count records per service, event type and state, with their (sampled) memory.
    Stats(admin::StatsArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Distinct events in the stream.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Share of events delivered a second time (0.0 to 1.0).
    #[arg(long, default_value_t = 0.3)]
    duplicate_rate: f64,
    /// Every n-th event's handler fails on its first attempt (0: never).
    #[arg(long, default_value_t = 17)]
    fail_every: usize,
    /// Concurrent consumer tasks.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Seed of the duplicate pattern.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Claim lease in milliseconds (how long the crashed consumer's claim blocks its event).
    #[arg(long, default_value_t = 500)]
    lease_ms: u64,
    /// Print the guard's structured logs at this level and above to stderr
    /// (off, error, warn, info, debug).
    #[arg(long, default_value = "off")]
    log: tracing_subscriber::filter::LevelFilter,
    /// Run on this Redis instead of the in-memory store.
    #[arg(long, value_name = "URL", conflicts_with = "postgres")]
    redis: Option<String>,
    /// Run on this PostgreSQL database instead of the in-memory store (the records table
    /// is created if missing).
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Run the flow through this Kafka broker (its bootstrap servers) instead: a fresh
    /// topic, events produced with a fifth of them sent twice, a consumer in a fresh group
    /// committing offsets after the guard's outcome (the `kafka` feature).
    #[arg(long, value_name = "BOOTSTRAP", conflicts_with_all = ["redis", "postgres"])]
    kafka: Option<String>,
    /// PostgreSQL schema of the records table.
    #[arg(long, value_name = "NAME", default_value = "public")]
    pg_schema: String,
    /// PostgreSQL records table.
    #[arg(long, value_name = "NAME", default_value = "eventonce_records")]
    pg_table: String,
    /// Key prefix of the demo's records.
    #[arg(long, value_name = "PREFIX", default_value = eventonce::DEFAULT_KEY_PREFIX)]
    prefix: String,
    /// TTL of the demo's completed records, in seconds (they stay in Redis or PostgreSQL
    /// for `eventonce keys` and `stats` to show).
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

impl DemoArgs {
    fn backend(&self) -> Backend {
        match (&self.redis, &self.postgres) {
            (Some(url), _) => Backend::Redis(url.clone()),
            (None, Some(url)) => Backend::Postgres {
                url: url.clone(),
                schema: self.pg_schema.clone(),
                table: self.pg_table.clone(),
            },
            (None, None) => Backend::Memory,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo(args)),
        Command::Keys(args) => runtime.block_on(admin::keys(args)),
        Command::Show(args) => runtime.block_on(admin::show(args)),
        Command::Release(args) => runtime.block_on(admin::release(args)),
        Command::Stats(args) => runtime.block_on(admin::stats(args)),
    }
}

/// One delivery of an event, as a broker would hand it to a consumer.
#[derive(Clone)]
struct Delivery {
    index: usize,
    envelope: EventEnvelope,
}

#[derive(Default)]
struct Tally {
    deliveries: AtomicUsize,
    processed: AtomicUsize,
    duplicates: AtomicUsize,
    failures: AtomicUsize,
    in_progress: AtomicUsize,
    unprotected: AtomicUsize,
    handler_runs: AtomicUsize,
}

const EVENT_TYPES: &[&str] = &[
    "huleedu.essay.spellcheck.requested.v1",
    "huleedu.batch.essays.registered.v1",
    "huleedu.cj_assessment.completed.v1",
    "huleedu.result_aggregator.batch.completed.v1",
];

async fn demo(args: DemoArgs) -> ExitCode {
    if args.events == 0 || args.workers == 0 || !(0.0..=1.0).contains(&args.duplicate_rate) {
        eprintln!("error: --events and --workers must be positive, --duplicate-rate within 0..1");
        return ExitCode::FAILURE;
    }
    if let Some(bootstrap) = &args.kafka {
        return kafka_demo(bootstrap, &args).await;
    }
    tracing_subscriber::fmt()
        .with_max_level(args.log)
        .with_writer(std::io::stderr)
        .init();
    let lease = Duration::from_millis(args.lease_ms.max(1));
    let backend = args.backend();
    let mut builder = IdempotencyConfig::builder("demo-service")
        .processing_ttl(lease)
        .key_prefix(args.prefix.clone())
        .debug_logging(args.log >= tracing_subscriber::filter::LevelFilter::DEBUG);
    if backend != Backend::Memory {
        // Records that outlive the run: keep them briefly, and give a shared server's
        // round trips room.
        builder = builder
            .event_type_ttls(Vec::<(String, Duration)>::new())
            .default_ttl(Duration::from_secs(args.ttl_secs.max(1)))
            .store_timeout(Duration::from_secs(5));
    }
    let config = match builder.build() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let (store, target): (Arc<dyn IdempotencyStore>, String) = match &backend {
        Backend::Memory => (Arc::new(MemoryStore::new()), String::new()),
        other => match connect::connect(other, true).await {
            Ok(c) => (c.store, format!(" target={}", c.target)),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let guard = Guard::from_arc(store, config);
    let started = Instant::now();
    // Events of a persistent store's earlier runs are still recorded: this run's ids are
    // its own.
    let run_id = match backend {
        Backend::Memory => String::new(),
        _ => format!(
            "{:x}-",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        ),
    };

    let events: Vec<EventEnvelope> = (0..args.events)
        .map(|i| {
            EventEnvelope::new(
                EVENT_TYPES[i % EVENT_TYPES.len()],
                json!({"essay_id": format!("essay-{i}"), "batch": i / 100}),
            )
            .with_event_id(format!("evt-{run_id}{i:06}"))
            .with_correlation_id(format!("corr-{}", i / 10))
        })
        .collect();

    // The stream: every event once, and a share of them again, re-serialized with another
    // key order and whitespace (as a producer retry through another client would send it).
    let mut rng = args.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let mut stream: Vec<Delivery> = events
        .iter()
        .enumerate()
        .map(|(index, e)| Delivery {
            index,
            envelope: e.clone(),
        })
        .collect();
    let mut resent = 0;
    for (index, e) in events.iter().enumerate() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if ((rng >> 33) as f64 / (1u64 << 31) as f64) < args.duplicate_rate {
            let pretty = serde_json::to_vec_pretty(e).unwrap_or_default();
            if let Ok(envelope) = EventEnvelope::from_slice(&pretty) {
                let at = (index + 1 + (rng as usize % 50)).min(stream.len());
                stream.insert(at, Delivery { index, envelope });
                resent += 1;
            }
        }
    }

    let tally = Arc::new(Tally::default());
    let bar = progress_bar(stream.len() as u64);
    let effects: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    let failed_once: Arc<Mutex<std::collections::HashSet<usize>>> = Arc::default();

    // A consumer that crashes mid-handler: it claims the first event and dies without
    // releasing, completing or renewing anything (its future is leaked, like a killed
    // process's memory). Its event stays claimed for one lease, then is processed again.
    let crash_index = 0;
    let crashed_at = Instant::now();
    {
        let crashed_guard = guard.clone();
        let envelope = events[crash_index].clone();
        let mut run = Box::pin(async move {
            crashed_guard
                .run(&envelope, async {
                    std::future::pending::<()>().await;
                    Ok::<_, std::io::Error>(())
                })
                .await
        });
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut run).await;
        std::mem::forget(run);
    }

    let mut round = stream;
    let mut redeliveries = 0usize;
    let mut rounds = 0usize;
    while !round.is_empty() {
        rounds += 1;
        let next = Arc::new(Mutex::new(Vec::new()));
        let cursor = Arc::new(AtomicUsize::new(0));
        let round_items = Arc::new(round);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..args.workers {
            let (guard, tally, effects, failed_once) = (
                guard.clone(),
                Arc::clone(&tally),
                Arc::clone(&effects),
                Arc::clone(&failed_once),
            );
            let (cursor, items, next, bar) = (
                Arc::clone(&cursor),
                Arc::clone(&round_items),
                Arc::clone(&next),
                bar.clone(),
            );
            let fail_every = args.fail_every;
            workers.spawn(async move {
                loop {
                    let i = cursor.fetch_add(1, Ordering::Relaxed);
                    let Some(delivery) = items.get(i) else { break };
                    tally.deliveries.fetch_add(1, Ordering::Relaxed);
                    bar.inc(1);
                    let index = delivery.index;
                    let outcome = guard
                        .run(&delivery.envelope, async {
                            tally.handler_runs.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                            let transient = fail_every > 0
                                && index % fail_every == fail_every - 1
                                && lock(&failed_once).insert(index);
                            if transient {
                                return Err("downstream service unavailable");
                            }
                            *lock(&effects).entry(index).or_default() += 1;
                            Ok(())
                        })
                        .await;
                    match outcome {
                        Ok(Outcome::Processed(())) => {
                            tally.processed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Outcome::Duplicate) => {
                            tally.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Outcome::Unprotected(())) => {
                            tally.unprotected.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(GuardError::Handler(_)) => {
                            tally.failures.fetch_add(1, Ordering::Relaxed);
                            bar.inc_length(1);
                            lock(&next).push(delivery.clone());
                        }
                        Err(GuardError::InProgress) => {
                            tally.in_progress.fetch_add(1, Ordering::Relaxed);
                            bar.inc_length(1);
                            lock(&next).push(delivery.clone());
                        }
                        Err(other) => eprintln!("event {index}: {other}"),
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        round = std::mem::take(&mut *lock(&next));
        redeliveries += round.len();
        if !round.is_empty() {
            // The broker redelivers what was not acknowledged, a little later.
            tokio::time::sleep(lease / 2).await;
        }
    }
    let crash_recovered_after = crashed_at.elapsed();
    bar.finish();

    let effects = lock(&effects);
    let once = (0..args.events)
        .filter(|i| effects.get(i) == Some(&1))
        .count();
    let twice = effects.values().filter(|&&n| n > 1).count();
    let missing = args.events - effects.len();
    let crash_recovered = effects.get(&crash_index) == Some(&1);
    let retried_ok = lock(&failed_once)
        .iter()
        .filter(|i| effects.get(i) == Some(&1))
        .count();
    let t = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let stats = guard.stats();

    println!(
        "eventonce demo: store={}{target} service=demo-service workers={} lease={}ms",
        backend.name(),
        args.workers,
        lease.as_millis()
    );
    if !run_id.is_empty() {
        println!(
            "run {} : event ids evt-{run_id}*, records kept {} s under {}:demo-service:",
            run_id.trim_end_matches('-'),
            args.ttl_secs.max(1),
            args.prefix
        );
    }
    println!();
    println!("| {:<38} | {:>8} |", "what happened", "count");
    println!("|{:-<40}|{:->10}|", "", "");
    let rows: [(&str, usize); 11] = [
        ("distinct events", args.events),
        (
            "deliveries (incl. duplicates, retries)",
            t(&tally.deliveries),
        ),
        ("duplicates sent by the producer", resent),
        ("processed", t(&tally.processed)),
        ("duplicates skipped", t(&tally.duplicates)),
        ("failures released", t(&tally.failures)),
        ("  ... retried and processed", retried_ok),
        ("in progress elsewhere, redelivered", t(&tally.in_progress)),
        (
            "crashed consumer's event recovered",
            usize::from(crash_recovered),
        ),
        ("unprotected runs", t(&tally.unprotected)),
        ("handler runs", t(&tally.handler_runs)),
    ];
    for (what, n) in rows {
        println!("| {what:<38} | {n:>8} |");
    }
    println!();
    println!(
        "effects applied exactly once: {once}/{}; twice or more: {twice}; never: {missing}",
        args.events
    );
    println!(
        "redelivery rounds: {rounds} ({redeliveries} redeliveries); crash recovered after {:.0} ms (lease {} ms); elapsed {:.0} ms",
        crash_recovered_after.as_secs_f64() * 1000.0,
        lease.as_millis(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "guard counters: processed={} duplicates={} in_progress={} handler_failures={} claims_lost={}",
        stats.processed, stats.duplicates, stats.in_progress, stats.handler_failures, stats.claims_lost
    );
    if once == args.events && twice == 0 && missing == 0 {
        println!("OK: every event processed exactly once");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: some events were lost or processed twice");
        ExitCode::FAILURE
    }
}

/// A progress bar on stderr, drawn only when both stdout and stderr are terminals (never
/// in tests, pipes or CI).
fn progress_bar(len: u64) -> ProgressBar {
    use std::io::IsTerminal;
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} deliveries, {per_sec}, {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `demo --kafka`: the flow through the user's own broker.
#[cfg(feature = "kafka")]
async fn kafka_demo(bootstrap: &str, args: &DemoArgs) -> ExitCode {
    let options = eventonce::kafka::demo::DemoOptions {
        events: u32::try_from(args.events).unwrap_or(u32::MAX),
        fail_every: u32::try_from(args.fail_every).unwrap_or(u32::MAX),
        ..Default::default()
    };
    println!(
        "eventonce demo: kafka bootstrap={bootstrap} events={}",
        options.events
    );
    match eventonce::kafka::demo::run(bootstrap, options).await {
        Ok(report) => {
            println!("{report}");
            if report.is_exactly_once() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `demo --kafka` in a binary built without Kafka support.
#[cfg(not(feature = "kafka"))]
async fn kafka_demo(_bootstrap: &str, _args: &DemoArgs) -> ExitCode {
    eprintln!(
        "error: this eventonce binary was built without Kafka support; reinstall it with \
         the feature: `cargo install --path . --features full,kafka` in a clone of the \
         repository, or `cargo install --git https://github.com/eventonce/eventonce \
         eventonce --features full,kafka`"
    );
    ExitCode::FAILURE
}
