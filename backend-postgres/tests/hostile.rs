//! Hostile input on the real PostgreSQL: a key longer than an index entry is a record
//! like any other, every key a configuration can form fits, a large batch is claimed in chunks, and a
//! `statement_timeout` below the lock wait is a conflict, not an outage.

mod support;

use std::time::Duration;

use eventonce_core::config::defaults::{MAX_NAME_BYTES, MAX_PYTHON_V2_EVENT_TYPE};
use eventonce_core::conformance::{unique_key, unique_service};
use eventonce_core::{
    Claim, EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    IdentityError, KeyScheme, Outcome, TransactionalStore,
};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// 30,000 events in one `run_batch` under a 300 ms store timeout (one statement over all
/// of them takes longer): split into chunks, every event runs once over two deliveries,
/// none unprotected, and no claim is left processing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_claimed_in_chunks_and_runs_each_event_once() {
    let service = unique_service("large-batch");
    let tally = eventonce_testkit::large_batch::deliver_twice(
        support::store(4).await,
        &service,
        30_000,
        Duration::from_millis(300),
    )
    .await;
    let expected = eventonce_testkit::large_batch::LargeBatch {
        processed: 30_000,
        duplicates: 30_000,
        runs: 30_000,
        ..Default::default()
    };
    assert_eq!(tally, expected);
}

const LEASE: Duration = Duration::from_secs(60);

/// `len` letters without short repeats, so PostgreSQL cannot compress them below its
/// index limit.
fn incompressible(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// The index holds the key's digest, 16 bytes whatever the key's length: a key of 10,000
/// bytes (past what a B-tree entry of the key itself could hold) is a record like any
/// other, alone and in a batch.
#[tokio::test]
async fn a_key_longer_than_an_index_entry_is_a_record_like_any_other() {
    let store = support::store(2).await;
    let key = format!(
        "{}:{}",
        eventonce_core::conformance::unique_key("long-key"),
        incompressible(10_000, 5)
    );
    assert_eq!(
        store.try_claim(&key, "owner", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete(&key, "owner", LEASE)
        .await
        .expect("complete"));
    assert_eq!(
        store.try_claim(&key, "other", LEASE).await.expect("claim"),
        Claim::Completed
    );
    let longer = format!("{key}!");
    let keys = vec![
        eventonce_core::conformance::unique_key("short"),
        key,
        longer,
    ];
    let claims = store
        .try_claim_many(&keys, "owner", LEASE)
        .await
        .expect("claim many");
    assert_eq!(
        claims,
        [Claim::Acquired, Claim::Completed, Claim::Acquired],
        "{claims:?}"
    );
}

#[tokio::test]
async fn the_longest_key_a_configuration_can_form_fits_the_index() {
    let store = support::store(2).await;
    // The longest names the configuration accepts, and the longest python-v2 type.
    let prefix = format!("p{}", incompressible(MAX_NAME_BYTES - 1, 11));
    let service = format!("s{}", incompressible(MAX_NAME_BYTES - 1, 13));
    let config = IdempotencyConfig::builder(service)
        .key_prefix(prefix)
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("names of the limit are accepted");
    let event = EventEnvelope::new(
        incompressible(MAX_PYTHON_V2_EVENT_TYPE, 17),
        json!({ "n": 1 }),
    );
    let guard = Guard::new(store, config);
    let key = guard.key_for(&event).expect("key");
    println!("longest key: {} bytes", key.len());
    let out = guard
        .run(&event, async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(matches!(out, Ok(Outcome::Processed(()))), "{out:?}");
    let longer = EventEnvelope::new(
        incompressible(MAX_PYTHON_V2_EVENT_TYPE + 1, 17),
        json!({ "n": 1 }),
    );
    let refused = guard
        .run(&longer, async { Ok::<_, std::io::Error>(()) })
        .await;
    assert!(
        matches!(
            refused,
            Err(GuardError::InvalidEvent(IdentityError::EventTypeTooLong { length, limit }))
                if length == MAX_PYTHON_V2_EVENT_TYPE + 1 && limit == MAX_PYTHON_V2_EVENT_TYPE
        ),
        "{refused:?}"
    );
}

/// A store whose sessions cancel any statement after 20 ms (`statement_timeout`, as an
/// `ALTER ROLE ... SET` would), far below its 1 s lock wait.
async fn store_with_a_short_statement_timeout() -> PostgresStore {
    drop(support::store(1).await);
    let connect: PgConnectOptions = support::url().parse().expect("url");
    let connect = connect.options([("statement_timeout", "20ms")]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect)
        .await
        .expect("connect");
    let options = PostgresOptions::default()
        .schema(support::schema())
        .lock_wait(Duration::from_secs(1));
    PostgresStore::from_pool_with(pool, options).expect("names")
}

/// A `statement_timeout` below the lock wait cancels a claim waiting for another
/// transaction's row (57014): that is the other transaction's claim, so the answer is
/// `InProgress`, never a store error, and `FailMode::Open` never runs the event beside its
/// holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_below_the_lock_wait_is_a_conflict_not_an_outage() {
    let holder = support::store(2).await;
    let short = store_with_a_short_statement_timeout().await;
    let config = IdempotencyConfig::builder(unique_service("statement-timeout"))
        .on_store_error(FailMode::Open)
        .build()
        .expect("config");
    let guard = Guard::new(short.clone(), config);
    let event = EventEnvelope::new("held.v1", json!({ "n": 1 })).with_event_id("held-1");
    let key = guard.key_for(&event).expect("key");
    let mut tx = holder.begin().await.expect("begin");
    let held = holder
        .claim_in(&mut tx, &key, "holder", LEASE)
        .await
        .expect("claim in the holder's transaction");
    assert_eq!(held, Claim::Acquired);

    let plain = short.try_claim(&key, "other", LEASE).await;
    let many = short
        .try_claim_many(&[key.clone(), unique_key("free")], "other", LEASE)
        .await;
    let mut other_tx = short.begin().await.expect("begin");
    let in_tx = short.claim_in(&mut other_tx, &key, "other", LEASE).await;
    short.rollback(other_tx).await.expect("rollback");
    let ran = std::sync::atomic::AtomicUsize::new(0);
    let run = guard
        .run(&event, async {
            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await;
    let summary = format!(
        "try_claim: {plain:?}; try_claim_many: {many:?}; claim_in: {in_tx:?}; run: {run:?}; \
         handler ran {} times while another transaction held the event",
        ran.load(std::sync::atomic::Ordering::SeqCst)
    );
    holder.rollback(tx).await.expect("rollback");
    assert!(matches!(plain, Ok(Claim::InProgress)), "{summary}");
    assert!(
        matches!(&many, Ok(c) if c == &[Claim::InProgress, Claim::Acquired]),
        "{summary}"
    );
    assert!(matches!(in_tx, Ok(Claim::InProgress)), "{summary}");
    assert!(matches!(run, Err(GuardError::InProgress)), "{summary}");
    assert_eq!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{summary}"
    );
}
