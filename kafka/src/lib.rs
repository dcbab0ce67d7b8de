//! Kafka consumers for eventonce: turn a consumed message into an
//! [`EventEnvelope`](eventonce_core::EventEnvelope), run it through
//! [`Guard::run`](eventonce_core::Guard::run), and commit its offset only once the outcome
//! is final.
//!
//! ```no_run
//! # mod eventonce { pub use eventonce_core::*; pub mod kafka { pub use eventonce_kafka::*; } pub mod memory { pub use eventonce_memory::*; } }
//! use eventonce::{Guard, IdempotencyConfig};
//! use eventonce::kafka::{consumer_config, Delivery, KafkaGuard};
//! use eventonce::memory::MemoryStore;
//! use eventonce::kafka::rdkafka::consumer::{Consumer, StreamConsumer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let consumer: StreamConsumer = consumer_config("127.0.0.1:9092", "billing").create()?;
//! consumer.subscribe(&["orders"])?;
//! let config = IdempotencyConfig::builder("billing").build()?;
//! let kafka = KafkaGuard::new(Guard::new(MemoryStore::new(), config));
//! loop {
//!     let message = consumer.recv().await?;
//!     match kafka
//!         .process(&consumer, &message, |event| async move {
//!             println!("charging for {:?}", event.data);
//!             Ok::<_, std::io::Error>(())
//!         })
//!         .await
//!     {
//!         Ok(Delivery::Committed(_) | Delivery::CommitFailed { .. }) => {} // final
//!         Ok(Delivery::Redeliver(_)) => {} // sought back: it comes again
//!         Err(bad) => return Err(bad.into()), // or dead-letter it and commit_past
//!     }
//! }
//! # }
//! ```
//!
//! See [`KafkaGuard`] for how offsets and the guard interact, and [`envelope_from_message`]
//! for the headers. `eventonce demo --kafka BOOTSTRAP` (the `eventonce-cli` crate) runs the
//! whole flow against a broker.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod consumer;
mod message;
mod pipeline;
mod plan;
mod topic;

pub use consumer::{commit_past, consumer_config, Delivery, KafkaGuard, KafkaGuardOptions, Retry};
pub use message::{
    envelope_from_message, envelope_from_message_with, envelope_from_message_within, MessageError,
    MessagePosition, EVENT_ID_HEADER, EVENT_TYPE_HEADER,
};
pub use pipeline::BatchAnswers;
/// Re-exported so that a consumer needs no separate dependency on the same version.
pub use rdkafka;
pub use topic::{create_topic, TopicError};
