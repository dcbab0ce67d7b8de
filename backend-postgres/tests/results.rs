//! Stored results on PostgreSQL: a table created by the first migration (before results)
//! is upgraded in place, its records kept and answered as plain duplicates.

mod support;

use std::borrow::Cow;
use std::time::Duration;

use eventonce_core::{
    Claim, Guard, IdempotencyConfig, IdempotencyStore, Identity, RecordState, StoredOutcome,
};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr};

const LEASE: Duration = Duration::from_secs(60);

/// Creates `schema.table` as the version before stored results did: its one migration,
/// tracked in the same migrations table, and one completed record of that version.
async fn old_table(pool: &sqlx::PgPool, schema: &str, table: &str) {
    let sql = include_str!("../migrations/0001_create_records.sql")
        .replace("{schema}", &format!("\"{schema}\""))
        .replace("{table_unquoted}", table)
        .replace("{table}", &format!("\"{table}\""));
    let first = Migration::new(
        1,
        Cow::Borrowed("create records table"),
        MigrationType::Simple,
        AssertSqlSafe(sql).into_sql_str(),
        false,
    );
    let mut migrator = Migrator::with_migrations(vec![first]);
    migrator.create_schema(format!("\"{schema}\""));
    migrator.dangerous_set_table_name(format!("\"{schema}\".\"{table}_migrations\""));
    migrator.run(pool).await.expect("the first migration");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".\"{table}\" (key, state, owner, expires_at)
         VALUES ('old-key', 'completed', 'old-owner', now() + interval '1 hour')"
    )))
    .execute(pool)
    .await
    .expect("an old record");
}

#[tokio::test]
async fn a_table_of_the_previous_version_is_upgraded_in_place() {
    let schema = format!("{}_upgrade", support::schema());
    let table = "records_before_results";
    let pool = sqlx::PgPool::connect(&support::url())
        .await
        .expect("connect");
    old_table(&pool, &schema, table).await;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(&schema)
    .bind(table)
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert!(!columns.contains(&"result".to_owned()), "{columns:?}");

    let options = PostgresOptions::default().schema(&schema).table(table);
    let store = PostgresStore::connect_with(&support::url(), options)
        .await
        .expect("connect and migrate");
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(&schema)
    .bind(table)
    .fetch_all(&pool)
    .await
    .expect("columns");
    assert!(
        columns
            .windows(2)
            .any(|w| w == ["result".to_owned(), "result_owner".to_owned()]),
        "{columns:?}"
    );
    let (record, result) = store
        .get_with_result("old-key")
        .await
        .expect("get_with_result")
        .expect("the old record survives the upgrade");
    assert_eq!((record.state, result), (RecordState::Completed, None));
    assert_eq!(
        store
            .try_claim("old-key", "new", LEASE)
            .await
            .expect("claim"),
        Claim::Completed
    );
    // Again: the migration is recorded, running it twice changes nothing.
    store.migrate().await.expect("migrate again");

    let config = IdempotencyConfig::builder("pg-results")
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config);
    let event = Identity::new("orders.placed.v1", "order-1");
    let first = guard
        .run_stored(&event, async { Ok::<_, std::io::Error>(vec![1u32, 2]) })
        .await
        .expect("run_stored");
    assert_eq!(first, StoredOutcome::Processed(vec![1, 2]));
    let again = guard
        .run_stored(&event, async { Ok::<_, std::io::Error>(vec![9u32]) })
        .await
        .expect("run_stored");
    assert_eq!(again, StoredOutcome::Replayed(vec![1, 2]));
    let _ = sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&pool)
        .await;
}

/// A result left on a row that expired and was claimed again is never answered for the
/// new record: a plain completion of the new claim has no result.
#[tokio::test]
async fn a_result_of_an_expired_record_is_not_answered_for_the_next() {
    let store = support::store(2).await;
    let key = eventonce_core::conformance::unique_key("pg-result-expired");
    assert_eq!(
        store.try_claim(&key, "a", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete_with_result(&key, "a", Duration::from_millis(200), b"first")
        .await
        .expect("complete_with_result"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.try_claim(&key, "b", LEASE).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.complete(&key, "b", LEASE).await.expect("complete"));
    let (record, result) = store
        .get_with_result(&key)
        .await
        .expect("get_with_result")
        .expect("record");
    assert_eq!(record.owner.as_deref(), Some("b"));
    assert_eq!(
        result, None,
        "the first record's result leaked into the second"
    );
}
