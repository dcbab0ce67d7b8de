//! The [`AdminStore`] implementation: operator access to the records.

use std::sync::Arc;

use async_trait::async_trait;
use eventonce_core::backend::check_arguments;
use eventonce_core::{AdminStore, ListedRecord, Record, RecordPage, RecordState, StoreError};
use sqlx::{AssertSqlSafe, Row};

use crate::store::record_from_row;
use crate::PostgresStore;

/// Operator access: pages in the order of the keys' digests (`ORDER BY digest LIMIT n`
/// after the cursor key's digest, a range scan of the digest index; each page scans at
/// most `limit` records, whatever the scope holds), removal of exactly the record seen,
/// row sizes by `pg_column_size` (the row's data, without index or page overhead).
#[async_trait]
impl AdminStore for PostgresStore {
    async fn list_page(
        &self,
        scope: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage, StoreError> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let query = match cursor {
            None => sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.list_first))),
            Some(_) => sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.list_after))),
        }
        .bind(scope)
        .bind(limit);
        let rows = match cursor {
            None => query,
            Some(after) => query.bind(after),
        }
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.db_error("PostgreSQL listing", e))?;
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
        let mut records = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let read = |row: &sqlx::postgres::PgRow| -> Result<_, sqlx::Error> {
                Ok((
                    row.try_get::<String, _>("key")?,
                    row.try_get::<bool, _>("shown")?,
                ))
            };
            let (key, shown) = read(row).map_err(|e| self.db_error("PostgreSQL listing", e))?;
            if shown {
                let record =
                    record_from_row(row).map_err(|e| self.db_error("PostgreSQL listing", e))?;
                records.push(ListedRecord {
                    key: key.clone(),
                    record,
                });
            }
            last = Some(key);
        }
        Ok(RecordPage {
            records,
            next: if full { last } else { None },
        })
    }

    async fn remove_if_unchanged(&self, key: &str, seen: &Record) -> Result<bool, StoreError> {
        let Some(owner) = seen.owner.as_deref() else {
            return Err(StoreError::InvalidArgument(format!(
                "{key} has no owner, so it is not an eventonce record; left untouched"
            )));
        };
        check_arguments(key, owner, None)?;
        let state = match seen.state {
            RecordState::Completed => "c",
            RecordState::Processing => "p",
        };
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.remove)))
            .bind(key)
            .bind(state)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn memory_usage(&self, keys: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(Arc::clone(&self.sql.sizes)))
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        let sizes: std::collections::HashMap<String, i64> = rows.into_iter().collect();
        Ok(keys
            .iter()
            .map(|k| sizes.get(k).and_then(|&n| u64::try_from(n).ok()))
            .collect())
    }

    fn memory_measure(&self) -> &'static str {
        "pg_column_size"
    }
}
