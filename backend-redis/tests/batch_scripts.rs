//! The batch scripts check each key's owner even where values repeat: keys claimed
//! together hold one same value, and the scripts match a value's form once per distinct
//! value and owner, never carrying one key's answer over to a key it does not fit.

use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{Claim, Completion, IdempotencyStore, RecordState};
use eventonce_redis::RedisStore;
use redis::AsyncCommands;

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

const LEASE: Duration = Duration::from_secs(60);

fn completion(key: &str, owner: &str) -> Completion {
    Completion {
        key: key.to_owned(),
        owner: owner.to_owned(),
        ttl: LEASE,
        result: None,
    }
}

/// Six keys: `a`'s claims at 0, 1, 3 and 5 (one value, claimed together), absent at 2,
/// an older writer's value at 4.
async fn mixed(store: &RedisStore) -> Vec<String> {
    let keys: Vec<String> = (0..6).map(|_| unique_key("batch-scripts")).collect();
    let ours = [
        keys[0].clone(),
        keys[1].clone(),
        keys[3].clone(),
        keys[5].clone(),
    ];
    let claims = store
        .try_claim_many(&ours, "a", LEASE)
        .await
        .expect("claim");
    assert!(claims.iter().all(|c| *c == Claim::Acquired));
    let mut con = redis::Client::open(url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis is up");
    let _: () = con.set_ex(&keys[4], "1", 600).await.expect("set");
    keys
}

#[tokio::test]
async fn completions_with_their_own_owners_are_checked_key_by_key() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let keys = mixed(&store).await;
    // One value, different owners: only `a`'s completions fit it.
    let done = store
        .complete_many(&[
            completion(&keys[0], "a"),
            completion(&keys[1], "b"),
            completion(&keys[2], "a"),
            completion(&keys[3], "a"),
            completion(&keys[4], "a"),
            completion(&keys[5], "b"),
        ])
        .await
        .expect("complete many");
    assert_eq!(done, vec![true, false, false, true, false, false]);
    let state = |i: usize| {
        let store = &store;
        let key = keys[i].clone();
        async move { store.get(&key).await.expect("get").map(|r| r.state) }
    };
    assert_eq!(state(0).await, Some(RecordState::Completed));
    assert_eq!(state(1).await, Some(RecordState::Processing));
    assert_eq!(state(5).await, Some(RecordState::Processing));
}

#[tokio::test]
async fn releases_and_renewals_skip_the_keys_between_that_do_not_fit() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let keys = mixed(&store).await;
    let renewed = store.extend_many(&keys, "a", LEASE).await.expect("extend");
    assert_eq!(renewed, vec![true, true, false, true, false, true]);
    assert_eq!(
        store.extend_many(&keys, "b", LEASE).await.expect("extend"),
        vec![false; 6]
    );
    // The completions of 1 and 3 leave completed values between a's claims.
    let done = store
        .complete_many(&[completion(&keys[1], "a"), completion(&keys[3], "a")])
        .await
        .expect("complete");
    assert_eq!(done, vec![true, true]);
    let released = store.release_many(&keys, "a").await.expect("release");
    assert_eq!(released, vec![true, false, false, false, false, true]);
    for (i, expected) in [
        None,
        Some(RecordState::Completed),
        None,
        Some(RecordState::Completed),
        Some(RecordState::Completed),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let state = store.get(&keys[i]).await.expect("get").map(|r| r.state);
        assert_eq!(state, expected, "key {i}");
    }
}
