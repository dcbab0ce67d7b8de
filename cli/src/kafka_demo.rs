//! The whole flow against a broker of your own: a fresh topic, events produced with a
//! share of them sent twice, one consumer in a fresh group running each message through
//! [`KafkaGuard`] on the in-memory store, a handler that fails once on some events, and a
//! report of what happened. `eventonce demo --kafka BOOTSTRAP` prints that report.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventonce::kafka::rdkafka::admin::{AdminClient, AdminOptions};
use eventonce::kafka::rdkafka::client::DefaultClientContext;
use eventonce::kafka::rdkafka::config::ClientConfig;
use eventonce::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eventonce::kafka::rdkafka::error::KafkaError;
use eventonce::kafka::rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use eventonce::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventonce::kafka::{
    consumer_config, create_topic, Delivery, KafkaGuard, KafkaGuardOptions, MessageError, Retry,
    TopicError, EVENT_ID_HEADER, EVENT_TYPE_HEADER,
};
use eventonce::{ConfigError, EventEnvelope, Guard, IdempotencyConfig, MemoryStore, Outcome};
use serde_json::json;

/// What the demo does.
#[derive(Debug, Clone)]
pub(crate) struct DemoOptions {
    /// Distinct events. Default 200.
    pub events: u32,
    /// Every `resend_every`-th event is sent a second time (the same envelope, once with
    /// the id in headers). Default 5 (20%).
    pub resend_every: u32,
    /// Every `fail_every`-th event's handler fails on its first run (0: none). Default 10.
    pub fail_every: u32,
    /// Partitions of the demo topic. Default 4.
    pub partitions: i32,
    /// Give up after this long. Default 120 s.
    pub timeout: Duration,
    /// Delete the demo topic at the end. Default true.
    pub delete_topic: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            events: 200,
            resend_every: 5,
            fail_every: 10,
            partitions: 4,
            timeout: Duration::from_secs(120),
            delete_topic: true,
        }
    }
}

/// Why the demo could not finish.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// The broker refused or could not be reached.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The topic could not be created.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The guard's configuration was refused (a bug of the demo).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A message on the demo topic was not an event of the demo.
    #[error("unexpected message: {0}")]
    Message(#[from] MessageError),
    /// Not every message reached a final outcome in time.
    #[error("gave up after {elapsed:?}: {finished} of {sent} messages reached a final outcome")]
    Timeout {
        /// Messages with a final outcome.
        finished: u64,
        /// Messages sent.
        sent: u64,
        /// Time spent.
        elapsed: Duration,
    },
}

/// What the demo saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    /// The broker.
    pub bootstrap: String,
    /// The demo topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: i32,
    /// Distinct events.
    pub events: u64,
    /// Messages sent, duplicates included.
    pub messages_sent: u64,
    /// Events sent a second time.
    pub duplicates_sent: u64,
    /// Messages processed (the handler ran and the event was recorded).
    pub processed: u64,
    /// Duplicates skipped without running the handler.
    pub duplicates_skipped: u64,
    /// Handler runs that failed and were redelivered (re-runs).
    pub handler_failures: u64,
    /// Deliveries refused because the event was in progress elsewhere.
    pub in_progress: u64,
    /// Events whose side effect was applied exactly once.
    pub effects_once: u64,
    /// Events whose side effect was applied more than once (must be 0).
    pub effects_twice: u64,
    /// Events whose side effect was never applied (must be 0).
    pub effects_missing: u64,
    /// Offset commits that failed (the outcome was final all the same).
    pub commit_failures: u64,
    /// From the first message produced to the last outcome.
    pub elapsed: Duration,
}

impl Report {
    /// Whether every event's side effect happened exactly once.
    pub(crate) fn is_exactly_once(&self) -> bool {
        self.effects_once == self.events && self.effects_twice == 0 && self.effects_missing == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "eventonce demo on Kafka at {}: topic {} ({} partitions)",
            self.bootstrap, self.topic, self.partitions
        )?;
        writeln!(f)?;
        writeln!(f, "| {:<40} | {:>8} |", "what", "count")?;
        writeln!(f, "|{:-<42}|{:->10}|", "", "")?;
        for (what, n) in [
            ("events", self.events),
            ("messages sent (with duplicates)", self.messages_sent),
            ("duplicates sent", self.duplicates_sent),
            ("processed", self.processed),
            ("duplicates skipped", self.duplicates_skipped),
            (
                "re-runs (handler failed, redelivered)",
                self.handler_failures,
            ),
            ("in progress elsewhere, redelivered", self.in_progress),
            ("side effects applied once", self.effects_once),
            ("side effects applied twice", self.effects_twice),
            ("side effects missing", self.effects_missing),
            ("offset commits failed", self.commit_failures),
        ] {
            writeln!(f, "| {what:<40} | {n:>8} |")?;
        }
        writeln!(f)?;
        write!(
            f,
            "elapsed {:.2} s: {}",
            self.elapsed.as_secs_f64(),
            if self.is_exactly_once() {
                "every event's side effect happened exactly once"
            } else {
                "NOT exactly once"
            }
        )
    }
}

