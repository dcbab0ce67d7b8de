//! An in-memory [`IdempotencyStore`] on [moka](https://docs.rs/moka): the embedded
//! default of eventonce, for a single consumer process, tests and development.
//!
//! Records live in one bounded, concurrent cache with a TTL per entry (moka's synchronous
//! cache: its operations never wait on I/O, so they need no future of their own). Every
//! operation is one atomic compute on its key (moka's `and_compute_with` serialises calls
//! on the same key, for the microsecond a compute takes), so concurrent claims of one key
//! produce exactly one [`Claim::Acquired`].
//!
//! The store follows Tokio's clock (`tokio::time::Instant`), so tests can pause time to
//! check leases. Records are not shared between processes and vanish with the process:
//! use the Redis or PostgreSQL store when several consumers share a topic.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cached;

pub use cached::CachedStore;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use eventonce_core::backend::{check_arguments, saturating_deadline};
use eventonce_core::{Claim, IdempotencyStore, Record, RecordState, StoreError};
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use tokio::time::Instant;
use xxhash_rust::xxh3::Xxh3Builder;

/// The number of records [`MemoryStore::new`] keeps before it evicts the least recently
/// used ones.
pub const DEFAULT_CAPACITY: u64 = 1_000_000;

/// An in-memory idempotency store. Cheap to clone: clones share the records.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use eventonce_core::{Claim, IdempotencyStore};
/// use eventonce_memory::MemoryStore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), eventonce_core::StoreError> {
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
    cache: Cache<String, Entry, Xxh3Builder>,
    capacity: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

#[derive(Clone)]
struct Entry {
    state: RecordState,
    owner: Arc<str>,
    expires_at: Instant,
    updated_at: SystemTime,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }

    fn held_by(&self, owner: &str, now: Instant) -> bool {
        self.is_live(now) && self.state == RecordState::Processing && &*self.owner == owner
    }
}

/// Each entry expires when its record does.
struct EntryExpiry;

impl Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Entry,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(Instant::now()))
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

    /// A store holding up to `capacity` records. Past it, the least recently used records
    /// are evicted: an evicted completed record lets a late duplicate through, so size it
    /// above the number of events a TTL spans.
    pub fn with_capacity(capacity: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(EntryExpiry)
            .build_with_hasher(seeded_hasher());
        MemoryStore { cache, capacity }
    }

    /// The capacity this store was built with.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// An estimate of the number of records held (expired ones may linger until moka's
    /// housekeeping runs).
    pub fn approximate_len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies an owner-checked transition: `f` maps the live entry held by `owner` to its
    /// replacement (`None` removes it). Returns whether the owner held the claim.
    fn transition(
        &self,
        key: &str,
        owner: &str,
        f: impl FnOnce(Entry, Instant) -> Option<Entry>,
    ) -> bool {
        let mut held = false;
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            let now = Instant::now();
            match existing.map(|e| e.into_value()) {
                Some(entry) if entry.held_by(owner, now) => {
                    held = true;
                    match f(entry, now) {
                        Some(next) => Op::Put(next),
                        None => Op::Remove,
                    }
                }
                _ => Op::Nop,
            }
        });
        held
    }
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
        // A live record answers from a plain read (duplicates, claims held elsewhere): no
        // write lock. Only an absent or expired one needs the atomic compute below.
        if let Some(entry) = self.cache.get(key) {
            if entry.is_live(Instant::now()) {
                return Ok(match entry.state {
                    RecordState::Completed => Claim::Completed,
                    RecordState::Processing => Claim::InProgress,
                });
            }
        }
        let mut claim = Claim::Acquired;
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            let now = Instant::now();
            match existing.map(|e| e.into_value()) {
                Some(entry) if entry.is_live(now) => {
                    claim = match entry.state {
                        RecordState::Completed => Claim::Completed,
                        RecordState::Processing => Claim::InProgress,
                    };
                    Op::Nop
                }
                _ => Op::Put(Entry {
                    state: RecordState::Processing,
                    owner: Arc::from(owner),
                    expires_at: saturating_deadline(now, lease),
                    updated_at: SystemTime::now(),
                }),
            }
        });
        Ok(claim)
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        Ok(self.transition(key, owner, |entry, now| {
            Some(Entry {
                state: RecordState::Completed,
                owner: entry.owner,
                expires_at: saturating_deadline(now, ttl),
                updated_at: SystemTime::now(),
            })
        }))
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        Ok(self.transition(key, owner, |_, _| None))
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        Ok(self.transition(key, owner, |entry, now| {
            Some(Entry {
                expires_at: saturating_deadline(now, lease),
                updated_at: SystemTime::now(),
                ..entry
            })
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let now = Instant::now();
        Ok(self
            .cache
            .get(key)
            .filter(|e| e.is_live(now))
            .map(|e| Record {
                state: e.state,
                owner: Some(e.owner.to_string()),
                ttl_left: Some(e.expires_at.saturating_duration_since(now)),
                updated_at: Some(e.updated_at),
            }))
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

/// xxh3 for the cache's hash table (SipHash, moka's default, was a tenth of a guarded
/// event's time), seeded per process so that crafted keys cannot aim at one bucket.
fn seeded_hasher() -> Xxh3Builder {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    Xxh3Builder::new().with_seed(seed)
}
