//! Guard semantics: what `Guard::run` promises on top of a store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{
    config, event, guard, record, unique_service, Boom, Fault, FaultControl, FaultyStore,
    StoreFactory, LONG, PAST_SHORT, SHORT,
};
use crate::{
    Claim, EventEnvelope, FailMode, Guard, GuardError, IdempotencyStore, Outcome, RecordState,
    StoreError,
};

/// A new event runs once and is completed with its type's TTL; a redelivery is a
/// `Duplicate` whose future is never polled.
pub async fn guard_processes_new_event_once_and_skips_duplicates(f: &impl StoreFactory) {
    let service = unique_service("guard-new");
    let g = guard(
        f,
        config(&service).event_type_ttl("conformance.event.v1", Duration::from_secs(7200)),
    )
    .await;
    let e = event(1);
    let runs = AtomicUsize::new(0);
    let out = g
        .run(&e, async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(42)
        })
        .await
        .expect("run");
    assert_eq!(out, Outcome::Processed(42));
    let key = g.key_for(&e).expect("key");
    let r = record(g.store(), &key).await.expect("record");
    assert_eq!(r.state, RecordState::Completed);
    let left = r.ttl_left.expect("ttl");
    assert!(
        left > Duration::from_secs(7100) && left <= Duration::from_secs(7200),
        "{left:?}"
    );
    let polled = AtomicUsize::new(0);
    let dup = g
        .run(&e, async {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(0)
        })
        .await
        .expect("run");
    assert_eq!(dup, Outcome::Duplicate);
    assert_eq!(
        polled.load(Ordering::SeqCst),
        0,
        "a duplicate's future is never polled"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let stats = g.stats();
    assert_eq!((stats.processed, stats.duplicates), (1, 1));
}

/// An event type without its own TTL is completed with the default TTL.
pub async fn guard_uses_default_ttl_for_unlisted_types(f: &impl StoreFactory) {
    let service = unique_service("guard-default-ttl");
    let g = guard(f, config(&service).default_ttl(Duration::from_secs(500))).await;
    let e = EventEnvelope::new("conformance.unlisted.v1", json!({"a": 1}));
    assert_eq!(
        g.run(&e, async { Ok::<_, Boom>(()) }).await.expect("run"),
        Outcome::Processed(())
    );
    let left = record(g.store(), &g.key_for(&e).expect("key"))
        .await
        .and_then(|r| r.ttl_left)
        .expect("ttl");
    assert!(
        left > Duration::from_secs(490) && left <= Duration::from_secs(500),
        "{left:?}"
    );
}

/// An event claimed by a live owner gives `InProgress`; the handler is not polled.
pub async fn guard_reports_in_progress_for_a_live_claim(f: &impl StoreFactory) {
    let service = unique_service("guard-in-progress");
    let g = guard(f, config(&service)).await;
    let e = event(2);
    let key = g.key_for(&e).expect("key");
    let other = f.create().await;
    assert_eq!(
        other
            .try_claim(&key, "other-consumer", LONG)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let polled = AtomicUsize::new(0);
    let r = g
        .run(&e, async {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(())
        })
        .await;
    assert!(matches!(r, Err(GuardError::InProgress)), "{r:?}");
    assert_eq!(polled.load(Ordering::SeqCst), 0);
    let rec = record(&other, &key).await.expect("claim untouched");
    assert_eq!(rec.owner.as_deref(), Some("other-consumer"));
}

/// With `in_progress_wait`, a run waits for the other owner and reports its outcome.
pub async fn guard_waits_for_a_live_claim_when_asked(f: &impl StoreFactory) {
    let service = unique_service("guard-wait");
    let g = guard(
        f,
        config(&service).in_progress_wait(Duration::from_secs(10)),
    )
    .await;
    let e = event(3);
    let key = g.key_for(&e).expect("key");
    let other = f.create().await;
    assert_eq!(
        other.try_claim(&key, "other", LONG).await.expect("claim"),
        Claim::Acquired
    );
    let finisher = tokio::spawn({
        let key = key.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            other.complete(&key, "other", LONG).await.expect("complete")
        }
    });
    let r = g.run(&e, async { Ok::<_, Boom>(()) }).await.expect("run");
    assert_eq!(r, Outcome::Duplicate);
    assert!(finisher.await.expect("task"));
}

/// A failing handler's claim is released, the error returned, the handler not re-run by
/// the guard; the redelivery runs it again and completes it.
pub async fn guard_releases_on_handler_error_and_redelivery_retries(f: &impl StoreFactory) {
    let service = unique_service("guard-error");
    let g = guard(f, config(&service)).await;
    let e = event(4);
    let runs = AtomicUsize::new(0);
    let r = g
        .run(&e, async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Boom)
        })
        .await;
    assert!(matches!(r, Err(GuardError::Handler(Boom))), "{r:?}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the guard never re-runs a failed handler"
    );
    assert_eq!(
        record(g.store(), &g.key_for(&e).expect("key")).await,
        None,
        "claim released"
    );
    let again = g
        .run(&e, async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>("ok")
        })
        .await
        .expect("retry");
    assert_eq!(again, Outcome::Processed("ok"));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(g.stats().handler_failures, 1);
}

