//! The switched-off guard (`ConfigBuilder::disabled`, `EVENTONCE_DISABLED`): every
//! handler runs, every answer is `Unprotected`, and no store is called or created.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::outcome::Outcome;
use super::Guard;
use crate::config::IdempotencyConfig;
use crate::error::{GuardError, StoreError};
use crate::store::{Claim, IdempotencyStore, Record, TransactionalStore};

impl Guard {
    /// A guard whose store is made by `make_store` only when the configuration is not
    /// [disabled](IdempotencyConfig::disabled): a switched-off guard creates and connects
    /// no store at all (with [`Guard::new`] the store is made before the guard sees the
    /// configuration).
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; }
    /// use std::sync::Arc;
    /// use eventonce::{EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, Outcome, StoreError};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = IdempotencyConfig::builder("billing").disabled(true).build()?;
    /// # if !config.disabled() { return Ok(()) } // EVENTONCE_DISABLED=0 in this environment
    /// let guard = Guard::connect(config, || async {
    ///     // `RedisStore::connect(url).await` in a consumer: not called while switched off.
    ///     Err::<Arc<dyn IdempotencyStore>, StoreError>(StoreError::InvalidArgument("never".into()))
    /// })
    /// .await?;
    /// let event = EventEnvelope::from_slice(br#"{"event_id":"e-1","event_type":"t","data":{}}"#)?;
    /// for _delivery in 0..2 {
    ///     let outcome = guard.run(&event, async { Ok::<_, std::io::Error>(7) }).await?;
    ///     assert_eq!(outcome, Outcome::Unprotected(7)); // both deliveries ran
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The error of `make_store`, when it is called and fails.
    pub async fn connect<S, M, Fut, E>(config: IdempotencyConfig, make_store: M) -> Result<Self, E>
    where
        S: IdempotencyStore + 'static,
        M: FnOnce() -> Fut,
        Fut: Future<Output = Result<S, E>>,
    {
        if config.disabled() {
            return Ok(Guard::from_arc(Arc::new(NoStore), config));
        }
        Ok(Guard::new(make_store().await?, config))
    }

    /// Whether this guard is switched off (see [`IdempotencyConfig::disabled`]).
    pub fn disabled(&self) -> bool {
        self.inner.config.disabled()
    }

    /// `handler`'s answer as a switched-off guard gives it: `Unprotected`, or the
    /// handler's error.
    pub(super) async fn run_disabled<F, T, E>(handler: F) -> Result<Outcome<T>, GuardError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        handler
            .await
            .map(Outcome::Unprotected)
            .map_err(GuardError::Handler)
    }

    /// A batch as a switched-off guard runs it: every handler, one after the other,
    /// answers in order.
    pub(super) async fn run_batch_disabled<'a, I, H, F, T, E>(
        events: &'a [I],
        mut handler: H,
    ) -> Vec<Result<Outcome<T>, GuardError<E>>>
    where
        H: FnMut(&'a I) -> F,
        F: Future<Output = Result<T, E>>,
    {
        let mut answers = Vec::with_capacity(events.len());
        for event in events {
            answers.push(Self::run_disabled(handler(event)).await);
        }
        answers
    }

    /// A transactional run as a switched-off guard makes it: the handler's transaction is
    /// begun, and committed when it succeeds (rolled back when it fails), with no claim
    /// and no record in it.
    pub(super) async fn run_in_transaction_disabled<S, H, F, T, E>(
        store: &S,
        handler: H,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        S: TransactionalStore,
        H: FnOnce(S::Tx) -> F,
        F: Future<Output = (S::Tx, Result<T, E>)>,
    {
        let tx = store.begin().await.map_err(GuardError::Store)?;
        let (tx, result) = handler(tx).await;
        match result {
            Ok(value) => {
                store.commit(tx).await.map_err(GuardError::Store)?;
                Ok(Outcome::Unprotected(value))
            }
            Err(e) => {
                let _ = store.rollback(tx).await;
                Err(GuardError::Handler(e))
            }
        }
    }
}

/// The store of a guard made switched off by [`Guard::connect`]: never called (every
/// entry point of a switched-off guard returns before the store), and an error if it is.
#[derive(Debug)]
struct NoStore;

impl NoStore {
    fn refused() -> StoreError {
        StoreError::Unavailable {
            message: "the guard is switched off (EVENTONCE_DISABLED or ConfigBuilder::disabled) \
                      and was made without a store"
                .to_owned(),
            source: None,
        }
    }
}

#[async_trait]
impl IdempotencyStore for NoStore {
    async fn try_claim(&self, _: &str, _: &str, _: Duration) -> Result<Claim, StoreError> {
        Err(Self::refused())
    }
    async fn complete(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(Self::refused())
    }
    async fn release(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(Self::refused())
    }
    async fn extend(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(Self::refused())
    }
    async fn get(&self, _: &str) -> Result<Option<Record>, StoreError> {
        Err(Self::refused())
    }
    fn backend_name(&self) -> &'static str {
        "none (switched off)"
    }
}
