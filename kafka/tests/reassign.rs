//! Two consumers of one group and a partition that moves between them, against the real
//! broker (`KAFKA_BOOTSTRAP`): what a `KafkaGuard` decided while it owned a partition (a
//! pending redelivery, a batch gathered before the partition moved) is never applied to
//! the partition once another member has moved its committed offset on.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventonce_core::{Guard, IdempotencyConfig, Outcome};
use eventonce_kafka::create_topic;
use eventonce_kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use eventonce_kafka::rdkafka::message::{Message, OwnedMessage};
use eventonce_kafka::rdkafka::{Offset, TopicPartitionList};
use eventonce_kafka::{consumer_config, Delivery, KafkaGuard, KafkaGuardOptions, Retry};
use eventonce_memory::MemoryStore;
use support::Form;

fn member(group: &str) -> StreamConsumer {
    consumer_config(&support::bootstrap(), group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("consumer")
}

fn kafka(store: &MemoryStore, service: &str, completed_ttl: Duration) -> KafkaGuard {
    let config = IdempotencyConfig::builder(service)
        .default_ttl(completed_ttl)
        .build()
        .expect("config");
    KafkaGuard::with_options(
        Guard::new(store.clone(), config),
        KafkaGuardOptions {
            commit_mode: CommitMode::Sync,
            retry_backoff: Duration::from_millis(20),
            ..KafkaGuardOptions::default()
        },
    )
}

fn committed(consumer: &StreamConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    match consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .find_partition(topic, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

fn assigned(consumer: &StreamConsumer) -> Vec<i32> {
    let mut partitions: Vec<i32> = consumer
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
        .collect();
    partitions.sort_unstable();
    partitions
}

/// Receives for up to `wait` (serving rebalances); the message, if one came.
async fn pump(consumer: &StreamConsumer, wait: Duration) -> Option<OwnedMessage> {
    match tokio::time::timeout(wait, consumer.recv()).await {
        Ok(message) => Some(message.expect("consume").detach()),
        Err(_) => None,
    }
}

fn order(message: &OwnedMessage) -> u32 {
    eventonce_kafka::envelope_from_message(message)
        .ok()
        .and_then(|e| e.data["order"].as_u64())
        .unwrap_or(u64::MAX) as u32
}

/// Successful handler runs per event.
type Effects = Arc<Mutex<HashMap<u32, u32>>>;

fn effect(effects: &Effects, event: u32) {
    *effects.lock().expect("effects").entry(event).or_default() += 1;
}

/// A's handler fails on @0, so A waits for its redelivery; A leaves the group before it
/// comes; B takes the partition, processes @0..@9 and commits 10; the partition comes back
/// to A at 10. A goes on from 10: it does not seek back to its stale redelivery at 0, the
/// group's offset never goes back below 10, and no event runs twice (the completed
/// records have expired by then, so a replay would run them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_redelivery_pending_when_the_partition_moved_is_dropped() {
    let started = Instant::now();
    let bootstrap = support::bootstrap();
    let topic = support::unique("eventonce-e2e-reassign-rewind");
    create_topic(&bootstrap, &topic, 1).await.expect("topic");
    let producer = support::producer(&bootstrap, "e2e-reassign-rewind");
    for i in 0..12 {
        support::send(&producer, &topic, Some(0), i, Form::Body).await;
    }
    let group = support::unique("e2e-reassign-rewind");
    let service = support::unique("kafka-e2e-reassign-rewind");
    let store = MemoryStore::new();
    // Completed records live 3 s: gone by the time the partition comes back to A.
    let ttl = Duration::from_secs(3);
    let kafka_a = kafka(&store, &service, ttl);
    let kafka_b = kafka(&store, &service, ttl);
    let effects: Effects = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);

    // A: @0 fails, a redelivery of @0 is pending.
    let a = member(&group);
    a.subscribe(&[topic.as_str()]).expect("subscribe");
    let first = pump(&a, Duration::from_secs(60))
        .await
        .expect("A receives @0");
    assert_eq!(first.offset(), 0);
    let delivery = kafka_a
        .process(&a, &first, |_| async { Err::<(), _>("fails once") })
        .await
        .expect("an event");
    assert!(
        matches!(delivery, Delivery::Redeliver(Retry::Handler(_))),
        "{delivery:?}"
    );

    // A leaves the group (nothing processed: what it receives meanwhile is dropped).
    a.unsubscribe();
    while !assigned(&a).is_empty() {
        assert!(
            Instant::now() < deadline,
            "A still assigned {:?}",
            assigned(&a)
        );
        pump(&a, Duration::from_millis(100)).await;
    }

    // B processes @0..@9 and commits 10, then leaves.
    let b = member(&group);
    b.subscribe(&[topic.as_str()]).expect("subscribe");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = pump(&b, left).await.expect("B receives");
        if message.offset() >= 10 {
            continue;
        }
        let effects = Arc::clone(&effects);
        let event = order(&message);
        let delivery = kafka_b
            .process(&b, &message, |_| async move {
                effect(&effects, event);
                Ok::<_, String>(())
            })
            .await
            .expect("an event");
        assert!(matches!(delivery, Delivery::Committed(_)), "{delivery:?}");
        if message.offset() == 9 {
            break;
        }
    }
    assert_eq!(committed(&b, &topic, 0), Some(10));
    drop(b);
    println!(
        "reassign: B committed 10 at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The partition comes back to A, at 10.
    a.subscribe(&[topic.as_str()]).expect("subscribe again");
    let mut seen: Vec<(i64, String)> = Vec::new();
    let mut lowest_commit = i64::MAX;
    let mut finals = 0;
    while finals < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = pump(&a, left).await else {
            panic!("A got back only {seen:?} before the deadline");
        };
        let effects = Arc::clone(&effects);
        let event = order(&message);
        let delivery = kafka_a
            .process(&a, &message, |_| async move {
                effect(&effects, event);
                Ok::<_, String>(())
            })
            .await
            .expect("an event");
        if let Some(c) = committed(&a, &topic, 0) {
            lowest_commit = lowest_commit.min(c);
        }
        if message.offset() >= 10 && matches!(delivery, Delivery::Committed(_)) {
            finals += 1;
        }
        seen.push((message.offset(), format!("{delivery:?}")));
        assert!(
            seen.len() < 100,
            "A keeps going round: {seen:?}, lowest commit {lowest_commit}"
        );
    }
    let effects = effects.lock().expect("effects").clone();
    let twice: Vec<u32> = (0..12)
        .filter(|i| effects.get(i).copied().unwrap_or(0) > 1)
        .collect();
    println!(
        "reassign: A after the partition came back: {seen:?}; lowest committed offset {lowest_commit}; events run twice {twice:?}; elapsed {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        lowest_commit, 11,
        "the group's offset went back from 10 (A consumed {seen:?})"
    );
    assert!(twice.is_empty(), "events run twice: {twice:?}");
    assert!(
        seen.iter().all(|(offset, _)| *offset >= 10),
        "A went back before 10: {seen:?}"
    );
    assert_eq!(committed(&a, &topic, 0), Some(12));
    assert!((0..12).all(|i| effects.get(&i) == Some(&1)), "{effects:?}");
}

