//! A server killed in the middle of a request (the example server, `--redis`): its claim
//! blocks retries until its lease is over, then one retry creates the order, once.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The example, built beside this test by `cargo test`; built here only when it is missing
/// or older than its source (`cargo test --test killed_server` alone does not build it).
fn build_example() -> std::path::PathBuf {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/orders.rs");
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let binary = example();
    if modified(&binary).is_none() || modified(&binary) < modified(&source) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let built = Command::new(cargo)
            .args(["build", "-p", "eventonce-http", "--example", "orders"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "the example builds");
    }
    binary
}

/// The example binary, beside this test.
fn example() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let debug = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/debug");
    debug.join("examples").join("orders")
}

/// The example's process, killed when dropped (a failed assertion leaves none behind).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The one request of the test, every time: the same method, path, query and body.
const PATH: &str = "/orders?delay_ms=1000";

fn start(port: u16, service: &str) -> Server {
    let url =
        std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--redis",
        &url,
        "--lease-ms",
        "1500",
        "--service",
        service,
    ];
    let child = Command::new(example())
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("the example {:?} runs: {e}", example()));
    Server(child)
}

async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the example never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(port: u16, path: &str, key: &str) -> Result<(u16, bool, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
        .header("Idempotency-Key", format!("\"{key}\""))
        .body(Full::new(Bytes::from_static(b"{\"sku\":\"a\"}")))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        replayed,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

async fn count(port: u16) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://127.0.0.1:{port}/orders/count");
    let response = client.get(uri.parse().expect("uri")).await.expect("count");
    let body = response.into_body().collect().await.expect("body");
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_request_runs_the_retry_once_after_the_lease() {
    build_example();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let service = format!("killed-{}-{port}", std::process::id());
    let key = format!("order-{}", std::process::id());
    let mut first = start(port, &service);
    wait_listening(port).await;
    let slow = tokio::spawn({
        let key = key.clone();
        async move { post(port, PATH, &key).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.0.kill().expect("kill the server");
    let _ = first.0.wait();
    assert!(
        slow.await.expect("the request").is_err(),
        "the killed server answered"
    );
    let killed_at = Instant::now();

    let _second = start(port, &service);
    wait_listening(port).await;
    let early = post(port, PATH, &key).await.expect("a retry");
    assert_eq!(
        early.0, 409,
        "the dead server's claim holds until its lease ends: {early:?}"
    );
    assert_eq!(count(port).await, "0");

    let lease_over = killed_at + Duration::from_millis(1700);
    tokio::time::sleep(lease_over.saturating_duration_since(Instant::now())).await;
    let retry = post(port, PATH, &key).await.expect("a retry");
    assert_eq!((retry.0, retry.1), (201, false), "{retry:?}");
    let again = post(port, PATH, &key).await.expect("a retry");
    assert_eq!((again.0, again.1, &again.2), (201, true, &retry.2));
    assert_eq!(count(port).await, "1", "orders created");
}
