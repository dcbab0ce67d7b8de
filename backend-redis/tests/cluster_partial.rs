//! Batches on a real 3-master Redis Cluster with one master refusing writes
//! (`CONFIG SET maxmemory 1` under `noeviction`: every write answers OOM): a failing shard
//! fails its own keys only. Batch claims release what they acquired before reporting the
//! failure, batch completions answer per key without cancelling the healthy shards, and
//! `complete_then_claim` keeps the claim it got whatever became of the completions. The
//! guard on top retries exactly the completions that failed.
//!
//! One test function: the cluster is shared, and a master refusing writes must not meet
//! another test of this binary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::{
    Claim, Completion, EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, Outcome,
    RecordState, StoreError,
};
use eventonce_redis::RedisStore;

fn cluster_urls() -> Vec<String> {
    let urls = match std::env::var("REDIS_CLUSTER_URL") {
        Ok(urls) => urls,
        Err(_) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-cluster.sh");
            let out = std::process::Command::new("bash")
                .args([script, "start"])
                .output()
                .expect("scripts/redis-cluster.sh runs");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            stdout
                .lines()
                .find_map(|l| l.strip_prefix("REDIS_CLUSTER_URL="))
                .unwrap_or_else(|| panic!("the script prints REDIS_CLUSTER_URL=: {stdout}"))
                .to_owned()
        }
    };
    urls.split(',').map(str::to_owned).collect()
}

async fn node(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("a cluster node")
}

/// The masters as `host:port` with their slot ranges.
async fn masters(url: &str) -> Vec<(String, Vec<(u16, u16)>)> {
    let mut c = node(url).await;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut c)
        .await
        .expect("CLUSTER NODES");
    nodes
        .lines()
        .filter(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("master")))
        .map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let addr = fields[1].split('@').next().unwrap_or_default().to_owned();
            let ranges = fields[8..]
                .iter()
                .filter_map(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            (addr, ranges)
        })
        .collect()
}

/// A master made to refuse every write until dropped.
struct Refusing(String);

impl Refusing {
    async fn start(addr: &str) -> Refusing {
        let mut c = node(&format!("redis://{addr}")).await;
        for (k, v) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(k)
                .arg(v)
                .query_async(&mut c)
                .await
                .expect("CONFIG SET");
        }
        Refusing(addr.to_owned())
    }
}

impl Drop for Refusing {
    fn drop(&mut self) {
        let port = self.0.rsplit(':').next().unwrap_or_default().to_owned();
        let _ = std::process::Command::new("redis-cli")
            .args(["-p", &port, "CONFIG", "SET", "maxmemory", "0"])
            .output();
    }
}

