//! Guard batches and deferred completion: what `Guard::run_batch` and deferred
//! completion promise on top of a store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{
    config, event, guard, record, unique_service, Boom, Fault, FaultyStore, StoreFactory, LONG,
    PAST_SHORT, SHORT,
};
use crate::{
    Claim, EventEnvelope, FailMode, Guard, GuardError, IdempotencyStore, Outcome, RecordState,
};

/// `run_batch`: new events run once, duplicates are skipped, failures released, later
/// copies of an event in the batch answered from the first, unidentifiable events
/// refused alone; answers come in input order.
pub async fn guard_batch_answers_each_event_in_order(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("batch")).batch_concurrency(4)).await;
    let done_before = event(100);
    assert_eq!(
        g.run(&done_before, async { Ok::<_, Boom>(0) })
            .await
            .expect("first"),
        Outcome::Processed(0)
    );
    let failing = event(102);
    let no_identity = EventEnvelope::new("conformance.event.v1", serde_json::Value::Null);
    let batch = vec![
        event(101),
        done_before.clone(),
        failing.clone(),
        event(101),
        no_identity,
        event(103),
    ];
    let runs = AtomicUsize::new(0);
    let answers = g
        .run_batch(&batch, |e| {
            runs.fetch_add(1, Ordering::SeqCst);
            let fail = e.event_id.as_deref() == Some("event-102");
            async move {
                tokio::task::yield_now().await;
                if fail {
                    Err(Boom)
                } else {
                    Ok(e.event_id.clone())
                }
            }
        })
        .await;
    assert_eq!(answers.len(), batch.len());
    assert!(matches!(&answers[0], Ok(Outcome::Processed(Some(id))) if id == "event-101"));
    assert!(
        matches!(answers[1], Ok(Outcome::Duplicate)),
        "{:?}",
        answers[1]
    );
    assert!(matches!(answers[2], Err(GuardError::Handler(Boom))));
    assert!(
        matches!(answers[3], Ok(Outcome::Duplicate)),
        "a copy of a processed event"
    );
    assert!(matches!(answers[4], Err(GuardError::InvalidEvent(_))));
    assert!(matches!(&answers[5], Ok(Outcome::Processed(Some(id))) if id == "event-103"));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "101, 102 and 103 ran once each"
    );
    for e in [&batch[0], &batch[5]] {
        let r = record(g.store(), &g.key_for(e).expect("key"))
            .await
            .expect("record");
        assert_eq!(r.state, RecordState::Completed);
    }
    assert_eq!(
        record(g.store(), &g.key_for(&failing).expect("key")).await,
        None
    );
    let stats = g.stats();
    assert_eq!(
        (
            stats.processed,
            stats.duplicates,
            stats.handler_failures,
            stats.invalid_events
        ),
        (3, 2, 1, 1)
    );
    a_redelivered_batch_retries_only_the_failure(&g, &batch).await;
}

/// The redelivery part of [`guard_batch_answers_each_event_in_order`].
async fn a_redelivered_batch_retries_only_the_failure(g: &Guard, batch: &[EventEnvelope]) {
    // The redelivered batch: the failure is retried, the rest skipped.
    let again = g
        .run_batch(&batch[..4], |_| async { Ok::<Option<String>, Boom>(None) })
        .await;
    assert!(matches!(again[2], Ok(Outcome::Processed(None))));
    assert!(again
        .iter()
        .enumerate()
        .all(|(i, a)| i == 2 || matches!(a, Ok(Outcome::Duplicate))));
    // A copy of an event whose first copy failed is to be redelivered, not skipped.
    let fresh = event(104);
    let answers = g
        .run_batch(&[fresh.clone(), fresh], |_| async { Err::<(), _>(Boom) })
        .await;
    assert!(matches!(answers[0], Err(GuardError::Handler(Boom))));
    assert!(matches!(answers[1], Err(GuardError::InProgress)));
}

