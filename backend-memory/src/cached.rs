//! [`CachedStore`]: a local cache of completed keys in front of any store.

use std::time::Duration;

use async_trait::async_trait;
use eventonce_core::backend::{check_many, saturating_deadline};
use eventonce_core::{Claim, Completion, IdempotencyStore, Record, StoreError};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use tokio::time::Instant;

/// A bounded local cache of the keys this process completed, in front of another store, so
/// that a burst of redeliveries of an event costs no round trip.
///
/// Off unless you wrap a store in it. Only keys completed through this wrapper are cached,
/// each for the completed record's TTL or `max_ttl`, whichever is shorter, so the cache
/// never answers `Completed` for longer than the store would. A key completed by another
/// process still costs its round trip. Claims, releases and renewals always go to the
/// store. A record deleted behind the cache's back (an operator releasing a completed
/// event) is still answered `Completed` for up to `max_ttl`: keep it short.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; pub mod memory { pub use eventonce_memory::*; } }
/// use std::time::Duration;
/// use eventonce::{Claim, IdempotencyStore};
/// use eventonce::memory::{CachedStore, MemoryStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventonce::StoreError> {
/// let store = CachedStore::new(MemoryStore::new(), 100_000, Duration::from_secs(600));
/// assert_eq!(store.try_claim("k", "a", Duration::from_secs(30)).await?, Claim::Acquired);
/// assert!(store.complete("k", "a", Duration::from_secs(3600)).await?);
/// // Answered from the cache:
/// assert_eq!(store.try_claim("k", "b", Duration::from_secs(30)).await?, Claim::Completed);
/// assert_eq!(store.hits(), 1);
/// # Ok(())
/// # }
/// ```
pub struct CachedStore<S> {
    inner: S,
    cache: Cache<String, Instant>,
    max_ttl: Duration,
    hits: std::sync::atomic::AtomicU64,
}

impl<S> std::fmt::Debug for CachedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("entries", &self.cache.entry_count())
            .field("max_ttl", &self.max_ttl)
            .finish()
    }
}

/// Each cached key expires when its cached TTL does.
struct Until;

impl Expiry<String, Instant> for Until {
    fn expire_after_create(
        &self,
        _key: &String,
        until: &Instant,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(until.saturating_duration_since(Instant::now()))
    }
}

