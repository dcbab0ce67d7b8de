//! Fault injection: a store wrapper that fails or hangs on command.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Claim, Completion, IdempotencyStore, Record, StoreError};

/// A fault a [`FaultyStore`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Pass every call through.
    None = 0,
    /// Fail every call with `StoreError::Unavailable`.
    Fail = 1,
    /// Never answer (a black hole).
    Hang = 2,
}

/// Switches the fault of a [`FaultyStore`] from outside.
#[derive(Debug, Clone)]
pub struct FaultControl(Arc<AtomicU8>);

impl FaultControl {
    /// Sets the fault injected from now on.
    pub fn set(&self, fault: Fault) {
        self.0.store(fault as u8, Ordering::SeqCst);
    }

    fn get(&self) -> Fault {
        match self.0.load(Ordering::SeqCst) {
            1 => Fault::Fail,
            2 => Fault::Hang,
            _ => Fault::None,
        }
    }
}

/// Wraps a real store and injects faults on command.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: Arc<S>,
    control: FaultControl,
}

impl<S> Clone for FaultyStore<S> {
    fn clone(&self) -> Self {
        FaultyStore {
            inner: Arc::clone(&self.inner),
            control: self.control.clone(),
        }
    }
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`, passing calls through until told otherwise.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner: Arc::new(inner),
            control: FaultControl(Arc::new(AtomicU8::new(0))),
        }
    }

    /// A handle that switches the fault.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    async fn gate(&self) -> Result<(), StoreError> {
        match self.control.get() {
            Fault::None => Ok(()),
            Fault::Fail => Err(StoreError::Unavailable {
                message: "injected fault: connection refused".into(),
                source: None,
            }),
            Fault::Hang => std::future::pending().await,
        }
    }
}

#[async_trait]
impl<S: IdempotencyStore + 'static> IdempotencyStore for FaultyStore<S> {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.gate().await?;
        self.inner.try_claim(key, owner, lease).await
    }
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.complete(key, owner, ttl).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.release(key, owner).await
    }
    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.extend(key, owner, lease).await
    }
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.gate().await?;
        self.inner.get(key).await
    }
    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner
            .complete_with_result(key, owner, ttl, result)
            .await
    }
    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        self.gate().await?;
        self.inner.get_with_result(key).await
    }
    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.gate().await?;
        self.inner.try_claim_many(keys, owner, lease).await
    }
    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        self.gate().await?;
        self.inner.complete_many(completions).await
    }
    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        self.gate().await?;
        self.inner.release_many(keys, owner).await
    }
    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.gate().await?;
        self.inner.extend_many(keys, owner, lease).await
    }
    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        self.gate().await?;
        self.inner
            .complete_then_claim(completions, key, owner, lease)
            .await
    }
    async fn complete_then_claim_many(
        &self,
        completions: &[Completion],
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Vec<Claim>), StoreError> {
        self.gate().await?;
        self.inner
            .complete_then_claim_many(completions, keys, owner, lease)
            .await
    }
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn max_batch_chunk(&self) -> usize {
        self.inner.max_batch_chunk()
    }
}
