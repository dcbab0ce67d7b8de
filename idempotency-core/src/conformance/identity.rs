//! Identities and payload conflicts: what `Guard::run` and `run_batch` promise for an
//! [`Identity`](crate::Identity) and for the `EventId` and `Fields` rules, on every store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::{config, guard, record, unique_service, Boom, StoreFactory, LONG};
use crate::{EventEnvelope, GuardError, Identity, IdentityRule, Outcome};

/// An `Identity` runs once; the same id with the same fingerprint, or with none, is a
/// duplicate; with another fingerprint it is a `Conflict`, its handler never polled and
/// the record untouched.
pub async fn guard_runs_identities_once_and_refuses_changed_payloads(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("identity-conflict"))).await;
    let first = Identity::new("conformance.identity.v1", "order-42").with_fingerprint(b"v1");
    let runs = AtomicUsize::new(0);
    let run = |identity: Identity| {
        let (g, runs) = (&g, &runs);
        async move {
            g.run(&identity, async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Boom>(())
            })
            .await
        }
    };
    assert_eq!(
        run(first.clone()).await.expect("first"),
        Outcome::Processed(())
    );
    assert_eq!(run(first.clone()).await.expect("same"), Outcome::Duplicate);
    let unfingerprinted = Identity::new("conformance.identity.v1", "order-42");
    assert_eq!(
        run(unfingerprinted).await.expect("none"),
        Outcome::Duplicate
    );
    let changed = Identity::new("conformance.identity.v1", "order-42").with_fingerprint(b"v2");
    let answer = run(changed).await;
    assert!(
        matches!(answer, Err(GuardError::Conflict { .. })),
        "{answer:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a conflict's handler never runs"
    );
    let key = g.key_for(&first).expect("key");
    let stored = record(g.store(), &key).await.expect("record");
    assert_eq!(
        stored.fingerprint(),
        first.fingerprint(),
        "the record is untouched"
    );
    let other = Identity::new("conformance.identity.v1", "order-43").with_fingerprint(b"v2");
    assert_eq!(run(other).await.expect("other id"), Outcome::Processed(()));
    assert_eq!(g.stats().conflicts, 1);
}

/// While the first delivery's claim is live, a delivery with another fingerprint is a
/// `Conflict` (and one with the same fingerprint `InProgress`).
pub async fn guard_refuses_a_changed_payload_while_the_first_claim_is_live(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("identity-live")).lease(LONG)).await;
    let first = Identity::new("conformance.identity.v1", "live").with_fingerprint(b"v1");
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let task = tokio::spawn({
        let (g, first, started, release) =
            (g.clone(), first.clone(), started.clone(), release.clone());
        async move {
            g.run(&first, async move {
                started.notify_one();
                release.notified().await;
                Ok::<_, Boom>(())
            })
            .await
        }
    });
    started.notified().await;
    let same = g.run(&first, async { Ok::<_, Boom>(()) }).await;
    assert!(matches!(same, Err(GuardError::InProgress)), "{same:?}");
    let changed = Identity::new("conformance.identity.v1", "live").with_fingerprint(b"v2");
    let answer = g.run(&changed, async { Ok::<_, Boom>(()) }).await;
    assert!(
        matches!(answer, Err(GuardError::Conflict { .. })),
        "{answer:?}"
    );
    release.notify_one();
    assert_eq!(
        task.await.expect("task").expect("first"),
        Outcome::Processed(())
    );
}

