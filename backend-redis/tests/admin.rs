//! Operator access (`AdminStore`) on the real Redis: literal scopes, pages, removal of
//! exactly the record seen.

use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{AdminStore, Claim, IdempotencyStore, RecordState};
use eventonce_redis::RedisStore;
use redis::AsyncCommands;

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

const LEASE: Duration = Duration::from_secs(60);

async fn all(store: &RedisStore, scope: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_page(scope, cursor.as_deref(), 50)
            .await
            .expect("list");
        keys.extend(page.records.into_iter().map(|r| r.key));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return keys,
        }
    }
}

#[tokio::test]
async fn a_scope_is_a_literal_prefix_never_a_pattern() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let base = unique_key("admin-scope");
    let mut con = redis::Client::open(url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for suffix in ["[a]*:1", "a:2", "[a]x:3"] {
        let _: () = con
            .set_ex(format!("{base}{suffix}"), "c|1|o", 600)
            .await
            .expect("set");
    }
    let mut keys = all(&store, &format!("{base}[a]*")).await;
    keys.sort();
    assert_eq!(keys, vec![format!("{base}[a]*:1")]);
    assert_eq!(all(&store, &base).await.len(), 3);
}

#[tokio::test]
async fn removal_takes_only_the_record_that_was_seen() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let key = unique_key("admin-remove");
    assert_eq!(
        store.try_claim(&key, "first", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let seen = store.get(&key).await.expect("get").expect("record");
    assert_eq!(seen.state, RecordState::Processing);
    // The record changes after it was seen: completed by its owner.
    assert!(store
        .complete(&key, "first", LEASE)
        .await
        .expect("complete"));
    assert!(!store
        .remove_if_unchanged(&key, &seen)
        .await
        .expect("remove"));
    let now = store.get(&key).await.expect("get").expect("record");
    assert_eq!(now.state, RecordState::Completed);
    assert!(store.remove_if_unchanged(&key, &now).await.expect("remove"));
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert!(!store.remove_if_unchanged(&key, &now).await.expect("gone"));
}

#[tokio::test]
async fn memory_is_measured_per_key_and_absent_keys_have_none() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let key = unique_key("admin-memory");
    assert_eq!(
        store.try_claim(&key, "o", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let sizes = store
        .memory_usage(&[key.clone(), unique_key("admin-memory-absent")])
        .await
        .expect("memory");
    assert!(
        matches!(sizes[0], Some(n) if n > 0 && n < 1024),
        "{sizes:?}"
    );
    assert_eq!(sizes[1], None);
}
