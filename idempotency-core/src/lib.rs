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
mod breaker;
pub mod config;
#[cfg(feature = "conformance")]
pub mod conformance;
mod envelope;
mod error;
mod guard;
mod identity;
mod key;
mod redact;
mod scheme;
mod store;
mod telemetry;

pub use admin::{AdminStore, ListedRecord, RecordPage};
/// Re-exported so that a store implementation needs no extra dependency.
pub use async_trait::async_trait;
pub use config::{ConfigBuilder, FailMode, IdempotencyConfig};
pub use envelope::EventEnvelope;
pub use error::{BoxError, ConfigError, EnvelopeError, GuardError, IdentityError, StoreError};
pub use guard::{Guard, GuardStats, Outcome};
pub use identity::{canonical_json, canonical_number, deterministic_hash};
pub use key::{escape_event_type, unescape_event_type, KeyParts};
pub use scheme::{python_json, python_number, python_v2_hash, KeyScheme};
pub use store::{Claim, Completion, IdempotencyStore, Record, RecordState, TransactionalStore};
pub use telemetry::{RUNS_TOTAL, RUN_DURATION_SECONDS, STORE_OPERATION_DURATION_SECONDS};
