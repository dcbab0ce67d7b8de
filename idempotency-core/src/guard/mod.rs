//! The guard: claim an event, run its handler once, complete or release the claim, and
//! record the decision.
//!
//! A run is a pipeline: envelope → identity → key → store claim → handler (its lease kept
//! alive) → store complete/release → [`observe`](GuardInner::observe) of the
//! [`Decision`](outcome::Decision). By concern:
//!
//! - `run`: [`Guard::run`], one event;
//! - `batch`: [`Guard::run_batch`], many events in two store round trips per chunk;
//! - `chain`: [`BatchChain`], consecutive batches whose completions ride on the next
//!   batch's claim;
//! - `transaction`: [`Guard::run_in_transaction`], the record committed with the handler's
//!   writes;
//! - `lease`: the heartbeat that renews a claim while its handler runs;
//! - `deferred`: completions owed to the store, deferred or waiting for a retry;
//! - `cancel`: what happens to claims when a run, a batch or the guard is dropped;
//! - `outcome`: what a run answers, its decisions and the one place that records them;
//! - `stats`: the decision counters.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::breaker::{Breaker, Permit};
use crate::config::IdempotencyConfig;
use crate::config::StalePolicy;
use crate::envelope::EventEnvelope;
use crate::error::{GuardError, IdentityError, StoreError};
use crate::identify::{fingerprint_of_owner, Identify, Resolved, When};
use crate::store::IdempotencyStore;
use crate::telemetry;

mod batch;
mod cancel;
mod chain;
mod deferred;
mod disabled;
mod fast;
mod lease;
mod outcome;
mod run;
mod stats;
mod stored;
mod transaction;

pub use chain::BatchChain;
pub use outcome::Outcome;
use outcome::{Ctx, Decision, Scope};
use stats::Counters;
pub use stats::GuardStats;
pub use stored::StoredOutcome;

/// Runs event handlers at most once per event (per service, within the event type's TTL).
///
/// Cheap to clone (it holds `Arc`s); use one guard from many tasks at once.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; }
/// use eventonce::{EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, Outcome};
///
/// async fn consume(store: impl IdempotencyStore + 'static, payload: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
///     let config = IdempotencyConfig::builder("billing-service").build()?;
///     let guard = Guard::new(store, config);
///     let event = EventEnvelope::from_slice(payload)?;
///     match guard.run(&event, async { Ok::<_, std::io::Error>("charged") }).await {
///         Ok(Outcome::Processed(_) | Outcome::Unprotected(_) | Outcome::Duplicate) => {} // commit
///         Err(GuardError::InProgress | GuardError::Handler(_)) => {} // redeliver later
///         Err(other) => return Err(other.into()),
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

