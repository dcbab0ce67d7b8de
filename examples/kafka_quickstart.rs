//! The Kafka quickstart: creates a topic, produces five orders each sent twice (a
//! producer retry), and consumes them with `KafkaGuard` on the embedded memory store:
//! every order is charged once, every second copy is skipped as a duplicate.
//!
//! ```sh
//! make kafka   # prints KAFKA_BOOTSTRAP=127.0.0.1:PORT
//! KAFKA_BOOTSTRAP=127.0.0.1:PORT cargo run --example kafka_quickstart --features kafka
//! ```
//!
//! It prints how long the first message took to arrive (a few seconds on the project's
//! broker, most of it the consumer group's join) and stops once every message is settled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use eventonce::kafka::rdkafka::config::ClientConfig;
use eventonce::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
use eventonce::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use eventonce::kafka::{consumer_config, create_topic, Delivery, KafkaGuard};
use eventonce::{Guard, IdempotencyConfig, MemoryStore, Outcome};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What a quickstart run saw.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// From subscribing to the first message consumed.
    pub(crate) first_message_after: Duration,
    /// Messages consumed (every copy).
    pub(crate) consumed: usize,
    /// Handler runs per order.
    pub(crate) charged: BTreeMap<u64, usize>,
    /// Copies answered `Duplicate`.
    pub(crate) duplicates: usize,
}

/// The number of orders the quickstart produces (each one twice).
pub(crate) const ORDERS: u64 = 5;

/// Creates `topic`, produces the orders with their duplicates and consumes them once.
///
/// # Errors
///
/// The broker cannot be reached, the topic exists already, a message is not final within
/// 60 seconds, or an event cannot be identified.
pub(crate) async fn run(bootstrap: &str, topic: &str, group: &str) -> Result<Summary, Error> {
    create_topic(bootstrap, topic, 1).await?;
    produce(bootstrap, topic).await?;

    let config = IdempotencyConfig::builder("billing-service").build()?;
    let kafka = KafkaGuard::new(Guard::new(MemoryStore::new(), config));
    let consumer: StreamConsumer = consumer_config(bootstrap, group).create()?;
    consumer.subscribe(&[topic])?;

    let started = Instant::now();
    let mut summary = Summary::default();
    while summary.consumed < 2 * ORDERS as usize {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .map_err(|_| "no message within 60 s: is the broker running (make kafka)?")??;
        if summary.consumed == 0 {
            summary.first_message_after = started.elapsed();
        }
        summary.consumed += 1;
        let delivery = kafka
            .process(&consumer, &message, |event| async move {
                // The side effect: runs once per order, however often Kafka delivers it.
                let order = event.data["order"].as_u64().unwrap_or_default();
                println!("charging order {order}");
                Ok::<_, std::io::Error>(order)
            })
            .await?;
        match delivery {
            Delivery::Committed(Outcome::Processed(order) | Outcome::Unprotected(order)) => {
                *summary.charged.entry(order).or_default() += 1;
            }
            Delivery::Committed(Outcome::Duplicate) => {
                println!("duplicate skipped");
                summary.duplicates += 1;
            }
            // Anything else comes again: the partition was sought back to the message.
            _ => summary.consumed -= 1,
        }
    }
    Ok(summary)
}

/// Produces orders 1..=ORDERS, each twice with the same `event_id`.
async fn produce(bootstrap: &str, topic: &str) -> Result<(), Error> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for order in 1..=ORDERS {
        let event = format!(
            r#"{{"event_id":"order-{order}","event_type":"orders.placed.v1","data":{{"order":{order}}}}}"#
        );
        for _copy in 0..2 {
            producer
                .send(
                    FutureRecord::<(), str>::to(topic).payload(&event),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
    }
    Ok(())
}

#[allow(dead_code)] // the quickstart test calls `run` and not `main`
#[tokio::main]
async fn main() -> Result<(), Error> {
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("quickstart-{unique}");
    let summary = run(&bootstrap, &topic, &format!("{topic}-billing")).await?;
    println!(
        "first message after {:.1} s; {} messages, {} orders charged once each, {} duplicates skipped",
        summary.first_message_after.as_secs_f64(),
        summary.consumed,
        summary.charged.values().filter(|&&runs| runs == 1).count(),
        summary.duplicates
    );
    Ok(())
}
