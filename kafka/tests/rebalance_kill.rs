//! Two consumer processes in one group on a 4-partition topic, a Redis store, effects in
//! PostgreSQL. One is SIGKILLed in the middle of a handler, after it committed some
//! offsets; after the rebalance the other has processed every event, none completed
//! twice, and the killed handler's event ran again once its claim's lease had expired.
//!
//! Runs without the libtest harness: the parent re-runs its own executable as the
//! consumers (`EVENTONCE_KAFKA_CHILD` set), reads what they print, kills one with
//! SIGKILL (`Child::kill`) and checks the database.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use eventonce_core::{Guard, IdempotencyConfig, Outcome};
use eventonce_kafka::create_topic;
use eventonce_kafka::rdkafka::client::ClientContext;
use eventonce_kafka::rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use eventonce_kafka::{consumer_config, Delivery, KafkaGuard, KafkaGuardOptions, Retry};
use eventonce_redis::RedisStore;
use sqlx::AssertSqlSafe;
use support::Form;

const EVENTS: u32 = 400;
const PARTITIONS: i32 = 4;
/// Event 201 sits in partition 1, 50 messages in: its consumer has committed by then.
const VICTIM: u32 = 201;
/// Longer than the session timeout (6 s), so the survivor gets the victim's partition
/// while the dead consumer's claim still lives, and redelivers it until the lease ends.
const LEASE: Duration = Duration::from_secs(9);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(name) = std::env::var("EVENTONCE_KAFKA_CHILD") {
        runtime.block_on(child(name));
        return;
    }
    runtime.block_on(parent());
    println!("rebalance_kill: 1 passed, 0 failed");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for the consumer"))
}

/// Prints the consumer's assignment after each rebalance, for the parent.
struct Announce;
impl ClientContext for Announce {}
impl ConsumerContext for Announce {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => say(&format!("ASSIGNED {}", tpl.count())),
            Rebalance::Revoke(_) => say("REVOKED"),
            Rebalance::Error(e) => say(&format!("REBALANCE_ERROR {e}")),
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The consumer's Kafka guard: Redis records, the short lease of the test.
async fn child_guard() -> KafkaGuard {
    let store = RedisStore::connect(&support::redis_url())
        .await
        .expect("the tests need Redis");
    let config = IdempotencyConfig::builder(env("EVENTONCE_KAFKA_SERVICE"))
        // Records outlive the test only briefly in the shared Redis.
        .default_ttl(Duration::from_secs(600))
        .lease(LEASE)
        .build()
        .expect("config");
    KafkaGuard::with_options(
        Guard::new(store, config),
        KafkaGuardOptions {
            in_progress_backoff: Duration::from_millis(200),
            ..KafkaGuardOptions::default()
        },
    )
}

/// The consumer, in the test's group and subscribed to its topic, with a short session
/// so that a killed consumer's partitions move on quickly.
fn child_consumer() -> StreamConsumer<Announce> {
    let consumer: StreamConsumer<Announce> =
        consumer_config(&support::bootstrap(), &env("EVENTONCE_KAFKA_GROUP"))
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create_with_context(Announce)
            .expect("consumer");
    consumer
        .subscribe(&[env("EVENTONCE_KAFKA_TOPIC").as_str()])
        .expect("subscribe");
    consumer
}

/// What became of a message, as the `outcomes` table records it.
fn outcome_kind(delivery: &Delivery<(), String>) -> &'static str {
    match delivery {
        Delivery::Committed(Outcome::Processed(())) => "processed",
        Delivery::Committed(Outcome::Duplicate) => "duplicate",
        Delivery::Committed(Outcome::Unprotected(())) => "unprotected",
        Delivery::CommitFailed { .. } => "commit_failed",
        Delivery::Redeliver(Retry::InProgress) => "in_progress",
        Delivery::Redeliver(Retry::Handler(_)) => "failed",
        Delivery::Redeliver(Retry::Store(_)) => "store_failed",
        Delivery::Redeliver(Retry::Rewinding) => "rewinding",
        Delivery::Redeliver(_) => "other",
    }
}

