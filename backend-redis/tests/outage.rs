//! A real Redis stopped, paused and restarted mid-stream: fail open keeps processing,
//! fail closed refuses, an outage costs at most one store timeout before the circuit
//! breaker answers at once, and protection resumes by itself.

use std::time::Duration;

use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::faults::{deliver, guards, until_protected, Tally};
use eventonce_testkit::RedisProcess;

const TIMEOUT: Duration = Duration::from_millis(250);
const COOLDOWN: Duration = Duration::from_millis(500);

fn row(phase: &str, t: &Tally) -> String {
    format!(
        "| {phase:<30} | {:>9} | {:>10} | {:>11} | {:>7} | {:>12} | {:>8} | {:>10} | {:>8.1} |",
        t.processed,
        t.duplicates,
        t.unprotected,
        t.refused,
        t.circuit_open,
        t.timeouts,
        t.slow,
        t.max.as_secs_f64() * 1000.0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_cost_at_most_one_timeout_and_protection_resumes() {
    let mut server = RedisProcess::start();
    let options = RedisOptions::default().timeouts(TIMEOUT, TIMEOUT);
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connect");
    let (open, closed) = guards(
        store,
        &format!("outage-{}", std::process::id()),
        TIMEOUT,
        COOLDOWN,
    );
    let mut table = vec![
        "| phase                          | processed | duplicates | unprotected | refused | circuit_open | timeouts | slow calls | max ms |".to_owned(),
        "|--------------------------------|-----------|------------|-------------|---------|--------------|----------|------------|--------|".to_owned(),
    ];

    let up_new = deliver(&open, 0..20, TIMEOUT).await;
    let up_again = deliver(&closed, 0..20, TIMEOUT).await;
    assert_eq!((up_new.processed, up_again.duplicates), (20, 20));
    table.push(row("up: 20 new", &up_new));
    table.push(row("up: 20 redelivered", &up_again));

    // Stopped: connections refused.
    server.kill();
    let down_open = deliver(&open, 100..150, TIMEOUT).await;
    assert_eq!(down_open.unprotected, 50, "{down_open:?}");
    assert!(down_open.slow <= 1, "{down_open:?}");
    table.push(row("killed, fail open: 50", &down_open));
    let down_closed = deliver(&closed, 200..250, TIMEOUT).await;
    assert_eq!(down_closed.refused, 50, "{down_closed:?}");
    assert!(down_closed.slow <= 1, "{down_closed:?}");
    assert!(down_closed.circuit_open >= 45, "{down_closed:?}");
    table.push(row("killed, fail closed: 50", &down_closed));

    // Back (empty, as it keeps nothing on disk): protection resumes by itself.
    server.restart();
    let mut next = 300;
    let took_open = until_protected(&open, &mut next, Duration::from_secs(15)).await;
    let took_closed = until_protected(&closed, &mut next, Duration::from_secs(15)).await;
    let back_new = deliver(&open, next..next + 20, TIMEOUT).await;
    let back_again = deliver(&closed, next..next + 20, TIMEOUT).await;
    assert_eq!(
        (back_new.processed, back_again.duplicates),
        (20, 20),
        "{back_new:?} {back_again:?}"
    );
    table.push(row("restarted: 20 new", &back_new));
    table.push(row("restarted: 20 again", &back_again));

    // A black hole: the server is paused, connections stay open, nothing answers.
    server.pause();
    let hole_open = deliver(&open, 500..530, TIMEOUT).await;
    assert_eq!(hole_open.unprotected, 30, "{hole_open:?}");
    assert!(hole_open.slow <= 1, "{hole_open:?}");
    table.push(row("paused, fail open: 30", &hole_open));
    let hole_closed = deliver(&closed, 600..630, TIMEOUT).await;
    assert_eq!(hole_closed.refused, 30);
    assert_eq!(
        hole_closed.timeouts, 1,
        "exactly one timeout before the breaker opens: {hole_closed:?}"
    );
    assert!(hole_closed.slow <= 1, "{hole_closed:?}");
    table.push(row("paused, fail closed: 30", &hole_closed));

    server.resume();
    let mut next = 700;
    let took_hole = until_protected(&closed, &mut next, Duration::from_secs(15)).await;
    let resumed = deliver(&closed, next - 1..next + 9, TIMEOUT).await;
    assert_eq!(
        (resumed.processed, resumed.duplicates),
        (9, 1),
        "{resumed:?}"
    );
    table.push(row("resumed: 1 again, 9 new", &resumed));

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
