//! One shard of a [`MemoryStore`](crate::MemoryStore): its records in two ordered maps, and
//! the choice of what may leave when the store needs room.
//!
//! Live claims and completed records are kept apart, so that finding a record that may go
//! never walks past a live claim:
//!
//! - `claims`: `processing` records in the order their lease was last set (taken or
//!   renewed). Under one lease per store (a guard's `processing_ttl`) that is the order in
//!   which they expire, so an expired claim is found at the front.
//! - `completed`: `completed` records, least recently used first (a duplicate's claim moves
//!   its record to the back).
//!
//! Every operation is a constant number of hash-map operations; making room looks at most
//! at the first [`EXPIRED_LOOKAHEAD`] records of each map.
//!
//! A hash map that grows moves every record it holds in the insert that makes it grow, and
//! one that has churned long enough at more than about a quarter full rebuilds itself in
//! place: with records scattered in memory either costs 0.3 to 0.5 µs a record, several
//! milliseconds for a shard of ten thousand records, on the thread that happens to insert.
//! So the first time a shard's completed records fill their map with [`PRESIZE_FROM`] or
//! more (at 1,792 records), the map is grown once, in one step, for four times the shard's
//! share of the store's capacity (at most [`PRESIZE_LIMIT`] records): it does not grow
//! again while the store fills, and at 22% full or less a full store's churn (a record
//! evicted, a record inserted) does not make it rebuild (not once in a thousand times its
//! size of churn, measured). That table costs 40 to 80 bytes per record of the share; a
//! store that stays small never reserves it.

use std::time::{Duration, SystemTime};

use eventonce_core::backend::saturating_deadline;
use eventonce_core::{Claim, RecordState};
use foldhash::quality::RandomState;
use hashlink::LinkedHashMap;
use tokio::time::Instant;

/// How many expired records at each map's front one insert drops, so that expired records
/// leave as new claims pass by.
const SWEEP_PER_INSERT: usize = 4;

/// How many records at each map's front are looked at for an expired one before a live
/// completed record is evicted.
const EXPIRED_LOOKAHEAD: usize = 8;

/// How many completed records a shard holds before their map is grown for its share at
/// once (a map of this size moves in well under a millisecond).
const PRESIZE_FROM: usize = 1024;

/// The completed records a shard's map is grown for, per record of its share.
pub(crate) const PRESIZE_PER_SHARE: u64 = 4;

/// The most completed records a shard's map is grown for ahead of need (about 4.5 MiB of
/// table per shard at this size), so that a huge or unbounded capacity reserves nothing
/// out of proportion to the records held. A shard past it grows as a map does.
pub(crate) const PRESIZE_LIMIT: usize = 1 << 18;

type Records = LinkedHashMap<Box<str>, Entry, RandomState>;

/// A shard's records.
pub(crate) struct Shard {
    claims: Records,
    completed: Records,
    /// The completed records the map is grown for once it holds [`PRESIZE_FROM`].
    presize: usize,
}

/// What [`Shard::make_room`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    /// An expired record: nothing was lost.
    Expired,
    /// A completed record before its TTL: a late duplicate of it would run again.
    Evicted,
    /// Nothing: every record of the shard is a live claim (or there is none).
    Nothing,
}

/// What a claim found at its key.
pub(crate) enum Found {
    /// A live record: the claim's answer.
    Answer(Claim),
    /// An expired record, replaced by the new claim in place.
    Replaced,
    /// No record: the claim needs a slot.
    Absent,
}

