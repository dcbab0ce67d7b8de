//! A Redis [`IdempotencyStore`] for eventonce: the production store for consumers that
//! share a topic.
//!
//! Every transition is one round trip: a Lua script, loaded once and run by `EVALSHA`
//! (reloaded on `NOSCRIPT`), that checks the owner token and writes atomically. There is
//! no unconditional `SET` or `DEL`. Expiry is judged by the Redis server's clock (`PX`
//! TTLs). Keys written by an older writer (a bare `"1"`, `"completed"`, JSON metadata)
//! count as completed, except a JSON object whose `status` (or `state`) is `"processing"`,
//! which counts as another consumer's claim; so a service can switch to eventonce on a
//! live Redis without reprocessing.
//!
//! Works with a single Redis (`redis://`, `rediss://` with the `tls` feature, user and
//! password in the URL) and with Redis Cluster ([`RedisStore::connect_cluster`]): each
//! script touches one key, so it runs on the key's node.
//!
//! Failure handling is the guard's: every call is bounded by the store timeout, and a
//! circuit breaker answers at once during an outage. The store itself never retries a
//! command. Its connection is opened on demand ([`RedisStore::connect`] opens it at once
//! and reports why it cannot, [`RedisStore::connect_lazy`] at the first call), replaced in
//! the background once it breaks, and a failed attempt leaves nothing behind: the first
//! call after an outage connects afresh.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod link;
mod scripts;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use eventonce_core::backend::{
    check_arguments, check_batch, check_complete_then_claim, check_completions,
};
use eventonce_core::{
    AdminStore, Claim, Completion, IdempotencyStore, ListedRecord, Record, RecordPage, RecordState,
    StoreError,
};
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

pub use eventonce_core::backend::redact_url;
use link::Link;

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::CLAIM));
static COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::COMPLETE));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RELEASE));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::EXTEND));
static GET: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::GET));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::SETTLE));
static RELEASE_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RELEASE_MANY));
static EXTEND_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::EXTEND_MANY));
static LIST: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::LIST));
static REMOVE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REMOVE));

/// How long connecting and each command may take at most, by default. The guard's own
/// store timeout (default 500 ms) usually answers first.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// Connection settings of a [`RedisStore`].
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Time limit of opening a connection.
    pub connection_timeout: Duration,
    /// Time limit of one command's response.
    pub response_timeout: Duration,
    /// For `rediss://`: a PEM certificate authority to trust instead of the system's roots
    /// (the `tls` feature).
    pub tls_root_cert: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(|c| c.len()),
            )
            .finish()
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connection_timeout: DEFAULT_TIMEOUT,
            response_timeout: DEFAULT_TIMEOUT,
            tls_root_cert: None,
        }
    }
}

impl RedisOptions {
    /// Sets both the connection and the response timeout.
    pub fn timeouts(mut self, connection: Duration, response: Duration) -> Self {
        self.connection_timeout = connection;
        self.response_timeout = response;
        self
    }

    /// Trusts this PEM certificate authority for `rediss://` (the `tls` feature).
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }
}

/// A Redis or Redis Cluster idempotency store. Cheap to clone: clones share the
/// connection, which multiplexes concurrent calls.
///
/// ```no_run
/// use eventonce_core::{Guard, IdempotencyConfig};
/// use eventonce_redis::RedisStore;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://:secret@127.0.0.1:6379/0").await?;
/// let guard = Guard::new(store, IdempotencyConfig::builder("billing").build()?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    endpoint: Arc<Endpoint>,
}

/// Where a store points, for its messages.
struct Endpoint {
    /// The URL with its password masked (or a description of an existing connection).
    target: String,
    /// `host:port` (or the socket path) for hints; empty when unknown.
    address: String,
    /// The URL's password, masked in every message (client errors should never hold it;
    /// this makes sure).
    password: Option<String>,
    /// Whether the URL asks for TLS (`rediss://`).
    tls: bool,
    connection_timeout: Duration,
    response_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.endpoint.target)
            .finish()
    }
}