async fn delete_topic(bootstrap: &str, topic: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    admin.delete_topics(&[topic], &AdminOptions::new()).await?;
    Ok(())
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Runs the demo against the broker at `bootstrap` and reports what happened.
///
/// Creates a fresh topic (`eventonce-demo-...`) and consumer group, produces
/// `options.events` events, every `resend_every`-th twice, consumes them with one
/// [`KafkaGuard`] on a [`MemoryStore`], with a handler that fails on its first run for
/// every `fail_every`-th event, and counts each event's side effect. Deletes the topic at
/// the end unless told not to.
pub(crate) async fn run(bootstrap: &str, options: DemoOptions) -> Result<Report, DemoError> {
    let topic = unique("eventonce-demo");
    create_topic(bootstrap, &topic, options.partitions.max(1)).await?;
    let result = run_on(bootstrap, &topic, &options).await;
    if options.delete_topic {
        if let Err(e) = delete_topic(bootstrap, &topic).await {
            tracing::warn!(topic, error = %e, "could not delete the demo topic");
        }
    }
    result
}

/// The producer's side: every event once, every `resend_every`-th a second time (then with
/// its id and type in headers too). Returns the messages sent and the second copies.
async fn produce(
    bootstrap: &str,
    topic: &str,
    options: &DemoOptions,
) -> Result<(u64, u64), DemoError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "30000")
        .create()?;
    let resend_every = options.resend_every.max(1);
    let mut sent = 0u64;
    let mut duplicates_sent = 0u64;
    for i in 0..options.events {
        let envelope = EventEnvelope::new("demo.order.placed.v1", json!({"order": i}))
            .with_event_id(format!("demo-{i}"))
            .with_source_service("eventonce-demo");
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        let key = format!("order-{i}");
        let record = FutureRecord::to(topic).key(&key).payload(&body);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        sent += 1;
        if i % resend_every == 0 {
            // The same event again, this time with its id and type in headers too.
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: EVENT_ID_HEADER,
                    value: envelope.event_id.as_deref(),
                })
                .insert(Header {
                    key: EVENT_TYPE_HEADER,
                    value: Some(envelope.event_type.as_str()),
                });
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&body)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)?;
            sent += 1;
            duplicates_sent += 1;
        }
    }
    Ok((sent, duplicates_sent))
}

/// The handler's side effects: runs and applications per order.
#[derive(Default)]
struct Effects {
    applied: Mutex<HashMap<u64, u64>>,
    attempts: Mutex<HashMap<u64, u64>>,
}

impl Effects {
    /// The demo's handler: fails on the first run of every `fail_every`-th order, else
    /// applies the order's effect.
    fn handle(&self, event: &EventEnvelope, fail_every: u32) -> Result<(), String> {
        let order = event.data["order"].as_u64().unwrap_or(u64::MAX);
        let attempt = {
            let mut a = self
                .attempts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = a.entry(order).or_default();
            *n += 1;
            *n
        };
        if fail_every > 0
            && order % u64::from(fail_every) == 3 % u64::from(fail_every)
            && attempt == 1
        {
            return Err(format!("order {order}: first attempt fails"));
        }
        *self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(order)
            .or_default() += 1;
        Ok(())
    }
}

/// What the consumer counted.
#[derive(Default)]
struct Counts {
    finished: u64,
    processed: u64,
    duplicates: u64,
    failures: u64,
    in_progress: u64,
    commit_failures: u64,
}

