//! PostgreSQL specifics: migrations, names, the reaper, the database clock, errors.

mod support;

use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{Claim, Completion, IdempotencyStore, RecordState, StoreError};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use sqlx::AssertSqlSafe;

#[tokio::test]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let options = PostgresOptions::default()
        .schema(support::schema())
        .table("concurrent_migrations");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            PostgresStore::connect_with(&support::url(), options.max_connections(2)).await
        }));
    }
    let mut stores = Vec::new();
    for t in tasks {
        stores.push(t.await.expect("task").expect("connect and migrate"));
    }
    stores[0].migrate().await.expect("again");
    let key = unique_key("migrated");
    assert_eq!(
        stores[1]
            .try_claim(&key, "o", Duration::from_secs(5))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let applied: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".concurrent_migrations_migrations",
        support::schema()
    )))
    .fetch_one(stores[0].pool())
    .await
    .expect("migrations table");
    assert!(applied >= 1);
}

#[tokio::test]
async fn schema_and_table_names_are_configurable_and_checked() {
    let store = support::store(2).await;
    let custom = PostgresStore::from_pool_with(
        store.pool().clone(),
        PostgresOptions::default()
            .schema(support::schema())
            .table("custom_records"),
    )
    .expect("valid names");
    custom.migrate().await.expect("migrate");
    assert_eq!(
        custom.table(),
        format!("\"{}\".\"custom_records\"", support::schema())
    );
    let key = unique_key("custom");
    assert_eq!(
        custom
            .try_claim(&key, "o", Duration::from_secs(5))
            .await
            .expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        store.get(&key).await.expect("get"),
        None,
        "another table, another namespace"
    );
    for bad in ["Records", "records; DROP TABLE x", "a\"b", ""] {
        let err = PostgresStore::from_pool_with(
            store.pool().clone(),
            PostgresOptions::default().table(bad),
        )
        .expect_err("refused");
        assert!(matches!(err, StoreError::InvalidArgument(_)), "{bad:?}");
    }
}

#[tokio::test]
async fn the_reaper_deletes_expired_records_in_batches_and_keeps_live_ones() {
    let options = PostgresOptions::default()
        .schema(support::schema())
        .table("reaped_records");
    let store = PostgresStore::connect_with(&support::url(), options)
        .await
        .expect("connect");
    let short = Duration::from_millis(50);
    for i in 0..25 {
        let key = unique_key(&format!("reap-{i}"));
        assert_eq!(
            store.try_claim(&key, "o", short).await.expect("claim"),
            Claim::Acquired
        );
    }
    let live = unique_key("live");
    store
        .try_claim(&live, "o", Duration::from_secs(60))
        .await
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.reap_expired(10).await.expect("reap"), 10);
    let reaper = store.spawn_reaper(Duration::from_millis(20), 10);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            store.table()
        )))
        .fetch_one(store.pool())
        .await
        .expect("count");
        if left == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} records left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(reaper);
    assert!(
        store.get(&live).await.expect("get").is_some(),
        "the live claim survived"
    );
}

#[tokio::test]
async fn the_reaper_skips_a_record_a_transaction_holds() {
    let options = PostgresOptions::default()
        .schema(support::schema())
        .table("reaped_locked");
    let store = PostgresStore::connect_with(&support::url(), options)
        .await
        .expect("connect");
    let key = unique_key("locked");
    store
        .try_claim(&key, "o", Duration::from_millis(20))
        .await
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A claim in progress inside a transaction locks the expired row.
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {} WHERE key = $1 FOR UPDATE",
        store.table()
    )))
    .bind(&key)
    .execute(&mut *tx)
    .await
    .expect("lock");
    let reaped = tokio::time::timeout(Duration::from_secs(2), store.reap_expired(100))
        .await
        .expect("the reaper does not wait for the lock")
        .expect("reap");
    assert_eq!(reaped, 0);
    tx.rollback().await.expect("rollback");
    assert_eq!(store.reap_expired(100).await.expect("reap"), 1);
}

