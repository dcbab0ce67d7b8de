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
//! command; its connection reconnects in the background.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod scripts;

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use eventonce_core::{
    check_arguments, check_batch, check_complete_then_claim, check_completions, AdminStore, Claim,
    Completion, IdempotencyStore, ListedRecord, Record, RecordPage, RecordState, StoreError,
};
use futures_util::future::{join_all, try_join_all};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};

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
    target: String,
    response_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .finish()
    }
}

/// The connection kinds a store can run on.
#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
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

/// The URL with its password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable url>".to_owned();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{masked}@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
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
    StoreError::Unavailable {
        message: format!("{context}: {err}"),
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

/// `err` with every occurrence of the URL's password masked.
fn scrubbed(err: StoreError, url: &str) -> StoreError {
    let Some(password) = password_of(url) else {
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

impl RedisStore {
    /// Connects to one Redis server with the default timeouts. `url` is `redis://` or
    /// `rediss://` (TLS, with the `tls` feature), with user and password if needed:
    /// `redis://user:password@host:6379/0`. The connection reconnects in the background
    /// after a failure.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to one Redis server with the given timeouts.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let target = redact_url(url);
        let client = client(url, &options).map_err(|e| {
            scrubbed(
                unavailable(&format!("invalid redis url {target}"), e, Duration::ZERO),
                url,
            )
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout))
            // One connection attempt per reconnect, no backoff loop: during an outage each
            // call fails fast and the guard's circuit breaker takes over.
            .set_number_of_retries(0);
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| {
                let err = unavailable(
                    &format!("cannot connect to {target}"),
                    e,
                    options.connection_timeout,
                );
                scrubbed(err, url)
            })?;
        Ok(RedisStore {
            conn: Conn::Manager(manager),
            target,
            response_timeout: options.response_timeout,
        })
    }

    /// Uses a connection the application already has.
    pub fn from_connection(conn: impl Into<ExistingConnection>) -> Self {
        let (conn, target) = match conn.into() {
            ExistingConnection::Manager(c) => (Conn::Manager(c), "connection manager"),
            ExistingConnection::Multiplexed(c) => (Conn::Multiplexed(c), "multiplexed connection"),
            ExistingConnection::Cluster(c) => (Conn::Cluster(c), "cluster connection"),
        };
        RedisStore {
            conn,
            target: target.to_owned(),
            response_timeout: Duration::ZERO,
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
        let target = format!(
            "cluster {}",
            urls.iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(",")
        );
        if urls.is_empty() {
            return Err(StoreError::InvalidArgument(
                "no cluster node url given".into(),
            ));
        }
        let client = ClusterClient::builder(urls.iter().map(String::as_str))
            .connection_timeout(options.connection_timeout)
            .response_timeout(options.response_timeout)
            .retries(2)
            .build()
            .map_err(|e| {
                let err = unavailable(&format!("invalid cluster urls {target}"), e, Duration::ZERO);
                urls.iter().fold(err, |err, url| scrubbed(err, url))
            })?;
        let conn = client.get_async_connection().await.map_err(|e| {
            let err = unavailable(
                &format!("cannot connect to {target}"),
                e,
                options.connection_timeout,
            );
            urls.iter().fold(err, |err, url| scrubbed(err, url))
        })?;
        Ok(RedisStore {
            conn: Conn::Cluster(conn),
            target,
            response_timeout: options.response_timeout,
        })
    }

    fn error(&self, err: RedisError) -> StoreError {
        unavailable(
            &format!("redis {}", self.target),
            err,
            self.response_timeout,
        )
    }

    /// Where this store points, with any password masked.
    pub fn target(&self) -> &str {
        &self.target
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
            return try_join_all(keys.iter().map(|k| self.try_claim(k, owner, lease))).await;
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
            return try_join_all(
                completions
                    .iter()
                    .map(|c| self.complete(&c.key, &c.owner, c.ttl)),
            )
            .await;
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
            return try_join_all(keys.iter().map(|k| self.release(k, owner))).await;
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
            return try_join_all(keys.iter().map(|k| self.extend(k, owner, lease))).await;
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
    ) -> Result<(Vec<bool>, Claim), StoreError> {
        check_complete_then_claim(completions, key, owner, lease)?;
        if self.is_cluster() {
            // Different slots: the completions and the claim go out at once, on their
            // own nodes; the claim's key is not among the completions, so order is moot.
            let done = join_all(
                completions
                    .iter()
                    .map(|c| self.complete(&c.key, &c.owner, c.ttl)),
            );
            let (done, claim) =
                futures_util::future::join(done, self.try_claim(key, owner, lease)).await;
            let done = done.into_iter().collect::<Result<Vec<_>, _>>()?;
            return Ok((done, claim?));
        }
        let mut codes = self.settle(completions, &[key], owner, lease).await?;
        let claim = claim_from_code(key, codes.pop().unwrap_or_default())?;
        Ok((codes.into_iter().map(|c| c == 1).collect(), claim))
    }

    fn backend_name(&self) -> &'static str {
        "redis"
    }
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
        let mut conn = self.conn.clone();
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
    fn passwords_never_appear_in_redacted_urls() {
        assert_eq!(
            redact_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:s3cret@h:6380"),
            "rediss://user:***@h:6380"
        );
        assert_eq!(redact_url("redis://user@h"), "redis://***@h");
        assert_eq!(redact_url("redis://h:1/2"), "redis://h:1/2");
        assert_eq!(redact_url("nonsense"), "<unparsable url>");
        assert!(!redact_url("redis://u:p@ss:w0rd@h").contains("w0rd"));
    }

    #[test]
    fn errors_are_scrubbed_of_the_password() {
        assert_eq!(password_of("redis://u:pw@h:1/0"), Some("pw"));
        assert_eq!(password_of("redis://u@h"), None);
        assert_eq!(password_of("redis://h"), None);
        let err = StoreError::Unavailable {
            message: "auth failed for pw-123".into(),
            source: Some("bad pw-123".into()),
        };
        let text = format!("{:?}", scrubbed(err, "redis://:pw-123@h"));
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
