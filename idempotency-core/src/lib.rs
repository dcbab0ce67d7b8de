//! The core of eventonce: configuration, event identity and keys, the
//! [`IdempotencyStore`] trait and the [`Guard`] that makes a consumer process each event
//! once.
//!
//! This crate knows nothing of Redis, moka or SQL: backends implement [`IdempotencyStore`]
//! in their own crates, and the `eventonce` crate re-exports everything with the backend a
//! feature picks. With the `conformance` feature, [`conformance`] holds the shared suite
//! every backend runs against a real server.
//!
//! The root holds the concepts: configuration, envelope, identity and keys, the store
//! traits, the guard and its errors, and the metric names. [`config::defaults`] holds the
//! defaults, TTL tiers and limits; [`backend`] the helpers a store implementation calls.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admin;
pub mod backend;
mod bound;
mod breaker;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod envelope;
mod error;
mod guard;
mod identify;
mod identity;
mod key;
mod redact;
mod scheme;
mod store;
mod telemetry;
mod walk;

pub use admin::{AdminStore, ListedRecord, RecordPage};
/// Re-exported so that a store implementation needs no extra dependency.
pub use async_trait::async_trait;
pub use bound::{bounded, Bounded, MAX_FIELD_CHARS};
pub use config::{ConfigBuilder, FailMode, IdempotencyConfig, StalePolicy, DISABLED_ENV};
pub use envelope::EventEnvelope;
pub use error::{BoxError, ConfigError, EnvelopeError, GuardError, IdentityError, StoreError};
pub use guard::{BatchChain, Guard, GuardStats, Outcome, StoredOutcome};
pub use identify::{Identify, Identity, IdentityRule};
pub use identity::{canonical_json, canonical_number, deterministic_hash};
pub use key::{escape_event_type, unescape_event_type, KeyParts};
pub use scheme::{python_json, python_number, python_v2_hash, KeyScheme};
pub use store::{
    Claim, Completion, IdempotencyStore, Record, RecordState, TransactionalStore,
    DEFAULT_BATCH_CHUNK,
};
pub use telemetry::{
    MAX_EVENT_TYPE_LABELS, OTHER_EVENT_TYPES, RUNS_TOTAL, RUN_DURATION_SECONDS,
    STORE_OPERATION_DURATION_SECONDS,
};

/// The first layout's paths of the names that moved to [`config::defaults`] and
/// [`backend`], kept so that code written against them still compiles. Not part of the
/// documented API: new code names the modules.
#[doc(hidden)]
pub use backend::{
    check_arguments, check_batch, check_complete_then_claim, check_completions, check_many,
    redact_url, saturating_deadline,
};
#[doc(hidden)]
pub use config::defaults::{
    DEFAULT_BATCH_CONCURRENCY, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_EVENT_TYPE_TTLS, DEFAULT_KEY_PREFIX, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_PROCESSING_TTL,
    DEFAULT_STORE_TIMEOUT, DEFAULT_TTL, MAX_DEPTH, MAX_EVENT_TYPE_SEGMENT, MAX_TTL, MAX_WAIT,
    TTL_AGGREGATION, TTL_ASSESSMENT, TTL_BATCH, TTL_QUICK,
};
