//! The storage trait every backend implements: a few atomic, owner-checked operations.
//!
//! Policy (leases, heartbeats, fail modes, timeouts) lives in [`Guard`](crate::Guard); a
//! store only moves one key through `absent → processing → completed` atomically.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// The guard's timers use it too, by this path.
pub(crate) use crate::backend::saturating_deadline;
use crate::backend::{check_complete_then_claim, check_complete_then_claim_many, check_many};
use crate::error::StoreError;

/// What [`IdempotencyStore::try_claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key was absent (or its record had expired): the caller now holds the claim.
    Acquired,
    /// The event was completed before: a duplicate.
    Completed,
    /// Another owner holds a live claim.
    InProgress,
}

/// The state of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed by an owner whose lease has not expired.
    Processing,
    /// Processed; kept for the event type's TTL.
    Completed,
}

impl RecordState {
    /// `"processing"` or `"completed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Processing => "processing",
            RecordState::Completed => "completed",
        }
    }
}

/// One record, as [`IdempotencyStore::get`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Processing or completed.
    pub state: RecordState,
    /// The owner token of the claim that wrote the record, when the store knows it (a
    /// record written by an older writer has none).
    pub owner: Option<String>,
    /// Time left before the record expires, when it expires.
    pub ttl_left: Option<Duration>,
    /// When the record was last written (claimed, renewed or completed), by the store's
    /// clock, when the store knows it.
    pub updated_at: Option<std::time::SystemTime>,
}

impl Record {
    /// The payload fingerprint the record was written with (32 hex digits), when its
    /// claim had one ([`Identity::with_fingerprint`](crate::Identity::with_fingerprint),
    /// [`IdentityRule::EventId`](crate::IdentityRule::EventId) or `Fields`). Records of
    /// older versions and of `KeyScheme::PythonV2` have none.
    pub fn fingerprint(&self) -> Option<&str> {
        self.owner
            .as_deref()
            .and_then(crate::identify::fingerprint_of_owner)
    }
}