/// The connection kinds a store can run on.
#[derive(Clone)]
enum Conn {
    /// Opened from a URL by the store: on demand, replaced once broken (see `link`).
    Link(Link),
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The connection one call runs on.
enum Active<'a> {
    Link {
        conn: MultiplexedConnection,
        link: &'a Link,
        generation: u64,
    },
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Active<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Active::Link {
                conn,
                link,
                generation,
            } => Box::pin(async move {
                let result = conn.send_packed_command(cmd).await;
                if let Err(err) = &result {
                    link.failed(*generation, err);
                }
                result
            }),
            Active::Manager(c) => c.req_packed_command(cmd),
            Active::Multiplexed(c) => c.req_packed_command(cmd),
            Active::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Active::Link {
                conn,
                link,
                generation,
            } => Box::pin(async move {
                let result = conn.send_packed_commands(pipeline, offset, count).await;
                if let Err(err) = &result {
                    link.failed(*generation, err);
                }
                result
            }),
            Active::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Active::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Active::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Active::Link { conn, .. } => conn.get_db(),
            Active::Manager(c) => c.get_db(),
            Active::Multiplexed(c) => c.get_db(),
            Active::Cluster(c) => c.get_db(),
        }
    }
}

/// An application's existing connection, for [`RedisStore::from_connection`].
pub enum ExistingConnection {
    /// A reconnecting connection manager.
    Manager(ConnectionManager),
    /// A multiplexed connection (it does not reconnect by itself).
    Multiplexed(MultiplexedConnection),
    /// A Redis Cluster connection.
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for ExistingConnection {
    fn from(c: ConnectionManager) -> Self {
        ExistingConnection::Manager(c)
    }
}

impl From<MultiplexedConnection> for ExistingConnection {
    fn from(c: MultiplexedConnection) -> Self {
        ExistingConnection::Multiplexed(c)
    }
}

impl From<ClusterConnection> for ExistingConnection {
    fn from(c: ClusterConnection) -> Self {
        ExistingConnection::Cluster(c)
    }
}

/// A client error as a store error, without anything that could hold credentials. A
/// response timeout stays a timeout, so that the guard's circuit breaker opens at once.
fn unavailable(context: &str, err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        return StoreError::Timeout {
            operation: "redis command",
            timeout,
        };
    }
    let hint = match err.code() {
        Some("NOAUTH") => {
            "; the server wants a password: give it in the URL (redis://[user]:PASSWORD@host:port)"
        }
        Some("WRONGPASS") => "; check the user and password in the URL",
        Some("NOPERM") => "; the ACL user of the URL lacks a permission this command needs",
        Some("READONLY") => "; this is a read-only replica: point the URL at the primary",
        _ => "",
    };
    StoreError::Unavailable {
        message: format!("{context}: {err}{hint}"),
        source: Some(Box::new(err)),
    }
}

/// The password of a URL, if it has one.
fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// `err` with every occurrence of `password` masked.
fn scrubbed(err: StoreError, password: Option<&str>) -> StoreError {
    let Some(password) = password else {
        return err;
    };
    match err {
        StoreError::Unavailable { message, source } => StoreError::Unavailable {
            message: message.replace(password, "***"),
            source: source.map(|s| -> eventonce_core::BoxError {
                let text = s.to_string();
                if text.contains(password) {
                    text.replace(password, "***").into()
                } else {
                    s
                }
            }),
        },
        other => other,
    }
}

/// The URL schemes the redis client accepts.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "redis+unix",
    "valkey+unix",
    "unix",
];

/// The form of a Redis URL, for messages about one.
const URL_FORM: &str =
    "expected redis://[[user]:password@]host[:port][/db], or rediss://... for TLS";

