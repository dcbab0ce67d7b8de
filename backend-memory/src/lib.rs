//! An in-memory [`IdempotencyStore`]: the embedded default of eventonce, for a single
//! consumer process, tests and development.
//!
//! Records live in a bounded map split into shards, each two ordered maps of records
//! ([hashlink](https://docs.rs/hashlink)'s `LinkedHashMap`) behind a lock of its own. Every call
//! takes one shard's lock for the few hundred nanoseconds it needs and never waits on I/O,
//! so a call is atomic on its key: concurrent claims of one key produce exactly one
//! [`Claim::Acquired`], and a completion, a renewal or a release by the owner is checked and
//! applied in one step. A claim of a key allocates the key once; a duplicate allocates
//! nothing.
//!
//! Each record carries its own expiry: a record past it answers as absent, and a claim
//! takes its place. The capacity is one budget for the whole store, whatever the shard a
//! key falls in. When the store is full, a new claim makes room, in this order, and never
//! at the cost of a live claim (a `processing` record whose lease has not ended):
//!
//! 1. an expired record (a lapsed claim, or a completed record past its TTL) is dropped;
//! 2. else the least recently used completed record is evicted before its TTL: a late
//!    duplicate of that event would run again, so each such eviction is counted
//!    ([`MemoryStats::evictions`], the `eventonce_memory_evictions_total` metric) and
//!    logged at WARN, at most once a minute;
//! 3. else, when every record is a live claim, the claim is refused with
//!    [`StoreError::Unavailable`], so the guard's fail mode applies; nothing is evicted.
//!
//! Costs: a call takes one shard's lock for a constant number of hash-map operations.
//! Expired records also leave as new claims pass by (a few at the front of the key's shard
//! on each insert). Making room looks at a bounded number of records at the front of the
//! key's shard; only when that shard holds nothing but live claims does it visit the other
//! shards, one lock at a time (at most 63). Once a shard's completed records pass 1,024,
//! their table is grown in one step for four times the shard's share of the capacity
//! (about 40 to 80 bytes per record of the share, at most 2^18 records a shard; past that
//! a shard grows as a hash map does): after that move of 1,792 records, no call moves a
//! shard's records to a larger or rebuilt table while the store fills or churns at its
//! capacity.
//!
//! Expired records are found where they gather: live claims are kept in the order their
//! lease was last set, which is the order they expire in under one lease per store (a
//! guard's `processing_ttl`); completed records in least recently used order. Making room
//! checks the first eight of each for an expired one, so in a shard of up to eight claims
//! and eight completed records every expired record goes before a live one. In a larger
//! shard, a completed record that expired behind eight more recently used live ones (a
//! shorter TTL than theirs) may outstay a live completed record that is evicted first.
//!
//! The store follows Tokio's clock (`tokio::time::Instant`), so tests can pause time to
//! check leases. Records are not shared between processes and vanish with the process:
//! use the Redis or PostgreSQL store when several consumers share a topic.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cached;
mod shard;

pub use cached::CachedStore;

use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use eventonce_core::backend::{
    check_arguments, check_batch, check_complete_then_claim_many, check_completions,
};
use eventonce_core::{Claim, Completion, IdempotencyStore, Record, StoreError};
use foldhash::quality::RandomState;
use shard::{Found, Removed, Shard};
use tokio::time::Instant;

/// The number of records [`MemoryStore::new`] keeps.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;

/// The name of the counter of completed records evicted before their TTL (with the
/// `metrics` feature; no labels).
pub const EVICTIONS_TOTAL: &str = "eventonce_memory_evictions_total";

/// The name of the counter of claims refused because every record was a live claim (with
/// the `metrics` feature; no labels).
pub const CLAIMS_REFUSED_TOTAL: &str = "eventonce_memory_claims_refused_total";

/// The most shards a store is split into.
const MAX_SHARDS: usize = 64;

/// The fewest records per shard before a store is split: small stores keep one exact LRU
/// order.
const MIN_SHARD_CAPACITY: u64 = 4096;

