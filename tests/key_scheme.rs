//! The guard keys every event with its configuration's key scheme: `run` and `run_batch`
//! claim the keys `Guard::key_for` gives, and under `KeyScheme::PythonV2` an event type
//! whose key would leave the namespace is refused before the store sees anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventonce::{
    async_trait, Claim, EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    IdentityError, KeyScheme, MemoryStore, Outcome, Record, StoreError,
};
use serde_json::json;

/// A memory store that remembers every key it was asked to claim.
#[derive(Clone, Default)]
struct Recording {
    inner: MemoryStore,
    claimed: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn claimed(&self) -> Vec<String> {
        self.claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl IdempotencyStore for Recording {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(key.to_owned());
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
}

fn v2_guard(store: &Recording) -> Guard {
    let config = IdempotencyConfig::builder("essay-lifecycle-service")
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("config");
    Guard::new(store.clone(), config)
}

fn events() -> Vec<EventEnvelope> {
    vec![
        EventEnvelope::new("huleedu.cj_assessment.completed.v1", json!({"n": 1}))
            .with_event_id("e-1"),
        EventEnvelope::new("orders.created.v1", json!({"n": 2, "x": [1e16]})),
        EventEnvelope::new("orders.created.v1", json!({"n": 3})).with_event_id(""),
    ]
}

#[tokio::test]
async fn run_and_run_batch_claim_the_schemes_keys() {
    let store = Recording::default();
    let guard = v2_guard(&store);
    let config = guard.config().clone();
    let all = events();
    let (first, rest) = all.split_first().expect("events");
    let outcome = guard
        .run(first, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("run");
    assert_eq!(outcome, Outcome::Processed(()));
    let results = guard
        .run_batch(rest, |_| async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(Outcome::Processed(())))));
    let expected: Vec<String> = all.iter().map(|e| guard.key_for(e).expect("key")).collect();
    assert_eq!(store.claimed(), expected);
    for (e, key) in all.iter().zip(&expected) {
        assert_eq!(config.event_key(e).as_ref(), Ok(key));
        assert_eq!(
            key.rsplit(':').next().map(str::len),
            Some(64),
            "a SHA-256: {key}"
        );
        assert!(store.get(key).await.expect("get").is_some(), "{key}");
    }
    assert!(expected[0].contains(":huleedu_cj_assessment_completed_v1:"));
    // Every one is a duplicate now, for run and run_batch alike.
    let again = guard
        .run_batch(&all, |_| async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(again.iter().all(|r| matches!(r, Ok(Outcome::Duplicate))));
}

#[tokio::test]
async fn event_types_leaving_the_namespace_are_refused_and_never_written() {
    let store = Recording::default();
    let guard = v2_guard(&store);
    let bad = EventEnvelope::new("orders:created.*", json!({"n": 1})).with_event_id("e-1");
    assert!(matches!(
        guard.key_for(&bad),
        Err(IdentityError::EventTypeOutsideNamespace { .. })
    ));
    let polled = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&polled);
    let err = guard
        .run(&bad, async move {
            *flag
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            Ok::<_, std::io::Error>(())
        })
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            GuardError::InvalidEvent(IdentityError::EventTypeOutsideNamespace { .. })
        ),
        "{err}"
    );
    assert!(!err.is_retryable());
    assert!(!*polled
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner));
    let mut batch = events();
    batch.insert(1, bad.clone());
    let results = guard
        .run_batch(&batch, |_| async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(matches!(results[1], Err(GuardError::InvalidEvent(_))));
    assert!(results
        .iter()
        .enumerate()
        .all(|(i, r)| i == 1 || matches!(r, Ok(Outcome::Processed(())))));
    assert_eq!(
        store.claimed().len(),
        3,
        "only the good events were claimed"
    );
    assert_eq!(guard.stats().invalid_events, 2);
    // The default scheme escapes the same type and processes it.
    let default = Guard::new(
        store.clone(),
        IdempotencyConfig::builder("essay-lifecycle-service")
            .build()
            .expect("config"),
    );
    assert_eq!(
        default
            .run(&bad, async { Ok::<_, std::io::Error>(()) })
            .await
            .expect("run"),
        Outcome::Processed(())
    );
}