/// A pass reads the whole table: expired records spread over more pages than one
/// statement reads (4,096) are all deleted, the live ones kept; once a tenth of the table
/// (at least 10,000 records) has been deleted, the pass vacuums the table, so the deleted
/// records' space and index entries are reused.
#[tokio::test]
async fn a_reaper_pass_deletes_every_expired_record_and_vacuums_after_many() {
    let options = PostgresOptions::default()
        .schema(support::schema())
        .table("reaped_pass");
    let store = PostgresStore::connect_with(&support::url(), options)
        .await
        .expect("connect");
    let table = store.table();
    // 12,000 expired records, each alone on its page (a fill factor of 10 and a wide owner),
    // between two live ones, and more live ones among them.
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE {table} SET (fillfactor = 10)"
    )))
    .execute(store.pool())
    .await
    .expect("fill factor");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (key, state, owner, updated_at, expires_at)
         SELECT 'pass:' || i, 'c', repeat('o', 900), now(),
                now() + CASE WHEN i % 1000 = 1 THEN interval '1 hour' ELSE interval '-1 second' END
           FROM generate_series(1, 12001) AS i"
    )))
    .execute(store.pool())
    .await
    .expect("records");
    let pages: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT pg_relation_size('{table}') / 8192"
    )))
    .fetch_one(store.pool())
    .await
    .expect("pages");
    assert!(pages > 4_096, "{pages} pages");
    assert_eq!(store.reap_pass(1_000).await.expect("pass"), 12_001 - 13);
    let left: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT key FROM {table} ORDER BY key"
    )))
    .fetch_all(store.pool())
    .await
    .expect("left");
    assert_eq!(left.len(), 13, "{left:?}");
    assert_eq!(store.reap_pass(1_000).await.expect("pass"), 0);
    // The VACUUM's statistics arrive within a second or so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let vacuumed: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables
              WHERE relid = '{table}'::regclass"
        )))
        .fetch_one(store.pool())
        .await
        .expect("statistics");
        if vacuumed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no VACUUM after 11,988 deletions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn expiry_follows_the_database_clock() {
    let store = support::store(2).await;
    let key = unique_key("clock");
    store
        .try_claim(&key, "o", Duration::from_secs(30))
        .await
        .expect("claim");
    // Expiry is stored as the database's now() + lease: compare with the database's clock.
    let left_ms: f64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::float8 FROM {} WHERE key = $1",
        store.table()
    )))
    .bind(&key)
    .fetch_one(store.pool())
    .await
    .expect("expires_at");
    assert!(left_ms > 29_000.0 && left_ms <= 30_000.0, "{left_ms}");
}

#[tokio::test]
async fn connection_errors_never_show_the_password() {
    let err =
        PostgresStore::connect("postgres://postgres:hunter2@127.0.0.1:5432/no_such_database_here")
            .await
            .expect_err("no such database");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
    let err = PostgresStore::connect("postgres://postgres:hunter2@127.0.0.1:1/test")
        .await
        .expect_err("nothing listens on port 1");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// One completion goes through its own statement (scalar parameters, a cached plan):
/// it answers as the batch statement does, for the completion and for the claim.
#[tokio::test]
async fn one_completion_then_claim_answers_as_the_batch_statement_does() {
    let store = support::store(2).await;
    let long = Duration::from_secs(60);
    let (mine, theirs, next) = (
        unique_key("one-mine"),
        unique_key("one-theirs"),
        unique_key("one-next"),
    );
    for (key, owner) in [(&mine, "a"), (&theirs, "b")] {
        assert_eq!(
            store.try_claim(key, owner, long).await.expect("claim"),
            Claim::Acquired
        );
    }
    let completion = |key: &str| Completion {
        key: key.to_owned(),
        owner: "a".to_owned(),
        ttl: long,
        result: None,
    };
    // Repeated, so that the server's plan cache settles on its generic plan.
    for round in 0..8 {
        let key = format!("{next}:{round}");
        let (done, claim) = store
            .complete_then_claim(&[completion(&theirs)], &key, "a", long)
            .await
            .expect("not another's");
        assert_eq!(
            (done.ok(), claim),
            (Some(vec![false]), Claim::Acquired),
            "{round}"
        );
    }
    let (done, claim) = store
        .complete_then_claim(&[completion(&mine)], &theirs, "c", long)
        .await
        .expect("mine, then a live claim");
    assert_eq!((done.ok(), claim), (Some(vec![true]), Claim::InProgress));
    let (done, claim) = store
        .complete_then_claim(&[completion(&format!("{next}:0"))], &mine, "c", long)
        .await
        .expect("a completed key");
    assert_eq!((done.ok(), claim), (Some(vec![true]), Claim::Completed));
    let record = store.get(&mine).await.expect("get").expect("live");
    assert_eq!(
        (record.state, record.owner.as_deref()),
        (RecordState::Completed, Some("a"))
    );
    let record = store.get(&theirs).await.expect("get").expect("live");
    assert_eq!(
        (record.state, record.owner.as_deref()),
        (RecordState::Processing, Some("b"))
    );
}
