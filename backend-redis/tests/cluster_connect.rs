//! Connecting to a Redis Cluster: a failure names the nodes' host:port and the cause, as
//! the single-server store's does; and a lazy cluster store starts while the cluster is
//! down (every call fails fast with the cause) and works once the nodes answer. Against
//! closed loopback ports and the real cluster (`REDIS_CLUSTER_URL`, or the one
//! `scripts/redis-cluster.sh start` starts or finds).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use eventonce_core::{Claim, IdempotencyStore, StoreError};
use eventonce_redis::{RedisOptions, RedisStore};

const PASSWORD: &str = "s3cret-pw";

fn cluster_urls() -> Vec<String> {
    static URLS: OnceLock<String> = OnceLock::new();
    let urls = URLS.get_or_init(|| {
        if let Ok(urls) = std::env::var("REDIS_CLUSTER_URL") {
            return urls;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-cluster.sh");
        let out = std::process::Command::new("bash")
            .args([script, "start"])
            .output()
            .expect("scripts/redis-cluster.sh runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "starting the Redis Cluster failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("REDIS_CLUSTER_URL="))
            .expect("the script prints REDIS_CLUSTER_URL=")
            .to_owned()
    });
    urls.split(',').map(str::to_owned).collect()
}

/// Loopback ports nothing listens on: bound, then released.
fn closed_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

fn urls_of(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("redis://:{PASSWORD}@127.0.0.1:{p}"))
        .collect()
}

fn assert_words(text: &str, words: &[&str]) {
    for word in words {
        assert!(text.contains(word), "{word:?} missing from: {text}");
    }
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
}

#[tokio::test]
async fn a_cluster_that_cannot_be_reached_names_every_node_and_the_cause() {
    let ports = closed_ports(2);
    let started = Instant::now();
    let err = RedisStore::connect_cluster(urls_of(&ports))
        .await
        .expect_err("nothing listens");
    let text = format!("{err}");
    println!("{text}");
    assert_words(
        &text,
        &[
            "cannot connect to Redis at cluster redis://:***@127.0.0.1:",
            "connection refused",
            &format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]),
            "check that Redis is running",
        ],
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lazy_cluster_store_starts_while_the_cluster_is_down_and_each_call_fails_fast() {
    let ports = closed_ports(3);
    let store = RedisStore::connect_cluster_lazy(urls_of(&ports)).expect("valid URLs");
    for _ in 0..2 {
        let started = Instant::now();
        let err = store.get("eventonce:lazy-cluster").await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        let text = format!("{err} {err:?}");
        println!("{err}");
        assert_words(
            &text,
            &["connection refused", &format!("127.0.0.1:{}", ports[0])],
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // An invalid URL is refused at once, as by the eager constructor.
    let err =
        RedisStore::connect_cluster_lazy(["postgres://127.0.0.1:5432/db"]).expect_err("not Redis");
    assert_words(&err.to_string(), &["invalid Redis URL", "PostgreSQL URL"]);
    assert!(RedisStore::connect_cluster_lazy(Vec::<String>::new()).is_err());
}

#[tokio::test]
async fn a_lazy_cluster_store_connects_on_first_use_and_works() {
    let urls = cluster_urls();
    let store =
        RedisStore::connect_cluster_lazy_with(&urls, RedisOptions::default()).expect("valid URLs");
    let key = format!("eventonce:lazy-cluster:{}", std::process::id());
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.try_claim(&key, "o", lease).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.complete(&key, "o", lease).await.expect("complete"));
    assert_eq!(
        store
            .try_claim(&key, "p", lease)
            .await
            .expect("claim again"),
        Claim::Completed
    );
    assert!(
        store.target().starts_with("cluster redis://127.0.0.1:"),
        "{}",
        store.target()
    );
}
