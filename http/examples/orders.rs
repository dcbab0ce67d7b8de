//! An orders service behind the Idempotency-Key layer.
//!
//! ```text
//! cargo run -p eventonce-http --example orders -- --listen 127.0.0.1:8080 --redis redis://127.0.0.1:6379
//! ```
//!
//! (the memory store when `--redis` is absent; `--lease-ms N` sets the claim's lease,
//! `--service NAME` the service its keys are recorded under). `POST /orders` creates an order from its
//! JSON body and requires an `Idempotency-Key`; `?delay_ms=N` makes the handler sleep N ms
//! first, so that a concurrent retry can be shown; `GET /orders/count` answers how many
//! orders the handler actually created.
//!
//! ```text
//! curl -i -X POST localhost:8080/orders -H 'Idempotency-Key: "order-1"' -d '{"sku":"a"}'
//! curl -i -X POST localhost:8080/orders -H 'Idempotency-Key: "order-1"' -d '{"sku":"a"}'  # replayed
//! curl localhost:8080/orders/count                                                         # 1
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
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

#[derive(serde::Deserialize)]
struct Delay {
    delay_ms: Option<u64>,
}

async fn create(
    State(created): State<Arc<AtomicU64>>,
    Query(delay): Query<Delay>,
    body: Bytes,
) -> axum::response::Response {
    if let Some(ms) = delay.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return (StatusCode::BAD_REQUEST, "the body is not JSON").into_response();
    }
    let id = created.fetch_add(1, Ordering::SeqCst) + 1;
    let order = format!(
        r#"{{"order":{id},"request":{}}}"#,
        String::from_utf8_lossy(&body)
    );
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        order,
    )
        .into_response()
}

async fn count(State(created): State<Arc<AtomicU64>>) -> String {
    created.load(Ordering::SeqCst).to_string()
}

/// `--name value` of the command line.
fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != name);
    args.next()?;
    args.next()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = flag("--listen").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let store: Arc<dyn IdempotencyStore> = match flag("--redis") {
        Some(url) => Arc::new(eventonce_redis::RedisStore::connect(&url).await?),
        None => Arc::new(eventonce_memory::MemoryStore::new()),
    };
    let service = flag("--service").unwrap_or_else(|| "orders-example".to_owned());
    let mut config = IdempotencyConfig::builder(service);
    if let Some(ms) = flag("--lease-ms") {
        config = config.lease(Duration::from_millis(ms.parse()?));
    }
    let config = config.build()?;
    let layer = IdempotencyLayer::new(Guard::from_arc(store, config)).require_key(true);
    let created = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/orders", post(create).layer(layer))
        .route("/orders/count", get(count))
        .with_state(created);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "orders example listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
