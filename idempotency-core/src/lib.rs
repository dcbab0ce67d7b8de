//! The core of eventonce: configuration, event identity and keys, the
//! [`IdempotencyStore`] trait and the [`Guard`] that makes a consumer process each event
//! once.
//!
//! This crate knows nothing of Redis, moka or SQL: backends implement [`IdempotencyStore`]
//! in their own crates, and the `eventonce` crate re-exports everything with the backend a
//! feature picks. With the `conformance` feature, [`conformance`] holds the shared suite
//! every backend runs against a real server.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
mod breaker;
mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod envelope;
mod error;
mod guard;
mod guard_fast;
mod identity;
mod key;
mod redact;
mod scheme;
mod store;
mod telemetry;

pub use admin::{AdminStore, ListedRecord, RecordPage};
/// Re-exported so that a store implementation needs no extra dependency.
pub use async_trait::async_trait;
pub use config::{
    ConfigBuilder, FailMode, IdempotencyConfig, DEFAULT_BATCH_CONCURRENCY,
    DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD, DEFAULT_EVENT_TYPE_TTLS,
    DEFAULT_KEY_PREFIX, DEFAULT_PROCESSING_TTL, DEFAULT_STORE_TIMEOUT, DEFAULT_TTL, MAX_WAIT,
    TTL_AGGREGATION, TTL_ASSESSMENT, TTL_BATCH, TTL_QUICK,
};
pub use envelope::EventEnvelope;
pub use error::{BoxError, ConfigError, EnvelopeError, GuardError, IdentityError, StoreError};
pub use guard::{Guard, GuardStats, Outcome};
pub use identity::{canonical_json, canonical_number, deterministic_hash, MAX_DEPTH};
pub use key::{escape_event_type, unescape_event_type, KeyParts, MAX_EVENT_TYPE_SEGMENT};
pub use redact::redact_url;
pub use scheme::{python_json, python_number, python_v2_hash, KeyScheme};
pub use store::{
    check_arguments, check_batch, check_complete_then_claim, check_completions, check_many,
    saturating_deadline, Claim, Completion, IdempotencyStore, Record, RecordState,
    TransactionalStore, MAX_TTL,
};
pub use telemetry::{RUNS_TOTAL, RUN_DURATION_SECONDS, STORE_OPERATION_DURATION_SECONDS};
