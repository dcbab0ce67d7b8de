//! The store's connection: options, connecting to one server (at once or on first use)
//! or to a Redis Cluster, an application's existing connection, and the connection one
//! call runs on.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::backend::{password_of, redact_unparsable_url, redact_url, unescaped_password};
use eventonce_core::StoreError;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::cluster_link::ClusterLink;
use crate::error::{connect_error, scrubbed, unavailable};
use crate::link::{Link, Vet};
use crate::server::{self, Evictions, ServerReport};

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
    /// Accept a server whose `maxmemory-policy` evicts keys (anything but `noeviction`),
    /// with a WARN log at each connection instead of a refusal. Off by default: an evicted
    /// record lets a completed event run again, an evicted claim lets a second consumer
    /// run a held one.
    pub allow_eviction: bool,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field(
                "tls_root_cert",
                &self.tls_root_cert.as_ref().map(std::vec::Vec::len),
            )
            .field("allow_eviction", &self.allow_eviction)
            .finish()
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connection_timeout: DEFAULT_TIMEOUT,
            response_timeout: DEFAULT_TIMEOUT,
            tls_root_cert: None,
            allow_eviction: false,
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

    /// Accepts a server that evicts keys under memory pressure, with a WARN log instead
    /// of the refusal (see [`allow_eviction`](Self::allow_eviction)). Only for a server whose
    /// memory is known never to fill up: each eviction of a record or a claim can run an
    /// event twice.
    pub fn allow_eviction(mut self) -> Self {
        self.allow_eviction = true;
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
/// # mod eventonce { pub use eventonce_core::*; pub mod redis { pub use eventonce_redis::*; } }
/// use eventonce::{Guard, IdempotencyConfig};
/// use eventonce::redis::RedisStore;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://:secret@127.0.0.1:6379/0").await?;
/// let guard = Guard::new(store, IdempotencyConfig::builder("billing").build()?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) conn: Conn,
    pub(crate) endpoint: Arc<Endpoint>,
}

/// Where a store points, for its messages.
pub(crate) struct Endpoint {
    /// The URL with its password masked (or a description of an existing connection).
    pub(crate) target: String,
    /// `host:port` (or the socket path) for hints; empty when unknown.
    pub(crate) address: String,
    /// The URLs' passwords, masked in every message (client errors should never hold
    /// them; this makes sure).
    pub(crate) passwords: Vec<String>,
    /// Whether the URL asks for TLS (`rediss://`).
    pub(crate) tls: bool,
    pub(crate) connection_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// Whether claims go out as one plain `SET ... NX GET` (see `plain`); cleared for good
    /// once the server refuses that form (before Redis 7, or an ACL without `SET`).
    pub(crate) plain_claims: AtomicBool,
    /// The server's eviction count as last seen.
    pub(crate) evictions: Arc<Evictions>,
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
pub(crate) enum Conn {
    /// Opened from a URL by the store: on demand, replaced once broken (see `link`).
    Link(Link),
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
    /// Opened from URLs by the store, on first use (see `cluster_link`).
    ClusterLink(ClusterLink),
}

/// The connection one call runs on.
pub(crate) enum Active<'a> {
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
            } => Box::pin(
                async move { link.noted(*generation, conn.send_packed_command(cmd).await) },
            ),
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
                link.noted(*generation, result)
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
    let parsed = url::Url::parse(url);
    // `localhost:6379` reads as the scheme `localhost`, `127.0.0.1:6379` as nothing: a
    // URL typed without its scheme.
    let schemeless = !url.contains("://") && !url.is_empty() && !url.contains(char::is_whitespace);
    if schemeless && !parsed.as_ref().is_ok_and(|p| SCHEMES.contains(&p.scheme())) {
        return Err(format!(
            "no scheme (did you mean `redis://{}`?); {URL_FORM}",
            shown_url(url)
        ));
    }
    if let Some(why) = unescaped_password(url) {
        return Err(format!("{why}; {URL_FORM}"));
    }
    let parsed = parsed.map_err(|e| format!("{e}; {URL_FORM}"))?;
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

/// `host:port` of a parsed Redis URL (the socket path of a Unix one), for hints.
fn address_of(parsed: &url::Url) -> String {
    match parsed.host_str() {
        Some(host) if !host.is_empty() => format!("{host}:{}", parsed.port().unwrap_or(6379)),
        _ => parsed.path().to_owned(),
    }
}

