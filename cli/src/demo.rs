//! `eventonce demo`: a stream of events with duplicates, failures and a crashed consumer
//! through the guard, on the in-memory store, Redis or PostgreSQL (or, with `--kafka`,
//! through a broker), and a table of what happened.

mod stream;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;
use eventonce::{Guard, GuardError, IdempotencyConfig, IdempotencyStore, MemoryStore, Outcome};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::connect::{self, Backend};
use crate::{fail, EXIT_NO};
use stream::{Events, Feed, Next, Sent, Stream};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Distinct events in the stream (1 to 1,000,000; generated as they are consumed).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = events_arg)]
    events: usize,
    /// Share of events delivered a second time (0.0 to 1.0).
    #[arg(long, value_name = "SHARE", default_value_t = 0.3, value_parser = share_arg)]
    duplicate_rate: f64,
    /// Every n-th event's handler fails on its first attempt (0: never).
    #[arg(long, default_value_t = 17)]
    fail_every: usize,
    /// Concurrent consumer tasks (1 to 1,024).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = workers_arg)]
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
    #[arg(long, value_name = "PREFIX", default_value = eventonce::config::defaults::DEFAULT_KEY_PREFIX)]
    prefix: String,
    /// TTL of the demo's completed records, in seconds (they stay in Redis or PostgreSQL
    /// for `eventonce keys` and `stats` to show).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = ttl_arg)]
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

/// The largest `--events`: as many records as `MemoryStore::new()` keeps. Past them it
/// evicts the least recently used, and a store that forgets is no demonstration of
/// exactly once. The stream is generated as it is consumed, so the demo's own memory is two
/// bytes per event besides the store's records.
const MAX_EVENTS: usize = 1_000_000;
/// The largest `--workers`.
const MAX_WORKERS: usize = 1024;
/// `--events`: a whole number from 1 to [`MAX_EVENTS`].
fn events_arg(value: &str) -> Result<usize, String> {
    whole_number(value, MAX_EVENTS, " (the demo's maximum)")
}

/// `--workers`: a whole number from 1 to [`MAX_WORKERS`].
fn workers_arg(value: &str) -> Result<usize, String> {
    whole_number(value, MAX_WORKERS, "")
}

/// `value` as a whole number from 1 to `max`, or the error that says so (`note` after it).
fn whole_number(value: &str, max: usize, note: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            format!(
                "must be a whole number from 1 to {}{note}",
                thousands(max as u64)
            )
        })
}

/// `--ttl-secs`: a whole number of seconds, at least 1 (a record kept for no time at all
/// would not be a record).
fn ttl_arg(value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| "must be a whole number of seconds, at least 1".to_owned())
}

/// `--duplicate-rate`: a share from 0.0 to 1.0.
fn share_arg(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|share| (0.0..=1.0).contains(share))
        .ok_or_else(|| "must be a share from 0.0 to 1.0".to_owned())
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A rate for the progress bar: `10,523/s`.
fn per_second(rate: f64) -> String {
    // `as` saturates: a NaN or negative rate (no time elapsed yet) reads 0.
    format!("{}/s", thousands(rate.round() as u64))
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

/// What the handlers did, per event: how often its effect was applied (saturating), and
/// whether its transient failure has happened.
struct Effects {
    applied: Vec<AtomicU8>,
    failed_once: Vec<AtomicBool>,
}

impl Effects {
    fn new(events: usize) -> Effects {
        Effects {
            applied: (0..events).map(|_| AtomicU8::new(0)).collect(),
            failed_once: (0..events).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    fn apply(&self, index: usize) {
        let _ = self.applied[index].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_add(1))
        });
    }

    fn applied(&self, index: usize) -> u8 {
        self.applied[index].load(Ordering::Relaxed)
    }

    /// Whether this is the event's first failure (and records it).
    fn fail_first_time(&self, index: usize) -> bool {
        !self.failed_once[index].swap(true, Ordering::Relaxed)
    }
}

