//! A PostgreSQL [`IdempotencyStore`] for eventonce, on sqlx — and the one store that can
//! commit the idempotency record in the same transaction as the handler's own writes
//! ([`TransactionalStore`], used by `Guard::run_in_transaction`).
//!
//! Every trait method is one SQL statement. Expiry is judged by the database clock
//! (`now()`), never the client's. Records live in one table (default
//! `public.eventonce_records`; schema and table are configurable), created by the migration
//! shipped with this crate ([`PostgresStore::migrate`], run by [`PostgresStore::connect`]).
//! Expired records are ignored by every statement and removed by a bounded background
//! reaper ([`PostgresStore::spawn_reaper`]) in small batches that skip locked rows, so it
//! never blocks a claim.
//!
//! Statements that lock several records lock them in key order, so two of them sharing
//! keys never deadlock. A claim never waits long for a record another transaction holds (a
//! claim inside `Guard::run_in_transaction`, a batch being completed): after at most
//! [`PostgresOptions::lock_wait`] it answers `InProgress` for that key, and a batch claim
//! answers its other keys as usual.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use eventonce_core::backend::{
    check_arguments, check_batch, check_complete_then_claim, check_completions, redact_url,
};
use eventonce_core::{
    AdminStore, Claim, Completion, IdempotencyStore, ListedRecord, Record, RecordPage, RecordState,
    StoreError, TransactionalStore,
};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Postgres, Row, SqlSafeStr, Transaction};

/// The transaction a handler gets (and hands back) in `Guard::run_in_transaction`.
pub type PgTx = Transaction<'static, Postgres>;

/// The migration that creates the records table, with `{schema}`, `{table}` and
/// `{table_unquoted}` placeholders.
const MIGRATION_0001: &str = include_str!("../migrations/0001_create_records.sql");

/// Where the records live and how the pool is sized.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The schema (created if missing). Default `public`.
    pub schema: String,
    /// The table. Default `eventonce_records`.
    pub table: String,
    /// Connections of the pool [`PostgresStore::connect_with`] opens. Default 10.
    pub max_connections: u32,
    /// How long opening the first connection (at connect) and then waiting for a pooled
    /// connection may take. Default 5 s.
    pub acquire_timeout: Duration,
    /// How long a claim waits for a record another transaction holds before it answers
    /// `InProgress` (the statement's `lock_timeout`; at least 1 ms). Keep it well below the
    /// guard's store timeout. Default 50 ms.
    pub lock_wait: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "public".into(),
            table: "eventonce_records".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            lock_wait: Duration::from_millis(50),
        }
    }
}

impl PostgresOptions {
    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets the pool size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the acquire timeout (the first connection's, then the pool's).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets how long a claim waits for a record another transaction holds.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }
}

/// A PostgreSQL idempotency store. Cheap to clone: clones share the pool.
///
/// ```no_run
/// use eventonce_core::{EventEnvelope, Guard, IdempotencyConfig};
/// use eventonce_postgres::PostgresStore;
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
    pool: PgPool,
    sql: Arc<Statements>,
    options: PostgresOptions,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.options.schema)
            .field("table", &self.options.table)
            .finish()
    }
}

/// The statements, with the configured table name in them, built once.
struct Statements {
    claim: Arc<str>,
    claim_tx: Arc<str>,
    state: Arc<str>,
    complete: Arc<str>,
    release: Arc<str>,
    extend: Arc<str>,
    get: Arc<str>,
    reap: Arc<str>,
    claim_many: Arc<str>,
    complete_many: Arc<str>,
    release_many: Arc<str>,
    extend_many: Arc<str>,
    complete_then_claim: Arc<str>,
    list: Arc<str>,
    remove: Arc<str>,
    sizes: Arc<str>,
}

