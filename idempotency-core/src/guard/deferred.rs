//! Completions owed to the store: a handler succeeded and its record is still the claim.
//!
//! Deferred completions (`defer_completion`) wait here for the next claim to carry them or
//! for the flush timer; a completion the store did not take (an outage, a timeout, an open
//! circuit breaker, a run dropped while completing) waits here to be retried with backoff.
//! Each is kept until it is written, until its lease is over (then counted in
//! `completions_abandoned` and logged: a redelivery may run the event again), or until the
//! guard is dropped after a final attempt. A call that takes completions out to carry them
//! puts them back if it fails or is dropped before it knows they were written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::{Decision, Scope};
use super::{Guard, GuardInner};
use crate::error::StoreError;
use crate::store::{saturating_deadline, Completion, RecordState};

/// How many deferred completions make the guard flush at once rather than wait.
const MAX_DEFERRED: usize = 256;

/// The first pause before retrying a completion the store did not take.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between retries (and at most a twentieth of the lease, so that the
/// retries go on to the end of the lease).
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The first pause and the longest pause between retries under `lease`.
fn retry_pauses(lease: Duration) -> (Duration, Duration) {
    let max = RETRY_MAX.min(lease / 20).max(Duration::from_millis(1));
    (RETRY_FIRST.min(max), max)
}

/// The owed completions and, for each, when its lease is over.
#[derive(Default)]
pub(super) struct OwedQueue {
    completions: Vec<Completion>,
    until: Vec<Instant>,
}

impl OwedQueue {
    fn push(&mut self, completion: Completion, until: Instant) {
        self.completions.push(completion);
        self.until.push(until);
    }

    fn append(&mut self, other: &mut OwedQueue) {
        self.completions.append(&mut other.completions);
        self.until.append(&mut other.until);
    }

    pub(super) fn len(&self) -> usize {
        self.completions.len()
    }

    pub(super) fn take_completions(&mut self) -> Vec<Completion> {
        self.until.clear();
        std::mem::take(&mut self.completions)
    }

    /// Removes the completions whose lease is over at `now`, and of two completions of one
    /// key (an expired owner's put back beside its successor's) all but the one whose lease
    /// ends last, so that a write of the rest never names a key twice. Returns the removed.
    pub(super) fn remove_stale(&mut self, now: Instant) -> Vec<Completion> {
        // Each key's latest completion: the index of the one whose lease ends last.
        let mut latest: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, c) in self.completions.iter().enumerate() {
            let best = latest.entry(c.key.as_str()).or_insert(i);
            if self.until[i] > self.until[*best] {
                *best = i;
            }
        }
        let keep: Vec<bool> = (0..self.completions.len())
            .map(|i| {
                self.until[i] > now && latest.get(self.completions[i].key.as_str()) == Some(&i)
            })
            .collect();
        let owed = std::mem::take(self);
        let mut stale = Vec::new();
        for ((completion, until), keep) in owed.completions.into_iter().zip(owed.until).zip(keep) {
            if keep {
                self.push(completion, until);
            } else {
                stale.push(completion);
            }
        }
        stale
    }
}

/// Completions taken out of the queue by a call that carries them: put back (and a retry
/// scheduled) when dropped, unless [`Carried::written`] said the store answered for them.
pub(super) struct Carried {
    inner: Arc<GuardInner>,
    owed: OwedQueue,
}

impl Carried {
    pub(super) fn completions(&self) -> &[Completion] {
        &self.owed.completions
    }

    pub(super) fn is_empty(&self) -> bool {
        self.owed.completions.is_empty()
    }

    pub(super) fn holds(&self, key: &str) -> bool {
        self.owed.completions.iter().any(|c| c.key == key)
    }

    /// The store answered for every completion: nothing to put back.
    pub(super) fn written(mut self) -> Vec<Completion> {
        self.owed.take_completions()
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        if self.owed.completions.is_empty() {
            return;
        }
        let mut queue = lock(&self.inner);
        queue.append(&mut self.owed);
        self.inner.owing.store(true, Ordering::Release);
        drop(queue);
        let first = retry_pauses(self.inner.config.lease()).0;
        schedule(&self.inner, first, false);
    }
}

