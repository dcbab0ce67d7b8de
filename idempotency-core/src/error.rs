//! Errors, one enum per layer: configuration, envelope parsing, identity, store and guard.

use std::error::Error as StdError;
use std::time::Duration;

use crate::bound::{bounded, Bounded};

/// A boxed error from a store's client library, kept as the `source` of a [`StoreError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why [`ConfigBuilder::build`](crate::ConfigBuilder::build) refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The service name is empty.
    #[error("service name must not be empty")]
    EmptyServiceName,
    /// The service name holds a character that could move a key out of its namespace.
    #[error("service name {name:?} is invalid: {reason}")]
    InvalidServiceName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key prefix is empty.
    #[error("key prefix must not be empty")]
    EmptyKeyPrefix,
    /// The key prefix holds a character that is not allowed in it.
    #[error("key prefix {prefix:?} is invalid: {reason}")]
    InvalidKeyPrefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A duration is zero or shorter than a millisecond (stores count in milliseconds).
    #[error("{what} must be at least one millisecond, got {value:?}")]
    DurationTooShort {
        /// Which setting: `default_ttl`, `processing_ttl` (the lease), `store_timeout`, or
        /// `ttl of event type "..."`.
        what: String,
        /// The rejected value.
        value: Duration,
    },
    /// A duration is longer than its setting allows (see
    /// [`ConfigBuilder::build`](crate::ConfigBuilder::build)).
    #[error("{what} must be at most {max:?}, got {value:?}")]
    DurationTooLong {
        /// Which setting.
        what: String,
        /// The rejected value.
        value: Duration,
        /// The longest value allowed.
        max: Duration,
    },
    /// An event type given a TTL is empty.
    #[error("an event type given a TTL must not be empty")]
    EmptyEventType,
    /// `batch_concurrency` is zero: no handler of a batch could ever run.
    #[error("batch concurrency must be at least 1")]
    ZeroBatchConcurrency,
    /// An identity rule cannot identify anything (a `Fields` rule without fields, or with
    /// one that is not a JSON Pointer).
    #[error("invalid identity rule: {reason}")]
    InvalidIdentityRule {
        /// What is wrong.
        reason: String,
    },
    /// An environment variable the configuration reads holds a value it does not accept.
    #[error("environment variable {variable}={value:?} is invalid: expected {expected}")]
    InvalidEnvironment {
        /// The variable.
        variable: &'static str,
        /// Its value (at most 64 characters of it).
        value: String,
        /// The values it accepts.
        expected: &'static str,
    },
    /// `max_payload_bytes` is zero: every payload would be refused.
    #[error("max_payload_bytes must be at least 1")]
    ZeroPayloadLimit,
}

/// Why [`EventEnvelope::from_slice`](crate::EventEnvelope::from_slice) could not read a payload.
///
/// Each variant names the problem so that a consumer can log it and route the message to a
/// dead-letter topic; nothing is skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The payload is longer than the limit (by default
    /// [`DEFAULT_MAX_PAYLOAD_BYTES`](crate::config::defaults::DEFAULT_MAX_PAYLOAD_BYTES),
    /// else the configuration's
    /// [`max_payload_bytes`](crate::ConfigBuilder::max_payload_bytes)): refused before
    /// any parsing, so it costs neither time nor memory. Dead-letter it.
    #[error("event payload is {size} bytes, over the limit of {limit} bytes (max_payload_bytes); not parsed")]
    TooLarge {
        /// The payload's length in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload has no bytes at all (a Kafka tombstone carries no value, too).
    #[error("event payload is empty")]
    Empty,
    /// The payload is not valid UTF-8.
    #[error("event payload is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The payload is not valid JSON.
    #[error("event payload is not valid JSON: {message} at line {line}, column {column}")]
    InvalidJson {
        /// What the parser reported.
        message: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The payload is JSON, but not an object.
    #[error("event payload must be a JSON object, found {found}")]
    NotAnObject {
        /// The JSON kind found instead: `array`, `string`, `number`, `boolean` or `null`.
        found: &'static str,
    },
    /// A required field is missing (or `null`).
    #[error("event field `{field}` is missing")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("event field `{field}` must be {expected}, found {found}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// The JSON type the field must have.
        expected: &'static str,
        /// The JSON kind found instead.
        found: &'static str,
    },
    /// A required string field is empty.
    #[error("event field `{field}` must not be empty")]
    EmptyField {
        /// The field's name.
        field: &'static str,
    },
    /// The payload is structurally wrong in another way (a field given twice, ...).
    #[error("event payload is malformed: {}", Bounded(.message))]
    Malformed {
        /// What the parser reported.
        message: String,
    },
}

