//! A PostgreSQL role limited to its own schema runs the store, migrations included, and
//! cannot reach anything else.

mod support;

use std::time::Duration;

use eventonce_core::conformance::unique_key;
use eventonce_core::{Claim, IdempotencyStore};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use sqlx::AssertSqlSafe;

#[tokio::test]
async fn a_role_limited_to_its_schema_works_and_reaches_nothing_else() {
    let admin = support::store(2).await;
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let role = format!("eventonce_app_{suffix}");
    let schema = format!("eventonce_test_role_{suffix}");
    let other = format!("\"{}\".\"off_limits\"", support::schema());
    for sql in [
        format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'role-pw-123' NOSUPERUSER NOCREATEDB NOCREATEROLE"
        ),
        format!("CREATE SCHEMA \"{schema}\" AUTHORIZATION {role}"),
        format!("REVOKE ALL ON DATABASE test FROM {role}"),
        format!("GRANT CONNECT ON DATABASE test TO {role}"),
        format!("CREATE TABLE IF NOT EXISTS {other} (secret text)"),
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(admin.pool())
            .await
            .expect("setup");
    }
    let url = format!("postgres://{role}:role-pw-123@127.0.0.1:5432/test");
    let store = PostgresStore::connect_with(
        &url,
        PostgresOptions::default()
            .schema(schema.clone())
            .max_connections(2),
    )
    .await
    .expect("the limited role connects and migrates its own schema");
    let key = unique_key("role");
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.try_claim(&key, "o", lease).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.complete(&key, "o", lease).await.expect("complete"));
    assert_eq!(
        store.try_claim(&key, "p", lease).await.expect("claim"),
        Claim::Completed
    );
    assert!(store.reap_expired(10).await.is_ok());

    let denied = sqlx::query(AssertSqlSafe(format!("SELECT * FROM {other}")))
        .execute(store.pool())
        .await
        .expect_err("another schema is off limits");
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    let elsewhere =
        PostgresStore::connect_with(&url, PostgresOptions::default().schema(support::schema()))
            .await
            .expect_err("it cannot create its table in a schema it does not own");
    assert!(!format!("{elsewhere} {elsewhere:?}").contains("role-pw-123"));

    drop(store);
    for sql in [
        format!("DROP SCHEMA \"{schema}\" CASCADE"),
        format!("DROP OWNED BY {role}"),
        format!("DROP ROLE {role}"),
    ] {
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(admin.pool()).await;
    }
}

/// The grants docs/operations.md names: USAGE on the schema and SELECT, INSERT, UPDATE,
/// DELETE on the records table run the store (`connect_existing`); the migration needs more
/// (CREATE), so `connect_with` is refused.
#[tokio::test]
async fn usage_and_the_four_table_grants_run_the_store_and_the_migration_needs_create() {
    use eventonce_core::AdminStore;
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let role = format!("eventonce_dml_{suffix}");
    let schema = format!("eventonce_test_grants_{suffix}");
    // The owner migrates; the application role only gets the documented grants.
    let owner = PostgresStore::connect_with(
        &support::url(),
        PostgresOptions::default().schema(schema.clone()),
    )
    .await
    .expect("the owner migrates");
    for sql in [
        format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"),
        format!("REVOKE ALL ON DATABASE test FROM {role}"),
        format!("GRANT CONNECT ON DATABASE test TO {role}"),
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {role}"),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON \"{schema}\".\"eventonce_records\" TO {role}"
        ),
    ] {
        sqlx::query(AssertSqlSafe(sql))
            .execute(owner.pool())
            .await
            .expect("setup");
    }
    let url = format!("postgres://{role}@127.0.0.1:5432/test");
    let options = PostgresOptions::default()
        .schema(schema.clone())
        .max_connections(2);
    let store = PostgresStore::connect_existing(&url, options.clone())
        .await
        .expect("the four grants are enough to connect");
    let key = unique_key("grants");
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.try_claim(&key, "o", lease).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.extend(&key, "o", lease).await.expect("extend"));
    assert!(store.complete(&key, "o", lease).await.expect("complete"));
    assert!(store.get(&key).await.expect("get").is_some());
    let other = unique_key("grants");
    store.try_claim(&other, "o", lease).await.expect("claim");
    assert!(store.release(&other, "o").await.expect("release"));
    assert!(store.reap_expired(10).await.is_ok());
    let page = store.list_page("", None, 10).await.expect("list");
    assert_eq!(page.records.len(), 1);
    store.memory_usage(&[key]).await.expect("sizes");

    let migration = PostgresStore::connect_with(&url, options)
        .await
        .expect_err("the migration needs CREATE");
    assert!(
        migration.to_string().contains("permission denied"),
        "{migration}"
    );

    drop(store);
    for sql in [
        format!("DROP SCHEMA \"{schema}\" CASCADE"),
        format!("DROP OWNED BY {role}"),
        format!("DROP ROLE {role}"),
    ] {
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(owner.pool()).await;
    }
}
