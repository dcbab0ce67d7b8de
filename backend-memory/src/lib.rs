//! An in-memory [`IdempotencyStore`] on [moka](https://docs.rs/moka): the embedded
//! default of eventonce, for a single consumer process, tests and development.
//!
//! Records live in one bounded, concurrent cache with a TTL per entry (moka's synchronous
//! cache: its operations never wait on I/O, so they need no future of their own). A claim
//! of an absent or expired key is one atomic compute on its key (moka's `and_compute_with`
//! serialises calls on the same key, for the microsecond a compute takes), so concurrent
//! claims of one key produce exactly one [`Claim::Acquired`]. Each record sits behind a
//! small lock of its own: a live record answers a claim from a plain read, and the owner's
//! completion, renewal and release change it under that lock. A completion or a renewal
//! therefore writes nothing to the cache: it changes the record in place, and the next read
//! hands moka the record's new expiry.
//!
//! The store follows Tokio's clock (`tokio::time::Instant`), so tests can pause time to
//! check leases. Records are not shared between processes and vanish with the process:
//! use the Redis or PostgreSQL store when several consumers share a topic.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cached;

pub use cached::CachedStore;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    cache: Cache<String, Arc<Slot>, Xxh3Builder>,
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

/// One record, shared by the cache and whoever read it, changed under its lock.
struct Slot(Mutex<Entry>);

impl Slot {
    fn new(entry: Entry) -> Arc<Slot> {
        Arc::new(Slot(Mutex::new(entry)))
    }

    /// The record (a panic never happens under the lock, but a poisoned one is still
    /// consistent: every change is a plain store of fields).
    fn lock(&self) -> MutexGuard<'_, Entry> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expires_at(&self) -> Instant {
        self.lock().expires_at
    }
}

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

/// Each entry expires when its record does. A completion or a renewal moves a record's
/// expiry without a write to the cache, so a read hands moka the later expiry.
struct EntryExpiry;

/// How far past a record's expiry moka is told to keep an entry whose record was renewed
/// or completed in place: the record is dead at its own expiry whatever moka does, and
/// the margin lets later reads find moka's expiry already late enough (no change to
/// reschedule on every read).
const READ_EXPIRY_MARGIN: Duration = Duration::from_secs(1);

impl Expiry<String, Arc<Slot>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Slot>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.expires_at().saturating_duration_since(Instant::now()))
    }

    fn expire_after_read(
        &self,
        _key: &String,
        value: &Arc<Slot>,
        _read_at: std::time::Instant,
        duration_until_expiry: Option<Duration>,
        _last_modified_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.expires_at().saturating_duration_since(Instant::now());
        match duration_until_expiry {
            Some(current) if current >= left => Some(current),
            _ => Some(left.saturating_add(READ_EXPIRY_MARGIN)),
        }
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<Slot>,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_at().saturating_duration_since(Instant::now()))
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

    /// Changes the live record held by `owner` in place with `f`. Returns whether the
    /// owner held the claim.
    ///
    /// The change is made under the record's lock, so it is atomic with every other call
    /// on the key: a claim replaces a record only once it has expired, which a record
    /// held by `owner` has not. The second read hands moka the record's new expiry
    /// ([`EntryExpiry::expire_after_read`]); if moka dropped the entry meanwhile (its old
    /// expiry passed, or it was evicted), the changed record is put back, unless another
    /// claim took the key in between (then the owner's claim was lost).
    fn change_in_place(&self, key: &str, owner: &str, f: impl FnOnce(&mut Entry, Instant)) -> bool {
        let Some(slot) = self.cache.get(key) else {
            return false;
        };
        {
            let mut entry = slot.lock();
            let now = Instant::now();
            if !entry.held_by(owner, now) {
                return false;
            }
            f(&mut entry, now);
        }
        match self.cache.get(key) {
            Some(current) if Arc::ptr_eq(&current, &slot) => true,
            _ => self.reinstate(key, slot),
        }
    }

    /// Puts `slot` back under `key` if no other record took its place.
    fn reinstate(&self, key: &str, slot: Arc<Slot>) -> bool {
        let mut kept = false;
        self.cache
            .entry_by_ref(key)
            .and_compute_with(|existing| match existing {
                None => {
                    kept = true;
                    Op::Put(slot)
                }
                Some(current) => {
                    kept = Arc::ptr_eq(current.value(), &slot);
                    Op::Nop
                }
            });
        kept
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
        if let Some(slot) = self.cache.get(key) {
            let entry = slot.lock();
            if entry.is_live(Instant::now()) {
                return Ok(entry.claim_answer());
            }
        }
        let mut claim = Claim::Acquired;
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            let now = Instant::now();
            if let Some(existing) = existing {
                let entry = existing.value().lock();
                if entry.is_live(now) {
                    claim = entry.claim_answer();
                    return Op::Nop;
                }
            }
            Op::Put(Slot::new(Entry {
                state: RecordState::Processing,
                owner: Owner::new(owner),
                expires_at: saturating_deadline(now, lease),
                updated_at: SystemTime::now(),
            }))
        });
        Ok(claim)
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        Ok(self.change_in_place(key, owner, |entry, now| {
            entry.state = RecordState::Completed;
            entry.expires_at = saturating_deadline(now, ttl);
            entry.updated_at = SystemTime::now();
        }))
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        let mut held = false;
        self.cache.entry_by_ref(key).and_compute_with(|existing| {
            if let Some(existing) = existing {
                let entry = existing.value().lock();
                held = entry.held_by(owner, Instant::now());
            }
            if held {
                Op::Remove
            } else {
                Op::Nop
            }
        });
        Ok(held)
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        Ok(self.change_in_place(key, owner, |entry, now| {
            entry.expires_at = saturating_deadline(now, lease);
            entry.updated_at = SystemTime::now();
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let Some(slot) = self.cache.get(key) else {
            return Ok(None);
        };
        let entry = slot.lock();
        let now = Instant::now();
        Ok(entry.is_live(now).then(|| Record {
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

/// xxh3 for the cache's hash table (SipHash, moka's default, was a tenth of a guarded
/// event's time), seeded per process so that crafted keys cannot aim at one bucket.
fn seeded_hasher() -> Xxh3Builder {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    Xxh3Builder::new().with_seed(seed)
}
