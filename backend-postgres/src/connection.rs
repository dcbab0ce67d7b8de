//! The store itself: connecting (the first connection opened by itself so a failure says
//! why), an application's own pool, and the migration that creates the records table.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::backend::{password_of, redact_unparsable_url, redact_url, unescaped_password};
use eventonce_core::StoreError;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, SqlSafeStr};

use crate::error::{db_error, describe};
use crate::options::PostgresOptions;
use crate::sql::Statements;

/// The migration that creates the records table, with `{schema}`, `{table}` and
/// `{table_unquoted}` placeholders.
const MIGRATION_0001: &str = include_str!("../migrations/0001_create_records.sql");

/// A PostgreSQL idempotency store. Cheap to clone: clones share the pool.
///
/// ```no_run
/// # mod eventonce { pub use eventonce_core::*; pub mod postgres { pub use eventonce_postgres::*; } }
/// use eventonce::{EventEnvelope, Guard, IdempotencyConfig};
/// use eventonce::postgres::PostgresStore;
/// # async fn run(envelope: EventEnvelope) -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://app@127.0.0.1/app").await?;
/// let guard = Guard::new(store.clone(), IdempotencyConfig::builder("billing").build()?);
/// // Exactly once: the handler's insert and the completed record commit together.
/// let outcome = guard
///     .run_in_transaction(&store, &envelope, |mut tx| async {
///         let inserted = sqlx::query("INSERT INTO invoices (id) VALUES ($1)")
///             .bind(envelope.event_id.clone())
///             .execute(&mut *tx)
///             .await;
///         (tx, inserted)
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) pool: PgPool,
    pub(crate) sql: Arc<Statements>,
    pub(crate) options: PostgresOptions,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.options.schema)
            .field("table", &self.options.table)
            .finish()
    }
}

impl PostgresStore {
    /// Connects with the default options and runs the migration.
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options` and runs the migration.
    ///
    /// The first connection is opened by itself, within `options.acquire_timeout`, so that
    /// a failure says what was tried (the URL, password masked), what happened and what to
    /// check: connection refused (at once), no answer, not a PostgreSQL server, a refusal
    /// by the server (password, database, `pg_hba.conf`), TLS, an invalid URL.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidArgument`] for a schema or table name that is not lowercase
    /// letters, digits and `_`; [`StoreError::Unavailable`] when the URL is invalid, the
    /// first connection fails (the message says why) or the migration fails.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let store = Self::connect_existing(url, options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects with `options` without running the migration: for tools that only read
    /// (or remove) records in an existing table, such as the `eventonce` admin commands.
    /// Failures are told as [`connect_with`](Self::connect_with) tells them.
    ///
    /// ```no_run
    /// # mod eventonce { pub use eventonce_core::*; pub mod postgres { pub use eventonce_postgres::*; } }
    /// use eventonce::AdminStore;
    /// use eventonce::postgres::{PostgresOptions, PostgresStore};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PostgresStore::connect_existing(
    ///     "postgres://ops@127.0.0.1/app",
    ///     PostgresOptions::default().schema("idempotency"),
    /// )
    /// .await?;
    /// let page = store.list_page("huleedu:idempotency:v2:billing:", None, 100).await?;
    /// println!("{} records on the first page", page.records.len());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`connect_with`](Self::connect_with), but for the migration.
    pub async fn connect_existing(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        // The names first: a bad one needs no connection to be refused.
        Self::check_names(&options)?;
        let connect_options = first_connection(url, options.acquire_timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect_options);
        Self::from_pool_with(pool, options)
    }

    /// Uses a pool the application already has, with the default table. Call
    /// [`migrate`](Self::migrate) once to create the table.
    pub fn from_pool(pool: PgPool) -> Self {
        // The default names are valid.
        Self::from_pool_unchecked(pool, PostgresOptions::default())
    }

    /// Uses a pool the application already has, with `options`' schema and table.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidArgument`] for a schema or table name that is not lowercase
    /// letters, digits and `_` (at most 52).
    pub fn from_pool_with(pool: PgPool, options: PostgresOptions) -> Result<Self, StoreError> {
        Self::check_names(&options)?;
        Ok(Self::from_pool_unchecked(pool, options))
    }

    fn check_names(options: &PostgresOptions) -> Result<(), StoreError> {
        for (what, name) in [("schema", &options.schema), ("table", &options.table)] {
            if !valid_identifier(name) {
                return Err(StoreError::InvalidArgument(format!(
                    "{what} name {name:?} must be lowercase letters, digits and '_' (at most 52)"
                )));
            }
        }
        Ok(())
    }

    /// A sqlx error of this store's pool as a store error.
    pub(crate) fn db_error(&self, context: &str, err: sqlx::Error) -> StoreError {
        db_error(context, err, self.pool.options().get_acquire_timeout())
    }

    fn from_pool_unchecked(pool: PgPool, options: PostgresOptions) -> Self {
        let table = format!("\"{}\".\"{}\"", options.schema, options.table);
        PostgresStore {
            pool,
            sql: Arc::new(Statements::new(&table, options.lock_wait)),
            options,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The quoted, schema-qualified table name.
    pub fn table(&self) -> String {
        format!("\"{}\".\"{}\"", self.options.schema, self.options.table)
    }

    /// Creates the schema and the records table if they are missing (sqlx migrations,
    /// tracked in `{schema}.{table}_migrations`). Safe to run concurrently and again.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the database cannot be reached or the migration
    /// fails (a role without the right to create the schema or the table, for one).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let schema = format!("\"{}\"", self.options.schema);
        let sql = MIGRATION_0001
            .replace("{schema}", &schema)
            .replace("{table_unquoted}", &self.options.table)
            .replace("{table}", &format!("\"{}\"", self.options.table));
        let migration = Migration::new(
            1,
            Cow::Borrowed("create records table"),
            MigrationType::Simple,
            AssertSqlSafe(sql).into_sql_str(),
            false,
        );
        let mut migrator = Migrator::with_migrations(vec![migration]);
        // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
        // exists: ask for it only when it is missing, so a role that owns just its schema
        // can migrate.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.options.schema)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.db_error("checking the schema", e))?;
        if !exists {
            migrator.create_schema(schema.clone());
        }
        // One migrations table per records table: two record tables in one schema must not
        // share their migration history.
        migrator
            .dangerous_set_table_name(format!("{schema}.\"{}_migrations\"", self.options.table));
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable {
                message: format!("migration failed: {e}"),
                source: Some(Box::new(e)),
            })
    }
}

