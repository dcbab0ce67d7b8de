//! What `PostgresStore::connect*` says when it cannot connect, against real sockets: a
//! closed port (refused at once, not after the pool's acquire timeout), a port that
//! answers HTTP, a port that never answers, a Redis URL and a PostgreSQL URL aimed at
//! Redis, an invalid URL, `sslmode=require` against the local server without TLS, a
//! missing database; and a pool that finds no free connection says how long it waited.

mod support;

use std::time::{Duration, Instant};

use eventonce_core::{IdempotencyStore, StoreError};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PASSWORD: &str = "s3cret-pw";

fn redis_url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A port that answers `HTTP/1.1 400 Bad Request` to anything, then closes.
async fn http_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    port
}

/// A port that accepts connections and never answers.
async fn silent_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

fn options(timeout: Duration) -> PostgresOptions {
    PostgresOptions::default()
        .schema(support::schema())
        .acquire_timeout(timeout)
}

/// Connects to `url` (without migrating) and returns the error's text and how long it took.
async fn refused(url: &str, timeout: Duration) -> (String, Duration) {
    let started = Instant::now();
    let err = PostgresStore::connect_existing(url, options(timeout))
        .await
        .expect_err("the connection must fail");
    let took = started.elapsed();
    let text = format!("{err}");
    let debug = format!("{err:?}");
    assert!(
        !text.contains(PASSWORD) && !debug.contains(PASSWORD),
        "the password leaked: {text} / {debug}"
    );
    assert!(!text.contains("0ns"), "{text}");
    (text, took)
}

fn assert_words(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "{word:?} missing from: {text}");
    }
}

#[tokio::test]
async fn a_closed_port_is_refused_at_once_not_after_the_acquire_timeout() {
    let port = closed_port();
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/test");
    // The acquire timeout is long: a refused connection must not wait for it.
    let (text, took) = refused(&url, Duration::from_secs(5)).await;
    assert_words(
        &text,
        &[
            &format!(
                "cannot connect to PostgreSQL at postgres://postgres:***@127.0.0.1:{port}/test"
            ),
            "connection refused",
            &format!("nothing listens on 127.0.0.1:{port}"),
            "check that PostgreSQL is running",
        ],
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The migrating constructor says the same.
    let err = PostgresStore::connect_with(&url, options(Duration::from_secs(5)))
        .await
        .expect_err("refused");
    assert_eq!(err.to_string(), text);
}

#[tokio::test]
async fn an_http_port_is_not_a_postgresql_server() {
    let port = http_port().await;
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/test");
    let (text, took) = refused(&url, Duration::from_secs(5)).await;
    assert_words(
        &text,
        &[
            &format!(
                "cannot connect to PostgreSQL at postgres://postgres:***@127.0.0.1:{port}/test"
            ),
            "not a PostgreSQL server",
            "is this the right port?",
        ],
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_silent_port_times_out_with_the_target_and_the_real_timeout() {
    let port = silent_port().await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (text, took) = refused(&url, Duration::from_millis(300)).await;
    assert_words(
        &text,
        &[
            &format!("cannot connect to PostgreSQL at {url}"),
            "no answer within 300ms",
            &format!("127.0.0.1:{port} is a PostgreSQL server"),
        ],
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_redis_url_or_a_postgresql_url_aimed_at_redis_is_named_as_such() {
    let redis = redis_url();
    let (text, took) = refused(&redis, Duration::from_secs(5)).await;
    assert_words(
        &text,
        &[
            "invalid PostgreSQL URL redis://",
            "Redis'",
            "expected postgres://",
        ],
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");

    // The real Redis reads the PostgreSQL start-up message as an unfinished command and
    // waits: no answer within the timeout, with the address to check.
    let port = url::Url::parse(&redis)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(6379);
    let aimed = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (text, took) = refused(&aimed, Duration::from_millis(500)).await;
    assert_words(
        &text,
        &[
            &format!("cannot connect to PostgreSQL at {aimed}"),
            &format!("127.0.0.1:{port} is a PostgreSQL server"),
        ],
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn invalid_urls_say_what_is_wrong_with_them() {
    for (url, words) in [
        (
            "not a url".to_owned(),
            vec![
                "invalid PostgreSQL URL not a url",
                "relative URL without a base",
            ],
        ),
        (
            format!("postgres://postgres:{PASSWORD}@127.0.0.1:notaport/test"),
            vec![
                "invalid PostgreSQL URL postgres://***@",
                "invalid port number",
            ],
        ),
        (
            format!("postgres://postgres@127.0.0.1/test?sslmode=sometimes&password={PASSWORD}"),
            vec!["password=***", "sslmode", "sometimes"],
        ),
        (
            "http://127.0.0.1:5432/test".to_owned(),
            vec!["the scheme http:// is not PostgreSQL's"],
        ),
    ] {
        let (text, took) = refused(&url, Duration::from_secs(5)).await;
        assert_words(&text, &words);
        assert_words(&text, &["expected postgres://"]);
        assert!(took < Duration::from_millis(500), "{url}: {took:?}");
    }
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_says_why() {
    let url = format!("{}?sslmode=require", support::url());
    let (text, took) = refused(&url, Duration::from_secs(5)).await;
    assert_words(
        &text,
        &[
            "cannot connect to PostgreSQL at postgres://",
            "sslmode=require",
            "the URL requires TLS",
        ],
    );
    assert!(
        text.contains("no TLS support") || text.contains("does not offer it"),
        "{text}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_missing_database_is_named_with_the_server_s_words() {
    let base = support::url();
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/eventonce_no_such_database"),
        None => panic!("a URL with a database: {base}"),
    };
    let (text, _) = refused(&url, Duration::from_secs(5)).await;
    assert_words(
        &text,
        &[
            "the server refused the connection",
            "eventonce_no_such_database",
            "3D000",
            "check the database name",
        ],
    );
}

#[tokio::test]
async fn a_pool_without_a_free_connection_says_how_long_it_waited() {
    let store = PostgresStore::connect_with(
        &support::url(),
        options(Duration::from_millis(200)).max_connections(1),
    )
    .await
    .expect("connect");
    let held = store.pool().acquire().await.expect("the only connection");
    let err = store
        .get("eventonce:none")
        .await
        .expect_err("no free connection");
    drop(held);
    assert!(
        matches!(err, StoreError::Timeout { timeout, .. } if timeout == Duration::from_millis(200)),
        "{err:?}"
    );
    assert!(err.to_string().contains("200ms"), "{err}");
}
