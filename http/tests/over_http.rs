//! The layer over real HTTP: an axum server on loopback, a hyper client, and each store
//! (memory, the Redis at `EVENTONCE_REDIS_URL` and the PostgreSQL at
//! `EVENTONCE_POSTGRES_URL`, defaults on 127.0.0.1).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use eventonce_core::{Guard, IdempotencyConfig, IdempotencyStore};
use eventonce_http::IdempotencyLayer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Default)]
struct Orders {
    created: AtomicU64,
    fail_next: AtomicBool,
}

#[derive(serde::Deserialize)]
struct Delay {
    delay_ms: Option<u64>,
}

async fn create(
    State(orders): State<Arc<Orders>>,
    Query(delay): Query<Delay>,
    body: Bytes,
) -> axum::response::Response {
    if let Some(ms) = delay.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if orders.fail_next.swap(false, Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
    }
    let id = orders.created.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!(
        r#"{{"order":{id},"request":{}}}"#,
        String::from_utf8_lossy(&body)
    );
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/json"),
            ("x-order-id", &id.to_string()),
        ],
        body,
    )
        .into_response()
}

async fn count(State(orders): State<Arc<Orders>>) -> String {
    orders.created.load(Ordering::SeqCst).to_string()
}

struct Server {
    base: String,
    orders: Arc<Orders>,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: u16,
    replayed: bool,
    order_id: Option<String>,
    body: Bytes,
}

impl Server {
    async fn start(store: impl IdempotencyStore + 'static) -> Server {
        Self::start_with(store, |config| config, |layer| layer).await
    }

