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
use crate::reaper::Reaping;
use crate::sql::Statements;

/// The migration that creates the records table, with `{schema}`, `{table}` and
/// `{table_unquoted}` placeholders.
const MIGRATION_0001: &str = include_str!("../migrations/0001_create_records.sql");
/// The migration that adds the stored result's columns to a table created by the first.
const MIGRATION_0002: &str = include_str!("../migrations/0002_add_result.sql");
/// The migration to the compact layout: the state in one byte, a unique index on the key's
/// digest instead of the text key, no index on `expires_at`, room in each page for HOT
/// updates.
const MIGRATION_0003: &str = include_str!("../migrations/0003_compact_records.sql");

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
    /// Where the reaper is, shared by clones.
    pub(crate) reaping: Arc<Reaping>,
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
    /// check: connection refused (at once), no answer, not a PostgreSQL server (a Redis
    /// server is recognised by a `PING` probe once the port has been silent for 250 ms), a
    /// refusal by the server (password, database, `pg_hba.conf`), TLS (which certificate
    /// check failed), an invalid URL.
    ///
    /// TLS (the `tls` feature) follows the URL's `sslmode`: `require` encrypts without
    /// checking the certificate, `verify-ca` checks that a trusted authority signed it,
    /// `verify-full` also that it names the URL's host. The trusted authorities are the
    /// system's roots and the URL's `sslrootcert=FILE` or
    /// [`PostgresOptions::tls_root_cert`].
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
        let connect_options = first_connection(url, &options).await?;
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
            reaping: Arc::new(Reaping::default()),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The claim and the completion statements this store sends for one event (`$1` the
    /// key, `$2` the owner token, `$3` the lease or the TTL in milliseconds as `float8`),
    /// for benchmarks that send the same statements without the guard. Not a stable API.
    #[doc(hidden)]
    pub fn claim_and_complete_statements(&self) -> (Arc<str>, Arc<str>) {
        (Arc::clone(&self.sql.claim), Arc::clone(&self.sql.complete))
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
        let fill = |sql: &str| {
            sql.replace("{schema}", &schema)
                .replace("{table_unquoted}", &self.options.table)
                .replace("{table}", &format!("\"{}\"", self.options.table))
        };
        let migration = |version, description, sql: String| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        };
        let migrations = vec![
            migration(1, "create records table", fill(MIGRATION_0001)),
            migration(2, "add stored results", fill(MIGRATION_0002)),
            migration(3, "compact records", fill(MIGRATION_0003)),
        ];
        let mut migrator = Migrator::with_migrations(migrations);
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
const URL_FORM: &str = "expected postgres://[user[:password]@]host[:port]/database[?sslmode=disable|prefer|require|verify-ca|verify-full[&sslrootcert=FILE]]";

/// Reads `url` as PostgreSQL connection options, or says what is wrong with it: the
/// parser's complaint, a scheme that is not PostgreSQL's (a Redis URL, for one), or an
/// invalid setting.
fn parse_url(url: &str) -> Result<PgConnectOptions, String> {
    // `localhost:5432/app` reads as the scheme `localhost`, `127.0.0.1:5432/app` as
    // nothing: a URL typed without its scheme (a PostgreSQL URL always has `://`).
    if !url.contains("://") && !url.is_empty() && !url.contains(char::is_whitespace) {
        return Err(format!(
            "no scheme (did you mean `postgres://{}`?); {URL_FORM}",
            shown_url(url)
        ));
    }
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
    check_root_cert_file(&parsed)?;
    PgConnectOptions::from_str(url).map_err(|e| match e {
        sqlx::Error::Configuration(why) => format!("{why}; {URL_FORM}"),
        other => describe(&other),
    })
}

/// A certificate authority file named in the URL (`sslrootcert=`, as sqlx also reads
/// `ssl-root-cert=` and `ssl-ca=`) that cannot be read, said before connecting: the
/// handshake would report only an i/o error.
fn check_root_cert_file(url: &url::Url) -> Result<(), String> {
    for (name, value) in url.query_pairs() {
        if matches!(name.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca")
            && !value.trim_start().starts_with("-----BEGIN")
        {
            if let Err(e) = std::fs::metadata(value.as_ref()) {
                return Err(format!(
                    "the certificate authority file {name}={value} cannot be read ({e}); give the path of a PEM file"
                ));
            }
        }
    }
    Ok(())
}

/// `parsed` trusting `options`' certificate authority, if it names one.
#[cfg(feature = "tls")]
fn with_root_cert(
    parsed: PgConnectOptions,
    options: &PostgresOptions,
) -> Result<PgConnectOptions, String> {
    Ok(match &options.tls_root_cert {
        Some(pem) => parsed.ssl_root_cert_from_pem(pem.clone()),
        None => parsed,
    })
}

/// Without TLS support a certificate authority cannot be used: say so rather than ignore it.
#[cfg(not(feature = "tls"))]
fn with_root_cert(
    parsed: PgConnectOptions,
    options: &PostgresOptions,
) -> Result<PgConnectOptions, String> {
    match options.tls_root_cert {
        Some(_) => Err("PostgresOptions::tls_root_cert needs TLS support, which this build of eventonce-postgres lacks (its `tls` feature; `postgres-tls` of eventonce)".to_owned()),
        None => Ok(parsed),
    }
}

/// `url` as typed, for messages, its password masked: also when it has no scheme, which
/// [`redact_url`] cannot read.
fn shown_url(url: &str) -> String {
    if url.contains("://") {
        // A refused URL is shown without its user information at all.
        return redact_unparsable_url(url);
    }
    let shown = redact_url(&format!("postgres://{url}"));
    shown
        .strip_prefix("postgres://")
        .map_or(shown.clone(), str::to_owned)
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
    if let Some(why) = explain_tls(err, address) {
        return why;
    }
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
                "the URL requires TLS (sslmode=require, verify-ca or verify-full), but this build of eventonce-postgres has no TLS support; build with the `postgres-tls` feature of eventonce (`tls` of eventonce-postgres), or connect without TLS (sslmode=disable or prefer)".to_owned()
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

/// A TLS handshake that rustls refused, in words: which check the server's certificate
/// failed and what to change. The handshake's error comes as an i/o error wrapping
/// rustls' own.
#[cfg(feature = "tls")]
fn explain_tls(err: &sqlx::Error, address: &str) -> Option<String> {
    use rustls::CertificateError as Cert;
    let sqlx::Error::Io(io) = err else {
        return None;
    };
    let tls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let why = match tls {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => format!(
            "the server's certificate is not signed by a trusted authority ({tls}); give the authority that signed it (sslrootcert=FILE in the URL, or PostgresOptions::tls_root_cert), or sslmode=require to encrypt without checking the certificate"
        ),
        rustls::Error::InvalidCertificate(
            Cert::NotValidForName | Cert::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for the host {host} ({tls}); connect by a name the certificate holds, or use sslmode=verify-ca to check the authority but not the name"
        ),
        rustls::Error::InvalidCertificate(
            Cert::Expired
            | Cert::ExpiredContext { .. }
            | Cert::NotValidYet
            | Cert::NotValidYetContext { .. },
        ) => format!(
            "the server's certificate is outside its validity period ({tls}); renew it, or check this machine's clock"
        ),
        other => format!(
            "{other}; check the server's certificate and the URL's sslmode and sslrootcert"
        ),
    };
    Some(format!("TLS handshake failed: {why}"))
}

/// Without TLS support no handshake is made.
#[cfg(not(feature = "tls"))]
fn explain_tls(_err: &sqlx::Error, _address: &str) -> Option<String> {
    None
}

/// What the first connection came to.
enum FirstConnection {
    Connected(PgConnection),
    Failed(sqlx::Error),
    /// A Redis server answered the probe with this line.
    Redis(String),
    NoAnswer,
}

/// Opens the first connection within `timeout`. When the server has not answered after
/// [`PROBE_AFTER`](crate::probe::PROBE_AFTER), the port is probed alongside: a Redis
/// server there (which would wait out the timeout) is recognised at once.
async fn connect_or_recognise(options: &PgConnectOptions, timeout: Duration) -> FirstConnection {
    use futures_util::future::{select, Either};
    let connect = std::pin::pin!(tokio::time::timeout(
        timeout,
        PgConnection::connect_with(options)
    ));
    let tcp = options.get_socket().is_none();
    let probe = std::pin::pin!(async {
        tokio::time::sleep(crate::probe::PROBE_AFTER).await;
        if tcp {
            crate::probe::redis_answer(options.get_host(), options.get_port()).await
        } else {
            None
        }
    });
    let probed = match select(connect, probe).await {
        Either::Left((connected, _)) => return first_result(connected),
        Either::Right((Some(answer), _)) => return FirstConnection::Redis(answer),
        Either::Right((None, connect)) => connect,
    };
    first_result(probed.await)
}

fn first_result(
    connected: Result<Result<PgConnection, sqlx::Error>, tokio::time::error::Elapsed>,
) -> FirstConnection {
    match connected {
        Ok(Ok(conn)) => FirstConnection::Connected(conn),
        Ok(Err(err)) => FirstConnection::Failed(err),
        Err(_) => FirstConnection::NoAnswer,
    }
}

/// Opens one connection by itself, bounded by `timeout`, so that the cause of a failure is
/// reported: the pool retries a refused connection until its acquire timeout and then
/// reports only that timeout. Returns the options to open the pool with.
async fn first_connection(
    url: &str,
    options: &PostgresOptions,
) -> Result<PgConnectOptions, StoreError> {
    let timeout = options.acquire_timeout;
    let target = redact_url(url);
    let passwords = passwords_of(url);
    let connect_options = parse_url(url)
        .and_then(|parsed| with_root_cert(parsed, options))
        .map_err(|why| StoreError::Unavailable {
            message: scrub(
                format!("invalid PostgreSQL URL {}: {why}", shown_url(url)),
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
        match connect_or_recognise(&connect_options, timeout).await {
            FirstConnection::Connected(mut conn) => {
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
            FirstConnection::Failed(err) => {
                let why = explain_connect(&err, &address);
                let source = scrub(err.to_string(), &passwords);
                (why, Some(source.into()))
            }
            FirstConnection::Redis(answer) => (
                format!(
                    "not a PostgreSQL server: {address} answered as a Redis server does ({answer}); is this the right port? (PostgreSQL listens on 5432 by default, Redis on 6379)"
                ),
                None,
            ),
            FirstConnection::NoAnswer => (
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
