//! `Guard::run_in_transaction`: the claim, the handler's writes and the completion in one
//! transaction of a [`TransactionalStore`].

use std::future::Future;
use std::time::Instant;

use super::outcome::{Ctx, Decision, Outcome};
use super::{new_owner, store_name, Guard};
use crate::envelope::EventEnvelope;
use crate::error::{GuardError, StoreError};
use crate::identify::{owner_with, Identify};
use crate::store::{Claim, TransactionalStore};

impl Guard {
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
    ///
    /// # Errors
    ///
    /// [`GuardError::InProgress`], [`GuardError::Handler`], [`GuardError::Store`] and
    /// [`GuardError::InvalidEvent`], as listed above.
    pub async fn run_in_transaction<I, S, H, F, T, E>(
        &self,
        store: &S,
        event: &I,
        handler: H,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        I: Identify + ?Sized,
        S: TransactionalStore,
        H: FnOnce(S::Tx) -> F,
        F: Future<Output = (S::Tx, Result<T, E>)>,
        E: std::fmt::Display,
    {
        let view = event.view();
        self.traced(&view, || {
            self.run_in_transaction_untraced(store, event, &view, handler)
        })
        .await
    }

    /// [`run_in_transaction`](Self::run_in_transaction) without its span and metrics.
    async fn run_in_transaction_untraced<I, S, H, F, T, E>(
        &self,
        store: &S,
        event: &I,
        envelope: &EventEnvelope,
        handler: H,
    ) -> Result<Outcome<T>, GuardError<E>>
    where
        I: Identify + ?Sized,
        S: TransactionalStore,
        H: FnOnce(S::Tx) -> F,
        F: Future<Output = (S::Tx, Result<T, E>)>,
        E: std::fmt::Display,
    {
        if self.inner.config.disabled() {
            return Self::run_in_transaction_disabled(store, handler).await;
        }
        let started = Instant::now();
        let resolved = self.identify(event, envelope)?;
        self.check_age(envelope, &resolved)?;
        let (hash, key) = (&resolved.hash, &resolved.key);
        let mut ctx = Ctx::new(&self.inner.config, envelope, hash, key, started);
        let fingerprint = resolved.fingerprint.as_deref();
        let owner = owner_with(new_owner(), fingerprint);
        let t = Instant::now();
        let claimed = self.claim_in(store, key, &owner).await;
        ctx.store_time += t.elapsed();
        let tx = match claimed {
            Ok((tx, Claim::Acquired)) => {
                self.observe(&ctx, Decision::ClaimedInTransaction);
                tx
            }
            Ok((tx, answer)) => {
                let _ = store.rollback(tx).await;
                if let Some(conflict) = self.conflict(&mut ctx, fingerprint).await {
                    return Err(conflict);
                }
                let decision = if answer == Claim::Completed {
                    Decision::Duplicate
                } else {
                    Decision::InProgress
                };
                self.observe(&ctx, decision);
                return match answer {
                    Claim::Completed => Ok(Outcome::Duplicate),
                    _ => Err(GuardError::InProgress),
                };
            }
            Err(err) if !err.is_outage() => return Err(self.refused_by_store(&ctx, &err)),
            Err(err) => return Err(self.refuse_transaction::<S, E>(&ctx, err)),
        };
        let (tx, result) = handler(tx).await;
        match result {
            Ok(value) => {
                let t = Instant::now();
                let committed = complete_and_commit(store, tx, key, &owner, ctx.ttl).await;
                ctx.store_time += t.elapsed();
                match committed {
                    Ok(()) => {
                        self.observe(&ctx, Decision::Committed);
                        Ok(Outcome::Processed(value))
                    }
                    Err(err) => Err(self.refuse_transaction::<S, E>(&ctx, err)),
                }
            }
            Err(error) => {
                let _ = store.rollback(tx).await;
                self.observe(&ctx, Decision::RolledBack { error: &error });
                Err(GuardError::Handler(error))
            }
        }
    }

    /// Begins a transaction and claims `key` in it; the transaction is rolled back when
    /// the claim call fails.
    async fn claim_in<S: TransactionalStore>(
        &self,
        store: &S,
        key: &str,
        owner: &str,
    ) -> Result<(S::Tx, Claim), StoreError> {
        let mut tx = store.begin().await?;
        match store
            .claim_in(&mut tx, key, owner, self.inner.config.lease())
            .await
        {
            Ok(claim) => Ok((tx, claim)),
            Err(err) => {
                let _ = store.rollback(tx).await;
                Err(err)
            }
        }
    }

    /// Observes a run refused because the transactional store failed.
    fn refuse_transaction<S, E>(&self, ctx: &Ctx<'_>, error: StoreError) -> GuardError<E> {
        let store = store_name::<S>();
        let refused = Decision::TransactionRefused {
            store,
            error: &error,
        };
        self.observe(ctx, refused);
        GuardError::Store(error)
    }
}

/// Marks `key` completed inside `tx` and commits; rolls back when the claim vanished or
/// the completion failed.
async fn complete_and_commit<S: TransactionalStore>(
    store: &S,
    mut tx: S::Tx,
    key: &str,
    owner: &str,
    ttl: std::time::Duration,
) -> Result<(), StoreError> {
    match store.complete_in(&mut tx, key, owner, ttl).await {
        Ok(true) => store.commit(tx).await,
        Ok(false) => {
            let _ = store.rollback(tx).await;
            Err(StoreError::InvalidData {
                key: key.to_owned(),
                detail: "the claim vanished inside its own transaction".into(),
            })
        }
        Err(err) => {
            let _ = store.rollback(tx).await;
            Err(err)
        }
    }
}
