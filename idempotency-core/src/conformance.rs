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
    Claim, Completion, EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig,
    IdempotencyStore, Outcome, Record, RecordState, StoreError,
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

    // Durations no store can represent are refused, never written nor a panic.
    let too_long = crate::MAX_TTL + Duration::from_millis(1);
    for lease in [too_long, Duration::MAX] {
        assert!(invalid(s.try_claim(&key, "a", lease).await.map(|_| ())));
        let keys = [key.clone()];
        assert!(invalid(
            s.try_claim_many(&keys, "a", lease).await.map(|_| ())
        ));
    }
    assert_eq!(record(&s, &key).await, None);
    assert_eq!(
        s.try_claim(&key, "a", LONG).await.ok(),
        Some(Claim::Acquired)
    );
    for ttl in [too_long, Duration::MAX] {
        assert!(invalid(s.complete(&key, "a", ttl).await.map(|_| ())));
        assert!(invalid(s.extend(&key, "a", ttl).await.map(|_| ())));
        let completion = Completion {
            key: key.clone(),
            owner: "a".into(),
            ttl,
        };
        assert!(invalid(
            s.complete_many(std::slice::from_ref(&completion))
                .await
                .map(|_| ())
        ));
    }
    assert_eq!(
        record(&s, &key).await.map(|r| r.state),
        Some(RecordState::Processing)
    );
    assert_eq!(
        s.complete(&key, "a", crate::MAX_TTL).await.ok(),
        Some(true),
        "the longest TTL allowed is written"
    );
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
// Batches and deferred completion
// ---------------------------------------------------------------------------------------

fn completion(key: &str, owner: &str, ttl: Duration) -> Completion {
    Completion {
        key: key.to_owned(),
        owner: owner.to_owned(),
        ttl,
    }
}

