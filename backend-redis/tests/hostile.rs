//! Hostile data on the real Redis: a value of another kind at an event's key (`WRONGTYPE`)
//! is that event's error, never an outage, alone or inside a batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use eventonce_core::conformance::unique_service;
use eventonce_core::{
    EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, IdempotencyStore, Outcome,
    StoreError,
};
use eventonce_redis::RedisStore;
use serde_json::json;

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn store() -> RedisStore {
    RedisStore::connect(&url())
        .await
        .expect("the tests need Redis")
}

/// Writes a list at `key`: a value no script of the store reads.
async fn plant_list(key: &str) {
    let client = redis::Client::open(url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: () = redis::cmd("RPUSH")
        .arg(key)
        .arg("foreign")
        .query_async(&mut conn)
        .await
        .expect("rpush");
    let _: () = redis::cmd("PEXPIRE")
        .arg(key)
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("pexpire");
}

fn guard(store: RedisStore, check: &str) -> Guard {
    let config = IdempotencyConfig::builder(unique_service(check))
        .on_store_error(FailMode::Open)
        .circuit_breaker(2, Duration::from_secs(30))
        .build()
        .expect("config");
    Guard::new(store, config)
}

fn event(n: usize) -> EventEnvelope {
    EventEnvelope::new("hostile.event.v1", json!({ "n": n })).with_event_id(format!("e-{n}"))
}

#[tokio::test]
async fn a_foreign_value_at_an_events_key_is_that_events_error_not_an_outage() {
    let g = guard(store().await, "wrongtype-run");
    let ran = AtomicUsize::new(0);
    let mut answers = Vec::new();
    for n in 0..3 {
        let e = event(n);
        plant_list(&g.key_for(&e).expect("key")).await;
        let answer = g
            .run(&e, async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            })
            .await;
        answers.push(format!("{answer:?}").chars().take(120).collect::<String>());
    }
    let foreign_runs = ran.swap(0, Ordering::SeqCst);
    let breaker_open = g.circuit_open();
    let honest = event(10);
    for _ in 0..2 {
        let _ = g
            .run(&honest, async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(())
            })
            .await;
    }
    let summary = format!(
        "answers: {answers:?}; handlers run for foreign keys: {foreign_runs}; breaker open: \
         {breaker_open}; honest event delivered twice ran {} times",
        ran.load(Ordering::SeqCst)
    );
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("Err(InvalidEvent(StoreRefused")),
        "{summary}"
    );
    assert_eq!(
        (foreign_runs, breaker_open, ran.load(Ordering::SeqCst)),
        (0, false, 1),
        "{summary}"
    );
}

#[tokio::test]
async fn a_foreign_value_in_a_batch_fails_only_its_own_event() {
    let g = guard(store().await, "wrongtype-batch");
    let events: Vec<EventEnvelope> = (0..20).map(event).collect();
    plant_list(&g.key_for(&events[7]).expect("key")).await;
    let ran = AtomicUsize::new(0);
    let answers = g
        .run_batch(&events, |_| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await;
    let shown: Vec<String> = answers
        .iter()
        .map(|a| format!("{a:?}").chars().take(40).collect())
        .collect();
    assert!(
        matches!(answers[7], Err(GuardError::InvalidEvent(_))),
        "{shown:?}"
    );
    for (i, a) in answers.iter().enumerate() {
        if i != 7 {
            assert!(matches!(a, Ok(Outcome::Processed(()))), "{i}: {shown:?}");
        }
    }
    assert_eq!(ran.load(Ordering::SeqCst), 19, "{shown:?}");
    assert!(!g.circuit_open());
    // Nothing claimed by the refused call is left behind: a redelivery finds duplicates.
    let again = g
        .run_batch(&events, |_| async { Ok::<_, std::io::Error>(()) })
        .await;
    for (i, a) in again.iter().enumerate() {
        if i != 7 {
            assert!(matches!(a, Ok(Outcome::Duplicate)), "{i}: {a:?}");
        }
    }
}

#[tokio::test]
async fn the_store_classifies_a_foreign_value_as_refused_data() {
    let s = store().await;
    let key = format!(
        "huleedu:idempotency:v2:{}:t:h",
        unique_service("wrongtype-store")
    );
    plant_list(&key).await;
    let err = s
        .try_claim(&key, "owner", Duration::from_secs(5))
        .await
        .expect_err("a list is not a record");
    assert!(matches!(err, StoreError::Rejected { .. }), "{err:?}");
    assert!(!err.is_outage());
}

/// 100,000 events in one `run_batch` under a 100 ms store timeout: split into chunks, each
/// claim and completion call stays short, so every event runs once over two deliveries,
/// none unprotected, and no claim is left processing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_claimed_in_chunks_and_runs_each_event_once() {
    let service = unique_service("large-batch");
    let tally = eventonce_testkit::large_batch::deliver_twice(
        store().await,
        &service,
        100_000,
        Duration::from_millis(100),
    )
    .await;
    let expected = eventonce_testkit::large_batch::LargeBatch {
        processed: 100_000,
        duplicates: 100_000,
        runs: 100_000,
        ..Default::default()
    };
    assert_eq!(tally, expected);
}
