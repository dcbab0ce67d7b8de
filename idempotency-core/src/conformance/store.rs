//! Store operations: each atomic transition of the store trait on one key.

use std::sync::Arc;
use std::time::Duration;

use super::{record, unique_key, StoreFactory, LONG, PAST_SHORT, SHORT};
use crate::{Claim, Completion, IdempotencyStore, RecordState, StoreError};

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
    let too_long = crate::config::defaults::MAX_TTL + Duration::from_millis(1);
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
        let completion = Completion::new(key.clone(), "a", ttl);
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
        s.complete(&key, "a", crate::config::defaults::MAX_TTL)
            .await
            .ok(),
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