/// A gathers a batch of the first three messages of each of two partitions; B joins and
/// the partitions are split between them; B processes its partition and commits 10. A's
/// batch, processed afterwards, commits only the partition A still owns: the one it lost
/// stays at B's 10, its messages are answered `Retry::Revoked` and left to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_batch_commits_only_partitions_still_assigned() {
    let started = Instant::now();
    let bootstrap = support::bootstrap();
    let topic = support::unique("eventonce-e2e-reassign-batch");
    create_topic(&bootstrap, &topic, 2).await.expect("topic");
    let producer = support::producer(&bootstrap, "e2e-reassign-batch");
    for i in 0..20 {
        support::send(&producer, &topic, Some((i % 2) as i32), i, Form::Body).await;
    }
    let group = support::unique("e2e-reassign-batch");
    let service = support::unique("kafka-e2e-reassign-batch");
    let store = MemoryStore::new();
    let kafka_a = kafka(&store, &service, Duration::from_secs(600));
    let kafka_b = kafka(&store, &service, Duration::from_secs(600));
    let effects: Effects = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(120);

    // A alone: the first three messages of each partition make its batch.
    let a = member(&group);
    a.subscribe(&[topic.as_str()]).expect("subscribe");
    let mut batch: Vec<OwnedMessage> = Vec::new();
    while batch.len() < 6 {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = pump(&a, left).await.expect("A receives");
        let taken = batch
            .iter()
            .any(|m| m.partition() == message.partition() && m.offset() == message.offset());
        if message.offset() < 3 && !taken {
            batch.push(message);
        }
    }

    // B joins; A keeps polling (what it receives now is not part of the batch).
    let b = member(&group);
    b.subscribe(&[topic.as_str()]).expect("subscribe");
    let mut b_done = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "no split: A {:?}, B {:?}",
            assigned(&a),
            assigned(&b)
        );
        pump(&a, Duration::from_millis(50)).await;
        if let Some(message) = pump(&b, Duration::from_millis(50)).await {
            let effects = Arc::clone(&effects);
            let event = order(&message);
            let delivery = kafka_b
                .process(&b, &message, |_| async move {
                    effect(&effects, event);
                    Ok::<_, String>(())
                })
                .await
                .expect("an event");
            assert!(matches!(delivery, Delivery::Committed(_)), "{delivery:?}");
            b_done |= message.offset() == 9;
        }
        if b_done && assigned(&a).len() == 1 && assigned(&b).len() == 1 {
            break;
        }
    }
    let lost = assigned(&b)[0];
    let kept = assigned(&a)[0];
    assert_ne!(lost, kept);
    assert_eq!(committed(&a, &topic, lost), Some(10), "B committed 10");

    let deliveries = kafka_a
        .process_batch(&a, &batch, |event| {
            let effects = Arc::clone(&effects);
            let event = event.data["order"].as_u64().unwrap_or(u64::MAX) as u32;
            async move {
                effect(&effects, event);
                Ok::<_, String>(())
            }
        })
        .await;
    let answers: Vec<(i32, i64, String)> = batch
        .iter()
        .zip(&deliveries)
        .map(|(m, d)| (m.partition(), m.offset(), format!("{d:?}")))
        .collect();
    let lost_at = committed(&a, &topic, lost);
    let kept_at = committed(&a, &topic, kept);
    println!(
        "reassign: A lost partition {lost}, kept {kept}; its batch: {answers:?}; committed: lost {lost_at:?}, kept {kept_at:?}; elapsed {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        lost_at,
        Some(10),
        "A's late batch moved B's partition back: {answers:?}"
    );
    assert_eq!(kept_at, Some(3));
    for (message, delivery) in batch.iter().zip(deliveries) {
        let delivery = delivery.expect("an event");
        if message.partition() == lost {
            assert!(
                matches!(delivery, Delivery::Redeliver(Retry::Revoked)),
                "{message:?}: {delivery:?}"
            );
        } else {
            assert!(
                matches!(delivery, Delivery::Committed(Outcome::Processed(()))),
                "{delivery:?}"
            );
        }
    }
    let effects = effects.lock().expect("effects").clone();
    assert!(effects.values().all(|&n| n == 1), "{effects:?}");
}