/// A store of idempotency records.
///
/// Every method is atomic in its backend, and every transition is owner-checked: nothing
/// deletes, extends or completes a claim that another owner holds. An expired record counts
/// as absent.
///
/// The shared conformance suite (`conformance` feature) checks these rules against a real
/// store.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for `owner` for `lease` if it is absent or expired; otherwise reports
    /// whether it is completed or held by another owner.
    async fn try_claim(&self, key: &str, owner: &str, lease: Duration)
        -> Result<Claim, StoreError>;

    /// Marks `key` completed for `ttl`, only if `owner` still holds its claim. Returns
    /// `false` when it does not (the lease expired and the claim was lost).
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Deletes the claim on `key`, only if `owner` holds it and it is still processing.
    /// Returns whether it deleted it.
    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError>;

    /// Renews `owner`'s claim on `key` for `lease` from now, only if `owner` holds it and it
    /// is still processing. Returns whether it renewed it.
    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError>;

    /// Reads the record of `key`, if there is a live one.
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;

    /// Claims every key of `keys` for `owner` for `lease`, as [`try_claim`] does for one,
    /// and returns each key's answer in order. Backends that can do it in one round trip
    /// (one Lua call, one SQL statement) override it; the default calls `try_claim` for each
    /// key in turn. The keys must be distinct ([`check_many`]).
    ///
    /// When it fails, some keys may have been claimed: the caller releases them (or lets
    /// their lease expire).
    ///
    /// [`try_claim`]: IdempotencyStore::try_claim
    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        check_many(keys.iter().map(String::as_str))?;
        let mut claims = Vec::with_capacity(keys.len());
        for key in keys {
            claims.push(self.try_claim(key, owner, lease).await?);
        }
        Ok(claims)
    }

    /// Completes each of `completions` as [`complete`](IdempotencyStore::complete) does
    /// for one (or [`complete_with_result`](IdempotencyStore::complete_with_result) for a
    /// completion with a result), and returns whether each was still held by its owner, in
    /// order. The default makes those calls all at once (so the batch takes about one
    /// call's time, not the sum of them: the guard bounds the whole batch by one store
    /// timeout); the keys must be distinct. A store that can fail for some keys and not others (a Redis
    /// Cluster) answers [`StoreError::Partial`] with each key's answer, the same for
    /// `release_many` and `extend_many`.
    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        check_many(completions.iter().map(|c| c.key.as_str()))?;
        futures_util::future::try_join_all(completions.iter().map(|c| match &c.result {
            Some(result) => self.complete_with_result(&c.key, &c.owner, c.ttl, result),
            None => self.complete(&c.key, &c.owner, c.ttl),
        }))
        .await
    }

    /// Releases `owner`'s claims on `keys` as [`release`](IdempotencyStore::release) does
    /// for one, and returns whether each was released, in order. The default makes the
    /// `release` calls all at once; the keys must be distinct.
    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        check_many(keys.iter().map(String::as_str))?;
        futures_util::future::try_join_all(keys.iter().map(|key| self.release(key, owner))).await
    }

    /// Renews `owner`'s claims on `keys` as [`extend`](IdempotencyStore::extend) does for
    /// one, and returns whether each was renewed, in order. The default makes the `extend`
    /// calls all at once (a batch's renewal takes about one call's time, not the sum of
    /// them, within the one store timeout that bounds it); the keys must be distinct.
    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        check_many(keys.iter().map(String::as_str))?;
        futures_util::future::try_join_all(keys.iter().map(|key| self.extend(key, owner, lease)))
            .await
    }

    /// Completes `completions`, then claims `key`: the deferred completions of earlier
    /// events travel with the next claim. Returns what [`complete_many`] and
    /// [`try_claim`] would, each half on its own: the completions' answers (or their
    /// error) beside the claim. `Err` means the claim failed, and with it nothing is known
    /// of the completions. A claim acquired is always returned, never dropped for a failed
    /// completion. Backends that can do both in one round trip override it; the default
    /// makes the two calls. `key` must not be one of the completions' keys.
    ///
    /// [`complete_many`]: IdempotencyStore::complete_many
    /// [`try_claim`]: IdempotencyStore::try_claim
    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        check_complete_then_claim(completions, key, owner, lease)?;
        let done = if completions.is_empty() {
            Ok(Vec::new())
        } else {
            self.complete_many(completions).await
        };
        let claim = self.try_claim(key, owner, lease).await?;
        Ok((done, claim))
    }

    /// Completes `completions`, then claims `keys` for `owner` for `lease`: one batch's
    /// completions travelling with the next batch's claims
    /// ([`BatchChain`](crate::BatchChain)), as [`complete_then_claim`] does for one key.
    /// Returns what [`complete_many`] and [`try_claim_many`] would, each half on its own:
    /// the completions' answers (or their error) beside each key's claim, in order. `Err`
    /// means the claims failed, and with them nothing is known of the completions; as
    /// after a failed `try_claim_many`, some keys may have been claimed (the caller
    /// releases them or lets their lease expire). Claims acquired are always returned,
    /// never dropped for a failed completion.
    ///
    /// Backends that can do both in one round trip override it (one script, one
    /// statement); the default makes the two calls at once. Either list may be empty; no
    /// key may appear twice among both ([`check_complete_then_claim_many`]).
    ///
    /// [`complete_then_claim`]: IdempotencyStore::complete_then_claim
    /// [`complete_many`]: IdempotencyStore::complete_many
    /// [`try_claim_many`]: IdempotencyStore::try_claim_many
    async fn complete_then_claim_many(
        &self,
        completions: &[Completion],
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Vec<Claim>), StoreError> {
        check_complete_then_claim_many(completions, keys, owner, lease)?;
        let done = async {
            if completions.is_empty() {
                return Ok(Vec::new());
            }
            self.complete_many(completions).await
        };
        let claims = async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            self.try_claim_many(keys, owner, lease).await
        };
        let (done, claims) = futures_util::future::join(done, claims).await;
        Ok((done, claims?))
    }

    /// [`complete`](IdempotencyStore::complete), keeping `result` (the handler's
    /// serialized answer, see [`Guard::run_stored`](crate::Guard::run_stored)) in the
    /// completed record, in the same atomic write: the record and its result appear
    /// together or not at all. [`get_with_result`](IdempotencyStore::get_with_result) reads
    /// it back. The default, for a store that keeps no results, completes without it: a
    /// duplicate then answers as a plain duplicate.
    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        let _ = result;
        self.complete(key, owner, ttl).await
    }

    /// [`get`](IdempotencyStore::get), with the result kept by
    /// [`complete_with_result`](IdempotencyStore::complete_with_result) when the record is
    /// completed and has one, in one read. A record without a result (a processing one, one
    /// completed by `complete`, an older writer's, a `KeyScheme::PythonV2` value) has
    /// `None`. The default, for a store that keeps no results, is `get` with `None`.
    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        Ok(self.get(key).await?.map(|record| (record, None)))
    }

    /// A short name of the backend for logs and errors: `"memory"`, `"redis"`, ...
    fn backend_name(&self) -> &'static str {
        "store"
    }

    /// The most keys the guard sends in one batch call (`try_claim_many`, `complete_many`,
    /// `release_many`, `extend_many`): [`Guard::run_batch`](crate::Guard::run_batch)
    /// splits a larger batch into chunks of this size, one store call each, so that each
    /// call finishes well inside the store timeout and keeps the server (a single-threaded
    /// Redis above all) busy for milliseconds, not for the whole batch. Each backend
    /// measures its own; the default is [`DEFAULT_BATCH_CHUNK`].
    fn max_batch_chunk(&self) -> usize {
        DEFAULT_BATCH_CHUNK
    }
}

