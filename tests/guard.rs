//! Guard behaviour beyond the shared conformance suite: leases under Tokio's paused
//! clock, cancellation after success, error types.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce::{
    async_trait, Claim, EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    MemoryStore, Outcome, Record, RecordState, StoreError,
};
use serde_json::json;

fn event(n: u32) -> EventEnvelope {
    EventEnvelope::new("orders.created.v1", json!({"order": n})).with_event_id(format!("o-{n}"))
}

fn config(lease: Duration) -> IdempotencyConfig {
    IdempotencyConfig::builder("orders")
        .lease(lease)
        .store_timeout(Duration::from_secs(30))
        .build()
        .expect("config")
}

#[test]
fn guard_is_clone_send_sync_and_errors_are_std_errors() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Guard>();
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<GuardError<std::io::Error>>();
    assert_error::<StoreError>();
    let err: GuardError<std::io::Error> = GuardError::Handler(std::io::Error::other("disk full"));
    assert_eq!(err.to_string(), "event handler failed: disk full");
    assert!(std::error::Error::source(&err).is_some());
    assert_eq!(
        GuardError::<std::io::Error>::InProgress.to_string(),
        "event is being processed by another consumer"
    );
    assert!(GuardError::<std::io::Error>::InProgress.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn an_hour_long_handler_keeps_its_five_minute_lease_alive() {
    let lease = Duration::from_secs(300);
    let store = MemoryStore::new();
    let g = Guard::new(store.clone(), config(lease));
    let other = Guard::new(store, config(lease));
    let e = event(1);
    let slow = tokio::spawn({
        let (g, e) = (g.clone(), e.clone());
        async move {
            g.run(&e, async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>("done")
            })
            .await
        }
    });
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(170)).await;
        let r = other
            .run(&e, async { Ok::<_, String>("second run!") })
            .await;
        assert!(matches!(r, Err(GuardError::InProgress)), "{r:?}");
    }
    assert_eq!(
        slow.await.expect("task").expect("run"),
        Outcome::Processed("done")
    );
    assert_eq!(g.stats().claims_lost, 0);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_dies_mid_handler_blocks_its_event_for_one_lease_only() {
    let lease = Duration::from_secs(300);
    let store = MemoryStore::new();
    let e = event(2);
    // The consumer dies: its run future is leaked mid-handler, so nothing releases,
    // completes or renews the claim, exactly as after a SIGKILL.
    {
        let dead = Guard::new(store.clone(), config(lease));
        let e = e.clone();
        let mut run = Box::pin(async move {
            dead.run(&e, std::future::pending::<Result<(), String>>())
                .await
        });
        let _ = tokio::time::timeout(Duration::from_millis(1), &mut run).await;
        std::mem::forget(run);
    }
    let g = Guard::new(store, config(lease));
    tokio::time::sleep(lease - Duration::from_secs(1)).await;
    let r = g.run(&e, async { Ok::<_, String>(()) }).await;
    assert!(matches!(r, Err(GuardError::InProgress)), "{r:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = g
        .run(&e, async { Ok::<_, String>("redelivered") })
        .await
        .expect("run");
    assert_eq!(r, Outcome::Processed("redelivered"));
}

/// A store whose `complete` takes a while, to drop `run` while it completes.
struct SlowComplete(MemoryStore);

#[async_trait]
impl IdempotencyStore for SlowComplete {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.0.try_claim(key, owner, lease).await
    }
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.0.complete(key, owner, ttl).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.0.release(key, owner).await
    }
    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.0.extend(key, owner, lease).await
    }
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.0.get(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_dropped_after_its_handler_succeeded_completes_instead_of_releasing() {
    let inner = MemoryStore::new();
    let g = Guard::new(
        SlowComplete(inner.clone()),
        config(Duration::from_secs(300)),
    );
    let e = event(3);
    let runs = AtomicUsize::new(0);
    let r = tokio::time::timeout(
        Duration::from_millis(50),
        g.run(&e, async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        }),
    )
    .await;
    assert!(r.is_err(), "the run was cut off while completing");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = inner.get(&g.key_for(&e).expect("key")).await.expect("get");
    assert_eq!(record.map(|r| r.state), Some(RecordState::Completed));
    let again = g.run(&e, async { Ok::<_, String>(()) }).await.expect("run");
    assert_eq!(again, Outcome::Duplicate);
}

#[tokio::test]
async fn one_guard_serves_many_tasks_and_events() {
    let g = Guard::new(MemoryStore::new(), config(Duration::from_secs(60)));
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let (g, runs) = (g.clone(), Arc::clone(&runs));
        tasks.push(tokio::spawn(async move {
            for n in 0..200u32 {
                // Every task delivers every event: 8 deliveries of each of 200 events.
                let e = event((n + t * 7) % 200);
                let _ = g
                    .run(&e, async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(())
                    })
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let stats = g.stats();
    assert_eq!(runs.load(Ordering::SeqCst), 200);
    assert_eq!(stats.processed, 200);
    assert_eq!(stats.processed + stats.duplicates + stats.in_progress, 1600);
}
