//! What `RedisStore::connect` says when it cannot connect, against real sockets: a
//! closed port, a port that answers HTTP, a port that never answers, invalid URLs and a
//! server that wants a password. Each message names the target (password masked), the
//! cause and what to check; a refused connection fails at once.

use std::time::{Duration, Instant};

use eventonce_core::StoreError;
use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::RedisProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PASSWORD: &str = "s3cret-pw";

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

/// Connects to `url` and returns the error's text and how long it took.
async fn refused(url: &str, options: RedisOptions) -> (String, Duration) {
    let started = Instant::now();
    let err = RedisStore::connect_with(url, options)
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
async fn a_closed_port_is_refused_at_once_and_named() {
    let port = closed_port();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/0");
    let (text, took) = refused(&url, RedisOptions::default()).await;
    assert_words(
        &text,
        &[
            &format!("cannot connect to Redis at redis://:***@127.0.0.1:{port}/0"),
            "connection refused",
            &format!("nothing listens on 127.0.0.1:{port}"),
            "check that Redis is running",
        ],
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn an_http_port_is_not_a_redis_server() {
    let port = http_port().await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let (text, took) = refused(&url, RedisOptions::default()).await;
    assert_words(
        &text,
        &[
            &format!("cannot connect to Redis at redis://:***@127.0.0.1:{port}"),
            "not a Redis server",
            "is this the right port?",
        ],
    );
    assert!(
        !text.contains("Unexpected"),
        "one line, not the parser's bytes: {text}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_silent_port_times_out_with_the_target_and_the_timeout() {
    let port = silent_port().await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let timeout = Duration::from_millis(300);
    let (text, took) = refused(&url, RedisOptions::default().timeouts(timeout, timeout)).await;
    assert_words(
        &text,
        &[
            &format!("cannot connect to Redis at redis://:***@127.0.0.1:{port}"),
            "no answer within 300ms",
            &format!("127.0.0.1:{port} is a Redis server"),
        ],
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn invalid_urls_say_what_is_wrong_with_them() {
    let cases = [
        (
            "not a url",
            vec!["invalid Redis URL not a url", "relative URL without a base"],
        ),
        (
            "redis://:s3cret-pw@127.0.0.1:notaport",
            vec![
                "invalid Redis URL redis://***@127.0.0.1:notaport",
                "invalid port number",
            ],
        ),
        (
            "redis://default:s3cret-pw/Ab?c#d@127.0.0.1:6379",
            vec![
                "invalid Redis URL redis://***@127.0.0.1:6379",
                "the password holds `/`, `?` or `#` unescaped",
                "percent-encode them in the URL (%2F, %3F, %23)",
            ],
        ),
        (
            "postgres://app:s3cret-pw@127.0.0.1:5432/app",
            vec!["the scheme postgres:// is not Redis'", "PostgreSQL URL"],
        ),
        (
            "redis://127.0.0.1:6379/zero",
            vec!["the path /zero is not a database number"],
        ),
        ("redis://", vec!["invalid Redis URL redis://"]),
    ];
    for (url, words) in cases {
        let (text, took) = refused(url, RedisOptions::default()).await;
        assert_words(&text, &words);
        assert_words(&text, &["expected redis://"]);
        assert!(took < Duration::from_millis(500), "{url}: {took:?}");
        // The lazy constructor refuses the same URLs, without waiting for anything.
        let lazy = RedisStore::connect_lazy(url).expect_err("invalid");
        assert_eq!(lazy.to_string(), text);
    }
}

#[tokio::test]
async fn a_password_protected_server_asks_for_the_password_or_refuses_a_wrong_one() {
    let server = RedisProcess::start_with(&["--requirepass", PASSWORD], false);
    let (text, _) = refused(&server.url(), RedisOptions::default()).await;
    assert_words(&text, &["the server wants a password", "NOAUTH"]);
    let wrong = format!("redis://:wrong-{PASSWORD}@127.0.0.1:{}", server.port);
    let (text, _) = refused(&wrong, RedisOptions::default()).await;
    assert_words(
        &text,
        &["authentication failed", "check the user and password"],
    );
    assert!(!text.contains("wrong-"), "{text}");
}

#[tokio::test]
async fn a_lazy_store_reports_the_cause_on_each_call() {
    let port = closed_port();
    let store = RedisStore::connect_lazy(&format!("redis://:{PASSWORD}@127.0.0.1:{port}"))
        .expect("a valid URL");
    let err = eventonce_core::IdempotencyStore::get(&store, "k")
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert_words(&text, &["connection refused", &format!("127.0.0.1:{port}")]);
}
