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
//! `kafka` adds the Kafka consumer helper (`eventonce::kafka`, on rdkafka), `http` the
//! Idempotency-Key layer for HTTP services (`eventonce::http`, on tower).
//!
//! Where things are:
//! - the root: the core's concepts ([`Guard`], [`IdempotencyConfig`], [`EventEnvelope`],
//!   [`IdempotencyStore`], the errors, identity and key functions, the metric names) and
//!   each backend's store type;
//! - [`config::defaults`]: the defaults, the TTL tiers and the limits;
//! - [`backend`]: the helpers a store implementation of your own calls;
//! - `memory`, `redis`, `postgres`, `kafka`: everything each backend crate exports, one
//!   module per feature.
//!
//! The core lives in [`eventonce_core`]; every public item of it and of the backends can be
//! named from here.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The shared conformance suite (feature `conformance`): the checks every backend passes,
/// for a store of your own.
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub use eventonce_core::conformance;
/// Runs the whole conformance suite against a store factory (feature `conformance`).
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub use eventonce_core::conformance_tests;
pub use eventonce_core::{
    async_trait, backend, bounded, canonical_json, canonical_number, config, deterministic_hash,
    escape_event_type, python_json, python_number, python_v2_hash, unescape_event_type, AdminStore,
    Bounded, BoxError, Claim, Completion, ConfigBuilder, ConfigError, EnvelopeError, EventEnvelope,
    FailMode, Guard, GuardError, GuardStats, IdempotencyConfig, IdempotencyStore, Identify,
    Identity, IdentityError, IdentityRule, KeyParts, KeyScheme, ListedRecord, Outcome, Record,
    RecordPage, RecordState, StalePolicy, StoreError, StoredOutcome, TransactionalStore,
    DISABLED_ENV, MAX_EVENT_TYPE_LABELS, MAX_FIELD_CHARS, OTHER_EVENT_TYPES, RUNS_TOTAL,
    RUN_DURATION_SECONDS, STORE_OPERATION_DURATION_SECONDS,
};
/// The first layout's paths of the names that moved to [`config::defaults`] and
/// [`backend`], kept so that code written against them still compiles. Not part of the
/// documented API: new code names the modules.
#[doc(hidden)]
pub use eventonce_core::{
    check_arguments, check_batch, check_complete_then_claim, check_completions, check_many,
    redact_url, saturating_deadline, DEFAULT_BATCH_CONCURRENCY, DEFAULT_BREAKER_COOLDOWN,
    DEFAULT_BREAKER_THRESHOLD, DEFAULT_EVENT_TYPE_TTLS, DEFAULT_KEY_PREFIX, DEFAULT_PROCESSING_TTL,
    DEFAULT_STORE_TIMEOUT, DEFAULT_TTL, MAX_DEPTH, MAX_EVENT_TYPE_SEGMENT, MAX_TTL, MAX_WAIT,
    TTL_AGGREGATION, TTL_ASSESSMENT, TTL_BATCH, TTL_QUICK,
};
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use eventonce_memory::{CachedStore, MemoryStore};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use eventonce_postgres::{PgTx, PostgresOptions, PostgresStore};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use eventonce_redis::{RedisOptions, RedisStore};

/// The in-memory store (feature `memory`, the default): [`MemoryStore`] for one
/// process, [`CachedStore`] in front of a shared store. Everything `eventonce-memory`
/// exports.
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory {
    pub use eventonce_memory::*;
}

/// The Redis store (feature `redis`; `redis-tls` for `rediss://`): [`RedisStore`] on a
/// single server or a Redis Cluster. Everything `eventonce-redis` exports.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    pub use eventonce_redis::*;
}

/// The PostgreSQL store (feature `postgres`): [`PostgresStore`], its transactional mode
/// and the reaper of expired records. Everything `eventonce-postgres` exports.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use eventonce_postgres::*;
}

/// Kafka consumers (feature `kafka`): messages to envelopes, [`Guard::run`], offsets
/// committed only after the final outcome. Everything `eventonce-kafka` exports.
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka {
    pub use eventonce_kafka::*;
}

/// The Idempotency-Key layer for HTTP services (feature `http`): a `tower` layer that runs
/// each request once per key and replays the stored response to retries. Everything
/// `eventonce-http` exports.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http {
    pub use eventonce_http::*;
}

/// The README's examples, compiled and run as doctests (with every backend and Kafka, as
/// `make test` builds them).
#[cfg(all(doctest, feature = "full", feature = "kafka"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The guide's examples (docs/guide.md), compiled and run as doctests.
#[cfg(all(doctest, feature = "full", feature = "kafka"))]
#[doc = include_str!("../docs/guide.md")]
pub struct GuideDoctests;

/// The Kafka page's examples (docs/kafka.md), compiled as doctests.
#[cfg(all(doctest, feature = "full", feature = "kafka"))]
#[doc = include_str!("../docs/kafka.md")]
pub struct KafkaDoctests;