/// What is wrong with `url` as a Redis URL, if anything: the parser's complaint, a
/// scheme that is not Redis', a missing host, or the client's own checks (database
/// number, TLS support).
fn check_url(url: &str, options: &RedisOptions) -> Result<(url::Url, redis::Client), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{e}; {URL_FORM}"))?;
    let scheme = parsed.scheme();
    if !SCHEMES.contains(&scheme) {
        let hint = match scheme {
            "postgres" | "postgresql" => " (this is a PostgreSQL URL)",
            "http" | "https" => " (this is a web address)",
            _ => "",
        };
        return Err(format!(
            "the scheme {scheme}:// is not Redis'{hint}; {URL_FORM}"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) && !scheme.ends_with("unix") {
        return Err(format!("no host; {URL_FORM}"));
    }
    let db = parsed.path().trim_start_matches('/');
    if !scheme.ends_with("unix") && !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(format!(
            "the path /{db} is not a database number (0 to 15 on a default server); {URL_FORM}"
        ));
    }
    let client = client(url, options).map_err(|e| match e.detail() {
        Some(detail) => format!("{}: {detail}", e.category()),
        // "Invalid database number - InvalidClientConfig": the words, not the kind.
        None => e
            .to_string()
            .split(" - ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    })?;
    Ok((parsed, client))
}

/// Why connecting failed, in words, and what to check.
fn explain_connect(err: &RedisError, endpoint: &Endpoint) -> String {
    let address = if endpoint.address.is_empty() {
        "the server"
    } else {
        endpoint.address.as_str()
    };
    let tls_hint = if endpoint.tls {
        "and that it serves TLS on that port (else use redis://)"
    } else {
        "and whether it only serves TLS (then use rediss://)"
    };
    let text = first_line(&err.to_string()).to_owned();
    let lower = text.to_ascii_lowercase();
    if err.is_connection_refusal() {
        return format!(
            "connection refused: nothing listens on {address}; check that Redis is running there and that the host and port are right"
        );
    }
    if err.is_timeout() {
        return format!(
            "no answer within {:?} (the connection was not accepted, or nothing answered on it); check the host and port, that {address} is a Redis server, {tls_hint}",
            endpoint.connection_timeout
        );
    }
    if err.kind() == redis::ErrorKind::Parse {
        return format!(
            "not a Redis server: {address} answered in another protocol, an HTTP response for one ({text}); is this the right port? Check it, {tls_hint}"
        );
    }
    if err.kind() == redis::ErrorKind::AuthenticationFailed || err.code() == Some("WRONGPASS") {
        return format!("authentication failed ({text}); check the user and password in the URL");
    }
    if err.code() == Some("NOAUTH") || lower.contains("noauth") {
        return format!(
            "the server wants a password ({text}); give it in the URL: redis://[user]:PASSWORD@host:port"
        );
    }
    if ["handshake", "certificate", "tls", "ssl"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return format!(
            "TLS handshake failed ({text}); check that {address} serves TLS, and that its certificate is issued for that host by an authority this client trusts (RedisOptions::tls_root_cert)"
        );
    }
    if err.is_connection_dropped() {
        return format!(
            "the server closed the connection during the handshake ({text}): {address} is probably not a Redis server; is this the right port? Check it, {tls_hint}"
        );
    }
    match err.category() {
        "" => text,
        category => format!("{category} ({text})"),
    }
}

/// A failed connection attempt as a store error: the target, the cause in words and what
/// to check, with the password masked.
fn connect_error(endpoint: &Endpoint, err: RedisError) -> StoreError {
    let message = format!(
        "cannot connect to Redis at {}: {}",
        endpoint.target,
        explain_connect(&err, endpoint)
    );
    scrubbed(
        StoreError::Unavailable {
            message,
            source: Some(Box::new(err)),
        },
        endpoint.password.as_deref(),
    )
}

/// The first line of a client error (a parse error goes on to list every unexpected byte).
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

impl RedisStore {
    /// Connects to one Redis server with the default timeouts. `url` is `redis://` or
    /// `rediss://` (TLS, with the `tls` feature), with user and password if needed:
    /// `redis://user:password@host:6379/0`.
    ///
    /// Fails at once when the first connection cannot be made, with the target (password
    /// masked), the cause and what to check: connection refused, no answer, not a Redis
    /// server, authentication, TLS, an invalid URL. Afterwards the connection is replaced
    /// whenever it breaks, as with [`connect_lazy`](Self::connect_lazy).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// [`connect`](Self::connect) with the given timeouts.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let store = Self::connect_lazy_with(url, options)?;
        if let Conn::Link(link) = &store.conn {
            // At start-up a timeout is an unreachable server, not an outage for a circuit
            // breaker: it is told in words like any other cause. The PING finds what the
            // handshake lets through: a server that wants a password nobody gave.
            let checked = match link.get().await {
                Ok((_, mut conn)) => match redis::cmd("PING").query_async::<()>(&mut conn).await {
                    // Any other refusal came from a Redis server that let us in: an ACL
                    // user without PING (it is in @connection), a server still loading.
                    Err(err)
                        if matches!(
                            err.kind(),
                            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
                        ) && err.code() != Some("NOAUTH") =>
                    {
                        Ok(())
                    }
                    other => other,
                },
                Err(err) => Err(err),
            };
            if let Err(err) = checked {
                return Err(connect_error(&store.endpoint, err));
            }
        }
        Ok(store)
    }

    /// A store for one Redis server that does not connect yet: only the URL is checked
    /// here (an invalid one is refused like [`connect`](Self::connect) refuses it), so it
    /// returns at once, even when Redis is down. The first call opens the connection.
    /// While Redis is unreachable each call fails fast, with [`StoreError::Unavailable`]
    /// (connection refused) or [`StoreError::Timeout`] (no answer within the connection
    /// timeout): a guard with `FailMode::Open` runs its events `Unprotected`, and protects
    /// them again as soon as Redis answers.
    ///
    /// The connection is shared by concurrent calls. When it breaks, a new one is opened
    /// in the background; an attempt that fails leaves nothing behind, so the first call
    /// after Redis is back connects afresh instead of reporting an error of the outage.
    ///
    /// ```no_run
    /// use eventonce_core::{FailMode, Guard, IdempotencyConfig};
    /// use eventonce_redis::RedisStore;
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// // Starts even when Redis is down; events run unprotected until it is up.
    /// let store = RedisStore::connect_lazy("redis://127.0.0.1:6379/0")?;
    /// let config = IdempotencyConfig::builder("billing")
    ///     .on_store_error(FailMode::Open)
    ///     .build()?;
    /// let guard = Guard::new(store, config);
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        Self::connect_lazy_with(url, RedisOptions::default())
    }

    /// [`connect_lazy`](Self::connect_lazy) with the given timeouts.
    pub fn connect_lazy_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let target = redact_url(url);
        let password = password_of(url).map(str::to_owned);
        let (parsed, client) = check_url(url, &options).map_err(|why| {
            scrubbed(
                StoreError::Unavailable {
                    message: format!("invalid Redis URL {target}: {why}"),
                    source: None,
                },
                password.as_deref(),
            )
        })?;
        let address = match parsed.host_str() {
            Some(host) if !host.is_empty() => {
                format!("{host}:{}", parsed.port().unwrap_or(6379))
            }
            _ => parsed.path().to_owned(),
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout));
        Ok(RedisStore {
            conn: Conn::Link(Link::new(client, config)),
            endpoint: Arc::new(Endpoint {
                target,
                address,
                password,
                tls: matches!(parsed.scheme(), "rediss" | "valkeys"),
                connection_timeout: options.connection_timeout,
                response_timeout: options.response_timeout,
            }),
        })
    }

    /// Uses a connection the application already has. A `ConnectionManager` keeps its
    /// own reconnection: after an outage its first call may still report the error of an
    /// attempt it made while the server was down (the stores opened by URL do not).
    pub fn from_connection(conn: impl Into<ExistingConnection>) -> Self {
        let (conn, target) = match conn.into() {
            ExistingConnection::Manager(c) => (Conn::Manager(c), "connection manager"),
            ExistingConnection::Multiplexed(c) => (Conn::Multiplexed(c), "multiplexed connection"),
            ExistingConnection::Cluster(c) => (Conn::Cluster(c), "cluster connection"),
        };
        RedisStore {
            conn,
            endpoint: Arc::new(Endpoint {
                target: target.to_owned(),
                address: String::new(),
                password: None,
                tls: false,
                connection_timeout: Duration::ZERO,
                response_timeout: Duration::ZERO,
            }),
        }
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs. MOVED and ASK
    /// redirections are followed (at most twice per call); nothing else is retried.
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_cluster_with(urls, RedisOptions::default()).await
    }

    /// Connects to a Redis Cluster with the given timeouts.
    pub async fn connect_cluster_with<I, S>(
        urls: I,
        options: RedisOptions,
    ) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        if urls.is_empty() {
            return Err(StoreError::InvalidArgument(
                "no cluster node url given".into(),
            ));
        }
        let scrub_all = |err: StoreError| {
            urls.iter()
                .fold(err, |err, url| scrubbed(err, password_of(url)))
        };
        for url in &urls {
            if let Err(why) = check_url(url, &options) {
                return Err(scrub_all(StoreError::Unavailable {
                    message: format!("invalid Redis URL {}: {why}", redact_url(url)),
                    source: None,
                }));
            }
        }
        let target = format!(
            "cluster {}",
            urls.iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(",")
        );
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(options.connection_timeout)
            .response_timeout(options.response_timeout)
            .retries(2)
            .build()
            .map_err(|e| {
                scrub_all(unavailable(
                    &format!("invalid cluster urls {target}"),
                    e,
                    Duration::ZERO,
                ))
            })?;
        let endpoint = Arc::new(Endpoint {
            target,
            address: String::new(),
            password: None,
            tls: urls
                .iter()
                .any(|u| u.starts_with("rediss://") || u.starts_with("valkeys://")),
            connection_timeout: options.connection_timeout,
            response_timeout: options.response_timeout,
        });
        let conn = client
            .get_async_connection()
            .await
            .map_err(|err| scrub_all(connect_error(&endpoint, err)))?;
        Ok(RedisStore {
            conn: Conn::Cluster(conn),
            endpoint,
        })
    }

    /// The connection for one call: for a store opened by URL the current connection, or
    /// a new one (a failure told as [`connect`](Self::connect) tells it, except that a
    /// timeout stays a timeout, which opens the guard's circuit breaker at once).
    async fn connection(&self) -> Result<Active<'_>, StoreError> {
        Ok(match &self.conn {
            Conn::Link(link) => {
                let (generation, conn) = link.get().await.map_err(|err| {
                    if err.is_timeout() {
                        StoreError::Timeout {
                            operation: "redis connect",
                            timeout: self.endpoint.connection_timeout,
                        }
                    } else {
                        connect_error(&self.endpoint, err)
                    }
                })?;
                Active::Link {
                    conn,
                    link,
                    generation,
                }
            }
            Conn::Manager(c) => Active::Manager(c.clone()),
            Conn::Multiplexed(c) => Active::Multiplexed(c.clone()),
            Conn::Cluster(c) => Active::Cluster(c.clone()),
        })
    }

    fn error(&self, err: RedisError) -> StoreError {
        unavailable(
            &format!("redis {}", self.endpoint.target),
            err,
            self.endpoint.response_timeout,
        )
    }

    /// Where this store points, with any password masked.
    pub fn target(&self) -> &str {
        &self.endpoint.target
    }

    async fn flag(
        &self,
        script: &Script,
        key: &str,
        owner: &str,
        ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut invocation = script.key(key);
        invocation.arg(owner);
        if let Some(ms) = ms {
            invocation.arg(ms).arg(now_ms());
        }
        let mut conn = self.connection().await?;
        let result: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(result == 1)
    }
}