impl Statements {
    fn new(table: &str, lock_wait: Duration) -> Self {
        let s = |text: String| -> Arc<str> { Arc::from(text) };
        // `lock_timeout` for the rest of the statement's transaction (just the statement,
        // outside an explicit transaction): how long a claim waits for a row another
        // transaction holds. 0 would mean no limit, so at least 1 ms.
        let wait = format!(
            "set_config('lock_timeout', '{}ms', true)",
            lock_wait.as_millis().max(1)
        );
        // The claim of $1 for $2 for $3 ms, once the lock timeout is set: the INSERT's one
        // row comes from `wait`, so no lock is waited for before it is set. Absent or
        // expired → the caller's claim (RETURNING 1). A live record → untouched (the DO
        // UPDATE's WHERE is false), and its state read by the same statement (2 processing,
        // 3 completed). A record inserted by a transaction that committed after this
        // statement's snapshot returns no row: the caller reports it in progress. A record
        // another transaction holds for longer than the lock timeout fails the statement
        // with 55P03 (lock_not_available): the caller reports it in progress too.
        let claim_one = format!(
            "claim AS (
                   INSERT INTO {table} AS r (key, state, owner, updated_at, expires_at)
                   SELECT $1, 'processing', $2, now(), now() + make_interval(secs => $3::float8 / 1000)
                     FROM wait
                   ON CONFLICT (key) DO UPDATE
                     SET state = 'processing', owner = EXCLUDED.owner,
                         updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
                     WHERE r.expires_at <= now()
                   RETURNING 1 AS code
                 )"
        );
        let answer_one = format!(
            "SELECT code FROM claim
                 UNION ALL
                 SELECT CASE WHEN state = 'completed' THEN 3 ELSE 2 END FROM {table}
                  WHERE key = $1 AND expires_at > now() AND NOT EXISTS (SELECT 1 FROM claim)"
        );
        // `input`, `held` and `done` of a batch of completions (the parameters of their keys,
        // owners and TTLs in ms): the live processing claims of their owners, locked in key
        // order, then completed; `done` returns the keys completed.
        let complete_rows = |keys: &str, owners: &str, ttls: &str| {
            format!(
                "input AS (
                   SELECT k, o, ms FROM unnest({keys}::text[], {owners}::text[], {ttls}::float8[])
                     AS i(k, o, ms)
                 ), held AS (
                   SELECT r.key FROM {table} r JOIN input i ON r.key = i.k
                    WHERE r.owner = i.o AND r.state = 'processing' AND r.expires_at > now()
                    ORDER BY r.key FOR UPDATE OF r
                 ), done AS (
                   UPDATE {table} AS r SET state = 'completed', updated_at = now(),
                          expires_at = now() + make_interval(secs => i.ms / 1000)
                     FROM held h, input i
                    WHERE r.key = h.key AND i.k = h.key AND r.owner = i.o
                      AND r.state = 'processing' AND r.expires_at > now()
                   RETURNING r.key
                 )"
            )
        };
        Statements {
            // Guarantee: one atomic statement (above).
            claim: s(format!(
                "WITH wait AS MATERIALIZED (SELECT {wait} AS lock_wait), {claim_one}
                 {answer_one}"
            )),
            // The claim inside the handler's transaction: the same, then the transaction's
            // lock timeout is set back to what it was, so the handler's statements wait as
            // the application configured them. The restoring projection runs on the row of
            // `wait` joined with the answer (or its absence), so after the claim. Always one
            // row; a NULL code is no answer.
            claim_tx: s(format!(
                "WITH wait AS MATERIALIZED (
                   SELECT prev, {wait} AS lock_wait
                     FROM (SELECT current_setting('lock_timeout') AS prev OFFSET 0) AS p
                 ), {claim_one}, answer AS (
                 {answer_one}
                 )
                 SELECT a.code, set_config('lock_timeout', w.prev, true) AS restored
                   FROM wait w LEFT JOIN answer a ON true"
            )),
            state: s(format!(
                "SELECT CASE WHEN state = 'completed' THEN 3 ELSE 2 END AS code FROM {table}
                  WHERE key = $1 AND expires_at > now()"
            )),
            // Guarantee: only the live processing claim of $2 becomes completed.
            complete: s(format!(
                "UPDATE {table} SET state = 'completed', updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
            )),
            // Guarantee: only the live processing claim of $2 is deleted.
            release: s(format!(
                "DELETE FROM {table}
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
            )),
            // Guarantee: only the live processing claim of $2 is renewed.
            extend: s(format!(
                "UPDATE {table} SET updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                  WHERE key = $1 AND owner = $2 AND state = 'processing' AND expires_at > now()"
            )),
            get: s(format!(
                "SELECT state, owner,
                        (EXTRACT(EPOCH FROM updated_at) * 1000)::int8 AS updated_ms,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8 AS left_ms
                   FROM {table} WHERE key = $1 AND expires_at > now()"
            )),
            // Deletes one batch of expired records, skipping rows a claim holds.
            reap: s(format!(
                "DELETE FROM {table} WHERE key IN (
                   SELECT key FROM {table} WHERE expires_at <= now()
                    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            )),
            // Guarantee: the claim statement above for every key of $1 at once, in one
            // statement; one code per key in input order. No row is waited for but through
            // the lock timeout, so a row another transaction holds never blocks the batch:
            // - visible records are read (no lock); the expired ones are locked in key order,
            //   skipping those another transaction holds, and renewed for $2;
            // - keys with no visible record are inserted in key order; an insert that meets
            //   another transaction's uncommitted record of the key waits at most the lock
            //   timeout, and then the statement fails with 55P03 (the caller answers key by
            //   key); one committed since the snapshot is left alone (DO NOTHING);
            // - a key neither renewed nor inserted is completed (3) or in progress (2): live,
            //   held by another transaction, or written since the snapshot.
            claim_many: s(format!(
                "WITH wait AS MATERIALIZED (
                   SELECT {wait} AS lock_wait
                 ), input AS (
                   SELECT k, ord FROM unnest($1::text[]) WITH ORDINALITY AS t(k, ord)
                 ), seen AS (
                   SELECT key, state, expires_at > now() AS live FROM {table}
                    WHERE key = ANY($1::text[])
                 ), held AS (
                   SELECT r.key FROM seen s JOIN {table} r ON r.key = s.key
                    WHERE NOT s.live AND r.expires_at <= now()
                    ORDER BY r.key FOR UPDATE OF r SKIP LOCKED
                 ), renewed AS (
                   UPDATE {table} AS r SET state = 'processing', owner = $2, updated_at = now(),
                          expires_at = now() + make_interval(secs => $3::float8 / 1000)
                     FROM held h
                    WHERE r.key = h.key
                   RETURNING r.key
                 ), inserted AS (
                   INSERT INTO {table} AS r (key, state, owner, updated_at, expires_at)
                   SELECT i.k, 'processing', $2, now(), now() + make_interval(secs => $3::float8 / 1000)
                     FROM input i CROSS JOIN wait
                    WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.key = i.k)
                    ORDER BY i.k
                   ON CONFLICT (key) DO NOTHING
                   RETURNING r.key
                 )
                 SELECT (CASE WHEN c.key IS NOT NULL THEN 1
                              WHEN s.live AND s.state = 'completed' THEN 3
                              ELSE 2 END)::int4 AS code
                   FROM input i
                   LEFT JOIN (SELECT key FROM renewed UNION ALL SELECT key FROM inserted) c
                     ON c.key = i.k
                   LEFT JOIN seen s ON s.key = i.k
                  ORDER BY i.ord"
            )),
            // Guarantee: each live processing claim of its owner becomes completed for its
            // TTL; returns the keys it completed. Rows are locked in key order, as by every
            // statement that locks several rows, so two of them sharing keys never deadlock.
            complete_many: s(format!(
                "WITH {} SELECT key FROM done",
                complete_rows("$1", "$2", "$3")
            )),
            // Guarantee: only live processing claims of $2 are deleted (locked in key order
            // first); returns their keys.
            release_many: s(format!(
                "WITH held AS (
                   SELECT key FROM {table}
                    WHERE key = ANY($1::text[]) AND owner = $2 AND state = 'processing'
                      AND expires_at > now()
                    ORDER BY key FOR UPDATE
                 )
                 DELETE FROM {table} AS r USING held h
                  WHERE r.key = h.key AND r.owner = $2 AND r.state = 'processing'
                    AND r.expires_at > now()
                 RETURNING r.key"
            )),
            // Guarantee: only live processing claims of $2 are renewed (locked in key order
            // first); returns their keys.
            extend_many: s(format!(
                "WITH held AS (
                   SELECT key FROM {table}
                    WHERE key = ANY($1::text[]) AND owner = $2 AND state = 'processing'
                      AND expires_at > now()
                    ORDER BY key FOR UPDATE
                 )
                 UPDATE {table} AS r SET updated_at = now(),
                        expires_at = now() + make_interval(secs => $3::float8 / 1000)
                   FROM held h
                  WHERE r.key = h.key AND r.owner = $2 AND r.state = 'processing'
                    AND r.expires_at > now()
                 RETURNING r.key"
            )),
            // Guarantee: `complete_many` of $4..$6, then the claim of $1, in one statement
            // (the key claimed is never one of those completed). The lock timeout is set
            // only once every completion is done (`wait` counts them), so completions wait
            // for their rows as `complete_many` does, and the claim's row is the last one
            // locked. Rows: ('d', key) per completion done, then ('c', code) for the claim
            // (none: in progress).
            complete_then_claim: s(format!(
                "WITH {}, wait AS MATERIALIZED (
                   SELECT {wait} AS lock_wait FROM (SELECT count(*) FROM done) AS d
                 ), {claim_one}
                 SELECT 'd' AS kind, key, 0::int4 AS code FROM done
                 UNION ALL
                 SELECT 'c', NULL, code FROM claim
                 UNION ALL
                 SELECT 'c', NULL, CASE WHEN state = 'completed' THEN 3 ELSE 2 END FROM {table}
                  WHERE key = $1 AND expires_at > now() AND NOT EXISTS (SELECT 1 FROM claim)",
                complete_rows("$4", "$5", "$6")
            )),
            // One page of live records in key order, after the cursor key: a range scan of
            // the primary key. The scope is matched with starts_with, so its characters are
            // never a LIKE pattern.
            list: s(format!(
                "SELECT key, state, owner,
                        (EXTRACT(EPOCH FROM updated_at) * 1000)::int8 AS updated_ms,
                        (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::int8 AS left_ms
                   FROM {table}
                  WHERE key > $1 AND starts_with(key, $2) AND expires_at > now()
                  ORDER BY key LIMIT $3"
            )),
            // Guarantee: deletes the record only if it is still live and exactly the one the
            // operator saw (state and owner), whoever owns it.
            remove: s(format!(
                "DELETE FROM {table}
                  WHERE key = $1 AND state = $2 AND owner = $3 AND expires_at > now()"
            )),
            sizes: s(format!(
                "SELECT key, pg_column_size(r.*)::int8 AS bytes FROM {table} r
                  WHERE key = ANY($1)"
            )),
        }
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