fn lock(inner: &GuardInner) -> std::sync::MutexGuard<'_, OwedQueue> {
    inner
        .deferred
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// When a claim's lease ends: `lease` after the last claim or renewal the store confirmed
/// was sent. A completion owed for it is given up then: the claim may belong to another
/// consumer.
pub(super) fn lease_end(confirmed: Instant, lease: Duration) -> Instant {
    saturating_deadline(confirmed, lease)
}

impl Guard {
    /// Queues a completion the store has not taken yet, whose claim's lease ends at
    /// `until` ([`lease_end`]). `refused` is the error of a first attempt (then it is
    /// retried soon and counted in `completions_retried`); `None` for a deferred completion
    /// (written with the next claim or after the deferral delay).
    pub(super) fn owe(&self, completion: Completion, until: Instant, refused: Option<&StoreError>) {
        owe(&self.inner, completion, until, refused);
    }

    /// Whether any completion is owed (a hint read without the queue's lock).
    pub(super) fn owes(&self) -> bool {
        self.inner.owing.load(Ordering::Acquire)
    }

    /// Whether a completion of any of `keys` is owed (at most [`MAX_DEFERRED`] deferred
    /// completions and the retried ones are looked up, each once).
    pub(super) fn owes_any(&self, keys: &[String]) -> bool {
        if !self.owes() {
            return false;
        }
        let queue = lock(&self.inner);
        let owed: std::collections::HashSet<&str> =
            queue.completions.iter().map(|c| c.key.as_str()).collect();
        keys.iter().any(|key| owed.contains(key.as_str()))
    }

    /// The owed completions still inside their lease, taken out of the queue; those whose
    /// lease is over are dropped, counted and logged.
    pub(super) fn take_owed(&self) -> Carried {
        let mut owed = {
            let mut queue = lock(&self.inner);
            self.inner.owing.store(false, Ordering::Release);
            std::mem::take(&mut *queue)
        };
        let now = Instant::now();
        // A key owed twice always has an expired completion among its two.
        if owed.until.iter().any(|&until| until <= now) {
            for completion in owed.remove_stale(now) {
                self.observe(completion.key.as_str(), Decision::CompletionAbandoned);
            }
        }
        Carried {
            inner: Arc::clone(&self.inner),
            owed,
        }
    }

    /// Takes the owed completions out and writes them, after any such write already in
    /// flight (the background task's, or another `flush`'s) has ended: what that one could
    /// not write is back in the queue by then.
    pub(super) async fn write_owed(&self) -> Result<usize, StoreError> {
        let _writing = self.inner.flushing.lock().await;
        self.write_carried(self.take_owed()).await
    }

    /// Writes `carried` in one call (not refused by an open breaker: a success there
    /// closes it). Those the store did not take go back to the queue, and the error is
    /// returned.
    pub(super) async fn write_carried(&self, carried: Carried) -> Result<usize, StoreError> {
        if carried.is_empty() {
            return Ok(0);
        }
        let done = self
            .store_call_ungated(
                "complete_many",
                self.inner.store.complete_many(carried.completions()),
            )
            .await;
        self.settle_carried(carried, done).await
    }

    /// Settles `carried` with the store's answer: the completions it answered for are
    /// logged (a `StoreError::Partial` answers for some), the rest go back to the queue.
    pub(super) async fn settle_carried(
        &self,
        mut carried: Carried,
        done: Result<Vec<bool>, StoreError>,
    ) -> Result<usize, StoreError> {
        match done {
            Ok(flags) => {
                let completions = carried.written();
                self.log_written(&completions, &flags).await;
                Ok(completions.len())
            }
            Err(err) => {
                let answers = err.answers(carried.owed.len());
                let mut answered = Vec::new();
                let mut flags = Vec::new();
                let mut rest = OwedQueue::default();
                let owed = std::mem::take(&mut carried.owed);
                for ((completion, until), answer) in
                    owed.completions.into_iter().zip(owed.until).zip(answers)
                {
                    match answer {
                        Some(flag) => {
                            answered.push(completion);
                            flags.push(flag);
                        }
                        None => rest.push(completion, until),
                    }
                }
                self.log_unwritten(rest.len(), &err);
                self.log_written(&answered, &flags).await;
                carried.owed = rest; // put back by the drop
                drop(carried);
                Err(err)
            }
        }
    }

