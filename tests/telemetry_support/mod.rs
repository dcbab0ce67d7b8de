//! What the telemetry tests share: one run of every outcome.

use std::sync::Arc;
use std::time::Duration;

use eventonce::{
    async_trait, Claim, EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    MemoryStore, Outcome, Record, StoreError,
};
use serde_json::json;

pub(crate) const SERVICE: &str = "telemetry-test";
pub(crate) const TYPE: &str = "orders.created.v1";

fn config(service: &str) -> IdempotencyConfig {
    IdempotencyConfig::builder(service)
        .key_prefix("eventonce:telemetry-test")
        .build()
        .expect("config")
}

fn event(id: &str) -> EventEnvelope {
    EventEnvelope::new(TYPE, json!({"order": id})).with_event_id(id)
}

/// A store whose every call fails, as during an outage.
struct DownStore;

fn down() -> StoreError {
    StoreError::Unavailable {
        message: "connection refused".into(),
        source: None,
    }
}

#[async_trait]
impl IdempotencyStore for DownStore {
    async fn try_claim(&self, _: &str, _: &str, _: Duration) -> Result<Claim, StoreError> {
        Err(down())
    }
    async fn complete(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(down())
    }
    async fn release(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        Err(down())
    }
    async fn extend(&self, _: &str, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(down())
    }
    async fn get(&self, _: &str) -> Result<Option<Record>, StoreError> {
        Err(down())
    }
}

async fn ok<T>(value: T) -> Result<T, std::io::Error> {
    Ok(value)
}

/// Drives one run of every outcome through guards on a current-thread runtime (so that a
/// thread-local recorder or subscriber sees everything).
pub(crate) fn every_outcome() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = Arc::new(MemoryStore::new());
        let guard = Guard::from_arc(store.clone(), config(SERVICE));

        let first = event("evt-1");
        assert_eq!(
            guard.run(&first, ok(1)).await.ok(),
            Some(Outcome::Processed(1))
        );
        assert_eq!(
            guard.run(&first, ok(2)).await.ok(),
            Some(Outcome::Duplicate)
        );
        let failing = guard
            .run(&event("evt-2"), async { Err::<(), _>("downstream down") })
            .await;
        assert!(matches!(failing, Err(GuardError::Handler(_))));

        let held = event("evt-3");
        let key = guard.key_for(&held).expect("key");
        store
            .try_claim(&key, "another-consumer", Duration::from_secs(60))
            .await
            .expect("claim");
        assert!(matches!(
            guard.run(&held, ok(())).await,
            Err(GuardError::InProgress)
        ));

        let nameless = EventEnvelope::new(TYPE, serde_json::Value::Null);
        assert!(matches!(
            guard.run(&nameless, ok(())).await,
            Err(GuardError::InvalidEvent(_))
        ));

        let panicking = {
            let (guard, envelope) = (guard.clone(), event("evt-4"));
            tokio::spawn(async move {
                guard
                    .run(&envelope, async {
                        if envelope.event_id.is_some() {
                            panic!("handler bug");
                        }
                        Ok::<_, std::io::Error>(())
                    })
                    .await
            })
        };
        assert!(panicking.await.expect_err("panicked").is_panic());

        let cancelled = tokio::time::timeout(
            Duration::from_millis(20),
            guard.run(&event("evt-5"), async {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }),
        )
        .await;
        assert!(cancelled.is_err());
        tokio::task::yield_now().await;

        let outage = Guard::new(DownStore, config("telemetry-outage"));
        assert_eq!(
            outage.run(&event("evt-6"), ok(6)).await.ok(),
            Some(Outcome::Unprotected(6))
        );
    });
}
