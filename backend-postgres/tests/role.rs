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