async fn child(name: String) {
    let schema = env("EVENTONCE_KAFKA_SCHEMA");
    let pool = support::pool(2).await;
    let kafka = child_guard().await;
    let consumer = child_consumer();
    let committed = AtomicU64::new(0);
    let attempt_sql = format!(
        "WITH a AS (INSERT INTO \"{schema}\".attempts (event, worker) VALUES ($1, $2) RETURNING event)
         SELECT count(*) FROM \"{schema}\".attempts WHERE event = $1"
    );
    let effect_sql = format!("INSERT INTO \"{schema}\".effects (event, worker) VALUES ($1, $2)");
    let outcome_sql =
        format!("INSERT INTO \"{schema}\".outcomes (event, worker, kind) VALUES ($1, $2, $3)");
    loop {
        let message = consumer.recv().await.expect("consume");
        let delivery = kafka
            .process(&consumer, &message, |event| {
                let order = event.data["order"].as_u64().unwrap_or(u64::MAX) as i32;
                let (pool, name, committed) = (&pool, &name, &committed);
                let (attempt_sql, effect_sql) = (&attempt_sql, &effect_sql);
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // Earlier attempts, this one excluded (the CTE's insert is not
                    // visible to the statement's own count).
                    let before: i64 = sqlx::query_scalar(AssertSqlSafe(attempt_sql.clone()))
                        .bind(order)
                        .bind(name)
                        .fetch_one(pool)
                        .await
                        .map_err(|e| e.to_string())?;
                    if order == VICTIM as i32 && before == 0 {
                        say(&format!(
                            "HANGING {order} committed={}",
                            committed.load(Ordering::Relaxed)
                        ));
                        // Mid-handler, claim held, until SIGKILL.
                        std::future::pending::<()>().await;
                    }
                    sqlx::query(AssertSqlSafe(effect_sql.clone()))
                        .bind(order)
                        .bind(name)
                        .execute(pool)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await
            .expect("every message is an identifiable event");
        let order = eventonce_kafka::envelope_from_message(&message)
            .ok()
            .and_then(|e| e.data["order"].as_u64())
            .unwrap_or(u64::MAX) as i32;
        let kind = outcome_kind(&delivery);
        if matches!(delivery, Delivery::Committed(_)) {
            committed.fetch_add(1, Ordering::Relaxed);
        }
        sqlx::query(AssertSqlSafe(outcome_sql.clone()))
            .bind(order)
            .bind(&name)
            .bind(kind)
            .execute(&pool)
            .await
            .expect("outcome");
    }
}

/// The consumers, killed when the parent ends (or panics).
struct Consumers(Vec<(String, Child)>);
impl Drop for Consumers {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn parent() {
    let started = Instant::now();
    let bootstrap = support::bootstrap();
    let topic = support::unique("eventonce-e2e-kill");
    create_topic(&bootstrap, &topic, PARTITIONS)
        .await
        .expect("topic");
    let pool = support::pool(2).await;
    let schema = support::schema("kill");
    support::effects_schema(&pool, &schema).await;
    support::exec(
        &pool,
        format!(
            "CREATE TABLE \"{schema}\".outcomes (event int NOT NULL, worker text NOT NULL, kind text NOT NULL)"
        ),
    )
    .await;
    let group = support::unique("e2e-kill");
    let service = support::unique("kafka-e2e-kill");

    let (tx, rx) = mpsc::channel::<(String, String)>();
    let exe = std::env::current_exe().expect("own executable");
    let mut consumers = Consumers(Vec::new());
    for name in ["A", "B"] {
        let mut child = Command::new(&exe)
            .env("EVENTONCE_KAFKA_CHILD", name)
            .env("KAFKA_BOOTSTRAP", &bootstrap)
            .env("EVENTONCE_KAFKA_TOPIC", &topic)
            .env("EVENTONCE_KAFKA_GROUP", &group)
            .env("EVENTONCE_KAFKA_SCHEMA", &schema)
            .env("EVENTONCE_KAFKA_SERVICE", &service)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a consumer");
        let stdout = child.stdout.take().expect("stdout");
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((name.to_owned(), line)).is_err() {
                    break;
                }
            }
        });
        consumers.0.push((name.to_owned(), child));
    }
    let mut assigned: std::collections::HashMap<String, usize> = Default::default();
    let next = |limit: Duration, what: &str| {
        rx.recv_timeout(limit).unwrap_or_else(|_| {
            panic!("no word from the consumers within {limit:?}: waiting for {what}")
        })
    };

    // Both consumers in the group, each with some of the partitions, before producing.
    while !(assigned.len() == 2
        && assigned.values().all(|&n| n > 0)
        && assigned.values().sum::<usize>() == PARTITIONS as usize)
    {
        let (name, line) = next(Duration::from_secs(60), "both consumers assigned");
        if let Some(n) = line.strip_prefix("ASSIGNED ") {
            assigned.insert(name, n.parse().expect("count"));
        }
    }
    println!("rebalance_kill: group formed: {assigned:?}");
    let producer = support::producer(&bootstrap, "e2e-kill");
    for i in 0..EVENTS {
        support::send(
            &producer,
            &topic,
            Some((i % PARTITIONS as u32) as i32),
            i,
            Form::Body,
        )
        .await;
    }

    // The consumer that gets the victim hangs in its handler: kill it there.
    let (victim, committed_before) = loop {
        let (name, line) = next(Duration::from_secs(120), "the victim's handler");
        if let Some(rest) = line.strip_prefix("HANGING ") {
            let committed: u64 = rest
                .split("committed=")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("committed count");
            break (name, committed);
        }
        if let Some(n) = line.strip_prefix("ASSIGNED ") {
            assigned.insert(name, n.parse().expect("count"));
        }
    };
    let killed_at = Instant::now();
    let survivor = if victim == "A" { "B" } else { "A" };
    for (name, child) in &mut consumers.0 {
        if *name == victim {
            child.kill().expect("SIGKILL");
            let status = child.wait().expect("reaped");
            println!("rebalance_kill: consumer {victim} killed mid-handler of event {VICTIM} after {committed_before} commits ({status})");
        }
    }
    assert!(
        committed_before > 0,
        "the killed consumer had committed offsets before"
    );

    // The survivor takes over every partition and finishes.
    let count_sql = format!("SELECT count(DISTINCT event) FROM \"{schema}\".effects");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut survivor_partitions = 0;
    loop {
        while let Ok((name, line)) = rx.try_recv() {
            if let Some(n) = line.strip_prefix("ASSIGNED ") {
                if name == survivor {
                    survivor_partitions = n.parse().expect("count");
                }
            }
        }
        let done: i64 = sqlx::query_scalar(AssertSqlSafe(count_sql.clone()))
            .fetch_one(&pool)
            .await
            .expect("count");
        if done == i64::from(EVENTS) && survivor_partitions == PARTITIONS as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the kill only {done} of {EVENTS} events were processed; survivor holds {survivor_partitions} partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    // Let the survivor finish the duplicates still queued, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(consumers);

    let counts = support::effect_counts(&pool, &schema, EVENTS).await;
    let once = counts.iter().filter(|&&n| n == 1).count();
    let outcomes: Vec<(i32, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT event, worker, kind FROM \"{schema}\".outcomes"
    )))
    .fetch_all(&pool)
    .await
    .expect("outcomes");
    let kind = |k: &str| outcomes.iter().filter(|(_, _, kind)| kind == k).count();
    let mut completions = vec![0usize; EVENTS as usize];
    for (event, _, k) in &outcomes {
        if k == "processed" || k == "unprotected" {
            if let Some(c) = completions.get_mut(*event as usize) {
                *c += 1;
            }
        }
    }
    let completed_twice = completions.iter().filter(|&&n| n > 1).count();
    let attempts: Vec<(String, f64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT worker, extract(epoch FROM at)::float8 FROM \"{schema}\".attempts WHERE event = {VICTIM} ORDER BY id"
    )))
    .fetch_all(&pool)
    .await
    .expect("attempts");
    let rerun_after = attempts
        .get(1)
        .zip(attempts.first())
        .map_or(f64::NAN, |(b, a)| b.1 - a.1);
    println!(
        "kafka e2e rebalance_kill (Redis store): events {EVENTS}, processed {}, duplicates skipped {}, in-progress redeliveries {}, re-runs 1 (event {VICTIM}: first run by {victim} killed, re-run by {} {:.2} s after the first run, lease {} s), completed twice {completed_twice}, side effects once {once}, elapsed {:.2} s (kill at {:.2} s)",
        kind("processed"),
        kind("duplicate"),
        kind("in_progress"),
        attempts.get(1).map_or("nobody", |a| a.0.as_str()),
        rerun_after,
        LEASE.as_secs(),
        elapsed.as_secs_f64(),
        (killed_at - started).as_secs_f64(),
    );
    assert_eq!(once, EVENTS as usize, "every event's effect exactly once");
    assert_eq!(completed_twice, 0, "no event completed twice");
    assert_eq!(kind("unprotected"), 0);
    assert_eq!(attempts.len(), 2, "the victim ran twice: {attempts:?}");
    assert_eq!(attempts[0].0, victim);
    assert_eq!(attempts[1].0, survivor);
    assert!(
        rerun_after >= LEASE.as_secs_f64() - 0.5,
        "the re-run waited for the lease: {rerun_after} s"
    );
    assert_eq!(survivor_partitions, PARTITIONS as usize);
    support::drop_schema(&pool, &schema).await;
}
