//! `CachedStore`: the conformance suite still passes through it, duplicates of keys it
//! completed cost no round trip, and it never answers longer than the record lives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::conformance::StoreFactory;
use eventonce_core::{async_trait, Claim, IdempotencyStore, Record, StoreError};
use eventonce_memory::{CachedStore, MemoryStore};

async fn factory() -> impl StoreFactory {
    let store = Arc::new(CachedStore::new(
        MemoryStore::new(),
        10_000,
        Duration::from_secs(600),
    ));
    move || {
        let store = Arc::clone(&store);
        async move { store }
    }
}

eventonce_core::conformance_tests!(factory);

/// Counts the claims that reach the real store.
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryStore,
    claims: Arc<AtomicU64>,
}

#[async_trait]
impl IdempotencyStore for Counting {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.try_claim(key, owner, lease).await
    }
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.complete(key, owner, ttl).await
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
    async fn complete_with_result(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
        result: &[u8],
    ) -> Result<bool, StoreError> {
        self.inner
            .complete_with_result(key, owner, ttl, result)
            .await
    }
    async fn get_with_result(
        &self,
        key: &str,
    ) -> Result<Option<(Record, Option<Vec<u8>>)>, StoreError> {
        self.inner.get_with_result(key).await
    }
}

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn a_burst_of_duplicates_costs_no_round_trip() {
    let counting = Counting::default();
    let store = CachedStore::new(counting.clone(), 1000, Duration::from_secs(600));
    assert_eq!(
        store.try_claim("k", "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete("k", "a", Duration::from_secs(3600))
        .await
        .expect("complete"));
    for _ in 0..100 {
        assert_eq!(
            store.try_claim("k", "b", LEASE).await.expect("claim"),
            Claim::Completed
        );
    }
    assert_eq!(counting.claims.load(Ordering::SeqCst), 1);
    assert_eq!(store.hits(), 100);
}

#[tokio::test(start_paused = true)]
async fn a_cached_key_lives_no_longer_than_its_record() {
    let counting = Counting::default();
    let store = CachedStore::new(counting.clone(), 1000, Duration::from_secs(600));
    assert_eq!(
        store.try_claim("short", "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete("short", "a", Duration::from_secs(2))
        .await
        .expect("complete"));
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert_eq!(
        store.try_claim("short", "b", LEASE).await.expect("claim"),
        Claim::Completed
    );
    assert_eq!(
        counting.claims.load(Ordering::SeqCst),
        1,
        "still answered from the cache"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    // The record expired: the store is asked, and the event is new again.
    assert_eq!(
        store.try_claim("short", "b", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(counting.claims.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn max_ttl_bounds_how_long_a_key_is_cached() {
    let counting = Counting::default();
    let store = CachedStore::new(counting.clone(), 1000, Duration::from_secs(1));
    assert_eq!(
        store.try_claim("long", "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete("long", "a", Duration::from_secs(3600))
        .await
        .expect("complete"));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        store.try_claim("long", "b", LEASE).await.expect("claim"),
        Claim::Completed
    );
    assert_eq!(
        counting.claims.load(Ordering::SeqCst),
        2,
        "past max_ttl the store answers"
    );
}

#[tokio::test]
async fn only_completed_keys_are_cached() {
    let counting = Counting::default();
    let store = CachedStore::new(counting.clone(), 1000, Duration::from_secs(600));
    assert_eq!(
        store.try_claim("k", "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(!store
        .complete("k", "intruder", LEASE)
        .await
        .expect("complete"));
    assert_eq!(
        store.try_claim("k", "b", LEASE).await.expect("claim"),
        Claim::InProgress
    );
    assert!(store.release("k", "a").await.expect("release"));
    assert_eq!(
        store.try_claim("k", "b", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(store.hits(), 0);
}
