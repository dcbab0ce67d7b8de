//! Configuration: service namespace, TTL per event type, lease, failure mode.
//!
//! Built once through [`IdempotencyConfig::builder`], validated by
//! [`ConfigBuilder::build`], immutable afterwards. [`defaults`] holds the values a builder
//! starts from (the TTL tiers among them) and the limits `build()` checks.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub mod defaults;

use self::defaults::{
    DEFAULT_BATCH_CONCURRENCY, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_EVENT_TYPE_TTLS, DEFAULT_KEY_PREFIX, DEFAULT_PROCESSING_TTL, DEFAULT_STORE_TIMEOUT,
    DEFAULT_TTL, MAX_TTL, MAX_WAIT,
};
use crate::envelope::EventEnvelope;
use crate::error::{ConfigError, IdentityError};
use crate::identify::IdentityRule;
use crate::key;
use crate::scheme::KeyScheme;

/// What the guard does when the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Run the handler without protection and report `Outcome::Unprotected` (the default):
    /// availability first, a duplicate is possible during the outage.
    #[default]
    Open,
    /// Refuse to run the handler and return `GuardError::Store`: the consumer retries later.
    Closed,
}

/// A validated, immutable configuration. Cheap to clone (it holds an `Arc`).
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use std::time::Duration;
/// use eventonce::IdempotencyConfig;
///
/// let config = IdempotencyConfig::builder("essay-lifecycle-service")
///     .event_type_ttl("huleedu.essay.spellcheck.requested.v1", Duration::from_secs(3600))
///     .default_ttl(Duration::from_secs(43200))
///     .build()?;
/// assert_eq!(config.ttl_for_event_type("unknown.v1"), Duration::from_secs(43200));
/// assert_eq!(
///     config.generate_key("huleedu.essay.spellcheck.requested.v1", "abc123"),
///     "huleedu:idempotency:v2:essay-lifecycle-service:huleedu_essay_spellcheck_requested_v1:abc123"
/// );
/// # Ok::<(), eventonce::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct IdempotencyConfig {
    inner: Arc<ConfigInner>,
}

#[derive(Debug, Clone)]
struct ConfigInner {
    /// Shared, so a metric label of it is a reference count, not a copy.
    service_name: Arc<str>,
    event_type_ttls: HashMap<String, Duration>,
    default_ttl: Duration,
    key_prefix: String,
    debug_logging: bool,
    lease: Duration,
    on_store_error: FailMode,
    store_timeout: Duration,
    in_progress_wait: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    batch_concurrency: usize,
    deferred_completion: Option<Duration>,
    key_scheme: KeyScheme,
    disabled: bool,
    max_payload_bytes: usize,
    max_result_bytes: usize,
    identity_rule: IdentityRule,
    identity_rules: HashMap<String, IdentityRule>,
    max_event_age: Option<Duration>,
    max_event_ages: HashMap<String, Duration>,
    stale_events: StalePolicy,
}

/// What the guard does with an event older than its maximum age
/// ([`ConfigBuilder::max_event_age`]): one whose completed record may have expired, so
/// that a replay (a consumer-group reset, a dead-letter replay) would run it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StalePolicy {
    /// Run it as any other event; counted (`GuardStats::stale`) and logged at WARN.
    Process,
    /// Do not run it: [`GuardError::Stale`](crate::GuardError::Stale) with `skipped:
    /// true`, final (commit it: nothing is lost that the window could still protect).
    Skip,
    /// The default: do not run it: [`GuardError::Stale`](crate::GuardError::Stale) with
    /// `skipped: false`, final, for the caller to dead-letter and look at.
    #[default]
    Refuse,
}

impl fmt::Debug for IdempotencyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl IdempotencyConfig {
    /// Starts a configuration for `service_name`, with the defaults and the
    /// [pre-configured TTL tiers](DEFAULT_EVENT_TYPE_TTLS).
    pub fn builder(service_name: impl Into<String>) -> ConfigBuilder {
        Self::builder_inner(service_name.into())
    }