struct GuardInner {
    store: Arc<dyn IdempotencyStore>,
    config: IdempotencyConfig,
    counters: Counters,
    breaker: Breaker,
    /// Completions owed to the store: deferred ones waiting to travel with the next claim
    /// (`defer_completion`), and ones the store did not take yet, waiting for a retry.
    deferred: std::sync::Mutex<deferred::OwedQueue>,
    /// Whether `deferred` holds anything (read without its lock, so a claim with nothing
    /// to carry costs no lock).
    owing: AtomicBool,
    /// Held while owed completions are taken out and written by the background task or by
    /// `flush`, so that `flush` returns only after a write already in flight has ended.
    flushing: tokio::sync::Mutex<()>,
    /// Whether a task will write `deferred`.
    flush_scheduled: AtomicBool,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("store", &self.inner.store.backend_name())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Guard {
    /// A guard over `store` with `config`.
    pub fn new<S>(store: S, config: IdempotencyConfig) -> Self
    where
        S: IdempotencyStore + 'static,
    {
        Self::from_arc(Arc::new(store), config)
    }

    /// A guard over a store already shared behind an `Arc`.
    pub fn from_arc(store: Arc<dyn IdempotencyStore>, config: IdempotencyConfig) -> Self {
        let (threshold, cooldown) = config.circuit_breaker();
        if config.disabled() {
            tracing::warn!(
                service = config.service_name(),
                "eventonce is switched off (EVENTONCE_DISABLED or ConfigBuilder::disabled): \
                 every handler runs unprotected and the store is never called"
            );
        }
        Guard {
            inner: Arc::new(GuardInner {
                store,
                config,
                counters: Counters::default(),
                breaker: Breaker::new(threshold, cooldown),
                deferred: std::sync::Mutex::new(deferred::OwedQueue::default()),
                owing: AtomicBool::new(false),
                flushing: tokio::sync::Mutex::new(()),
                flush_scheduled: AtomicBool::new(false),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.inner.store
    }

    /// The decision counters of this guard and its clones.
    pub fn stats(&self) -> GuardStats {
        self.inner.counters.stats()
    }

    /// The store key of an event under this guard's configuration (its
    /// [key scheme](crate::KeyScheme) included): the key [`run`](Self::run) claims.
    ///
    /// # Errors
    ///
    /// [`IdentityError`] when the event cannot be identified (no usable `data`, or a key
    /// the configuration cannot form).
    pub fn key_for<I: Identify + ?Sized>(&self, event: &I) -> Result<String, IdentityError> {
        event
            .resolve(&self.inner.config)
            .map(|resolved| resolved.key)
    }

    /// Writes the completions owed so far now (deferred ones, `defer_completion`, and
    /// ones waiting for a retry), and returns how many were written. Call it before
    /// shutting down. On an error they stay queued (and are retried until written or
    /// their lease ends); a completion never written is not lost work, but a redelivery of
    /// its event after the lease runs the handler again.
    ///
    /// # Errors
    ///
    /// The [`StoreError`] of the write when the store did not take every owed completion.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        self.write_owed().await
    }

    /// Whether the circuit breaker currently refuses store calls.
    pub fn circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Records `decision` about `scope` (see [`GuardInner::observe`]).
    fn observe<'a>(&self, scope: impl Into<Scope<'a>>, decision: Decision<'_>) {
        self.inner.observe(scope, decision);
    }

    /// The event's hash and key, or the observed refusal of an event without identity.
    fn identify<I, E>(&self, event: &I, view: &EventEnvelope) -> Result<Resolved, GuardError<E>>
    where
        I: Identify + ?Sized,
    {
        let config = &self.inner.config;
        let resolved = event.resolve(config).and_then(|resolved| {
            match (&resolved.when, config.max_event_age_for(&view.event_type)) {
                (When::Unreadable(text), Some(_)) => Err(IdentityError::UnreadableTimestamp {
                    event_type: crate::bound::bounded(&view.event_type).into_owned(),
                    timestamp: text.clone(),
                }),
                // The decorator's values carry no fingerprint, and stay as they are.
                _ if config.key_scheme() == crate::KeyScheme::PythonV2 => Ok(Resolved {
                    fingerprint: None,
                    ..resolved
                }),
                _ => Ok(resolved),
            }
        });
        resolved.map_err(|error| {
            self.observe(
                Scope::Unidentified(view),
                Decision::Invalid { error: &error },
            );
            GuardError::InvalidEvent(error)
        })
    }

    /// Observes and answers an event whose claim the store refused with an error that is
    /// not an outage ([`StoreError::is_outage`]): the event's own data, never run, never
    /// counted against the store.
    fn refused_by_store<E>(&self, ctx: &outcome::Ctx<'_>, error: &StoreError) -> GuardError<E> {
        let error = IdentityError::StoreRefused {
            key: crate::error::cut(ctx.key, 300),
            reason: crate::error::cut(&error.to_string(), 300),
        };
        self.observe(ctx, Decision::Invalid { error: &error });
        GuardError::InvalidEvent(error)
    }

    /// The stale-event check of an identified event: `Ok` to go on, the final answer of a
    /// skipped or refused one otherwise (see [`StalePolicy`]).
    fn check_age<E: std::fmt::Display>(
        &self,
        view: &EventEnvelope,
        resolved: &Resolved,
    ) -> Result<(), GuardError<E>> {
        let config = &self.inner.config;
        let (When::At(at), Some(max_age)) =
            (&resolved.when, config.max_event_age_for(&view.event_type))
        else {
            return Ok(());
        };
        // An event stamped in the future counts as age zero.
        let age = std::time::SystemTime::now()
            .duration_since(*at)
            .unwrap_or_default();
        if age <= max_age {
            return Ok(());
        }
        let event_type = crate::bound::bounded(&view.event_type);
        let policy = config.stale_events();
        if policy == StalePolicy::Process {
            let text = format!(
                "event of type {event_type:?} is {age:?} old, past its maximum age {max_age:?}: processed"
            );
            self.observe(
                Scope::Unidentified(view),
                Decision::StaleProcessed { error: &text },
            );
            return Ok(());
        }
        let skipped = policy == StalePolicy::Skip;
        let stale = GuardError::<E>::Stale {
            event_type: event_type.into_owned(),
            age,
            max_age,
            skipped,
        };
        let decision = Decision::Stale {
            error: &stale,
            skipped,
        };
        self.observe(Scope::Unidentified(view), decision);
        Err(stale)
    }

    /// The conflict check of a key found completed or claimed: when this delivery has a
    /// fingerprint and the record carries another one, the `Conflict` to answer. A
    /// record without a fingerprint (an older one, a `PythonV2` value) is accepted; a
    /// failed read answers as if they agreed (observed).
    async fn conflict<E: std::fmt::Display>(
        &self,
        ctx: &mut Ctx<'_>,
        fingerprint: Option<&str>,
    ) -> Option<GuardError<E>> {
        let given = fingerprint?;
        let record = self
            .timed_call(ctx, "get", self.inner.store.get(ctx.key))
            .await;
        match record {
            Ok(record) => self.check_fingerprint(ctx, record?.owner.as_deref(), given),
            Err(error) => {
                self.observe(&*ctx, Decision::ConflictUnchecked { error: &error });
                None
            }
        }
    }

    /// [`conflict`](Self::conflict) of a key found completed, reading the record's stored
    /// result in the same call (`get_with_result`): the conflict, if any, and the result.
    /// A failed read answers no result (and, with a fingerprint, is observed).
    async fn conflict_and_result<E: std::fmt::Display>(
        &self,
        ctx: &mut Ctx<'_>,
        fingerprint: Option<&str>,
    ) -> (Option<GuardError<E>>, Option<Vec<u8>>) {
        let read = self.inner.store.get_with_result(ctx.key);
        let record = self.timed_call(ctx, "get", read).await;
        match (record, fingerprint) {
            (Ok(Some((record, result))), Some(given)) => {
                let conflict = self.check_fingerprint(ctx, record.owner.as_deref(), given);
                let result = if conflict.is_some() { None } else { result };
                (conflict, result)
            }
            (Ok(Some((_, result))), None) => (None, result),
            (Ok(None), _) | (Err(_), None) => (None, None),
            (Err(error), Some(_)) => {
                self.observe(&*ctx, Decision::ConflictUnchecked { error: &error });
                (None, None)
            }
        }
    }

    /// The `Conflict` to answer when the record's owner token carries another fingerprint
    /// than `given` (observed); `None` when they agree or the record has none.
    fn check_fingerprint<E: std::fmt::Display>(
        &self,
        ctx: &Ctx<'_>,
        owner: Option<&str>,
        given: &str,
    ) -> Option<GuardError<E>> {
        let stored = fingerprint_of_owner(owner?)?;
        if stored == given {
            return None;
        }
        let conflict = GuardError::<E>::Conflict {
            key: crate::bound::bounded(ctx.key).into_owned(),
            stored: stored.chars().take(16).collect(),
            given: given.chars().take(16).collect(),
        };
        self.observe(ctx, Decision::Conflict { error: &conflict });
        Some(conflict)
    }

    /// A store call behind the circuit breaker, bounded by the store timeout and measured.
    async fn store_call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let sent = tokio::time::Instant::now();
        self.gated_call_from(operation, call, sent).await.0
    }

    /// A batch call (`complete_many`, `release_many`, `extend_many`) over `items`, split
    /// into chunks of at most the store's
    /// [`max_batch_chunk`](IdempotencyStore::max_batch_chunk): one store call per chunk in
    /// turn, each within the store timeout, behind the breaker unless `ungated`. Each item's
    /// answer in order; when a chunk failed, a [`StoreError::Partial`] with the answers of
    /// the others and the first failure.
    async fn chunked<'a, I, Fut>(
        &self,
        operation: &'static str,
        items: &'a [I],
        ungated: bool,
        mut call: impl FnMut(&'a [I]) -> Fut,
    ) -> Result<Vec<bool>, StoreError>
    where
        Fut: Future<Output = Result<Vec<bool>, StoreError>>,
    {
        let size = self.inner.store.max_batch_chunk().max(1);
        let mut answers: Vec<Option<bool>> = Vec::with_capacity(items.len());
        let mut failure = None;
        for chunk in items.chunks(size) {
            let permit = if ungated {
                Ok(Permit::Call)
            } else {
                self.inner.breaker.permit()
            };
            let result = match permit {
                Ok(permit) => self.store_call_with(operation, call(chunk), permit).await,
                Err(open) => Err(open),
            };
            match result {
                Ok(flags) if items.len() <= size => return Ok(flags),
                Ok(flags) if flags.len() == chunk.len() => {
                    answers.extend(flags.into_iter().map(Some));
                }
                Ok(flags) => {
                    answers.extend(std::iter::repeat_n(None, chunk.len()));
                    failure.get_or_insert(StoreError::Unavailable {
                        message: format!(
                            "`{operation}` answered {} of {} keys",
                            flags.len(),
                            chunk.len()
                        ),
                        source: None,
                    });
                }
                Err(err) if items.len() <= size => return Err(err),
                Err(err) => {
                    answers.extend(err.answers(chunk.len()));
                    failure.get_or_insert(err);
                }
            }
        }
        match failure {
            None => Ok(answers.into_iter().flatten().collect()),
            Some(error) => Err(StoreError::Partial {
                answers,
                error: Box::new(error),
            }),
        }
    }

    /// Runs `call` within the store timeout, records it in the metrics and its result in
    /// the breaker under `permit`.
    async fn store_call_with<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
        permit: Permit,
    ) -> Result<T, StoreError> {
        let sent = tokio::time::Instant::now();
        self.store_call_from(operation, call, permit, sent).await.0
    }