/// Why an event's identity (its deterministic hash and key) could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The event has no `event_id` and no `data`: nothing identifies it.
    #[error(
        "event of type {:?} has neither an event_id nor data: it cannot be identified",
        bounded(.event_type)
    )]
    Unidentifiable {
        /// The event's type.
        event_type: String,
    },
    /// The event's type is empty.
    #[error("event type must not be empty")]
    EmptyEventType,
    /// A number in the event's data is not a JSON number literal (a value built in code
    /// from something other than JSON text).
    #[error("event data holds {literal:?}, which is not a JSON number")]
    BadNumber {
        /// The number as written (at most 64 characters of it).
        literal: String,
    },
    /// A number in the event's data has an exponent beyond 2^48 in magnitude: its exact
    /// value cannot be written canonically.
    #[error("event data holds the number {literal:?}, whose exponent is out of range")]
    NumberOutOfRange {
        /// The number as written (at most 64 characters of it).
        literal: String,
    },
    /// The event's data is nested deeper than the canonical encoder accepts.
    #[error("event data is nested deeper than {limit} levels")]
    TooDeep {
        /// The nesting limit.
        limit: usize,
    },
    /// Under [`KeyScheme::PythonV2`](crate::KeyScheme::PythonV2), the event type holds a
    /// character that the decorator's plain mapping (only `.` replaced by `_`) would write
    /// into the key unescaped, moving the key out of its namespace: `:`, a glob or
    /// hash-tag character, whitespace or a control character. The event is refused and
    /// nothing is written.
    #[error(
        "event type {event_type:?} cannot be keyed under the python-v2 key scheme: {reason}, \
         which the decorator's key format writes unescaped, so the key would leave its \
         namespace; nothing was written"
    )]
    EventTypeOutsideNamespace {
        /// The event type (at most 200 characters of it).
        event_type: String,
        /// Which character is the problem.
        reason: &'static str,
    },
    /// Under [`KeyScheme::PythonV2`](crate::KeyScheme::PythonV2), the event type is longer
    /// than the scheme keys: that scheme writes the type's bytes into the key unshortened,
    /// and a longer key would be refused by a store (see
    /// [`MAX_PYTHON_V2_EVENT_TYPE`](crate::config::defaults::MAX_PYTHON_V2_EVENT_TYPE)).
    /// The event is refused and nothing is written.
    #[error(
        "event type is {length} bytes long, more than the {limit} the python-v2 key scheme \
         keys (it writes the type unshortened into the key); nothing was written"
    )]
    EventTypeTooLong {
        /// The event type's length in bytes.
        length: usize,
        /// The longest type the scheme keys.
        limit: usize,
    },
    /// The store refused this event's record because of its data, not because of its own
    /// health: a key or value longer than it holds, a record of another kind at the key
    /// (Redis `WRONGTYPE`), a value it cannot read, a data exception (PostgreSQL SQLSTATE
    /// class 22, 54). A redelivery meets the same refusal, so the event cannot be
    /// protected: its handler did not run (not even with `FailMode::Open`), and the
    /// refusal never counts toward the circuit breaker.
    #[error("the store refused the record of key {key:?}: {reason}; the handler did not run")]
    StoreRefused {
        /// The key (at most 300 characters of it).
        key: String,
        /// The store's error (at most 300 characters of it).
        reason: String,
    },
    /// The identity rule names a field the event does not have (or has as `null`), or an
    /// [`Identity`](crate::Identity) has an empty id: nothing to make its key from.
    #[error("event of type {event_type:?} has no {field}, which its identity rule keys it by")]
    MissingField {
        /// The event's type (at most 200 characters of it).
        event_type: String,
        /// The field: a JSON Pointer such as `/data/order_id`, `/event_id`, or `id`.
        field: String,
    },
    /// The event's `event_timestamp` is not an RFC 3339 time, and a maximum age is
    /// configured for its type: its age cannot be told.
    #[error(
        "event of type {event_type:?} has event_timestamp {timestamp:?}, which is not an \
         RFC 3339 time; its age cannot be checked against max_event_age"
    )]
    UnreadableTimestamp {
        /// The event's type (at most 200 characters of it).
        event_type: String,
        /// The timestamp (at most 64 characters of it).
        timestamp: String,
    },
}