    /// Logs the store's answers to owed completions: `false` is a claim found lost, unless
    /// the record is completed anyway (an earlier attempt whose answer was lost wrote it).
    pub(super) async fn log_written(&self, completions: &[Completion], flags: &[bool]) {
        for (c, done) in completions.iter().zip(flags) {
            if *done {
                continue;
            }
            // Bounded like every store call: this runs on the way to a claim.
            let recorded = matches!(
                self.store_call("get", self.inner.store.get(&c.key)).await,
                Ok(Some(record)) if record.state == RecordState::Completed
            );
            if recorded {
                continue;
            }
            self.observe(c.key.as_str(), Decision::OwedClaimLost);
        }
    }

    /// Logs owed completions that a call failed to write (they are queued again).
    pub(super) fn log_unwritten(&self, completions: usize, err: &StoreError) {
        let unwritten = Decision::CompletionsUnwritten { error: err };
        self.observe(Scope::Claims(completions), unwritten);
    }
}

/// [`Guard::owe`] for code holding only the guard's inner state (drop handlers).
pub(super) fn owe(
    inner: &Arc<GuardInner>,
    completion: Completion,
    until: Instant,
    refused: Option<&StoreError>,
) {
    if let Some(error) = refused {
        let key = completion.key.as_str();
        inner.observe(key, Decision::CompletionRetrying { error });
    }
    let len = {
        let mut queue = lock(inner);
        queue.push(completion, until);
        inner.owing.store(true, Ordering::Release);
        queue.len()
    };
    let lease = inner.config.lease();
    match (refused, inner.config.deferred_completion()) {
        (None, Some(_)) if len >= MAX_DEFERRED => schedule(inner, Duration::ZERO, true),
        (None, Some(delay)) => {
            // Written no later than the claim's next renewal would have been due, so that
            // two thirds of its lease are left to retry in, as for any completion.
            let renewal_due = until
                .checked_sub(lease - super::lease::renewal_period(lease))
                .unwrap_or_else(Instant::now);
            let due = renewal_due.saturating_duration_since(Instant::now());
            if due < delay {
                schedule(inner, due, true);
            } else {
                schedule(inner, delay, false);
            }
        }
        _ => schedule(inner, retry_pauses(lease).0, false),
    }
}

/// Makes sure a task will write the queue: after `delay`, then with backoff while the
/// store fails, until the queue is empty (`once`: one write after `delay`, beside any
/// timer).
pub(super) fn schedule(inner: &Arc<GuardInner>, delay: Duration, once: bool) {
    if !once && inner.flush_scheduled.swap(true, Ordering::AcqRel) {
        return; // a task is already on it
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return; // written by the next claim, by `flush`, or when the guard is dropped
    };
    let weak = Arc::downgrade(inner);
    let (first, max) = retry_pauses(inner.config.lease());
    runtime.spawn(async move {
        if once {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(inner) = weak.upgrade() {
                let _ = Guard { inner }.write_owed().await;
            }
            return;
        }
        let mut delay = delay;
        let mut backoff = first;
        loop {
            tokio::time::sleep(delay).await;
            // Not holding the guard while asleep: its last clone may go meanwhile.
            let Some(inner) = weak.upgrade() else {
                return; // the guard's drop made the final attempt
            };
            let guard = Guard { inner };
            if guard.write_owed().await.is_err() {
                delay = backoff;
                backoff = (backoff * 2).min(max);
                continue;
            }
            guard.inner.flush_scheduled.store(false, Ordering::Release);
            let more = lock(&guard.inner).len() > 0;
            if !more || guard.inner.flush_scheduled.swap(true, Ordering::AcqRel) {
                return;
            }
            delay = guard.inner.config.deferred_completion().unwrap_or(first);
            backoff = first;
        }
    });
}
