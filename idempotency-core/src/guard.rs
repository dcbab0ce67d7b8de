//! `Guard::run`: claim, run the handler once, complete or release, log the decision.

use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use tracing::{Instrument, Level};

use crate::breaker::Breaker;
use crate::config::{FailMode, IdempotencyConfig};
use crate::envelope::EventEnvelope;
use crate::error::{GuardError, IdentityError, StoreError};
use crate::store::{Claim, Completion, IdempotencyStore};
use crate::telemetry::{self, RunProbe};

/// What happened to an event that [`Guard::run`] let through or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome<T> {
    /// The event was new: the handler ran once and the event is recorded as completed.
    Processed(T),
    /// The event was completed before: the handler was never polled.
    Duplicate,
    /// The store failed and the configuration is `FailMode::Open`: the handler ran without
    /// protection, so this may be a second run.
    Unprotected(T),
}

impl<T> Outcome<T> {
    /// The handler's value, if the handler ran.
    pub fn into_value(self) -> Option<T> {
        match self {
            Outcome::Processed(v) | Outcome::Unprotected(v) => Some(v),
            Outcome::Duplicate => None,
        }
    }

    /// Whether the event was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::Duplicate)
    }
}

/// Counters of a guard's decisions since it was created (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Events processed and recorded as completed.
    pub processed: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Runs refused because another owner held the claim.
    pub in_progress: u64,
    /// Handler failures (claim released).
    pub handler_failures: u64,
    /// Handler panics (claim released, panic resumed).
    pub handler_panics: u64,
    /// Handlers run without protection because the store failed (`FailMode::Open`).
    pub unprotected: u64,
    /// Runs refused because the store failed (`FailMode::Closed`).
    pub store_refusals: u64,
    /// Failed store operations of any kind.
    pub store_errors: u64,
    /// Claims found lost at completion or renewal (the lease had expired).
    pub claims_lost: u64,
    /// Events that could not be identified.
    pub invalid_events: u64,
    /// `run` futures dropped while their handler was running.
    pub cancelled: u64,
    /// Completions of succeeded handlers that the store did not take at the first attempt
    /// (an outage, a timeout, an open breaker, a run dropped while completing): kept and
    /// retried with backoff until written or their lease ends.
    pub completions_retried: u64,
    /// Completions given up because their lease ended before the store took them: those
    /// events are processed but not recorded, so a redelivery may run them again.
    pub completions_abandoned: u64,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    duplicates: AtomicU64,
    in_progress: AtomicU64,
    handler_failures: AtomicU64,
    handler_panics: AtomicU64,
    unprotected: AtomicU64,
    store_refusals: AtomicU64,
    store_errors: AtomicU64,
    claims_lost: AtomicU64,
    invalid_events: AtomicU64,
    cancelled: AtomicU64,
    completions_retried: AtomicU64,
    completions_abandoned: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Runs event handlers at most once per event (per service, within the event type's TTL).
///
/// Cheap to clone (it holds `Arc`s); use one guard from many tasks at once.
///
/// ```
/// use eventonce_core::{EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, Outcome};
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
    deferred: std::sync::Mutex<owed::OwedQueue>,
    /// Whether `deferred` holds anything (read without its lock, so a claim with nothing
    /// to carry costs no lock).
    owing: std::sync::atomic::AtomicBool,
    /// Held while owed completions are taken out and written by the background task or by
    /// `flush`, so that `flush` returns only after a write already in flight has ended.
    flushing: tokio::sync::Mutex<()>,
    /// Whether a task will write `deferred`.
    flush_scheduled: std::sync::atomic::AtomicBool,
}

/// How many deferred completions make the guard flush at once rather than wait.
const MAX_DEFERRED: usize = 256;

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("store", &self.inner.store.backend_name())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Everything a decision log line carries.
struct Ctx<'a> {
    config: &'a IdempotencyConfig,
    envelope: &'a EventEnvelope,
    hash: &'a str,
    key: &'a str,
    ttl: Duration,
    started: Instant,
    store_time: Duration,
    /// When the claim attempt that answered was sent (its lease counts from then).
    claimed: tokio::time::Instant,
}

impl<'a> Ctx<'a> {
    fn new(
        config: &'a IdempotencyConfig,
        envelope: &'a EventEnvelope,
        hash: &'a str,
        key: &'a str,
        started: Instant,
    ) -> Self {
        Ctx {
            config,
            envelope,
            hash,
            key,
            ttl: config.ttl_for_event_type(&envelope.event_type),
            started,
            store_time: Duration::ZERO,
            claimed: tokio::time::Instant::now(),
        }
    }

