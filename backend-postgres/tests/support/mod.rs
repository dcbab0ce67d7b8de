//! The test database and a schema of its own for each test run.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use eventonce_postgres::{PostgresOptions, PostgresStore};

pub(crate) fn url() -> String {
    std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// This run's schema: `eventonce_test_<epoch seconds>_<pid>`. Schemas of runs older than an
/// hour are dropped by the first connection of a run.
pub(crate) fn schema() -> &'static str {
    static SCHEMA: OnceLock<String> = OnceLock::new();
    SCHEMA.get_or_init(|| format!("eventonce_test_{}_{}", epoch_secs(), std::process::id()))
}

/// A store on this run's schema, with a pool of `connections`.
pub(crate) async fn store(connections: u32) -> PostgresStore {
    let options = PostgresOptions::default()
        .schema(schema())
        .max_connections(connections);
    let store = PostgresStore::connect_with(&url(), options)
        .await
        .unwrap_or_else(|e| panic!("the tests need PostgreSQL at {}: {e}", url()));
    drop_old_schemas(&store).await;
    store
}

async fn drop_old_schemas(store: &PostgresStore) {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.set(()).is_err() {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'eventonce\\_test\\_%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default();
    let cutoff = epoch_secs().saturating_sub(3600);
    for name in names {
        let old = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|t| t < cutoff);
        if old {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA \"{name}\" CASCADE"
            )))
            .execute(store.pool())
            .await;
        }
    }
}
