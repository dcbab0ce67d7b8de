//! The bounded background reaper of expired records: a sweep of the table's pages.
//!
//! No index says where expired records are (an index on `expires_at` would make every
//! completion, which moves `expires_at`, a non-HOT update that writes every index again).
//! The reaper reads the table instead, a range of pages per statement (a TID range scan,
//! [`SWEEP_PAGES`] pages), and deletes the expired records it finds there, at most a batch
//! per statement. A sweep of the whole table costs a read of it; one pass deletes every
//! record expired when the pass reached its page, however many, so the reaper keeps up
//! with any ingest its deletions keep up with.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::StoreError;
use sqlx::{AssertSqlSafe, Row};

use crate::PostgresStore;

/// The pages one reaping statement reads at most (32 MB of 8 kB pages).
pub(crate) const SWEEP_PAGES: i64 = 4_096;

/// Deletions since the last VACUUM that make a pass end with one: this many, or a tenth of
/// the table's rows if that is more (autovacuum's default waits for a fifth).
const VACUUM_AFTER: u64 = 10_000;

/// Where the reaper is, shared by a store's clones.
#[derive(Debug, Default)]
pub(crate) struct Reaping {
    /// The page the next sweep starts at.
    position: AtomicI64,
    /// Records deleted since the last VACUUM the reaper ran.
    since_vacuum: AtomicU64,
}

impl PostgresStore {
    /// Deletes up to `batch` expired records, sweeping the table's pages from where the
    /// last call (of any clone of this store) stopped: the call goes on page range after
    /// page range, wrapping around to the first page, until it has deleted `batch`
    /// records or read the whole table once. Returns how many it deleted. Rows another
    /// transaction holds are skipped, never waited for.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] (or [`StoreError::Timeout`] for a pool with no free
    /// connection) when a statement fails.
    pub async fn reap_expired(&self, batch: i64) -> Result<u64, StoreError> {
        let batch = batch.max(1);
        self.sweep(batch, u64::try_from(batch).unwrap_or(u64::MAX))
            .await
    }

    /// One pass of the reaper: reads the whole table once, from where the last sweep
    /// stopped, and deletes every expired record it finds, at most `batch` per statement
    /// (each statement also reads at most 4,096 pages, 32 MB, so it holds its row locks
    /// briefly). Then, once the passes have deleted a tenth of the table's rows (at least
    /// 10,000) since the last one, a `VACUUM (SKIP_LOCKED, TRUNCATE false)` of the table,
    /// if this role owns it: a deleted record's space is reused, and its index entry
    /// removed, only after a VACUUM, and autovacuum is off on some servers and waits for a
    /// fifth of the table on others. The VACUUM keeps the table's empty pages for the
    /// records to come (giving them back would take the table's exclusive lock). Returns
    /// how many records it deleted.
    ///
    /// # Errors
    ///
    /// As [`reap_expired`](Self::reap_expired); a failed VACUUM too.
    pub async fn reap_pass(&self, batch: i64) -> Result<u64, StoreError> {
        let deleted = self.sweep(batch.max(1), u64::MAX).await?;
        let since = self.reaping.since_vacuum.load(Ordering::Relaxed);
        if since >= VACUUM_AFTER {
            self.vacuum_if_due(since).await?;
        }
        Ok(deleted)
    }

    /// Runs the VACUUM when `since` deletions are a tenth of the table's rows (as the last
    /// VACUUM or ANALYZE counted them) and this role owns the table.
    async fn vacuum_if_due(&self, since: u64) -> Result<(), StoreError> {
        let (owner, rows): (bool, i64) =
            sqlx::query_as(AssertSqlSafe(Arc::clone(&self.sql.vacuum_due)))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.db_error("reading the records table's statistics", e))?;
        if !owner || since < u64::try_from(rows / 10).unwrap_or(0) {
            return Ok(());
        }
        sqlx::raw_sql(AssertSqlSafe(Arc::clone(&self.sql.vacuum)))
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("vacuuming the records table", e))?;
        self.reaping
            .since_vacuum
            .fetch_sub(since, Ordering::Relaxed);
        Ok(())
    }

    /// Sweeps from the shared position until `enough` records are deleted or every page has
    /// been read once, each statement deleting at most `batch`; leaves the position where
    /// it stopped.
    async fn sweep(&self, batch: i64, enough: u64) -> Result<u64, StoreError> {
        let pages: i64 = sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.pages)))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error("reading the records table's size", e))?;
        if pages <= 0 {
            return Ok(0);
        }
        let mut at = self.reaping.position.load(Ordering::Relaxed);
        if !(0..pages).contains(&at) {
            at = 0;
        }
        let (mut left, mut deleted) = (pages, 0u64);
        while left > 0 && deleted < enough {
            let limit = batch.min(i64::try_from(enough - deleted).unwrap_or(i64::MAX));
            let to = (at + SWEEP_PAGES.min(left)).min(pages);
            let (n, last) = self.reap_range(at, to, limit).await?;
            deleted += n;
            // A statement that stopped at its limit may have left expired records in its
            // last page and after it: the next one starts there.
            let next = match last {
                Some(page) if i64::try_from(n).unwrap_or(i64::MAX) >= limit => page.clamp(at, to),
                _ => to,
            };
            left -= next - at;
            at = if next >= pages { 0 } else { next };
        }
        self.reaping.position.store(at, Ordering::Relaxed);
        self.reaping
            .since_vacuum
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }

    /// One reaping statement over pages `from..to`: how many records it deleted, and the
    /// highest page it deleted in.
    async fn reap_range(
        &self,
        from: i64,
        to: i64,
        limit: i64,
    ) -> Result<(u64, Option<i64>), StoreError> {
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.reap)))
            .bind(from)
            .bind(to)
            .bind(limit)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.db_error("reaping expired records", e))?;
        let read = || -> Result<(i64, Option<i64>), sqlx::Error> {
            Ok((row.try_get("deleted")?, row.try_get("last_page")?))
        };
        let (deleted, last) = read().map_err(|e| self.db_error("reaping expired records", e))?;
        Ok((u64::try_from(deleted).unwrap_or(0), last))
    }

    /// Starts the background reaper: every `every`, one pass over the table
    /// ([`reap_pass`](Self::reap_pass)), deleting every expired record, at most `batch` per
    /// statement, and vacuuming the table when a tenth of it was deleted. Stops when the
    /// returned handle is dropped.
    pub fn spawn_reaper(&self, every: Duration, batch: i64) -> ReaperHandle {
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(err) = store.reap_pass(batch).await {
                    tracing::warn!(error = %err, "REAPER_FAILED: Deleting expired records failed; will retry");
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
