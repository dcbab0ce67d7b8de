//! `KafkaGuard::process_identified` against the real broker: messages whose bodies are not
//! JSON envelopes, identified by a header, with a re-sent id, a changed payload and an
//! old message.

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use eventonce_core::{Guard, IdempotencyConfig, Identity, Outcome};
use eventonce_kafka::{
    commit_past, consumer_config, create_topic, Delivery, KafkaGuard, MessageError,
};
use eventonce_memory::MemoryStore;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;

/// Sends `body` to `topic` with a `message-id` header when `id` is given, and the
/// timestamp `at` when given.
async fn send(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    id: Option<&str>,
    body: &[u8],
    at: Option<i64>,
) {
    let mut record = FutureRecord::<(), [u8]>::to(topic).payload(body);
    if let Some(at) = at {
        record = record.timestamp(at);
    }
    if let Some(id) = id {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "message-id",
            value: Some(id),
        }));
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("send");
}

/// A fresh topic of one partition, and a producer for it: `(bootstrap, topic, producer)`.
async fn fresh_topic(prefix: &str) -> (String, String, rdkafka::producer::FutureProducer) {
    let bootstrap = support::bootstrap();
    let topic = support::unique(prefix);
    create_topic(&bootstrap, &topic, 1).await.expect("topic");
    let producer = support::producer(&bootstrap, &topic);
    (bootstrap, topic, producer)
}

/// Now, in milliseconds since the epoch (a Kafka timestamp).
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// A guard of `config` on the memory store, and a consumer of `topic` in a group of its own.
fn guarded(
    bootstrap: &str,
    topic: &str,
    config: IdempotencyConfig,
) -> (KafkaGuard, StreamConsumer) {
    let kafka = KafkaGuard::new(Guard::new(MemoryStore::new(), config));
    let consumer: StreamConsumer = consumer_config(bootstrap, topic)
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    (kafka, consumer)
}

/// The next message, within a minute.
async fn next(consumer: &StreamConsumer) -> BorrowedMessage<'_> {
    tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .expect("a message within 60 s")
        .expect("message")
}

/// An answer in a few words; a refused or unidentified message is passed (after its dead
/// letter, in a real consumer).
fn summary<T: std::fmt::Debug, E: std::fmt::Debug>(
    consumer: &StreamConsumer,
    answer: &Result<Delivery<T, E>, MessageError>,
) -> String {
    if let Err(refused) = answer {
        commit_past(consumer, refused.position(), CommitMode::Sync).expect("commit past");
    }
    match answer {
        Ok(Delivery::Committed(Outcome::Processed(_))) => "processed".to_owned(),
        Ok(Delivery::Committed(Outcome::Duplicate)) => "duplicate".to_owned(),
        Ok(other) => format!("{other:?}"),
        Err(MessageError::Refused { reason, .. }) => format!("refused: {reason}"),
        Err(MessageError::NotIdentified { reason, .. }) => format!("not identified: {reason}"),
        Err(other) => format!("{other}"),
    }
}