/// How long after a WARN about evictions the next one waits.
const EVICTION_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// An in-memory idempotency store. Cheap to clone: clones share the records.
///
/// ```
/// # mod eventonce { pub use eventonce_core::*; pub mod memory { pub use eventonce_memory::*; } }
/// use std::time::{Duration, SystemTime};
/// use eventonce::{Claim, IdempotencyStore};
/// use eventonce::memory::MemoryStore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventonce::StoreError> {
/// let store = MemoryStore::new();
/// let lease = Duration::from_secs(30);
/// assert_eq!(store.try_claim("k", "owner-a", lease).await?, Claim::Acquired);
/// assert_eq!(store.try_claim("k", "owner-b", lease).await?, Claim::InProgress);
/// assert!(store.complete("k", "owner-a", Duration::from_secs(3600)).await?);
/// assert_eq!(store.try_claim("k", "owner-b", lease).await?, Claim::Completed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Shards>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.inner.capacity)
            .field("shards", &self.inner.shards.len())
            .field("entries", &self.approximate_len())
            .finish()
    }
}

/// What a [`MemoryStore`] counted since it was built ([`MemoryStore::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MemoryStats {
    /// The capacity the store was built with.
    pub capacity: u64,
    /// Records held now (expired ones included until they are dropped).
    pub records: u64,
    /// Completed records evicted before their TTL to make room: a late duplicate of any of
    /// them would run again. Above zero, the capacity is too small for the events a TTL
    /// spans.
    pub evictions: u64,
    /// Claims refused because the store was full of live claims (each answered with
    /// [`StoreError::Unavailable`]).
    pub refused_claims: u64,
}

/// The shards, the store-wide budget, and the hasher that picks a key's shard. The hashers
/// (foldhash, randomly seeded per store) keep crafted keys from aiming at one shard or one
/// bucket.
struct Shards {
    shards: Box<[Mutex<Shard>]>,
    pick: RandomState,
    capacity: u64,
    /// Records held (and slots reserved for claims being inserted): at most `capacity`.
    len: AtomicU64,
    evictions: AtomicU64,
    refused: AtomicU64,
    /// When the store was built: the origin of `quiet_until`.
    born: Instant,
    /// Until when (nanoseconds from `born`) no WARN about evictions is due: an eviction
    /// before then counts itself without taking `warned`'s lock, which every eviction of a
    /// full store would otherwise take, on every thread.
    quiet_until: AtomicI64,
    warned: Mutex<Warned>,
}

/// The last WARN about evictions: when, and the count it reported up to.
#[derive(Default)]
struct Warned {
    at: Option<Instant>,
    evictions: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding up to [`DEFAULT_CAPACITY`] records.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A store holding up to `capacity` records (a capacity of 0 is taken as 1), a budget
    /// for the whole store. A full store drops expired records first, then evicts the least
    /// recently used completed ones (counted in [`MemoryStats::evictions`]: a late duplicate
    /// of an evicted event runs again, so size it above the number of events a TTL spans);
    /// it never evicts a live claim, and refuses a new claim when every record is one.
    pub fn with_capacity(capacity: u64) -> Self {
        let capacity = capacity.max(1);
        let wanted = usize::try_from(capacity / MIN_SHARD_CAPACITY).unwrap_or(MAX_SHARDS);
        let count = wanted.clamp(1, MAX_SHARDS);
        // Round down to a power of two, so a shard is picked with a mask.
        let count = 1usize << count.ilog2();
        // Each shard's completed records are grown for a multiple of its share of the
        // budget once they are many (`Shard::new` caps it).
        let share = capacity / count as u64;
        let presize =
            usize::try_from(share.saturating_mul(shard::PRESIZE_PER_SHARE)).unwrap_or(usize::MAX);
        let shards = (0..count)
            .map(|_| Mutex::new(Shard::new(presize)))
            .collect();
        MemoryStore {
            inner: Arc::new(Shards {
                shards,
                pick: RandomState::default(),
                capacity,
                len: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                born: Instant::now(),
                quiet_until: AtomicI64::new(i64::MIN),
                warned: Mutex::new(Warned::default()),
            }),
        }
    }

