//! Claims whose run is gone: a `run` or `run_batch` future dropped before it settled its
//! claims, or a guard dropped with completions still owed. Their drop guards settle them
//! in the background (or leave them to expire after the lease).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::deferred::{self, lease_end};
use super::outcome::{Ctx, Decision, Scope};
use super::GuardInner;
use crate::error::StoreError;
use crate::store::{Completion, IdempotencyStore};

/// What to do with a claim if the `run` future is dropped before it finished with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDrop {
    /// The handler had not finished: release the claim.
    Release,
    /// The handler had succeeded: complete the claim.
    Complete,
    /// Already completed or released.
    Nothing,
}

/// The claim of a run still to settle if its future is dropped.
pub(super) struct PendingClaim {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    pub(super) owner: String,
    ttl: Duration,
    pub(super) on_drop: OnDrop,
    /// When the claim's lease ends, as far as the guard knows.
    pub(super) until: tokio::time::Instant,
    /// The handler's encoded result, kept with the completion (`run_stored`).
    pub(super) result: Option<Vec<u8>>,
    guard: Arc<GuardInner>,
}

impl PendingClaim {
    /// The claim `owner` just acquired for `ctx`'s event: released if dropped now.
    pub(super) fn new(guard: &Arc<GuardInner>, ctx: &Ctx<'_>, owner: String) -> Self {
        PendingClaim {
            store: Arc::clone(&guard.store),
            key: ctx.key.to_owned(),
            owner,
            ttl: ctx.ttl,
            on_drop: OnDrop::Release,
            until: lease_end(ctx.claimed, guard.config.lease()),
            result: None,
            guard: Arc::clone(guard),
        }
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        if self.on_drop == OnDrop::Nothing {
            return;
        }
        self.guard.observe(Scope::Guard, Decision::Cancelled);
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
                result: self.result.take(),
            };
            deferred::owe(&self.guard, completion, self.until, Some(&refused));
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
                );
            },
        );
    }
}

/// The claims of a batch still to settle if its future is dropped.
pub(super) struct PendingBatch {
    pub(super) guard: Arc<GuardInner>,
    pub(super) owner: String,
    pub(super) keys: Vec<String>,
    pub(super) ttls: Vec<Duration>,
    pub(super) settle: Vec<OnDrop>,
    /// When the last claim or renewal of the batch that the store confirmed was sent.
    pub(super) confirmed: tokio::time::Instant,
    /// The completions being sent (their keys moved out of `keys`, their `settle` then
    /// `Nothing`): owed if the batch is dropped before the store answers.
    pub(super) completing: Arc<[Completion]>,
    /// The releases being sent, likewise: sent again if the batch is dropped.
    pub(super) releasing: Vec<String>,
    /// The encoded result of each slot whose handler succeeded, kept with its completion
    /// (`run_batch_stored`); empty for a batch that keeps no results.
    pub(super) results: Vec<Option<Vec<u8>>>,
}

impl PendingBatch {
    /// The claims of a batch `owner` just acquired (`keys`, each kept for its `ttls` once
    /// completed), confirmed by the claim call sent at `confirmed`: released if dropped.
    pub(super) fn new(
        guard: &Arc<GuardInner>,
        owner: String,
        keys: Vec<String>,
        ttls: Vec<Duration>,
        confirmed: tokio::time::Instant,
    ) -> Self {
        PendingBatch {
            guard: Arc::clone(guard),
            owner,
            settle: vec![OnDrop::Release; keys.len()],
            keys,
            ttls,
            confirmed,
            completing: Arc::default(),
            releasing: Vec::new(),
            results: Vec::new(),
        }
    }
}

impl Drop for PendingBatch {
    fn drop(&mut self) {
        let completing = std::mem::take(&mut self.completing);
        let mut releases = std::mem::take(&mut self.releasing);
        if completing.is_empty()
            && releases.is_empty()
            && self.settle.iter().all(|s| *s == OnDrop::Nothing)
        {
            return;
        }
        self.guard.observe(Scope::Guard, Decision::Cancelled);
        // Succeeded handlers' completions are owed: kept and retried until written.
        let refused = StoreError::Unavailable {
            message: "the batch was dropped before its completions were written".into(),
            source: None,
        };
        let until = lease_end(self.confirmed, self.guard.config.lease());
        for completion in completing.iter() {
            deferred::owe(&self.guard, completion.clone(), until, Some(&refused));
        }
        let mut results = std::mem::take(&mut self.results).into_iter();
        for ((key, ttl), settle) in self.keys.drain(..).zip(&self.ttls).zip(&self.settle) {
            let result = results.next().flatten();
            match settle {
                OnDrop::Complete => {
                    let owner = self.owner.clone();
                    let completion = Completion {
                        key,
                        owner,
                        ttl: *ttl,
                        result,
                    };
                    deferred::owe(&self.guard, completion, until, Some(&refused));
                }
                OnDrop::Release => releases.push(key),
                OnDrop::Nothing => {}
            }
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
        let (chunk, timeout) = chunking(&*store, releases.len(), &self.guard.config);
        settle_in_background(
            &runtime,
            timeout,
            async move {
                for keys in releases.chunks(chunk) {
                    store.release_many(keys, &owner).await?;
                }
                Ok(())
            },
            |err| {
                tracing::error!(
                    error = %err,
                    "STORE_ERROR: Settling a cancelled batch's claims failed; they expire after the lease"
                );
            },
        );
    }
}

impl Drop for GuardInner {
    /// Deferred completions still queued when the last clone of a guard goes are written
    /// by a spawned task (or, without a runtime, left to expire after the lease).
    fn drop(&mut self) {
        let owed = match self.deferred.get_mut() {
            Ok(queue) => queue,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Only the completions still inside their lease, one per key: a key named twice
        // would make the store refuse the whole write.
        let stale = owed.remove_stale(tokio::time::Instant::now());
        if !stale.is_empty() {
            tracing::error!(
                completions = stale.len(),
                "STORE_ERROR: Guard dropped with completions whose lease had ended unwritten; a redelivery may process those events again"
            );
        }
        let queue = owed.take_completions();
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
        let (chunk, timeout) = chunking(&*store, queue.len(), &self.config);
        settle_in_background(
            &runtime,
            timeout,
            async move {
                for completions in queue.chunks(chunk) {
                    store.complete_many(completions).await?;
                }
                Ok(())
            },
            |err| {
                tracing::error!(
                    error = %err,
                    "STORE_ERROR: Writing deferred completions at drop failed; those claims expire after the lease"
                );
            },
        );
    }
}

/// The chunk size of `store` for a background settlement of `n` keys, and the time it is
/// given: one store timeout per chunk.
fn chunking(
    store: &dyn crate::IdempotencyStore,
    n: usize,
    config: &crate::IdempotencyConfig,
) -> (usize, Duration) {
    let chunk = store.max_batch_chunk().max(1);
    let chunks = u32::try_from(n.div_ceil(chunk)).unwrap_or(u32::MAX).max(1);
    (chunk, config.store_timeout().saturating_mul(chunks))
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
