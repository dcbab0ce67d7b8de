//! The fault matrix against a real Redis behind a fault-injecting proxy: latency, dropped
//! connections, a black hole, and the server restarted on the same port.

use std::time::Duration;

use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::faults::{guards, Matrix, HEADER};
use eventonce_testkit::{FaultProxy, RedisProcess};

const TIMEOUT: Duration = Duration::from_millis(300);
const COOLDOWN: Duration = Duration::from_millis(500);

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
    let service = format!("faults-{}", std::process::id());
    let (open, closed) = guards(store, &service, TIMEOUT, COOLDOWN);
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