    /// Starts a configuration for `service_name` in which every event type gets the one
    /// TTL `ttl`: the per-event-type table starts empty (not with the
    /// [pre-configured tiers](DEFAULT_EVENT_TYPE_TTLS)) and the default TTL is `ttl`.
    ///
    /// This is what the Python decorator's backward-compatible
    /// `idempotent_consumer(redis_client, ttl_seconds=..., service_name=...)` was meant to
    /// do. That function kept the default tiers in force, so its `ttl_seconds` reached only
    /// event types missing from them; to reproduce that behaviour exactly (to share TTLs
    /// with such a Python consumer), use `builder(service).default_ttl(ttl)` instead.
    /// `.event_type_ttl(..)` still adds exceptions.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use std::time::Duration;
    /// use eventonce::IdempotencyConfig;
    /// let config = IdempotencyConfig::builder_with_ttl("billing", Duration::from_secs(60)).build()?;
    /// assert_eq!(config.ttl_for_event_type("huleedu.essay.spellcheck.completed.v1"), Duration::from_secs(60));
    /// assert_eq!(config.ttl_for_event_type("anything.else.v1"), Duration::from_secs(60));
    /// assert!(config.event_type_ttls().is_empty());
    /// # Ok::<(), eventonce::ConfigError>(())
    /// ```
    pub fn builder_with_ttl(service_name: impl Into<String>, ttl: Duration) -> ConfigBuilder {
        let mut builder = Self::builder_inner(service_name.into());
        builder.0.event_type_ttls.clear();
        builder.0.default_ttl = ttl;
        builder
    }

    fn builder_inner(service_name: String) -> ConfigBuilder {
        ConfigBuilder(ConfigInner {
            service_name: service_name.into(),
            event_type_ttls: DEFAULT_EVENT_TYPE_TTLS
                .iter()
                .map(|(t, d)| ((*t).to_owned(), *d))
                .collect(),
            default_ttl: DEFAULT_TTL,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            debug_logging: false,
            lease: DEFAULT_PROCESSING_TTL,
            on_store_error: FailMode::Open,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            in_progress_wait: Duration::ZERO,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            batch_concurrency: DEFAULT_BATCH_CONCURRENCY,
            max_payload_bytes: defaults::DEFAULT_MAX_PAYLOAD_BYTES,
            max_result_bytes: defaults::DEFAULT_MAX_RESULT_BYTES,
            deferred_completion: None,
            key_scheme: KeyScheme::Eventonce,
            disabled: false,
            identity_rule: IdentityRule::Content,
            identity_rules: HashMap::new(),
            max_event_age: None,
            max_event_ages: HashMap::new(),
            stale_events: StalePolicy::Refuse,
        })
    }

    /// The service whose keys this configuration namespaces.
    pub fn service_name(&self) -> &str {
        &self.inner.service_name
    }

    /// The service's name, shared (for metric labels).
    #[cfg(feature = "metrics")]
    pub(crate) fn service_label(&self) -> metrics::SharedString {
        metrics::SharedString::from_shared(Arc::clone(&self.inner.service_name))
    }

    /// The per-event-type TTLs.
    pub fn event_type_ttls(&self) -> &HashMap<String, Duration> {
        &self.inner.event_type_ttls
    }

    /// The TTL of event types without an entry of their own.
    pub fn default_ttl(&self) -> Duration {
        self.inner.default_ttl
    }

    /// The prefix every key starts with.
    pub fn key_prefix(&self) -> &str {
        &self.inner.key_prefix
    }

    /// Whether the guard logs its routine decisions at DEBUG.
    pub fn debug_logging(&self) -> bool {
        self.inner.debug_logging
    }

    /// The claim lease: a claim not renewed within it expires, so a crashed consumer's event
    /// is processed again after at most this long.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// The claim lease, under its former name.
    #[deprecated(note = "renamed to `lease`, the store trait's word for it")]
    pub fn processing_ttl(&self) -> Duration {
        self.lease()
    }

    /// What the guard does when the store fails.
    pub fn on_store_error(&self) -> FailMode {
        self.inner.on_store_error
    }

    /// The time limit of one store operation.
    pub fn store_timeout(&self) -> Duration {
        self.inner.store_timeout
    }