/// `try_claim_many` answers every key as `try_claim` would, in order: absent and expired
/// keys are acquired, completed ones reported, live claims of others in progress.
pub async fn claim_many_answers_each_key_in_order(f: &impl StoreFactory) {
    let (s1, s2) = (f.create().await, f.create().await);
    let keys: Vec<String> = (0..5).map(|_| unique_key("claim-many")).collect();
    // keys[0]: absent; keys[1]: completed; keys[2]: held by b; keys[3]: expired claim of b;
    // keys[4]: absent.
    assert_eq!(
        s2.try_claim(&keys[1], "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(s2.complete(&keys[1], "b", LONG).await.expect("complete"));
    assert_eq!(
        s2.try_claim(&keys[2], "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s2.try_claim(&keys[3], "b", SHORT).await.expect("claim"),
        Claim::Acquired
    );
    tokio::time::sleep(PAST_SHORT).await;
    let claims = s1
        .try_claim_many(&keys, "a", LONG)
        .await
        .expect("claim many");
    assert_eq!(
        claims,
        vec![
            Claim::Acquired,
            Claim::Completed,
            Claim::InProgress,
            Claim::Acquired,
            Claim::Acquired
        ]
    );
    for i in [0, 3, 4] {
        let r = record(&s1, &keys[i]).await.expect("claimed");
        assert_eq!(
            (r.state, r.owner.as_deref()),
            (RecordState::Processing, Some("a"))
        );
    }
    assert_eq!(
        record(&s1, &keys[2]).await.expect("held").owner.as_deref(),
        Some("b")
    );
    assert_eq!(
        s1.try_claim_many(&[], "a", LONG).await.expect("empty"),
        vec![]
    );
}

/// `complete_many`, `release_many` and `extend_many` touch only the live claims of the
/// owner named, and say which they touched, in order.
pub async fn batch_transitions_are_owner_checked(f: &impl StoreFactory) {
    let s = f.create().await;
    let keys: Vec<String> = (0..4).map(|_| unique_key("batch-owner")).collect();
    // keys[0], keys[1]: a's claims; keys[2]: b's claim; keys[3]: absent.
    let ours = keys[..2].to_vec();
    assert_eq!(
        s.try_claim_many(&ours, "a", SHORT).await.expect("claim"),
        vec![Claim::Acquired, Claim::Acquired]
    );
    assert_eq!(
        s.try_claim(&keys[2], "b", LONG).await.expect("claim"),
        Claim::Acquired
    );

    let renewed = s.extend_many(&keys, "a", LONG).await.expect("extend many");
    assert_eq!(renewed, vec![true, true, false, false]);
    tokio::time::sleep(PAST_SHORT).await;
    assert!(
        record(&s, &keys[0]).await.is_some(),
        "renewed past the short lease"
    );

    let done = s
        .complete_many(&[
            completion(&keys[0], "a", LONG),
            completion(&keys[2], "a", LONG),
            completion(&keys[3], "a", LONG),
        ])
        .await
        .expect("complete many");
    assert_eq!(done, vec![true, false, false]);
    assert_eq!(
        record(&s, &keys[0]).await.expect("done").state,
        RecordState::Completed
    );
    assert_eq!(
        record(&s, &keys[2]).await.expect("b's").state,
        RecordState::Processing
    );
    assert_eq!(record(&s, &keys[3]).await, None);

    let released = s.release_many(&keys, "a").await.expect("release many");
    assert_eq!(
        released,
        vec![false, true, false, false],
        "only a's live claim"
    );
    assert_eq!(
        record(&s, &keys[0]).await.expect("kept").state,
        RecordState::Completed
    );
    assert_eq!(record(&s, &keys[1]).await, None);
    assert!(record(&s, &keys[2]).await.is_some());
}

/// `complete_then_claim` writes the completions, then answers the claim as `try_claim`
/// would.
pub async fn complete_then_claim_completes_then_claims(f: &impl StoreFactory) {
    let (s1, s2) = (f.create().await, f.create().await);
    let done_key = unique_key("ctc-done");
    let lost_key = unique_key("ctc-lost");
    assert_eq!(
        s1.try_claim(&done_key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s2.try_claim(&lost_key, "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
    let next = unique_key("ctc-next");
    let (done, claim) = s1
        .complete_then_claim(
            &[
                completion(&done_key, "a", LONG),
                completion(&lost_key, "a", LONG),
            ],
            &next,
            "c",
            LONG,
        )
        .await
        .expect("complete then claim");
    assert_eq!(
        (done.ok(), claim),
        (Some(vec![true, false]), Claim::Acquired)
    );
    assert_eq!(
        record(&s1, &done_key).await.expect("done").state,
        RecordState::Completed
    );
    assert_eq!(
        record(&s1, &lost_key).await.expect("b's").owner.as_deref(),
        Some("b")
    );
    assert_eq!(
        record(&s1, &next).await.expect("claimed").owner.as_deref(),
        Some("c")
    );
    // No completions: a plain claim. A completed key: reported as such.
    let (done, claim) = s2
        .complete_then_claim(&[], &done_key, "d", LONG)
        .await
        .expect("claim only");
    assert_eq!((done.ok(), claim), (Some(vec![]), Claim::Completed));
}

/// A key twice in one batch call is refused: it has no well-defined answer.
pub async fn batch_calls_refuse_a_key_twice(f: &impl StoreFactory) {
    let s = f.create().await;
    let key = unique_key("batch-twice");
    let twice = vec![key.clone(), key.clone()];
    assert!(matches!(
        s.try_claim_many(&twice, "a", LONG).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(record(&s, &key).await, None, "nothing claimed");
    assert!(matches!(
        s.complete_many(&[completion(&key, "a", LONG), completion(&key, "a", LONG)])
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.complete_then_claim(&[completion(&key, "a", LONG)], &key, "a", LONG)
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.try_claim_many(&["".to_owned()], "a", LONG).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Concurrent batches sharing keys: every key is acquired by exactly one batch.
pub async fn concurrent_batches_have_one_winner_per_key(f: &impl StoreFactory) {
    let keys: Arc<Vec<String>> = Arc::new((0..40).map(|_| unique_key("batch-race")).collect());
    let mut tasks = Vec::new();
    for t in 0..6 {
        let s = f.create().await;
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            // Each batch takes the keys in its own order.
            let mut mine: Vec<String> = keys.to_vec();
            mine.rotate_left(t * 7);
            if t % 2 == 1 {
                mine.reverse();
            }
            let claims = s
                .try_claim_many(&mine, &format!("owner-{t}"), LONG)
                .await
                .expect("claim many");
            mine.into_iter()
                .zip(claims)
                .filter(|(_, c)| *c == Claim::Acquired)
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        }));
    }
    let mut won = std::collections::HashMap::new();
    for task in tasks {
        for key in task.await.expect("task") {
            *won.entry(key).or_insert(0) += 1;
        }
    }
    assert_eq!(won.len(), keys.len(), "every key acquired");
    assert!(won.values().all(|n| *n == 1), "{won:?}");
}

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

    // The timer: with a short delay and no next claim, the completion is written anyway.
    let quick = guard(
        f,
        config(&service).defer_completion(Duration::from_millis(50)),
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
        config(&service)
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
    assert_eq!(g.stats().processed, 3);
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
    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.gate().await?;
        self.inner.try_claim_many(keys, owner, lease).await
    }
    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        self.gate().await?;
        self.inner.complete_many(completions).await
    }
    async fn release_many(&self, keys: &[String], owner: &str) -> Result<Vec<bool>, StoreError> {
        self.gate().await?;
        self.inner.release_many(keys, owner).await
    }
    async fn extend_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        self.gate().await?;
        self.inner.extend_many(keys, owner, lease).await
    }
    async fn complete_then_claim(
        &self,
        completions: &[Completion],
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(Result<Vec<bool>, StoreError>, Claim), StoreError> {
        self.gate().await?;
        self.inner
            .complete_then_claim(completions, key, owner, lease)
            .await
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
            claim_many_answers_each_key_in_order,
            batch_transitions_are_owner_checked,
            complete_then_claim_completes_then_claims,
            batch_calls_refuse_a_key_twice,
            concurrent_batches_have_one_winner_per_key,
            guard_batch_answers_each_event_in_order,
            guard_batch_bounds_concurrency,
            guard_batch_settles_then_resumes_a_panic,
            guard_batch_settles_its_claims_when_dropped,
            guard_batch_applies_the_fail_mode,
            guard_batch_renews_the_leases_of_slow_handlers,
            guard_defers_completion_to_the_next_claim,
            guard_deferred_completion_lost_in_a_crash_costs_a_rerun,
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