/// Under `IdentityRule::EventId` the key is the id and the data the fingerprint: the same
/// data in another key order is a duplicate, other data a `Conflict`, no id an invalid
/// event.
pub async fn guard_keys_by_event_id_and_refuses_changed_data(f: &impl StoreFactory) {
    let builder = config(&unique_service("identity-event-id")).identity_rule(IdentityRule::EventId);
    let g = guard(f, builder).await;
    let parse = |text: &str| EventEnvelope::from_slice(text.as_bytes()).expect("envelope");
    let first = parse(r#"{"event_id":"e-1","event_type":"t.v1","data":{"a":1,"b":2}}"#);
    let reordered = parse(r#"{"event_id":"e-1","event_type":"t.v1","data":{"b":2,"a":1}}"#);
    let changed = parse(r#"{"event_id":"e-1","event_type":"t.v1","data":{"a":1,"b":3}}"#);
    let idless = parse(r#"{"event_type":"t.v1","data":{"a":1}}"#);
    let ok = || async { Ok::<_, Boom>(()) };
    assert_eq!(
        g.run(&first, ok()).await.expect("first"),
        Outcome::Processed(())
    );
    assert_eq!(
        g.run(&reordered, ok()).await.expect("same"),
        Outcome::Duplicate
    );
    let conflict = g.run(&changed, ok()).await;
    assert!(
        matches!(conflict, Err(GuardError::Conflict { .. })),
        "{conflict:?}"
    );
    let invalid = g.run(&idless, ok()).await;
    assert!(
        matches!(invalid, Err(GuardError::InvalidEvent(_))),
        "{invalid:?}"
    );
}

/// `run_batch` checks every event: a changed payload in a batch is a `Conflict` for that
/// event alone, the others answer as `run` would.
pub async fn guard_batch_refuses_changed_payloads_per_event(f: &impl StoreFactory) {
    let builder = config(&unique_service("identity-batch")).event_type_identity_rule(
        "orders.charged.v1",
        IdentityRule::Fields(vec!["/data/order".into()]),
    );
    let g = guard(f, builder).await;
    let charge = |order: u64, amount: u64| {
        EventEnvelope::new(
            "orders.charged.v1",
            json!({"order": order, "amount": amount}),
        )
    };
    let first = vec![charge(1, 10), charge(2, 20)];
    let answers = g.run_batch(&first, |_| async { Ok::<_, Boom>(()) }).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "{answers:?}"
    );
    let again = vec![charge(1, 10), charge(2, 25), charge(3, 30)];
    let ran = AtomicUsize::new(0);
    let answers = g
        .run_batch(&again, |_| {
            ran.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Boom>(()) }
        })
        .await;
    assert!(matches!(answers[0], Ok(Outcome::Duplicate)), "{answers:?}");
    assert!(
        matches!(answers[1], Err(GuardError::Conflict { .. })),
        "{answers:?}"
    );
    assert!(
        matches!(answers[2], Ok(Outcome::Processed(()))),
        "{answers:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// A deferred completion carries the fingerprint to the completed record: a changed
/// payload is a `Conflict` whether the completion is still owed (the claim held by this
/// guard) or written (carried by the next claim, or flushed).
pub async fn guard_deferred_completion_keeps_the_payload_fingerprint(f: &impl StoreFactory) {
    let builder = config(&unique_service("identity-deferred"))
        .lease(LONG)
        .defer_completion(std::time::Duration::from_secs(20));
    let g = guard(f, builder).await;
    let ok = || async { Ok::<_, Boom>(()) };
    let first = Identity::new("conformance.identity.v1", "deferred").with_fingerprint(b"v1");
    let changed = Identity::new("conformance.identity.v1", "deferred").with_fingerprint(b"v2");
    assert_eq!(
        g.run(&first, ok()).await.expect("first"),
        Outcome::Processed(())
    );
    let owed = g.run(&changed, ok()).await;
    assert!(
        matches!(owed, Err(GuardError::Conflict { .. })),
        "while owed: {owed:?}"
    );
    g.flush().await.expect("flush");
    let key = g.key_for(&first).expect("key");
    let stored = record(g.store(), &key).await.expect("record");
    assert_eq!(stored.state, crate::RecordState::Completed);
    assert_eq!(stored.fingerprint(), first.fingerprint());
    let written = g.run(&changed, ok()).await;
    assert!(
        matches!(written, Err(GuardError::Conflict { .. })),
        "once written: {written:?}"
    );
    assert_eq!(g.run(&first, ok()).await.expect("same"), Outcome::Duplicate);
}

/// A record written without a fingerprint (by an older version, or under
/// `KeyScheme::PythonV2`) is accepted: a fingerprinted delivery of its key is a
/// `Duplicate`, not a conflict.
pub async fn guard_accepts_a_record_written_without_a_fingerprint(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("identity-old-record"))).await;
    let identity = Identity::new("conformance.identity.v1", "old").with_fingerprint(b"v1");
    let key = g.key_for(&identity).expect("key");
    let store = g.store();
    let long = std::time::Duration::from_secs(3600);
    assert_eq!(
        store
            .try_claim(&key, "old-owner", long)
            .await
            .expect("claim"),
        crate::Claim::Acquired
    );
    assert!(store
        .complete(&key, "old-owner", long)
        .await
        .expect("complete"));
    let answer = g.run(&identity, async { Ok::<_, Boom>(()) }).await;
    assert!(matches!(answer, Ok(Outcome::Duplicate)), "{answer:?}");
}
