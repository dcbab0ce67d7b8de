//! `MemoryStore`'s capacity never costs a live claim: expired records go first, then the
//! least recently used completed ones; a store full of live claims refuses a new one; a
//! store below its capacity never evicts because one shard is full.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use eventonce_core::{
    Claim, EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, Outcome,
    StoreError,
};
use eventonce_memory::MemoryStore;
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

async fn completed(store: &MemoryStore, key: &str, ttl: Duration) {
    assert_eq!(
        store.try_claim(key, "o", LEASE).await.unwrap(),
        Claim::Acquired,
        "{key}"
    );
    assert!(store.complete(key, "o", ttl).await.unwrap(), "{key}");
}

fn event(n: u64) -> EventEnvelope {
    EventEnvelope::new("capacity.event.v1", json!({ "n": n })).with_event_id(format!("e-{n}"))
}

/// Capacity 5, at most 4 live records: a slow handler (40 s) renews its 30 s lease every
/// 10 s while short-lived events pass by, one a second, each completed for 1 s; the slow
/// event is redelivered twice while its handler runs. The slow handler runs once.
#[tokio::test(start_paused = true)]
async fn a_slow_handler_keeps_its_claim_while_short_lived_events_pass_a_small_store() {
    let store = MemoryStore::with_capacity(5);
    let config = IdempotencyConfig::builder("capacity-svc")
        .lease(Duration::from_secs(30))
        .default_ttl(Duration::from_secs(1))
        .event_type_ttl("capacity.slow.v1", TTL)
        .build()
        .unwrap();
    let guard = Guard::new(store.clone(), config);
    let slow_runs = Rc::new(Cell::new(0u32));
    let slow = |runs: Rc<Cell<u32>>| async move {
        runs.set(runs.get() + 1);
        tokio::time::sleep(Duration::from_secs(40)).await;
        Ok::<_, std::convert::Infallible>("slow")
    };
    let slow_event = EventEnvelope::new("capacity.slow.v1", json!({ "slow": true }));
    let first = guard.run(&slow_event, slow(Rc::clone(&slow_runs)));
    let others = async {
        let mut redelivered = Vec::new();
        for n in 1..=45u64 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let other = event(n);
            let answer = guard.run(&other, async { Ok::<_, std::convert::Infallible>(n) });
            assert!(
                matches!(answer.await, Ok(Outcome::Processed(_))),
                "event {n}"
            );
            if n == 15 || n == 35 {
                redelivered.push(guard.run(&slow_event, slow(Rc::clone(&slow_runs))).await);
            }
        }
        redelivered
    };
    let (first, redelivered) = tokio::join!(first, others);
    let stats = guard.stats();
    assert_eq!(
        slow_runs.get(),
        1,
        "the slow handler ran {} times; answers {first:?}, {redelivered:?}; stats {stats:?}",
        slow_runs.get()
    );
    assert!(matches!(first, Ok(Outcome::Processed("slow"))), "{first:?}");
    assert_eq!(stats.claims_lost, 0, "{stats:?}");
    assert!(
        redelivered
            .iter()
            .all(|r| matches!(r, Err(GuardError::InProgress))),
        "{redelivered:?}"
    );
    assert_eq!(store.stats().evictions, 0, "only expired records made room");
}

#[tokio::test(start_paused = true)]
async fn a_full_store_evicts_a_completed_record_before_a_live_claim() {
    let store = MemoryStore::with_capacity(3);
    // "a" is the least recently used record, and a live claim.
    assert_eq!(
        store.try_claim("a", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    completed(&store, "b", TTL).await;
    completed(&store, "c", TTL).await;
    assert_eq!(
        store.try_claim("d", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert!(
        store.get("a").await.unwrap().is_some(),
        "the live claim is kept"
    );
    assert!(store.get("b").await.unwrap().is_none(), "b was evicted");
    assert!(store.complete("a", "o", TTL).await.unwrap(), "a still held");
    assert_eq!(store.stats().evictions, 1);
}

#[tokio::test(start_paused = true)]
async fn expired_records_anywhere_in_a_full_store_go_before_a_live_record() {
    let store = MemoryStore::with_capacity(4);
    // The live claim "a" heads the least recently used order, the expired "b" and "c" sit
    // behind it, the live completed "d" last.
    assert_eq!(
        store.try_claim("a", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    completed(&store, "b", Duration::from_secs(1)).await;
    completed(&store, "c", Duration::from_secs(1)).await;
    completed(&store, "d", TTL).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    for key in ["e", "f"] {
        assert_eq!(
            store.try_claim(key, "o", LEASE).await.unwrap(),
            Claim::Acquired
        );
    }
    for key in ["a", "d", "e", "f"] {
        assert!(store.get(key).await.unwrap().is_some(), "{key} is kept");
    }
    assert_eq!(
        store.stats().evictions,
        0,
        "only expired records were dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn a_store_full_of_live_claims_refuses_a_new_claim_and_evicts_nothing() {
    let store = MemoryStore::with_capacity(3);
    for key in ["a", "b", "c"] {
        assert_eq!(
            store.try_claim(key, "o", LEASE).await.unwrap(),
            Claim::Acquired
        );
    }
    let refused = store.try_claim("d", "o", LEASE).await;
    let Err(StoreError::Unavailable { message, .. }) = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(message.contains("capacity of 3"), "{message}");
    assert!(message.contains("\"d\""), "{message}");
    for key in ["a", "b", "c"] {
        assert!(store.complete(key, "o", TTL).await.unwrap(), "{key} kept");
    }
    // Completed records are candidates again: the next claim evicts one of them.
    assert_eq!(
        store.try_claim("d", "o", LEASE).await.unwrap(),
        Claim::Acquired
    );
    assert_eq!(store.stats().refused_claims, 1);
    // A claim that replaces an expired record of its own key needs no room.
    tokio::time::advance(LEASE + TTL).await;
    assert_eq!(
        store.try_claim("a", "p", LEASE).await.unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn a_store_below_its_capacity_never_evicts_inside_one_full_shard() {
    // 64 shards of 4,096 records: at 98% of the capacity, some shard would be over its
    // share if each shard had one.
    let capacity = 64 * 4096;
    let store = MemoryStore::with_capacity(capacity);
    let load = capacity * 98 / 100;
    for n in 0..load {
        let key = format!("shard:{n}");
        assert_eq!(
            store.try_claim(&key, "o", TTL).await.unwrap(),
            Claim::Acquired
        );
    }
    assert_eq!(store.approximate_len(), load);
    let mut lost = 0;
    for n in 0..load {
        if store.get(&format!("shard:{n}")).await.unwrap().is_none() {
            lost += 1;
        }
    }
    assert_eq!(
        lost, 0,
        "{lost} of {load} live claims evicted below capacity"
    );
    assert_eq!(store.stats().evictions, 0);
}

/// What a test's tracing subscriber wrote.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn evictions_are_counted_each_and_warned_about_once_a_minute() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let store = MemoryStore::with_capacity(1);
    for key in ["a", "b", "c"] {
        completed(&store, key, TTL).await;
    }
    assert_eq!(store.stats().evictions, 2);
    tokio::time::advance(Duration::from_secs(61)).await;
    completed(&store, "d", TTL).await;
    assert_eq!(store.stats().evictions, 3);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("MEMORY_STORE_EVICTION"))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(warnings[0].contains("WARN"), "{log}");
    assert!(warnings[0].contains("evicted=1"), "{log}");
    // The second warning covers both evictions since the first.
    assert!(warnings[1].contains("evicted=2"), "{log}");
    assert!(warnings[1].contains("evictions_total=3"), "{log}");
}
