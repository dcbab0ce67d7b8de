//! Several OS processes claim the same keys at the same instant, on the real Redis and on
//! the real Redis Cluster: exactly one process wins each key.
//!
//! This test runs without the libtest harness: the parent re-runs its own executable as
//! child processes (`EVENTONCE_RACE_CHILD` set), each of which claims every key once and
//! prints the keys it won.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventonce_core::{Claim, IdempotencyStore};
use eventonce_redis::RedisStore;

const PROCESSES: usize = 6;
const KEYS: usize = 300;

fn main() {
    if std::env::var_os("EVENTONCE_RACE_CHILD").is_some() {
        child();
        return;
    }
    let mut passed = 0;
    let single =
        std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    race_until_contended("single", &single);
    passed += 1;
    race_until_contended("cluster", &cluster_urls());
    passed += 1;
    println!("cross_process: {passed} passed, 0 failed");
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
}

/// Runs the race until it was one (more than one process won keys), at most three times:
/// which process's burst Redis serves first is up to the machine, and a race one process
/// swept says nothing about concurrency. Every attempt must have one winner per key.
fn race_until_contended(target: &str, urls: &str) {
    let mut sweeps = Vec::new();
    for _ in 0..3 {
        let per_process = race(target, urls);
        if per_process.iter().filter(|&&n| n > 0).count() > 1 {
            return;
        }
        sweeps.push(per_process);
    }
    panic!("the race was not a race in three attempts: {sweeps:?}");
}

/// One race; returns how many keys each process won.
fn race(target: &str, urls: &str) -> Vec<usize> {
    let run = format!(
        "huleedu:idempotency:race:{}:{}:{target}",
        std::process::id(),
        now_ms()
    );
    let start_at = now_ms() + 1500;
    let exe = std::env::current_exe().expect("own executable");
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            Command::new(&exe)
                .env("EVENTONCE_RACE_CHILD", i.to_string())
                .env("EVENTONCE_RACE_URLS", urls)
                .env("EVENTONCE_RACE_PREFIX", &run)
                .env("EVENTONCE_RACE_START", start_at.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn a child")
        })
        .collect();
    let mut winners = vec![Vec::new(); KEYS];
    let mut seen_children = 0;
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("child finishes");
        assert!(out.status.success(), "child {i} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut answered = 0;
        for line in text.lines() {
            if let Some(k) = line.strip_prefix("won ") {
                let k: usize = k.parse().expect("key index");
                winners[k].push(i);
            }
            if let Some(n) = line.strip_prefix("answered ") {
                answered = n.parse().expect("count");
            }
        }
        assert_eq!(
            answered, KEYS,
            "child {i} did not get an answer for every key"
        );
        seen_children += 1;
    }
    let doubles: Vec<_> = winners
        .iter()
        .enumerate()
        .filter(|(_, w)| w.len() > 1)
        .collect();
    let orphans = winners.iter().filter(|w| w.is_empty()).count();
    let mut per_process = vec![0; PROCESSES];
    for w in &winners {
        for &p in w {
            per_process[p] += 1;
        }
    }
    println!(
        "cross_process[{target}]: {seen_children} processes x {KEYS} keys: {} keys with one winner, {} with several, {orphans} with none; wins per process {per_process:?}",
        winners.iter().filter(|w| w.len() == 1).count(),
        doubles.len()
    );
    assert!(doubles.is_empty(), "keys won twice: {doubles:?}");
    assert_eq!(orphans, 0);
    per_process
}

fn child() {
    let urls = std::env::var("EVENTONCE_RACE_URLS").expect("urls");
    let prefix = std::env::var("EVENTONCE_RACE_PREFIX").expect("prefix");
    let me = std::env::var("EVENTONCE_RACE_CHILD").expect("index");
    let start_at: u128 = std::env::var("EVENTONCE_RACE_START")
        .expect("start")
        .parse()
        .expect("ms");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let list: Vec<&str> = urls.split(',').collect();
        let store = if list.len() > 1 {
            RedisStore::connect_cluster(&list).await
        } else {
            RedisStore::connect(list[0]).await
        }
        .expect("connect");
        let wait = start_at.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        // Each process goes through the keys from its own starting point: Redis serves a
        // client's pipelined burst a chunk at a time, so with one order for all, the
        // process whose burst lands first could take every key and the race would not be
        // one.
        let offset = me.parse::<usize>().unwrap_or(0) * KEYS / PROCESSES;
        let mut tasks = Vec::new();
        for k in (0..KEYS).map(|i| (i + offset) % KEYS) {
            let (store, key, owner) = (
                store.clone(),
                format!("{prefix}:{k}"),
                format!("process-{me}"),
            );
            tasks.push(tokio::spawn(async move {
                (
                    k,
                    store.try_claim(&key, &owner, Duration::from_secs(60)).await,
                )
            }));
        }
        let mut answered = 0;
        for t in tasks {
            let (k, claim) = t.await.expect("task");
            answered += 1;
            if claim.expect("claim") == Claim::Acquired {
                println!("won {k}");
            }
        }
        println!("answered {answered}");
    });
}

fn cluster_urls() -> String {
    if let Ok(urls) = std::env::var("REDIS_CLUSTER_URL") {
        return urls;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/redis-cluster.sh");
    let out = Command::new("bash")
        .args([script, "start"])
        .output()
        .expect("script runs");
    assert!(out.status.success(), "starting the cluster failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("REDIS_CLUSTER_URL="))
        .expect("REDIS_CLUSTER_URL=")
        .to_owned()
}
