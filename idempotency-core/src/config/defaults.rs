//! The values a configuration starts from, the TTL tiers of the Python "idempotency v2"
//! decorator, and the limits [`ConfigBuilder::build`](super::ConfigBuilder::build) and the
//! stores check.
//!
//! ```
//! # mod eventonce { pub use eventonce_core::*; }
//! use eventonce::config::defaults::{DEFAULT_EVENT_TYPE_TTLS, TTL_QUICK};
//!
//! assert!(DEFAULT_EVENT_TYPE_TTLS.contains(&("huleedu.essay.spellcheck.requested.v1", TTL_QUICK)));
//! ```

use std::time::Duration;

pub use crate::identity::MAX_DEPTH;
pub use crate::key::{MAX_EVENT_TYPE_SEGMENT, MAX_NAME_BYTES, MAX_PYTHON_V2_EVENT_TYPE};

/// The longest TTL or lease a store accepts (ten years): every backend can represent it
/// (Redis `PX`, a PostgreSQL interval, an in-process `Instant`), and no record needs more.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The TTL of an event type without an entry of its own: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
/// The default key prefix, the same as the Python "idempotency v2" decorator's.
pub const DEFAULT_KEY_PREFIX: &str = "huleedu:idempotency:v2";
/// The default claim lease: how long a claim lives without a heartbeat (5 minutes).
pub const DEFAULT_PROCESSING_TTL: Duration = Duration::from_secs(300);
/// The default largest event payload parsed: 10 MiB. Larger payloads are refused before
/// any parsing ([`EnvelopeError::TooLarge`](crate::EnvelopeError::TooLarge)): a JSON
/// array of numbers costs about 22 bytes of heap per byte of input, so 10 MiB stays within
/// about 230 MB and a fraction of a second, while every message a Kafka broker with its
/// default `message.max.bytes` (1 MB), or one raised tenfold, delivers is accepted. Set
/// your own with [`ConfigBuilder::max_payload_bytes`](super::ConfigBuilder::max_payload_bytes).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 10 * 1024 * 1024;

/// The default largest result [`Guard::run_stored`](crate::Guard::run_stored) keeps in a
/// completed record: 64 KiB of JSON. Set your own with
/// [`ConfigBuilder::max_result_bytes`](super::ConfigBuilder::max_result_bytes).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024;

/// The default time limit of one store operation.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(500);

/// Consecutive store failures that open the circuit breaker (a timeout opens it at once).
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
/// How long an open circuit breaker answers at once before it probes the store again.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// The longest store timeout, in-progress wait and circuit breaker cooldown `build()`
/// accepts (one hour). TTLs and the lease may be up to [`MAX_TTL`].
pub const MAX_WAIT: Duration = Duration::from_secs(3_600);

/// TTL tier for quick, high-volume events: 1 hour.
pub const TTL_QUICK: Duration = Duration::from_secs(3_600);
/// TTL tier for batch coordination events: 12 hours.
pub const TTL_BATCH: Duration = Duration::from_secs(43_200);
/// TTL tier for assessment and command events: 24 hours.
pub const TTL_ASSESSMENT: Duration = Duration::from_secs(86_400);
/// TTL tier for long-lived aggregation events: 72 hours.
pub const TTL_AGGREGATION: Duration = Duration::from_secs(259_200);

/// How many handlers of one batch run at once by default
/// ([`ConfigBuilder::batch_concurrency`](super::ConfigBuilder::batch_concurrency)).
pub const DEFAULT_BATCH_CONCURRENCY: usize = 32;

/// The pre-configured per-event-type TTLs a builder starts from (the tiers of the Python
/// "idempotency v2" decorator).
pub const DEFAULT_EVENT_TYPE_TTLS: &[(&str, Duration)] = &[
    ("huleedu.essay.spellcheck.requested.v1", TTL_QUICK),
    ("huleedu.essay.spellcheck.completed.v1", TTL_QUICK),
    ("huleedu.file.essay.content.provisioned.v1", TTL_QUICK),
    ("huleedu.file.essay.validation.failed.v1", TTL_QUICK),
    ("huleedu.batch.essays.registered.v1", TTL_BATCH),
    ("huleedu.els.batch.essays.ready.v1", TTL_BATCH),
    ("huleedu.els.batch.phase.outcome.v1", TTL_BATCH),
    ("huleedu.cj_assessment.completed.v1", TTL_ASSESSMENT),
    (
        "huleedu.batch.cj_assessment.initiate.command.v1",
        TTL_ASSESSMENT,
    ),
    (
        "huleedu.batch.spellcheck.initiate.command.v1",
        TTL_ASSESSMENT,
    ),
    (
        "huleedu.result_aggregator.batch.completed.v1",
        TTL_AGGREGATION,
    ),
    (
        "huleedu.result_aggregator.class.summary.updated.v1",
        TTL_AGGREGATION,
    ),
];

/// How long a [`BatchChain`](crate::BatchChain)'s batch waits for the next batch's claim
/// to carry its completions, and a claim for the completions of the batch before it once
/// that batch runs its handlers: 10 ms, a few batch store calls on a loaded machine.
pub const DEFAULT_CARRY_WAIT: Duration = Duration::from_millis(10);