    /// How long `Guard::run` waits for another consumer's claim to finish before it returns
    /// `GuardError::InProgress` (zero: not at all).
    pub fn in_progress_wait(&self) -> Duration {
        self.inner.in_progress_wait
    }

    /// The circuit breaker's settings: consecutive failures that open it (0: disabled) and
    /// its cool-down.
    pub fn circuit_breaker(&self) -> (u32, Duration) {
        (self.inner.breaker_threshold, self.inner.breaker_cooldown)
    }

    /// How many handlers of one batch run at once.
    pub fn batch_concurrency(&self) -> usize {
        self.inner.batch_concurrency
    }

    /// The longest a completion waits when completion is deferred; `None` when it is not.
    pub fn deferred_completion(&self) -> Option<Duration> {
        self.inner.deferred_completion
    }

    /// The TTL of a completed record of `event_type`: its own entry, or the default TTL.
    pub fn ttl_for_event_type(&self, event_type: &str) -> Duration {
        self.inner
            .event_type_ttls
            .get(event_type)
            .copied()
            .unwrap_or(self.inner.default_ttl)
    }

    /// How keys are computed (default [`KeyScheme::Eventonce`]).
    pub fn key_scheme(&self) -> KeyScheme {
        self.inner.key_scheme
    }

    /// The identity rule of envelopes of `event_type`: its own
    /// ([`ConfigBuilder::event_type_identity_rule`]) or the general one
    /// ([`ConfigBuilder::identity_rule`], default [`IdentityRule::Content`]).
    pub fn identity_rule_for(&self, event_type: &str) -> &IdentityRule {
        self.inner
            .identity_rules
            .get(event_type)
            .unwrap_or(&self.inner.identity_rule)
    }

    /// The maximum age of events of `event_type`, when one is configured
    /// ([`ConfigBuilder::max_event_age`], [`ConfigBuilder::event_type_max_age`]).
    pub fn max_event_age_for(&self, event_type: &str) -> Option<Duration> {
        self.inner
            .max_event_ages
            .get(event_type)
            .copied()
            .or(self.inner.max_event_age)
    }

    /// What happens to an event older than its maximum age.
    pub fn stale_events(&self) -> StalePolicy {
        self.inner.stale_events
    }

    /// Whether the guard is switched off ([`ConfigBuilder::disabled`] or
    /// `EVENTONCE_DISABLED`): every handler runs unprotected and the store is never called.
    pub fn disabled(&self) -> bool {
        self.inner.disabled
    }

    /// The hash of `envelope` under this configuration's [key scheme](Self::key_scheme).
    ///
    /// # Errors
    ///
    /// The errors of [`EventEnvelope::hash_with`]: an empty event type, an event with
    /// neither an id nor data, or data that cannot be encoded.
    pub fn event_hash(&self, envelope: &EventEnvelope) -> Result<String, IdentityError> {
        envelope.hash_with(self.inner.key_scheme)
    }

    /// The largest event payload parsed, in bytes (see
    /// [`ConfigBuilder::max_payload_bytes`]).
    pub fn max_payload_bytes(&self) -> usize {
        self.inner.max_payload_bytes
    }

    /// The largest stored result, in bytes (see [`ConfigBuilder::max_result_bytes`]).
    pub fn max_result_bytes(&self) -> usize {
        self.inner.max_result_bytes
    }

    /// Parses an event payload as [`EventEnvelope::from_slice`] does, refusing one over
    /// [`max_payload_bytes`](Self::max_payload_bytes) before parsing.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::TooLarge`](crate::EnvelopeError::TooLarge) for a payload over the
    /// limit; otherwise the errors of [`EventEnvelope::from_slice`].
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{EnvelopeError, IdempotencyConfig};
    /// let config = IdempotencyConfig::builder("billing").max_payload_bytes(64).build()?;
    /// assert!(config.parse_envelope(br#"{"event_type":"a.v1","data":1}"#).is_ok());
    /// let big = format!(r#"{{"event_type":"a.v1","data":"{}"}}"#, "x".repeat(64));
    /// assert!(matches!(config.parse_envelope(big.as_bytes()), Err(EnvelopeError::TooLarge { .. })));
    /// # Ok::<(), eventonce::ConfigError>(())
    /// ```
    pub fn parse_envelope(&self, bytes: &[u8]) -> Result<EventEnvelope, crate::EnvelopeError> {
        EventEnvelope::from_slice_within(bytes, self.inner.max_payload_bytes)
    }

