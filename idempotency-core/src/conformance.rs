//! The shared conformance suite: every backend runs all of it against a real store.
//!
//! Each check is an `async fn` taking a [`StoreFactory`]: something that makes store
//! handles sharing one backend (one per simulated consumer, each with its own connection
//! where the backend has connections). Keys are unique per check and per run, so checks
//! can run in parallel against one shared server.
//!
//! A backend's test file runs the whole suite with one macro call:
//!
//! ```text
//! fn factory() -> impl eventonce_core::conformance::StoreFactory {
//!     let store = MyStore::new();
//!     move || { let s = store.clone(); async move { s } }
//! }
//! eventonce_core::conformance_tests!(factory);
//! ```
//!
//! Lease and TTL checks run in real time (real servers keep real time) with short leases
//! and generous margins.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use crate::{
    Claim, EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    Outcome, Record, RecordState, StoreError,
};

#[doc(hidden)]
pub mod __private {
    pub use tokio;
}

/// A short lease for expiry checks.
pub const SHORT: Duration = Duration::from_millis(500);
/// How long a check waits for a [`SHORT`] lease to have certainly expired.
pub const PAST_SHORT: Duration = Duration::from_millis(1500);
/// A lease that certainly outlives a check.
pub const LONG: Duration = Duration::from_secs(60);

/// Makes store handles that share one backend.
pub trait StoreFactory: Send + Sync {
    /// The store type.
    type Store: IdempotencyStore + 'static;
    /// A new handle on the shared backend.
    fn create(&self) -> Pin<Box<dyn Future<Output = Self::Store> + Send + '_>>;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = S> + Send + 'static,
    S: IdempotencyStore + 'static,
{
    type Store = S;
    fn create(&self) -> Pin<Box<dyn Future<Output = S> + Send + '_>> {
        Box::pin(self())
    }
}

/// A key unique to this run and call, under the default prefix's namespace.
pub fn unique_key(check: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{:x}{:x}", std::process::id(), now)
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("huleedu:idempotency:conformance:{run}:{check}:{n}")
}

/// A service name unique to this run and call, for guard checks.
pub fn unique_service(check: &str) -> String {
    unique_key(check)
        .rsplit(':')
        .take(3)
        .collect::<Vec<_>>()
        .join("-")
        .replace('_', "-")
}

fn config(service: &str) -> crate::ConfigBuilder {
    IdempotencyConfig::builder(service).key_prefix("huleedu:idempotency:conformance")
}

fn event(n: u64) -> EventEnvelope {
    EventEnvelope::new("conformance.event.v1", json!({"n": n, "payload": "x"}))
        .with_event_id(format!("event-{n}"))
}

#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

async fn record(store: &impl IdempotencyStore, key: &str) -> Option<Record> {
    store.get(key).await.expect("get succeeds")
}

// ---------------------------------------------------------------------------------------
// Store operations
// ---------------------------------------------------------------------------------------