impl RedisStore {
    /// Whether the store runs on a Redis Cluster, where a script may only touch keys of
    /// one slot: batches are then sent key by key, concurrently.
    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// `try_claim_many` on a cluster: every key claimed on its own node, all answered
    /// (none cancelled by another's failure). When one fails, the claims acquired on the
    /// healthy nodes are released before the failure is reported, so no claim of a batch
    /// that answered with an error is left to block redeliveries for a lease.
    async fn cluster_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        let results = join_all(keys.iter().map(|k| self.try_claim(k, owner, lease))).await;
        if results.iter().all(Result::is_ok) {
            return Ok(results.into_iter().flatten().collect());
        }
        let acquired: Vec<&String> = keys
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, Ok(Claim::Acquired)))
            .map(|(k, _)| k)
            .collect();
        // Owner-checked: only this call's own claims go. One that cannot be released (its
        // node failed meanwhile) expires after the lease.
        join_all(acquired.into_iter().map(|k| self.release(k, owner))).await;
        let mut failures = results.into_iter().filter_map(Result::err);
        Err(failures.next().unwrap_or(StoreError::InvalidArgument(
            "no failure in a failed batch".into(),
        )))
    }

    /// One `SETTLE` call: completions, then claims, in one round trip.
    async fn settle(
        &self,
        completions: &[Completion],
        claims: &[&str],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = SETTLE.prepare_invoke();
        for c in completions {
            invocation.key(&c.key);
        }
        for key in claims {
            invocation.key(*key);
        }
        invocation.arg(now_ms()).arg(completions.len());
        for c in completions {
            invocation.arg(&c.owner).arg(millis(c.ttl));
        }
        if !claims.is_empty() {
            invocation.arg(owner).arg(millis(lease));
        }
        let mut conn = self.connection().await?;
        let codes: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if codes.len() != completions.len() + claims.len() {
            return Err(StoreError::InvalidData {
                key: claims
                    .first()
                    .map(|k| (*k).to_owned())
                    .or_else(|| completions.first().map(|c| c.key.clone()))
                    .unwrap_or_default(),
                detail: format!(
                    "batch script answered {} codes for {} keys",
                    codes.len(),
                    completions.len() + claims.len()
                ),
            });
        }
        Ok(codes)
    }

    /// A per-key batch script (`RELEASE_MANY`, `EXTEND_MANY`) in one round trip.
    async fn flags_many(
        &self,
        script: &Script,
        keys: &[String],
        owner: &str,
        lease: Option<Duration>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        invocation.arg(owner);
        if let Some(lease) = lease {
            invocation.arg(millis(lease)).arg(now_ms());
        }
        let mut conn = self.connection().await?;
        let flags: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        if flags.len() != keys.len() {
            return Err(StoreError::InvalidData {
                key: keys[0].clone(),
                detail: format!(
                    "batch script answered {} flags for {} keys",
                    flags.len(),
                    keys.len()
                ),
            });
        }
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }
}

