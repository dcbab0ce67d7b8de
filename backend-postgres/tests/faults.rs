//! The fault matrix against the real PostgreSQL behind a fault-injecting proxy: latency,
//! dropped connections, a black hole, and a server restart (the proxy refuses and drops
//! every connection, then lets them through again: the shared server itself keeps running).

mod support;

use std::sync::Arc;
use std::time::Duration;

use eventonce_postgres::{PostgresOptions, PostgresStore};
use eventonce_testkit::faults::{guards, Matrix, HEADER};
use eventonce_testkit::{FaultProxy, ProxyMode};

const TIMEOUT: Duration = Duration::from_millis(300);
const COOLDOWN: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fault_matrix() {
    // Create the schema and table directly, then talk through the proxy.
    drop(support::store(1).await);
    let proxy = Arc::new(FaultProxy::start(([127, 0, 0, 1], 5432).into()).await);
    let url = format!("postgres://postgres@127.0.0.1:{}/test", proxy.port());
    let mut options = PostgresOptions::default()
        .schema(support::schema())
        .max_connections(4);
    options.acquire_timeout = TIMEOUT;
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect through the proxy");
    let service = format!("faults-{}", std::process::id());
    let (open, closed) = guards(store, &service, TIMEOUT, COOLDOWN);
    let matrix = Matrix {
        backend: "postgres",
        open: &open,
        closed: &closed,
        proxy: &proxy,
        timeout: TIMEOUT,
        cooldown: COOLDOWN,
    };
    let (p1, p2) = (Arc::clone(&proxy), Arc::clone(&proxy));
    let rows = matrix
        .run(
            move || {
                p1.set(ProxyMode::Refuse);
                p1.drop_connections();
            },
            move || p2.set(ProxyMode::Pass),
        )
        .await;
    println!("\n{HEADER}\n{}", rows.join("\n"));
}