impl Shard {
    /// An empty shard whose completed records' map is grown for `presize` records (at most
    /// [`PRESIZE_LIMIT`]) when they reach [`PRESIZE_FROM`]; nothing is reserved now.
    pub(crate) fn new(presize: usize) -> Shard {
        Shard {
            claims: LinkedHashMap::with_hasher(RandomState::default()),
            completed: LinkedHashMap::with_hasher(RandomState::default()),
            presize: presize.min(PRESIZE_LIMIT),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.claims.len() + self.completed.len()
    }

    /// The completed records this shard's map is grown for once they are many.
    #[cfg(test)]
    pub(crate) fn presize(&self) -> usize {
        self.presize
    }

    /// The live record of `key`, if any.
    pub(crate) fn peek(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.claims
            .get(key)
            .or_else(|| self.completed.get(key))
            .filter(|entry| entry.is_live(now))
    }

    /// A claim of `key` by `owner` where a record of it exists: answered from a live record
    /// (a completed one becomes the most recently used), or taking an expired record's
    /// place. [`Found::Absent`] when the key has no record.
    pub(crate) fn claim_existing(
        &mut self,
        key: &str,
        owner: &str,
        lease: Duration,
        now: Instant,
    ) -> Found {
        if let Some(entry) = self.completed.to_back(key) {
            if entry.is_live(now) {
                return Found::Answer(Claim::Completed);
            }
            if let Some((key, _)) = self.completed.remove_entry(key) {
                self.claims.insert(key, Entry::claimed(owner, lease, now));
            }
            return Found::Replaced;
        }
        match self.claims.get_mut(key) {
            Some(entry) if entry.is_live(now) => Found::Answer(Claim::InProgress),
            Some(entry) => {
                *entry = Entry::claimed(owner, lease, now);
                self.claims.to_back(key);
                Found::Replaced
            }
            None => Found::Absent,
        }
    }

    /// Inserts a new claim of `key` (which has no record here) into a slot already counted.
    pub(crate) fn insert_claim(&mut self, key: &str, owner: &str, lease: Duration, now: Instant) {
        self.claims
            .insert(key.into(), Entry::claimed(owner, lease, now));
    }

    /// Completes `owner`'s live claim of `key` for `ttl`. Returns whether it held it.
    pub(crate) fn complete(
        &mut self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: Option<&[u8]>,
        now: Instant,
    ) -> bool {
        if !self.held(key, owner, now) {
            return false;
        }
        match self.claims.remove_entry(key) {
            Some((key, mut entry)) => {
                entry.state = RecordState::Completed;
                entry.result = result.map(Box::from);
                entry.expires_at = saturating_deadline(now, ttl);
                entry.updated_at = SystemTime::now();
                self.grow_completed_once();
                self.completed.insert(key, entry);
                true
            }
            None => false,
        }
    }

    /// Grows the completed records' map to [`Shard::presize`] in one step when it is full
    /// and holds [`PRESIZE_FROM`] or more, below that size. Where the memory is not there,
    /// the map grows as it would have.
    fn grow_completed_once(&mut self) {
        let len = self.completed.len();
        if len >= PRESIZE_FROM && len < self.presize && len == self.completed.capacity() {
            let _ = self.completed.try_reserve(self.presize - len);
        }
    }

    /// Renews `owner`'s live claim of `key` for `lease`; the claim moves to the back of the
    /// claims' order. Returns whether it held it.
    pub(crate) fn extend(&mut self, key: &str, owner: &str, lease: Duration, now: Instant) -> bool {
        if !self.held(key, owner, now) {
            return false;
        }
        match self.claims.to_back(key) {
            Some(entry) => {
                entry.expires_at = saturating_deadline(now, lease);
                entry.updated_at = SystemTime::now();
                true
            }
            None => false,
        }
    }

    /// Deletes `owner`'s live claim of `key`. Returns whether it held it.
    pub(crate) fn release(&mut self, key: &str, owner: &str, now: Instant) -> bool {
        self.held(key, owner, now) && self.claims.remove(key).is_some()
    }

    fn held(&self, key: &str, owner: &str, now: Instant) -> bool {
        self.claims
            .get(key)
            .is_some_and(|entry| entry.is_live(now) && entry.owner.is(owner))
    }

    /// Drops up to [`SWEEP_PER_INSERT`] expired records from each map's front. Returns how
    /// many it dropped.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        drop_expired_front(&mut self.claims, now, SWEEP_PER_INSERT)
            + drop_expired_front(&mut self.completed, now, SWEEP_PER_INSERT)
    }

    /// Removes one record to make room, never a live claim: an expired record among the
    /// first [`EXPIRED_LOOKAHEAD`] of each map, else the least recently used completed
    /// record.
    pub(crate) fn make_room(&mut self, now: Instant) -> Removed {
        if drop_expired_near_front(&mut self.claims, now)
            || drop_expired_near_front(&mut self.completed, now)
        {
            return Removed::Expired;
        }
        match self.completed.pop_front() {
            Some(_) => Removed::Evicted,
            None => Removed::Nothing,
        }
    }
}