    /// The store key of `envelope` under this configuration's [key scheme](Self::key_scheme):
    /// what [`Guard::key_for`](crate::Guard::key_for) returns and the guard claims.
    ///
    /// # Errors
    ///
    /// The errors of [`event_hash`](Self::event_hash), then those of
    /// [`try_generate_key`](Self::try_generate_key) for the envelope's event type.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{EventEnvelope, IdempotencyConfig, IdentityError, KeyScheme};
    /// let config = IdempotencyConfig::builder("billing").key_scheme(KeyScheme::PythonV2).build()?;
    /// let refused = EventEnvelope::new("orders:*", serde_json::json!({"n": 1}));
    /// assert!(matches!(
    ///     config.event_key(&refused),
    ///     Err(IdentityError::EventTypeOutsideNamespace { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn event_key(&self, envelope: &EventEnvelope) -> Result<String, IdentityError> {
        let hash = self.event_hash(envelope)?;
        self.try_generate_key(&envelope.event_type, &hash)
    }

    /// The store key of an event of `event_type` with hash `deterministic_hash` under this
    /// configuration's [key scheme](Self::key_scheme), or why the event type cannot be
    /// keyed in it ([`IdentityError::EventTypeOutsideNamespace`] under
    /// [`KeyScheme::PythonV2`], [`IdentityError::EmptyEventType`]).
    ///
    /// # Errors
    ///
    /// - [`IdentityError::EmptyEventType`] if `event_type` is empty.
    /// - [`IdentityError::EventTypeOutsideNamespace`] under [`KeyScheme::PythonV2`] if
    ///   `event_type` holds a character that scheme refuses (see
    ///   [`KeyScheme::event_type_segment`]).
    pub fn try_generate_key(
        &self,
        event_type: &str,
        deterministic_hash: &str,
    ) -> Result<String, IdentityError> {
        if matches!(self.inner.key_scheme, KeyScheme::Eventonce) && !event_type.is_empty() {
            // The segment escaped straight into the key: one allocation.
            return Ok(key::build_key(
                &self.inner.key_prefix,
                &self.inner.service_name,
                event_type,
                deterministic_hash,
            ));
        }
        let segment = self.inner.key_scheme.event_type_segment(event_type)?;
        Ok(key::assemble(
            &self.inner.key_prefix,
            &self.inner.service_name,
            &segment,
            deterministic_hash,
        ))
    }

    /// The store key of an event: `{prefix}:{service}:{event type}:{hash}`.
    ///
    /// With [`KeyScheme::Eventonce`] the event type has `.` replaced by `_` and every
    /// character that could leave the namespace escaped (see
    /// [`escape_event_type`](crate::escape_event_type)). With [`KeyScheme::PythonV2`] only
    /// `.` is replaced, as the decorator does; an event type that scheme refuses gets the
    /// escaped segment of the default scheme here (a key the decorator never writes), so
    /// the key stays in its namespace. The guard, the Kafka helper and the admin commands
    /// refuse such events instead: use [`try_generate_key`](Self::try_generate_key) or
    /// [`event_key`](Self::event_key) to get the refusal.
    pub fn generate_key(&self, event_type: &str, deterministic_hash: &str) -> String {
        self.try_generate_key(event_type, deterministic_hash)
            .unwrap_or_else(|_| {
                key::build_key(
                    &self.inner.key_prefix,
                    &self.inner.service_name,
                    event_type,
                    deterministic_hash,
                )
            })
    }

    /// The prefix shared by every key of this service: `{prefix}:{service}:`.
    pub fn service_namespace(&self) -> String {
        format!("{}:{}:", self.inner.key_prefix, self.inner.service_name)
    }
}

/// Builds an [`IdempotencyConfig`]; see [`IdempotencyConfig::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConfigBuilder(ConfigInner);

impl ConfigBuilder {
    /// Sets the TTL of one event type, on top of the others.
    pub fn event_type_ttl(mut self, event_type: impl Into<String>, ttl: Duration) -> Self {
        self.0.event_type_ttls.insert(event_type.into(), ttl);
        self
    }

