//! sqlx errors as store errors, described without the connection string.

use std::borrow::Cow;
use std::time::Duration;

use eventonce_core::StoreError;

/// A sqlx error as a store error. `acquire_timeout` is the pool's: a pool that found no
/// connection in time says how long it waited.
pub(crate) fn db_error(context: &str, err: sqlx::Error, acquire_timeout: Duration) -> StoreError {
    match err {
        sqlx::Error::PoolTimedOut => StoreError::Timeout {
            operation: "acquire a connection",
            timeout: acquire_timeout,
        },
        err => StoreError::Unavailable {
            message: format!("{context}: {}", describe(&err)),
            source: Some(Box::new(err)),
        },
    }
}

/// Whether a claim statement failed because of another transaction rather than the
/// store: a row it holds for longer than the lock timeout (55P03 lock_not_available), or a
/// serialization failure (40001, only under a stricter isolation default than READ
/// COMMITTED). Nothing was claimed, so the claim answers `InProgress`: the caller retries.
pub(crate) fn is_conflict(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("55P03" | "40001")),
        _ => false,
    }
}

/// A description of a sqlx error that carries no connection string.
pub(crate) fn describe(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => format!(
            "database error {}: {}",
            db.code().unwrap_or(Cow::Borrowed("?")),
            db.message()
        ),
        sqlx::Error::Io(io) => format!("i/o error: {io}"),
        sqlx::Error::Tls(_) => "TLS error".into(),
        sqlx::Error::Protocol(p) => format!("protocol error: {p}"),
        sqlx::Error::PoolTimedOut => "timed out waiting for a pooled connection".into(),
        sqlx::Error::PoolClosed => "the pool is closed".into(),
        sqlx::Error::Configuration(_) => "invalid connection settings".into(),
        other => {
            format!("{:?}", std::mem::discriminant(other)).replace("Discriminant", "sqlx error ")
        }
    }
}
