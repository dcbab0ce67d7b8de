//! `Guard::run_batch`: a whole batch of events in two store round trips per chunk of the
//! store's `max_batch_chunk` keys, in steps: identify (first copies of each key), claim
//! (one call per chunk), drive (handlers and one lease renewal for all), settle (one
//! completion call and one release call per chunk), observe, then the unprotected runs of
//! events whose chunk met an outage under `FailMode::Open`.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::{self, FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::time::Sleep;
use tracing::Instrument;

use super::cancel::{OnDrop, PendingBatch};
use super::chain::{Carry, Handback, Link, Turn};
use super::deferred::lease_end;
use super::lease::{renewal_period, renewal_retry, Ended};
use super::outcome::{Ctx, Decision, Outcome, Scope};
use super::stored::Keep;
use super::{new_owner, Guard};
use std::borrow::Cow;

use crate::envelope::EventEnvelope;
use crate::error::{GuardError, StoreError};
use crate::identify::{Identify, Resolve};
use crate::store::{saturating_deadline, Claim, Completion};
use crate::telemetry;

/// One event's answer in a batch.
type BatchResult<T, E> = Result<Outcome<T>, GuardError<E>>;

/// Each event's answer so far, in the order of the batch.
type Answers<T, E> = [Option<BatchResult<T, E>>];

/// A panic raised by a handler, resumed once the batch is settled.
type Panic = Box<dyn std::any::Any + Send>;

/// How `run_batch_stored` encodes a handler's value to keep with its completion.
pub(super) type Encode<T> = fn(&T) -> Result<Vec<u8>, serde_json::Error>;

/// What a batch run gives: each event's answer in order; with results kept, the stored
/// result each duplicate's record held (by index, empty otherwise) and the later copies
/// of an event in the batch, each with its first copy.
pub(super) struct BatchRun<T, E> {
    pub(super) answers: Vec<BatchResult<T, E>>,
    pub(super) found: Vec<Option<Vec<u8>>>,
    pub(super) copies: Vec<(usize, usize)>,
}

/// What the claims of a batch gave: the events acquired (their indexes and keys, in the
/// same order), and those to run unprotected (`FailMode::Open` after an outage).
#[derive(Default)]
struct Claimed {
    acquired: Vec<usize>,
    keys: Vec<String>,
    open: Vec<usize>,
}