    /// Replaces the whole per-event-type map (the pre-configured tiers included); an empty
    /// one leaves only the default TTL.
    pub fn event_type_ttls<I, S>(mut self, ttls: I) -> Self
    where
        I: IntoIterator<Item = (S, Duration)>,
        S: Into<String>,
    {
        self.0.event_type_ttls = ttls.into_iter().map(|(t, d)| (t.into(), d)).collect();
        self
    }

    /// Sets the TTL of event types without an entry of their own (default 86,400 s).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.0.default_ttl = ttl;
        self
    }

    /// Sets the key prefix (default `huleedu:idempotency:v2`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.0.key_prefix = prefix.into();
        self
    }

    /// Logs every routine decision at DEBUG (default off).
    pub fn debug_logging(mut self, enabled: bool) -> Self {
        self.0.debug_logging = enabled;
        self
    }

    /// Sets the claim lease (default 300 s). A live handler renews it every third of it.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.0.lease = lease;
        self
    }

    /// Sets the claim lease, under its former name.
    #[deprecated(note = "renamed to `lease`, the store trait's word for it")]
    pub fn processing_ttl(self, lease: Duration) -> Self {
        self.lease(lease)
    }

    /// Sets what happens when the store fails (default [`FailMode::Open`]).
    pub fn on_store_error(mut self, mode: FailMode) -> Self {
        self.0.on_store_error = mode;
        self
    }

    /// Sets the time limit of one store operation (default 500 ms): an outage costs at most
    /// this per call.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.0.store_timeout = timeout;
        self
    }

    /// When another consumer holds the claim, wait up to `wait` for its outcome before
    /// returning `GuardError::InProgress` (default zero: return at once).
    pub fn in_progress_wait(mut self, wait: Duration) -> Self {
        self.0.in_progress_wait = wait;
        self
    }

    /// Sets the circuit breaker (default 3 failures, 1 s): after `failures` consecutive
    /// store failures, or one timeout, the guard stops calling the store and treats every
    /// call as failed at once for `cooldown`, then lets one probe through. `failures = 0`
    /// disables it.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.0.breaker_threshold = failures;
        self.0.breaker_cooldown = cooldown;
        self
    }

    /// Sets how many handlers of one [`Guard::run_batch`](crate::Guard::run_batch) call
    /// run at once (default 32, at least 1).
    pub fn batch_concurrency(mut self, handlers: usize) -> Self {
        self.0.batch_concurrency = handlers;
        self
    }

    /// Defers completion (off by default): after a handler succeeds, `run` returns
    /// `Processed` at once, and the completion travels with the guard's next claim in the
    /// same round trip, or is flushed after at most `max_delay`, whichever comes first
    /// (and no later than the claim's next renewal would have been due, a third of the
    /// lease after its last one, so that two thirds of the lease are left to retry a write
    /// that fails). New events then cost one round trip instead of two.
    ///
    /// The cost: until the completion is written, the event's record is still the claim.
    /// If the process dies in that window (at most `max_delay`), a redelivery of the event
    /// finds the claim, reports it in progress until the lease expires, and then processes
    /// it again. The event is never lost; it may be processed twice. A redelivery to the
    /// same guard inside the window is sent after the completion, so it is a duplicate; one
    /// reaching another consumer inside the window is answered `InProgress` (redelivered
    /// later, then a duplicate).
    /// Call [`Guard::flush`](crate::Guard::flush) before shutting down.
    pub fn defer_completion(mut self, max_delay: Duration) -> Self {
        self.0.deferred_completion = Some(max_delay);
        self
    }

    /// Sets the largest event payload, in bytes, that
    /// [`IdempotencyConfig::parse_envelope`] (and the Kafka helper) parses (default
    /// [`DEFAULT_MAX_PAYLOAD_BYTES`](defaults::DEFAULT_MAX_PAYLOAD_BYTES), 10 MiB; at
    /// least 1). A larger payload is refused before parsing with
    /// [`EnvelopeError::TooLarge`](crate::EnvelopeError::TooLarge): route it to a
    /// dead-letter topic, as an event the guard answers `InvalidEvent`.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.0.max_payload_bytes = bytes;
        self
    }

    /// Sets the largest result, in bytes of its JSON, that
    /// [`Guard::run_stored`](crate::Guard::run_stored) keeps in the completed record
    /// (default [`DEFAULT_MAX_RESULT_BYTES`](defaults::DEFAULT_MAX_RESULT_BYTES), 64 KiB).
    /// A larger result is not an error: the event is completed without a result (logged as
    /// `result_too_large` and counted in
    /// [`GuardStats::results_dropped`](crate::GuardStats::results_dropped)), and a duplicate
    /// then answers [`StoredOutcome::Duplicate`](crate::StoredOutcome::Duplicate). Zero
    /// keeps no result at all.
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.0.max_result_bytes = bytes;
        self
    }

    /// Sets how keys are computed (default [`KeyScheme::Eventonce`]).
    /// [`KeyScheme::PythonV2`] gives the Python "idempotency v2" decorator's keys byte for
    /// byte, so that Python and Rust consumers share their records on one Redis; see the
    /// scheme's documentation for what it covers.
    pub fn key_scheme(mut self, scheme: KeyScheme) -> Self {
        self.0.key_scheme = scheme;
        self
    }

    /// How envelopes are identified (default [`IdentityRule::Content`], today's keys): see
    /// [`IdentityRule`]. Under `EventId` and `Fields` the data is the payload's
    /// fingerprint, and a changed payload under the same key is a
    /// [`GuardError::Conflict`](crate::GuardError::Conflict).
    pub fn identity_rule(mut self, rule: IdentityRule) -> Self {
        self.0.identity_rule = rule;
        self
    }

    /// The identity rule of one event type, over the general one.
    pub fn event_type_identity_rule(
        mut self,
        event_type: impl Into<String>,
        rule: IdentityRule,
    ) -> Self {
        self.0.identity_rules.insert(event_type.into(), rule);
        self
    }

    /// Opt-in: the maximum age of every event (off by default). An event older than this,
    /// by its `event_timestamp` (RFC 3339; an [`Identity`](crate::Identity)'s
    /// `with_timestamp`, the Kafka message's timestamp in the helper), is handled by
    /// [`stale_events`](Self::stale_events): set it to the shortest TTL of the event type
    /// or less, since an event older than its TTL may have lost its completed record and
    /// would run again. An event without a timestamp is run (its age is unknown); an
    /// unreadable one is `GuardError::InvalidEvent` (`IdentityError::UnreadableTimestamp`);
    /// one in the future counts as age zero.
    pub fn max_event_age(mut self, age: Duration) -> Self {
        self.0.max_event_age = Some(age);
        self
    }

    /// The maximum age of one event type, over the general one.
    pub fn event_type_max_age(mut self, event_type: impl Into<String>, age: Duration) -> Self {
        self.0.max_event_ages.insert(event_type.into(), age);
        self
    }

    /// What happens to an event older than its maximum age (default
    /// [`StalePolicy::Refuse`]).
    pub fn stale_events(mut self, policy: StalePolicy) -> Self {
        self.0.stale_events = policy;
        self
    }

    /// Switches the guard off (default `false`): a guard built with a disabled
    /// configuration runs every delivery's handler and answers [`Outcome::Unprotected`],
    /// never calls its store, and logs one WARN when it is created. For tests and staged
    /// rollouts; [`Guard::connect`] does not even create the store then.
    ///
    /// The environment variable [`DISABLED_ENV`] (`EVENTONCE_DISABLED`), read by
    /// [`build`](Self::build), overrides this when it is set: `1`, `true`, `yes`, `on`
    /// disable the guard and `0`, `false`, `no`, `off` enable it (any case, surrounding
    /// whitespace ignored); unset or empty, this setting stands.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::IdempotencyConfig;
    /// let config = IdempotencyConfig::builder("billing").disabled(true).build()?;
    /// # if std::env::var_os("EVENTONCE_DISABLED").is_none() {
    /// assert!(config.disabled());
    /// # }
    /// # Ok::<(), eventonce::ConfigError>(())
    /// ```
    ///
    /// [`Outcome::Unprotected`]: crate::Outcome::Unprotected
    /// [`Guard::connect`]: crate::Guard::connect
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.0.disabled = disabled;
        self
    }

    /// Validates and builds the configuration.
    ///
    /// Rejects an empty service name or one holding `:`, whitespace, a glob or hash-tag
    /// character (`*?[]{}\`), a control or non-ASCII character; an empty key prefix or one
    /// holding such characters (`:` is allowed there); a service name or prefix over
    /// [`MAX_NAME_BYTES`](defaults::MAX_NAME_BYTES) (200 bytes, so that every key fits
    /// every store); any TTL, lease or timeout under one
    /// millisecond; a TTL or lease over [`MAX_TTL`] (ten years); a store
    /// timeout, in-progress wait or breaker cooldown over [`MAX_WAIT`] (one hour); a
    /// deferred completion delay over half the lease; an empty event type.
    ///
    /// # Errors
    ///
    /// - [`ConfigError::EmptyServiceName`] or [`ConfigError::InvalidServiceName`];
    ///   [`ConfigError::EmptyKeyPrefix`] or [`ConfigError::InvalidKeyPrefix`].
    /// - [`ConfigError::DurationTooShort`] for a duration under one millisecond,
    ///   [`ConfigError::DurationTooLong`] for one over its limit.
    /// - [`ConfigError::ZeroBatchConcurrency`] if `batch_concurrency` is zero.
    /// - [`ConfigError::ZeroPayloadLimit`] if `max_payload_bytes` is zero.
    /// - [`ConfigError::EmptyEventType`] if an event type given its own TTL is empty.
    /// - [`ConfigError::InvalidEnvironment`] if `EVENTONCE_DISABLED` is set to a value that
    ///   is neither a yes nor a no (see [`disabled`](Self::disabled)).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{ConfigError, IdempotencyConfig};
    /// let err = IdempotencyConfig::builder("billing:prod").build().unwrap_err();
    /// assert!(matches!(err, ConfigError::InvalidServiceName { .. }));
    /// ```
    pub fn build(self) -> Result<IdempotencyConfig, ConfigError> {
        let mut c = self.0;
        let from_env = std::env::var_os(DISABLED_ENV);
        if let Some(disabled) = switch_value(DISABLED_ENV, from_env.as_deref())? {
            c.disabled = disabled;
        }
        validate_service_name(&c.service_name)?;
        validate_prefix(&c.key_prefix)?;
        check_duration("default_ttl", c.default_ttl)?;
        check_at_most("default_ttl", c.default_ttl, MAX_TTL)?;
        check_duration("processing_ttl", c.lease)?;
        check_at_most("processing_ttl", c.lease, MAX_TTL)?;
        check_duration("store_timeout", c.store_timeout)?;
        check_at_most("store_timeout", c.store_timeout, MAX_WAIT)?;
        check_at_most("in_progress_wait", c.in_progress_wait, MAX_WAIT)?;
        if c.batch_concurrency == 0 {
            return Err(ConfigError::ZeroBatchConcurrency);
        }
        if c.max_payload_bytes == 0 {
            return Err(ConfigError::ZeroPayloadLimit);
        }
        if let Some(delay) = c.deferred_completion {
            check_duration("deferred completion delay", delay)?;
            // The completion must be written while the claim's lease still holds.
            check_at_most(
                "deferred completion delay (half the processing_ttl)",
                delay,
                c.lease / 2,
            )?;
        }
        if c.breaker_threshold > 0 {
            check_duration("circuit breaker cooldown", c.breaker_cooldown)?;
            check_at_most("circuit breaker cooldown", c.breaker_cooldown, MAX_WAIT)?;
        }
        if let Some(age) = c.max_event_age {
            check_duration("max_event_age", age)?;
        }
        for (event_type, age) in &c.max_event_ages {
            check_duration(&format!("max_event_age of event type {event_type:?}"), *age)?;
        }
        for rule in std::iter::once(&c.identity_rule).chain(c.identity_rules.values()) {
            check_rule(rule)?;
        }
        for (event_type, ttl) in &c.event_type_ttls {
            if event_type.is_empty() {
                return Err(ConfigError::EmptyEventType);
            }
            check_duration(&format!("ttl of event type {event_type:?}"), *ttl)?;
            check_at_most(&format!("ttl of event type {event_type:?}"), *ttl, MAX_TTL)?;
        }
        Ok(IdempotencyConfig { inner: Arc::new(c) })
    }
}

