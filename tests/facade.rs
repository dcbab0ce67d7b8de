//! Every public item of the core and of each backend crate can be named through the
//! facade: the core's concepts at the root, its defaults in `config::defaults`, its helpers
//! for store implementations in `backend`, and each backend as a module of its own.
#![allow(unused_imports)]

use eventonce::backend::{
    check_arguments, check_batch, check_complete_then_claim, check_completions, check_many,
    redact_url, saturating_deadline,
};
use eventonce::config::defaults::{
    DEFAULT_BATCH_CONCURRENCY, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_EVENT_TYPE_TTLS, DEFAULT_KEY_PREFIX, DEFAULT_PROCESSING_TTL, DEFAULT_STORE_TIMEOUT,
    DEFAULT_TTL, MAX_DEPTH, MAX_EVENT_TYPE_SEGMENT, MAX_TTL, MAX_WAIT, TTL_AGGREGATION,
    TTL_ASSESSMENT, TTL_BATCH, TTL_QUICK,
};
use eventonce::{
    async_trait, canonical_json, canonical_number, deterministic_hash, escape_event_type,
    python_json, python_number, python_v2_hash, unescape_event_type, AdminStore, BoxError, Claim,
    Completion, ConfigBuilder, ConfigError, EnvelopeError, EventEnvelope, FailMode, Guard,
    GuardError, GuardStats, IdempotencyConfig, IdempotencyStore, IdentityError, KeyParts,
    KeyScheme, ListedRecord, Outcome, Record, RecordPage, RecordState, StoreError,
    TransactionalStore, RUNS_TOTAL, RUN_DURATION_SECONDS, STORE_OPERATION_DURATION_SECONDS,
};

#[cfg(feature = "conformance")]
use eventonce::conformance;
#[cfg(feature = "kafka")]
use eventonce::kafka::{
    commit_past, consumer_config, create_topic, envelope_from_message, envelope_from_message_with,
    rdkafka, Delivery, KafkaGuard, KafkaGuardOptions, MessageError, MessagePosition, Retry,
    TopicError, EVENT_ID_HEADER, EVENT_TYPE_HEADER,
};
#[cfg(feature = "memory")]
use eventonce::memory::{CachedStore, MemoryStore, DEFAULT_CAPACITY};
#[cfg(feature = "postgres")]
use eventonce::postgres::{PgTx, PostgresOptions, PostgresStore, ReaperHandle};
#[cfg(feature = "redis")]
use eventonce::redis::{ExistingConnection, RedisOptions, RedisStore, DEFAULT_TIMEOUT};

#[test]
fn the_defaults_are_one_module_and_the_store_types_stay_at_the_root() {
    assert_eq!(DEFAULT_KEY_PREFIX, "huleedu:idempotency:v2");
    assert!(DEFAULT_EVENT_TYPE_TTLS.contains(&("huleedu.essay.spellcheck.requested.v1", TTL_QUICK)));
    assert!(check_arguments("k", "owner", Some(MAX_TTL)).is_ok());
    #[cfg(feature = "memory")]
    {
        let _: eventonce::MemoryStore = MemoryStore::new();
    }
}

#[test]
fn the_first_layouts_paths_still_name_the_same_items() {
    assert_eq!(eventonce::TTL_QUICK, TTL_QUICK);
    assert_eq!(eventonce::MAX_TTL, MAX_TTL);
    assert_eq!(eventonce::DEFAULT_KEY_PREFIX, DEFAULT_KEY_PREFIX);
    assert_eq!(
        eventonce_core::MAX_WAIT,
        eventonce::config::defaults::MAX_WAIT
    );
    assert_eq!(
        eventonce::redact_url("redis://u:secret@h:1"),
        eventonce::backend::redact_url("redis://u:secret@h:1")
    );
    assert!(eventonce_core::check_arguments("k", "owner", Some(MAX_TTL)).is_ok());
}