impl<S> CachedStore<S> {
    /// Wraps `inner` with a cache of up to `capacity` keys, each kept at most `max_ttl`.
    pub fn new(inner: S, capacity: u64, max_ttl: Duration) -> Self {
        CachedStore {
            inner,
            cache: Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(Until)
                .build(),
            max_ttl,
            hits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Claims answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether the cache knows `key` completed.
    fn cached(&self, key: &str) -> bool {
        match self.cache.get(key) {
            Some(until) if until > Instant::now() => {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Remembers the completions the store accepted; `started` is from before the call,
    /// so a cached key never outlives the store's record.
    fn remember(&self, completions: &[Completion], done: &[bool], started: Instant) {
        for (c, done) in completions.iter().zip(done) {
            if *done {
                self.remember_one(&c.key, c.ttl, started);
            }
        }
    }

    /// The claims of `keys` the cache answers (completed), in order, `None` where the store
    /// must answer; and the keys to ask the store.
    fn split_cached(&self, keys: &[String]) -> (Vec<Option<Claim>>, Vec<String>) {
        let mut claims = Vec::with_capacity(keys.len());
        let mut ask = Vec::new();
        for key in keys {
            if self.cached(key) {
                claims.push(Some(Claim::Completed));
            } else {
                claims.push(None);
                ask.push(key.clone());
            }
        }
        (claims, ask)
    }

    /// Remembers one completion the store accepted (see [`remember`](Self::remember)).
    fn remember_one(&self, key: &str, ttl: Duration, started: Instant) {
        let until = saturating_deadline(started, ttl.min(self.max_ttl));
        self.cache.insert(key.to_owned(), until);
    }
}

/// The claims of [`CachedStore::split_cached`] with the store's `answers` for the keys it
/// was asked (`ask`) filled in, in order; an answer count that is not `ask`'s is invalid.
fn merge_answers(
    claims: Vec<Option<Claim>>,
    ask: &[String],
    answers: Vec<Claim>,
) -> Result<Vec<Claim>, StoreError> {
    if answers.len() != ask.len() {
        return Err(StoreError::InvalidData {
            key: ask.first().cloned().unwrap_or_default(),
            detail: format!("{} answers to {} claims", answers.len(), ask.len()),
        });
    }
    let mut answers = answers.into_iter();
    Ok(claims
        .into_iter()
        .filter_map(|c| c.or_else(|| answers.next()))
        .collect())
}

/// Which of `n` completions a failed call says were written (a partial answer's).
fn written_before(err: &StoreError, n: usize) -> Vec<bool> {
    err.answers(n)
        .into_iter()
        .map(|a| a == Some(true))
        .collect()
}

#[async_trait]
impl<S: IdempotencyStore> IdempotencyStore for CachedStore<S> {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        if self.cached(key) {
            return Ok(Claim::Completed);
        }
        self.inner.try_claim(key, owner, lease).await
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let started = Instant::now();
        let done = self.inner.complete(key, owner, ttl).await?;
        if done {
            self.remember_one(key, ttl, started);
        }
        Ok(done)
    }

    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let done = self
            .inner
            .complete_with_result(key, owner, ttl, result)
            .await?;
        if done {
            self.remember_one(key, ttl, started);
        }
        Ok(done)
    }

    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        self.inner.get_with_result(key).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.inner.release(key, owner).await
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.inner.extend(key, owner, lease).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }

    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        check_many(keys.iter().map(String::as_str))?;
        let (claims, ask) = self.split_cached(keys);
        if ask.is_empty() {
            return Ok(claims.into_iter().flatten().collect());
        }
        let answers = self.inner.try_claim_many(&ask, owner, lease).await?;
        merge_answers(claims, &ask, answers)
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        let started = Instant::now();
        match self.inner.complete_many(completions).await {
            Ok(done) => {
                self.remember(completions, &done, started);
                Ok(done)
            }
            Err(err) => {
                // Remember the completions a partial answer says were written.
                let written = written_before(&err, completions.len());
                self.remember(completions, &written, started);
                Err(err)
            }
        }
    }

    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        self.inner.release_many(keys, owner).await
    }

    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.inner.extend_many(keys, owner, lease).await
    }

    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        if self.cached(key) {
            let done = if completions.is_empty() {
                Ok(Vec::new())
            } else {
                self.complete_many(completions).await
            };
            return Ok((done, Claim::Completed));
        }
        let started = Instant::now();
        let (done, claim) = self
            .inner
            .complete_then_claim(completions, key, owner, lease)
            .await?;
        if let Ok(done) = &done {
            self.remember(completions, done, started);
        }
        Ok((done, claim))
    }

    async fn complete_then_claim_many(
        &self,
        completions: &[Completion],
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Vec<Claim>), StoreError> {
        check_many(
            completions
                .iter()
                .map(|c| c.key.as_str())
                .chain(keys.iter().map(String::as_str)),
        )?;
        // The keys cached as completed are answered here; the rest go to the store with
        // the completions.
        let (claims, ask) = self.split_cached(keys);
        let started = Instant::now();
        let (done, answers) = self
            .inner
            .complete_then_claim_many(completions, &ask, owner, lease)
            .await?;
        match &done {
            Ok(done) => self.remember(completions, done, started),
            Err(err) => {
                let written = written_before(err, completions.len());
                self.remember(completions, &written, started);
            }
        }
        Ok((done, merge_answers(claims, &ask, answers)?))
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn max_batch_chunk(&self) -> usize {
        self.inner.max_batch_chunk()
    }
}