/// `url` as typed, for messages, its password masked: also when it has no scheme, which
/// [`redact_url`] cannot read (it would show `<unparsable url>`).
fn shown_url(url: &str) -> String {
    if url.contains("://") {
        // A refused URL is shown without its user information at all.
        return redact_unparsable_url(url);
    }
    let shown = redact_url(&format!("redis://{url}"));
    shown
        .strip_prefix("redis://")
        .map_or(shown.clone(), str::to_owned)
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
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL is invalid, or if the first connection or its
    /// `PING` fails (a timeout included), the message saying why with the password masked;
    /// also when the server is a replica, or evicts keys (`maxmemory-policy` other than
    /// `noeviction`) and [`RedisOptions::allow_eviction`] was not given. Every later
    /// connection is checked the same way.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// [`connect`](Self::connect) with the given timeouts.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect): [`StoreError::Unavailable`] for an invalid URL or a
    /// first connection that fails.
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
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL is invalid (not a Redis scheme, no host, a
    /// path that is not a database number, or refused by the client); nothing is
    /// connected here.
    ///
    /// ```no_run
    /// # mod eventonce { pub use eventonce_core::*; pub mod redis { pub use eventonce_redis::*; } }
    /// use eventonce::{FailMode, Guard, IdempotencyConfig};
    /// use eventonce::redis::RedisStore;
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
    ///
    /// # Errors
    ///
    /// As [`connect_lazy`](Self::connect_lazy): [`StoreError::Unavailable`] for an invalid
    /// URL.
    pub fn connect_lazy_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let target = redact_url(url);
        let password = password_of(url).map(str::to_owned);
        let (parsed, client) = check_url(url, &options).map_err(|why| {
            scrubbed(
                StoreError::Unavailable {
                    message: format!("invalid Redis URL {}: {why}", shown_url(url)),
                    source: None,
                },
                password.as_deref(),
            )
        })?;
        let address = address_of(&parsed);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout));
        let evictions = Evictions::new();
        let vet = vet_each_connection(options.allow_eviction, &evictions, &target);
        Ok(RedisStore {
            conn: Conn::Link(Link::new(client, config, vet)),
            endpoint: Arc::new(Endpoint {
                target,
                address,
                passwords: password.into_iter().collect(),
                tls: matches!(parsed.scheme(), "rediss" | "valkeys"),
                connection_timeout: options.connection_timeout,
                response_timeout: options.response_timeout,
                plain_claims: AtomicBool::new(true),
                evictions,
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
                passwords: Vec::new(),
                tls: false,
                connection_timeout: Duration::ZERO,
                response_timeout: Duration::ZERO,
                plain_claims: AtomicBool::new(true),
                evictions: Evictions::new(),
            }),
        }
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs. MOVED and ASK
    /// redirections are followed (at most twice per call); nothing else is retried.
    ///
    /// Fails at once when no connection to the cluster can be made, with the nodes'
    /// addresses (passwords masked), the cause and what to check, as
    /// [`connect`](Self::connect) does for one server.
    ///
    /// # Errors
    ///
    /// - [`StoreError::InvalidArgument`] if `urls` is empty.
    /// - [`StoreError::Unavailable`] if a URL is invalid, or if no connection to the
    ///   cluster can be made; passwords are masked in the message.
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_cluster_with(urls, RedisOptions::default()).await
    }

    /// Connects to a Redis Cluster with the given timeouts.
    ///
    /// # Errors
    ///
    /// As [`connect_cluster`](Self::connect_cluster): [`StoreError::InvalidArgument`] for
    /// no URL, [`StoreError::Unavailable`] for an invalid URL or a failed connection.
    pub async fn connect_cluster_with<I, S>(
        urls: I,
        options: RedisOptions,
    ) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let store = Self::connect_cluster_lazy_with(urls, options)?;
        if let Conn::ClusterLink(link) = &store.conn {
            link.get()
                .await
                .map_err(|err| connect_error(&store.endpoint, err))?;
        }
        Ok(store)
    }

    /// A store for a Redis Cluster that does not connect yet: only the URLs are checked
    /// here (an invalid one is refused as [`connect_cluster`](Self::connect_cluster)
    /// refuses it), so it returns at once, even when the cluster is down. The first call
    /// connects; while no node answers, each call fails fast with
    /// [`StoreError::Unavailable`] naming the nodes and the cause (connection refused), or
    /// [`StoreError::Timeout`] (no answer within the connection timeout): a guard with
    /// `FailMode::Open` runs its events `Unprotected` until the cluster answers.
    ///
    /// ```no_run
    /// # mod eventonce { pub use eventonce_core::*; pub mod redis { pub use eventonce_redis::*; } }
    /// use eventonce::{FailMode, Guard, IdempotencyConfig};
    /// use eventonce::redis::RedisStore;
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect_cluster_lazy([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    ///     "redis://10.0.0.3:6379",
    /// ])?;
    /// let config = IdempotencyConfig::builder("billing")
    ///     .on_store_error(FailMode::Open)
    ///     .build()?;
    /// let guard = Guard::new(store, config);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidArgument`] if `urls` is empty; [`StoreError::Unavailable`] if
    /// a URL is invalid. Nothing is connected here.
    pub fn connect_cluster_lazy<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_cluster_lazy_with(urls, RedisOptions::default())
    }

    /// [`connect_cluster_lazy`](Self::connect_cluster_lazy) with the given timeouts.
    ///
    /// # Errors
    ///
    /// As [`connect_cluster_lazy`](Self::connect_cluster_lazy).
    pub fn connect_cluster_lazy_with<I, S>(
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
        let passwords: Vec<String> = urls
            .iter()
            .filter_map(|u| password_of(u).map(str::to_owned))
            .collect();
        let scrub_all = |err: StoreError| {
            passwords
                .iter()
                .fold(err, |err, password| scrubbed(err, Some(password)))
        };
        let mut addresses = Vec::with_capacity(urls.len());
        for url in &urls {
            match check_url(url, &options) {
                Ok((parsed, _)) => addresses.push(address_of(&parsed)),
                Err(why) => {
                    return Err(scrub_all(StoreError::Unavailable {
                        message: format!("invalid Redis URL {}: {why}", shown_url(url)),
                        source: None,
                    }))
                }
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
        let evictions = Evictions::new();
        // INFO goes to every primary when the link first connects: each one must be fit.
        let vet = (
            options.allow_eviction,
            Arc::clone(&evictions),
            target.clone(),
        );
        Ok(RedisStore {
            conn: Conn::ClusterLink(ClusterLink::new(client, vet)),
            endpoint: Arc::new(Endpoint {
                target,
                address: addresses.join(","),
                passwords,
                tls: urls
                    .iter()
                    .any(|u| u.starts_with("rediss://") || u.starts_with("valkeys://")),
                connection_timeout: options.connection_timeout,
                response_timeout: options.response_timeout,
                plain_claims: AtomicBool::new(true),
                evictions,
            }),
        })
    }

    /// The connection for one call: for a store opened by URL the current connection, or
    /// a new one (a failure told as [`connect`](Self::connect) tells it, except that a
    /// timeout stays a timeout, which opens the guard's circuit breaker at once).
    pub(crate) async fn connection(&self) -> Result<Active<'_>, StoreError> {
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
            Conn::ClusterLink(link) => Active::Cluster(link.get().await.map_err(|err| {
                if err.is_timeout() {
                    StoreError::Timeout {
                        operation: "redis cluster connect",
                        timeout: self.endpoint.connection_timeout,
                    }
                } else {
                    connect_error(&self.endpoint, err)
                }
            })?),
            Conn::Manager(c) => Active::Manager(c.clone()),
            Conn::Multiplexed(c) => Active::Multiplexed(c.clone()),
            Conn::Cluster(c) => Active::Cluster(c.clone()),
        })
    }

    pub(crate) fn error(&self, err: RedisError) -> StoreError {
        unavailable(
            &format!("redis {}", self.endpoint.target),
            err,
            self.endpoint.response_timeout,
        )
    }

    /// What the server (every primary of a cluster) says now about its memory policy, its
    /// role and the keys it evicted: for a health check. Growth of the eviction count since
    /// the last look (a connection, or this call) is logged at ERROR (`REDIS_EVICTING`) and
    /// counted in [`EVICTED_KEYS_TOTAL`](crate::EVICTED_KEYS_TOTAL) (the `metrics` feature).
    /// One `INFO` call.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] or [`StoreError::Timeout`] when no connection can be
    /// made. A server that refuses `INFO` is not an error: the report's fields are `None`.
    pub async fn server_report(&self) -> Result<ServerReport, StoreError> {
        let mut conn = self.connection().await?;
        let report = server::report(&mut conn).await;
        if let Some(n) = report.evicted_keys {
            self.endpoint.evictions.observe(n, &self.endpoint.target);
        }
        Ok(report)
    }

    /// Where this store points, with any password masked.
    pub fn target(&self) -> &str {
        &self.endpoint.target
    }

    /// Whether the store runs on a Redis Cluster, where a script may only touch keys of
    /// one slot: batches are then sent key by key, concurrently.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_) | Conn::ClusterLink(_))
    }
}

/// The check every connection of a store opened by URL passes (see `server`).
fn vet_each_connection(allow_eviction: bool, evictions: &Arc<Evictions>, target: &str) -> Vet {
    let evictions = Arc::clone(evictions);
    let target: Arc<str> = Arc::from(target);
    Arc::new(move |mut conn: MultiplexedConnection| {
        let evictions = Arc::clone(&evictions);
        let target = Arc::clone(&target);
        Box::pin(async move {
            server::vet(&mut conn, allow_eviction, &evictions, &target)
                .await
                .map(|_| ())
        })
    })
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