    /// The capacity this store was built with.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The number of records held (expired ones are counted until a claim passes them by
    /// or makes room in their place).
    pub fn approximate_len(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|shard| lock(shard).len() as u64)
            .sum()
    }

    /// What the store counted since it was built: its evictions of completed records
    /// before their TTL and its refused claims.
    ///
    /// ```
    /// # mod eventonce { pub use eventonce_core::*; pub mod memory { pub use eventonce_memory::*; } }
    /// use eventonce::memory::MemoryStore;
    /// let stats = MemoryStore::with_capacity(10).stats();
    /// assert_eq!((stats.capacity, stats.records, stats.evictions), (10, 0, 0));
    /// ```
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            capacity: self.inner.capacity,
            records: self.inner.len.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            refused_claims: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    /// The index of the shard holding `key`.
    fn index(&self, key: &str) -> usize {
        // The mask keeps the index below the count, a power of two.
        (self.inner.pick.hash_one(key) as usize) & (self.inner.shards.len() - 1)
    }

    /// The shard holding `key`, locked.
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[self.index(key)])
    }

    /// Claims `key` for `owner` (arguments checked by the caller). A new record takes a
    /// free slot of the budget, else the room its shard makes, else the room another shard
    /// makes; a store full of live claims refuses the claim.
    fn claim(&self, key: &str, owner: &str, lease: Duration) -> Result<Claim, StoreError> {
        let index = self.index(key);
        let mut shard = lock(&self.inner.shards[index]);
        let now = Instant::now();
        match shard.claim_existing(key, owner, lease, now) {
            Found::Answer(claim) => return Ok(claim),
            Found::Replaced => return Ok(Claim::Acquired),
            Found::Absent => {}
        }
        let swept = shard.sweep(now);
        self.free_slots(swept);
        if self.reserve_slot() || self.room_in(&mut shard, now) {
            shard.insert_claim(key, owner, lease, now);
            return Ok(Claim::Acquired);
        }
        // Every record of this shard is a live claim: another shard gives up a record, and
        // its slot passes to this claim. Never two shard locks at once.
        drop(shard);
        if !self.room_elsewhere(index) {
            return Err(self.refuse(key, lease));
        }
        let mut shard = lock(&self.inner.shards[index]);
        let now = Instant::now();
        match shard.claim_existing(key, owner, lease, now) {
            // Another call made a record of the key meanwhile: the slot is not needed.
            Found::Answer(claim) => {
                self.free_slots(1);
                Ok(claim)
            }
            Found::Replaced => {
                self.free_slots(1);
                Ok(Claim::Acquired)
            }
            Found::Absent => {
                shard.insert_claim(key, owner, lease, now);
                Ok(Claim::Acquired)
            }
        }
    }

    /// Takes a free slot of the budget, if there is one.
    fn reserve_slot(&self) -> bool {
        let capacity = self.inner.capacity;
        self.inner
            .len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len < capacity).then_some(len + 1)
            })
            .is_ok()
    }

    /// Gives `n` slots back to the budget (records removed).
    fn free_slots(&self, n: usize) {
        if n > 0 {
            self.inner.len.fetch_sub(n as u64, Ordering::AcqRel);
        }
    }

    /// Makes room in `shard` for one record (whose slot the caller takes over). Returns
    /// whether it did.
    fn room_in(&self, shard: &mut Shard, now: Instant) -> bool {
        match shard.make_room(now) {
            Removed::Expired => true,
            Removed::Evicted => {
                self.evicted(now);
                true
            }
            Removed::Nothing => false,
        }
    }

    /// Makes room in a shard other than `index`, visiting them in turn. Returns whether one
    /// did (its slot is the caller's).
    fn room_elsewhere(&self, index: usize) -> bool {
        let shards = &self.inner.shards;
        (1..shards.len()).any(|step| {
            let other = (index + step) & (shards.len() - 1);
            let mut shard = lock(&shards[other]);
            self.room_in(&mut shard, Instant::now())
        })
    }

    /// Counts an eviction of a completed record before its TTL, and warns about evictions at
    /// most once per [`EVICTION_WARN_INTERVAL`].
    fn evicted(&self, now: Instant) {
        let total = self.inner.evictions.fetch_add(1, Ordering::Relaxed) + 1;
        #[cfg(feature = "metrics")]
        metrics::counter!(EVICTIONS_TOTAL).increment(1);
        let since_born = self.since_born(now);
        // The same test as the one under the lock below (`now` before `at` plus the
        // interval), on the instant the last WARN stored.
        if since_born < self.inner.quiet_until.load(Ordering::Relaxed) {
            return;
        }
        let mut warned = self
            .inner
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < EVICTION_WARN_INTERVAL)
        {
            return;
        }
        let evicted = total - warned.evictions;
        *warned = Warned {
            at: Some(now),
            evictions: total,
        };
        let interval = i64::try_from(EVICTION_WARN_INTERVAL.as_nanos()).unwrap_or(i64::MAX);
        self.inner
            .quiet_until
            .store(since_born.saturating_add(interval), Ordering::Relaxed);
        tracing::warn!(
            capacity = self.inner.capacity,
            evicted,
            evictions_total = total,
            "MEMORY_STORE_EVICTION: completed records evicted before their TTL to make room; \
             a late duplicate of one of them would run again: raise the store's capacity"
        );
    }

    /// Nanoseconds from the store's birth to `now`, negative for an earlier `now` (a clock
    /// paused before the store was built), saturating at about 292 years either way.
    fn since_born(&self, now: Instant) -> i64 {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let born = self.inner.born;
        if now >= born {
            nanos(now - born)
        } else {
            -nanos(born - now)
        }
    }

    /// Counts a refused claim and says why.
    fn refuse(&self, key: &str, lease: Duration) -> StoreError {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(CLAIMS_REFUSED_TOTAL).increment(1);
        StoreError::Unavailable {
            message: format!(
                "memory store full: every record is a live claim at its capacity of {} records; \
                 refused the claim of {key:?} for {lease:?} rather than evict a live claim",
                self.inner.capacity
            ),
            source: None,
        }
    }

    /// Completes `owner`'s claim on `key` for `ttl` (arguments checked by the caller).
    fn complete_held(&self, key: &str, owner: &str, ttl: Duration) -> bool {
        self.shard(key)
            .complete(key, owner, ttl, None, Instant::now())
    }
}