/// A claim script's answer.
fn claim_from_code(key: &str, code: i64) -> Result<Claim, StoreError> {
    match code {
        1 => Ok(Claim::Acquired),
        2 => Ok(Claim::InProgress),
        3 => Ok(Claim::Completed),
        other => Err(StoreError::InvalidData {
            key: key.to_owned(),
            detail: format!("claim script answered {other}"),
        }),
    }
}

/// The wall clock in milliseconds, for the informational timestamp of a record.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[cfg(feature = "tls")]
fn client(url: &str, options: &RedisOptions) -> redis::RedisResult<redis::Client> {
    match &options.tls_root_cert {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        None => redis::Client::open(url),
    }
}

#[cfg(not(feature = "tls"))]
fn client(url: &str, options: &RedisOptions) -> redis::RedisResult<redis::Client> {
    if options.tls_root_cert.is_some() || url.starts_with("rediss://") {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "TLS (rediss://) needs the `tls` feature of eventonce-redis",
        )));
    }
    redis::Client::open(url)
}

/// Milliseconds of a duration, at least 1 (`PX 0` is an error).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Reads a stored value: our `p|ms|owner` / `c|ms|owner`, or an older writer's value.
pub(crate) fn decode(value: &[u8]) -> (RecordState, Option<String>, Option<SystemTime>) {
    let text = String::from_utf8_lossy(value);
    let mut parts = text.splitn(3, '|');
    if let (Some(state @ ("p" | "c")), Some(ms), Some(owner)) =
        (parts.next(), parts.next(), parts.next())
    {
        if let Ok(ms) = ms.parse::<u64>() {
            let state = if state == "p" {
                RecordState::Processing
            } else {
                RecordState::Completed
            };
            let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms));
            return (state, Some(owner.to_owned()), at);
        }
    }
    let legacy_processing = text.starts_with('{')
        && (text.contains("\"status\": \"processing\"")
            || text.contains("\"status\":\"processing\"")
            || text.contains("\"state\": \"processing\"")
            || text.contains("\"state\":\"processing\""));
    let state = if legacy_processing {
        RecordState::Processing
    } else {
        RecordState::Completed
    };
    (state, None, None)
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        let mut conn = self.connection().await?;
        let code: i64 = CLAIM
            .key(key)
            .arg(owner)
            .arg(millis(lease))
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        claim_from_code(key, code)
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(ttl))?;
        self.flag(&COMPLETE, key, owner, Some(millis(ttl))).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        check_arguments(key, owner, None)?;
        self.flag(&RELEASE, key, owner, None).await
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        check_arguments(key, owner, Some(lease))?;
        self.flag(&EXTEND, key, owner, Some(millis(lease))).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key must not be empty".into()));
        }
        let mut conn = self.connection().await?;
        let reply: Option<(Vec<u8>, i64)> = GET
            .key(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(reply.map(|(value, pttl)| {
            let (state, owner, updated_at) = decode(&value);
            Record {
                state,
                owner,
                ttl_left: u64::try_from(pttl).ok().map(Duration::from_millis),
                updated_at,
            }
        }))
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
        if self.is_cluster() {
            return self.cluster_claim_many(keys, owner, lease).await;
        }
        let claims: Vec<&str> = keys.iter().map(String::as_str).collect();
        let codes = self.settle(&[], &claims, owner, lease).await?;
        keys.iter()
            .zip(codes)
            .map(|(key, code)| claim_from_code(key, code))
            .collect()
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        check_completions(completions)?;
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            // Every key's call is sent and answered, whatever another shard does.
            return per_key(
                join_all(
                    completions
                        .iter()
                        .map(|c| self.complete(&c.key, &c.owner, c.ttl)),
                )
                .await,
            );
        }
        let codes = self.settle(completions, &[], "", Duration::ZERO).await?;
        Ok(codes.into_iter().map(|c| c == 1).collect())
    }

    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        check_batch(keys, owner, None)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            return per_key(join_all(keys.iter().map(|k| self.release(k, owner))).await);
        }
        self.flags_many(&RELEASE_MANY, keys, owner, None).await
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
        if self.is_cluster() {
            return per_key(join_all(keys.iter().map(|k| self.extend(k, owner, lease))).await);
        }
        self.flags_many(&EXTEND_MANY, keys, owner, Some(lease))
            .await
    }

    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        check_complete_then_claim(completions, key, owner, lease)?;
        if self.is_cluster() {
            // Different slots: the completions and the claim go out at once, on their
            // own nodes; the claim's key is not among the completions, so order is moot.
            // Each half's answer stands on its own: a claim acquired is returned even when
            // a completion failed.
            let done = join_all(
                completions
                    .iter()
                    .map(|c| self.complete(&c.key, &c.owner, c.ttl)),
            );
            let (done, claim) =
                futures_util::future::join(done, self.try_claim(key, owner, lease)).await;
            return Ok((per_key(done), claim?));
        }
        let mut codes = self.settle(completions, &[key], owner, lease).await?;
        let claim = claim_from_code(key, codes.pop().unwrap_or_default())?;
        Ok((Ok(codes.into_iter().map(|c| c == 1).collect()), claim))
    }

    fn backend_name(&self) -> &'static str {
        "redis"
    }
}