impl Guard {
    /// Runs `handler` for each event of `envelopes` that was not processed before, with two
    /// store round trips per chunk of the batch (one claim call, one completion call), and
    /// returns each event's answer in the order of `envelopes`.
    ///
    /// Each event gets what [`Guard::run`] would give it: `Processed`, `Duplicate`,
    /// `Unprotected` (store down, `FailMode::Open`), or an error (`InProgress`, `Handler`,
    /// `Store`, `InvalidEvent`). An event that cannot be identified, or whose record the
    /// store refuses for its data, fails alone; the rest of the batch goes on.
    ///
    /// A batch of any size is accepted. Its store calls (claims, renewals, completions,
    /// releases) carry at most the store's
    /// [`max_batch_chunk`](crate::IdempotencyStore::max_batch_chunk) keys each (1,000 on
    /// Redis and PostgreSQL), one chunk after another, each within the store timeout; a
    /// chunk that meets an outage answers its own events per the fail mode (those run
    /// unprotected run after the rest of the batch is settled).
    ///
    /// - The new events' handlers run concurrently in this task, at most
    ///   [`batch_concurrency`](crate::ConfigBuilder::batch_concurrency) at once; the claims
    ///   of all of them (queued, running, and those that already succeeded, whose
    ///   completion waits for the batch's end) are renewed together while any runs.
    /// - Then the successes are completed and the failures released, one round trip each
    ///   per chunk, the two sent at once.
    /// - The same event twice in one batch runs once: the later copies answer `Duplicate`
    ///   when the first was processed, `InProgress` when it was not (redeliver them).
    /// - A handler that panics has its claim released; the other events are settled, then
    ///   the panic is resumed.
    /// - This future dropped mid-batch: the claims are settled by a spawned task (completed
    ///   for handlers that had succeeded, released for the rest).
    /// - `in_progress_wait` does not apply: an event another consumer holds answers
    ///   `InProgress` at once.
    /// - An event whose completion this guard still owes (deferred completion, or a
    ///   completion being retried) is completed before the claim, as [`Guard::run`] does,
    ///   and answers `Duplicate`; with it, every completion the guard owes is written.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use eventonce::{EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, Outcome};
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
    ///
    /// # Panics
    ///
    /// Resumes the first handler panic, after every claim of the batch is settled.
    pub async fn run_batch<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        handler: H,
    ) -> Vec<BatchResult<T, E>>
    where
        I: Identify,
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        self.run_batch_traced(events, handler, None, None)
            .await
            .answers
    }

    /// [`run_batch`](Self::run_batch) in its span, with its metrics; with `encode`, each
    /// handler's value is kept with its completion and each duplicate's result is read;
    /// in `chain`, its claim and its completions meet the chain's other batches'.
    pub(super) async fn run_batch_traced<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        handler: H,
        encode: Option<Encode<T>>,
        chain: Option<&Arc<Link>>,
    ) -> BatchRun<T, E>
    where
        I: Identify,
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let span = tracing::info_span!(
            "eventonce.run_batch",
            service = self.inner.config.service_name(),
            events = events.len(),
        );
        let views: Vec<Cow<'a, EventEnvelope>> = events.iter().map(Resolve::view).collect();
        let run = self
            .run_batch_untraced(events, &views, handler, (encode, chain))
            .instrument(span)
            .await;
        telemetry::batch_outcomes(&self.inner.config, &views, &run.answers);
        run
    }

    /// [`run_batch`](Self::run_batch) without its span and metrics.
    async fn run_batch_untraced<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        envelopes: &[Cow<'a, EventEnvelope>],
        mut handler: H,
        (encode, chain): (Option<Encode<T>>, Option<&Arc<Link>>),
    ) -> BatchRun<T, E>
    where
        I: Identify,
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        if self.inner.config.disabled() {
            return BatchRun {
                answers: Self::run_batch_disabled(events, handler).await,
                found: Vec::new(),
                copies: Vec::new(),
            };
        }
        let started = Instant::now();
        let config = &self.inner.config;
        let mut answers: Vec<Option<BatchResult<T, E>>> = envelopes.iter().map(|_| None).collect();
        let (ids, fingerprinted) = self.identify_batch(events, envelopes, &mut answers);
        let (unique, copies) = first_copies(&ids);
        let now = tokio::time::Instant::now();
        let mut ctxs: Vec<Option<Ctx<'_>>> = ids
            .iter()
            .zip(envelopes)
            .map(|(id, envelope)| {
                id.as_ref()
                    .map(|(hash, key)| Ctx::at(config, envelope, (hash, key), started, now))
            })
            .collect();
        let mut found = self
            .run_fingerprinted(events, envelopes, &fingerprinted, &mut handler, encode)
            .await
            .answer(&mut answers);

        let owner = new_owner();
        let (
            Claimed {
                acquired,
                keys,
                open,
            },
            turn,
            claimed,
        ) = self
            .claim_batch(&unique, &mut ctxs, (&owner, chain), &mut answers)
            .await;

        // From here on the claims are ours: whatever happens, they are settled.
        let ttls = acquired
            .iter()
            .map(|&i| ctxs[i].as_ref().map(|c| c.ttl).unwrap_or_default())
            .collect();
        let mut pending = PendingBatch::new(&self.inner, owner, keys, ttls, claimed);
        // With results kept, the duplicates' results are read while the handlers run.
        let duplicates: Vec<(usize, String)> = match encode {
            Some(_) => duplicates_of(&unique, &ctxs, &answers),
            None => Vec::new(),
        };
        let (ended, read) = futures_util::future::join(
            self.drive_batch(events, &acquired, &mut handler, &mut pending, encode),
            self.read_results(&duplicates),
        )
        .await;
        for ((i, _), result) in duplicates.iter().zip(read) {
            found[*i] = result;
        }
        let panic = self
            .settle_batch(
                &acquired,
                (ended, turn),
                &mut ctxs,
                &mut pending,
                &mut answers,
            )
            .await;
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
        // The events whose claim met an outage under FailMode::Open run last, unprotected,
        // once every claim of the batch is settled.
        self.run_unprotected(events, &open, &ctxs, &mut handler, &mut answers)
            .await;
        self.answer_copies(&copies, &ctxs, &mut answers);
        BatchRun {
            answers: answers.into_iter().map(finish).collect(),
            found,
            copies,
        }
    }

    /// Runs the events with a payload fingerprint through `run`, one after the other
    /// (their owner token carries the fingerprint, and a batch claim has one owner for
    /// all): each one's index, answer and, with `encode`, the result its duplicate's
    /// record held.
    async fn run_fingerprinted<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        envelopes: &[Cow<'a, EventEnvelope>],
        fingerprinted: &[usize],
        handler: &mut H,
        encode: Option<Encode<T>>,
    ) -> Fingerprinted<T, E>
    where
        I: Identify,
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut ran = Fingerprinted {
            runs: Vec::with_capacity(fingerprinted.len()),
            keeps: encode.is_some(),
            events: events.len(),
        };
        for &i in fingerprinted {
            // The handler is called only once the run decides to run it, as in the batch.
            let lazy = async { handler(&events[i]).await };
            let mut keep = encode.map(|encode| Keep {
                encode,
                found: None,
            });
            let answer = self
                .run_untraced(&events[i], &envelopes[i], lazy, keep.as_mut())
                .await;
            ran.runs.push((i, answer, keep.and_then(|keep| keep.found)));
        }
        ran
    }

    /// The stored result of each of `duplicates`' records (at most `batch_concurrency`
    /// reads at once); a failed read, or a record without one, gives `None`: the event
    /// then answers as a plain duplicate.
    async fn read_results(&self, duplicates: &[(usize, String)]) -> Vec<Option<Vec<u8>>> {
        if duplicates.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::with_capacity(duplicates.len());
        for chunk in duplicates.chunks(self.inner.config.batch_concurrency().max(1)) {
            let reads: Vec<_> = chunk.iter().map(|(_, key)| self.read_result(key)).collect();
            found.extend(futures_util::future::join_all(reads).await);
        }
        found
    }

    /// The stored result of `key`'s record, `None` when it has none or the read failed.
    async fn read_result(&self, key: &str) -> Option<Vec<u8>> {
        let read = self.inner.store.get_with_result(key);
        let record = self.store_call("get", read).await;
        record.ok().flatten().and_then(|(_, result)| result)
    }

    /// Every event's hash and key; an event that cannot be identified, or is stale, is
    /// answered (and observed) alone. Events with a fingerprint are returned apart (the
    /// second list), with no hash and key in the first.
    fn identify_batch<I, T, E>(
        &self,
        events: &[I],
        envelopes: &[Cow<'_, EventEnvelope>],
        answers: &mut Answers<T, E>,
    ) -> (Vec<Option<(String, String)>>, Vec<usize>)
    where
        I: Identify,
        E: std::fmt::Display,
    {
        let mut ids = Vec::with_capacity(events.len());
        let mut fingerprinted = Vec::new();
        for (i, (event, envelope)) in events.iter().zip(envelopes).enumerate() {
            let identified = self
                .identify::<I, E>(event, envelope)
                .and_then(|resolved| self.check_age(envelope, &resolved).map(|()| resolved));
            match identified {
                Ok(resolved) if resolved.fingerprint.is_some() => {
                    ids.push(None);
                    fingerprinted.push(i);
                }
                Ok(resolved) => ids.push(Some((resolved.hash, resolved.key))),
                Err(err) => {
                    ids.push(None);
                    answers[i] = Some(Err(err));
                }
            }
        }
        (ids, fingerprinted)
    }

    /// Claims the first copies (`unique`), in chunks of at most the store's
    /// [`max_batch_chunk`](crate::IdempotencyStore::max_batch_chunk) keys (one store call
    /// each), and observes each answer: the events acquired and their keys, and the events
    /// whose chunk met an outage under `FailMode::Open`, left unanswered for an unprotected
    /// run (under `FailMode::Closed` they are answered `Store`).
    ///
    /// In a `chain`, the claim waits for its turn there and carries the completions of an
    /// earlier batch of the chain waiting for one; the batch's turn is returned, in its
    /// handling phase. Returned too: when the claim was sent.
    async fn claim_batch<T, E>(
        &self,
        unique: &[usize],
        ctxs: &mut [Option<Ctx<'_>>],
        (owner, chain): (&str, Option<&Arc<Link>>),
        answers: &mut Answers<T, E>,
    ) -> (Claimed, Option<Turn>, tokio::time::Instant) {
        let keys: Vec<String> = unique.iter().map(|&i| key_of(ctxs, i)).collect();
        let (mut turn, carry) = match chain {
            Some(link) => {
                let (turn, carry) = link.claim_turn(!keys.is_empty()).await;
                (Some(turn), carry)
            }
            None => (None, None),
        };
        let sent = tokio::time::Instant::now();
        let t = Instant::now();
        if self.owes_any(&keys) {
            // A redelivery of an event whose completion this guard still owes (deferred, or
            // retried): complete first, as `run` does, so that it answers `Duplicate`. A
            // failed write leaves the completions queued; the claim then finds the claim
            // in progress.
            let _ = self.write_owed().await;
        }
        let claims = match carry {
            Some(carry) => self.claim_carrying(&keys, owner, carry).await,
            None => self.claim_chunks(&keys, owner).await,
        };
        if let Some(turn) = turn.as_mut() {
            turn.claimed();
        }
        let claim_time = t.elapsed();
        for ctx in ctxs.iter_mut().flatten() {
            ctx.store_time += claim_time;
        }
        let claimed = self.take_answers(unique, (claims, keys), ctxs, answers);
        (claimed, turn, sent)
    }

    /// Observes each of `unique`'s claims and answers those that do not run: the events
    /// acquired and their keys, and the events whose chunk met an outage under
    /// `FailMode::Open`.
    fn take_answers<T, E>(
        &self,
        unique: &[usize],
        (claims, keys): (Vec<Result<Claim, StoreError>>, Vec<String>),
        ctxs: &[Option<Ctx<'_>>],
        answers: &mut Answers<T, E>,
    ) -> Claimed {
        let mut claimed = Claimed::default();
        let mut outage_seen = false;
        for ((&i, claim), key) in unique.iter().zip(claims).zip(keys) {
            let Some(ctx) = ctxs[i].as_ref() else {
                continue;
            };
            match claim {
                Ok(Claim::Acquired) => {
                    self.observe(ctx, Decision::Claimed);
                    claimed.acquired.push(i);
                    claimed.keys.push(key);
                }
                Ok(Claim::Completed) => {
                    self.observe(ctx, Decision::Duplicate);
                    answers[i] = Some(Ok(Outcome::Duplicate));
                }
                Ok(Claim::InProgress) => {
                    self.observe(ctx, Decision::InProgress);
                    answers[i] = Some(Err(GuardError::InProgress));
                }
                Err(err) if !err.is_outage() => {
                    answers[i] = Some(Err(self.refused_by_store(ctx, &err)));
                }
                Err(err) => {
                    if !std::mem::replace(&mut outage_seen, true) {
                        self.observe(Scope::Guard, Decision::StoreFailed);
                    }
                    if self.fail_open(ctx, &err) {
                        claimed.open.push(i);
                    } else {
                        answers[i] = Some(Err(GuardError::Store(err)));
                    }
                }
            }
        }
        claimed
    }

    /// Each key's claim, chunk by chunk. A chunk the store refused for some key's data
    /// (not an outage) is claimed again one key at a time, so that the refusal answers
    /// only its own event; an outage answers every key of its chunk.
    async fn claim_chunks(&self, keys: &[String], owner: &str) -> Vec<Result<Claim, StoreError>> {
        let store = &self.inner.store;
        let lease = self.inner.config.lease();
        let mut claims = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(store.max_batch_chunk().max(1)) {
            let call = store.try_claim_many(chunk, owner, lease);
            let answered = self.store_call("try_claim_many", call).await;
            self.take_claims(chunk, owner, answered, &mut claims).await;
        }
        claims
    }

    /// Appends each key of `chunk`'s claim to `claims`, from the store's answer to the
    /// chunk's claim call.
    async fn take_claims(
        &self,
        chunk: &[String],
        owner: &str,
        answered: Result<Vec<Claim>, StoreError>,
        claims: &mut Vec<Result<Claim, StoreError>>,
    ) {
        match answered {
            Ok(answers) if answers.len() == chunk.len() => {
                claims.extend(answers.into_iter().map(Ok));
            }
            Ok(answers) => {
                let err = StoreError::Unavailable {
                    message: format!(
                        "the store answered {} claims to {} keys",
                        answers.len(),
                        chunk.len()
                    ),
                    source: None,
                };
                claims.extend(chunk.iter().map(|_| Err(err.again())));
            }
            Err(err) if !err.is_outage() && chunk.len() > 1 => {
                claims.extend(self.claim_each(chunk, owner).await);
            }
            Err(err) => {
                claims.extend(chunk.iter().map(|_| Err(err.again())));
            }
        }
    }

    /// [`claim_chunks`](Self::claim_chunks), carrying the completions of the chain's
    /// batch before: `complete_then_claim_many` calls of at most the store's
    /// `max_batch_chunk` keys in all, the completions first, and the store's answer for
    /// them sent back to their batch. A call refused for some key's data (not an outage:
    /// a claimed key among the completions, say) writes its completions alone, then
    /// claims as `claim_chunks` does; an outage leaves its completions unanswered (their
    /// batch owes them). While the breaker is open the completions are given back (their
    /// batch writes them, as it always may) and the claims go alone.
    async fn claim_carrying(
        &self,
        keys: &[String],
        owner: &str,
        carry: Carry,
    ) -> Vec<Result<Claim, StoreError>> {
        if self.circuit_open() {
            carry.hand_back();
            return self.claim_chunks(keys, owner).await;
        }
        let store = &self.inner.store;
        let lease = self.inner.config.lease();
        let size = store.max_batch_chunk().max(1);
        let completions = carry.completions();
        let mut done = Written::new(completions.len());
        let mut claims = Vec::with_capacity(keys.len());
        let (mut c, mut k) = (completions, keys);
        while !c.is_empty() || !k.is_empty() {
            let (cs, rest) = c.split_at(c.len().min(size));
            c = rest;
            let (ks, rest) = k.split_at(k.len().min(size - cs.len()));
            k = rest;
            let call = store.complete_then_claim_many(cs, ks, owner, lease);
            match self.store_call("complete_then_claim_many", call).await {
                Ok((written, answered)) => {
                    done.take(written, cs.len());
                    self.take_claims(ks, owner, Ok(answered), &mut claims).await;
                }
                Err(err) if !err.is_outage() => {
                    if !cs.is_empty() {
                        done.take(self.complete_alone(cs).await, cs.len());
                    }
                    claims.extend(self.claim_chunks(ks, owner).await);
                }
                Err(err) => {
                    done.take(Err(err.again()), cs.len());
                    claims.extend(ks.iter().map(|_| Err(err.again())));
                }
            }
        }
        carry.answer(done.finish());
        claims
    }

    /// Writes `completions` in calls of their own (attempted even while the breaker is
    /// open: the effects have happened).
    pub(super) async fn complete_alone(
        &self,
        completions: &[Completion],
    ) -> Result<Vec<bool>, StoreError> {
        let store = &self.inner.store;
        self.chunked("complete_many", completions, true, |chunk| {
            store.complete_many(chunk)
        })
        .await
    }

    /// Claims each of `keys` alone, after a batch claim the store refused for some key's
    /// data, so that a refusal answers only its own event. The keys the refused call may
    /// have claimed before it stopped are released first (owner-checked: `owner` is this
    /// batch's own token).
    async fn claim_each(&self, keys: &[String], owner: &str) -> Vec<Result<Claim, StoreError>> {
        let store = &self.inner.store;
        let lease = self.inner.config.lease();
        let mut claims = Vec::with_capacity(keys.len());
        for key in keys {
            let _ = self.store_call("release", store.release(key, owner)).await;
            let claim = self.store_call("try_claim", store.try_claim(key, owner, lease));
            claims.push(claim.await);
        }
        claims
    }

    /// Polls the handlers of the claimed events, at most `batch_concurrency` at once, each
    /// panic caught, renewing every claim still unsettled every third of the lease.
    async fn drive_batch<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        acquired: &[usize],
        handler: &mut H,
        pending: &mut PendingBatch,
        encode: Option<Encode<T>>,
    ) -> Vec<Option<Ended<T, E>>>
    where
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
    {
        let lease = self.inner.config.lease();
        let period = renewal_period(lease);
        let bound = self.inner.config.batch_concurrency();
        let mut ended: Vec<Option<Ended<T, E>>> = acquired.iter().map(|_| None).collect();
        if encode.is_some() {
            pending.results = acquired.iter().map(|_| None).collect();
        }
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
                if self.lost_before_start(slot, &mut lost, pending, lease) {
                    continue;
                }
                match catch_unwind(AssertUnwindSafe(|| handler(&events[i]))) {
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
            if let Some((slot, result)) = next {
                if let Ok(Ok(value)) = &result {
                    if let Some(encode) = encode {
                        let key = pending.keys[slot].as_str();
                        pending.results[slot] = self.encode_result(key, encode, value);
                    }
                    pending.settle[slot] = OnDrop::Complete;
                }
                ended[slot] = Some(result);
                continue;
            }
            tick.as_mut()
                .reset(saturating_deadline(tokio::time::Instant::now(), period));
            if renewing {
                // Every claim still to complete: queued and running handlers', and those
                // of handlers that succeeded (their completion waits for the batch's end,
                // which a slower handler may put off for longer than the lease).
                let slots: Vec<usize> = (0..ended.len())
                    .filter(|&s| !lost[s] && matches!(ended[s], None | Some(Ok(Ok(_)))))
                    .collect();
                renewing = self
                    .renew_slots(slots, &mut lost, pending, tick.as_mut(), period)
                    .await;
            }
        }
        ended
    }

    /// Whether the claim in `slot` was lost before its handler started (found so by a
    /// renewal, or now, unconfirmed for a whole lease: then observed); a lost claim is
    /// not ours to settle.
    fn lost_before_start(
        &self,
        slot: usize,
        lost: &mut [bool],
        pending: &mut PendingBatch,
        lease: Duration,
    ) -> bool {
        let expiry = saturating_deadline(pending.confirmed, lease);
        if !lost[slot] && tokio::time::Instant::now() >= expiry {
            // No renewal has confirmed the claims for a whole lease: expired.
            lost[slot] = true;
            self.observe(pending.keys[slot].as_str(), Decision::QueuedClaimLost);
        }
        if lost[slot] {
            pending.settle[slot] = OnDrop::Nothing;
        }
        lost[slot]
    }

    /// Renews the claims in `slots` in one call; a failed renewal is tried again soon, not
    /// a period later. Whether any claim is left to renew.
    async fn renew_slots(
        &self,
        slots: Vec<usize>,
        lost: &mut [bool],
        pending: &mut PendingBatch,
        tick: Pin<&mut Sleep>,
        period: Duration,
    ) -> bool {
        let keys: Vec<String> = slots.iter().map(|&s| pending.keys[s].clone()).collect();
        let asked = tokio::time::Instant::now();
        let lease = self.inner.config.lease();
        let renewed = self.renew_batch(keys, &pending.owner, lease).await;
        if renewed.iter().all(Option::is_some) {
            pending.confirmed = asked;
        } else {
            tick.reset(saturating_deadline(
                tokio::time::Instant::now(),
                renewal_retry(period),
            ));
        }
        for (&slot, renewed) in slots.iter().zip(renewed) {
            if renewed == Some(false) {
                lost[slot] = true;
            }
        }
        slots.iter().any(|&s| !lost[s])
    }

    /// Completes the successes and releases the failures, in one round trip each per chunk,
    /// the two sent at once, then answers and observes every acquired event. Returns the
    /// first panic of a handler, to resume.
    async fn settle_batch<T, E>(
        &self,
        acquired: &[usize],
        (ended, turn): (Vec<Option<Ended<T, E>>>, Option<Turn>),
        ctxs: &mut [Option<Ctx<'_>>],
        pending: &mut PendingBatch,
        answers: &mut Answers<T, E>,
    ) -> Option<Panic>
    where
        E: std::fmt::Display,
    {
        stage_settlements(&ended, pending);
        let t = Instant::now();
        let (completed, released) = match turn {
            Some(turn) => {
                self.hand_over_and_release(
                    turn,
                    &pending.completing,
                    &pending.releasing,
                    &pending.owner,
                )
                .await
            }
            None => {
                self.complete_and_release(&pending.completing, &pending.releasing, &pending.owner)
                    .await
            }
        };

        let completions = std::mem::take(&mut pending.completing);
        let releases = std::mem::take(&mut pending.releasing);
        pending.settle.fill(OnDrop::Nothing);
        let settle_time = t.elapsed();
        for &i in acquired {
            if let Some(ctx) = ctxs[i].as_mut() {
                ctx.store_time += settle_time;
            }
        }
        let mut completed = self
            .owe_unwritten(&completions, completed, pending.confirmed)
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
            let answer = match ended {
                Some(Ok(Ok(value))) => {
                    let decision = match completed.next() {
                        Some(Some(true)) => Decision::Completed,
                        Some(Some(false)) => Decision::CompletionLost,
                        // Owed and observed (or an answer missing: counted all the same).
                        _ => Decision::CompletionOwed,
                    };
                    self.observe(ctx, decision);
                    Ok(Outcome::Processed(value))
                }
                Some(Ok(Err(error))) => {
                    self.released_after(ctx, Ok(error), released.next(), &mut panic)
                }
                Some(Err(payload)) => {
                    self.released_after(ctx, Err(payload), released.next(), &mut panic)
                }
                // Never started: its claim was found lost first (observed then). It is
                // another consumer's now; answered in progress, so it is redelivered.
                None => Err(GuardError::InProgress),
            };
            answers[i] = Some(answer);
        }
        panic
    }

    /// Observes a handler of a batch that failed (`Ok(error)`) or panicked, with the
    /// store's answer to the release of its claim; the first panic is kept in `panic`, its
    /// event answered in progress.
    fn released_after<T, E: std::fmt::Display>(
        &self,
        ctx: &Ctx<'_>,
        failed: Result<E, Panic>,
        release: Option<Result<bool, StoreError>>,
        panic: &mut Option<Panic>,
    ) -> BatchResult<T, E> {
        let released = release.is_some_and(|r| self.released(ctx, r));
        match failed {
            Ok(error) => {
                self.observe(
                    ctx,
                    Decision::HandlerFailed {
                        error: &error,
                        released,
                    },
                );
                Err(GuardError::Handler(error))
            }
            Err(payload) => {
                self.observe(ctx, Decision::HandlerPanicked { released });
                panic.get_or_insert(payload);
                Err(GuardError::InProgress)
            }
        }
    }

    /// Sends the completions (attempted even while the breaker is open: the effects have
    /// happened) and the releases at once.
    async fn complete_and_release(
        &self,
        completions: &[Completion],
        releases: &[String],
        owner: &str,
    ) -> (Result<Vec<bool>, StoreError>, Result<Vec<bool>, StoreError>) {
        futures_util::future::join(
            async {
                if completions.is_empty() {
                    return Ok(Vec::new());
                }
                self.complete_alone(completions).await
            },
            self.release_all(releases, owner),
        )
        .await
    }

    /// Releases `releases` (owner-checked, behind the breaker), in chunks; nothing to ask
    /// when there are none.
    async fn release_all(&self, releases: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        if releases.is_empty() {
            return Ok(Vec::new());
        }
        let store = &self.inner.store;
        self.chunked("release_many", releases, false, |chunk| {
            store.release_many(chunk, owner)
        })
        .await
    }

    /// [`complete_and_release`](Self::complete_and_release) in a chain: the completions
    /// left for the next batch's claim to carry (written alone when none carries them),
    /// the releases sent meanwhile.
    async fn hand_over_and_release(
        &self,
        mut turn: Turn,
        completions: &Arc<[Completion]>,
        releases: &[String],
        owner: &str,
    ) -> (Result<Vec<bool>, StoreError>, Result<Vec<bool>, StoreError>) {
        futures_util::future::join(
            async {
                match turn.hand_over(completions).await {
                    Handback::Written(done) => done,
                    Handback::NotCarried if completions.is_empty() => Ok(Vec::new()),
                    Handback::NotCarried => self.complete_alone(completions).await,
                }
            },
            self.release_all(releases, owner),
        )
        .await
    }

    /// The store's answer for each completion; those it did not take are owed: kept and
    /// retried until written or their lease ends. A partial failure (a cluster shard)
    /// answers for some keys: exactly the others are owed.
    fn owe_unwritten(
        &self,
        completions: &[Completion],
        completed: Result<Vec<bool>, StoreError>,
        confirmed: tokio::time::Instant,
    ) -> Vec<Option<bool>> {
        let err = match completed {
            Ok(flags) => return flags.into_iter().map(Some).collect(),
            Err(err) => err,
        };
        self.observe(Scope::Guard, Decision::StoreFailed);
        let answers = err.answers(completions.len());
        let until = lease_end(confirmed, self.inner.config.lease());
        for (completion, answer) in completions.iter().zip(&answers) {
            if answer.is_none() {
                self.owe(completion.clone(), until, Some(&err));
            }
        }
        answers
    }

    /// Runs the handlers of `open` without protection, at most `batch_concurrency` at once.
    async fn run_unprotected<'a, I, H, F, T, E>(
        &self,
        events: &'a [I],
        open: &[usize],
        ctxs: &[Option<Ctx<'_>>],
        handler: &mut H,
        answers: &mut Answers<T, E>,
    ) where
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let results: Vec<(usize, Result<T, E>)> = stream::iter(open.iter().copied())
            .map(|i| {
                let future = handler(&events[i]);
                async move { (i, future.await) }
            })
            .buffer_unordered(self.inner.config.batch_concurrency())
            .collect()
            .await;
        for (i, result) in results {
            answers[i] = Some(match result {
                Ok(value) => Ok(Outcome::Unprotected(value)),
                Err(error) => {
                    if let Some(ctx) = ctxs[i].as_ref() {
                        self.observe(ctx, Decision::UnprotectedFailed { error: &error });
                    }
                    Err(GuardError::Handler(error))
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
        answers: &mut Answers<T, E>,
    ) {
        for &(copy, first) in copies {
            let Some(ctx) = ctxs[copy].as_ref() else {
                continue;
            };
            answers[copy] = Some(match &answers[first] {
                Some(Ok(_)) => {
                    self.observe(ctx, Decision::Duplicate);
                    Ok(Outcome::Duplicate)
                }
                Some(Err(GuardError::Store(err))) => Err(GuardError::Store(err.again())),
                _ => {
                    self.observe(ctx, Decision::InProgress);
                    Err(GuardError::InProgress)
                }
            });
        }
    }
}

/// The first copy of each key (the one that runs) and the later copies, each with its
/// first: `(unique, copies)`.
fn first_copies(ids: &[Option<(String, String)>]) -> (Vec<usize>, Vec<(usize, usize)>) {
    let mut first_of: HashMap<&str, usize, _> =
        HashMap::with_capacity_and_hasher(ids.len(), crate::identity::seeded_hasher());
    let mut unique = Vec::new();
    let mut copies = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some((_, key)) = id {
            match first_of.entry(key.as_str()) {
                Entry::Occupied(first) => copies.push((i, *first.get())),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                    unique.push(i);
                }
            }
        }
    }
    (unique, copies)
}

/// Moves the keys of the ended handlers' claims out of `pending` into its settlements in
/// flight: completions for the successes, releases for the failures (a batch dropped while
/// they are sent settles them from there). A claim whose handler never started is not ours
/// any more and stays out.
fn stage_settlements<T, E>(ended: &[Option<Ended<T, E>>], pending: &mut PendingBatch) {
    let mut completing = Vec::with_capacity(ended.len());
    for (slot, ended) in ended.iter().enumerate() {
        let Some(ended) = ended else {
            continue;
        };
        let key = std::mem::take(&mut pending.keys[slot]);
        if matches!(ended, Ok(Ok(_))) {
            completing.push(Completion {
                key,
                owner: pending.owner.clone(),
                ttl: pending.ttls[slot],
                result: pending.results.get_mut(slot).and_then(Option::take),
            });
        } else {
            pending.releasing.push(key);
        }
        pending.settle[slot] = OnDrop::Nothing;
    }
    pending.completing = completing.into();
}

/// The answers to completions carried in one or more calls, gathered in order.
struct Written {
    answers: Vec<Option<bool>>,
    failure: Option<StoreError>,
}

impl Written {
    fn new(n: usize) -> Self {
        Written {
            answers: Vec::with_capacity(n),
            failure: None,
        }
    }

    /// The answer of a call that carried `n` completions.
    fn take(&mut self, written: Result<Vec<bool>, StoreError>, n: usize) {
        match written {
            Ok(flags) if flags.len() == n => self.answers.extend(flags.into_iter().map(Some)),
            Ok(flags) => {
                self.answers.extend(std::iter::repeat_n(None, n));
                self.failure.get_or_insert(StoreError::Unavailable {
                    message: format!("the store answered {} of {n} completions", flags.len()),
                    source: None,
                });
            }
            Err(err) => {
                self.answers.extend(err.answers(n));
                self.failure.get_or_insert(err);
            }
        }
    }

    /// Every answer, or the first failure: alone when no completion has an answer, in a
    /// [`StoreError::Partial`] with those that have one otherwise.
    fn finish(self) -> Result<Vec<bool>, StoreError> {
        match self.failure {
            None => Ok(self.answers.into_iter().flatten().collect()),
            Some(error) if self.answers.iter().all(Option::is_none) => Err(error),
            Some(error) => Err(StoreError::Partial {
                answers: self.answers,
                error: Box::new(error),
            }),
        }
    }
}

/// One fingerprinted event's run: its index, answer and the result its record held.
type FingerprintedRun<T, E> = (usize, BatchResult<T, E>, Option<Vec<u8>>);

/// The runs of a batch's events with a fingerprint: each one's index, answer and (when the
/// batch keeps results) the result its duplicate's record held.
pub(super) struct Fingerprinted<T, E> {
    runs: Vec<FingerprintedRun<T, E>>,
    keeps: bool,
    events: usize,
}

impl<T, E> Fingerprinted<T, E> {
    /// Puts each run's answer in `answers`; returns the results found by index (all the
    /// batch's events; empty when the batch keeps no results).
    fn answer(self, answers: &mut Answers<T, E>) -> Vec<Option<Vec<u8>>> {
        let mut found: Vec<Option<Vec<u8>>> = Vec::new();
        if self.keeps {
            found.resize_with(self.events, || None);
        }
        for (i, answer, kept) in self.runs {
            answers[i] = Some(answer);
            if let Some(slot) = found.get_mut(i) {
                *slot = kept;
            }
        }
        found
    }
}

/// The first copies answered `Duplicate` by their claim, each with its key.
fn duplicates_of<T, E>(
    unique: &[usize],
    ctxs: &[Option<Ctx<'_>>],
    answers: &Answers<T, E>,
) -> Vec<(usize, String)> {
    unique
        .iter()
        .filter(|&&i| matches!(answers[i], Some(Ok(Outcome::Duplicate))))
        .map(|&i| (i, key_of(ctxs, i)))
        .collect()
}

/// The key of the event at `i`, empty for one without identity.
fn key_of(ctxs: &[Option<Ctx<'_>>], i: usize) -> String {
    ctxs[i]
        .as_ref()
        .map(|c| c.key.to_owned())
        .unwrap_or_default()
}

/// Every slot of a finished batch holds an answer; an empty one would be a bug, answered
/// as in progress (redeliver) rather than a panic.
fn finish<T, E>(answer: Option<BatchResult<T, E>>) -> BatchResult<T, E> {
    answer.unwrap_or(Err(GuardError::InProgress))
}