/// A sqlx error as a store error. `acquire_timeout` is the pool's: a pool that found no
/// connection in time says how long it waited.
fn db_error(context: &str, err: sqlx::Error, acquire_timeout: Duration) -> StoreError {
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

/// The form of a PostgreSQL URL, for messages about one.
const URL_FORM: &str =
    "expected postgres://[user[:password]@]host[:port]/database[?sslmode=disable|prefer|require]";

/// Reads `url` as PostgreSQL connection options, or says what is wrong with it: the
/// parser's complaint, a scheme that is not PostgreSQL's (a Redis URL, for one), or an
/// invalid setting.
fn parse_url(url: &str) -> Result<PgConnectOptions, String> {
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
        return Vec::new();
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

/// Opens one connection by itself, bounded by `timeout`, so that the cause of a failure is
/// reported: the pool retries a refused connection until its acquire timeout and then
/// reports only that timeout. Returns the options to open the pool with.
async fn first_connection(url: &str, timeout: Duration) -> Result<PgConnectOptions, StoreError> {
    let target = redact_url(url);
    let passwords = passwords_of(url);
    let connect_options = parse_url(url).map_err(|why| StoreError::Unavailable {
        message: scrub(
            format!("invalid PostgreSQL URL {target}: {why}"),
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
            Ok(Ok(conn)) => {
                // Terminate politely; a server that hangs now is the pool's concern.
                let _ = tokio::time::timeout(timeout, conn.close()).await;
                return Ok(connect_options);
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

/// Whether a claim statement failed because of another transaction rather than the
/// store: a row it holds for longer than the lock timeout (55P03 lock_not_available), or a
/// serialization failure (40001, only under a stricter isolation default than READ
/// COMMITTED). Nothing was claimed, so the claim answers `InProgress`: the caller retries.
fn is_conflict(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("55P03" | "40001")),
        _ => false,
    }
}

/// A description of a sqlx error that carries no connection string.
fn describe(err: &sqlx::Error) -> String {
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

/// How many single-key claims run at once when a batch claim falls back to them.
const CLAIM_EACH_CONCURRENCY: usize = 8;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PostgresStore {
    /// Connects with the default options and runs the migration.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options` and runs the migration.
    ///
    /// The first connection is opened by itself, within `options.acquire_timeout`, so that
    /// a failure says what was tried (the URL, password masked), what happened and what to
    /// check: connection refused (at once), no answer, not a PostgreSQL server, a refusal
    /// by the server (password, database, `pg_hba.conf`), TLS, an invalid URL.
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
    /// use eventonce_core::AdminStore;
    /// use eventonce_postgres::{PostgresOptions, PostgresStore};
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
    fn db_error(&self, context: &str, err: sqlx::Error) -> StoreError {
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

    /// Deletes up to `batch` expired records; returns how many it deleted.
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

    /// Runs the claim statement on the pool; a conflict with another transaction is an
    /// answer (in progress), not a failure.
    async fn claim_one(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let code = sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.claim)))
            .bind(key)
            .bind(owner)
            .bind(millis(lease))
            .fetch_optional(&self.pool)
            .await;
        match code {
            Ok(code) => claim_from_code(key, code),
            Err(err) if is_conflict(&err) => Ok(Claim::InProgress),
            Err(err) => Err(self.db_error("PostgreSQL", err)),
        }
    }

    /// Claims `keys` one statement each (a few at a time), for a batch whose statement met
    /// a record another transaction holds: each such key answers in progress on its own.
    async fn claim_each(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        // By index: a closure over `&String` would be higher-ranked, which the `Send`
        // check of the trait's boxed future cannot prove.
        stream::iter(0..keys.len())
            .map(|i| self.claim_one(&keys[i], owner, lease))
            .buffered(CLAIM_EACH_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn execute(
        &self,
        sql: &Arc<str>,
        key: &str,
        owner: &str,
        ms: Option<f64>,
    ) -> Result<bool, StoreError> {
        let mut q = sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(key)
            .bind(owner);
        if let Some(ms) = ms {
            q = q.bind(ms);
        }
        let done = q
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        Ok(done.rows_affected() == 1)
    }
}

impl PostgresStore {
    /// Runs a batch statement returning the keys it touched, and maps them back onto
    /// `keys` in order.
    async fn touched<'q>(
        &self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
        keys: impl Iterator<Item = &'q str>,
    ) -> Result<Vec<bool>, StoreError> {
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        let mut done = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get(0).map_err(|e| self.db_error("PostgreSQL", e))?;
            done.insert(key);
        }
        Ok(keys.map(|k| done.contains(k)).collect())
    }
}

fn completion_columns(completions: &[Completion]) -> (Vec<String>, Vec<String>, Vec<f64>) {
    (
        completions.iter().map(|c| c.key.clone()).collect(),
        completions.iter().map(|c| c.owner.clone()).collect(),
        completions.iter().map(|c| millis(c.ttl)).collect(),
    )
}

/// Stops the reaper [`PostgresStore::spawn_reaper`] started when dropped.
#[derive(Debug)]
pub struct ReaperHandle(tokio::task::JoinHandle<()>);

impl Drop for ReaperHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn claim_from_code(key: &str, code: Option<i32>) -> Result<Claim, StoreError> {
    match code {
        Some(1) => Ok(Claim::Acquired),
        Some(3) => Ok(Claim::Completed),
        // No row: a record committed after the statement's snapshot, a fresh claim.
        Some(2) | None => Ok(Claim::InProgress),
        Some(other) => Err(StoreError::InvalidData {
            key: key.to_owned(),
            detail: format!("claim statement answered {other}"),
        }),
    }
}

fn record_from_row(row: &PgRow) -> Result<Record, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let owner: String = row.try_get("owner")?;
    let updated_ms: i64 = row.try_get("updated_ms")?;
    let left_ms: i64 = row.try_get("left_ms")?;
    Ok(Record {
        state: if state == "completed" {
            RecordState::Completed
        } else {
            RecordState::Processing
        },
        owner: Some(owner),
        ttl_left: Some(Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))),
        updated_at: UNIX_EPOCH.checked_add(Duration::from_millis(
            u64::try_from(updated_ms).unwrap_or(0),
        )),
    })
}

#[async_trait]
impl IdempotencyStore for PostgresStore {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        self.claim_one(key, owner, lease).await
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        self.execute(&self.sql.complete, key, owner, Some(millis(ttl)))
            .await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        self.execute(&self.sql.release, key, owner, None).await
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        self.execute(&self.sql.extend, key, owner, Some(millis(lease)))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let row = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.get)))
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error("PostgreSQL", e))?;
        row.map(|r| record_from_row(&r))
            .transpose()
            .map_err(|e| self.db_error("PostgreSQL", e))
    }

    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        check_batch(keys, owner, Some(lease))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let codes: Vec<i32> = match sqlx::query_scalar(AssertSqlSafe(Arc::clone(
            &self.sql.claim_many,
        )))
        .bind(keys)
        .bind(owner)
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await
        {
            Ok(codes) => codes,
            Err(err) if is_conflict(&err) => {
                // Another transaction's uncommitted record of one of the keys: nothing
                // of the batch was claimed; claim key by key.
                tracing::debug!(error = %describe(&err), keys = keys.len(), "BATCH_CLAIM_CONFLICT: A key of the batch is held by another transaction; claiming key by key");
                return self.claim_each(keys, owner, lease).await;
            }
            Err(err) => return Err(self.db_error("PostgreSQL", err)),
        };
        if codes.len() != keys.len() {
            return Err(StoreError::InvalidData {
                key: keys[0].clone(),
                detail: format!("{} codes for {} keys", codes.len(), keys.len()),
            });
        }
        keys.iter()
            .zip(codes)
            .map(|(key, code)| claim_from_code(key, Some(code)))
            .collect()
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        check_completions(completions)?;
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let (keys, owners, ttls) = completion_columns(completions);
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete_many)))
            .bind(keys)
            .bind(owners)
            .bind(ttls);
        self.touched(query, completions.iter().map(|c| c.key.as_str()))
            .await
    }

    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        check_batch(keys, owner, None)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.release_many)))
            .bind(keys)
            .bind(owner);
        self.touched(query, keys.iter().map(String::as_str)).await
    }

    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        check_batch(keys, owner, Some(lease))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let query = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.extend_many)))
            .bind(keys)
            .bind(owner)
            .bind(millis(lease));
        self.touched(query, keys.iter().map(String::as_str)).await
    }

    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        check_complete_then_claim(completions, key, owner, lease)?;
        let (keys, owners, ttls) = completion_columns(completions);
        let rows = match sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete_then_claim)))
            .bind(key)
            .bind(owner)
            .bind(millis(lease))
            .bind(keys)
            .bind(owners)
            .bind(ttls)
            .fetch_all(&self.pool)
            .await
        {
            Ok(rows) => rows,
            Err(err) if is_conflict(&err) => {
                // The claimed key is held by another transaction, and the statement (its
                // completions too) was rolled back: complete, then answer the claim alone.
                let done = if completions.is_empty() {
                    Ok(Vec::new())
                } else {
                    self.complete_many(completions).await
                };
                return Ok((done, self.claim_one(key, owner, lease).await?));
            }
            Err(err) => return Err(self.db_error("PostgreSQL", err)),
        };
        let mut done = std::collections::HashSet::new();
        let mut code = None;
        for row in &rows {
            let kind: String = row
                .try_get("kind")
                .map_err(|e| self.db_error("PostgreSQL", e))?;
            if kind == "d" {
                let k: String = row
                    .try_get("key")
                    .map_err(|e| self.db_error("PostgreSQL", e))?;
                done.insert(k);
            } else {
                code = Some(
                    row.try_get::<i32, _>("code")
                        .map_err(|e| self.db_error("PostgreSQL", e))?,
                );
            }
        }
        let done = completions.iter().map(|c| done.contains(&c.key)).collect();
        // One statement: the completions and the claim succeed or fail together.
        Ok((Ok(done), claim_from_code(key, code)?))
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }
}