/// The identity of a message: its `message-id` header, and its body as the fingerprint.
fn identify(message: &BorrowedMessage<'_>) -> Result<Identity, &'static str> {
    let id = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "message-id"))
        .and_then(|h| h.value)
        .ok_or("no message-id header")?;
    Ok(Identity::new("orders.binary.v1", id)
        .with_fingerprint(message.payload().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_keyed_by_a_header_run_once_and_changed_or_old_ones_are_refused() {
    let (bootstrap, topic, producer) = fresh_topic("identified").await;
    let now_ms = now_ms();
    // (id, body, timestamp): a duplicate, a changed payload, an old message, no header.
    let sent: [(Option<&str>, &[u8], i64); 6] = [
        (Some("m-1"), &[0x00, 0xff, 0x01], now_ms),
        (Some("m-2"), &[0x02], now_ms),
        (Some("m-1"), &[0x00, 0xff, 0x01], now_ms),
        (Some("m-1"), &[0x00, 0xff, 0x02], now_ms),
        (Some("m-3"), &[0x03], now_ms - 3 * 3_600_000),
        (None, &[0x04], now_ms),
    ];
    for (id, body, at) in sent {
        send(&producer, &topic, id, body, Some(at)).await;
    }

    let config = IdempotencyConfig::builder("identified")
        .max_event_age(Duration::from_secs(3600))
        .build()
        .expect("config");
    let (kafka, consumer) = guarded(&bootstrap, &topic, config);
    let runs: std::sync::Mutex<HashMap<String, u32>> = std::sync::Mutex::default();
    let mut answers = Vec::new();
    while answers.len() < sent.len() {
        let message = next(&consumer).await;
        let answer = kafka
            .process_identified(&consumer, &message, identify, |identity| {
                let runs = &runs;
                async move {
                    // The handler's future runs only for an event the guard lets through.
                    let id = String::from_utf8_lossy(identity.id()).into_owned();
                    *runs.lock().expect("lock").entry(id).or_default() += 1;
                    Ok::<_, std::io::Error>(())
                }
            })
            .await;
        answers.push(summary(&consumer, &answer));
    }
    println!("{answers:#?}");
    assert_eq!(answers[0], "processed");
    assert_eq!(answers[1], "processed");
    assert_eq!(answers[2], "duplicate");
    assert!(
        answers[3].starts_with("refused: payload conflict"),
        "{answers:?}"
    );
    assert!(answers[4].starts_with("refused: stale"), "{answers:?}");
    assert_eq!(answers[5], "not identified: no message-id header");
    let runs = runs.into_inner().expect("lock");
    assert_eq!(
        runs,
        HashMap::from([("m-1".to_owned(), 1), ("m-2".to_owned(), 1)])
    );
    let stats = kafka.guard().stats();
    assert_eq!((stats.conflicts, stats.stale), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_without_a_timestamp_takes_the_messages_for_the_stale_check() {
    let (bootstrap, topic, producer) = fresh_topic("stale-envelope").await;
    let now_ms = now_ms();
    for (id, at) in [("old", now_ms - 3 * 3_600_000), ("fresh", now_ms)] {
        let body = format!(r#"{{"event_id":"{id}","event_type":"orders.placed.v1","data":{{}}}}"#);
        send(&producer, &topic, None, body.as_bytes(), Some(at)).await;
    }
    let config = IdempotencyConfig::builder("stale-envelope")
        .max_event_age(Duration::from_secs(3600))
        .build()
        .expect("config");
    let (kafka, consumer) = guarded(&bootstrap, &topic, config);
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let message = next(&consumer).await;
        let answer = kafka
            .process(&consumer, &message, |_| async {
                Ok::<_, std::io::Error>(())
            })
            .await;
        answers.push(summary(&consumer, &answer));
    }
    assert!(answers[0].starts_with("refused: stale"), "{answers:?}");
    assert_eq!(answers[1], "processed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_binary_messages_is_identified_and_run_once() {
    let (bootstrap, topic, producer) = fresh_topic("identified-batch").await;
    let sent: [(Option<&str>, &[u8]); 5] = [
        (Some("b-1"), &[0x01]),
        (Some("b-2"), &[0x02]),
        (Some("b-1"), &[0x01]),
        (Some("b-2"), &[0x09]),
        (None, &[0x04]),
    ];
    for (id, body) in sent {
        send(&producer, &topic, id, body, None).await;
    }
    let config = IdempotencyConfig::builder("identified-batch")
        .build()
        .expect("config");
    let (kafka, consumer) = guarded(&bootstrap, &topic, config);
    let mut batch = Vec::new();
    while batch.len() < sent.len() {
        batch.push(next(&consumer).await);
    }
    let runs: std::sync::Mutex<HashMap<String, u32>> = std::sync::Mutex::default();
    let answers = kafka
        .process_batch_identified(&consumer, &batch, identify, |identity| {
            let runs = &runs;
            async move {
                let id = String::from_utf8_lossy(identity.id()).into_owned();
                *runs.lock().expect("lock").entry(id).or_default() += 1;
                Ok::<_, std::io::Error>(())
            }
        })
        .await;
    let said: Vec<String> = answers.iter().map(|a| summary(&consumer, a)).collect();
    println!("{said:?}");
    assert_eq!(
        &said[..3],
        ["processed", "processed", "duplicate"],
        "{said:?}"
    );
    assert!(
        said[3].starts_with("refused: payload conflict"),
        "a changed payload in a batch: {said:?}"
    );
    // After a final refusal the rest of its partition in the batch waits for the caller's
    // decision (dead letter, commit_past), as after an unidentifiable message.
    assert_eq!(said[4], "Redeliver(Rewinding)");
    let runs = runs.into_inner().expect("lock");
    assert_eq!(
        runs,
        HashMap::from([("b-1".to_owned(), 1), ("b-2".to_owned(), 1)])
    );
}