/// A panicking handler's claim is released before the panic resumes.
pub async fn guard_releases_on_panic_and_resumes_it(f: &impl StoreFactory) {
    let service = unique_service("guard-panic");
    let g = guard(f, config(&service)).await;
    let e = event(5);
    let key = g.key_for(&e).expect("key");
    let task = tokio::spawn({
        let (g, e) = (g.clone(), e.clone());
        async move {
            g.run(&e, async {
                tokio::task::yield_now().await;
                if e.event_id.is_some() {
                    panic!("handler panicked on purpose");
                }
                Ok::<_, Boom>(())
            })
            .await
        }
    });
    let err = task.await.expect_err("the panic propagates");
    assert!(err.is_panic());
    // The release was awaited before the panic resumed: no waiting needed.
    assert_eq!(record(g.store(), &key).await, None);
    assert_eq!(g.stats().handler_panics, 1);
}

/// Dropping `run` mid-handler (a timeout, a `select!`, a shutdown) releases the claim
/// promptly instead of leaving it for the lease or the TTL.
pub async fn guard_releases_when_the_run_future_is_dropped(f: &impl StoreFactory) {
    let service = unique_service("guard-drop");
    let g = guard(f, config(&service).lease(LONG)).await;
    let e = event(6);
    let key = g.key_for(&e).expect("key");
    let started = Arc::new(tokio::sync::Notify::new());
    let run = g.run(&e, {
        let started = Arc::clone(&started);
        async move {
            started.notify_one();
            std::future::pending::<()>().await;
            Ok::<_, Boom>(())
        }
    });
    tokio::select! {
        _ = run => panic!("the handler never finishes"),
        _ = started.notified() => {}
    }
    // `run` is dropped here, mid-handler.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while record(g.store(), &key).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "claim still held 5 s after the drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(g.stats().cancelled, 1);
    let again = g
        .run(&e, async { Ok::<_, Boom>(1) })
        .await
        .expect("redelivery");
    assert_eq!(again, Outcome::Processed(1));
}

/// A consumer that died mid-handler (its claim never renewed, completed or released)
/// holds the event for its lease only; then the redelivery is processed.
pub async fn guard_processes_redelivery_after_a_dead_consumers_lease(f: &impl StoreFactory) {
    let service = unique_service("guard-crash");
    let g = guard(f, config(&service)).await;
    let e = event(7);
    let key = g.key_for(&e).expect("key");
    // The dead consumer's claim: taken with a short lease, then never touched again.
    let dead = f.create().await;
    assert_eq!(
        dead.try_claim(&key, "dead-consumer", SHORT)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let r = g.run(&e, async { Ok::<_, Boom>(()) }).await;
    assert!(matches!(r, Err(GuardError::InProgress)), "{r:?}");
    tokio::time::sleep(PAST_SHORT).await;
    let r = g
        .run(&e, async { Ok::<_, Boom>("recovered") })
        .await
        .expect("run");
    assert_eq!(r, Outcome::Processed("recovered"));
}

/// A slow live handler renews its lease, so nobody else runs the event meanwhile, and its
/// completion still counts.
pub async fn guard_renews_the_lease_of_a_slow_handler(f: &impl StoreFactory) {
    let service = unique_service("guard-heartbeat");
    let builder = config(&service).lease(SHORT);
    let g = guard(f, builder.clone()).await;
    let other = guard(f, builder).await;
    let e = event(8);
    let slow = tokio::spawn({
        let (g, e) = (g.clone(), e.clone());
        async move {
            g.run(&e, async {
                tokio::time::sleep(SHORT * 5).await;
                Ok::<_, Boom>("slow")
            })
            .await
        }
    });
    // Try again and again for well past the lease: always in progress.
    for _ in 0..6 {
        tokio::time::sleep(SHORT / 2).await;
        let r = other.run(&e, async { Ok::<_, Boom>("second") }).await;
        assert!(matches!(r, Err(GuardError::InProgress)), "{r:?}");
    }
    let r = slow.await.expect("task").expect("run");
    assert_eq!(r, Outcome::Processed("slow"));
    assert_eq!(g.stats().claims_lost, 0);
    let dup = other
        .run(&e, async { Ok::<_, Boom>("late") })
        .await
        .expect("run");
    assert_eq!(dup, Outcome::Duplicate);
}

/// Many consumers delivering the same event at once run its handler exactly once.
pub async fn guard_runs_concurrent_deliveries_once(f: &impl StoreFactory) {
    let service = unique_service("guard-concurrent");
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let g = guard(f, config(&service)).await;
        let (runs, barrier) = (Arc::clone(&runs), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            g.run(&event(9), async {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, Boom>(())
            })
            .await
        }));
    }
    let mut processed = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(Outcome::Processed(())) => processed += 1,
            Ok(Outcome::Duplicate) | Err(GuardError::InProgress) => {}
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(processed, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The same event under two services is processed by each.
pub async fn guard_isolates_services(f: &impl StoreFactory) {
    let a = guard(f, config(&unique_service("svc-a"))).await;
    let b = guard(f, config(&unique_service("svc-b"))).await;
    let e = event(10);
    assert_eq!(
        a.run(&e, async { Ok::<_, Boom>(1) }).await.expect("a"),
        Outcome::Processed(1)
    );
    assert_eq!(
        b.run(&e, async { Ok::<_, Boom>(2) }).await.expect("b"),
        Outcome::Processed(2)
    );
}

/// An event that cannot be identified is an error, and its handler is not polled.
pub async fn guard_rejects_unidentifiable_events(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("guard-invalid"))).await;
    let e = EventEnvelope::new("conformance.event.v1", serde_json::Value::Null);
    let polled = AtomicUsize::new(0);
    let r = g
        .run(&e, async {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(())
        })
        .await;
    assert!(matches!(r, Err(GuardError::InvalidEvent(_))), "{r:?}");
    assert_eq!(polled.load(Ordering::SeqCst), 0);
}