/// A claim on an absent key is acquired and visible as `processing` with its owner.
pub async fn claim_on_absent_key_is_acquired(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("absent");
    assert_eq!(record(&s, &key).await, None);
    assert_eq!(
        s.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    let r = record(&s, &key).await.expect("record after claim");
    assert_eq!(r.state, RecordState::Processing);
    assert_eq!(r.owner.as_deref(), Some("a"));
    let left = r.ttl_left.expect("a claim has a lease");
    assert!(
        left <= LONG && left > LONG - Duration::from_secs(10),
        "{left:?}"
    );
}

/// A claim held by a live owner reports `InProgress` to everyone, its owner included.
pub async fn claim_held_by_live_owner_is_in_progress(f: &impl StoreFactory) {
    let (s1, s2) = (f.create().await, f.create().await);
    let key = unique_key("held");
    assert_eq!(
        s1.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s2.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::InProgress
    );
    assert_eq!(
        s1.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::InProgress
    );
    let r = record(&s2, &key).await.expect("record");
    assert_eq!(
        r.owner.as_deref(),
        Some("a"),
        "a failed claim must not overwrite the owner"
    );
}

/// After `complete`, claims report `Completed` and the record keeps the given TTL.
pub async fn completed_key_reports_completed_with_its_ttl(f: &impl StoreFactory) {
    let (s1, s2) = (f.create().await, f.create().await);
    let key = unique_key("completed");
    let ttl = Duration::from_secs(3600);
    assert_eq!(
        s1.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(s1.complete(&key, "a", ttl).await.expect("complete"));
    assert_eq!(
        s2.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::Completed
    );
    let r = record(&s2, &key).await.expect("record");
    assert_eq!(r.state, RecordState::Completed);
    let left = r.ttl_left.expect("a completed record has a TTL");
    assert!(
        left <= ttl && left > ttl - Duration::from_secs(10),
        "{left:?}"
    );
}

/// `complete` by anyone but the owner, or on an absent key, changes nothing.
pub async fn complete_is_owner_checked(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("complete-owner");
    assert!(!s.complete(&key, "a", LONG).await.expect("complete absent"));
    assert_eq!(
        record(&s, &key).await,
        None,
        "complete must not create a record"
    );
    assert_eq!(
        s.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(!s
        .complete(&key, "b", LONG)
        .await
        .expect("complete by other"));
    let r = record(&s, &key).await.expect("record");
    assert_eq!(
        (r.state, r.owner.as_deref()),
        (RecordState::Processing, Some("a"))
    );
    assert!(s
        .complete(&key, "a", LONG)
        .await
        .expect("complete by owner"));
    assert!(
        !s.complete(&key, "a", LONG).await.expect("second complete"),
        "a completed record is no longer a claim"
    );
}

/// `release` deletes only the owner's processing claim; the key can then be claimed again.
pub async fn release_is_owner_checked_and_frees_the_key(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("release");
    assert!(!s.release(&key, "a").await.expect("release absent"));
    assert_eq!(
        s.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(!s.release(&key, "b").await.expect("release by other"));
    assert_eq!(
        s.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::InProgress
    );
    assert!(s.release(&key, "a").await.expect("release by owner"));
    assert_eq!(record(&s, &key).await, None);
    assert_eq!(
        s.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
}

/// A completed record cannot be released, not even by the owner that completed it.
pub async fn release_never_deletes_a_completed_record(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("release-completed");
    assert_eq!(
        s.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(s.complete(&key, "a", LONG).await.expect("complete"));
    assert!(!s.release(&key, "a").await.expect("release"));
    assert_eq!(
        s.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::Completed
    );
}

/// `extend` renews only the owner's processing claim.
pub async fn extend_is_owner_checked_and_renews_the_lease(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("extend");
    assert!(!s.extend(&key, "a", LONG).await.expect("extend absent"));
    assert_eq!(
        record(&s, &key).await,
        None,
        "extend must not create a record"
    );
    assert_eq!(
        s.try_claim(&key, "a", SHORT).await.expect("claim"),
        Claim::Acquired
    );
    assert!(!s.extend(&key, "b", LONG).await.expect("extend by other"));
    assert!(s.extend(&key, "a", LONG).await.expect("extend by owner"));
    let left = record(&s, &key)
        .await
        .and_then(|r| r.ttl_left)
        .expect("lease");
    assert!(left > SHORT, "the lease was renewed to {left:?}");
    // The renewed claim outlives the original lease.
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        s.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::InProgress
    );
    assert!(s.complete(&key, "a", LONG).await.expect("complete"));
    assert!(!s.extend(&key, "a", LONG).await.expect("extend completed"));
}

/// An expired claim counts as absent: another owner acquires it, and the old owner can no
/// longer complete, release or extend it.
pub async fn expired_claim_counts_as_absent(f: &impl StoreFactory) {
    let (s1, s2) = (f.create().await, f.create().await);
    let key = unique_key("expired-claim");
    assert_eq!(
        s1.try_claim(&key, "a", SHORT).await.expect("claim"),
        Claim::Acquired
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        record(&s2, &key).await,
        None,
        "an expired claim is not reported"
    );
    assert!(!s1.extend(&key, "a", LONG).await.expect("extend expired"));
    assert!(!s1
        .complete(&key, "a", LONG)
        .await
        .expect("complete expired"));
    assert!(!s1.release(&key, "a").await.expect("release expired"));
    assert_eq!(
        s2.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(!s1
        .complete(&key, "a", LONG)
        .await
        .expect("old owner complete"));
    assert!(!s1.release(&key, "a").await.expect("old owner release"));
    let r = record(&s2, &key).await.expect("record");
    assert_eq!(r.owner.as_deref(), Some("b"));
}

/// A completed record expires after its TTL, and the event can then be processed again.
pub async fn completed_record_expires_after_its_ttl(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("expired-completed");
    assert_eq!(
        s.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(s.complete(&key, "a", SHORT).await.expect("complete"));
    assert_eq!(
        s.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::Completed
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(record(&s, &key).await, None);
    assert_eq!(
        s.try_claim(&key, "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
}

/// Keys are independent of each other.
pub async fn keys_are_independent(f: &impl StoreFactory) {
    let s = f.create().await;
    let (k1, k2) = (unique_key("indep"), unique_key("indep"));
    assert_eq!(
        s.try_claim(&k1, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s.try_claim(&k2, "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(s.complete(&k1, "a", LONG).await.expect("complete"));
    assert_eq!(
        record(&s, &k2).await.map(|r| r.state),
        Some(RecordState::Processing)
    );
}

/// Keys holding escapes, non-ASCII and long segments are stored as given.
pub async fn unusual_keys_are_stored_exactly(f: &impl StoreFactory) {
    let s = f.create().await;
    let base = unique_key("unusual");
    for suffix in ["%3A%2A%7B%7D", "ünïcödé", &"x".repeat(400), "with space"] {
        let key = format!("{base}:{suffix}");
        assert_eq!(
            s.try_claim(&key, "a", LONG).await.expect("claim"),
            Claim::Acquired
        );
        assert!(s.complete(&key, "a", LONG).await.expect("complete"));
        assert_eq!(
            s.try_claim(&key, "b", LONG).await.expect("claim"),
            Claim::Completed
        );
    }
    // A key that is a prefix of another is a different key.
    assert_eq!(
        s.try_claim(&base, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
}

/// Empty keys and owners and zero leases are refused with `InvalidArgument`.
pub async fn invalid_arguments_are_refused(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("invalid");
    let invalid = |r: Result<_, StoreError>| matches!(r, Err(StoreError::InvalidArgument(_)));
    assert!(invalid(s.try_claim("", "a", LONG).await.map(|_| ())));
    assert!(invalid(s.try_claim(&key, "", LONG).await.map(|_| ())));
    assert!(invalid(
        s.try_claim(&key, "a", Duration::ZERO).await.map(|_| ())
    ));
    assert!(invalid(
        s.complete(&key, "a", Duration::ZERO).await.map(|_| ())
    ));
    assert!(invalid(
        s.extend(&key, "a", Duration::ZERO).await.map(|_| ())
    ));
    assert!(invalid(s.release(&key, "").await.map(|_| ())));
    assert_eq!(record(&s, &key).await, None);
}

/// 50 tasks, each with its own store handle, claim one key at once: exactly one acquires.
pub async fn concurrent_claims_have_exactly_one_winner(f: &impl StoreFactory) {
    for round in 0..5 {
        let key = Arc::new(unique_key("race"));
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = f.create().await;
            let (key, barrier) = (Arc::clone(&key), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.try_claim(&key, &format!("owner-{i}"), LONG).await
            }));
        }
        let mut acquired = 0;
        for t in tasks {
            match t.await.expect("task").expect("claim") {
                Claim::Acquired => acquired += 1,
                Claim::InProgress => {}
                Claim::Completed => panic!("nobody completed the key"),
            }
        }
        assert_eq!(acquired, 1, "round {round}: {acquired} winners");
    }
}

/// Concurrent claims racing a `complete` see either `InProgress` or `Completed`, never a
/// second `Acquired`.
pub async fn claims_racing_completion_never_acquire(f: &impl StoreFactory) {
    let key = Arc::new(unique_key("race-complete"));
    let owner = f.create().await;
    assert_eq!(
        owner.try_claim(&key, "winner", LONG).await.expect("claim"),
        Claim::Acquired
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(21));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = f.create().await;
        let (key, barrier) = (Arc::clone(&key), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut seen = Vec::new();
            for _ in 0..10 {
                seen.push(
                    store
                        .try_claim(&key, &format!("o-{i}"), LONG)
                        .await
                        .expect("claim"),
                );
            }
            seen
        }));
    }
    barrier.wait().await;
    assert!(owner
        .complete(&key, "winner", LONG)
        .await
        .expect("complete"));
    for t in tasks {
        for claim in t.await.expect("task") {
            assert_ne!(claim, Claim::Acquired);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Guard semantics
// ---------------------------------------------------------------------------------------

async fn guard(f: &impl StoreFactory, builder: crate::ConfigBuilder) -> Guard {
    Guard::new(f.create().await, builder.build().expect("valid config"))
}

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
    let g = guard(f, config(&service).processing_ttl(LONG)).await;
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
    let builder = config(&service).processing_ttl(SHORT);
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

    // A black hole: the first call pays one timeout, the next ones are answered at once.
    control.set(Fault::Hang);
    let t = std::time::Instant::now();
    let r = closed.run(&e, async { Ok::<_, Boom>(()) }).await;
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
        let r = closed.run(&e, async { Ok::<_, Boom>(()) }).await;
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
        .run(&e, async { Ok::<_, Boom>("ran") })
        .await
        .expect("open");
    assert_eq!(r, Outcome::Unprotected("ran"));
    let r = open
        .run(&e, async { Ok::<_, Boom>("ran") })
        .await
        .expect("open");
    assert_eq!(r, Outcome::Unprotected("ran"));
    assert!(
        t.elapsed() < timeout * 2,
        "two unprotected runs took {:?}",
        t.elapsed()
    );

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

// ---------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------

/// A fault a [`FaultyStore`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Pass every call through.
    None = 0,
    /// Fail every call with `StoreError::Unavailable`.
    Fail = 1,
    /// Never answer (a black hole).
    Hang = 2,
}

/// Switches the fault of a [`FaultyStore`] from outside.
#[derive(Debug, Clone)]
pub struct FaultControl(Arc<AtomicU8>);

impl FaultControl {
    /// Sets the fault injected from now on.
    pub fn set(&self, fault: Fault) {
        self.0.store(fault as u8, Ordering::SeqCst);
    }

    fn get(&self) -> Fault {
        match self.0.load(Ordering::SeqCst) {
            1 => Fault::Fail,
            2 => Fault::Hang,
            _ => Fault::None,
        }
    }
}

/// Wraps a real store and injects faults on command.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: Arc<S>,
    control: FaultControl,
}

impl<S> Clone for FaultyStore<S> {
    fn clone(&self) -> Self {
        FaultyStore {
            inner: Arc::clone(&self.inner),
            control: self.control.clone(),
        }
    }
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`, passing calls through until told otherwise.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner: Arc::new(inner),
            control: FaultControl(Arc::new(AtomicU8::new(0))),
        }
    }

    /// A handle that switches the fault.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    async fn gate(&self) -> Result<(), StoreError> {
        match self.control.get() {
            Fault::None => Ok(()),
            Fault::Fail => Err(StoreError::Unavailable {
                message: "injected fault: connection refused".into(),
                source: None,
            }),
            Fault::Hang => std::future::pending().await,
        }
    }
}

#[async_trait]
impl<S: IdempotencyStore + 'static> IdempotencyStore for FaultyStore<S> {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.gate().await?;
        self.inner.try_claim(key, owner, lease).await
    }
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.complete(key, owner, ttl).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.release(key, owner).await
    }
    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.gate().await?;
        self.inner.extend(key, owner, lease).await
    }
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.gate().await?;
        self.inner.get(key).await
    }
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

/// Expands to one `#[tokio::test]` per conformance check, each calling `$factory()` for a
/// fresh [`StoreFactory`].
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@each $factory;
            claim_on_absent_key_is_acquired,
            claim_held_by_live_owner_is_in_progress,
            completed_key_reports_completed_with_its_ttl,
            complete_is_owner_checked,
            release_is_owner_checked_and_frees_the_key,
            release_never_deletes_a_completed_record,
            extend_is_owner_checked_and_renews_the_lease,
            expired_claim_counts_as_absent,
            completed_record_expires_after_its_ttl,
            keys_are_independent,
            unusual_keys_are_stored_exactly,
            invalid_arguments_are_refused,
            concurrent_claims_have_exactly_one_winner,
            claims_racing_completion_never_acquire,
            guard_processes_new_event_once_and_skips_duplicates,
            guard_uses_default_ttl_for_unlisted_types,
            guard_reports_in_progress_for_a_live_claim,
            guard_waits_for_a_live_claim_when_asked,
            guard_releases_on_handler_error_and_redelivery_retries,
            guard_releases_on_panic_and_resumes_it,
            guard_releases_when_the_run_future_is_dropped,
            guard_processes_redelivery_after_a_dead_consumers_lease,
            guard_renews_the_lease_of_a_slow_handler,
            guard_runs_concurrent_deliveries_once,
            guard_isolates_services,
            guard_rejects_unidentifiable_events,
            guard_applies_the_fail_mode_when_the_store_fails,
        );
    };
    (@each $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[$crate::conformance::__private::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let factory = $factory().await;
                $crate::conformance::$check(&factory).await;
            }
        )*
    };
}
