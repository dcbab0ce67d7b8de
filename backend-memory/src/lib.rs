//! An in-memory [`IdempotencyStore`]: the embedded default of eventonce, for a single
//! consumer process, tests and development.
//!
//! Records live in a bounded map split into shards, each an LRU list of records
//! ([hashlink](https://docs.rs/hashlink)'s `LruCache`) behind a lock of its own. Every call
//! takes one shard's lock for the few hundred nanoseconds it needs and never waits on I/O,
//! so a call is atomic on its key: concurrent claims of one key produce exactly one
//! [`Claim::Acquired`], and a completion, a renewal or a release by the owner is checked and
//! applied in one step. A claim of a key allocates the key once; a duplicate allocates
//! nothing.
//!
//! Each record carries its own expiry: a record past it answers as absent, and a claim
//! takes its place. Expired records are dropped as new claims pass by (the least recently
//! used end of a shard is checked on each insert) and, when a shard is full, its least
//! recently used record is evicted.
//!
//! The store follows Tokio's clock (`tokio::time::Instant`), so tests can pause time to
//! check leases. Records are not shared between processes and vanish with the process:
//! use the Redis or PostgreSQL store when several consumers share a topic.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cached;

pub use cached::CachedStore;

use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use eventonce_core::backend::{
    check_arguments, check_batch, check_completions, saturating_deadline,
};
use eventonce_core::{Claim, Completion, IdempotencyStore, Record, RecordState, StoreError};
use foldhash::quality::RandomState;
use hashlink::LruCache;
use tokio::time::Instant;

/// The number of records [`MemoryStore::new`] keeps before it evicts the least recently
/// used ones.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;

/// The most shards a store is split into.
const MAX_SHARDS: usize = 64;

/// The fewest records per shard before a store is split: small stores keep one exact LRU
/// order.
const MIN_SHARD_CAPACITY: u64 = 4096;

/// How many expired records at a shard's least recently used end one insert drops.
const SWEEP_PER_INSERT: usize = 4;

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

/// The shards, and the hasher that picks a key's shard. The hashers (foldhash, randomly
/// seeded per store) keep crafted keys from aiming at one shard or one bucket.
struct Shards {
    shards: Box<[Mutex<Shard>]>,
    pick: RandomState,
    capacity: u64,
}

type Shard = LruCache<Box<str>, Entry, RandomState>;

struct Entry {
    state: RecordState,
    owner: Owner,
    expires_at: Instant,
    updated_at: SystemTime,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }

    fn held_by(&self, owner: &str, now: Instant) -> bool {
        self.is_live(now) && self.state == RecordState::Processing && self.owner.is(owner)
    }

    /// The answer a claim gets from a live record.
    fn claim_answer(&self) -> Claim {
        match self.state {
            RecordState::Completed => Claim::Completed,
            RecordState::Processing => Claim::InProgress,
        }
    }

    fn claimed(owner: &str, lease: Duration, now: Instant) -> Entry {
        Entry {
            state: RecordState::Processing,
            owner: Owner::new(owner),
            expires_at: saturating_deadline(now, lease),
            updated_at: SystemTime::now(),
        }
    }
}

/// An owner token, kept inline when short (the guard's tokens are at most 42 bytes), so a
/// claim allocates nothing for it.
enum Owner {
    Inline { len: u8, bytes: [u8; OWNER_INLINE] },
    Heap(Box<str>),
}

/// The longest owner token kept inline.
const OWNER_INLINE: usize = 46;