/// A `Fields` rule names at least one field, each a JSON Pointer (`""` or starting `/`).
fn check_rule(rule: &IdentityRule) -> Result<(), ConfigError> {
    if let IdentityRule::Fields(pointers) = rule {
        if pointers.is_empty() {
            return Err(ConfigError::InvalidIdentityRule {
                reason: "IdentityRule::Fields names no field".to_owned(),
            });
        }
        if let Some(bad) = pointers.iter().find(|p| !p.starts_with('/')) {
            return Err(ConfigError::InvalidIdentityRule {
                reason: format!("{bad:?} is not a JSON Pointer (it must start with '/')"),
            });
        }
    }
    Ok(())
}

/// The environment variable that switches the guard off or on, read by
/// [`ConfigBuilder::build`] (see [`ConfigBuilder::disabled`]).
pub const DISABLED_ENV: &str = "EVENTONCE_DISABLED";

/// The yes or no of a switch variable `name` whose value is `value`: `None` when it is
/// unset or empty (blank), an error naming the variable and the value when it is neither.
fn switch_value(
    name: &'static str,
    value: Option<&std::ffi::OsStr>,
) -> Result<Option<bool>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let invalid = || ConfigError::InvalidEnvironment {
        variable: name,
        value: value.to_string_lossy().chars().take(64).collect(),
        expected: "1, true, yes, on or 0, false, no, off (any case)",
    };
    let text = value.to_str().ok_or_else(invalid)?.trim();
    match text.to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(invalid()),
    }
}

