//! Messages that are not JSON envelopes: binary bodies (Avro, Protobuf, ...) whose id
//! travels in a `message-id` header. `KafkaGuard::process_identified` builds an
//! `Identity` from each message; the body is its fingerprint, so a re-sent id with a
//! changed body is refused as a conflict instead of being run again.
//!
//! ```sh
//! make kafka   # prints KAFKA_BOOTSTRAP=127.0.0.1:PORT
//! KAFKA_BOOTSTRAP=127.0.0.1:PORT cargo run --example kafka_identity --features kafka
//! ```

use std::time::Duration;

use eventonce::kafka::rdkafka::config::ClientConfig;
use eventonce::kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use eventonce::kafka::rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use eventonce::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventonce::kafka::{commit_past, consumer_config, create_topic, Delivery, KafkaGuard};
use eventonce::{Guard, IdempotencyConfig, Identity, MemoryStore, Outcome};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The identity of a message: its `message-id` header, and its body as the fingerprint.
fn identify(message: &BorrowedMessage<'_>) -> Result<Identity, &'static str> {
    let id = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "message-id"))
        .and_then(|h| h.value)
        .ok_or("no message-id header")?;
    let body = message.payload().unwrap_or_default();
    Ok(Identity::new("orders.placed.v1", id).with_fingerprint(body))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("binary-orders-{unique}");
    create_topic(&bootstrap, &topic, 1).await?;

    // Order 1 twice (a producer retry), then order 1 again with another body (a bug).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let sent: [&[u8]; 3] = [&[0x08, 0x01], &[0x08, 0x01], &[0x08, 0x02]];
    for body in sent {
        let headers = OwnedHeaders::new().insert(Header {
            key: "message-id",
            value: Some("order-1"),
        });
        let record = FutureRecord::<(), [u8]>::to(&topic)
            .payload(body)
            .headers(headers);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }

    let config = IdempotencyConfig::builder("billing-service").build()?;
    let kafka = KafkaGuard::new(Guard::new(MemoryStore::new(), config));
    let consumer: StreamConsumer = consumer_config(&bootstrap, &topic).create()?;
    consumer.subscribe(&[topic.as_str()])?;
    for _ in 0..sent.len() {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| "no message within 60 s: is the broker running (make kafka)?")??;
        let answer = kafka
            .process_identified(&consumer, &message, identify, |identity| async move {
                // Decode the body and apply its effect here.
                println!("charging {}", String::from_utf8_lossy(identity.id()));
                Ok::<_, std::io::Error>(())
            })
            .await;
        match answer {
            Ok(Delivery::Committed(Outcome::Duplicate)) => println!("duplicate skipped"),
            Ok(delivery) => println!("{delivery:?}"),
            Err(refused) => {
                // A conflict (or a message without the header): dead-letter it, then go on.
                println!("dead-lettered: {refused}");
                commit_past(&consumer, refused.position(), CommitMode::Async)?;
            }
        }
    }
    Ok(())
}