impl Owner {
    fn new(owner: &str) -> Owner {
        let src = owner.as_bytes();
        if src.len() <= OWNER_INLINE {
            let mut bytes = [0; OWNER_INLINE];
            bytes[..src.len()].copy_from_slice(src);
            // `src.len()` fits: it is at most `OWNER_INLINE`.
            Owner::Inline {
                len: src.len() as u8,
                bytes,
            }
        } else {
            Owner::Heap(owner.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Owner::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Owner::Heap(owner) => owner.as_bytes(),
        }
    }

    fn is(&self, owner: &str) -> bool {
        self.as_bytes() == owner.as_bytes()
    }

    fn to_owned_string(&self) -> String {
        // Made from a `&str`, so always UTF-8.
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
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

    /// A store holding up to `capacity` records (a capacity of 0 is taken as 1). Past it,
    /// the least recently used records are evicted (in a store above 4,096 records, the
    /// least recently used of the key's shard): an evicted completed record lets a late
    /// duplicate through, so size it above the number of events a TTL spans.
    pub fn with_capacity(capacity: u64) -> Self {
        let capacity = capacity.max(1);
        let wanted = usize::try_from(capacity / MIN_SHARD_CAPACITY).unwrap_or(MAX_SHARDS);
        let count = wanted.clamp(1, MAX_SHARDS);
        // Round down to a power of two, so a shard is picked with a mask.
        let count = 1usize << count.ilog2();
        // The capacity split exactly: the shards' shares add up to it.
        let (share, rest) = (capacity / count as u64, capacity % count as u64);
        let shards = (0..count as u64)
            .map(|i| {
                let cap = usize::try_from(share + u64::from(i < rest)).unwrap_or(usize::MAX);
                Mutex::new(LruCache::with_hasher(cap, RandomState::default()))
            })
            .collect();
        let pick = RandomState::default();
        MemoryStore {
            inner: Arc::new(Shards {
                shards,
                pick,
                capacity,
            }),
        }
    }

    /// The capacity this store was built with.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// The number of records held (expired ones are counted until a claim passes them by
    /// or the capacity evicts them).
    pub fn approximate_len(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|shard| lock(shard).len() as u64)
            .sum()
    }

    /// The shard holding `key`, locked.
    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let shards = &self.inner.shards;
        // The mask keeps the index below the count, a power of two.
        let index = (self.inner.pick.hash_one(key) as usize) & (shards.len() - 1);
        lock(&shards[index])
    }

    /// Claims `key` for `owner` (arguments checked by the caller).
    fn claim(&self, key: &str, owner: &str, lease: Duration) -> Claim {
        let mut shard = self.shard(key);
        let now = Instant::now();
        if let Some(entry) = shard.get_mut(key) {
            if entry.is_live(now) {
                return entry.claim_answer();
            }
            // Expired: the claim takes the record's place.
            *entry = Entry::claimed(owner, lease, now);
            return Claim::Acquired;
        }
        insert(&mut shard, key, Entry::claimed(owner, lease, now), now);
        Claim::Acquired
    }

    /// Completes `owner`'s claim on `key` for `ttl` (arguments checked by the caller).
    fn complete_held(&self, key: &str, owner: &str, ttl: Duration) -> bool {
        self.change_held(key, owner, |entry, now| {
            entry.state = RecordState::Completed;
            entry.expires_at = saturating_deadline(now, ttl);
            entry.updated_at = SystemTime::now();
        })
    }

    /// Changes the live record of `key` held by `owner` with `f`. Returns whether the
    /// owner held the claim.
    fn change_held(&self, key: &str, owner: &str, f: impl FnOnce(&mut Entry, Instant)) -> bool {
        let mut shard = self.shard(key);
        let now = Instant::now();
        match shard.get_mut(key) {
            Some(entry) if entry.held_by(owner, now) => {
                f(entry, now);
                true
            }
            _ => false,
        }
    }
}

/// A shard's records. No call panics while holding the lock, but a poisoned one is still
/// consistent: every change is a plain store of fields or one map operation.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Inserts a new record for `key`, first dropping up to [`SWEEP_PER_INSERT`] expired
/// records from the shard's least recently used end; a full shard then evicts its least
/// recently used record.
fn insert(shard: &mut Shard, key: &str, entry: Entry, now: Instant) {
    for _ in 0..SWEEP_PER_INSERT {
        match shard.iter().next() {
            Some((_, oldest)) if !oldest.is_live(now) => {
                shard.remove_lru();
            }
            _ => break,
        }
    }
    shard.insert(key.into(), entry);
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
        Ok(self.claim(key, owner, lease))
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        Ok(self.complete_held(key, owner, ttl))
    }

    // The batch calls do their work in place, key after key: no future per key.
    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        check_batch(keys, owner, Some(lease))?;
        Ok(keys
            .iter()
            .map(|key| self.claim(key, owner, lease))
            .collect())
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        check_completions(completions)?;
        Ok(completions
            .iter()
            .map(|c| self.complete_held(&c.key, &c.owner, c.ttl))
            .collect())
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        let mut shard = self.shard(key);
        let held = shard
            .peek(key)
            .is_some_and(|entry| entry.held_by(owner, Instant::now()));
        if held {
            shard.remove(key);
        }
        Ok(held)
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        Ok(self.change_held(key, owner, |entry, now| {
            entry.expires_at = saturating_deadline(now, lease);
            entry.updated_at = SystemTime::now();
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let shard = self.shard(key);
        let now = Instant::now();
        Ok(shard
            .peek(key)
            .filter(|entry| entry.is_live(now))
            .map(|entry| Record {
                state: entry.state,
                owner: Some(entry.owner.to_owned_string()),
                ttl_left: Some(entry.expires_at.saturating_duration_since(now)),
                updated_at: Some(entry.updated_at),
            }))
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}
