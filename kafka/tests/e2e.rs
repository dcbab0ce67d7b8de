//! End-to-end against the real broker (`KAFKA_BOOTSTRAP`), Redis and PostgreSQL: events
//! produced to a fresh topic, consumed by a fresh group through `KafkaGuard`, side effects
//! counted in PostgreSQL.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventonce_core::{Guard, IdempotencyConfig, IdempotencyStore, Outcome};
use eventonce_kafka::create_topic;
use eventonce_kafka::{
    commit_past, consumer_config, Delivery, KafkaGuard, KafkaGuardOptions, MessageError, Retry,
};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use eventonce_redis::RedisStore;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::postgres::PgPool;
use sqlx::AssertSqlSafe;
use support::Form;

/// What a consumer loop saw.
#[derive(Debug, Default)]
struct Tally {
    processed: u64,
    duplicates: u64,
    unprotected: u64,
    handler_failures: u64,
    in_progress: u64,
    rewinding: u64,
    commit_failures: u64,
}

fn consumer(group: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = consumer_config(&support::bootstrap(), group)
        .set("session.timeout.ms", "10000")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// Consumes until `total` messages reached a final outcome (or `limit` passes), running
/// each through `kafka` with a handler that calls `effect(event)`.
async fn consume<F, Fut>(
    consumer: &StreamConsumer,
    kafka: &KafkaGuard,
    total: u64,
    limit: Duration,
    effect: F,
) -> Tally
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    let mut tally = Tally::default();
    let mut finished = 0u64;
    while finished < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("only {finished} of {total} messages final after {limit:?}: {tally:?}")
            })
            .expect("consume");
        let delivery = kafka
            .process(consumer, &message, |event| {
                let order = event.data["order"].as_u64().unwrap_or(u64::MAX) as u32;
                effect(order)
            })
            .await
            .expect("every message of these tests is an identifiable event");
        let outcome = match delivery {
            Delivery::Committed(o) => o,
            Delivery::CommitFailed { outcome, .. } => {
                tally.commit_failures += 1;
                outcome
            }
            Delivery::Redeliver(Retry::Handler(_)) => {
                tally.handler_failures += 1;
                // Nothing was committed for it: the group's offset is not past it.
                let (topic, partition, offset) = (
                    rdkafka::Message::topic(&message),
                    rdkafka::Message::partition(&message),
                    rdkafka::Message::offset(&message),
                );
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(10))
                    .expect("committed offsets")
                    .find_partition(topic, partition)
                    .map(|e| e.offset());
                assert!(
                    !matches!(committed, Some(Offset::Offset(o)) if o > offset),
                    "committed {committed:?} past the failed message at {offset}"
                );
                continue;
            }
            Delivery::Redeliver(Retry::InProgress) => {
                tally.in_progress += 1;
                continue;
            }
            Delivery::Redeliver(Retry::Rewinding) => {
                tally.rewinding += 1;
                continue;
            }
            Delivery::Redeliver(other) => panic!("unexpected: {other:?}"),
        };
        finished += 1;
        match outcome {
            Outcome::Processed(()) => tally.processed += 1,
            Outcome::Duplicate => tally.duplicates += 1,
            Outcome::Unprotected(()) => tally.unprotected += 1,
        }
    }
    tally
}

/// Records one side effect of `event` in PostgreSQL.
async fn apply(pool: &PgPool, schema: &str, event: u32, worker: &str) -> Result<(), String> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".effects (event, worker) VALUES ($1, $2)"
    )))
    .bind(event as i32)
    .bind(worker)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Waits until the group's committed offset of every partition is its high watermark.
