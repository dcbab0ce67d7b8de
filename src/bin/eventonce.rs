//! The `eventonce` command: `eventonce demo` shows the guard at work; `keys`, `show`,
//! `release` and `stats` let an operator look at and fix the records in Redis or PostgreSQL.

#[path = "eventonce/admin.rs"]
mod admin;
#[path = "eventonce/connect.rs"]
mod connect;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use eventonce::{
    EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, MemoryStore, Outcome,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
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
    #[command(override_usage = "eventonce show [OPTIONS] <KEY>\n       \
        eventonce show [OPTIONS] --service <SERVICE> --event-type <EVENT_TYPE> \
        [--event-id <EVENT_ID>] --data-file <FILE>")]
    Show(admin::ShowArgs),
    /// Remove one record so that its event can be processed again (asks first).
    Release(admin::ReleaseArgs),
    /// Count records per service, event type and state, with their (sampled) memory.
    Stats(admin::StatsArgs),
}

#[derive(Args)]
struct DemoArgs {
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
        Err(err) => return fail(format!("cannot start the runtime: {err}")),
    };
    match cli.command {
        Command::Demo(args) => runtime.block_on(demo(args)),
        Command::Keys(args) => runtime.block_on(admin::keys(args)),
        Command::Show(args) => runtime.block_on(admin::show(args)),
        Command::Release(args) => runtime.block_on(admin::release(args)),
        Command::Stats(args) => runtime.block_on(admin::stats(args)),
    }
}

/// The largest `--events`: as many records as `MemoryStore::new()` keeps. Past them it
/// evicts the least recently used, and a store that forgets is no demonstration of
/// exactly once. The stream is generated as it is consumed, so the demo's own memory is two
/// bytes per event besides the store's records.
const MAX_EVENTS: usize = 1_000_000;
/// The largest `--workers`.
const MAX_WORKERS: usize = 1024;
/// A producer's second copy of an event is sent at most this many events after the first.
const DUPLICATE_SPREAD: usize = 50;

/// `--events`: a whole number from 1 to [`MAX_EVENTS`].
fn events_arg(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_EVENTS).contains(n))
        .ok_or_else(|| {
            format!(
                "must be a whole number from 1 to {} (the demo's maximum)",
                thousands(MAX_EVENTS as u64)
            )
        })
}

/// `--workers`: a whole number from 1 to [`MAX_WORKERS`].
fn workers_arg(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_WORKERS).contains(n))
        .ok_or_else(|| {
            format!(
                "must be a whole number from 1 to {}",
                thousands(MAX_WORKERS as u64)
            )
        })
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

/// Exit code of a command that ran and whose answer is no: nothing found, declined, not
/// released, or the demo's exactly-once check failed. The rule for every command is in
/// docs/operations.md: 0 done, 1 no, 2 could not run.
pub(crate) const EXIT_NO: u8 = 1;
/// Exit code of a command that could not do its job: a usage error (clap exits 2 too), a
/// refused argument or key, a store that cannot be reached or fails.
pub(crate) const EXIT_ERROR: u8 = 2;

/// Prints `error: {message}` on standard error; exit code [`EXIT_ERROR`].
pub(crate) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_ERROR)
}

/// One sending of an event by the producer: which event, and whether it is the second copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    index: usize,
    duplicate: bool,
}

/// The producer's stream, generated as it is consumed: every event once, in order, and a
/// share of them a second time, from right after the first copy to [`DUPLICATE_SPREAD`]
/// events later (as a producer's retry would). It holds only the second copies not yet sent
/// (at most [`DUPLICATE_SPREAD`]), whatever the number of events; the same seed gives the
/// same stream.
struct Stream {
    events: usize,
    duplicate_rate: f64,
    rng: u64,
    /// The next event to send for the first time.
    next: usize,
    /// Second copies waiting: (sent before the first copy of this event, event).
    pending: BinaryHeap<Reverse<(usize, usize)>>,
    /// Second copies produced so far.
    resent: usize,
}

impl Stream {
    fn new(events: usize, duplicate_rate: f64, seed: u64) -> Stream {
        Stream {
            events,
            duplicate_rate,
            rng: seed.wrapping_mul(6364136223846793005).wrapping_add(1),
            next: 0,
            pending: BinaryHeap::new(),
            resent: 0,
        }
    }
}

impl Iterator for Stream {
    type Item = Sent;

    fn next(&mut self) -> Option<Sent> {
        if let Some(&Reverse((due, index))) = self.pending.peek() {
            if due <= self.next || self.next == self.events {
                self.pending.pop();
                return Some(Sent {
                    index,
                    duplicate: true,
                });
            }
        }
        if self.next == self.events {
            return None;
        }
        let index = self.next;
        self.next += 1;
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if ((self.rng >> 33) as f64 / (1u64 << 31) as f64) < self.duplicate_rate {
            let due = index + 1 + (self.rng as usize % DUPLICATE_SPREAD);
            self.pending.push(Reverse((due, index)));
            self.resent += 1;
        }
        Some(Sent {
            index,
            duplicate: false,
        })
    }
}