/// At most `max` characters of `text`, `…` marking a cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// A store operation failed. The guard turns this into `Outcome::Unprotected` with
/// `FailMode::Open` and into `GuardError::Store` with `FailMode::Closed`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or answered with an error.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// A description of the failure (never credentials).
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation did not finish within the configured store timeout.
    #[error("store operation `{operation}` timed out after {timeout:?}")]
    Timeout {
        /// The trait method that timed out.
        operation: &'static str,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The circuit breaker is open after repeated failures: the call was not made.
    #[error("store circuit breaker open after repeated failures; next probe in {retry_in:?}")]
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_in: Duration,
    },
    /// The store holds a value this library cannot read.
    #[error("store holds an unreadable value at key {:?}: {}", bounded(.key), Bounded(.detail))]
    InvalidData {
        /// The key.
        key: String,
        /// What is wrong with the value.
        detail: String,
    },
    /// The store refused the operation because of the data it was given or found at a key,
    /// not because of its own health: a key or value longer than it holds, a record of
    /// another kind at the key (Redis `WRONGTYPE`), a data exception or a program limit
    /// (PostgreSQL SQLSTATE classes 22 and 54). Not an outage (see
    /// [`is_outage`](StoreError::is_outage)): the guard answers the event
    /// [`GuardError::InvalidEvent`] and the circuit breaker does not count it.
    #[error("store refused the data: {message}")]
    Rejected {
        /// What the store said (never credentials).
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The caller passed an argument the store cannot accept (an empty key or owner, a zero
    /// lease).
    #[error("invalid store argument: {0}")]
    InvalidArgument(String),
    /// A batch call (`complete_many`, `release_many`, `extend_many`) reached only part of
    /// the store, as on a Redis Cluster with one failing shard: `answers[i]` is the answer
    /// for the call's i-th key, `None` where that key's call failed with `error`.
    #[error("{failed} of {total} keys of the batch failed: {error}", failed = answers.iter().filter(|a| a.is_none()).count(), total = answers.len())]
    Partial {
        /// Each key's answer, in the call's order; `None` where it failed.
        answers: Vec<Option<bool>>,
        /// The first failure.
        error: Box<StoreError>,
    },
}

impl StoreError {
    /// The same error again, for each event of a batch that one failed call answered.
    /// A client error's source is kept by the first copy only; the others carry its message.
    pub(crate) fn again(&self) -> StoreError {
        match self {
            StoreError::Unavailable { message, .. } => StoreError::Unavailable {
                message: message.clone(),
                source: None,
            },
            StoreError::Timeout { operation, timeout } => StoreError::Timeout {
                operation,
                timeout: *timeout,
            },
            StoreError::CircuitOpen { retry_in } => StoreError::CircuitOpen {
                retry_in: *retry_in,
            },
            StoreError::InvalidData { key, detail } => StoreError::InvalidData {
                key: key.clone(),
                detail: detail.clone(),
            },
            StoreError::InvalidArgument(m) => StoreError::InvalidArgument(m.clone()),
            StoreError::Rejected { message, .. } => StoreError::Rejected {
                message: message.clone(),
                source: None,
            },
            StoreError::Partial { answers, error } => StoreError::Partial {
                answers: answers.clone(),
                error: Box::new(error.again()),
            },
        }
    }

    /// Whether this error says the store is unreachable or out of capacity (an outage):
    /// [`Unavailable`](StoreError::Unavailable), [`Timeout`](StoreError::Timeout),
    /// [`CircuitOpen`](StoreError::CircuitOpen), or a [`Partial`](StoreError::Partial)
    /// failure of that kind. Only outages count toward the circuit breaker and let
    /// `FailMode::Open` run a handler unprotected; every other error is the event's own
    /// (its data, or the record at its key) and answers it
    /// [`GuardError::InvalidEvent`].
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::StoreError;
    /// let refused = StoreError::Rejected { message: "key too long".into(), source: None };
    /// assert!(!refused.is_outage());
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// assert!(StoreError::unavailable(io).is_outage());
    /// ```
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Unavailable { .. }
            | StoreError::Timeout { .. }
            | StoreError::CircuitOpen { .. } => true,
            StoreError::Partial { error, .. } => error.is_outage(),
            StoreError::InvalidData { .. }
            | StoreError::Rejected { .. }
            | StoreError::InvalidArgument(_) => false,
        }
    }

    /// Each key's answer of a batch call of `n` keys that returned this error: all `None`,
    /// except the keys a [`StoreError::Partial`] has answers for.
    pub fn answers(&self, n: usize) -> Vec<Option<bool>> {
        match self {
            StoreError::Partial { answers, .. } if answers.len() == n => answers.clone(),
            _ => vec![None; n],
        }
    }

    /// Wraps a client error as [`StoreError::Unavailable`].
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::StoreError;
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    /// let err = StoreError::unavailable(io);
    /// assert!(err.to_string().contains("refused"));
    /// ```
    pub fn unavailable<E>(source: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        StoreError::Unavailable {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// Why [`Guard::run`](crate::Guard::run) did not return an outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError<E> {
    /// The handler returned an error. Its claim was released, so a redelivery runs it again;
    /// the guard never runs it a second time by itself.
    #[error("event handler failed: {0}")]
    Handler(#[source] E),
    /// Another consumer holds a live claim on this event: retry later (do not commit the
    /// offset).
    #[error("event is being processed by another consumer")]
    InProgress,
    /// The store failed and the configuration is `FailMode::Closed`: the handler did not run.
    #[error("idempotency store failed: {0}")]
    Store(#[source] StoreError),
    /// The event cannot be identified, or the store refused its record
    /// ([`IdentityError::StoreRefused`]), so it cannot be protected; the handler did not
    /// run. Route it to a dead-letter topic: a redelivery meets the same refusal.
    #[error("event cannot be identified: {0}")]
    InvalidEvent(#[source] IdentityError),
    /// The event's key is recorded with another payload fingerprint: the same id (or
    /// business key) re-sent with changed data, a producer bug or a replay after a schema
    /// change. The handler was not polled and the record is untouched. Final: redelivering
    /// it gives the same answer; dead-letter it. Answered while the first claim is live
    /// too, as soon as both fingerprints are known.
    #[error(
        "event {key} was recorded with payload fingerprint {stored}, this delivery has \
         {given}: the same identity with other data; the handler did not run"
    )]
    Conflict {
        /// The key (at most 200 characters of it).
        key: String,
        /// The first 16 hex digits of the recorded fingerprint.
        stored: String,
        /// The first 16 hex digits of this delivery's fingerprint.
        given: String,
    },
    /// The event is older than its maximum age (`ConfigBuilder::max_event_age`) and the
    /// policy is `StalePolicy::Skip` (`skipped: true`: commit it) or `StalePolicy::Refuse`
    /// (`skipped: false`: dead-letter it). The handler was not polled. Final.
    #[error(
        "event of type {event_type:?} is {age:?} old, past its maximum age {max_age:?}: {}",
        if *skipped { "skipped" } else { "refused" }
    )]
    Stale {
        /// The event's type (at most 200 characters of it).
        event_type: String,
        /// How old it is.
        age: std::time::Duration,
        /// Its maximum age.
        max_age: std::time::Duration,
        /// Skipped (`StalePolicy::Skip`) rather than refused.
        skipped: bool,
    },
}

impl<E> GuardError<E> {
    /// The handler's error, if this is [`GuardError::Handler`].
    pub fn into_handler_error(self) -> Option<E> {
        match self {
            GuardError::Handler(e) => Some(e),
            _ => None,
        }
    }

    /// Whether redelivering the event later can succeed (the handler failed, another
    /// consumer holds it, or the store failed); `false` for an event that cannot be
    /// identified or whose record the store refused, a conflict and a stale event, which
    /// are final.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            GuardError::InvalidEvent(_) | GuardError::Conflict { .. } | GuardError::Stale { .. }
        )
    }
}