async fn assert_all_committed(consumer: &StreamConsumer, topic: &str, partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        let mut behind = Vec::new();
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            let at = committed
                .find_partition(topic, p)
                .map_or(Offset::Invalid, |e| e.offset());
            if at != Offset::Offset(high) {
                behind.push((p, at, high));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "committed offsets behind the log end: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an end-to-end scenario starts from: the broker's address, a fresh topic of its own,
/// a pool on PostgreSQL and a fresh schema with the effects table.
struct Scene {
    bootstrap: String,
    topic: String,
    pool: PgPool,
    schema: String,
}

/// A [`Scene`] named after `name`, its topic with `partitions` partitions.
async fn scene(name: &str, partitions: i32) -> Scene {
    let bootstrap = support::bootstrap();
    let topic = support::unique(&format!("eventonce-e2e-{name}"));
    create_topic(&bootstrap, &topic, partitions)
        .await
        .expect("topic");
    let pool = support::pool(4).await;
    let schema = support::schema(name);
    support::effects_schema(&pool, &schema).await;
    Scene {
        bootstrap,
        topic,
        pool,
        schema,
    }
}

async fn send_all(sends: Vec<(&FutureProducer, Option<i32>, u32, Form)>, topic: &str) {
    for (producer, partition, i, form) in sends {
        support::send(producer, topic, partition, i, form).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_events_with_resends_have_each_side_effect_once_on_redis() {
    const EVENTS: u32 = 2000;
    const PARTITIONS: i32 = 4;
    let Scene {
        bootstrap,
        topic,
        pool,
        schema,
    } = scene("resends", PARTITIONS).await;

    // Every event once; every fifth again, later in its partition: half of those by a
    // second producer with the id and type in headers too, half by the first producer
    // with the id and type in headers only.
    let first = support::producer(&bootstrap, "e2e-producer-1");
    let second = support::producer(&bootstrap, "e2e-producer-2");
    let mut sends: Vec<(&FutureProducer, Option<i32>, u32, Form)> = Vec::new();
    let (mut resent, mut by_second) = (0u64, 0u64);
    for i in 0..EVENTS {
        let partition = Some((i % PARTITIONS as u32) as i32);
        sends.push((&first, partition, i, Form::Body));
        if i % 5 == 0 {
            let (producer, form) = if i % 10 == 0 {
                by_second += 1;
                (&second, Form::BodyAndHeaders)
            } else {
                (&first, Form::HeadersOnly)
            };
            sends.push((producer, partition, i, form));
            resent += 1;
        }
    }
    // Each resend goes out after the original of the event 150 further on.
    sends.sort_by_key(|(_, _, i, form)| {
        u64::from(*i) * 2 + if matches!(form, Form::Body) { 0 } else { 301 }
    });
    let total = sends.len() as u64;
    let started = Instant::now();
    send_all(sends, &topic).await;

    let store = RedisStore::connect(&support::redis_url())
        .await
        .expect("the tests need Redis");
    let service = support::unique("kafka-e2e-resends");
    let config = IdempotencyConfig::builder(service.as_str())
        // Records outlive the test only briefly in the shared Redis.
        .default_ttl(Duration::from_secs(600))
        .lease(Duration::from_secs(30))
        .build()
        .expect("config");
    let kafka = KafkaGuard::new(Guard::new(store, config));
    let c = consumer(&support::unique("e2e-resends"), &topic);
    let tally = consume(&c, &kafka, total, Duration::from_secs(300), |event| {
        let pool = pool.clone();
        let schema = schema.clone();
        async move { apply(&pool, &schema, event, "c1").await }
    })
    .await;
    let elapsed = started.elapsed();
    assert_all_committed(&c, &topic, PARTITIONS).await;
    let counts = support::effect_counts(&pool, &schema, EVENTS).await;
    let once = counts.iter().filter(|&&n| n == 1).count();
    let twice = counts.iter().filter(|&&n| n > 1).count();
    let missing = counts.iter().filter(|&&n| n == 0).count();
    println!(
        "kafka e2e (Redis store): events {EVENTS}, messages {total} ({resent} re-sent, {by_second} through a second producer), processed {}, duplicates skipped {}, re-runs {}, side effects once {once}, twice {twice}, missing {missing}, elapsed {:.2} s",
        tally.processed,
        tally.duplicates,
        tally.handler_failures,
        elapsed.as_secs_f64()
    );
    assert_eq!(once, EVENTS as usize, "every event's effect exactly once");
    assert_eq!(tally.processed, u64::from(EVENTS));
    assert_eq!(tally.duplicates, resent);
    assert_eq!(tally.unprotected, 0);
    support::drop_schema(&pool, &schema).await;
}

/// The failing-handlers test's store (PostgreSQL, in `schema`), its guard, and the Kafka
/// guard over it with a short retry backoff.
async fn failing_handlers_guard(schema: &str) -> (PostgresStore, Guard, KafkaGuard) {
    let store = PostgresStore::connect_with(
        &support::postgres_url(),
        PostgresOptions::default().schema(schema.to_owned()),
    )
    .await
    .expect("the tests need PostgreSQL");
    let config = IdempotencyConfig::builder("kafka-e2e-failing")
        // Records outlive the test only briefly in the shared Redis.
        .default_ttl(Duration::from_secs(600))
        .lease(Duration::from_secs(30))
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config);
    let kafka = KafkaGuard::with_options(
        guard.clone(),
        KafkaGuardOptions {
            retry_backoff: Duration::from_millis(20),
            ..KafkaGuardOptions::default()
        },
    );
    (store, guard, kafka)
}

/// The records of `events` are completed.
async fn assert_completed(
    guard: &Guard,
    store: &PostgresStore,
    events: impl IntoIterator<Item = u32>,
) {
    for i in events {
        let key = guard.key_for(&support::event(i)).expect("key");
        let record = store.get(&key).await.expect("get").expect("a record");
        assert_eq!(
            record.state,
            eventonce_core::RecordState::Completed,
            "event {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_handlers_are_retried_on_redelivery_and_processed_once_on_postgres() {
    const EVENTS: u32 = 300;
    const PARTITIONS: i32 = 4;
    let Scene {
        bootstrap,
        topic,
        pool,
        schema,
    } = scene("failing", PARTITIONS).await;
    let producer = support::producer(&bootstrap, "e2e-failing");
    let started = Instant::now();
    for i in 0..EVENTS {
        support::send(&producer, &topic, Some((i % 4) as i32), i, Form::Body).await;
    }
    // Events divisible by 7 fail on their first run; by 35, on their first two.
    let failures_wanted = |i: u32| -> u32 {
        match (i % 7, i % 35) {
            (_, 0) => 2,
            (0, _) => 1,
            _ => 0,
        }
    };
    let expected_failures: u64 = (0..EVENTS).map(|i| u64::from(failures_wanted(i))).sum();

    let (store, guard, kafka) = failing_handlers_guard(&schema).await;
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let c = consumer(&support::unique("e2e-failing"), &topic);
    let tally = consume(
        &c,
        &kafka,
        u64::from(EVENTS),
        Duration::from_secs(300),
        |event| {
            let pool = pool.clone();
            let schema = schema.clone();
            let attempts = Arc::clone(&attempts);
            async move {
                let attempt = {
                    let mut a = attempts.lock().expect("attempts");
                    let n = a.entry(event).or_default();
                    *n += 1;
                    *n
                };
                if attempt <= failures_wanted(event) {
                    return Err(format!("event {event}: attempt {attempt} fails"));
                }
                apply(&pool, &schema, event, "c1").await
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert_all_committed(&c, &topic, PARTITIONS).await;
    let counts = support::effect_counts(&pool, &schema, EVENTS).await;
    let once = counts.iter().filter(|&&n| n == 1).count();
    let failing_events = (0..EVENTS).filter(|&i| failures_wanted(i) > 0).count();
    let retried_once = {
        let a = attempts.lock().expect("attempts");
        (0..EVENTS)
            .filter(|i| failures_wanted(*i) > 0 && a.get(i) == Some(&(failures_wanted(*i) + 1)))
            .count()
    };
    println!(
        "kafka e2e (PostgreSQL store): events {EVENTS}, failing events {failing_events}, processed {}, duplicates skipped {}, re-runs {} (handler failures redelivered), held back behind a redelivery {}, side effects once {once}, elapsed {:.2} s",
        tally.processed,
        tally.duplicates,
        tally.handler_failures,
        tally.rewinding,
        elapsed.as_secs_f64()
    );
    assert_eq!(once, EVENTS as usize, "every event's effect exactly once");
    assert_eq!(tally.handler_failures, expected_failures);
    assert_eq!(
        retried_once, failing_events,
        "each failing event ran again until it succeeded, and not after"
    );
    assert_eq!(tally.processed, u64::from(EVENTS));
    assert_eq!(tally.duplicates, 0);
    // Every record is completed.
    assert_completed(&guard, &store, [0, 7, 35, 299]).await;
    support::drop_schema(&pool, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_cannot_be_identified_are_returned_and_not_committed() {
    let bootstrap = support::bootstrap();
    let topic = support::unique("eventonce-e2e-bad");
    create_topic(&bootstrap, &topic, 1).await.expect("topic");
    let producer = support::producer(&bootstrap, "e2e-bad");
    let mismatch = OwnedHeaders::new().insert(Header {
        key: "event_id",
        value: Some("someone-else"),
    });
    let good = serde_json::to_vec(&support::event(1)).expect("json");
    support::send_raw(&producer, &topic, Some(0), "k", Some(b"{not json"), None).await;
    support::send_raw(&producer, &topic, Some(0), "k", None, None).await;
    support::send_raw(&producer, &topic, Some(0), "k", Some(&good), Some(mismatch)).await;
    support::send(&producer, &topic, Some(0), 1, Form::Body).await;

    let config = IdempotencyConfig::builder("kafka-e2e-bad")
        // Records outlive the test only briefly in the shared Redis.
        .default_ttl(Duration::from_secs(600))
        .build()
        .expect("config");
    let kafka = KafkaGuard::new(Guard::new(eventonce_memory::MemoryStore::new(), config));
    let c = consumer(&support::unique("e2e-bad"), &topic);
    let committed = |c: &StreamConsumer| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&topic, 0);
        c.committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed")
            .find_partition(&topic, 0)
            .map(|e| e.offset())
    };
    let mut ran = 0;
    let mut errors = Vec::new();
    for expected_offset in 0..4i64 {
        let message = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .expect("a message in time")
            .expect("consume");
        assert_eq!(rdkafka::Message::offset(&message), expected_offset);
        match kafka
            .process(&c, &message, |_| {
                ran += 1;
                async { Ok::<_, String>(()) }
            })
            .await
        {
            Err(e) => {
                // Nothing was committed for it: the caller decides. Here: dead-letter
                // (not shown) and commit past it.
                assert_eq!(e.position().offset, expected_offset);
                let before = committed(&c);
                assert!(
                    !matches!(before, Some(Offset::Offset(o)) if o > expected_offset),
                    "committed past a message that was not handled: {before:?}"
                );
                commit_past(&c, e.position(), CommitMode::Sync).expect("commit past");
                assert_eq!(committed(&c), Some(Offset::Offset(expected_offset + 1)));
                errors.push(e);
            }
            Ok(delivery) => {
                assert!(matches!(
                    delivery,
                    Delivery::Committed(Outcome::Processed(()))
                ));
            }
        }
    }
    println!("kafka e2e: unidentifiable messages returned: {errors:?}");
    assert_the_three_refusals(&errors);
    assert_eq!(ran, 1, "only the good event reached its handler");
}

/// The errors of the three bad messages, in order: not JSON, no value, a mismatched
/// `event_id` header.
fn assert_the_three_refusals(errors: &[MessageError]) {
    assert!(
        matches!(errors[0], MessageError::Envelope { .. }),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(errors[1], MessageError::NoPayload { .. }),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(
            errors[2],
            MessageError::HeaderMismatch {
                header: "event_id",
                ..
            }
        ),
        "{:?}",
        errors[2]
    );
    assert_eq!(errors.len(), 3);
}

/// The batch form: messages consumed in batches of up to 100 go through
/// `KafkaGuard::process_batch` (one `run_batch` each); a fifth of the events are re-sent,
/// some handlers fail on their first run. Every event's side effect happens once, every
/// offset is committed, and nothing is committed past a message that must come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn batches_with_resends_and_failures_have_each_side_effect_once() {
    const EVENTS: u32 = 600;
    const PARTITIONS: i32 = 4;
    let Scene {
        bootstrap,
        topic,
        pool,
        schema,
    } = scene("batch", PARTITIONS).await;
    let producer = support::producer(&bootstrap, "e2e-batch");
    let mut total = 0u64;
    let mut resent = 0u64;
    let started = Instant::now();
    for i in 0..EVENTS {
        let partition = Some((i % PARTITIONS as u32) as i32);
        support::send(&producer, &topic, partition, i, Form::Body).await;
        total += 1;
        if i % 5 == 0 {
            support::send(&producer, &topic, partition, i, Form::BodyAndHeaders).await;
            total += 1;
            resent += 1;
        }
    }
    let store = RedisStore::connect(&support::redis_url())
        .await
        .expect("the tests need Redis");
    let config = IdempotencyConfig::builder(support::unique("kafka-e2e-batch").as_str())
        // Records outlive the test only briefly in the shared Redis.
        .default_ttl(Duration::from_secs(600))
        .lease(Duration::from_secs(30))
        .build()
        .expect("config");
    let kafka = KafkaGuard::with_options(
        Guard::new(store, config),
        KafkaGuardOptions {
            retry_backoff: Duration::from_millis(20),
            ..KafkaGuardOptions::default()
        },
    );
    let failing = |i: u32| i.is_multiple_of(13);
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let c = consumer(&support::unique("e2e-batch"), &topic);
    let mut finals = std::collections::HashSet::new();
    let (mut batches, mut failures, mut rewinding, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(300);
    while (finals.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} messages final",
            finals.len()
        );
        // A batch: what arrives within 50 ms, up to 100 messages.
        let mut batch = Vec::new();
        let window = Instant::now() + Duration::from_millis(50);
        while batch.len() < 100 {
            let left = window.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.recv()).await {
                Ok(message) => batch.push(message.expect("consume").detach()),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        batches += 1;
        let deliveries = kafka
            .process_batch(&c, &batch, |event| {
                let order = event.data["order"].as_u64().unwrap_or(u64::MAX) as u32;
                let (pool, schema, attempts) =
                    (pool.clone(), schema.clone(), Arc::clone(&attempts));
                async move {
                    let attempt = {
                        let mut a = attempts.lock().expect("attempts");
                        let n = a.entry(order).or_default();
                        *n += 1;
                        *n
                    };
                    if failing(order) && attempt == 1 {
                        return Err(format!("event {order} fails its first run"));
                    }
                    apply(&pool, &schema, order, "batch").await
                }
            })
            .await;
        assert_eq!(deliveries.len(), batch.len());
        for (message, delivery) in batch.iter().zip(deliveries) {
            let at = (
                rdkafka::Message::partition(message),
                rdkafka::Message::offset(message),
            );
            match delivery.expect("every message of this test is an identifiable event") {
                Delivery::Committed(outcome) => {
                    if outcome.is_duplicate() {
                        duplicates += 1;
                    }
                    finals.insert(at);
                }
                Delivery::CommitFailed { error, .. } => panic!("commit failed: {error}"),
                Delivery::Redeliver(Retry::Handler(_)) => failures += 1,
                Delivery::Redeliver(Retry::Rewinding) => rewinding += 1,
                Delivery::Redeliver(other) => panic!("unexpected: {other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    assert_all_committed(&c, &topic, PARTITIONS).await;
    let counts = support::effect_counts(&pool, &schema, EVENTS).await;
    let once = counts.iter().filter(|&&n| n == 1).count();
    let failing_events = (0..EVENTS).filter(|&i| failing(i)).count() as u64;
    {
        let a = attempts.lock().expect("attempts");
        let reruns = a.values().map(|&n| u64::from(n)).sum::<u64>() - u64::from(EVENTS);
        println!(
            "kafka e2e batches (Redis store): events {EVENTS}, messages {total} ({resent} re-sent), batches {batches}, duplicates skipped {duplicates}, re-runs {reruns} (failing events {failing_events}; {failures} answered as the first failure of their partition in a batch), held back behind a redelivery {rewinding}, side effects once {once}, elapsed {:.2} s",
            elapsed.as_secs_f64()
        );
        assert_eq!(once, EVENTS as usize, "every event's effect exactly once");
        assert!(
            (0..EVENTS).all(|i| a.get(&i) == Some(&if failing(i) { 2 } else { 1 })),
            "each handler ran once, failing ones once more"
        );
        assert_eq!(reruns, failing_events);
        assert!(failures > 0 && rewinding > 0, "{failures} {rewinding}");
    }
    support::drop_schema(&pool, &schema).await;
}

/// The batch form after a message that cannot be identified: a partition holds @0 ok,
/// @1 `not json`, @2 a handler that fails once, @3 ok. Consumed in batches through
/// `process_batch`, the unidentifiable message dead-lettered and committed past as
/// documented: @2 is retried and processed, as `process` does message by message, and the
/// group's offset ends after @3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_batch_retries_a_failed_event_after_an_unidentifiable_message() {
    let bootstrap = support::bootstrap();
    let topic = support::unique("eventonce-e2e-batch-bad");
    create_topic(&bootstrap, &topic, 1).await.expect("topic");
    let producer = support::producer(&bootstrap, "e2e-batch-bad");
    support::send(&producer, &topic, Some(0), 0, Form::Body).await;
    support::send_raw(&producer, &topic, Some(0), "k", Some(b"not json"), None).await;
    support::send(&producer, &topic, Some(0), 2, Form::Body).await;
    support::send(&producer, &topic, Some(0), 3, Form::Body).await;

    let store = eventonce_memory::MemoryStore::new();
    let config = IdempotencyConfig::builder("kafka-e2e-batch-bad")
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config);
    let kafka = KafkaGuard::with_options(
        guard.clone(),
        KafkaGuardOptions {
            retry_backoff: Duration::from_millis(20),
            commit_mode: CommitMode::Sync,
            ..KafkaGuardOptions::default()
        },
    );
    let c = consumer(&support::unique("e2e-batch-bad"), &topic);
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    // Every answer, in order: (offset, what became of it).
    let mut answers: Vec<(i64, String)> = Vec::new();
    let mut finals = std::collections::BTreeSet::new();
    let mut dead_letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while finals.len() < 3 || dead_letters.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(first) = tokio::time::timeout(left, c.recv()).await else {
            break;
        };
        let mut batch = vec![first.expect("consume").detach()];
        let window = Instant::now() + Duration::from_millis(200);
        while batch.len() < 10 {
            let left = window.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.recv()).await {
                Ok(message) => batch.push(message.expect("consume").detach()),
                Err(_) => break,
            }
        }
        let deliveries = kafka
            .process_batch(&c, &batch, |event| {
                let order = event.data["order"].as_u64().unwrap_or(u64::MAX) as u32;
                let attempts = Arc::clone(&attempts);
                async move {
                    let attempt = {
                        let mut a = attempts.lock().expect("attempts");
                        let n = a.entry(order).or_default();
                        *n += 1;
                        *n
                    };
                    if order == 2 && attempt == 1 {
                        return Err(format!("event {order} fails its first run"));
                    }
                    Ok(())
                }
            })
            .await;
        for (message, delivery) in batch.iter().zip(deliveries) {
            let offset = rdkafka::Message::offset(message);
            let kind = match delivery {
                Ok(Delivery::Committed(outcome)) => {
                    finals.insert(offset);
                    format!("committed {outcome:?}")
                }
                Ok(Delivery::CommitFailed { error, .. }) => panic!("commit failed: {error}"),
                Ok(Delivery::Redeliver(retry)) => format!("redeliver {retry:?}"),
                Err(unidentifiable) => {
                    // The documented route: dead-letter it (not shown), commit past it.
                    commit_past(&c, unidentifiable.position(), CommitMode::Sync)
                        .expect("commit past");
                    dead_letters.push(offset);
                    format!("unidentifiable: {unidentifiable}")
                }
            };
            answers.push((offset, kind));
        }
    }
    let record = |i: u32| {
        let key = guard.key_for(&support::event(i)).expect("key");
        let store = store.clone();
        async move { store.get(&key).await.expect("get").map(|r| r.state) }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topic, 0);
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed")
        .find_partition(&topic, 0)
        .map(|e| e.offset());
    let attempts = attempts.lock().expect("attempts").clone();
    println!(
        "kafka e2e batch after an unidentifiable message: answers {answers:?}, dead-lettered {dead_letters:?}, handler runs {attempts:?}, record of event 2: {:?}, committed {committed:?}",
        record(2).await
    );
    assert_eq!(
        finals.iter().copied().collect::<Vec<_>>(),
        vec![0, 2, 3],
        "every identifiable message reached a final outcome: {answers:?}; record of event 2: {:?}; committed {committed:?}",
        record(2).await
    );
    assert_eq!(dead_letters, vec![1], "the bad message dead-lettered once");
    assert_eq!(
        attempts.get(&2),
        Some(&2),
        "event 2 failed once, then ran again"
    );
    assert_eq!(attempts.get(&0), Some(&1));
    assert_eq!(attempts.get(&3), Some(&1));
    for i in [0, 2, 3] {
        assert_eq!(
            record(i).await,
            Some(eventonce_core::RecordState::Completed),
            "event {i}"
        );
    }
    assert_eq!(committed, Some(Offset::Offset(4)));
}

/// Produces `events` events over `partitions` partitions, every fifth re-sent; returns how
/// many messages were sent.
async fn produce_with_resends(bootstrap: &str, topic: &str, events: u32, partitions: i32) -> u64 {
    let producer = support::producer(bootstrap, "e2e-batches");
    let mut total = 0u64;
    for i in 0..events {
        let partition = Some((i % partitions as u32) as i32);
        support::send(&producer, topic, partition, i, Form::Body).await;
        total += 1;
        if i % 5 == 0 {
            support::send(&producer, topic, partition, i, Form::BodyAndHeaders).await;
            total += 1;
        }
    }
    total
}

/// What the overlapped loop saw: the messages with a final outcome, and per partition the
/// offset its last batch committed.
#[derive(Default)]
struct Overlapped {
    finals: std::collections::HashSet<(i32, i64)>,
    committed: HashMap<i32, i64>,
    rewinding: u64,
}

impl Overlapped {
    /// Takes one batch's answers; asserts that no partition's commit goes back.
    fn take(&mut self, batch: &[rdkafka::message::OwnedMessage], deliveries: Vec<BatchResult>) {
        let mut commits: HashMap<i32, i64> = HashMap::new();
        for (message, delivery) in batch.iter().zip(deliveries) {
            let at = (
                rdkafka::Message::partition(message),
                rdkafka::Message::offset(message),
            );
            match delivery.expect("every message of this test is an identifiable event") {
                Delivery::Committed(_) => {
                    self.finals.insert(at);
                    let c = commits.entry(at.0).or_insert(0);
                    *c = (*c).max(at.1 + 1);
                }
                Delivery::CommitFailed { error, .. } => panic!("commit failed: {error}"),
                Delivery::Redeliver(Retry::Rewinding) => self.rewinding += 1,
                // A copy whose first copy still runs in the batch before: held by this
                // consumer's own claim until then.
                Delivery::Redeliver(Retry::Handler(_) | Retry::InProgress) => {}
                Delivery::Redeliver(other) => panic!("unexpected: {other:?}"),
            }
        }
        for (partition, offset) in commits {
            let before = self.committed.insert(partition, offset).unwrap_or(0);
            assert!(
                offset >= before,
                "partition {partition}: commit {offset} after {before}"
            );
        }
    }
}

/// Batches of what arrives within 50 ms, up to 100 messages, until `total` messages are
/// final.
fn polled_batches<'a>(
    c: &'a StreamConsumer,
    seen: &'a std::cell::RefCell<Overlapped>,
    total: u64,
    deadline: Instant,
) -> impl futures_util::Stream<Item = Vec<rdkafka::message::OwnedMessage>> + 'a {
    futures_util::stream::unfold((), move |()| async move {
        loop {
            if seen.borrow().finals.len() as u64 >= total {
                return None;
            }
            assert!(Instant::now() < deadline, "not all messages final in time");
            let mut batch = Vec::new();
            let window = Instant::now() + Duration::from_millis(50);
            while batch.len() < 100 {
                let left = window.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, c.recv()).await {
                    Ok(message) => batch.push(message.expect("consume").detach()),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                return Some((batch, ()));
            }
        }
    })
}

type BatchResult = Result<Delivery<(), String>, MessageError>;

/// The overlapped form: `KafkaGuard::process_batches` (the next batch claimed while the
/// previous one completes) over batches of up to 100, a fifth of the events re-sent,
/// some handlers failing on their first run. Every event's side effect happens once, no
/// partition's commit goes back, and every offset ends committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapped_batches_with_resends_and_failures_have_each_side_effect_once() {
    overlapped_batches("overlap", None).await;
}

/// The same with the batches' store calls merged (`carry_wait` set: each batch's
/// completions carried by a later batch's claim, five batches in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_batches_with_resends_and_failures_have_each_side_effect_once() {
    let wait = Some(eventonce_core::config::defaults::DEFAULT_CARRY_WAIT);
    overlapped_batches("merged", wait).await;
}

/// `process_batches` with `carry_wait` over a topic of re-sent events and failing first
/// runs: each effect once, every offset committed.
async fn overlapped_batches(name: &str, carry_wait: Option<Duration>) {
    const EVENTS: u32 = 600;
    const PARTITIONS: i32 = 4;
    let Scene {
        bootstrap,
        topic,
        pool,
        schema,
    } = scene(name, PARTITIONS).await;
    let total = produce_with_resends(&bootstrap, &topic, EVENTS, PARTITIONS).await;
    let store = RedisStore::connect(&support::redis_url())
        .await
        .expect("the tests need Redis");
    let config = IdempotencyConfig::builder(support::unique(&format!("kafka-e2e-{name}")).as_str())
        .default_ttl(Duration::from_secs(600))
        .lease(Duration::from_secs(30))
        .build()
        .expect("config");
    let options = KafkaGuardOptions {
        retry_backoff: Duration::from_millis(20),
        carry_wait,
        ..KafkaGuardOptions::default()
    };
    let kafka = KafkaGuard::with_options(Guard::new(store, config), options);
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let c = consumer(&support::unique(&format!("e2e-{name}")), &topic);
    let seen = std::cell::RefCell::new(Overlapped::default());
    let deadline = Instant::now() + Duration::from_secs(300);
    let batches = polled_batches(&c, &seen, total, deadline);
    let handler = |event: eventonce_core::EventEnvelope| {
        let order = event.data["order"].as_u64().unwrap_or(u64::MAX) as u32;
        let (pool, schema, attempts) = (pool.clone(), schema.clone(), Arc::clone(&attempts));
        async move {
            let attempt = {
                let mut a = attempts.lock().expect("attempts");
                let n = a.entry(order).or_default();
                *n += 1;
                *n
            };
            if order.is_multiple_of(13) && attempt == 1 {
                return Err(format!("event {order} fails its first run"));
            }
            apply(&pool, &schema, order, "overlap").await
        }
    };
    kafka
        .process_batches(&c, batches, handler, |batch, deliveries| {
            seen.borrow_mut().take(&batch, deliveries);
            async { std::ops::ControlFlow::Continue(()) }
        })
        .await;
    assert_all_committed(&c, &topic, PARTITIONS).await;
    let counts = support::effect_counts(&pool, &schema, EVENTS).await;
    assert!(counts.iter().all(|&n| n == 1), "every effect exactly once");
    let ran_as_expected = {
        let a = attempts.lock().expect("attempts");
        (0..EVENTS).all(|i| a.get(&i) == Some(&if i % 13 == 0 { 2 } else { 1 }))
    };
    assert!(
        ran_as_expected,
        "each handler ran once, failing ones once more"
    );
    assert!(seen.borrow().rewinding > 0);
    support::drop_schema(&pool, &schema).await;
}

/// A consumer with manual assignment of one partition of `topic`, in `group`.
fn assigned(group: &str, topic: &str, partition: i32) -> StreamConsumer {
    let c: StreamConsumer = consumer_config(&support::bootstrap(), group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("partition");
    c.assign(&tpl).expect("assign");
    c
}

/// Review point 2 against the broker: consumer A's second batch claims event 1 (a 1.5 s
/// handler, lease 0.9 s) while its first batch's `on_batch` takes 2 s; consumer B, on
/// the other partition, gets a copy of event 1 at 1.2 s. A's running batch keeps renewing
/// its claim meanwhile, so B answers `InProgress` and event 1's handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_on_batch_does_not_let_the_running_batchs_claim_lapse() {
    let bootstrap = support::bootstrap();
    let topic = support::unique("eventonce-e2e-slow-on-batch");
    create_topic(&bootstrap, &topic, 2).await.expect("topic");
    let producer = support::producer(&bootstrap, "e2e-slow-on-batch");
    support::send(&producer, &topic, Some(0), 0, Form::Body).await;
    support::send(&producer, &topic, Some(0), 1, Form::Body).await;
    support::send(&producer, &topic, Some(1), 1, Form::Body).await;
    let store = eventonce_memory::MemoryStore::new();
    let config = IdempotencyConfig::builder("kafka-e2e-slow-on-batch")
        .lease(Duration::from_millis(900))
        .build()
        .expect("config");
    let a = KafkaGuard::new(Guard::new(store.clone(), config.clone()));
    let b = KafkaGuard::new(Guard::new(store, config));
    let group = support::unique("e2e-slow-on-batch");
    let (ca, cb) = (assigned(&group, &topic, 0), assigned(&group, &topic, 1));
    let runs: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let handler = |event: eventonce_core::EventEnvelope| {
        let order = event.data["order"].as_u64().unwrap_or(u64::MAX);
        let runs = Arc::clone(&runs);
        async move {
            *runs.lock().expect("runs").entry(order).or_default() += 1;
            let took = if order == 1 { 1500 } else { 10 };
            tokio::time::sleep(Duration::from_millis(took)).await;
            Ok::<_, String>(())
        }
    };
    let batches = futures_util::stream::unfold(0, |n| {
        let ca = &ca;
        async move {
            if n == 2 {
                return None;
            }
            let message = ca.recv().await.expect("consume").detach();
            Some((vec![message], n + 1))
        }
    });
    let on_batch = |_batch, _answers: Vec<BatchResult>| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        std::ops::ControlFlow::Continue(())
    };
    let other = async {
        let message = cb.recv().await.expect("consume");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        b.process(&cb, &message, handler).await.expect("an event")
    };
    let ((), answer) = tokio::join!(a.process_batches(&ca, batches, handler, on_batch), other);
    let runs = runs.lock().expect("runs").clone();
    assert_eq!(
        runs.get(&1),
        Some(&1),
        "event 1's handler runs: {runs:?}; B answered {answer:?}"
    );
}
