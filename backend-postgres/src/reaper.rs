//! The bounded background reaper of expired records.

use std::sync::Arc;
use std::time::Duration;

use eventonce_core::StoreError;
use sqlx::AssertSqlSafe;

use crate::PostgresStore;

impl PostgresStore {
    /// Deletes up to `batch` expired records; returns how many it deleted.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] (or [`StoreError::Timeout`] for a pool with no free
    /// connection) when the statement fails.
    pub async fn reap_expired(&self, batch: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.reap)))
            .bind(batch)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("reaping expired records", e))?;
        Ok(done.rows_affected())
    }

    /// Starts the background reaper: every `every`, batches of `batch` expired records
    /// are deleted until none is left. Stops when the returned handle is dropped.
    pub fn spawn_reaper(&self, every: Duration, batch: i64) -> ReaperHandle {
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                loop {
                    match store.reap_expired(batch).await {
                        Ok(n) if n as i64 >= batch => continue,
                        Ok(_) => break,
                        Err(err) => {
                            tracing::warn!(error = %err, "REAPER_FAILED: Deleting expired records failed; will retry");
                            break;
                        }
                    }
                }
            }
        });
        ReaperHandle(task)
    }
}

/// Stops the reaper [`PostgresStore::spawn_reaper`] started when dropped.
#[derive(Debug)]
pub struct ReaperHandle(tokio::task::JoinHandle<()>);

impl Drop for ReaperHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}
