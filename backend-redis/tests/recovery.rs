//! Redis stopped and started again under a guard: the first probe after the cool-down must
//! succeed (no leftover error from a connection attempt made while the server was down),
//! and a store connected lazily lets a fail-open consumer start while Redis is down.

use std::time::{Duration, Instant};

use eventonce_core::conformance::unique_key;
use eventonce_core::{
    Claim, EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    Outcome, StoreError,
};
use eventonce_redis::{RedisOptions, RedisStore};
use eventonce_testkit::RedisProcess;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_millis(250);
const COOLDOWN: Duration = Duration::from_millis(800);

fn guard(store: RedisStore, mode: FailMode, service: &str) -> Guard {
    let config = IdempotencyConfig::builder(service)
        .store_timeout(TIMEOUT)
        .circuit_breaker(3, COOLDOWN)
        .on_store_error(mode)
        .build()
        .expect("config");
    Guard::new(store, config)
}

fn event(n: u32) -> EventEnvelope {
    EventEnvelope::new("recovery.test.v1", json!({"n": n})).with_event_id(format!("e-{n}"))
}

async fn run(g: &Guard, n: u32) -> Result<Outcome<()>, GuardError<String>> {
    g.run(&event(n), async { Ok::<_, String>(()) }).await
}

fn service(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_probe_after_redis_returns_succeeds_and_closes_the_breaker() {
    let mut server = RedisProcess::start();
    let options = RedisOptions::default().timeouts(TIMEOUT, TIMEOUT);
    let store = RedisStore::connect_with(&server.url(), options)
        .await
        .expect("connect");
    let g = guard(store, FailMode::Closed, &service("probe"));
    assert!(matches!(run(&g, 0).await, Ok(Outcome::Processed(()))));

    server.kill();
    let mut n = 1;
    let mut failures = Vec::new();
    while !g.circuit_open() {
        match run(&g, n).await {
            Err(GuardError::Store(e)) => failures.push(e.to_string()),
            other => panic!("Redis is down, yet: {other:?}"),
        }
        n += 1;
        assert!(n < 20, "the breaker never opened: {failures:?}");
    }
    // Calls made while the breaker is open never reach the store.
    assert!(matches!(
        run(&g, n).await,
        Err(GuardError::Store(StoreError::CircuitOpen { .. }))
    ));

    server.restart();
    tokio::time::sleep(COOLDOWN + Duration::from_millis(100)).await;
    let probe = run(&g, 100).await;
    assert!(
        matches!(probe, Ok(Outcome::Processed(()))),
        "the first probe after Redis came back failed: {probe:?} (failures while down: {failures:?})"
    );
    assert!(!g.circuit_open(), "the successful probe closes the breaker");
    assert!(matches!(run(&g, 100).await, Ok(Outcome::Duplicate)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_store_starts_while_redis_is_down_and_fail_open_holds_from_the_first_event() {
    let mut server = RedisProcess::start();
    server.kill();
    let options = RedisOptions::default().timeouts(TIMEOUT, TIMEOUT);
    let started = Instant::now();
    let store = RedisStore::connect_lazy_with(&server.url(), options.clone())
        .expect("a valid URL is enough");
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "no I/O at construction"
    );
    // The eager constructor refuses the same server at once.
    let eager = RedisStore::connect_with(&server.url(), options).await;
    assert!(eager.is_err(), "Redis is down");

    // A direct call says what happened and where.
    let err = store
        .try_claim(&unique_key("lazy"), "o", Duration::from_secs(5))
        .await
        .expect_err("Redis is down");
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::Unavailable { .. })
            && text.contains("connection refused")
            && text.contains(&format!("127.0.0.1:{}", server.port)),
        "{text}"
    );

    let g = guard(store.clone(), FailMode::Open, &service("lazy"));
    for n in 0..5 {
        let started = Instant::now();
        let outcome = run(&g, n).await;
        assert!(
            matches!(outcome, Ok(Outcome::Unprotected(()))),
            "event {n}: {outcome:?}"
        );
        assert!(
            started.elapsed() < TIMEOUT,
            "event {n} was not answered fast"
        );
    }
    assert!(
        g.circuit_open(),
        "three refused connections open the breaker"
    );

    server.restart();
    let back = Instant::now();
    let mut n = 10;
    loop {
        match run(&g, n).await {
            Ok(Outcome::Processed(())) => break,
            Ok(Outcome::Unprotected(())) => {}
            other => panic!("event {n}: {other:?}"),
        }
        assert!(
            back.elapsed() < COOLDOWN + Duration::from_secs(2),
            "protection did not resume"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back.elapsed() < COOLDOWN + Duration::from_millis(500),
        "protected after the first probe, not one cool-down later: {:?}",
        back.elapsed()
    );
    assert!(matches!(run(&g, n).await, Ok(Outcome::Duplicate)));
    assert!(!g.circuit_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_share_one_connection_and_a_broken_one_is_replaced() {
    let mut server = RedisProcess::start();
    let options = RedisOptions::default().timeouts(TIMEOUT, TIMEOUT);
    let store = RedisStore::connect_lazy_with(&server.url(), options).expect("url");
    let claims = futures_util::future::join_all((0..50).map(|i| {
        let store = store.clone();
        async move {
            store
                .try_claim(
                    &unique_key(&format!("share-{i}")),
                    "o",
                    Duration::from_secs(5),
                )
                .await
        }
    }))
    .await;
    assert!(
        claims.iter().all(|c| matches!(c, Ok(Claim::Acquired))),
        "{claims:?}"
    );
    let clients = |url: String| async move {
        let mut raw = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("up");
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut raw)
            .await
            .expect("info");
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .expect("connected_clients")
    };
    assert_eq!(
        clients(server.url()).await,
        2,
        "the store's one connection and this inspection"
    );

    // Restarted between two calls: the old connection is gone. At most the first call
    // finds out (its command may have been sent); the next one runs on a new connection.
    server.restart();
    let first = store.get(&unique_key("after")).await;
    if let Err(err) = &first {
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    }
    let second = store.get(&unique_key("after")).await;
    assert!(second.is_ok(), "{second:?} (first: {first:?})");
}