/// Store failures: `Open` runs the handler unprotected, `Closed` refuses; a hanging store
/// costs one store timeout, then the circuit breaker answers at once; protection resumes
/// by itself when the store is back.
pub async fn guard_applies_the_fail_mode_when_the_store_fails(f: &impl StoreFactory) {
    let faulty = FaultyStore::new(f.create().await);
    let control = faulty.control();
    let service = unique_service("guard-faults");
    let timeout = Duration::from_millis(200);
    let cooldown = Duration::from_millis(300);
    let build = |mode| {
        config(&service)
            .store_timeout(timeout)
            .circuit_breaker(3, cooldown)
            .on_store_error(mode)
            .build()
            .expect("config")
    };
    let open = Guard::new(faulty.clone(), build(FailMode::Open));
    let closed = Guard::new(faulty, build(FailMode::Closed));

    control.set(Fault::Fail);
    let e = event(11);
    let r = open
        .run(&e, async { Ok::<_, Boom>("ran") })
        .await
        .expect("open");
    assert_eq!(r, Outcome::Unprotected("ran"));
    assert_eq!(open.stats().unprotected, 1);
    let polled = AtomicUsize::new(0);
    let r = closed
        .run(&e, async {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>("ran")
        })
        .await;
    assert!(
        matches!(r, Err(GuardError::Store(StoreError::Unavailable { .. }))),
        "{r:?}"
    );
    assert_eq!(polled.load(Ordering::SeqCst), 0);

    a_hanging_store_costs_one_timeout(&open, &closed, &e, &control, timeout).await;

    // The store is back: after the cool-down the probe succeeds and protection resumes.
    control.set(Fault::None);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let r = closed
        .run(&e, async { Ok::<_, Boom>("protected") })
        .await
        .expect("closed");
    assert_eq!(r, Outcome::Processed("protected"));
    assert!(!closed.circuit_open());
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let r = open
        .run(&e, async { Ok::<_, Boom>("again") })
        .await
        .expect("open");
    assert_eq!(r, Outcome::Duplicate);
}

/// The black-hole part of [`guard_applies_the_fail_mode_when_the_store_fails`]: the first
/// call pays one timeout, the next ones are answered at once by the open breaker.
async fn a_hanging_store_costs_one_timeout(
    open: &Guard,
    closed: &Guard,
    e: &EventEnvelope,
    control: &FaultControl,
    timeout: Duration,
) {
    // A black hole: the first call pays one timeout, the next ones are answered at once.
    control.set(Fault::Hang);
    let t = std::time::Instant::now();
    let r = closed.run(e, async { Ok::<_, Boom>(()) }).await;
    assert!(
        matches!(r, Err(GuardError::Store(StoreError::Timeout { .. }))),
        "{r:?}"
    );
    assert!(
        t.elapsed() >= timeout && t.elapsed() < timeout * 10,
        "{:?}",
        t.elapsed()
    );
    assert!(closed.circuit_open());
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let r = closed.run(e, async { Ok::<_, Boom>(()) }).await;
        assert!(
            matches!(r, Err(GuardError::Store(StoreError::CircuitOpen { .. }))),
            "{r:?}"
        );
        assert!(
            t.elapsed() < timeout / 2,
            "an open breaker answered in {:?}",
            t.elapsed()
        );
    }
    let t = std::time::Instant::now();
    let r = open
        .run(e, async { Ok::<_, Boom>("ran") })
        .await
        .expect("open");
    assert_eq!(r, Outcome::Unprotected("ran"));
    let r = open
        .run(e, async { Ok::<_, Boom>("ran") })
        .await
        .expect("open");
    assert_eq!(r, Outcome::Unprotected("ran"));
    assert!(
        t.elapsed() < timeout * 2,
        "two unprotected runs took {:?}",
        t.elapsed()
    );
}