    /// [`store_call`](Self::store_call) of one event's run, its time added to the run's
    /// store time.
    async fn timed_call<T>(
        &self,
        ctx: &mut Ctx<'_>,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let sent = tokio::time::Instant::now();
        let (result, took) = self.gated_call_from(operation, call, sent).await;
        ctx.store_time += took;
        result
    }

    /// [`store_call`](Self::store_call) of a call sent at `sent` (see
    /// [`store_call_from`](Self::store_call_from)): its answer and how long it took.
    async fn gated_call_from<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
        sent: tokio::time::Instant,
    ) -> (Result<T, StoreError>, std::time::Duration) {
        match self.inner.breaker.permit() {
            Ok(permit) => self.store_call_from(operation, call, permit, sent).await,
            Err(open) => (Err(open), std::time::Duration::ZERO),
        }
    }

    /// [`store_call_with`](Self::store_call_with) of a call sent at `sent`, the caller's
    /// one clock read: it also gives the call's deadline and, after the answer, how long
    /// the call took (returned beside the answer). A new event reads the clock this way
    /// twice per store call, not five times.
    async fn store_call_from<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
        permit: Permit,
        sent: tokio::time::Instant,
    ) -> (Result<T, StoreError>, std::time::Duration) {
        let timeout = self.inner.config.store_timeout();
        let result = match fast::within(sent, timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout { operation, timeout }),
        };
        let took = sent.elapsed();
        telemetry::store_call(&self.inner.config, operation, took, &result);
        self.inner
            .breaker
            .record(permit, result.as_ref().map(|_| ()));
        (result, took)
    }
}

/// The short type name of a store, for logs.
fn store_name<S>() -> &'static str {
    let full = std::any::type_name::<S>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A token unique to one claim: process id, a per-process random nonce, a counter.
fn new_owner() -> String {
    use std::hash::BuildHasher;
    static NONCE: OnceLock<(u32, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Once per process: the pid (a system call) and the nonce.
    let (pid, nonce) = *NONCE.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let pid = std::process::id();
        let nonce = std::collections::hash_map::RandomState::new().hash_one((pid, now));
        (pid, nonce)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The pid of now, not of the first token: a child forked without exec inherits the
    // nonce and the counter, and its own pid keeps its tokens apart from its parent's.
    let current = std::process::id();
    let nonce = if current == pid {
        nonce
    } else {
        nonce ^ u64::from(current)
    };
    fast::owner_token(current, nonce, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_tokens_are_unique() {
        let a = new_owner();
        let b = new_owner();
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{:x}-", std::process::id())));
    }
}