/// Per-key answers of a batch sent key by key (a cluster): all of them, or
/// [`StoreError::Partial`] with the answers that came and the first failure.
fn per_key(results: Vec<Result<bool, StoreError>>) -> Result<Vec<bool>, StoreError> {
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().flatten().collect());
    }
    let mut error = None;
    let answers = results
        .into_iter()
        .map(|r| match r {
            Ok(answer) => Some(answer),
            Err(err) => {
                error.get_or_insert(err);
                None
            }
        })
        .collect();
    Err(StoreError::Partial {
        answers,
        error: Box::new(error.unwrap_or(StoreError::InvalidArgument(
            "no failure in a failed batch".into(),
        ))),
    })
}

/// A `SCAN ... MATCH` pattern matching exactly the keys that start with `scope`.
fn scan_pattern(scope: &str) -> String {
    let mut pattern = String::with_capacity(scope.len() + 2);
    for c in scope.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

fn record_of(value: &[u8], pttl: i64) -> Record {
    let (state, owner, updated_at) = decode(value);
    Record {
        state,
        owner,
        ttl_left: u64::try_from(pttl).ok().map(Duration::from_millis),
        updated_at,
    }
}

/// Operator access on a single Redis server: `SCAN` (never `KEYS`) with a literal-prefix
/// `MATCH`, the values and TTLs of a page read by one script, `MEMORY USAGE` per key.
/// A Redis Cluster connection is refused: `SCAN` walks one node; run the commands
/// against each master instead.
#[async_trait]
impl AdminStore for RedisStore {
    async fn list_page(
        &self,
        scope: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage, StoreError> {
        if matches!(self.conn, Conn::Cluster(_)) {
            return Err(StoreError::InvalidArgument(
                "listing walks one server with SCAN; run it against each cluster master".into(),
            ));
        }
        let cursor = cursor.unwrap_or("0");
        if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StoreError::InvalidArgument(format!(
                "invalid SCAN cursor {cursor:?}"
            )));
        }
        let mut conn = self.connection().await?;
        let (next, keys): (String, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(scan_pattern(scope))
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        // A key that is not UTF-8 was not written by eventonce.
        let keys: Vec<String> = keys
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .filter(|k| k.starts_with(scope))
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        if !keys.is_empty() {
            let mut invocation = LIST.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            let values: Vec<Option<(Vec<u8>, i64)>> = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            for (key, value) in keys.into_iter().zip(values) {
                if let Some((value, pttl)) = value {
                    records.push(ListedRecord {
                        key,
                        record: record_of(&value, pttl),
                    });
                }
            }
        }
        Ok(RecordPage {
            records,
            next: (next != "0").then_some(next),
        })
    }

    async fn remove_if_unchanged(&self, key: &str, seen: &Record) -> Result<bool, StoreError> {
        let Some(owner) = seen.owner.as_deref() else {
            return Err(StoreError::InvalidArgument(format!(
                "{key} holds an older writer's value, not an eventonce record; left untouched"
            )));
        };
        check_arguments(key, owner, None)?;
        let state = match seen.state {
            RecordState::Processing => "p",
            RecordState::Completed => "c",
        };
        let mut conn = self.connection().await?;
        let removed: i64 = REMOVE
            .key(key)
            .arg(state)
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(removed == 1)
    }

    async fn memory_usage(&self, keys: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("MEMORY").arg("USAGE").arg(key);
        }
        let mut conn = self.connection().await?;
        pipe.query_async(&mut conn).await.map_err(|e| self.error(e))
    }

    fn memory_measure(&self) -> &'static str {
        "MEMORY USAGE"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_scrubbed_of_the_password() {
        assert_eq!(password_of("redis://u:pw@h:1/0"), Some("pw"));
        assert_eq!(password_of("redis://u@h"), None);
        assert_eq!(password_of("redis://h"), None);
        let err = StoreError::Unavailable {
            message: "auth failed for pw-123".into(),
            source: Some("bad pw-123".into()),
        };
        let text = format!("{:?}", scrubbed(err, password_of("redis://:pw-123@h")));
        assert!(!text.contains("pw-123"), "{text}");
    }

    #[test]
    fn scan_patterns_match_the_scope_literally() {
        assert_eq!(scan_pattern("a:b:"), "a:b:*");
        assert_eq!(scan_pattern("a*[?]\\"), "a\\*\\[\\?\\]\\\\*");
    }

    #[test]
    fn values_decode_to_states() {
        let (s, o, t) = decode(b"p|1732712345678|owner|with|bars");
        assert_eq!(
            (s, o.as_deref()),
            (RecordState::Processing, Some("owner|with|bars"))
        );
        assert!(t.is_some());
        assert_eq!(decode(b"c|1|o").0, RecordState::Completed);
        for legacy in [&b"1"[..], b"completed", b"{\"processed_at\": 1}", b"p|x|y"] {
            assert_eq!(decode(legacy), (RecordState::Completed, None, None));
        }
        assert_eq!(
            decode(b"{\"status\": \"processing\"}").0,
            RecordState::Processing
        );
    }
}
