//! `Guard::run_batch`: a whole batch of events in two store round trips.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::{self, FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tracing::{Instrument, Level};

use super::{bump, new_owner, settle_in_background, Ctx, Guard, GuardInner, OnDrop, Outcome};
use crate::envelope::EventEnvelope;
use crate::error::{GuardError, StoreError};
use crate::store::{Claim, Completion};
use crate::telemetry;

/// One event's answer in a batch.
type BatchResult<T, E> = Result<Outcome<T>, GuardError<E>>;

/// A handler's end: its result, or the panic it raised.
type Ended<T, E> = Result<Result<T, E>, Box<dyn std::any::Any + Send>>;

impl Guard {
    /// Runs `handler` for each event of `envelopes` that was not processed before, with two
    /// store round trips for the whole batch (one claim call, one completion call), and
    /// returns each event's answer in the order of `envelopes`.
    ///
    /// Each event gets what [`Guard::run`] would give it: `Processed`, `Duplicate`,
    /// `Unprotected` (store down, `FailMode::Open`), or an error (`InProgress`, `Handler`,
    /// `Store`, `InvalidEvent`). An event that cannot be identified fails alone; the rest
    /// of the batch goes on.
    ///
    /// - The new events' handlers run concurrently in this task, at most
    ///   [`batch_concurrency`](crate::ConfigBuilder::batch_concurrency) at once; the claims
    ///   of all of them (queued, running, and those that already succeeded, whose
    ///   completion waits for the batch's end) are renewed together while any runs.
    /// - Then the successes are completed and the failures released, in one round trip
    ///   each, sent at once.
    /// - The same event twice in one batch runs once: the later copies answer `Duplicate`
    ///   when the first was processed, `InProgress` when it was not (redeliver them).
    /// - A handler that panics has its claim released; the other events are settled, then
    ///   the panic is resumed.
    /// - This future dropped mid-batch: the claims are settled by a spawned task (completed
    ///   for handlers that had succeeded, released for the rest).
    /// - `in_progress_wait` does not apply: an event another consumer holds answers
    ///   `InProgress` at once.
    ///
    /// ```
    /// use eventonce_core::{EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, Outcome};
    ///
    /// async fn consume(guard: &Guard, batch: &[EventEnvelope]) {
    ///     let answers = guard
    ///         .run_batch(batch, |event| async move {
    ///             // apply the event's effect
    ///             Ok::<_, std::io::Error>(event.event_type.len())
    ///         })
    ///         .await;
    ///     for (event, answer) in batch.iter().zip(answers) {
    ///         match answer {
    ///             Ok(Outcome::Processed(_) | Outcome::Duplicate | Outcome::Unprotected(_)) => {}
    ///             Err(err) => eprintln!("{:?}: redeliver ({err})", event.event_id),
    ///         }
    ///     }
    /// }
    /// ```
    ///
    /// Each call is one `tracing` span, `eventonce.run_batch` (with the batch's size), and,
    /// with the `metrics` feature, each event is counted as a `run` is.
    pub async fn run_batch<'a, H, F, T, E>(
        &self,
        envelopes: &'a [EventEnvelope],
        handler: H,
    ) -> Vec<BatchResult<T, E>>
    where
        H: FnMut(&'a EventEnvelope) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let span = tracing::info_span!(
            "eventonce.run_batch",
            service = self.inner.config.service_name(),
            events = envelopes.len(),
        );
        let answers = self
            .run_batch_once(envelopes, handler)
            .instrument(span)
            .await;
        telemetry::batch_outcomes(&self.inner.config, envelopes, &answers);
        answers
    }

    /// [`run_batch`](Self::run_batch) without its span and metrics.
    async fn run_batch_once<'a, H, F, T, E>(
        &self,
        envelopes: &'a [EventEnvelope],
        mut handler: H,
    ) -> Vec<BatchResult<T, E>>
    where
        H: FnMut(&'a EventEnvelope) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let started = Instant::now();
        let config = &self.inner.config;
        let mut answers: Vec<Option<BatchResult<T, E>>> = envelopes.iter().map(|_| None).collect();

        // Identify every event; the first copy of each key is the one that runs.
        let mut ids: Vec<Option<(String, String)>> = Vec::with_capacity(envelopes.len());
        for (i, envelope) in envelopes.iter().enumerate() {
            match self.identify::<E>(envelope) {
                Ok(id) => ids.push(Some(id)),
                Err(err) => {
                    ids.push(None);
                    answers[i] = Some(Err(err));
                }
            }
        }
        let mut first_of: HashMap<&str, usize, _> =
            HashMap::with_capacity_and_hasher(envelopes.len(), crate::identity::seeded_hasher());
        let mut unique = Vec::new();
        let mut copies = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if let Some((_, key)) = id {
                match first_of.get(key.as_str()) {
                    Some(&first) => copies.push((i, first)),
                    None => {
                        first_of.insert(key, i);
                        unique.push(i);
                    }
                }
            }
        }
        let mut ctxs: Vec<Option<Ctx<'_>>> = ids
            .iter()
            .zip(envelopes)
            .map(|(id, envelope)| {
                id.as_ref()
                    .map(|(hash, key)| Ctx::new(config, envelope, hash, key, started))
            })
            .collect();
        let key_of = |i: usize| ids[i].as_ref().map(|(_, k)| k.clone()).unwrap_or_default();

        // One round trip claims the batch.
        let owner = new_owner();
        let keys: Vec<String> = unique.iter().map(|&i| key_of(i)).collect();
        let t = Instant::now();
        let claimed = tokio::time::Instant::now();
        let claims = if keys.is_empty() {
            Ok(Vec::new())
        } else {
            self.timed(
                "try_claim_many",
                self.inner
                    .store
                    .try_claim_many(&keys, &owner, config.processing_ttl()),
            )
            .await
        };
        let claim_time = t.elapsed();
        for ctx in ctxs.iter_mut().flatten() {
            ctx.store_time += claim_time;
        }
        let claims = match claims {
            Ok(claims) if claims.len() == keys.len() => Some(claims),
            Ok(claims) => {
                let err = StoreError::InvalidData {
                    key: keys[0].clone(),
                    detail: format!("{} answers to {} claims", claims.len(), keys.len()),
                };
                self.batch_store_failed(err, &unique, &ctxs, &mut answers);
                None
            }
            Err(err) => {
                self.batch_store_failed(err, &unique, &ctxs, &mut answers);
                None
            }
        };
        let Some(claims) = claims else {
            // The store failed: FailMode::Open runs every handler unprotected (Closed has
            // answered them all already).
            let open: Vec<usize> = unique
                .iter()
                .copied()
                .filter(|&i| answers[i].is_none())
                .collect();
            self.run_unprotected(envelopes, &open, &ctxs, &mut handler, &mut answers)
                .await;
            self.answer_copies(&copies, &ctxs, &mut answers);
            return answers.into_iter().map(finish).collect();
        };

        let mut acquired = Vec::new();
        for (&i, claim) in unique.iter().zip(claims) {
            let Some(ctx) = ctxs[i].as_ref() else {
                continue;
            };
            match claim {
                Claim::Acquired => {
                    debug_decision!(
                        ctx,
                        "claimed",
                        "CLAIM_ACQUIRED: Event claimed for processing"
                    );
                    acquired.push(i);
                }
                Claim::Completed => answers[i] = Some(Ok(self.duplicate(ctx))),
                Claim::InProgress => answers[i] = Some(Err(self.in_progress(ctx))),
            }
        }

        // From here on the claims are ours: whatever happens, they are settled.
        let mut pending = PendingBatch {
            guard: Arc::clone(&self.inner),
            owner,
            keys: acquired.iter().map(|&i| key_of(i)).collect(),
            ttls: acquired
                .iter()
                .map(|&i| ctxs[i].as_ref().map(|c| c.ttl).unwrap_or_default())
                .collect(),
            settle: vec![OnDrop::Release; acquired.len()],
            confirmed: claimed,
        };
        let ended = self
            .drive_batch(envelopes, &acquired, &mut handler, &mut pending)
            .await;

        // One round trip completes the successes, one (sent at the same time) releases
        // the failures.
        let mut completions = Vec::new();
        let mut releases = Vec::new();
        for (slot, ended) in ended.iter().enumerate() {
            let key = pending.keys[slot].clone();
            match ended {
                Some(Ok(Ok(_))) => completions.push(Completion {
                    key,
                    owner: pending.owner.clone(),
                    ttl: pending.ttls[slot],
                }),
                Some(_) => releases.push(key),
                None => {} // never started: the claim is not ours any more
            }
        }
        let t = Instant::now();
        let (completed, released) = futures_util::future::join(
            async {
                if completions.is_empty() {
                    return Ok(Vec::new());
                }
                // Attempted even while the breaker is open: the effects have happened.
                self.timed_ungated(
                    "complete_many",
                    self.inner.store.complete_many(&completions),
                )
                .await
            },
            async {
                if releases.is_empty() {
                    return Ok(Vec::new());
                }
                self.timed(
                    "release_many",
                    self.inner.store.release_many(&releases, &pending.owner),
                )
                .await
            },
        )
        .await;
        pending.settle.fill(OnDrop::Nothing);
        let settle_time = t.elapsed();
        for &i in &acquired {
            if let Some(ctx) = ctxs[i].as_mut() {
                ctx.store_time += settle_time;
            }
        }

        // Completions the store did not take are owed: kept and retried until written or
        // their lease ends.
        // A partial failure (a cluster shard) answers for some keys: exactly the others
        // are owed.
        let mut completed = match completed {
            Ok(flags) => flags.into_iter().map(Some).collect::<Vec<_>>(),
            Err(err) => {
                bump(&self.inner.counters.store_errors);
                let answers = err.answers(completions.len());
                for (completion, answer) in completions.into_iter().zip(&answers) {
                    if answer.is_none() {
                        let until =
                            super::owed::lease_end(pending.confirmed, config.processing_ttl());
                        self.owe(completion, until, Some(&err));
                    }
                }
                answers
            }
        }
        .into_iter();
        let mut released = match released {
            Ok(flags) => flags.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(err) => err
                .answers(releases.len())
                .into_iter()
                .map(|a| a.ok_or_else(|| err.again()))
                .collect(),
        }
        .into_iter();
        let mut panic = None;
        for (&i, ended) in acquired.iter().zip(ended) {
            let Some(ctx) = ctxs[i].as_ref() else {
                continue;
            };
            answers[i] = Some(match ended {
                Some(Ok(Ok(value))) => {
                    match completed.next() {
                        Some(Some(done)) => self.log_completion(ctx, Some(Ok(done))),
                        // Owed and logged above (or an answer missing: counted all the same).
                        _ => bump(&self.inner.counters.processed),
                    }
                    Ok(Outcome::Processed(value))
                }
                Some(Ok(Err(err))) => {
                    let released = self.log_release(ctx, released.next());
                    self.handler_failed(ctx, &err, released);
                    Err(GuardError::Handler(err))
                }
                Some(Err(payload)) => {
                    let released = self.log_release(ctx, released.next());
                    self.handler_panicked(ctx, released);
                    panic.get_or_insert(payload);
                    Err(GuardError::InProgress)
                }
                None => {
                    // Never started: its claim was found lost first (logged then). It is
                    // another consumer's now; answered in progress, so it is redelivered.
                    Err(GuardError::InProgress)
                }
            });
        }
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
        self.answer_copies(&copies, &ctxs, &mut answers);
        answers.into_iter().map(finish).collect()
    }

    /// Polls the handlers of the claimed events, at most `batch_concurrency` at once, each
    /// panic caught, renewing every claim still unsettled every third of the lease.
    async fn drive_batch<'a, H, F, T, E>(
        &self,
        envelopes: &'a [EventEnvelope],
        acquired: &[usize],
        handler: &mut H,
        pending: &mut PendingBatch,
    ) -> Vec<Option<Ended<T, E>>>
    where
        H: FnMut(&'a EventEnvelope) -> F,
        F: Future<Output = Result<T, E>>,
    {
        let config = &self.inner.config;
        let lease = config.processing_ttl();
        let period = super::renewal_period(lease);
        let bound = config.batch_concurrency();
        let mut ended: Vec<Option<Ended<T, E>>> = acquired.iter().map(|_| None).collect();
        // Claims found lost (by a renewal, or by going a whole lease unconfirmed) before
        // their handler started: those handlers never start.
        let mut lost = vec![false; acquired.len()];
        let mut queue = acquired.iter().enumerate();
        let mut running = FuturesUnordered::new();
        let mut tick = pin!(tokio::time::sleep(period));
        let mut renewing = true;
        loop {
            while running.len() < bound {
                let Some((slot, &i)) = queue.next() else {
                    break;
                };
                let expiry = crate::store::saturating_deadline(pending.confirmed, lease);
                if !lost[slot] && tokio::time::Instant::now() >= expiry {
                    // No renewal has confirmed the claims for a whole lease: expired.
                    lost[slot] = true;
                    self.queued_claim_lost(&pending.keys[slot]);
                }
                if lost[slot] {
                    pending.settle[slot] = OnDrop::Nothing;
                    continue;
                }
                match catch_unwind(AssertUnwindSafe(|| handler(&envelopes[i]))) {
                    Ok(future) => running
                        .push(async move { (slot, AssertUnwindSafe(future).catch_unwind().await) }),
                    Err(payload) => ended[slot] = Some(Err(payload)),
                }
            }
            if running.is_empty() {
                break;
            }
            let next = poll_fn(|cx| {
                if let Poll::Ready(Some(done)) = running.poll_next_unpin(cx) {
                    return Poll::Ready(Some(done));
                }
                if tick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            match next {
                Some((slot, result)) => {
                    if matches!(result, Ok(Ok(_))) {
                        pending.settle[slot] = OnDrop::Complete;
                    }
                    ended[slot] = Some(result);
                }
                None => {
                    tick.as_mut().reset(crate::store::saturating_deadline(
                        tokio::time::Instant::now(),
                        period,
                    ));
                    if renewing {
                        // Every claim still to complete: queued and running handlers',
                        // and those of handlers that succeeded (their completion waits
                        // for the batch's end, which a slower handler may put off for
                        // longer than the lease).
                        let slots: Vec<usize> = (0..ended.len())
                            .filter(|&s| !lost[s] && matches!(ended[s], None | Some(Ok(Ok(_)))))
                            .collect();
                        let keys: Vec<String> =
                            slots.iter().map(|&s| pending.keys[s].clone()).collect();
                        let asked = tokio::time::Instant::now();
                        let renewed = self.renew_batch(keys, &pending.owner, lease).await;
                        if renewed.iter().all(Option::is_some) {
                            pending.confirmed = asked;
                        } else {
                            // A renewal failed: try again soon, not a period later.
                            tick.as_mut().reset(crate::store::saturating_deadline(
                                tokio::time::Instant::now(),
                                super::renewal_retry(period),
                            ));
                        }
                        for (&slot, renewed) in slots.iter().zip(renewed) {
                            if renewed == Some(false) {
                                lost[slot] = true;
                            }
                        }
                        renewing = slots.iter().any(|&s| !lost[s]);
                    }
                }
            }
        }
        ended
    }

    /// Logs and counts a queued event whose claim was found lost before its handler
    /// started.
    fn queued_claim_lost(&self, key: &str) {
        bump(&self.inner.counters.claims_lost);
        tracing::error!(
            service = self.inner.config.service_name(),
            key,
            action = "claim_lost",
            "CLAIM_LOST: The claim of a queued event expired before its handler started; not starting it, redeliver it"
        );
    }

    /// Renews the claims of the batch whose handlers have not ended: for each key, whether
    /// it is still ours, or `None` where its renewal failed (nothing learned).
    async fn renew_batch(
        &self,
        keys: Vec<String>,
        owner: &str,
        lease: Duration,
    ) -> Vec<Option<bool>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let renewed = self
            .timed(
                "extend_many",
                self.inner.store.extend_many(&keys, owner, lease),
            )
            .await;
        let service = self.inner.config.service_name();
        let answers = match renewed {
            Ok(flags) => flags.into_iter().map(Some).collect(),
            Err(err) => {
                bump(&self.inner.counters.store_errors);
                tracing::warn!(
                    service,
                    keys = keys.len(),
                    action = "lease_renewal_failed",
                    error = %err,
                    "STORE_ERROR: Renewing the batch's claim leases failed; will retry"
                );
                err.answers(keys.len())
            }
        };
        for (key, renewed) in keys.iter().zip(&answers) {
            if *renewed == Some(false) {
                bump(&self.inner.counters.claims_lost);
                tracing::error!(
                    service,
                    key = key.as_str(),
                    action = "lease_lost",
                    "LEASE_LOST: The claim expired while the handler ran; another consumer may process the event"
                );
            }
        }
        answers
    }

    /// The claim call of a batch failed: answers every event per the fail mode (those
    /// `FailMode::Open` runs are left unanswered for [`Guard::run_unprotected`]).
    fn batch_store_failed<T, E>(
        &self,
        err: StoreError,
        unique: &[usize],
        ctxs: &[Option<Ctx<'_>>],
        answers: &mut [Option<BatchResult<T, E>>],
    ) {
        bump(&self.inner.counters.store_errors);
        for &i in unique {
            let Some(ctx) = ctxs[i].as_ref() else {
                continue;
            };
            match self.inner.config.on_store_error() {
                crate::FailMode::Closed => {
                    self.refused(ctx, &err);
                    answers[i] = Some(Err(GuardError::Store(err.again())));
                }
                crate::FailMode::Open => self.unprotected(ctx, &err),
            }
        }
    }

    /// Runs the handlers of `open` without protection, at most `batch_concurrency` at once.
    async fn run_unprotected<'a, H, F, T, E>(
        &self,
        envelopes: &'a [EventEnvelope],
        open: &[usize],
        ctxs: &[Option<Ctx<'_>>],
        handler: &mut H,
        answers: &mut [Option<BatchResult<T, E>>],
    ) where
        H: FnMut(&'a EventEnvelope) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let results: Vec<(usize, Result<T, E>)> = stream::iter(open.iter().copied())
            .map(|i| {
                let future = handler(&envelopes[i]);
                async move { (i, future.await) }
            })
            .buffer_unordered(self.inner.config.batch_concurrency())
            .collect()
            .await;
        for (i, result) in results {
            answers[i] = Some(match result {
                Ok(value) => Ok(Outcome::Unprotected(value)),
                Err(err) => {
                    if let Some(ctx) = ctxs[i].as_ref() {
                        self.unprotected_failed(ctx, &err);
                    }
                    Err(GuardError::Handler(err))
                }
            });
        }
    }

    /// Later copies of an event in the batch: a duplicate of a first copy that was
    /// processed (or skipped as a duplicate), in progress otherwise.
    fn answer_copies<T, E>(
        &self,
        copies: &[(usize, usize)],
        ctxs: &[Option<Ctx<'_>>],
        answers: &mut [Option<BatchResult<T, E>>],
    ) {
        for &(copy, first) in copies {
            let Some(ctx) = ctxs[copy].as_ref() else {
                continue;
            };
            answers[copy] = Some(match &answers[first] {
                Some(Ok(_)) => Ok(self.duplicate(ctx)),
                Some(Err(GuardError::Store(err))) => Err(GuardError::Store(err.again())),
                _ => Err(self.in_progress(ctx)),
            });
        }
    }
}

/// Every slot of a finished batch holds an answer; an empty one would be a bug, answered
/// as in progress (redeliver) rather than a panic.
fn finish<T, E>(answer: Option<BatchResult<T, E>>) -> BatchResult<T, E> {
    answer.unwrap_or(Err(GuardError::InProgress))
}

/// The claims of a batch still to settle if its future is dropped.
struct PendingBatch {
    guard: Arc<GuardInner>,
    owner: String,
    keys: Vec<String>,
    ttls: Vec<Duration>,
    settle: Vec<OnDrop>,
    /// When the last claim or renewal of the batch that the store confirmed was sent.
    confirmed: tokio::time::Instant,
}

impl Drop for PendingBatch {
    fn drop(&mut self) {
        if self.settle.iter().all(|s| *s == OnDrop::Nothing) {
            return;
        }
        bump(&self.guard.counters.cancelled);
        let mut completions = Vec::new();
        let mut releases = Vec::new();
        for ((key, ttl), settle) in self.keys.drain(..).zip(&self.ttls).zip(&self.settle) {
            match settle {
                OnDrop::Complete => completions.push(Completion {
                    key,
                    owner: self.owner.clone(),
                    ttl: *ttl,
                }),
                OnDrop::Release => releases.push(key),
                OnDrop::Nothing => {}
            }
        }
        // Succeeded handlers' completions are owed: kept and retried until written.
        let refused = StoreError::Unavailable {
            message: "the batch was dropped before its completions were written".into(),
            source: None,
        };
        let until = super::owed::lease_end(self.confirmed, self.guard.config.processing_ttl());
        for completion in completions.drain(..) {
            super::owed::owe(&self.guard, completion, until, Some(&refused));
        }
        if releases.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                keys = releases.len(),
                "RUN_CANCELLED: Batch dropped outside a runtime; its claims expire after the lease"
            );
            return;
        };
        tracing::warn!(
            release = releases.len(),
            "RUN_CANCELLED: Batch dropped mid-flight; releasing its unfinished claims in the background"
        );
        let store = Arc::clone(&self.guard.store);
        let owner = std::mem::take(&mut self.owner);
        settle_in_background(
            &runtime,
            self.guard.config.store_timeout(),
            async move { store.release_many(&releases, &owner).await.map(drop) },
            |err| {
                tracing::error!(
                    error = %err,
                    "STORE_ERROR: Settling a cancelled batch's claims failed; they expire after the lease"
                )
            },
        );
    }
}