    async fn start_with(
        store: impl IdempotencyStore + 'static,
        configure: impl FnOnce(eventonce_core::ConfigBuilder) -> eventonce_core::ConfigBuilder,
        layered: impl FnOnce(IdempotencyLayer) -> IdempotencyLayer,
    ) -> Server {
        let service = format!(
            "http-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let config = configure(IdempotencyConfig::builder(service))
            .build()
            .expect("config");
        let layer = layered(IdempotencyLayer::new(Guard::new(store, config)).require_key(true));
        let orders = Arc::new(Orders::default());
        let app = Router::new()
            .route("/orders", post(create).layer(layer))
            .route("/orders/count", get(count))
            .with_state(Arc::clone(&orders));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Server {
            base,
            orders,
            client,
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &str) -> Reply {
        let mut request = http::Request::post(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", format!("\"{key}\""));
        }
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let response = self.client.request(request).await.expect("response");
        let (parts, body) = response.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Reply {
            status: parts.status.as_u16(),
            replayed: header("idempotent-replayed").as_deref() == Some("true"),
            order_id: header("x-order-id"),
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    fn created(&self) -> u64 {
        self.orders.created.load(Ordering::SeqCst)
    }
}

fn key(name: &str) -> String {
    format!(
        "{name}-{}",
        eventonce_core::conformance::unique_service("k")
    )
}

async fn replays_the_first_response_byte_for_byte(server: &Server) {
    let k = key("replay");
    let first = server.post("/orders", Some(&k), r#"{"sku":"a"}"#).await;
    assert_eq!((first.status, first.replayed), (201, false));
    let again = server.post("/orders", Some(&k), r#"{"sku":"a"}"#).await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body, "the replayed body differs");
    assert_eq!(again.order_id, first.order_id);
    assert_eq!(server.created(), 1);
}

async fn refuses_a_key_reused_for_another_request(server: &Server) {
    let k = key("reuse");
    let first = server.post("/orders", Some(&k), r#"{"sku":"a"}"#).await;
    assert_eq!(first.status, 201);
    let other = server.post("/orders", Some(&k), r#"{"sku":"b"}"#).await;
    assert_eq!(other.status, 422, "{:?}", other.body);
    let other_query = server.post("/orders?x=1", Some(&k), r#"{"sku":"a"}"#).await;
    assert_eq!(other_query.status, 422);
    assert_eq!(server.created(), 1);
}

async fn requires_a_key(server: &Server) {
    let reply = server.post("/orders", None, r#"{"sku":"a"}"#).await;
    assert_eq!(reply.status, 400);
    assert!(String::from_utf8_lossy(&reply.body).contains("Idempotency-Key"));
    let reply = server.post("/orders", Some(""), r#"{"sku":"a"}"#).await;
    assert_eq!(reply.status, 400);
    assert_eq!(server.created(), 0);
}

async fn answers_409_while_the_first_request_runs(server: &Arc<Server>) {
    let k = key("inflight");
    let slow = {
        let (server, k) = (Arc::clone(server), k.clone());
        tokio::spawn(async move { server.post("/orders?delay_ms=700", Some(&k), "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let retry = server.post("/orders?delay_ms=700", Some(&k), "{}").await;
    assert_eq!(retry.status, 409, "{:?}", retry.body);
    let first = slow.await.expect("the first request");
    assert_eq!(first.status, 201);
    let after = server.post("/orders?delay_ms=700", Some(&k), "{}").await;
    assert_eq!((after.status, after.replayed), (201, true));
    assert_eq!(server.created(), 1);
}

async fn does_not_store_a_5xx(server: &Server) {
    let k = key("5xx");
    server.orders.fail_next.store(true, Ordering::SeqCst);
    let failed = server.post("/orders", Some(&k), "{}").await;
    assert_eq!((failed.status, failed.replayed), (503, false));
    let retry = server.post("/orders", Some(&k), "{}").await;
    assert_eq!(
        (retry.status, retry.replayed),
        (201, false),
        "the retry after a 5xx runs again"
    );
    assert_eq!(server.created(), 1);
}

async fn concurrent_retries_create_one_order(server: &Arc<Server>) {
    let k = key("burst");
    let retries: Vec<_> = (0..200)
        .map(|_| {
            let (server, k) = (Arc::clone(server), k.clone());
            tokio::spawn(async move { server.post("/orders?delay_ms=50", Some(&k), "{}").await })
        })
        .collect();
    let mut fresh = 0;
    for retry in retries {
        let reply = retry.await.expect("a retry");
        match (reply.status, reply.replayed) {
            (201, false) => fresh += 1,
            (201, true) | (409, _) => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one retry ran");
    assert_eq!(server.created(), 1, "orders created");
}

/// A client that sends a request and hangs up before the answer leaves no stuck claim:
/// once the first run's time is over, a retry gets 201 (fresh, or the stored response)
/// and exactly one order exists.
async fn a_client_that_disconnects_leaves_no_stuck_claim(server: &Server) {
    use tokio::io::AsyncWriteExt;
    let k = key("disconnect");
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "POST /orders?delay_ms=300 HTTP/1.1\r\nhost: {address}\r\nidempotency-key: \"{k}\"\r\n\
         content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let retry = server.post("/orders?delay_ms=300", Some(&k), "{}").await;
    assert_eq!(retry.status, 201, "{:?}", retry.body);
    assert_eq!(server.created(), 1, "orders created");
}

async fn all(server: Server) {
    let server = Arc::new(server);
    replays_the_first_response_byte_for_byte(&server).await;
    server.orders.created.store(0, Ordering::SeqCst);
    refuses_a_key_reused_for_another_request(&server).await;
    server.orders.created.store(0, Ordering::SeqCst);
    requires_a_key(&server).await;
    answers_409_while_the_first_request_runs(&server).await;
    server.orders.created.store(0, Ordering::SeqCst);
    does_not_store_a_5xx(&server).await;
    server.orders.created.store(0, Ordering::SeqCst);
    concurrent_retries_create_one_order(&server).await;
    server.orders.created.store(0, Ordering::SeqCst);
    a_client_that_disconnects_leaves_no_stuck_claim(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_layer_over_http_on_memory() {
    all(Server::start(eventonce_memory::MemoryStore::new()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_layer_over_http_on_redis() {
    let url =
        std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = eventonce_redis::RedisStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("this test needs Redis at {url}: {e}"));
    all(Server::start(store).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_layer_over_http_on_postgres() {
    let url = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("eventonce_http_{}", std::process::id());
    let options = eventonce_postgres::PostgresOptions::default()
        .schema(&schema)
        .max_connections(10);
    let store = eventonce_postgres::PostgresStore::connect_with(&url, options)
        .await
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL at {url}: {e}"));
    let pool = store.pool().clone();
    all(Server::start(store).await).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await;
}

/// A response too large to keep completes the request without it: a retry is answered
/// `409` (processed, response not kept), never run again. A request body over the layer's
/// limit is `413`, and the route never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_the_stored_response_and_the_request_body() {
    let server = Server::start_with(
        eventonce_memory::MemoryStore::new(),
        |config| config.max_result_bytes(200),
        |layer| layer.max_body_bytes(1000),
    )
    .await;
    let k = key("big");
    let body = format!(r#"{{"note":"{}"}}"#, "x".repeat(300));
    let first = server.post("/orders", Some(&k), &body).await;
    assert_eq!((first.status, first.replayed), (201, false));
    let retry = server.post("/orders", Some(&k), &body).await;
    assert_eq!(retry.status, 409, "{:?}", retry.body);
    assert!(String::from_utf8_lossy(&retry.body).contains("not kept"));
    assert_eq!(server.created(), 1);

    let huge = format!(r#"{{"note":"{}"}}"#, "x".repeat(2000));
    let refused = server.post("/orders", Some(&key("huge")), &huge).await;
    assert_eq!(refused.status, 413, "{:?}", refused.body);
    assert_eq!(server.created(), 1, "the route never ran");
}