/// Checks a schema or table name: lowercase letters, digits and `_`, starting with a
/// letter or `_`, at most 52 bytes (room for the `_migrations` suffix in PostgreSQL's 63).
/// The names are also quoted in every statement.
fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 52
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// The form of a PostgreSQL URL, for messages about one.
const URL_FORM: &str =
    "expected postgres://[user[:password]@]host[:port]/database[?sslmode=disable|prefer|require]";

/// Reads `url` as PostgreSQL connection options, or says what is wrong with it: the
/// parser's complaint, a scheme that is not PostgreSQL's (a Redis URL, for one), or an
/// invalid setting.
fn parse_url(url: &str) -> Result<PgConnectOptions, String> {
    if let Some(why) = unescaped_password(url) {
        return Err(format!("{why}; {URL_FORM}"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("{e}; {URL_FORM}"))?;
    match parsed.scheme() {
        "postgres" | "postgresql" => {}
        scheme @ ("redis" | "rediss" | "valkey" | "valkeys") => {
            return Err(format!(
                "the scheme {scheme}:// is Redis', not PostgreSQL's; {URL_FORM}"
            ))
        }
        scheme => {
            return Err(format!(
                "the scheme {scheme}:// is not PostgreSQL's; {URL_FORM}"
            ))
        }
    }
    PgConnectOptions::from_str(url).map_err(|e| match e {
        sqlx::Error::Configuration(why) => format!("{why}; {URL_FORM}"),
        other => describe(&other),
    })
}

/// The passwords in `url` (the user information's and a `password` parameter's), raw
/// and decoded, to mask in messages.
fn passwords_of(url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        // The parser's split cannot be trusted; the user information's password as
        // written, up to its last `@`, is masked (and the URL shown without it).
        return password_of(url).map(str::to_owned).into_iter().collect();
    };
    let mut found: Vec<String> = parsed.password().map(str::to_owned).into_iter().collect();
    found.extend(
        parsed
            .query_pairs()
            .filter(|(k, _)| k.to_ascii_lowercase().contains("password"))
            .map(|(_, v)| v.into_owned()),
    );
    let decoded: Vec<String> = found
        .iter()
        .filter_map(|p| {
            url::form_urlencoded::parse(format!("p={p}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        })
        .collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    found
}

/// `message` with every password of the URL masked.
fn scrub(mut message: String, passwords: &[String]) -> String {
    for p in passwords {
        message = message.replace(p.as_str(), "***");
    }
    message
}

/// Why the first connection failed, in words, and what to check.
fn explain_connect(err: &sqlx::Error, address: &str) -> String {
    use std::io::ErrorKind;
    match err {
        sqlx::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => format!(
            "connection refused: nothing listens on {address}; check that PostgreSQL is running there and that the host and port are right"
        ),
        sqlx::Error::Io(io) if io.kind() == ErrorKind::NotFound => format!(
            "no socket at {address} ({io}); check that PostgreSQL is running and the socket directory"
        ),
        sqlx::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::UnexpectedEof
                    | ErrorKind::ConnectionReset
                    | ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::InvalidData
            ) =>
        {
            format!(
                "not a PostgreSQL server: {address} answered in another protocol, or closed the connection (i/o error: {io}); is this the right port?"
            )
        }
        sqlx::Error::Protocol(p) => format!(
            "not a PostgreSQL server: {address} answered in another protocol ({p}); is this the right port?"
        ),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or(Cow::Borrowed("?"));
            let hint = match code.as_ref() {
                "28P01" => "; check the user and password in the URL",
                "28000" => "; check the user, and that the server's pg_hba.conf lets it in from here",
                "3D000" => "; check the database name (the URL's path)",
                "57P03" => "; the server is starting or stopping: try again shortly",
                "53300" => "; the server has no connection left: lower max_connections somewhere",
                _ => "",
            };
            format!(
                "the server refused the connection: {} (SQLSTATE {code}){hint}",
                db.message()
            )
        }
        sqlx::Error::Tls(tls) => {
            let text = tls.to_string();
            if text.contains("without TLS support") {
                "the URL requires TLS (sslmode=require, verify-ca or verify-full), but this build of eventonce-postgres has no TLS support; connect without TLS (sslmode=disable or prefer) or through a TLS tunnel".to_owned()
            } else if text.contains("does not support TLS") {
                format!(
                    "the URL requires TLS (sslmode=require, verify-ca or verify-full), but the server at {address} does not offer it ({text}); enable ssl on the server or change sslmode"
                )
            } else {
                format!(
                    "TLS handshake failed ({text}); check the server's certificate and the URL's sslmode and sslrootcert"
                )
            }
        }
        sqlx::Error::Configuration(why) => format!("invalid connection settings: {why}"),
        other => describe(other),
    }
}

/// Why a session cannot hold records, if so: it is read-only (`transaction_read_only`),
/// on a standby or by `default_transaction_read_only` (of the role, the database, or the
/// URL's `options`), so every claim would fail and each event run unprotected. A server
/// that does not answer these is left to the first call.
async fn read_only(conn: &mut PgConnection) -> Result<Option<&'static str>, sqlx::Error> {
    let value: String = sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(&mut *conn)
        .await?;
    if value != "on" {
        return Ok(None);
    }
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(if standby {
        "the server is a standby (a read-only replica): every claim would fail; point the URL at the primary"
    } else {
        "the session is read-only (transaction_read_only is on, from default_transaction_read_only of the role, the database or the URL's options): every claim would fail; connect as a role, or to a database, that can write"
    }))
}

/// Opens one connection by itself, bounded by `timeout`, so that the cause of a failure is
/// reported: the pool retries a refused connection until its acquire timeout and then
/// reports only that timeout. Returns the options to open the pool with.
async fn first_connection(url: &str, timeout: Duration) -> Result<PgConnectOptions, StoreError> {
    let target = redact_url(url);
    let passwords = passwords_of(url);
    let connect_options = parse_url(url).map_err(|why| StoreError::Unavailable {
        message: scrub(
            format!(
                "invalid PostgreSQL URL {}: {why}",
                redact_unparsable_url(url)
            ),
            &passwords,
        ),
        source: None,
    })?;
    let address = match connect_options.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{}", dir.display(), connect_options.get_port()),
        None => format!(
            "{}:{}",
            connect_options.get_host(),
            connect_options.get_port()
        ),
    };
    let (why, source): (String, Option<eventonce_core::BoxError>) =
        match tokio::time::timeout(timeout, PgConnection::connect_with(&connect_options)).await {
            Ok(Ok(mut conn)) => {
                let read_only = tokio::time::timeout(timeout, read_only(&mut conn)).await;
                // Terminate politely; a server that hangs now is the pool's concern.
                let _ = tokio::time::timeout(timeout, conn.close()).await;
                return match read_only {
                    Ok(Ok(Some(why))) => Err(StoreError::Unavailable {
                        message: format!("refusing PostgreSQL at {target}: {why}"),
                        source: None,
                    }),
                    _ => Ok(connect_options),
                };
            }
            Ok(Err(err)) => {
                let why = explain_connect(&err, &address);
                let source = scrub(err.to_string(), &passwords);
                (why, Some(source.into()))
            }
            Err(_) => (
                format!(
                    "no answer within {timeout:?} (the connection was not accepted, or nothing answered on it); check the host and port, and that {address} is a PostgreSQL server"
                ),
                None,
            ),
        };
    Err(StoreError::Unavailable {
        message: scrub(
            format!("cannot connect to PostgreSQL at {target}: {why}"),
            &passwords,
        ),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        for ok in ["public", "eventonce_records", "_x1"] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Upper",
            "a-b",
            "a\"b",
            "a;drop",
            &"x".repeat(53),
        ] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }
}