/// `run_batch` runs handlers concurrently, never more than `batch_concurrency` at once,
/// and skips events another consumer holds.
pub async fn guard_batch_bounds_concurrency(f: &impl StoreFactory) {
    let g = guard(
        f,
        config(&unique_service("batch-bound")).batch_concurrency(3),
    )
    .await;
    let other = f.create().await;
    let batch: Vec<EventEnvelope> = (200..212).map(event).collect();
    let held = g.key_for(&batch[11]).expect("key");
    assert_eq!(
        other
            .try_claim(&held, "someone", LONG)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let answers = g
        .run_batch(&batch, |_| {
            let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Boom>(())
            }
        })
        .await;
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "ran 3 at a time, never more"
    );
    assert!(answers[..11]
        .iter()
        .all(|a| matches!(a, Ok(Outcome::Processed(())))));
    assert!(matches!(answers[11], Err(GuardError::InProgress)));
}

/// A batch handler that panics has its claim released, the rest of the batch is
/// completed, then the panic is resumed.
pub async fn guard_batch_settles_then_resumes_a_panic(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("batch-panic"))).await;
    let batch: Vec<EventEnvelope> = (300..303).map(event).collect();
    let task = tokio::spawn({
        let (g, batch) = (g.clone(), batch.clone());
        async move {
            g.run_batch(&batch, |e| {
                let boom = e.event_id.as_deref() == Some("event-301");
                async move {
                    tokio::task::yield_now().await;
                    if boom {
                        panic!("handler panicked on purpose");
                    }
                    Ok::<_, Boom>(())
                }
            })
            .await
        }
    });
    assert!(task.await.expect_err("the panic propagates").is_panic());
    let state = |e: &EventEnvelope| {
        let key = g.key_for(e).expect("key");
        let store = Arc::clone(g.store());
        async move { record(&store, &key).await.map(|r| r.state) }
    };
    assert_eq!(state(&batch[0]).await, Some(RecordState::Completed));
    assert_eq!(
        state(&batch[1]).await,
        None,
        "the panicked event is released"
    );
    assert_eq!(state(&batch[2]).await, Some(RecordState::Completed));
    assert_eq!(g.stats().handler_panics, 1);
}

/// Dropping a `run_batch` future mid-batch completes the events whose handlers had
/// succeeded and releases the others.
pub async fn guard_batch_settles_its_claims_when_dropped(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("batch-drop")).lease(LONG)).await;
    let batch: Vec<EventEnvelope> = (400..402).map(event).collect();
    let first_done = Arc::new(tokio::sync::Notify::new());
    let run = g.run_batch(&batch, |e| {
        let quick = e.event_id.as_deref() == Some("event-400");
        let first_done = Arc::clone(&first_done);
        async move {
            if quick {
                first_done.notify_one();
                return Ok::<_, Boom>(());
            }
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    tokio::select! {
        _ = run => panic!("the second handler never finishes"),
        _ = async {
            first_done.notified().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        } => {}
    }
    let keys: Vec<String> = batch.iter().map(|e| g.key_for(e).expect("key")).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done = record(g.store(), &keys[0]).await.map(|r| r.state);
        let held = record(g.store(), &keys[1]).await;
        if done == Some(RecordState::Completed) && held.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled 5 s after the drop: {done:?} {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(g.stats().cancelled, 1);
}

/// A batch whose claim call fails follows the fail mode: `Open` runs every handler
/// unprotected, `Closed` runs none.
pub async fn guard_batch_applies_the_fail_mode(f: &impl StoreFactory) {
    let faulty = FaultyStore::new(f.create().await);
    let control = faulty.control();
    let service = unique_service("batch-faults");
    let build = |mode| {
        config(&service)
            .on_store_error(mode)
            .build()
            .expect("config")
    };
    let open = Guard::new(faulty.clone(), build(FailMode::Open));
    let closed = Guard::new(faulty, build(FailMode::Closed));
    let batch: Vec<EventEnvelope> = (500..503).map(event).collect();
    control.set(Fault::Fail);
    let runs = AtomicUsize::new(0);
    let answers = open
        .run_batch(&batch, |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Boom>(1) }
        })
        .await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Unprotected(1)))),
        "{answers:?}"
    );
    assert_eq!(open.stats().unprotected, 3);
    let answers = closed
        .run_batch(&batch, |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Boom>(1) }
        })
        .await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(GuardError::Store(_)))),
        "{answers:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3, "closed ran none");
    control.set(Fault::None);
}

