//! No event content can make the guard touch a key outside its service's namespace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventonce::{
    async_trait, Claim, EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, MemoryStore,
    Record, StoreError,
};
use proptest::prelude::*;
use serde_json::Value;

/// A real store that records every key it is asked about.
#[derive(Clone)]
struct Recording {
    inner: MemoryStore,
    keys: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn note(&self, key: &str) {
        self.keys.lock().expect("lock").push(key.to_owned());
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
        self.note(key);
        self.inner.try_claim(key, owner, lease).await
    }
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.note(key);
        self.inner.complete(key, owner, ttl).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.note(key);
        self.inner.release(key, owner).await
    }
    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.note(key);
        self.inner.extend(key, owner, lease).await
    }
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.note(key);
        self.inner.get(key).await
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        ".{0,80}",
        "[:*?\\[\\]{}\\\\ %_~.]{0,40}",
        "\\PC{190,260}"
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_key_the_guard_touches_stays_in_its_namespace(
        event_type in text(),
        event_id in proptest::option::of(text()),
        data in text(),
        fail in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let store = Recording { inner: MemoryStore::new(), keys: Arc::default() };
        let guard = Guard::new(store.clone(), IdempotencyConfig::builder("svc").build().expect("config"));
        let mut envelope = EventEnvelope::new(event_type, Value::String(data));
        envelope.event_id = event_id;
        runtime.block_on(async {
            let _ = guard
                .run(&envelope, async { if fail { Err("no") } else { Ok(()) } })
                .await;
            let _ = guard.run(&envelope, async { Ok::<_, &str>(()) }).await;
        });
        let keys = store.keys.lock().expect("lock").clone();
        for key in &keys {
            let rest = key.strip_prefix("huleedu:idempotency:v2:svc:");
            prop_assert!(rest.is_some(), "{}", key);
            let rest = rest.unwrap_or_default();
            prop_assert_eq!(rest.matches(':').count(), 1, "{}", key);
            prop_assert!(key.is_ascii() && !key.contains(['*', '?', '[', ']', '{', '}', ' ', '\\']), "{}", key);
        }
        if envelope.event_type.is_empty() {
            prop_assert!(keys.is_empty());
        }
    }
}
