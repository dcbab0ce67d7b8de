//! `Guard::run`: identify, claim, run the handler once (its lease kept alive), complete or
//! release, observe the decision.

use std::future::Future;
use std::panic::resume_unwind;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::cancel::{OnDrop, PendingClaim};
use super::deferred::lease_end;
use super::lease::Ended;
use super::outcome::{Ctx, Decision, Outcome, Scope};
use super::stored::Keep;
use super::{new_owner, Guard};
use crate::breaker::Permit;
use crate::config::FailMode;
use crate::envelope::EventEnvelope;
use crate::error::{GuardError, StoreError};
use crate::identify::{owner_with, Identify};
use crate::store::{Claim, Completion};
use crate::telemetry::RunProbe;

impl Guard {
    /// Runs `handler` for `envelope` unless the event was processed before.
    ///
    /// - New event: claims it with a lease of [`lease`](crate::IdempotencyConfig::lease),
    ///   polls `handler` to completion (renewing the lease every third of it; a failed
    ///   renewal is retried every tenth of that, at most every second), marks it completed
    ///   for the event type's TTL and returns [`Outcome::Processed`]. The completion is
    ///   attempted even while the circuit breaker is open; if the store does not take it
    ///   (an outage, a timeout, this future dropped while completing), `Processed` is still
    ///   returned and the completion is kept and retried with backoff in the background
    ///   until it is written or its lease ends (counted from the last renewal the store
    ///   confirmed; [`GuardStats::completions_retried`](super::GuardStats::completions_retried)
    ///   and [`GuardStats::completions_abandoned`](super::GuardStats::completions_abandoned);
    ///   logged as `complete_retrying` and `complete_abandoned`). A completion abandoned
    ///   that way leaves the claim to expire, and a redelivery after the lease runs the
    ///   event again.
    /// - Completed before: returns [`Outcome::Duplicate`]; `handler` is never polled.
    /// - Claimed by another live owner: [`GuardError::InProgress`] (after waiting up to
    ///   `in_progress_wait` for it to finish, if configured).
    /// - `handler` returns `Err`: releases the claim (owner-checked) and returns
    ///   [`GuardError::Handler`]; a redelivery runs it again, the guard never does.
    /// - `handler` panics: releases the claim, then resumes the panic.
    /// - This future is dropped while the handler runs: the claim is released by a spawned
    ///   task (or, without a runtime, expires after the lease).
    /// - The store fails (an outage, [`StoreError::is_outage`]): [`Outcome::Unprotected`]
    ///   with `FailMode::Open`, [`GuardError::Store`] with `FailMode::Closed`.
    /// - The event has no identity, or the store refuses its record for its data (a key
    ///   too long, a record of another kind at its key): [`GuardError::InvalidEvent`],
    ///   whatever the fail mode; such a refusal never counts toward the circuit breaker.
    /// - The key is recorded (completed, or claimed by a live owner) with another payload
    ///   fingerprint than this delivery's: [`GuardError::Conflict`]; `handler` is never
    ///   polled and the record is untouched (see [`Identity`](crate::Identity)).
    /// - The event is older than its [maximum age](crate::ConfigBuilder::max_event_age):
    ///   [`GuardError::Stale`], or it runs, per [`StalePolicy`](crate::StalePolicy).
    /// - The guard is [switched off](crate::ConfigBuilder::disabled): `handler` runs and
    ///   [`Outcome::Unprotected`] is returned, with no store call.
    ///
    /// `event` is an [`EventEnvelope`] (identified under the configured
    /// [`IdentityRule`](crate::IdentityRule)) or an [`Identity`](crate::Identity).
    ///
    /// Must run inside a Tokio runtime with time enabled.
    ///
    /// Each call is one `tracing` span, `eventonce.run`, with the decision in its fields
    /// (`outcome`, `duplicate`, `handler_ran`), and, with the `metrics` feature, counted
    /// and timed (see [`RUNS_TOTAL`](crate::RUNS_TOTAL)).
    ///
    /// # Errors
    ///
    /// [`GuardError::InProgress`], [`GuardError::Handler`], [`GuardError::Store`],
    /// [`GuardError::InvalidEvent`], [`GuardError::Conflict`] and [`GuardError::Stale`], as
    /// listed above.
    ///
    /// # Panics
    ///
    /// Resumes the handler's panic, after its claim is released.
    pub async fn run<I, F, T, E>(&self, event: &I, handler: F) -> Result<Outcome<T>, GuardError<E>>
    where
        I: Identify + ?Sized,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let view = event.view();
        self.traced(&view, || self.run_untraced(event, &view, handler, None))
            .await
    }

    /// Runs the future `run` makes (a run of `envelope`) inside the run's span, then
    /// records its answer on the span and in the metrics: what [`run`](Self::run) and
    /// [`run_in_transaction`](Self::run_in_transaction) add to their untraced forms.
    ///
    /// `run` makes the future here rather than being it: a future passed to an `async fn`
    /// is kept in its state twice (as the argument and as the future awaited), which
    /// doubled the size of every run's future (4,440 bytes for a new event).
    pub(super) async fn traced<T, E, R>(
        &self,
        envelope: &EventEnvelope,
        run: impl FnOnce() -> R,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        R: Future<Output = Result<Outcome<T>, GuardError<E>>>,
    {
        let probe = RunProbe::start(&self.inner.config, envelope);
        let result = run().instrument(probe.span().clone()).await;
        probe.finish(&result);
        result
    }

    /// [`run`](Self::run) without its span and metrics; with `keep`, the handler's result
    /// is kept in the completed record and a duplicate's is read back into it.
    pub(super) async fn run_untraced<I, F, T, E>(
        &self,
        event: &I,
        envelope: &EventEnvelope,
        handler: F,
        mut keep: Option<&mut Keep<T>>,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        I: Identify + ?Sized,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        if self.inner.config.disabled() {
            return Self::run_disabled(handler).await;
        }
        let started = Instant::now();
        let resolved = self.identify(event, envelope)?;
        self.check_age(envelope, &resolved)?;
        let (hash, key) = (&resolved.hash, &resolved.key);
        let mut ctx = Ctx::new(&self.inner.config, envelope, hash, key, started);
        let fingerprint = resolved.fingerprint.as_deref();
        let owner = owner_with(new_owner(), fingerprint);
        match self.claim(&mut ctx, &owner).await {
            Ok(Claim::Acquired) => self.observe(&ctx, Decision::Claimed),
            Ok(Claim::Completed) => {
                let conflict = match keep.as_deref_mut() {
                    Some(keep) => {
                        let (conflict, found) =
                            self.conflict_and_result(&mut ctx, fingerprint).await;
                        keep.found = found;
                        conflict
                    }
                    None => self.conflict(&mut ctx, fingerprint).await,
                };
                if let Some(conflict) = conflict {
                    return Err(conflict);
                }
                self.observe(&ctx, Decision::Duplicate);
                return Ok(Outcome::Duplicate);
            }
            Ok(Claim::InProgress) => {
                if let Some(conflict) = self.conflict(&mut ctx, fingerprint).await {
                    return Err(conflict);
                }
                self.observe(&ctx, Decision::InProgress);
                return Err(GuardError::InProgress);
            }
            Err(err) => return self.store_failed(&ctx, err, handler).await,
        }
        // From here on the claim is ours: whatever happens, it is completed or released.
        let mut pending = PendingClaim::new(&self.inner, &ctx, owner);
        let mut confirmed = ctx.claimed;
        let ended = self
            .drive(&ctx, &pending.owner, handler, &mut confirmed)
            .await;
        // A completion not written at once is retried until the claim's lease ends.
        pending.until = lease_end(confirmed, self.inner.config.lease());
        if let (Some(keep), Ok(Ok(value))) = (keep, &ended) {
            pending.result = self.encode_result(&ctx, keep.encode, value);
        }
        self.settle(&mut ctx, &mut pending, ended).await
    }

    /// Settles a claim whose handler ended: completes it (or defers or owes the completion)
    /// after a success, releases it after a failure or a panic.
    async fn settle<T, E>(
        &self,
        ctx: &mut Ctx<'_>,
        pending: &mut PendingClaim,
        ended: Ended<T, E>,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        E: std::fmt::Display,
    {
        match ended {
            Ok(Ok(value)) => {
                self.complete(ctx, pending).await;
                Ok(Outcome::Processed(value))
            }
            Ok(Err(error)) => {
                let released = self.release(ctx, &pending.owner).await;
                pending.on_drop = OnDrop::Nothing;
                let failed = Decision::HandlerFailed {
                    error: &error,
                    released,
                };
                self.observe(&*ctx, failed);
                Err(GuardError::Handler(error))
            }
            Err(panic) => {
                let released = self.release(ctx, &pending.owner).await;
                pending.on_drop = OnDrop::Nothing;
                self.observe(&*ctx, Decision::HandlerPanicked { released });
                resume_unwind(panic)
            }
        }
    }

    /// Completes the claim of a handler that succeeded: deferred with `defer_completion`,
    /// written now otherwise (attempted even while the breaker is open: the effect has
    /// happened), owed and retried if the store does not take it.
    async fn complete(&self, ctx: &mut Ctx<'_>, pending: &mut PendingClaim) {
        let (key, ttl) = (ctx.key, ctx.ttl);
        let completion = |pending: &mut PendingClaim| Completion {
            key: key.to_owned(),
            owner: std::mem::take(&mut pending.owner),
            ttl,
            result: pending.result.take(),
        };
        if self.inner.config.deferred_completion().is_some() {
            pending.on_drop = OnDrop::Nothing;
            self.observe(&*ctx, Decision::CompletionDeferred);
            self.owe(completion(pending), pending.until, None);
            return;
        }
        // Dropped while the store is asked: the completion (and its result) is owed. Tried
        // even while the breaker is open (`Permit::Call`): its success closes the breaker,
        // its failure is recorded like any call's.
        pending.on_drop = OnDrop::Complete;
        let sent = tokio::time::Instant::now();
        let store = &self.inner.store;
        let (done, took) = match &pending.result {
            Some(result) => {
                let write = store.complete_with_result(ctx.key, &pending.owner, ctx.ttl, result);
                self.store_call_from("complete", write, Permit::Call, sent)
                    .await
            }
            None => {
                let write = store.complete(ctx.key, &pending.owner, ctx.ttl);
                self.store_call_from("complete", write, Permit::Call, sent)
                    .await
            }
        };
        ctx.store_time += took;
        pending.on_drop = OnDrop::Nothing;
        match done {
            Ok(true) => self.observe(&*ctx, Decision::Completed),
            Ok(false) => self.observe(&*ctx, Decision::CompletionLost),
            Err(err) => {
                self.observe(&*ctx, Decision::CompletionOwed);
                self.observe(Scope::Guard, Decision::StoreFailed);
                self.owe(completion(pending), pending.until, Some(&err));
            }
        }
    }

    /// Releases the claim (owner-checked): whether it was released; a failure is observed.
    async fn release(&self, ctx: &mut Ctx<'_>, owner: &str) -> bool {
        let release = self.inner.store.release(ctx.key, owner);
        let released = self.timed_call(ctx, "release", release).await;
        self.released(ctx, released)
    }

    /// Whether a release happened; a failed one is observed.
    pub(super) fn released(&self, ctx: &Ctx<'_>, released: Result<bool, StoreError>) -> bool {
        released.unwrap_or_else(|error| {
            self.observe(ctx, Decision::ReleaseFailed { error: &error });
            false
        })
    }

    /// The store failed before the claim: refuses the run (`FailMode::Closed`) or runs the
    /// handler without protection (`FailMode::Open`).
    async fn store_failed<F, T, E>(
        &self,
        ctx: &Ctx<'_>,
        error: StoreError,
        handler: F,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        if !error.is_outage() {
            // The event's own data: no fail mode applies, it never runs unprotected.
            return Err(self.refused_by_store(ctx, &error));
        }
        self.observe(Scope::Guard, Decision::StoreFailed);
        if !self.fail_open(ctx, &error) {
            return Err(GuardError::Store(error));
        }
        match handler.await {
            Ok(value) => Ok(Outcome::Unprotected(value)),
            Err(error) => {
                self.observe(ctx, Decision::UnprotectedFailed { error: &error });
                Err(GuardError::Handler(error))
            }
        }
    }

    /// Observes the fail mode's decision for an event whose claim failed with `error`:
    /// whether its handler runs unprotected (`FailMode::Open`).
    pub(super) fn fail_open(&self, ctx: &Ctx<'_>, error: &StoreError) -> bool {
        let store = self.inner.store.backend_name();
        match self.inner.config.on_store_error() {
            FailMode::Closed => {
                self.observe(ctx, Decision::Refused { store, error });
                false
            }
            FailMode::Open => {
                self.observe(ctx, Decision::Unprotected { store, error });
                true
            }
        }
    }

    /// `try_claim`, waiting for another owner's claim up to `in_progress_wait`; owed
    /// completions travel with it.
    async fn claim(&self, ctx: &mut Ctx<'_>, owner: &str) -> Result<Claim, StoreError> {
        // Read the clock only when there is a wait to bound.
        let wait = self.inner.config.in_progress_wait();
        let deadline = (!wait.is_zero())
            .then(|| crate::store::saturating_deadline(tokio::time::Instant::now(), wait));
        let mut backoff = Duration::from_millis(10);
        let mut carried = self.owes().then(|| self.take_owed());
        if carried.as_ref().is_some_and(|c| c.holds(ctx.key)) {
            // A redelivery of an event whose completion is still owed: complete first.
            let t = tokio::time::Instant::now();
            if let Some(owed) = carried.take() {
                // Boxed, as every path of owed completions here: rare, and large.
                let _ = Box::pin(self.write_carried(owed)).await;
            }
            ctx.store_time += t.elapsed();
        }
        loop {
            // One clock read: the lease counts from it, the call is timed and bounded by it.
            let sent = tokio::time::Instant::now();
            ctx.claimed = sent;
            let owed = carried.take().filter(|c| !c.is_empty());
            let (claim, took) = self.claim_once(ctx.key, owner, owed, sent).await;
            ctx.store_time += took;
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

    /// One claim attempt, sent at `sent`: `try_claim`, or `complete_then_claim` carrying
    /// `owed`. The answer, and how long the store took.
    async fn claim_once(
        &self,
        key: &str,
        owner: &str,
        owed: Option<super::deferred::Carried>,
        sent: tokio::time::Instant,
    ) -> (Result<Claim, StoreError>, Duration) {
        let store = &self.inner.store;
        let lease = self.inner.config.lease();
        let Some(owed) = owed else {
            let claim = store.try_claim(key, owner, lease);
            return self.gated_call_from("try_claim", claim, sent).await;
        };
        // Put back if this call fails or is dropped (`Carried`'s drop).
        let both = store.complete_then_claim(owed.completions(), key, owner, lease);
        let (answer, took) = self
            .gated_call_from("complete_then_claim", both, sent)
            .await;
        match answer {
            Ok((done, claim)) => {
                // The claim stands whatever became of the completions.
                let _ = Box::pin(self.settle_carried(owed, done)).await;
                (Ok(claim), took)
            }
            Err(err) => {
                // Nothing known of the completions: all go back to the queue (a retry of
                // one that was written finds it completed).
                let _ = Box::pin(self.settle_carried(owed, Err(err.again()))).await;
                (Err(err), took)
            }
        }
    }
}