/// Operator access: pages in key order (`key > cursor ... ORDER BY key LIMIT n`, a range
/// scan of the primary key), removal of exactly the record seen, row sizes by
/// `pg_column_size` (the row's data, without index or page overhead).
#[async_trait]
impl AdminStore for PostgresStore {
    async fn list_page(
        &self,
        scope: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage, StoreError> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.list)))
            .bind(cursor.unwrap_or(""))
            .bind(scope)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error("PostgreSQL listing", e))?;
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: String = row
                .try_get("key")
                .map_err(|e| self.db_error("PostgreSQL listing", e))?;
            let record =
                record_from_row(row).map_err(|e| self.db_error("PostgreSQL listing", e))?;
            records.push(ListedRecord { key, record });
        }
        let next = if full {
            records.last().map(|r| r.key.clone())
        } else {
            None
        };
        Ok(RecordPage { records, next })
    }

    async fn remove_if_unchanged(&self, key: &str, seen: &Record) -> Result<bool, StoreError> {
        let Some(owner) = seen.owner.as_deref() else {
            return Err(StoreError::InvalidArgument(format!(
                "{key} has no owner, so it is not an eventonce record; left untouched"
            )));
        };
        check_arguments(key, owner, None)?;
        let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.remove)))
            .bind(key)
            .bind(seen.state.as_str())
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

    #[test]
    fn the_lock_wait_is_whole_milliseconds_and_never_unlimited() {
        // lock_timeout = 0 would mean no limit at all.
        for (wait, text) in [
            (Duration::ZERO, "'1ms'"),
            (Duration::from_micros(300), "'1ms'"),
            (Duration::from_millis(50), "'50ms'"),
            (Duration::from_secs(2), "'2000ms'"),
        ] {
            let sql = Statements::new("t", wait);
            for statement in [
                &sql.claim,
                &sql.claim_tx,
                &sql.claim_many,
                &sql.complete_then_claim,
            ] {
                assert!(
                    statement.contains(&format!("set_config('lock_timeout', {text}, true)")),
                    "{wait:?}: {statement}"
                );
            }
            assert!(
                !sql.complete_many.contains("lock_timeout"),
                "completions wait"
            );
        }
    }

    #[test]
    fn missing_claim_rows_read_as_in_progress() {
        assert_eq!(claim_from_code("k", None).ok(), Some(Claim::InProgress));
        assert_eq!(claim_from_code("k", Some(1)).ok(), Some(Claim::Acquired));
        assert_eq!(claim_from_code("k", Some(3)).ok(), Some(Claim::Completed));
        assert!(claim_from_code("k", Some(9)).is_err());
    }
}