/// A batch handler slower than the lease keeps its claim, and so does a handler of the
/// same batch that ended long before (its completion waits for the batch's end): the
/// batch renews every claim it has not settled.
pub async fn guard_batch_renews_the_leases_of_slow_handlers(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("batch-heartbeat")).lease(SHORT)).await;
    let other = f.create().await;
    let batch: Vec<EventEnvelope> = (600..602).map(event).collect();
    let keys: Vec<String> = batch.iter().map(|e| g.key_for(e).expect("key")).collect();
    let answers = g
        .run_batch(&batch, |e| {
            let (other, keys) = (&other, &keys);
            // The first handler ends at once: its claim waits for the batch's completion
            // while the other handler runs.
            let fast = e == &batch[0];
            async move {
                if fast {
                    return Ok::<_, Boom>(());
                }
                tokio::time::sleep(PAST_SHORT).await;
                // Past the lease, the claims are still ours, the finished handler's too.
                for key in keys {
                    assert_eq!(
                        other.try_claim(key, "thief", LONG).await.expect("claim"),
                        Claim::InProgress
                    );
                }
                Ok::<_, Boom>(())
            }
        })
        .await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "{answers:?}"
    );
    assert_eq!(g.stats().claims_lost, 0);
}

/// With deferred completion, `run` returns before the completion is written; the next
/// claim carries it, `flush` writes it, a timer writes it after the delay, and a
/// redelivery to the same guard is a duplicate.
pub async fn guard_defers_completion_to_the_next_claim(f: &impl StoreFactory) {
    let service = unique_service("deferred");
    let g = guard(
        f,
        config(&service)
            .lease(Duration::from_secs(7200))
            .defer_completion(Duration::from_secs(3600)),
    )
    .await;
    let (a, b, c) = (event(700), event(701), event(702));
    let state = |e: &EventEnvelope| {
        let key = g.key_for(e).expect("key");
        let store = Arc::clone(g.store());
        async move { record(&store, &key).await.map(|r| r.state) }
    };
    assert_eq!(
        g.run(&a, async { Ok::<_, Boom>(1) }).await.expect("a"),
        Outcome::Processed(1)
    );
    assert_eq!(state(&a).await, Some(RecordState::Processing), "deferred");
    assert_eq!(
        g.run(&b, async { Ok::<_, Boom>(2) }).await.expect("b"),
        Outcome::Processed(2)
    );
    assert_eq!(
        state(&a).await,
        Some(RecordState::Completed),
        "carried by b's claim"
    );
    assert_eq!(state(&b).await, Some(RecordState::Processing));
    // b redelivered to this guard while its completion waits: a duplicate, not in progress.
    assert_eq!(
        g.run(&b, async { Ok::<_, Boom>(0) })
            .await
            .expect("b again"),
        Outcome::Duplicate
    );
    assert_eq!(state(&b).await, Some(RecordState::Completed));
    assert_eq!(
        g.run(&c, async { Ok::<_, Boom>(3) }).await.expect("c"),
        Outcome::Processed(3)
    );
    assert_eq!(g.flush().await.expect("flush"), 1);
    assert_eq!(state(&c).await, Some(RecordState::Completed));
    assert_eq!(g.flush().await.expect("nothing left"), 0);

    a_timer_or_a_drop_writes_the_deferred_completion(f, &service, &g).await;
    assert_eq!(g.stats().processed, 3);
}