impl Counts {
    /// Counts one delivery's result.
    fn count(&mut self, delivery: Delivery<(), String>) {
        let outcome = match delivery {
            Delivery::Committed(outcome) => outcome,
            Delivery::CommitFailed { outcome, .. } => {
                self.commit_failures += 1;
                outcome
            }
            Delivery::Redeliver(Retry::Handler(_)) => {
                self.failures += 1;
                return;
            }
            Delivery::Redeliver(Retry::InProgress) => {
                self.in_progress += 1;
                return;
            }
            Delivery::Redeliver(_) => return,
        };
        self.finished += 1;
        match outcome {
            Outcome::Processed(()) | Outcome::Unprotected(()) => self.processed += 1,
            Outcome::Duplicate => self.duplicates += 1,
        }
    }
}

/// A consumer in a fresh group running every message through a [`KafkaGuard`] on a
/// [`MemoryStore`] until `sent` messages have a final outcome or the deadline passes.
async fn consume(
    bootstrap: &str,
    topic: &str,
    options: &DemoOptions,
    sent: u64,
    started: Instant,
) -> Result<(Counts, Effects), DemoError> {
    let consumer: StreamConsumer = consumer_config(bootstrap, &unique("eventonce-demo-group"))
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(&[topic])?;
    let config = IdempotencyConfig::builder("eventonce-demo")
        .lease(Duration::from_secs(10))
        .build()?;
    let kafka = KafkaGuard::with_options(
        Guard::new(MemoryStore::new(), config),
        KafkaGuardOptions {
            retry_backoff: Duration::from_millis(20),
            ..KafkaGuardOptions::default()
        },
    );
    let effects = Effects::default();
    let mut counts = Counts::default();
    let deadline = started + options.timeout;
    while counts.finished < sent {
        let left = deadline.saturating_duration_since(Instant::now());
        let message: BorrowedMessage<'_> = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => {
                return Err(DemoError::Timeout {
                    finished: counts.finished,
                    sent,
                    elapsed: started.elapsed(),
                })
            }
        };
        let delivery = kafka
            .process(&consumer, &message, |event| {
                let effects = &effects;
                async move { effects.handle(&event, options.fail_every) }
            })
            .await?;
        counts.count(delivery);
    }
    Ok((counts, effects))
}

async fn run_on(bootstrap: &str, topic: &str, options: &DemoOptions) -> Result<Report, DemoError> {
    let started = Instant::now();
    let (sent, duplicates_sent) = produce(bootstrap, topic, options).await?;
    let (counts, effects) = consume(bootstrap, topic, options, sent, started).await?;
    let elapsed = started.elapsed();
    let effects = effects
        .applied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let events = u64::from(options.events);
    let effects_once = (0..events).filter(|i| effects.get(i) == Some(&1)).count() as u64;
    let effects_twice = effects.values().filter(|&&n| n > 1).count() as u64;
    let effects_missing = (0..events).filter(|i| !effects.contains_key(i)).count() as u64;
    Ok(Report {
        bootstrap: bootstrap.to_owned(),
        topic: topic.to_owned(),
        partitions: options.partitions.max(1),
        events,
        messages_sent: sent,
        duplicates_sent,
        processed: counts.processed,
        duplicates_skipped: counts.duplicates,
        handler_failures: counts.failures,
        in_progress: counts.in_progress,
        effects_once,
        effects_twice,
        effects_missing,
        commit_failures: counts.commit_failures,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventonce::kafka::rdkafka::consumer::BaseConsumer;

    fn bootstrap() -> String {
        eventonce_testkit::kafka_bootstrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_demo_reports_every_side_effect_once() {
        let bootstrap = bootstrap();
        let report = run(
            &bootstrap,
            DemoOptions {
                events: 100,
                ..Default::default()
            },
        )
        .await
        .expect("demo");
        println!("{report}");
        assert!(report.is_exactly_once(), "{report}");
        assert_eq!(report.events, 100);
        assert_eq!(report.duplicates_sent, 20);
        assert_eq!(report.messages_sent, 120);
        assert_eq!(report.processed, 100);
        assert_eq!(report.duplicates_skipped, 20);
        assert_eq!(report.handler_failures, 10);
        // The demo deleted its topic.
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("client");
        let metadata = client
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        let topics: Vec<&str> = metadata
            .topics()
            .iter()
            .map(eventonce::kafka::rdkafka::metadata::MetadataTopic::name)
            .collect();
        assert!(
            !topics.contains(&report.topic.as_str()),
            "{} still listed: {topics:?}",
            report.topic
        );
        let text = report.to_string();
        assert!(text.contains("| duplicates skipped"), "{text}");
        assert!(text.contains("exactly once"), "{text}");
    }
}
