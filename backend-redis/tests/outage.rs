//! A real Redis stopped, paused and restarted mid-stream: fail open keeps processing,
//! fail closed refuses, an outage costs at most one store timeout before the circuit
//! breaker answers at once, and protection resumes by itself.

use std::time::{Duration, Instant};

use eventonce_core::{
    EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, Outcome, StoreError,
};
use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::RedisProcess;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_millis(250);
const COOLDOWN: Duration = Duration::from_millis(500);

fn guard(store: &RedisStore, mode: FailMode) -> Guard {
    let config = IdempotencyConfig::builder(format!("outage-{}", std::process::id()))
        .store_timeout(TIMEOUT)
        .circuit_breaker(3, COOLDOWN)
        .on_store_error(mode)
        .build()
        .expect("config");
    Guard::new(store.clone(), config)
}

fn event(n: u32) -> EventEnvelope {
    EventEnvelope::new("outage.test.v1", json!({"n": n})).with_event_id(format!("ev-{n}"))
}

#[derive(Default, Debug)]
struct Phase {
    processed: u32,
    duplicates: u32,
    unprotected: u32,
    refused: u32,
    circuit_open: u32,
    timeouts: u32,
    slow: u32,
    max: Duration,
}

impl Phase {
    fn row(&self, name: &str) -> String {
        format!(
            "| {name:<30} | {:>9} | {:>10} | {:>11} | {:>7} | {:>12} | {:>8} | {:>11} | {:>8.1} |",
            self.processed,
            self.duplicates,
            self.unprotected,
            self.refused,
            self.circuit_open,
            self.timeouts,
            self.slow,
            self.max.as_secs_f64() * 1000.0
        )
    }
}

async fn deliver(g: &Guard, events: impl IntoIterator<Item = u32>, phase: &mut Phase) {
    for n in events {
        let t = Instant::now();
        let r = g
            .run(&event(n), async { Ok::<_, std::io::Error>(()) })
            .await;
        let took = t.elapsed();
        phase.max = phase.max.max(took);
        if took > TIMEOUT / 2 {
            phase.slow += 1;
        }
        match r {
            Ok(Outcome::Processed(())) => phase.processed += 1,
            Ok(Outcome::Duplicate) => phase.duplicates += 1,
            Ok(Outcome::Unprotected(())) => phase.unprotected += 1,
            Err(GuardError::Store(e)) => {
                phase.refused += 1;
                match e {
                    StoreError::CircuitOpen { .. } => phase.circuit_open += 1,
                    StoreError::Timeout { .. } => phase.timeouts += 1,
                    _ => {}
                }
            }
            Err(other) => panic!("event {n}: {other}"),
        }
    }
}

/// Delivers new events until one is protected again, within `limit`.
async fn until_protected(g: &Guard, first: u32, limit: Duration) -> (u32, Duration) {
    let t = Instant::now();
    let mut n = first;
    loop {
        let r = g
            .run(&event(n), async { Ok::<_, std::io::Error>(()) })
            .await;
        n += 1;
        if matches!(r, Ok(Outcome::Processed(()))) {
            return (n, t.elapsed());
        }
        assert!(
            t.elapsed() < limit,
            "protection did not resume within {limit:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_cost_at_most_one_timeout_and_protection_resumes() {
    let mut server = RedisProcess::start();
    let options = RedisOptions::default().timeouts(TIMEOUT, TIMEOUT);
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connect");
    let open = guard(&store, FailMode::Open);
    let closed = guard(&store, FailMode::Closed);
    let mut table = vec![
        "| phase                          | processed | duplicates | unprotected | refused | circuit_open | timeouts | slow calls | max ms |".to_owned(),
        "|--------------------------------|-----------|------------|-------------|---------|--------------|----------|------------|--------|".to_owned(),
    ];

    let mut up = Phase::default();
    deliver(&open, 0..20, &mut up).await;
    deliver(&closed, 0..20, &mut up).await;
    assert_eq!((up.processed, up.duplicates), (20, 20));
    table.push(up.row("up: 20 new, 20 redelivered"));

    // Stopped: connections refused.
    server.kill();
    let mut down_open = Phase::default();
    deliver(&open, 100..150, &mut down_open).await;
    assert_eq!(down_open.unprotected, 50, "{down_open:?}");
    assert!(down_open.slow <= 1, "{down_open:?}");
    table.push(down_open.row("killed, fail open: 50"));
    let mut down_closed = Phase::default();
    deliver(&closed, 200..250, &mut down_closed).await;
    assert_eq!(down_closed.refused, 50, "{down_closed:?}");
    assert!(down_closed.slow <= 1, "{down_closed:?}");
    assert!(down_closed.circuit_open >= 45, "{down_closed:?}");
    table.push(down_closed.row("killed, fail closed: 50"));

    // Back (empty, as it keeps nothing on disk): protection resumes by itself.
    server.restart();
    let (next, took_open) = until_protected(&open, 300, Duration::from_secs(15)).await;
    let (next, took_closed) = until_protected(&closed, next, Duration::from_secs(15)).await;
    let mut back = Phase::default();
    deliver(&open, next..next + 20, &mut back).await;
    deliver(&closed, next..next + 20, &mut back).await;
    assert_eq!((back.processed, back.duplicates), (20, 20), "{back:?}");
    table.push(back.row("restarted: 20 new, 20 again"));

    // A black hole: the server is paused, connections stay open, nothing answers.
    server.pause();
    let mut hole_open = Phase::default();
    deliver(&open, 500..530, &mut hole_open).await;
    assert_eq!(hole_open.unprotected, 30, "{hole_open:?}");
    assert!(hole_open.slow <= 1, "{hole_open:?}");
    table.push(hole_open.row("paused, fail open: 30"));
    let mut hole_closed = Phase::default();
    deliver(&closed, 600..630, &mut hole_closed).await;
    assert_eq!(hole_closed.refused, 30);
    assert_eq!(
        hole_closed.timeouts, 1,
        "exactly one timeout before the breaker opens: {hole_closed:?}"
    );
    assert!(hole_closed.slow <= 1, "{hole_closed:?}");
    table.push(hole_closed.row("paused, fail closed: 30"));

    server.resume();
    let (next, took_hole) = until_protected(&closed, 700, Duration::from_secs(15)).await;
    let mut resumed = Phase::default();
    deliver(&closed, next - 1..next + 9, &mut resumed).await;
    assert_eq!(
        (resumed.processed, resumed.duplicates),
        (9, 1),
        "{resumed:?}"
    );
    table.push(resumed.row("resumed: 1 again, 9 new"));

    println!("\n{}", table.join("\n"));
    println!(
        "protection resumed after restart in {:.0} ms (open) / {:.0} ms (closed); after the pause in {:.0} ms",
        took_open.as_secs_f64() * 1000.0,
        took_closed.as_secs_f64() * 1000.0,
        took_hole.as_secs_f64() * 1000.0
    );
    let stats = open.stats();
    println!(
        "fail-open guard counters: processed={} unprotected={} store_errors={}",
        stats.processed, stats.unprotected, stats.store_errors
    );
}