/// Drops the first expired record among the first [`EXPIRED_LOOKAHEAD`] of `records`.
/// Returns whether there was one.
fn drop_expired_near_front(records: &mut Records, now: Instant) -> bool {
    let expired = records
        .iter()
        .take(EXPIRED_LOOKAHEAD)
        .find(|(_, entry)| !entry.is_live(now))
        .map(|(key, _)| key.clone());
    expired.is_some_and(|key| records.remove(&key).is_some())
}

/// Drops up to `most` expired records from the front of `records`; returns how many.
fn drop_expired_front(records: &mut Records, now: Instant, most: usize) -> usize {
    let mut dropped = 0;
    while dropped < most {
        match records.front() {
            Some((_, oldest)) if !oldest.is_live(now) => {
                records.pop_front();
                dropped += 1;
            }
            _ => break,
        }
    }
    dropped
}

/// One record.
pub(crate) struct Entry {
    pub(crate) state: RecordState,
    pub(crate) owner: Owner,
    pub(crate) expires_at: Instant,
    pub(crate) updated_at: SystemTime,
    /// The result kept with the completion (`complete_with_result`), if any.
    pub(crate) result: Option<Box<[u8]>>,
}

impl Entry {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at > now
    }

    fn claimed(owner: &str, lease: Duration, now: Instant) -> Entry {
        Entry {
            state: RecordState::Processing,
            owner: Owner::new(owner),
            expires_at: saturating_deadline(now, lease),
            updated_at: SystemTime::now(),
            result: None,
        }
    }
}

/// An owner token, kept inline when short (the guard's tokens are at most 42 bytes), so a
/// claim allocates nothing for it.
pub(crate) enum Owner {
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

    pub(crate) fn to_owned_string(&self) -> String {
        // Made from a `&str`, so always UTF-8.
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(3600);

    /// Completes `count` new keys in `shard`; returns the completed map's capacity after
    /// each growth, with the number of records it held before it.
    fn fill(shard: &mut Shard, count: usize) -> Vec<(usize, usize)> {
        let now = Instant::now();
        let mut growths = Vec::new();
        for n in 0..count {
            let key = format!("key-{n}");
            shard.insert_claim(&key, "o", LEASE, now);
            let (len, before) = (shard.completed.len(), shard.completed.capacity());
            assert!(shard.complete(&key, "o", TTL, None, now), "{key}");
            if shard.completed.capacity() != before {
                growths.push((len, shard.completed.capacity()));
            }
        }
        growths
    }

    #[test]
    fn the_completed_map_grows_once_for_its_presize_after_the_first_thousand() {
        let mut shard = Shard::new(40_000);
        let growths = fill(&mut shard, 5_000);
        let (small, large): (Vec<_>, Vec<_>) =
            growths.iter().partition(|(len, _)| *len < PRESIZE_FROM);
        assert!(
            small.iter().all(|(_, cap)| *cap < 2 * PRESIZE_FROM),
            "{growths:?}"
        );
        assert_eq!(
            large.len(),
            1,
            "one growth past {PRESIZE_FROM}: {growths:?}"
        );
        assert!(large[0].1 >= 40_000, "{growths:?}");
    }

    #[test]
    fn a_huge_presize_is_capped_and_a_small_one_changes_nothing() {
        let mut huge = Shard::new(usize::MAX);
        assert_eq!(huge.presize, PRESIZE_LIMIT);
        fill(&mut huge, 2 * PRESIZE_FROM);
        let capacity = huge.completed.capacity();
        assert!(
            (PRESIZE_LIMIT..2 * PRESIZE_LIMIT).contains(&capacity),
            "{capacity}"
        );
        // A shard whose presize is below the point where it applies grows as a map does.
        let mut small = Shard::new(PRESIZE_FROM / 2);
        let mut plain: Records = LinkedHashMap::with_hasher(RandomState::default());
        for n in 0..3 * PRESIZE_FROM {
            plain.insert(
                format!("key-{n}").into(),
                Entry::claimed("o", TTL, Instant::now()),
            );
        }
        fill(&mut small, 3 * PRESIZE_FROM);
        assert_eq!(small.completed.capacity(), plain.capacity());
    }
}