/// What the demo's consumers share.
struct Shared {
    events: Events,
    feed: Mutex<Feed>,
    tally: Tally,
    effects: Effects,
    bar: ProgressBar,
    /// Every n-th event's handler fails on its first attempt (0: never).
    fail_every: usize,
    /// The broker sends an unacknowledged delivery again this long after.
    redelivery_delay: Duration,
    /// When the crashed consumer claimed its event.
    crashed_at: Instant,
    /// How long after the crash its event was processed.
    recovered_after: OnceLock<Duration>,
}

/// The event whose consumer crashes mid-handler.
const CRASH_INDEX: usize = 0;

pub(crate) async fn demo(args: DemoArgs) -> ExitCode {
    if let Some(bootstrap) = &args.kafka {
        return kafka_demo(bootstrap, &args).await;
    }
    tracing_subscriber::fmt()
        .with_max_level(args.log)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let lease = Duration::from_millis(args.lease_ms.max(1));
    let backend = args.backend();
    let config = match demo_config(&args, &backend, lease) {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    let (store, target): (Arc<dyn IdempotencyStore>, String) = match &backend {
        Backend::Memory => (Arc::new(MemoryStore::new()), String::new()),
        other => match connect::connect(other, true).await {
            Ok(c) => (c.store, format!(" target={}", c.target)),
            Err(err) => return fail(err),
        },
    };
    let guard = Guard::from_arc(store, config);
    let started = Instant::now();
    let run_id = run_id(&backend);
    print_header(&args, &backend, &target, lease, &run_id);

    let shared = Arc::new(Shared {
        events: Events { run_id },
        feed: Mutex::new(Feed::new(Stream::new(
            args.events,
            args.duplicate_rate,
            args.seed,
        ))),
        tally: Tally::default(),
        effects: Effects::new(args.events),
        bar: progress_bar(args.events as u64),
        fail_every: args.fail_every,
        redelivery_delay: lease / 2,
        crashed_at: Instant::now(),
        recovered_after: OnceLock::new(),
    });
    crash_a_consumer(&guard, &shared).await;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.workers {
        workers.spawn(consume(guard.clone(), Arc::clone(&shared)));
    }
    while workers.join_next().await.is_some() {}
    shared.bar.finish();
    if !shared.bar.is_hidden() {
        // End the bar's line: what follows starts on a line of its own.
        eprintln!();
    }
    report(&args, &shared, &guard, lease, started)
}

/// The guard's configuration for the demo's store.
fn demo_config(
    args: &DemoArgs,
    backend: &Backend,
    lease: Duration,
) -> Result<IdempotencyConfig, eventonce::ConfigError> {
    let mut builder = IdempotencyConfig::builder("demo-service")
        .lease(lease)
        .key_prefix(args.prefix.clone())
        .debug_logging(args.log >= tracing_subscriber::filter::LevelFilter::DEBUG);
    if *backend != Backend::Memory {
        // Records that outlive the run: keep them briefly, and give a shared server's
        // round trips room.
        builder = builder
            .event_type_ttls(Vec::<(String, Duration)>::new())
            .default_ttl(Duration::from_secs(args.ttl_secs))
            .store_timeout(Duration::from_secs(5));
    }
    builder.build()
}

/// Events of a persistent store's earlier runs are still recorded: this run's ids are its
/// own (empty on the in-memory store).
fn run_id(backend: &Backend) -> String {
    match backend {
        Backend::Memory => String::new(),
        _ => format!(
            "{:x}-",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        ),
    }
}

/// The header comes first, on its own line, before the progress bar is drawn.
fn print_header(args: &DemoArgs, backend: &Backend, target: &str, lease: Duration, run_id: &str) {
    println!(
        "eventonce demo: store={}{target} service=demo-service events={} workers={} lease={}ms",
        backend.name(),
        args.events,
        args.workers,
        lease.as_millis()
    );
    if !run_id.is_empty() {
        println!(
            "run {} : event ids evt-{run_id}*, records kept {} s under {}:demo-service:",
            run_id.trim_end_matches('-'),
            args.ttl_secs,
            args.prefix
        );
    }
}

/// A consumer that crashes mid-handler: it claims the first event and dies without
/// releasing, completing or renewing anything (its future is leaked, like a killed
/// process's memory). Its event stays claimed for one lease, then is processed again.
async fn crash_a_consumer(guard: &Guard, shared: &Shared) {
    let crashed_guard = guard.clone();
    let envelope = shared.events.event(CRASH_INDEX);
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

/// One consumer task: takes deliveries from the feed until the stream is done.
async fn consume(guard: Guard, shared: Arc<Shared>) {
    loop {
        let next = lock(&shared.feed).next(Instant::now());
        let sent = match next {
            Next::Deliver(sent) => sent,
            Next::Wait(delay) => {
                tokio::time::sleep(delay).await;
                continue;
            }
            Next::Done => break,
        };
        let again = deliver(&guard, &shared, sent).await;
        if again {
            shared.bar.inc_length(1);
        }
        let at = again.then(|| Instant::now() + shared.redelivery_delay);
        lock(&shared.feed).settle(sent.index, at);
    }
}

/// Runs one delivery through the guard and counts its outcome; whether the broker must
/// send it again.
async fn deliver(guard: &Guard, shared: &Shared, sent: Sent) -> bool {
    let index = sent.index;
    let envelope = shared.events.delivery(sent);
    let tally = &shared.tally;
    tally.deliveries.fetch_add(1, Ordering::Relaxed);
    if sent.duplicate {
        shared.bar.inc_length(1);
    }
    shared.bar.inc(1);
    let outcome = guard
        .run(&envelope, async {
            tally.handler_runs.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
            let fail_every = shared.fail_every;
            let transient = fail_every > 0
                && index % fail_every == fail_every - 1
                && shared.effects.fail_first_time(index);
            if transient {
                return Err("downstream service unavailable");
            }
            shared.effects.apply(index);
            if index == CRASH_INDEX {
                let _ = shared.recovered_after.set(shared.crashed_at.elapsed());
            }
            Ok(())
        })
        .await;
    let (counter, again) = match outcome {
        Ok(Outcome::Processed(())) => (&tally.processed, false),
        Ok(Outcome::Duplicate) => (&tally.duplicates, false),
        Ok(Outcome::Unprotected(())) => (&tally.unprotected, false),
        Err(GuardError::Handler(_)) => (&tally.failures, true),
        Err(GuardError::InProgress) => (&tally.in_progress, true),
        Err(other) => {
            eprintln!("event {index}: {other}");
            return false;
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
    again
}

/// How often the events' effects were applied.
#[derive(Default)]
struct Applied {
    once: usize,
    twice: usize,
    missing: usize,
    retried_ok: usize,
}

impl Applied {
    fn count(effects: &Effects, events: usize) -> Applied {
        let mut applied = Applied::default();
        for index in 0..events {
            match effects.applied(index) {
                0 => applied.missing += 1,
                1 => {
                    applied.once += 1;
                    if effects.failed_once[index].load(Ordering::Relaxed) {
                        applied.retried_ok += 1;
                    }
                }
                _ => applied.twice += 1,
            }
        }
        applied
    }
}

/// Prints the table of what happened and the exactly-once verdict, whose exit code it is.
fn report(
    args: &DemoArgs,
    shared: &Shared,
    guard: &Guard,
    lease: Duration,
    started: Instant,
) -> ExitCode {
    let (resent, redeliveries) = {
        let feed = lock(&shared.feed);
        (feed.stream.resent, feed.redeliveries)
    };
    let applied = Applied::count(&shared.effects, args.events);
    let crash_recovered = shared.effects.applied(CRASH_INDEX) == 1;
    let t = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let tally = &shared.tally;
    let stats = guard.stats();

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
        ("  ... retried and processed", applied.retried_ok),
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
    let Applied {
        once,
        twice,
        missing,
        ..
    } = applied;
    println!(
        "effects applied exactly once: {once}/{}; twice or more: {twice}; never: {missing}",
        args.events
    );
    let recovery = shared.recovered_after.get().map_or_else(
        || "crash not recovered".to_owned(),
        |after| {
            format!(
                "crash recovered after {:.0} ms",
                after.as_secs_f64() * 1000.0
            )
        },
    );
    println!(
        "redeliveries: {redeliveries}; {recovery} (lease {} ms); elapsed {:.0} ms",
        lease.as_millis(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "guard counters: processed={} duplicates={} in_progress={} handler_failures={} claims_lost={}",
        stats.processed, stats.duplicates, stats.in_progress, stats.handler_failures, stats.claims_lost
    );
    verdict(once == args.events && twice == 0 && missing == 0)
}

/// The last line, and the exit code: 0 when every event was processed exactly once.
fn verdict(exactly_once: bool) -> ExitCode {
    if exactly_once {
        println!("OK: every event processed exactly once");
        ExitCode::SUCCESS
    } else {
        println!("FAILED: some events were lost or processed twice");
        ExitCode::from(EXIT_NO)
    }
}

/// A progress bar on stderr, drawn only when both stdout and stderr are terminals (never
/// in tests, pipes or CI).
fn progress_bar(len: u64) -> ProgressBar {
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} deliveries, {rate}, {elapsed}")
    {
        let rate = |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = out.write_str(&per_second(state.per_sec()));
        };
        bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
    }
    bar
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `demo --kafka`: the flow through the user's own broker.
#[cfg(feature = "kafka")]
async fn kafka_demo(bootstrap: &str, args: &DemoArgs) -> ExitCode {
    let options = crate::kafka_demo::DemoOptions {
        events: u32::try_from(args.events).unwrap_or(u32::MAX),
        fail_every: u32::try_from(args.fail_every).unwrap_or(u32::MAX),
        ..Default::default()
    };
    println!(
        "eventonce demo: kafka bootstrap={bootstrap} events={}",
        options.events
    );
    match crate::kafka_demo::run(bootstrap, options).await {
        Ok(report) => {
            println!("{report}");
            if report.is_exactly_once() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NO)
            }
        }
        Err(err) => fail(err),
    }
}

/// `demo --kafka` in a binary built without Kafka support.
#[cfg(not(feature = "kafka"))]
async fn kafka_demo(_bootstrap: &str, _args: &DemoArgs) -> ExitCode {
    fail(
        "this eventonce binary was built without Kafka support; reinstall it with the \
         feature: `cargo install --path cli --features full,kafka` in a clone of the \
         repository, or `cargo install --git https://github.com/eventonce/eventonce \
         eventonce-cli --features full,kafka`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_at_a_glance() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(per_second(10_523.129_9), "10,523/s");
        assert_eq!(per_second(0.4), "0/s");
        assert_eq!(per_second(f64::NAN), "0/s");
    }

    #[test]
    fn counts_are_whole_numbers_within_their_bounds() {
        assert_eq!(events_arg("1"), Ok(1));
        assert_eq!(events_arg("1000000"), Ok(MAX_EVENTS));
        assert_eq!(workers_arg("1024"), Ok(MAX_WORKERS));
        for bad in ["0", "1000001", "-1", "1.5", "x", ""] {
            assert_eq!(
                events_arg(bad),
                Err("must be a whole number from 1 to 1,000,000 (the demo's maximum)".into())
            );
        }
        for bad in ["0", "1025", "many"] {
            assert_eq!(
                workers_arg(bad),
                Err("must be a whole number from 1 to 1,024".into())
            );
        }
    }

    #[test]
    fn the_in_memory_store_remembers_every_event_of_the_largest_demo() {
        assert!(MemoryStore::new().capacity() >= MAX_EVENTS as u64);
    }

    #[test]
    fn the_demo_arguments_name_their_range() {
        assert_eq!(events_arg("1000000"), Ok(1_000_000));
        assert!(events_arg("1000001").is_err_and(|e| e.contains("1 to 1,000,000")));
        assert!(events_arg("-1").is_err());
        assert_eq!(share_arg("0.25"), Ok(0.25));
        assert!(share_arg("1.5").is_err_and(|e| e.contains("0.0 to 1.0")));
        assert!(share_arg("-0.1").is_err());
        assert_eq!(workers_arg("1024"), Ok(1024));
        assert!(workers_arg("1025").is_err());
    }
}
