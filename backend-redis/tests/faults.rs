//! The fault matrix against a real Redis behind a fault-injecting proxy: latency, dropped
//! connections, a black hole, and the server restarted on the same port.

use std::time::Duration;

use eventonce_core::{FailMode, Guard, IdempotencyConfig};
use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::faults::{Matrix, HEADER};
use eventonce_testkit::{FaultProxy, RedisProcess};

const TIMEOUT: Duration = Duration::from_millis(300);
const COOLDOWN: Duration = Duration::from_millis(500);

fn guard(store: &RedisStore, mode: FailMode) -> Guard {
    let config = IdempotencyConfig::builder(format!("faults-{}", std::process::id()))
        .store_timeout(TIMEOUT)
        .circuit_breaker(3, COOLDOWN)
        .processing_ttl(Duration::from_secs(2))
        .on_store_error(mode)
        .build()
        .expect("config");
    Guard::new(store.clone(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fault_matrix() {
    let server = std::sync::Arc::new(std::sync::Mutex::new(RedisProcess::start()));
    let port = server.lock().expect("lock").port;
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await;
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let options = RedisOptions::default().timeouts(TIMEOUT, TIMEOUT);
    let store = RedisStore::connect_with(&url, options)
        .await
        .expect("connect through the proxy");
    let (open, closed) = (
        guard(&store, FailMode::Open),
        guard(&store, FailMode::Closed),
    );
    let matrix = Matrix {
        backend: "redis",
        open: &open,
        closed: &closed,
        proxy: &proxy,
        timeout: TIMEOUT,
        cooldown: COOLDOWN,
    };
    let (s1, s2) = (server.clone(), server.clone());
    let rows = matrix
        .run(
            move || s1.lock().expect("lock").kill(),
            move || s2.lock().expect("lock").restart(),
        )
        .await;
    println!("\n{HEADER}\n{}", rows.join("\n"));
}