fn check_at_most(what: &str, value: Duration, max: Duration) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::DurationTooLong {
            what: what.to_owned(),
            value,
            max,
        });
    }
    Ok(())
}

fn check_duration(what: &str, value: Duration) -> Result<(), ConfigError> {
    if value < Duration::from_millis(1) {
        return Err(ConfigError::DurationTooShort {
            what: what.to_owned(),
            value,
        });
    }
    Ok(())
}

/// Why a character may not appear in a service name or a prefix, if it may not.
fn forbidden(c: char) -> Option<&'static str> {
    if c.is_whitespace() {
        Some("it contains whitespace")
    } else if c.is_control() {
        Some("it contains a control character")
    } else if !c.is_ascii() {
        Some("it contains a non-ASCII character")
    } else if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
        Some("it contains a glob or hash-tag character (one of *?[]{}\\)")
    } else {
        None
    }
}

fn validate_service_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::EmptyServiceName);
    }
    let invalid = |reason| ConfigError::InvalidServiceName {
        name: name.to_owned(),
        reason,
    };
    if name.contains(':') {
        return Err(invalid("it contains ':', the key separator"));
    }
    if name.len() > crate::key::MAX_NAME_BYTES {
        return Err(invalid("it is longer than 200 bytes"));
    }
    if let Some(reason) = name.chars().find_map(forbidden) {
        return Err(invalid(reason));
    }
    Ok(())
}

fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::EmptyKeyPrefix);
    }
    let invalid = |reason| ConfigError::InvalidKeyPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if let Some(reason) = prefix.chars().find_map(forbidden) {
        return Err(invalid(reason));
    }
    if prefix.len() > crate::key::MAX_NAME_BYTES {
        return Err(invalid("it is longer than 200 bytes"));
    }
    if prefix.starts_with(':') || prefix.ends_with(':') || prefix.contains("::") {
        return Err(invalid("it has an empty ':'-separated segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn processing_ttl_is_the_lease_under_its_former_name() -> Result<(), ConfigError> {
        let lease = Duration::from_secs(30);
        let config = IdempotencyConfig::builder("billing-service")
            .processing_ttl(lease)
            .build()?;
        assert_eq!(config.lease(), lease);
        assert_eq!(config.processing_ttl(), lease);
        Ok(())
    }
}