/// The default of [`IdempotencyStore::max_batch_chunk`]: 1,000 keys per batch call.
pub const DEFAULT_BATCH_CHUNK: usize = 1_000;

/// One completion of a batch or of deferred completion: mark `key` completed for `ttl`,
/// only if `owner` still holds its claim, keeping `result` with the record when there is
/// one (as [`IdempotencyStore::complete_with_result`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The key.
    pub key: String,
    /// The owner token of the claim.
    pub owner: String,
    /// How long the completed record is kept.
    pub ttl: Duration,
    /// The handler's serialized answer to keep in the completed record
    /// ([`Guard::run_stored`](crate::Guard::run_stored)), written in the same atomic write
    /// as the completion; `None` for a completion without a result.
    pub result: Option<Vec<u8>>,
}

impl Completion {
    /// A completion of `key` for `owner`, kept for `ttl`, without a result.
    pub fn new(key: impl Into<String>, owner: impl Into<String>, ttl: Duration) -> Self {
        Completion {
            key: key.into(),
            owner: owner.into(),
            ttl,
            result: None,
        }
    }

    /// The same completion, keeping `result` with the completed record.
    #[must_use]
    pub fn with_result(mut self, result: impl Into<Vec<u8>>) -> Self {
        self.result = Some(result.into());
        self
    }
}

#[async_trait]
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for Arc<S> {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        (**self).try_claim(key, owner, lease).await
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        (**self).complete(key, owner, ttl).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        (**self).release(key, owner).await
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        (**self).extend(key, owner, lease).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        (**self).get(key).await
    }

    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        (**self).try_claim_many(keys, owner, lease).await
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        (**self).complete_many(completions).await
    }

    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        (**self).release_many(keys, owner).await
    }

    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        (**self).extend_many(keys, owner, lease).await
    }

    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        (**self)
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
        (**self)
            .complete_then_claim_many(completions, keys, owner, lease)
            .await
    }

    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        (**self).complete_with_result(key, owner, ttl, result).await
    }

    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        (**self).get_with_result(key).await
    }

    fn backend_name(&self) -> &'static str {
        (**self).backend_name()
    }

    fn max_batch_chunk(&self) -> usize {
        (**self).max_batch_chunk()
    }
}

/// A store that can keep its record in the handler's own database transaction, so that
/// the handler's writes and the completed record commit together or not at all (see
/// [`Guard::run_in_transaction`](crate::Guard::run_in_transaction)).
///
/// Inside a transaction there is no lease to renew: the claim is the transaction's lock on
/// the record, released when the transaction commits, rolls back or its connection dies.
#[async_trait]
pub trait TransactionalStore: Send + Sync {
    /// The transaction handed to the handler.
    type Tx: Send;

    /// Opens a transaction.
    async fn begin(&self) -> Result<Self::Tx, StoreError>;

    /// Claims `key` inside `tx`. `Acquired` means `tx` holds the record until it ends; a
    /// delivery racing it, in a transaction or not, answers `InProgress` while `tx` lives
    /// (a store may first wait a short while for `tx` to end, and then reports what it
    /// left: completed, or absent again after a rollback). After any answer but
    /// `Acquired`, the caller rolls `tx` back.
    async fn claim_in(
        &self,
        tx: &mut Self::Tx,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError>;

    /// Marks `key` completed for `ttl` inside `tx`, only if `owner` holds the claim.
    async fn complete_in(
        &self,
        tx: &mut Self::Tx,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// Commits `tx`.
    async fn commit(&self, tx: Self::Tx) -> Result<(), StoreError>;

    /// Rolls `tx` back.
    async fn rollback(&self, tx: Self::Tx) -> Result<(), StoreError>;
}
