//! The shared conformance suite against a real 3-master / 3-replica Redis Cluster on
//! loopback: `REDIS_CLUSTER_URL` (comma-separated node URLs, as `make redis-cluster`
//! prints it), or, when unset, the cluster `scripts/redis-cluster.sh start` starts or finds.

use std::sync::OnceLock;

use eventonce_core::conformance::StoreFactory;
use eventonce_redis::RedisStore;

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

async fn factory() -> impl StoreFactory {
    let urls = cluster_urls();
    move || {
        let urls = urls.clone();
        async move {
            RedisStore::connect_cluster(&urls)
                .await
                .unwrap_or_else(|e| panic!("the conformance suite needs the Redis Cluster: {e}"))
        }
    }
}

eventonce_core::conformance_tests!(factory);

#[tokio::test]
async fn keys_spread_over_every_master() {
    let urls = cluster_urls();
    let store = RedisStore::connect_cluster(&urls).await.expect("cluster");
    use eventonce_core::IdempotencyStore;
    let lease = std::time::Duration::from_secs(30);
    let mut masters_used = std::collections::HashSet::new();
    let mut raw = redis::cluster::ClusterClient::new(urls.clone())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connect");
    for i in 0..64 {
        let key = eventonce_core::conformance::unique_key(&format!("spread-{i}"));
        store.try_claim(&key, "o", lease).await.expect("claim");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("keyslot");
        masters_used.insert(slot / 5462);
    }
    assert_eq!(
        masters_used.len(),
        3,
        "64 keys all landed on {masters_used:?}"
    );
}

/// Connecting to a cluster reads `INFO` from every primary: a cluster of `noeviction`
/// primaries is accepted, and the report sums their evictions.
#[tokio::test]
async fn every_primary_is_checked_at_connect() {
    let store = RedisStore::connect_cluster(&cluster_urls())
        .await
        .expect("cluster");
    let report = store.server_report().await.expect("report");
    assert_eq!(report.eviction_policy.as_deref(), Some("noeviction"));
    assert_eq!(report.role.as_deref(), Some("master"));
    assert!(report.evicted_keys.is_some(), "{report:?}");
}