/// `n` keys under `prefix` whose slots the master `on` serves, and `n` that it does not.
async fn keys_split(
    url: &str,
    masters: &[(String, Vec<(u16, u16)>)],
    on: &str,
    prefix: &str,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let mut c = node(url).await;
    let ranges: HashMap<&str, &Vec<(u16, u16)>> =
        masters.iter().map(|(a, r)| (a.as_str(), r)).collect();
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for i in 0.. {
        if inside.len() >= n && outside.len() >= n {
            break;
        }
        let key = format!("{prefix}:{i}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut c)
            .await
            .expect("CLUSTER KEYSLOT");
        let mine = ranges[on].iter().any(|&(a, b)| (a..=b).contains(&slot));
        match mine {
            true if inside.len() < n => inside.push(key),
            false if outside.len() < n => outside.push(key),
            _ => {}
        }
    }
    (inside, outside)
}

async fn states(store: &RedisStore, keys: &[String]) -> Vec<Option<RecordState>> {
    let mut out = Vec::new();
    for key in keys {
        out.push(store.get(key).await.expect("get").map(|r| r.state));
    }
    out
}

const LEASE: Duration = Duration::from_secs(300);
const TTL: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_failing_shard_fails_its_own_keys_only() {
    let urls = cluster_urls();
    let store = RedisStore::connect_cluster(&urls).await.expect("cluster");
    let masters = masters(&urls[0]).await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let bad = masters[0].0.clone();
    let run = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let prefix = format!("eventonce-test:partial:{run}:{nanos}");

    // 1. A batch claim meeting a failing shard releases the claims it got elsewhere.
    let (on_bad, on_good) = keys_split(&urls[0], &masters, &bad, &format!("{prefix}:a"), 4).await;
    let batch: Vec<String> = on_bad.iter().chain(&on_good).cloned().collect();
    {
        let _refusing = Refusing::start(&bad).await;
        let claimed = store.try_claim_many(&batch, "owner-1", LEASE).await;
        assert!(claimed.is_err(), "{claimed:?}");
    }
    assert_eq!(
        states(&store, &batch).await,
        vec![None; 8],
        "no claim of a failed batch is left processing"
    );
    let again = store.try_claim_many(&batch, "owner-2", LEASE).await;
    assert_eq!(
        again.ok(),
        Some(vec![Claim::Acquired; 8]),
        "the redelivery claims them all"
    );

    // 2. Batch completions answer per key and are all sent.
    let completions: Vec<Completion> = batch
        .iter()
        .map(|key| Completion {
            key: key.clone(),
            owner: "owner-2".into(),
            ttl: TTL,
            result: None,
        })
        .collect();
    {
        let _refusing = Refusing::start(&bad).await;
        match store.complete_many(&completions).await {
            Err(StoreError::Partial { answers, .. }) => {
                assert_eq!(answers[..4], [None; 4], "the failing shard's keys");
                assert_eq!(answers[4..], [Some(true); 4], "the healthy shards' keys");
            }
            other => panic!("expected a partial answer, got {other:?}"),
        }
    }
    let after = states(&store, &batch).await;
    assert_eq!(after[..4], [Some(RecordState::Processing); 4]);
    assert_eq!(
        after[4..],
        [Some(RecordState::Completed); 4],
        "the healthy shards' completions were written, not cancelled"
    );

    // 3. complete_then_claim keeps the claim it got when a completion fails.
    let (c_bad, c_good) = keys_split(&urls[0], &masters, &bad, &format!("{prefix}:c"), 2).await;
    assert_eq!(
        store.try_claim(&c_bad[0], "owner-3", LEASE).await.ok(),
        Some(Claim::Acquired)
    );
    {
        let _refusing = Refusing::start(&bad).await;
        let pending = [Completion {
            key: c_bad[0].clone(),
            owner: "owner-3".into(),
            ttl: TTL,
            result: None,
        }];
        let (done, claim) = store
            .complete_then_claim(&pending, &c_good[0], "owner-3", LEASE)
            .await
            .expect("the claim's shard is healthy");
        assert!(done.is_err(), "the completion's shard refused: {done:?}");
        assert_eq!(claim, Claim::Acquired);
    }
    let claim_record = store.get(&c_good[0]).await.expect("get").expect("record");
    assert_eq!(claim_record.owner.as_deref(), Some("owner-3"));
    assert_eq!(claim_record.state, RecordState::Processing);

    // 4. The guard on top: a batch whose completions meet the failing shard retries
    // exactly those, and writes them once the shard recovers.
    let config = IdempotencyConfig::builder(format!("partial-{run}-{nanos}"))
        .store_timeout(Duration::from_secs(2))
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config);
    let events: Vec<EventEnvelope> = (0..64)
        .map(|i| {
            EventEnvelope::new("orders.created.v1", serde_json::json!({"n": i}))
                .with_event_id(format!("e-{i}"))
        })
        .collect();
    let keys: Vec<String> = events
        .iter()
        .map(|e| guard.key_for(e).expect("key"))
        .collect();
    let on_bad_shard = {
        let mut c = node(&urls[0]).await;
        let mut n = 0;
        for key in &keys {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut c)
                .await
                .expect("KEYSLOT");
            if masters[0].1.iter().any(|&(a, b)| (a..=b).contains(&slot)) {
                n += 1;
            }
        }
        n
    };
    assert!(on_bad_shard > 0 && on_bad_shard < 64, "{on_bad_shard}");
    let refusing = Arc::new(std::sync::Mutex::new(None));
    let started = Arc::new(AtomicUsize::new(0));
    let answers = guard
        .run_batch(&events, |_| {
            let (refusing, started, bad) =
                (Arc::clone(&refusing), Arc::clone(&started), bad.clone());
            async move {
                // The shard fails once every handler has run.
                if started.fetch_add(1, Ordering::SeqCst) == 63 {
                    let r = Refusing::start(&bad).await;
                    *refusing
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
                }
                Ok::<_, String>(())
            }
        })
        .await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "every handler succeeded: Processed"
    );
    let stats = guard.stats();
    assert_eq!(
        stats.completions_retried, on_bad_shard as u64,
        "exactly the failing shard's completions are retried: {stats:?}"
    );
    drop(
        refusing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = states(&store, &keys).await;
        if s.iter().all(|s| *s == Some(RecordState::Completed)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retried completions were written after the shard recovered: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(guard.stats().completions_abandoned, 0);
    assert_eq!(guard.stats().claims_lost, 0);
}