/// What the consumers pull from: the producer's stream, and the deliveries the broker sends
/// again (their handler failed, or another consumer held them) once their delay is over.
struct Feed {
    stream: Stream,
    again: BinaryHeap<Reverse<(Instant, usize)>>,
    in_flight: usize,
    redeliveries: usize,
}

/// A consumer's next step.
enum Next {
    Deliver(Sent),
    Wait(Duration),
    Done,
}

impl Feed {
    fn new(stream: Stream) -> Feed {
        Feed {
            stream,
            again: BinaryHeap::new(),
            in_flight: 0,
            redeliveries: 0,
        }
    }

    fn next(&mut self, now: Instant) -> Next {
        if let Some(&Reverse((due, index))) = self.again.peek() {
            if due <= now {
                self.again.pop();
                self.in_flight += 1;
                self.redeliveries += 1;
                return Next::Deliver(Sent {
                    index,
                    duplicate: false,
                });
            }
        }
        if let Some(sent) = self.stream.next() {
            self.in_flight += 1;
            return Next::Deliver(sent);
        }
        match self.again.peek() {
            Some(&Reverse((due, _))) => Next::Wait(due.saturating_duration_since(now)),
            // A delivery still running may be sent again.
            None if self.in_flight > 0 => Next::Wait(Duration::from_millis(1)),
            None => Next::Done,
        }
    }

    /// A delivery is acknowledged, or to be sent again at `again`.
    fn settle(&mut self, index: usize, again: Option<Instant>) {
        self.in_flight -= 1;
        if let Some(at) = again {
            self.again.push(Reverse((at, index)));
        }
    }
}

/// The demo's events, built when they are sent: event `i` is the same every time.
struct Events {
    run_id: String,
}

impl Events {
    fn event(&self, i: usize) -> EventEnvelope {
        EventEnvelope::new(
            EVENT_TYPES[i % EVENT_TYPES.len()],
            json!({"essay_id": format!("essay-{i}"), "batch": i / 100}),
        )
        .with_event_id(format!("evt-{}{i:06}", self.run_id))
        .with_correlation_id(format!("corr-{}", i / 10))
    }