/// A shard's records. No call panics while holding the lock, but a poisoned one is still
/// consistent: every change is a plain store of fields or one map operation.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        self.claim(key, owner, lease)
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        Ok(self.complete_held(key, owner, ttl))
    }

    // The batch calls do their work in place, key after key: no future per key. A refused
    // claim fails the batch, and the claims the batch took before it are released.
    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        check_batch(keys, owner, Some(lease))?;
        self.claim_all(keys, owner, lease)
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        check_completions(completions)?;
        Ok(self.complete_all(completions))
    }

    async fn complete_then_claim_many(
        &self,
        completions: &[Completion],
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Vec<Claim>), StoreError> {
        check_complete_then_claim_many(completions, keys, owner, lease)?;
        let done = self.complete_all(completions);
        Ok((Ok(done), self.claim_all(keys, owner, lease)?))
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        Ok(self.release_held(key, owner))
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        Ok(self.shard(key).extend(key, owner, lease, Instant::now()))
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        Ok(self.get_with_result(key).await?.map(|(record, _)| record))
    }

    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        let now = Instant::now();
        Ok(self.shard(key).complete(key, owner, ttl, Some(result), now))
    }

    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let shard = self.shard(key);
        let now = Instant::now();
        Ok(shard.peek(key, now).map(|entry| {
            let record = Record {
                state: entry.state,
                owner: Some(entry.owner.to_owned_string()),
                ttl_left: Some(entry.expires_at.saturating_duration_since(now)),
                updated_at: Some(entry.updated_at),
            };
            (record, entry.result.as_deref().map(<[u8]>::to_vec))
        }))
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

impl MemoryStore {
    /// Claims `keys` (checked) one after the other; a refused claim fails the batch, and
    /// the claims it took before are released.
    fn claim_all(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let mut claims = Vec::with_capacity(keys.len());
        for key in keys {
            match self.claim(key, owner, lease) {
                Ok(claim) => claims.push(claim),
                Err(refused) => {
                    for (key, claim) in keys.iter().zip(&claims) {
                        if *claim == Claim::Acquired {
                            self.release_held(key, owner);
                        }
                    }
                    return Err(refused);
                }
            }
        }
        Ok(claims)
    }

    /// Completes `completions` (checked) one after the other: whether each was held.
    fn complete_all(&self, completions: &[Completion]) -> Vec<bool> {
        let now = Instant::now();
        completions
            .iter()
            .map(|c| {
                let result = c.result.as_deref();
                self.shard(&c.key)
                    .complete(&c.key, &c.owner, c.ttl, result, now)
            })
            .collect()
    }

    /// Deletes `owner`'s live claim of `key`, giving its slot back. Returns whether it held
    /// it.
    fn release_held(&self, key: &str, owner: &str) -> bool {
        let released = self.shard(key).release(key, owner, Instant::now());
        if released {
            self.free_slots(1);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_is_presized_for_four_times_its_share() {
        let store = MemoryStore::with_capacity(1_000_000);
        let shards = &store.inner.shards;
        assert_eq!(shards.len(), MAX_SHARDS);
        let share = 1_000_000 / MAX_SHARDS;
        assert!(shards.iter().all(|s| lock(s).presize() == 4 * share));
        // A capacity beyond memory: capped by the shard, without overflow.
        for capacity in [u64::MAX, u64::MAX / 3, 1 << 40] {
            let store = MemoryStore::with_capacity(capacity);
            let shards = &store.inner.shards;
            assert!(shards
                .iter()
                .all(|s| lock(s).presize() == shard::PRESIZE_LIMIT));
        }
    }
}
