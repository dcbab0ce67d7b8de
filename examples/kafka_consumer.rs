//! A Kafka consumer that processes each event once: `StreamConsumer`, `RedisStore`, the
//! offset committed only after `Guard::run`'s outcome is final, and messages that are not
//! identifiable events sent to a dead-letter topic.
//!
//! ```sh
//! make kafka   # prints KAFKA_BOOTSTRAP=127.0.0.1:PORT
//! KAFKA_BOOTSTRAP=127.0.0.1:PORT cargo run --example kafka_consumer --features kafka,redis -- orders
//! ```

use std::time::Duration;

use eventonce::kafka::rdkafka::config::ClientConfig;
use eventonce::kafka::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use eventonce::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventonce::kafka::rdkafka::Message;
use eventonce::kafka::{commit_past, consumer_config, Delivery, KafkaGuard, Retry};
use eventonce::{Guard, IdempotencyConfig, Outcome, RedisStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let topic = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "orders".to_owned());
    let dead_letters = format!("{topic}.dead-letter");

    let config = IdempotencyConfig::builder("billing-service")
        .event_type_ttl("orders.placed.v1", Duration::from_secs(3600))
        .build()?;
    let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
    let kafka = KafkaGuard::new(Guard::new(store, config));

    // No automatic commits: KafkaGuard commits each message once its outcome is final.
    let consumer: StreamConsumer = consumer_config(&bootstrap, "billing-service").create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let dlq: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;

    loop {
        let message = consumer.recv().await?;
        let delivery = kafka
            .process(&consumer, &message, |event| async move {
                // The side effect: runs once per event, even when Kafka delivers it again.
                println!("charging order {}", event.data["order"]);
                Ok::<_, std::io::Error>(())
            })
            .await;
        match delivery {
            Ok(Delivery::Committed(Outcome::Processed(()) | Outcome::Unprotected(()))) => {}
            Ok(Delivery::Committed(Outcome::Duplicate)) => println!("duplicate skipped"),
            Ok(Delivery::CommitFailed { error, .. }) => {
                eprintln!(
                    "final, commit failed ({error}): it comes again, a duplicate once recorded"
                );
            }
            // Not committed; the partition was sought back to the message.
            Ok(Delivery::Redeliver(Retry::Handler(e))) => eprintln!("failed, retrying: {e}"),
            Ok(Delivery::Redeliver(_)) => {}
            Err(unidentifiable) => {
                // Never skipped silently: keep it in a dead-letter topic, then move on.
                eprintln!("dead-lettering: {unidentifiable}");
                let record = FutureRecord::<[u8], [u8]>::to(&dead_letters)
                    .payload(message.payload().unwrap_or_default());
                dlq.send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)?;
                commit_past(&consumer, unidentifiable.position(), CommitMode::Async)?;
            }
        }
    }
}
