//! A store refuses a Redis server that would lose its records: one that evicts keys under
//! memory pressure (unless the application accepts it, loudly), and a read-only replica.
//! Each test runs its own `redis-server` on a free loopback port, configured at start.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventonce_core::{IdempotencyStore, StoreError};
use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::RedisProcess;

const LEASE: Duration = Duration::from_secs(30);

/// The log lines written while the returned guard lives (this thread only).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

fn assert_words(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "{word:?} missing from: {text}");
    }
}

fn evicting_server() -> RedisProcess {
    RedisProcess::start_with(
        &["--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"],
        false,
    )
}

#[tokio::test]
async fn an_evicting_server_is_refused_at_connect_with_the_setting_and_the_fix() {
    let server = evicting_server();
    let err = RedisStore::connect(&server.url())
        .await
        .expect_err("a server with maxmemory-policy volatile-lru must be refused");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert_words(
        &err.to_string(),
        &[
            "refusing the Redis server at redis://127.0.0.1:",
            "maxmemory-policy volatile-lru",
            "set `maxmemory-policy noeviction`",
            "RedisOptions::allow_eviction",
        ],
    );
    // A lazily connected store refuses it at its first call, and at every call after.
    let lazy = RedisStore::connect_lazy(&server.url()).expect("lazy");
    for _ in 0..2 {
        let err = lazy
            .try_claim("fitness:lazy", "o", LEASE)
            .await
            .expect_err("refused at the first call");
        assert_words(&err.to_string(), &["maxmemory-policy volatile-lru"]);
    }
}

#[tokio::test]
async fn an_evicting_server_is_accepted_with_allow_eviction_and_a_warning() {
    let server = evicting_server();
    let (logs, _guard) = capture();
    let store = RedisStore::connect_with(&server.url(), RedisOptions::default().allow_eviction())
        .await
        .expect("accepted when allowed");
    assert_words(
        &logs.text(),
        &[
            "WARN",
            "REDIS_EVICTION_ACCEPTED",
            "maxmemory-policy volatile-lru",
        ],
    );
    let report = store.server_report().await.expect("report");
    assert_eq!(report.eviction_policy.as_deref(), Some("volatile-lru"));
    assert_eq!(report.role.as_deref(), Some("master"));
}

#[tokio::test]
async fn a_noeviction_primary_is_accepted_without_a_word() {
    let server = RedisProcess::start_with(
        &["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"],
        false,
    );
    let (logs, _guard) = capture();
    let store = RedisStore::connect(&server.url()).await.expect("connect");
    store
        .try_claim("fitness:ok", "o", LEASE)
        .await
        .expect("claim");
    assert_eq!(logs.text(), "");
    let report = store.server_report().await.expect("report");
    assert_eq!(
        (report.eviction_policy.as_deref(), report.role.as_deref()),
        (Some("noeviction"), Some("master"))
    );
}

#[tokio::test]
async fn a_replica_is_refused_at_connect() {
    let primary = RedisProcess::start();
    let port = primary.port.to_string();
    let replica = RedisProcess::start_with(&["--replicaof", "127.0.0.1", &port], false);
    let err = RedisStore::connect(&replica.url())
        .await
        .expect_err("a replica must be refused");
    assert_words(
        &err.to_string(),
        &[
            "refusing the Redis server at",
            "read-only replica (role slave)",
            "point the URL at the primary",
        ],
    );
    // Even when eviction is allowed: a replica is never fit.
    let err = RedisStore::connect_with(&replica.url(), RedisOptions::default().allow_eviction())
        .await
        .expect_err("a replica must be refused");
    assert_words(&err.to_string(), &["read-only replica"]);
    RedisStore::connect(&primary.url())
        .await
        .expect("the primary is fine");
}

#[tokio::test]
async fn keys_the_server_evicts_are_logged_and_counted() {
    let server = RedisProcess::start_with(
        &["--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru"],
        false,
    );
    let (logs, _guard) = capture();
    let store = RedisStore::connect_with(&server.url(), RedisOptions::default().allow_eviction())
        .await
        .expect("accepted when allowed");
    let before = store.server_report().await.expect("report").evicted_keys;
    assert_eq!(before, Some(0));
    let mut raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let mut pipe = redis::pipe();
    for i in 0..4000 {
        pipe.set(format!("fitness:fill:{i}"), "x".repeat(1024))
            .ignore();
    }
    pipe.query_async::<()>(&mut raw).await.expect("filled");
    let after = store
        .server_report()
        .await
        .expect("report")
        .evicted_keys
        .unwrap_or(0);
    assert!(after > 0, "nothing was evicted");
    assert_words(
        &logs.text(),
        &[
            "ERROR",
            "REDIS_EVICTING",
            &format!("evicted {after} key(s) since the last check"),
        ],
    );
}

#[tokio::test]
async fn a_server_whose_acl_refuses_info_is_accepted_with_a_warning() {
    let server = RedisProcess::start_with(
        &[
            "--user",
            "default",
            "off",
            "--user",
            "eventonce",
            "on",
            ">acl-pw",
            "~fitness:*",
            "resetchannels",
            "-@all",
            "+@read",
            "+@write",
            "+@scripting",
        ],
        false,
    );
    let (logs, _guard) = capture();
    let url = format!("redis://eventonce:acl-pw@127.0.0.1:{}", server.port);
    let store = RedisStore::connect(&url).await.expect("connect");
    store
        .try_claim("fitness:acl", "o", LEASE)
        .await
        .expect("claim");
    assert_words(
        &logs.text(),
        &[
            "WARN",
            "REDIS_UNCHECKED",
            "did not say its maxmemory-policy",
            "did not say whether it is a primary",
        ],
    );
    assert!(!logs.text().contains("acl-pw"), "{}", logs.text());
}
