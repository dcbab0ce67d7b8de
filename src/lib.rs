//! # eventonce
//!
//! Process each event once. Kafka, like every broker, delivers at least once: after a
//! crash, a rebalance or a producer retry the same event arrives again. eventonce wraps
//! the handler — `guard.run(&envelope, handler_future)` — and a store remembers which
//! events were processed, per service, for a TTL chosen per event type.
//!
//! ```
//! use std::time::Duration;
//! use eventonce::{EventEnvelope, Guard, IdempotencyConfig, MemoryStore, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = IdempotencyConfig::builder("essay-lifecycle-service")
//!     .event_type_ttl("huleedu.essay.spellcheck.requested.v1", Duration::from_secs(3600))
//!     .build()?;
//! let guard = Guard::new(MemoryStore::new(), config);
//!
//! let payload = br#"{"event_id":"7d9c","event_type":"huleedu.essay.spellcheck.requested.v1",
//!                    "data":{"essay_id":"e-1"}}"#;
//! let envelope = EventEnvelope::from_slice(payload)?;
//! let outcome = guard.run(&envelope, async { Ok::<_, std::io::Error>("spellchecked") }).await?;
//! assert_eq!(outcome, Outcome::Processed("spellchecked"));
//! let again = guard.run(&envelope, async { Ok::<_, std::io::Error>("twice?") }).await?;
//! assert_eq!(again, Outcome::Duplicate);
//! # Ok(())
//! # }
//! ```
//!
//! Backends are picked with cargo features: `memory` (the default, [`MemoryStore`]),
//! `redis` (`RedisStore`: single server or Redis Cluster), `postgres` (`PostgresStore`, with
//! exactly-once effects through [`Guard::run_in_transaction`]), `full` for all of them;
//! `kafka` adds the Kafka consumer helper (`eventonce::kafka`, on rdkafka). The core types live in
//! [`eventonce_core`] and are re-exported here.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use eventonce_core::{
    async_trait, canonical_json, canonical_number, deterministic_hash, escape_event_type,
    python_json, python_number, python_v2_hash, redact_url, unescape_event_type, AdminStore,
    BoxError, Claim, Completion, ConfigBuilder, ConfigError, EnvelopeError, EventEnvelope,
    FailMode, Guard, GuardError, GuardStats, IdempotencyConfig, IdempotencyStore, IdentityError,
    KeyParts, KeyScheme, ListedRecord, Outcome, Record, RecordPage, RecordState, StoreError,
    DEFAULT_BATCH_CONCURRENCY, DEFAULT_EVENT_TYPE_TTLS, DEFAULT_KEY_PREFIX, DEFAULT_PROCESSING_TTL,
    DEFAULT_STORE_TIMEOUT, DEFAULT_TTL, MAX_TTL, MAX_WAIT, RUNS_TOTAL, RUN_DURATION_SECONDS,
    STORE_OPERATION_DURATION_SECONDS, TTL_AGGREGATION, TTL_ASSESSMENT, TTL_BATCH, TTL_QUICK,
};
#[cfg(feature = "memory")]
pub use eventonce_memory::{CachedStore, MemoryStore};
#[cfg(feature = "postgres")]
pub use eventonce_postgres::{PgTx, PostgresOptions, PostgresStore};
#[cfg(feature = "redis")]
pub use eventonce_redis::{RedisOptions, RedisStore};

/// Kafka consumers (feature `kafka`): messages to envelopes, [`Guard::run`], offsets
/// committed only after the final outcome, and the demo against a broker.
#[cfg(feature = "kafka")]
pub mod kafka {
    pub use eventonce_kafka::*;
}

/// The README's examples, compiled and run as doctests (with every backend and Kafka, as
/// `make test` builds them).
#[cfg(all(doctest, feature = "full", feature = "kafka"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
