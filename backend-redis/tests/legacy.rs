//! Keys written by an older writer (the Python decorator) are honoured and never touched.

use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{Claim, IdempotencyStore, RecordState};
use eventonce_redis::RedisStore;
use redis::AsyncCommands;

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis is up")
}

const LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn older_writers_values_count_as_completed_and_stay_untouched() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let mut con = raw().await;
    let values = [
        "1",
        "completed",
        r#"{"processed_at": 1732712345.1, "processed_by": "essay-lifecycle-service"}"#,
        r#"{"status": "completed", "processed_at": 1732712345.1}"#,
        "p|not-a-number|x",
        "",
    ];
    for value in values {
        let key = unique_key("legacy");
        let _: () = con.set_ex(&key, value, 600).await.expect("set");
        assert_eq!(
            store.try_claim(&key, "me", LEASE).await.expect("claim"),
            Claim::Completed,
            "{value:?}"
        );
        assert!(!store.complete(&key, "me", LEASE).await.expect("complete"));
        assert!(!store.extend(&key, "me", LEASE).await.expect("extend"));
        assert!(!store.release(&key, "me").await.expect("release"));
        let record = store.get(&key).await.expect("get").expect("record");
        assert_eq!(
            (record.state, record.owner),
            (RecordState::Completed, None),
            "{value:?}"
        );
        let still: String = con.get(&key).await.expect("get");
        assert_eq!(still, value, "the older value was rewritten");
        let ttl: i64 = con.ttl(&key).await.expect("ttl");
        assert!(ttl > 590, "the older value's TTL was changed: {ttl}");
    }
}

#[tokio::test]
async fn an_older_writers_processing_claim_counts_as_in_progress() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let mut con = raw().await;
    let key = unique_key("legacy-processing");
    let value = r#"{"status": "processing", "started_at": 1732712345.1, "processed_by": "svc"}"#;
    let _: () = con.set_ex(&key, value, 300).await.expect("set");
    assert_eq!(
        store.try_claim(&key, "me", LEASE).await.expect("claim"),
        Claim::InProgress
    );
    assert!(!store.release(&key, "me").await.expect("release"));
    let record = store.get(&key).await.expect("get").expect("record");
    assert_eq!(record.state, RecordState::Processing);
    let still: String = con.get(&key).await.expect("get");
    assert_eq!(still, value);
}

#[tokio::test]
async fn records_are_small_and_readable() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let mut con = raw().await;
    let key = unique_key("format");
    let owner = "1f2e-0123456789abcdef-2a";
    assert_eq!(
        store.try_claim(&key, owner, LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let value: String = con.get(&key).await.expect("get");
    let parts: Vec<&str> = value.splitn(3, '|').collect();
    assert_eq!(parts[0], "p");
    assert!(parts[1].parse::<u64>().is_ok(), "{value}");
    assert_eq!(parts[2], owner);
    assert!(store
        .complete(&key, owner, Duration::from_secs(3600))
        .await
        .expect("complete"));
    let value: String = con.get(&key).await.expect("get");
    assert!(value.starts_with("c|") && value.ends_with(owner), "{value}");
    assert!(value.len() < 64, "{value}");
    let pttl: i64 = con.pttl(&key).await.expect("pttl");
    assert!(pttl > 3_590_000 && pttl <= 3_600_000, "{pttl}");
    let record = store.get(&key).await.expect("get").expect("record");
    let age = record
        .updated_at
        .and_then(|t| t.elapsed().ok())
        .expect("a timestamp");
    assert!(age < Duration::from_secs(60), "{age:?}");
}

#[tokio::test]
async fn scripts_are_reloaded_after_a_script_flush() {
    let store = RedisStore::connect(&url()).await.expect("connect");
    let mut con = raw().await;
    let key = unique_key("noscript");
    assert_eq!(
        store.try_claim(&key, "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .expect("flush");
    assert_eq!(
        store
            .try_claim(&key, "b", LEASE)
            .await
            .expect("claim after flush"),
        Claim::InProgress
    );
    assert!(store
        .complete(&key, "a", LEASE)
        .await
        .expect("complete after flush"));
}

#[tokio::test]
async fn connection_errors_never_show_the_password() {
    let err = RedisStore::connect("redis://user:hunter2@127.0.0.1:1/0")
        .await
        .expect_err("port 1 is closed");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
}

/// Older writers' values, `c|` values written without a result and malformed `r|` values
/// carry no result: `run_stored` answers them as plain duplicates and never rewrites them.
#[tokio::test]
async fn values_without_a_result_answer_run_stored_as_plain_duplicates() {
    use eventonce_core::{Guard, IdempotencyConfig, Identity, StoredOutcome};
    let store = RedisStore::connect(&url()).await.expect("connect");
    let mut con = raw().await;
    let config = IdempotencyConfig::builder("legacy-results")
        .key_prefix("huleedu:idempotency:conformance")
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config);
    let values = [
        "1",
        r#"{"status": "completed"}"#,
        "c|1|someone",
        "r|1|99|short",
    ];
    for (n, value) in values.iter().enumerate() {
        let event = Identity::new("legacy.result.v1", unique_key(&format!("result-{n}")));
        let key = guard.key_for(&event).expect("key");
        let _: () = con.set_ex(&key, *value, 600).await.expect("set");
        let (record, result) = store
            .get_with_result(&key)
            .await
            .expect("get_with_result")
            .expect("record");
        assert_eq!(
            (record.state, result),
            (RecordState::Completed, None),
            "{value:?}"
        );
        let out = guard
            .run_stored(&event, async { Ok::<_, std::io::Error>(5u8) })
            .await
            .expect("run_stored");
        assert_eq!(out, StoredOutcome::Duplicate, "{value:?}");
        assert!(!store
            .complete_with_result(&key, "me", LEASE, b"x")
            .await
            .expect("complete_with_result"));
        let still: String = con.get(&key).await.expect("get");
        assert_eq!(still, *value, "the value was rewritten");
    }
}
