//! `MemoryStore`'s bounds: its capacity (least recently used completed records evicted,
//! live claims never), expired records dropped as new claims pass by, and one winner per key under concurrent claims
//! from many threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::{Claim, IdempotencyStore};
use eventonce_memory::MemoryStore;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_full_store_evicts_its_least_recently_used_record() {
    let store = MemoryStore::with_capacity(3);
    for key in ["a", "b", "c"] {
        assert_eq!(
            store.try_claim(key, "o", LEASE).await.unwrap(),
            Claim::Acquired
        );
        assert!(store.complete(key, "o", TTL).await.unwrap());
    }
    // A duplicate of "a" makes it the most recently used: "b" is now the oldest.
    assert_eq!(
        store.try_claim("a", "p", LEASE).await.unwrap(),
        Claim::Completed
    );
    assert_eq!(
        store.try_claim("d", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(store.approximate_len(), 3);
    assert!(store.get("b").await.unwrap().is_none(), "b was evicted");
    assert_eq!(store.stats().evictions, 1);
    for key in ["a", "c", "d"] {
        assert!(store.get(key).await.unwrap().is_some(), "{key} is kept");
    }
    // The evicted event is new again: a late duplicate gets through, as documented.
    assert_eq!(
        store.try_claim("b", "p", LEASE).await.unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn a_large_store_never_holds_more_than_its_capacity() {
    // Not a multiple of the shard count: the shards' shares still add up to it.
    let capacity = 20_003;
    let store = MemoryStore::with_capacity(capacity);
    for n in 0..100_000u32 {
        let key = format!("svc:t:{n}");
        assert_eq!(
            store.try_claim(&key, "o", LEASE).await.unwrap(),
            Claim::Acquired
        );
        assert!(store.complete(&key, "o", TTL).await.unwrap());
    }
    // The shards share one budget: the store fills to its capacity, and each completed
    // record beyond it cost one eviction.
    assert_eq!(store.approximate_len(), capacity);
    assert_eq!(store.stats().records, capacity);
    assert_eq!(store.stats().evictions, 100_000 - capacity);
    // The newest records are the ones kept.
    assert!(store.get("svc:t:99999").await.unwrap().is_some());
}

#[tokio::test]
async fn a_capacity_of_zero_is_taken_as_one() {
    let store = MemoryStore::with_capacity(0);
    assert_eq!(store.capacity(), 1);
    assert_eq!(
        store.try_claim("a", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(
        store.try_claim("a", "p", LEASE).await.unwrap(),
        Claim::InProgress
    );
    // Its one record is a live claim: a claim of another key is refused.
    assert!(store.try_claim("b", "o", LEASE).await.is_err());
    assert!(store.complete("a", "o", TTL).await.unwrap());
    assert_eq!(
        store.try_claim("b", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(store.approximate_len(), 1);
}

#[tokio::test]
async fn the_largest_capacity_reserves_nothing_up_front() {
    let store = MemoryStore::with_capacity(u64::MAX);
    assert_eq!(store.capacity(), u64::MAX);
    assert_eq!(
        store.try_claim("a", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(store.approximate_len(), 1);
}

/// The resident memory of this process, in bytes, where Linux reports it.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Shards grow their completed records' map for their share of the capacity once they
/// hold many: for a capacity far beyond memory (2^28 records; 2^60 and more), that growth
/// stops at a bounded size instead of reserving the share (gigabytes), and nothing panics.
#[tokio::test]
async fn a_huge_capacity_reserves_no_more_than_the_records_held_need() {
    for capacity in [1 << 28, u64::MAX] {
        let store = MemoryStore::with_capacity(capacity);
        let before = resident_bytes();
        // Over 2,000 completed records in each of the 64 shards.
        let records = 150_000u64;
        for n in 0..records {
            let key = format!("huge:{n}");
            assert_eq!(
                store.try_claim(&key, "o", LEASE).await.unwrap(),
                Claim::Acquired
            );
            assert!(store.complete(&key, "o", TTL).await.unwrap());
        }
        assert_eq!(store.approximate_len(), records);
        assert_eq!(store.stats().evictions, 0);
        if let (Some(before), Some(after)) = (before, resident_bytes()) {
            let grown = after.saturating_sub(before);
            assert!(
                grown < 1 << 30,
                "capacity {capacity}: {records} records took {grown} bytes"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn expired_records_are_dropped_as_new_claims_pass_by() {
    let store = MemoryStore::with_capacity(1_000);
    for n in 0..100 {
        let key = format!("old:{n}");
        assert_eq!(
            store
                .try_claim(&key, "o", Duration::from_secs(1))
                .await
                .unwrap(),
            Claim::Acquired
        );
    }
    assert_eq!(store.approximate_len(), 100);
    tokio::time::advance(Duration::from_secs(2)).await;
    for n in 0..30 {
        let key = format!("new:{n}");
        assert_eq!(
            store.try_claim(&key, "o", LEASE).await.unwrap(),
            Claim::Acquired
        );
    }
    // Each insert dropped expired records from the least recently used end.
    assert_eq!(store.approximate_len(), 30);
    assert!(store.get("old:0").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn an_expired_record_answers_as_absent_and_its_claim_takes_its_place() {
    let store = MemoryStore::with_capacity(10);
    assert_eq!(
        store
            .try_claim("k", "a", Duration::from_secs(1))
            .await
            .unwrap(),
        Claim::Acquired
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(store.get("k").await.unwrap().is_none());
    assert!(
        !store.complete("k", "a", TTL).await.unwrap(),
        "a's lease ended"
    );
    assert_eq!(
        store.try_claim("k", "b", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(store.approximate_len(), 1);
    assert!(store.complete("k", "b", TTL).await.unwrap());
}

#[test]
fn concurrent_claims_from_many_threads_have_one_winner_per_key() {
    let store = MemoryStore::with_capacity(1_000_000);
    let won = Arc::new(AtomicUsize::new(0));
    let keys = 2_000;
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (store, won) = (store.clone(), Arc::clone(&won));
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    for n in 0..keys {
                        let key = format!("k:{n}");
                        let owner = format!("t{t}");
                        if store.try_claim(&key, &owner, LEASE).await.unwrap() == Claim::Acquired {
                            won.fetch_add(1, Ordering::Relaxed);
                            assert!(store.complete(&key, &owner, TTL).await.unwrap());
                        }
                    }
                });
            });
        }
    });
    assert_eq!(won.load(Ordering::Relaxed), keys);
}