/// A batch carrying an event whose completion this guard still owes (deferred after `run`)
/// settles that completion first: the event answers `Duplicate`, not `InProgress`, and
/// runs no second time.
pub async fn guard_batch_answers_duplicate_for_its_own_deferred_completion(f: &impl StoreFactory) {
    let g = guard(
        f,
        config(&unique_service("batch-deferred"))
            .lease(Duration::from_secs(7200))
            .defer_completion(Duration::from_secs(3600)),
    )
    .await;
    let (a, b) = (event(710), event(711));
    assert_eq!(
        g.run(&a, async { Ok::<_, Boom>(1) }).await.expect("a"),
        Outcome::Processed(1)
    );
    let key = g.key_for(&a).expect("key");
    assert_eq!(
        record(g.store(), &key).await.map(|r| r.state),
        Some(RecordState::Processing),
        "deferred"
    );
    let runs = AtomicUsize::new(0);
    let answers = g
        .run_batch(&[a.clone(), b.clone()], |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Boom>(2) }
        })
        .await;
    let stats = g.stats();
    assert!(
        matches!(answers[0], Ok(Outcome::Duplicate)),
        "a's own deferred completion answered {:?}; stats {stats:?}",
        answers[0]
    );
    assert!(
        matches!(answers[1], Ok(Outcome::Processed(2))),
        "{:?}",
        answers[1]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only b ran");
    assert_eq!(stats.in_progress, 0, "{stats:?}");
    assert_eq!(
        record(g.store(), &key).await.map(|r| r.state),
        Some(RecordState::Completed)
    );
}

/// The timer and drop part of [`guard_defers_completion_to_the_next_claim`]: `g` reads the
/// records (same service, same keys).
async fn a_timer_or_a_drop_writes_the_deferred_completion(
    f: &impl StoreFactory,
    service: &str,
    g: &Guard,
) {
    let state = |e: &EventEnvelope| {
        let key = g.key_for(e).expect("key");
        let store = Arc::clone(g.store());
        async move { record(&store, &key).await.map(|r| r.state) }
    };
    // The timer: with a short delay and no next claim, the completion is written anyway.
    let quick = guard(
        f,
        config(service).defer_completion(Duration::from_millis(50)),
    )
    .await;
    let d = event(703);
    assert_eq!(
        quick.run(&d, async { Ok::<_, Boom>(4) }).await.expect("d"),
        Outcome::Processed(4)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state(&d).await != Some(RecordState::Completed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not flushed 5 s after"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Dropping the guard writes what is still queued.
    let dropped = guard(
        f,
        config(service)
            .lease(Duration::from_secs(7200))
            .defer_completion(Duration::from_secs(3600)),
    )
    .await;
    let e = event(704);
    assert_eq!(
        dropped
            .run(&e, async { Ok::<_, Boom>(5) })
            .await
            .expect("e"),
        Outcome::Processed(5)
    );
    drop(dropped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state(&e).await != Some(RecordState::Completed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not flushed 5 s after the drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A consumer whose deferred completion never reaches the store (it dies, or the store is
/// unreachable from it until the lease ends): the event is not lost; after the lease a
/// redelivery processes it again (the documented cost of deferring).
pub async fn guard_deferred_completion_lost_in_a_crash_costs_a_rerun(f: &impl StoreFactory) {
    let service = unique_service("deferred-crash");
    let faulty = FaultyStore::new(f.create().await);
    let cut_off = faulty.control();
    let crashed = Guard::new(
        faulty,
        config(&service)
            .lease(SHORT)
            .defer_completion(SHORT / 2)
            .build()
            .expect("valid config"),
    );
    let e = event(800);
    assert_eq!(
        crashed
            .run(&e, async { Ok::<_, Boom>(()) })
            .await
            .expect("run"),
        Outcome::Processed(())
    );
    // From here on nothing this consumer sends reaches the store.
    cut_off.set(Fault::Fail);
    let survivor = guard(f, config(&service)).await;
    assert!(matches!(
        survivor.run(&e, async { Ok::<_, Boom>(()) }).await,
        Err(GuardError::InProgress)
    ));
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        survivor
            .run(&e, async { Ok::<_, Boom>(()) })
            .await
            .expect("after the lease"),
        Outcome::Processed(())
    );
    assert_eq!(
        crashed.stats().completions_abandoned,
        1,
        "given up once its lease was over"
    );
    drop(crashed);
}
