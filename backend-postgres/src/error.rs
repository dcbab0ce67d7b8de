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
        err if is_data_error(&err) => StoreError::Rejected {
            message: format!("{context}: {}", describe(&err)),
            source: Some(Box::new(err)),
        },
        err => StoreError::Unavailable {
            message: format!("{context}: {}", describe(&err)),
            source: Some(Box::new(err)),
        },
    }
}

/// Whether the database refused a statement for the data it was given, not for its own
/// health: SQLSTATE class 22 (data exception: a value too long, a character it cannot
/// store, ...) and class 54 (program limit exceeded: an index row over the B-tree limit,
/// as a key over about 2,700 bytes). The same data meets the same refusal again, so it is
/// the event's error, never an outage. Everything else (connection errors, class 08;
/// insufficient resources, 53; operator intervention, 57; system errors, 58 and XX; a
/// read-only transaction, 25006; missing privileges or tables, 42) stays an outage: it
/// concerns every event.
pub(crate) fn is_data_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
        _ => false,
    }
}

/// Whether a claim statement failed because of another transaction rather than the
/// store: a row it holds for longer than the lock timeout (55P03 lock_not_available), a
/// serialization failure (40001, only under a stricter isolation default than READ
/// COMMITTED), or a statement cancelled by a `statement_timeout` shorter than the lock
/// wait (57014 query_canceled: the claim's wait for the row is its only wait that long).
/// Nothing was claimed, so the claim answers `InProgress`: the caller retries, and the
/// handler never runs unprotected because of another consumer's transaction.
pub(crate) fn is_conflict(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("55P03" | "40001" | "57014"))
        }
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
