//! `make bench-http`: the Idempotency-Key layer on Redis against the same axum route
//! without it, paired: both servers run side by side on loopback, and each round measures
//! both in turn (alternating which goes first), so a busy moment of the machine falls on
//! both. Printed, and written into benches/RESULTS.md between its `http` markers:
//! requests/s with 16 concurrent clients, and p50/p99 latency of one client, for the bare
//! route, new requests through the layer (a claim and a completion with the stored
//! response: two round trips to Redis) and replays (one claim and one read).
//!
//! `BENCH_HTTP_REQUESTS` requests per measurement (default 2,000), `BENCH_HTTP_ROUNDS`
//! rounds (default 5); Redis at `EVENTONCE_REDIS_URL` (default 127.0.0.1:6379).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use eventonce_core::{Guard, IdempotencyConfig};
use eventonce_http::IdempotencyLayer;
use eventonce_redis::RedisStore;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Http = Client<HttpConnector, Full<Bytes>>;

const BODY: &[u8] = br#"{"item":"book","quantity":2,"customer":"c-1042"}"#;
const CONCURRENCY: usize = 16;

async fn create(body: Bytes) -> axum::response::Response {
    let reply = format!(r#"{{"order":1,"bytes":{}}}"#, body.len());
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        reply,
    )
        .into_response()
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/orders")
}

/// One POST; `key` as its Idempotency-Key. Panics on a status other than 201.
async fn post_once(client: &Http, url: &str, key: Option<&str>) {
    let mut request = http::Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let request = request
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("request");
    let response = client.request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.into_body().collect().await.expect("body");
}

/// What one measurement asks: the bare route, new keys, or replays of known keys.
#[derive(Clone, Copy)]
enum Kind {
    Bare,
    New,
    Replay,
}

struct Target {
    url: String,
    kind: Kind,
    run: u64,
}

fn key(run: u64, i: usize, kind: Kind) -> Option<String> {
    match kind {
        Kind::Bare => None,
        Kind::New => Some(format!("bench-{run}-{i}")),
        // The keys of the round's warm-up, all completed.
        Kind::Replay => Some(format!("warm-{run}-{}", i % 100)),
    }
}

/// Latencies of `n` requests one after the other, sorted.
async fn sequential(client: &Http, target: &Target, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let key = key(target.run, i, target.kind);
        let started = Instant::now();
        post_once(client, &target.url, key.as_deref()).await;
        times.push(started.elapsed());
    }
    times.sort();
    times
}

/// Requests per second of `n` requests from `CONCURRENCY` clients.
async fn throughput(client: &Http, target: &Target, n: usize) -> f64 {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, next) = (client.clone(), target.url.clone(), Arc::clone(&next));
        let (run, kind) = (target.run + 1_000_000, target.kind);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                post_once(&client, &url, key(run, i, kind).as_deref()).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client task");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Default)]
struct Row {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests = env_number("BENCH_HTTP_REQUESTS", 2000);
    let rounds = env_number("BENCH_HTTP_ROUNDS", 5);
    let redis = std::env::var("EVENTONCE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let store = RedisStore::connect(&redis).await.expect("Redis");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let config = IdempotencyConfig::builder(format!("bench-http-{nanos}"))
        .build()
        .expect("config");
    let layer = IdempotencyLayer::new(Guard::new(store, config)).require_key(true);
    let bare = serve(Router::new().route("/orders", post(create))).await;
    let guarded = serve(Router::new().route("/orders", post(create)).layer(layer)).await;
    let client: Http = Client::builder(TokioExecutor::new()).build_http();

    let kinds = [
        ("bare route", Kind::Bare),
        ("layer, new key", Kind::New),
        ("layer, replay", Kind::Replay),
    ];
    let mut rows: Vec<Row> = kinds.iter().map(|_| Row::default()).collect();
    for round in 0..rounds {
        let run = round as u64;
        for i in 0..100 {
            post_once(&client, &guarded, key(run, i, Kind::Replay).as_deref()).await;
            post_once(&client, &bare, None).await;
        }
        let mut order: Vec<usize> = (0..kinds.len()).collect();
        order.rotate_left(round % kinds.len());
        for k in order {
            let (_, kind) = kinds[k];
            let url = if matches!(kind, Kind::Bare) {
                &bare
            } else {
                &guarded
            };
            let target = Target {
                url: url.clone(),
                kind,
                run,
            };
            let times = sequential(&client, &target, requests).await;
            rows[k]
                .p50
                .push(percentile(&times, 0.50).as_secs_f64() * 1e6);
            rows[k]
                .p99
                .push(percentile(&times, 0.99).as_secs_f64() * 1e6);
            rows[k]
                .rps
                .push(throughput(&client, &target, requests).await);
        }
    }
    report(&kinds.map(|(name, _)| name), rows, requests, rounds);
}

fn report(names: &[&str], rows: Vec<Row>, requests: usize, rounds: usize) {
    let medians: Vec<(f64, f64, f64)> = rows
        .into_iter()
        .map(|r| (median(r.rps), median(r.p50), median(r.p99)))
        .collect();
    let (bare_rps, bare_p50, bare_p99) = medians[0];
    let mut table = String::from(
        "| route | requests/s (16 clients) | vs bare | p50 (1 client) | p99 | added p50 | added p99 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, (rps, p50, p99)) in names.iter().zip(&medians) {
        table.push_str(&format!(
            "| {name} | {rps:.0} | {:.2}x | {p50:.0} µs | {p99:.0} µs | {:+.0} µs | {:+.0} µs |\n",
            rps / bare_rps,
            p50 - bare_p50,
            p99 - bare_p99
        ));
    }
    let section = format!(
        "## HTTP: the Idempotency-Key layer on Redis (`make bench-http`)\n\n\
         Medians of {rounds} paired rounds of {requests} requests each (the routes measured in \
         turn, the order rotating), axum on loopback, a hyper client, Redis on loopback; \
         {} cores, measured {}.\n\n{table}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        today()
    );
    println!("{section}");
    write_results(&section);
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "today".to_owned(), |d| d.trim().to_owned())
}

/// Puts `section` into benches/RESULTS.md between the `http` markers (appended the first
/// time), leaving the rest of the file as `make bench` wrote it.
fn write_results(section: &str) {
    const START: &str = "<!-- http: written by make bench-http -->";
    const END: &str = "<!-- /http -->";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/RESULTS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let block = format!("{START}\n{section}{END}\n");
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{block}{}",
            &old[..a],
            &old[b + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{block}", old.trim_end()),
    };
    if let Err(e) = std::fs::write(&path, new) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
