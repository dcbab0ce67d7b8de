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