    /// The envelope a consumer receives. A second copy is re-serialized (pretty-printed)
    /// and parsed again, as a producer's retry through another client would send it: its
    /// bytes differ, its identity does not.
    fn delivery(&self, sent: Sent) -> EventEnvelope {
        let event = self.event(sent.index);
        if !sent.duplicate {
            return event;
        }
        serde_json::to_vec_pretty(&event)
            .ok()
            .and_then(|bytes| EventEnvelope::from_slice(&bytes).ok())
            .unwrap_or(event)
    }
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

const EVENT_TYPES: &[&str] = &[
    "huleedu.essay.spellcheck.requested.v1",
    "huleedu.batch.essays.registered.v1",
    "huleedu.cj_assessment.completed.v1",
    "huleedu.result_aggregator.batch.completed.v1",
];

async fn demo(args: DemoArgs) -> ExitCode {
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
    let mut builder = IdempotencyConfig::builder("demo-service")
        .lease(lease)
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
    // The header comes first, on its own line, before the progress bar is drawn.
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
            args.ttl_secs.max(1),
            args.prefix
        );
    }

    let events = Arc::new(Events { run_id });
    let feed = Arc::new(Mutex::new(Feed::new(Stream::new(
        args.events,
        args.duplicate_rate,
        args.seed,
    ))));
    let tally = Arc::new(Tally::default());
    let effects = Arc::new(Effects::new(args.events));
    let bar = progress_bar(args.events as u64);
    // The broker sends an unacknowledged delivery again a little later.
    let redelivery_delay = lease / 2;

    // A consumer that crashes mid-handler: it claims the first event and dies without
    // releasing, completing or renewing anything (its future is leaked, like a killed
    // process's memory). Its event stays claimed for one lease, then is processed again.
    let crash_index = 0;
    let crashed_at = Instant::now();
    let recovered_after: Arc<OnceLock<Duration>> = Arc::default();
    {
        let crashed_guard = guard.clone();
        let envelope = events.event(crash_index);
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

    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.workers {
        let (guard, tally, effects, events, feed, bar, recovered_after) = (
            guard.clone(),
            Arc::clone(&tally),
            Arc::clone(&effects),
            Arc::clone(&events),
            Arc::clone(&feed),
            bar.clone(),
            Arc::clone(&recovered_after),
        );
        let fail_every = args.fail_every;
        workers.spawn(async move {
            loop {
                let next = lock(&feed).next(Instant::now());
                let sent = match next {
                    Next::Deliver(sent) => sent,
                    Next::Wait(delay) => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Next::Done => break,
                };
                let index = sent.index;
                let envelope = events.delivery(sent);
                tally.deliveries.fetch_add(1, Ordering::Relaxed);
                if sent.duplicate {
                    bar.inc_length(1);
                }
                bar.inc(1);
                let outcome = guard
                    .run(&envelope, async {
                        tally.handler_runs.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        let transient = fail_every > 0
                            && index % fail_every == fail_every - 1
                            && effects.fail_first_time(index);
                        if transient {
                            return Err("downstream service unavailable");
                        }
                        effects.apply(index);
                        if index == crash_index {
                            let _ = recovered_after.set(crashed_at.elapsed());
                        }
                        Ok(())
                    })
                    .await;
                let again = match outcome {
                    Ok(Outcome::Processed(())) => {
                        tally.processed.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Ok(Outcome::Duplicate) => {
                        tally.duplicates.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Ok(Outcome::Unprotected(())) => {
                        tally.unprotected.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Err(GuardError::Handler(_)) => {
                        tally.failures.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(GuardError::InProgress) => {
                        tally.in_progress.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(other) => {
                        eprintln!("event {index}: {other}");
                        false
                    }
                };
                if again {
                    bar.inc_length(1);
                }
                let at = again.then(|| Instant::now() + redelivery_delay);
                lock(&feed).settle(index, at);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    bar.finish();
    if !bar.is_hidden() {
        // End the bar's line: what follows starts on a line of its own.
        eprintln!();
    }

    let (resent, redeliveries) = {
        let feed = lock(&feed);
        (feed.stream.resent, feed.redeliveries)
    };
    let (mut once, mut twice, mut missing, mut retried_ok) = (0, 0, 0, 0);
    for index in 0..args.events {
        match effects.applied(index) {
            0 => missing += 1,
            1 => {
                once += 1;
                if effects.failed_once[index].load(Ordering::Relaxed) {
                    retried_ok += 1;
                }
            }
            _ => twice += 1,
        }
    }
    let crash_recovered = effects.applied(crash_index) == 1;
    let t = |a: &AtomicUsize| a.load(Ordering::Relaxed);
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
    let recovery = recovered_after.get().map_or_else(
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
    if once == args.events && twice == 0 && missing == 0 {
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
         feature: `cargo install --path . --features full,kafka` in a clone of the \
         repository, or `cargo install --git https://github.com/eventonce/eventonce \
         eventonce --features full,kafka`",
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
    fn the_stream_sends_every_event_once_and_its_second_copy_soon_after() {
        let events = 200_000;
        let mut stream = Stream::new(events, 0.3, 7);
        let mut first_at = vec![None; events];
        let mut second_at = vec![None; events];
        let (mut originals, mut position, mut most_pending) = (0, 0, 0);
        while let Some(sent) = stream.next() {
            most_pending = most_pending.max(stream.pending.len());
            if sent.duplicate {
                let first = first_at[sent.index].expect("the first copy comes first");
                assert!(
                    originals - first <= DUPLICATE_SPREAD,
                    "event {} resent {} events after",
                    sent.index,
                    originals - first
                );
                assert_eq!(second_at[sent.index].replace(position), None);
            } else {
                assert_eq!(sent.index, originals, "first copies come in order");
                first_at[sent.index] = Some(originals);
                originals += 1;
            }
            position += 1;
        }
        assert_eq!(originals, events);
        let resent = second_at.iter().flatten().count();
        assert_eq!(resent, stream.resent);
        assert!((55_000..65_000).contains(&resent), "{resent}");
        // The look-ahead stays small, whatever the number of events.
        assert!(most_pending <= DUPLICATE_SPREAD, "{most_pending}");
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<Sent> = Stream::new(5000, 0.5, 11).collect();
        let b: Vec<Sent> = Stream::new(5000, 0.5, 11).collect();
        let c: Vec<Sent> = Stream::new(5000, 0.5, 12).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(Stream::new(100, 0.0, 1).filter(|s| s.duplicate).count(), 0);
        assert_eq!(
            Stream::new(100, 1.0, 1).filter(|s| s.duplicate).count(),
            100
        );
    }

    #[test]
    fn the_feed_sends_failed_deliveries_again_after_their_delay_and_then_ends() {
        let mut feed = Feed::new(Stream::new(2, 0.0, 1));
        let now = Instant::now();
        let Next::Deliver(first) = feed.next(now) else {
            panic!("the first event")
        };
        feed.settle(first.index, Some(now + Duration::from_millis(50)));
        let Next::Deliver(second) = feed.next(now) else {
            panic!("the second event")
        };
        assert_eq!(second.index, 1);
        // The second is still running, the first not due yet.
        assert!(matches!(feed.next(now), Next::Wait(d) if d == Duration::from_millis(50)));
        feed.settle(second.index, None);
        let later = now + Duration::from_millis(50);
        let Next::Deliver(again) = feed.next(later) else {
            panic!("the redelivery")
        };
        assert_eq!(again.index, 0);
        assert!(matches!(feed.next(later), Next::Wait(_)), "still running");
        feed.settle(again.index, None);
        assert!(matches!(feed.next(later), Next::Done));
        assert_eq!(feed.redeliveries, 1);
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