    fn total_ms(&self) -> f64 {
        millis(self.started.elapsed())
    }
    fn store_ms(&self) -> f64 {
        millis(self.store_time)
    }
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// One structured event per decision, with every field of the design.
macro_rules! decision {
    ($level:expr, $ctx:expr, $action:expr, $($rest:tt)+) => {
        tracing::event!(
            $level,
            service = $ctx.config.service_name(),
            event_type = $ctx.envelope.event_type.as_str(),
            event_id = $ctx.envelope.event_id.as_deref(),
            correlation_id = $ctx.envelope.correlation_id.as_deref(),
            source_service = $ctx.envelope.source_service.as_deref(),
            deterministic_hash = $ctx.hash,
            key = $ctx.key,
            ttl_seconds = $ctx.ttl.as_secs(),
            action = $action,
            store_duration_ms = $ctx.store_ms(),
            total_duration_ms = $ctx.total_ms(),
            $($rest)+
        )
    };
}

/// A debug decision, logged only with `debug_logging`.
macro_rules! debug_decision {
    ($ctx:expr, $action:expr, $($rest:tt)+) => {
        if $ctx.config.debug_logging() {
            decision!(Level::DEBUG, $ctx, $action, $($rest)+);
        }
    };
}

mod batch;
mod owed;

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
        Guard {
            inner: Arc::new(GuardInner {
                store,
                config,
                counters: Counters::default(),
                breaker: Breaker::new(threshold, cooldown),
                deferred: std::sync::Mutex::new(owed::OwedQueue::default()),
                owing: std::sync::atomic::AtomicBool::new(false),
                flushing: tokio::sync::Mutex::new(()),
                flush_scheduled: std::sync::atomic::AtomicBool::new(false),
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
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GuardStats {
            processed: get(&c.processed),
            duplicates: get(&c.duplicates),
            in_progress: get(&c.in_progress),
            handler_failures: get(&c.handler_failures),
            handler_panics: get(&c.handler_panics),
            unprotected: get(&c.unprotected),
            store_refusals: get(&c.store_refusals),
            store_errors: get(&c.store_errors),
            claims_lost: get(&c.claims_lost),
            invalid_events: get(&c.invalid_events),
            cancelled: get(&c.cancelled),
            completions_retried: get(&c.completions_retried),
            completions_abandoned: get(&c.completions_abandoned),
        }
    }

    /// The store key of an event under this guard's configuration (its
    /// [key scheme](crate::KeyScheme) included): the key [`run`](Self::run) claims.
    pub fn key_for(&self, envelope: &EventEnvelope) -> Result<String, IdentityError> {
        self.inner.config.event_key(envelope)
    }

    /// Runs `handler` for `envelope` unless the event was processed before.
    ///
    /// - New event: claims it with a lease of `processing_ttl`, polls `handler` to
    ///   completion (renewing the lease every third of it; a failed renewal is retried every
    ///   tenth of that, at most every second), marks it completed for the event
    ///   type's TTL and returns [`Outcome::Processed`]. The completion is attempted even
    ///   while the circuit breaker is open; if the store does not take it (an outage, a
    ///   timeout, this future dropped while completing), `Processed` is still returned and
    ///   the completion is kept and retried with backoff in the background until it is
    ///   written or its lease ends (counted from the last renewal the store confirmed;
    ///   [`GuardStats::completions_retried`] and
    ///   [`GuardStats::completions_abandoned`]; logged as `complete_retrying` and
    ///   `complete_abandoned`). A completion abandoned that way leaves the claim to expire,
    ///   and a redelivery after the lease runs the event again.
    /// - Completed before: returns [`Outcome::Duplicate`]; `handler` is never polled.
    /// - Claimed by another live owner: [`GuardError::InProgress`] (after waiting up to
    ///   `in_progress_wait` for it to finish, if configured).
    /// - `handler` returns `Err`: releases the claim (owner-checked) and returns
    ///   [`GuardError::Handler`]; a redelivery runs it again, the guard never does.
    /// - `handler` panics: releases the claim, then resumes the panic.
    /// - This future is dropped while the handler runs: the claim is released by a spawned
    ///   task (or, without a runtime, expires after the lease).
    /// - The store fails: [`Outcome::Unprotected`] with `FailMode::Open`,
    ///   [`GuardError::Store`] with `FailMode::Closed`.
    /// - The event has no identity: [`GuardError::InvalidEvent`].
    ///
    /// Must run inside a Tokio runtime with time enabled.
    ///
    /// Each call is one `tracing` span, `eventonce.run`, with the decision in its fields
    /// (`outcome`, `duplicate`, `handler_ran`), and, with the `metrics` feature, counted
    /// and timed (see [`RUNS_TOTAL`](crate::RUNS_TOTAL)).
    pub async fn run<F, T, E>(
        &self,
        envelope: &EventEnvelope,
        handler: F,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let probe = RunProbe::start(&self.inner.config, envelope);
        let span = probe.span().clone();
        let result = self.run_once(envelope, handler).instrument(span).await;
        probe.finish(&result);
        result
    }

    /// [`run`](Self::run) without its span and metrics.
    async fn run_once<F, T, E>(
        &self,
        envelope: &EventEnvelope,
        handler: F,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let started = Instant::now();
        let config = &self.inner.config;
        let counters = &self.inner.counters;
        let (hash, key) = self.identify(envelope)?;
        let mut ctx = Ctx::new(config, envelope, &hash, &key, started);
        let owner = new_owner();

        let claim = self.claim(&mut ctx, &owner).await;
        match claim {
            Ok(Claim::Acquired) => {
                debug_decision!(
                    ctx,
                    "claimed",
                    "CLAIM_ACQUIRED: Event claimed for processing"
                );
            }
            Ok(Claim::Completed) => return Ok(self.duplicate(&ctx)),
            Ok(Claim::InProgress) => return Err(self.in_progress(&ctx)),
            Err(err) => return self.store_failed(&ctx, err, handler).await,
        }

        // From here on the claim is ours: whatever happens, it is completed or released.
        let lease = config.processing_ttl();
        let mut pending = PendingClaim {
            store: Arc::clone(&self.inner.store),
            key: key.clone(),
            owner,
            ttl: ctx.ttl,
            on_drop: OnDrop::Release,
            until: owed::lease_end(ctx.claimed, lease),
            guard: Arc::clone(&self.inner),
        };
        let mut confirmed = ctx.claimed;
        let result = self
            .drive(&ctx, &pending.owner, handler, &mut confirmed)
            .await;
        // A completion not written at once is retried until the claim's lease ends.
        pending.until = owed::lease_end(confirmed, lease);
        match result {
            Ok(Ok(value)) if config.deferred_completion().is_some() => {
                pending.on_drop = OnDrop::Nothing;
                bump(&counters.processed);
                self.owe(
                    Completion {
                        key: key.clone(),
                        owner: std::mem::take(&mut pending.owner),
                        ttl: ctx.ttl,
                    },
                    pending.until,
                    None,
                );
                debug_decision!(
                    ctx,
                    "completion_deferred",
                    "EVENT_PROCESSED: Event processed; its completion travels with the next claim"
                );
                Ok(Outcome::Processed(value))
            }
            Ok(Ok(value)) => {
                pending.on_drop = OnDrop::Complete;
                let t = Instant::now();
                // Attempted even while the breaker is open: the effect has happened.
                let done = self
                    .timed_ungated(
                        "complete",
                        self.inner.store.complete(&key, &pending.owner, ctx.ttl),
                    )
                    .await;
                ctx.store_time += t.elapsed();
                pending.on_drop = OnDrop::Nothing;
                match done {
                    Err(err) => {
                        bump(&counters.processed);
                        bump(&counters.store_errors);
                        self.owe(
                            Completion {
                                key: key.clone(),
                                owner: std::mem::take(&mut pending.owner),
                                ttl: ctx.ttl,
                            },
                            pending.until,
                            Some(&err),
                        );
                    }
                    done => self.log_completion(&ctx, Some(done)),
                }
                Ok(Outcome::Processed(value))
            }
            Ok(Err(err)) => {
                let released = self.release(&mut ctx, &pending.owner).await;
                pending.on_drop = OnDrop::Nothing;
                self.handler_failed(&ctx, &err, released);
                Err(GuardError::Handler(err))
            }
            Err(panic) => {
                let released = self.release(&mut ctx, &pending.owner).await;
                pending.on_drop = OnDrop::Nothing;
                self.handler_panicked(&ctx, released);
                resume_unwind(panic)
            }
        }
    }

    /// Runs `handler` inside a transaction of `store`, and records the event as completed
    /// in that same transaction: the handler's writes and the record commit together, or
    /// neither does.
    ///
    /// The handler takes the transaction and hands it back with its result:
    /// `|mut tx| async move { let r = write(&mut tx).await; (tx, r) }`. Owning it keeps the
    /// handler free to borrow anything else, and the run spawnable.
    ///
    /// - New event: claims it inside the transaction, runs `handler(&mut tx)`, marks it
    ///   completed, commits, returns [`Outcome::Processed`].
    /// - Completed before: rolls back, returns [`Outcome::Duplicate`]; `handler` is not
    ///   called.
    /// - Another transaction holds it (a live `run_in_transaction` of the same event, or a
    ///   batch being completed): [`GuardError::InProgress`] after at most the store's short
    ///   lock wait (PostgreSQL `lock_wait`, 50 ms), never a store error, so the redelivery
    ///   comes later; a committed claim of the non-transactional mode also gives
    ///   `InProgress`.
    /// - `handler` returns `Err`, panics, or this future is dropped: the transaction rolls
    ///   back, taking the handler's writes and the claim with it.
    /// - A consumer process that dies mid-handler: its connection closes, the database
    ///   rolls the transaction back, the redelivery processes the event.
    /// - The store fails, or the commit does: [`GuardError::Store`] whatever the fail mode
    ///   (the handler's own writes go to the same database, so running it unprotected is
    ///   not possible); nothing was committed.
    ///
    /// There is no heartbeat and no store timeout on the handler: the transaction's lock is
    /// the claim for as long as it lives.
    ///
    /// Traced and counted like [`run`](Self::run).
    pub async fn run_in_transaction<S, H, F, T, E>(
        &self,
        store: &S,
        envelope: &EventEnvelope,
        handler: H,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        S: crate::store::TransactionalStore,
        H: FnOnce(S::Tx) -> F,
        F: Future<Output = (S::Tx, Result<T, E>)>,
        E: std::fmt::Display,
    {
        let probe = RunProbe::start(&self.inner.config, envelope);
        let span = probe.span().clone();
        let result = self
            .run_in_transaction_once(store, envelope, handler)
            .instrument(span)
            .await;
        probe.finish(&result);
        result
    }

    /// [`run_in_transaction`](Self::run_in_transaction) without its span and metrics.
    async fn run_in_transaction_once<S, H, F, T, E>(
        &self,
        store: &S,
        envelope: &EventEnvelope,
        handler: H,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        S: crate::store::TransactionalStore,
        H: FnOnce(S::Tx) -> F,
        F: Future<Output = (S::Tx, Result<T, E>)>,
        E: std::fmt::Display,
    {
        let started = Instant::now();
        let config = &self.inner.config;
        let counters = &self.inner.counters;
        let (hash, key) = self.identify(envelope)?;
        let mut ctx = Ctx::new(config, envelope, &hash, &key, started);
        let owner = new_owner();
        let refuse = |ctx: &Ctx<'_>, err: StoreError| {
            bump(&counters.store_errors);
            bump(&counters.store_refusals);
            decision!(
                Level::ERROR,
                ctx,
                "fail_closed",
                store = store_name::<S>(),
                error = %err,
                "STORE_ERROR: Transactional store failed, nothing committed; retry later"
            );
            GuardError::Store(err)
        };

        let t = Instant::now();
        let mut tx = match store.begin().await {
            Ok(tx) => tx,
            Err(err) => return Err(refuse(&ctx, err)),
        };
        let claim = store
            .claim_in(&mut tx, &key, &owner, config.processing_ttl())
            .await;
        ctx.store_time += t.elapsed();
        match claim {
            Ok(Claim::Acquired) => {
                debug_decision!(
                    ctx,
                    "claimed",
                    "CLAIM_ACQUIRED: Event claimed inside the handler's transaction"
                );
            }
            Ok(Claim::Completed) => {
                let _ = store.rollback(tx).await;
                return Ok(self.duplicate(&ctx));
            }
            Ok(Claim::InProgress) => {
                let _ = store.rollback(tx).await;
                return Err(self.in_progress(&ctx));
            }
            Err(err) => {
                let _ = store.rollback(tx).await;
                return Err(refuse(&ctx, err));
            }
        }

        let (mut tx, result) = handler(tx).await;
        match result {
            Ok(value) => {
                let t = Instant::now();
                let done = store.complete_in(&mut tx, &key, &owner, ctx.ttl).await;
                let committed = match done {
                    Ok(true) => store.commit(tx).await,
                    Ok(false) => {
                        let _ = store.rollback(tx).await;
                        Err(StoreError::InvalidData {
                            key: key.clone(),
                            detail: "the claim vanished inside its own transaction".into(),
                        })
                    }
                    Err(err) => {
                        let _ = store.rollback(tx).await;
                        Err(err)
                    }
                };
                ctx.store_time += t.elapsed();
                match committed {
                    Ok(()) => {
                        bump(&counters.processed);
                        debug_decision!(
                            ctx,
                            "completed",
                            "EVENT_PROCESSED: Event processed and committed with its record"
                        );
                        Ok(Outcome::Processed(value))
                    }
                    Err(err) => Err(refuse(&ctx, err)),
                }
            }
            Err(err) => {
                let _ = store.rollback(tx).await;
                bump(&counters.handler_failures);
                decision!(
                    Level::ERROR,
                    ctx,
                    "rolled_back",
                    error = %err,
                    "PROCESSING_FAILED: Handler failed, transaction rolled back so a redelivery can retry"
                );
                Err(GuardError::Handler(err))
            }
        }
    }

    /// The event's hash and key, or the logged refusal of an event without identity.
    fn identify<E>(&self, envelope: &EventEnvelope) -> Result<(String, String), GuardError<E>> {
        let config = &self.inner.config;
        let identity = config.event_hash(envelope).and_then(|hash| {
            let key = config.try_generate_key(&envelope.event_type, &hash)?;
            Ok((hash, key))
        });
        match identity {
            Ok(identity) => Ok(identity),
            Err(err) => {
                bump(&self.inner.counters.invalid_events);
                tracing::error!(
                    service = config.service_name(),
                    event_type = envelope.event_type.as_str(),
                    event_id = envelope.event_id.as_deref(),
                    correlation_id = envelope.correlation_id.as_deref(),
                    source_service = envelope.source_service.as_deref(),
                    action = "rejected",
                    error = %err,
                    "INVALID_EVENT: Event cannot be identified, not processing"
                );
                Err(GuardError::InvalidEvent(err))
            }
        }
    }

    /// Counts and logs a duplicate.
    fn duplicate<T>(&self, ctx: &Ctx<'_>) -> Outcome<T> {
        bump(&self.inner.counters.duplicates);
        decision!(
            Level::WARN,
            ctx,
            "skipped_duplicate",
            "DUPLICATE_EVENT_DETECTED: Event already processed, skipping"
        );
        Outcome::Duplicate
    }

    /// Counts and logs a claim held elsewhere.
    fn in_progress<E>(&self, ctx: &Ctx<'_>) -> GuardError<E> {
        bump(&self.inner.counters.in_progress);
        decision!(
            Level::WARN,
            ctx,
            "in_progress",
            "EVENT_IN_PROGRESS: Event is being processed by another consumer, retry later"
        );
        GuardError::InProgress
    }

    /// `try_claim`, waiting for another owner's claim up to `in_progress_wait`.
    async fn claim(&self, ctx: &mut Ctx<'_>, owner: &str) -> Result<Claim, StoreError> {
        let config = &self.inner.config;
        // Read the clock only when there is a wait to bound.
        let wait = config.in_progress_wait();
        let deadline = (!wait.is_zero())
            .then(|| crate::store::saturating_deadline(tokio::time::Instant::now(), wait));
        let mut backoff = Duration::from_millis(10);
        let mut carried = self.owes().then(|| self.take_owed());
        if carried.as_ref().is_some_and(|c| c.holds(ctx.key)) {
            // A redelivery of an event whose completion is still owed: complete first.
            let t = Instant::now();
            if let Some(owed) = carried.take() {
                let _ = self.write_carried(owed).await;
            }
            ctx.store_time += t.elapsed();
        }
        loop {
            let t = Instant::now();
            ctx.claimed = tokio::time::Instant::now();
            let owed = carried.take().filter(|c| !c.is_empty());
            let claim = if let Some(owed) = owed {
                // Put back if this call fails or is dropped (`Carried`'s drop).
                let answer = self
                    .timed(
                        "complete_then_claim",
                        self.inner.store.complete_then_claim(
                            owed.completions(),
                            ctx.key,
                            owner,
                            config.processing_ttl(),
                        ),
                    )
                    .await;
                match answer {
                    Ok((done, claim)) => {
                        // The claim stands whatever became of the completions.
                        let _ = self.settle_carried(owed, done).await;
                        Ok(claim)
                    }
                    Err(err) => {
                        // Nothing known of the completions: all go back to the queue (a
                        // retry of one that was written finds it completed).
                        let _ = self.settle_carried(owed, Err(err.again())).await;
                        Err(err)
                    }
                }
            } else {
                self.timed(
                    "try_claim",
                    self.inner
                        .store
                        .try_claim(ctx.key, owner, config.processing_ttl()),
                )
                .await
            };
            ctx.store_time += t.elapsed();
            let Some(deadline) = deadline.filter(|_| matches!(claim, Ok(Claim::InProgress))) else {
                return claim;
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return claim;
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn release(&self, ctx: &mut Ctx<'_>, owner: &str) -> bool {
        let t = Instant::now();
        let released = self
            .timed("release", self.inner.store.release(ctx.key, owner))
            .await;
        ctx.store_time += t.elapsed();
        self.log_release(ctx, Some(released))
    }

    /// Counts and logs a failed handler whose claim was (or could not be) released.
    fn handler_failed<E: std::fmt::Display>(&self, ctx: &Ctx<'_>, err: &E, released: bool) {
        bump(&self.inner.counters.handler_failures);
        decision!(
            Level::ERROR,
            ctx,
            "released",
            error = %err,
            released,
            "PROCESSING_FAILED: Handler failed, claim released so a redelivery can retry"
        );
    }

    /// Counts and logs a panicked handler whose claim was (or could not be) released.
    fn handler_panicked(&self, ctx: &Ctx<'_>, released: bool) {
        bump(&self.inner.counters.handler_panics);
        decision!(
            Level::ERROR,
            ctx,
            "released",
            released,
            "PROCESSING_FAILED: Handler panicked, claim released so a redelivery can retry"
        );
    }

    /// Counts and logs the completion of a processed event.
    fn log_completion(&self, ctx: &Ctx<'_>, done: Option<Result<bool, StoreError>>) {
        let counters = &self.inner.counters;
        bump(&counters.processed);
        match done {
            Some(Ok(true)) => {
                debug_decision!(
                    ctx,
                    "completed",
                    "EVENT_PROCESSED: Event processed and marked completed"
                );
            }
            Some(Ok(false)) | None => {
                bump(&counters.claims_lost);
                decision!(
                    Level::ERROR,
                    ctx,
                    "claim_lost",
                    "CLAIM_LOST: Event processed, but its claim had expired and may have been taken over; raise processing_ttl"
                );
            }
            Some(Err(err)) => {
                bump(&counters.store_errors);
                decision!(
                    Level::ERROR,
                    ctx,
                    "complete_failed",
                    error = %err,
                    "STORE_ERROR: Event processed, but marking it completed failed; a redelivery after the lease may process it again"
                );
            }
        }
    }

    /// Whether a release happened; a failed one is logged.
    fn log_release(&self, ctx: &Ctx<'_>, released: Option<Result<bool, StoreError>>) -> bool {
        match released {
            Some(Ok(released)) => released,
            Some(Err(err)) => {
                bump(&self.inner.counters.store_errors);
                decision!(
                    Level::ERROR,
                    ctx,
                    "release_failed",
                    error = %err,
                    "STORE_ERROR: Releasing the claim failed; it expires after the lease"
                );
                false
            }
            None => false,
        }
    }

    /// The store failed before the claim: apply the fail mode.
    async fn store_failed<F, T, E>(
        &self,
        ctx: &Ctx<'_>,
        err: StoreError,
        handler: F,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        bump(&self.inner.counters.store_errors);
        match self.inner.config.on_store_error() {
            FailMode::Closed => {
                self.refused(ctx, &err);
                Err(GuardError::Store(err))
            }
            FailMode::Open => {
                self.unprotected(ctx, &err);
                match handler.await {
                    Ok(value) => Ok(Outcome::Unprotected(value)),
                    Err(err) => {
                        self.unprotected_failed(ctx, &err);
                        Err(GuardError::Handler(err))
                    }
                }
            }
        }
    }

    /// Counts and logs a run refused because the store failed (`FailMode::Closed`).
    fn refused(&self, ctx: &Ctx<'_>, err: &StoreError) {
        bump(&self.inner.counters.store_refusals);
        decision!(
            Level::ERROR,
            ctx,
            "fail_closed",
            store = self.inner.store.backend_name(),
            error = %err,
            "STORE_ERROR: Idempotency store unavailable, refusing to process (fail closed)"
        );
    }

    /// Counts and logs a run let through unprotected because the store failed
    /// (`FailMode::Open`).
    fn unprotected(&self, ctx: &Ctx<'_>, err: &StoreError) {
        bump(&self.inner.counters.unprotected);
        decision!(
            Level::ERROR,
            ctx,
            "fail_open",
            store = self.inner.store.backend_name(),
            error = %err,
            "STORE_ERROR: Idempotency store unavailable, processing without protection (fail open)"
        );
    }

    /// Counts and logs a handler that failed in an unprotected run.
    fn unprotected_failed<E: std::fmt::Display>(&self, ctx: &Ctx<'_>, err: &E) {
        bump(&self.inner.counters.handler_failures);
        decision!(
            Level::ERROR,
            ctx,
            "failed_unprotected",
            error = %err,
            "PROCESSING_FAILED: Handler failed (unprotected run)"
        );
    }

    /// Polls the handler to completion, catching a panic, and renews the lease every third
    /// of it while the handler runs; `confirmed` is set to when the last renewal the store
    /// confirmed was sent.
    async fn drive<F: Future>(
        &self,
        ctx: &Ctx<'_>,
        owner: &str,
        handler: F,
        confirmed: &mut tokio::time::Instant,
    ) -> Result<F::Output, Box<dyn std::any::Any + Send>> {
        let config = &self.inner.config;
        let lease = config.processing_ttl();
        let period = renewal_period(lease);
        let mut handler = pin!(handler);
        let mut tick = crate::guard_fast::LazyTick::new(crate::store::saturating_deadline(
            ctx.claimed,
            period,
        ));
        let mut renewal: Option<StoreCall<'_, bool>> = None;
        let mut asked = ctx.claimed;
        let mut renewing = true;
        poll_fn(|cx| {
            match catch_unwind(AssertUnwindSafe(|| handler.as_mut().poll(cx))) {
                Ok(Poll::Ready(out)) => return Poll::Ready(Ok(out)),
                Err(panic) => return Poll::Ready(Err(panic)),
                Ok(Poll::Pending) => {}
            }
            loop {
                if let Some(r) = renewal.as_mut() {
                    if let Poll::Ready(result) = r.as_mut().poll(cx) {
                        renewal = None;
                        match result {
                            Ok(true) => {
                                *confirmed = asked;
                                debug_decision!(ctx, "lease_renewed", "LEASE_RENEWED: Claim lease renewed");
                            }
                            Ok(false) => {
                                renewing = false;
                                bump(&self.inner.counters.claims_lost);
                                decision!(
                                    Level::ERROR,
                                    ctx,
                                    "lease_lost",
                                    "LEASE_LOST: The claim expired while the handler ran; another consumer may process the event"
                                );
                            }
                            Err(err) => {
                                bump(&self.inner.counters.store_errors);
                                decision!(
                                    Level::WARN,
                                    ctx,
                                    "lease_renewal_failed",
                                    error = %err,
                                    "STORE_ERROR: Renewing the claim lease failed; will retry"
                                );
                                // Soon, not a period later: two failed renewals a period
                                // apart would lose the claim to a fault of a third of it.
                                tick.reset(crate::store::saturating_deadline(
                                    tokio::time::Instant::now(),
                                    renewal_retry(period),
                                ));
                            }
                        }
                    }
                }
                if !renewing || tick.poll_tick(cx).is_pending() {
                    break;
                }
                tick.reset(crate::store::saturating_deadline(tokio::time::Instant::now(), period));
                if renewal.is_none() {
                    asked = tokio::time::Instant::now();
                    renewal = Some(Box::pin(self.timed(
                        "extend",
                        self.inner.store.extend(ctx.key, owner, lease),
                    )));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the completions owed so far now (deferred ones, `defer_completion`, and
    /// ones waiting for a retry), and returns how many were written. Call it before
    /// shutting down. On an error they stay queued (and are retried until written or
    /// their lease ends); a completion never written is not lost work, but a redelivery of
    /// its event after the lease runs the handler again.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        self.write_owed().await
    }

    /// Whether the circuit breaker currently refuses store calls.
    pub fn circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// A store call bounded by the configured store timeout, behind the circuit breaker.
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let permit = self.inner.breaker.permit()?;
        self.bounded(operation, call, permit).await
    }

    /// [`timed`](Self::timed) for a call that must be tried even while the breaker is open
    /// (writing the completion of a handler that succeeded); its success closes the
    /// breaker, its failure is recorded like any call's.
    async fn timed_ungated<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.bounded(operation, call, crate::breaker::Permit::Call)
            .await
    }

    /// Runs `call` within the store timeout, records it in the metrics and its result in
    /// the breaker under `permit`.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
        permit: crate::breaker::Permit,
    ) -> Result<T, StoreError> {
        let timeout = self.inner.config.store_timeout();
        let started = Instant::now();
        let result = match crate::guard_fast::within(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout { operation, timeout }),
        };
        telemetry::store_call(&self.inner.config, operation, started.elapsed(), &result);
        self.inner
            .breaker
            .record(permit, result.as_ref().map(|_| ()));
        result
    }
}

impl Drop for GuardInner {
    /// Deferred completions still queued when the last clone of a guard goes are written
    /// by a spawned task (or, without a runtime, left to expire after the lease).
    fn drop(&mut self) {
        let queue = match self.deferred.get_mut() {
            Ok(queue) => queue.take_completions(),
            Err(poisoned) => poisoned.into_inner().take_completions(),
        };
        if queue.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                completions = queue.len(),
                "STORE_ERROR: Guard dropped outside a runtime with deferred completions; those claims expire after the lease"
            );
            return;
        };
        let store = Arc::clone(&self.store);
        settle_in_background(
            &runtime,
            self.config.store_timeout(),
            async move { store.complete_many(&queue).await.map(drop) },
            |err| {
                tracing::error!(
                    error = %err,
                    "STORE_ERROR: Writing deferred completions at drop failed; those claims expire after the lease"
                )
            },
        );
    }
}

/// Settles claims whose run is gone (a dropped `run` or `run_batch` future, a dropped
/// guard) in a task of its own: `settle`, bounded by the store timeout, and `failed`
/// called with its error (the claims then expire after their lease).
fn settle_in_background<F, L>(
    runtime: &tokio::runtime::Handle,
    timeout: Duration,
    settle: F,
    failed: L,
) where
    F: Future<Output = Result<(), StoreError>> + Send + 'static,
    L: FnOnce(&StoreError) + Send + 'static,
{
    runtime.spawn(async move {
        let result =
            tokio::time::timeout(timeout, settle)
                .await
                .unwrap_or(Err(StoreError::Timeout {
                    operation: "settle",
                    timeout,
                }));
        if let Err(err) = result {
            failed(&err);
        }
    });
}

/// How often a claim is renewed while its handler runs: every third of the lease.
pub(crate) fn renewal_period(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// How soon a failed renewal is tried again: a tenth of the renewal period (a third of
/// the lease), at most a second. A claim is then lost only when every renewal fails from
/// a period after the last one that succeeded until the lease ends: a fault lasting most
/// of the lease's last two thirds.
pub(crate) fn renewal_retry(period: Duration) -> Duration {
    (period / 10).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// A boxed store call in flight.
type StoreCall<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What to do with a claim if the `run` future is dropped before it finished with it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// The handler had not finished: release the claim.
    Release,
    /// The handler had succeeded: complete the claim.
    Complete,
    /// Already completed or released.
    Nothing,
}

struct PendingClaim {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    owner: String,
    ttl: Duration,
    on_drop: OnDrop,
    /// When the claim's lease ends, as far as the guard knows.
    until: tokio::time::Instant,
    guard: Arc<GuardInner>,
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if self.on_drop == OnDrop::Nothing {
            return;
        }
        bump(&self.guard.counters.cancelled);
        let key = std::mem::take(&mut self.key);
        let owner = std::mem::take(&mut self.owner);
        if self.on_drop == OnDrop::Complete {
            // The handler succeeded: its completion is owed like any the store did not
            // take yet, kept and retried until written or its lease ends.
            tracing::warn!(
                key = key.as_str(),
                action = "complete",
                "RUN_CANCELLED: Run dropped while completing; its completion is kept and retried"
            );
            let refused = StoreError::Unavailable {
                message: "the run was dropped while its completion was in flight".into(),
                source: None,
            };
            let completion = Completion {
                key,
                owner,
                ttl: self.ttl,
            };
            owed::owe(&self.guard, completion, self.until, Some(&refused));
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                key = key.as_str(),
                "RUN_CANCELLED: Run dropped outside a runtime; the claim expires after the lease"
            );
            return;
        };
        let store = Arc::clone(&self.store);
        tracing::warn!(
            key = key.as_str(),
            action = "release",
            "RUN_CANCELLED: Run dropped mid-flight; settling its claim in the background"
        );
        let logged_key = key.clone();
        settle_in_background(
            &runtime,
            self.guard.config.store_timeout(),
            async move { store.release(&key, &owner).await.map(drop) },
            move |err| {
                tracing::error!(
                    key = logged_key.as_str(),
                    error = %err,
                    "STORE_ERROR: Settling a cancelled run's claim failed; it expires after the lease"
                )
            },
        );
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
    crate::guard_fast::owner_token(pid, nonce, n)
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
