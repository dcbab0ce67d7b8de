//! The [`TransactionalStore`] implementation: the claim and the completion in the
//! handler's own transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventonce_core::backend::check_arguments;
use eventonce_core::{Claim, StoreError, TransactionalStore};
use sqlx::{AssertSqlSafe, Postgres, Transaction};

use crate::error::is_conflict;
use crate::store::{claim_from_code, millis};
use crate::PostgresStore;

/// The transaction a handler gets (and hands back) in `Guard::run_in_transaction`.
pub type PgTx = Transaction<'static, Postgres>;

#[async_trait]
impl TransactionalStore for PostgresStore {
    type Tx = PgTx;

    async fn begin(&self) -> Result<Self::Tx, StoreError> {
        // READ COMMITTED whatever the server's, database's or role's default: the claim
        // relies on it (under REPEATABLE READ or SERIALIZABLE, a claim meeting a record
        // committed after its snapshot fails with a serialization error).
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| self.db_error("PostgreSQL begin", e))
    }

    async fn claim_in(
        &self,
        tx: &mut Self::Tx,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        let code: Option<i32> =
            match sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.claim_tx)))
                .bind(key)
                .bind(owner)
                .bind(millis(lease))
                .fetch_one(&mut **tx)
                .await
            {
                Ok(code) => code,
                // Another transaction holds the record: in progress. The failed statement
                // aborted this transaction, which the caller rolls back (as for any answer
                // but `Acquired`).
                Err(err) if is_conflict(&err) => return Ok(Claim::InProgress),
                Err(err) => return Err(self.db_error("PostgreSQL", err)),
            };
        if code.is_some() {
            return claim_from_code(key, code);
        }
        // The claim waited for another transaction holding the record; read what it left
        // (a new statement sees what committed meanwhile).
        let code: Option<i32> = sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.state)))
            .bind(key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        claim_from_code(key, code.or(Some(2)))
    }

    async fn complete_in(
        &self,
        tx: &mut Self::Tx,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete)))
            .bind(key)
            .bind(owner)
            .bind(millis(ttl))
            .execute(&mut **tx)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit()
            .await
            .map_err(|e| self.db_error("PostgreSQL commit", e))
    }

    async fn rollback(&self, tx: Self::Tx) -> Result<(), StoreError> {
        tx.rollback()
            .await
            .map_err(|e| self.db_error("PostgreSQL rollback", e))
    }
}
