//! Stored results: what `complete_with_result`, `get_with_result` and `Guard::run_stored`
//! promise on top of a store.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::{
    completion, config, event, guard, unique_key, unique_service, Boom, Fault, FaultyStore,
    StoreFactory, LONG,
};
use crate::{Claim, GuardError, IdempotencyStore, Identity, Outcome, RecordState, StoredOutcome};

/// A result kept with the completion is read back byte for byte (every byte value, a
/// record of many KiB), with the record's state and owner; it is owner-checked like
/// `complete`; a processing record and one completed by plain `complete` have none.
pub async fn stored_result_is_kept_with_the_completion_and_read_back(f: &impl StoreFactory) {
    let store = f.create().await;
    let key = unique_key("result-kept");
    assert_eq!(
        store.try_claim(&key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    let (_, none) = store
        .get_with_result(&key)
        .await
        .expect("get_with_result")
        .expect("a processing record");
    assert_eq!(none, None, "a processing record has no result");
    let mut bytes: Vec<u8> = (0..=255u8).collect();
    bytes.extend(std::iter::repeat_n(b'x', 20_000));
    assert!(
        !store
            .complete_with_result(&key, "b", LONG, b"stolen")
            .await
            .expect("complete_with_result"),
        "another owner cannot complete with a result"
    );
    assert!(store
        .complete_with_result(&key, "a", LONG, &bytes)
        .await
        .expect("complete_with_result"));
    let (record, result) = store
        .get_with_result(&key)
        .await
        .expect("get_with_result")
        .expect("the completed record");
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(record.owner.as_deref(), Some("a"));
    assert!(
        result.as_deref() == Some(&bytes[..]),
        "the result, byte for byte: kept {} bytes of {}",
        result.as_ref().map_or(0, Vec::len),
        bytes.len()
    );
    let plain = store.get(&key).await.expect("get").expect("record");
    assert_eq!(plain.state, RecordState::Completed);
    assert_eq!(plain.owner.as_deref(), Some("a"));
    assert_eq!(
        store.try_claim(&key, "c", LONG).await.expect("claim"),
        Claim::Completed,
        "a record with a result is a completed record"
    );

    let other = unique_key("result-none");
    assert_eq!(
        store.try_claim(&other, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert!(store.complete(&other, "a", LONG).await.expect("complete"));
    let (record, result) = store
        .get_with_result(&other)
        .await
        .expect("get_with_result")
        .expect("the completed record");
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(result, None, "`complete` keeps no result");
    assert!(store
        .get_with_result(&unique_key("result-absent"))
        .await
        .expect("get_with_result")
        .is_none());
}

/// `run_stored` answers a duplicate with the first run's value (`Replayed`), never polling
/// the handler; plain `run` of the same event answers `Duplicate`; an empty result (`""`)
/// is a result too.
pub async fn guard_replays_the_stored_result_of_a_duplicate(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("result-replay"))).await;
    let e = event(1);
    let value = json!({"order": 17, "total": "12.50", "lines": ["a", "b"]});
    let out = g
        .run_stored(&e, async { Ok::<_, Boom>(value.clone()) })
        .await
        .expect("run_stored");
    assert_eq!(out, StoredOutcome::Processed(value.clone()));
    let polled = AtomicUsize::new(0);
    let again = g
        .run_stored(&e, async {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(json!("a second answer"))
        })
        .await
        .expect("run_stored");
    assert_eq!(again, StoredOutcome::Replayed(value));
    assert_eq!(polled.load(Ordering::SeqCst), 0, "a replay never polls");
    let plain = g.run(&e, async { Ok::<_, Boom>(0) }).await.expect("run");
    assert_eq!(plain, Outcome::Duplicate);

    let empty = event(2);
    let out = g
        .run_stored(&empty, async { Ok::<_, Boom>(String::new()) })
        .await
        .expect("run_stored");
    assert_eq!(out, StoredOutcome::Processed(String::new()));
    let again = g
        .run_stored(&empty, async { Ok::<_, Boom>("other".to_owned()) })
        .await
        .expect("run_stored");
    assert_eq!(again, StoredOutcome::Replayed(String::new()));
    assert_eq!(g.stats().processed, 2);
}

/// A result over `max_result_bytes` completes the event without it (counted, never an
/// error, never a rerun): a duplicate answers `Duplicate`. A record written by plain `run`
/// answers `run_stored` as `Duplicate` too.
pub async fn guard_completes_without_a_result_over_the_size_bound(f: &impl StoreFactory) {
    let g = guard(
        f,
        config(&unique_service("result-bound")).max_result_bytes(16),
    )
    .await;
    let e = event(1);
    let big = "y".repeat(100);
    let out = g
        .run_stored(&e, async { Ok::<_, Boom>(big.clone()) })
        .await
        .expect("an oversized result is not an error");
    assert_eq!(out, StoredOutcome::Processed(big));
    let again = g
        .run_stored(&e, async { Ok::<_, Boom>("rerun".to_owned()) })
        .await
        .expect("run_stored");
    assert_eq!(
        again,
        StoredOutcome::Duplicate,
        "completed, without a result"
    );
    let stats = g.stats();
    assert_eq!((stats.processed, stats.results_dropped), (1, 1));
    let key = g.key_for(&e).expect("key");
    let record = g.store().get(&key).await.expect("get").expect("record");
    assert_eq!(record.state, RecordState::Completed);

    let plain = event(2);
    let out = g
        .run(&plain, async { Ok::<_, Boom>(1) })
        .await
        .expect("run");
    assert_eq!(out, Outcome::Processed(1));
    let stored = g
        .run_stored(&plain, async { Ok::<_, Boom>(2) })
        .await
        .expect("run_stored");
    assert_eq!(stored, StoredOutcome::Duplicate, "no result recorded");
}

/// A stored result is replayed only to a delivery with the same payload fingerprint;
/// another payload under the same identity is a `Conflict`, and the result stays.
pub async fn guard_replays_results_only_for_the_same_payload(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("result-conflict"))).await;
    let first = Identity::new("conformance.request.v1", "req-1").with_fingerprint(b"body-1");
    let changed = Identity::new("conformance.request.v1", "req-1").with_fingerprint(b"body-2");
    let out = g
        .run_stored(&first, async { Ok::<_, Boom>(7u32) })
        .await
        .expect("run_stored");
    assert_eq!(out, StoredOutcome::Processed(7));
    let refused = g.run_stored(&changed, async { Ok::<_, Boom>(8u32) }).await;
    assert!(
        matches!(refused, Err(GuardError::Conflict { .. })),
        "{refused:?}"
    );
    let again = g
        .run_stored(&first, async { Ok::<_, Boom>(9u32) })
        .await
        .expect("run_stored");
    assert_eq!(again, StoredOutcome::Replayed(7));
}

/// `run_batch_stored` answers each event in order: new events `Processed` (their handler
/// called once each), an event seen twice in the batch and one completed before
/// `Replayed` with the first run's value.
pub async fn guard_batch_replays_stored_results(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("result-batch"))).await;
    let before = g
        .run_stored(&event(3), async { Ok::<_, Boom>(30u64) })
        .await
        .expect("run_stored");
    assert_eq!(before, StoredOutcome::Processed(30));
    let events = [event(1), event(2), event(1), event(3)];
    let calls = AtomicUsize::new(0);
    let answers = g
        .run_batch_stored(&events, |e| {
            calls.fetch_add(1, Ordering::SeqCst);
            let n = e.data["n"].as_u64().unwrap_or(0);
            async move {
                // Long enough for the runs of one batch to overlap.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Ok::<_, Boom>(n * 10 + 1)
            }
        })
        .await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("answer")).collect();
    assert_eq!(
        answers,
        [
            StoredOutcome::Processed(11),
            StoredOutcome::Processed(21),
            StoredOutcome::Replayed(11),
            StoredOutcome::Replayed(30),
        ]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "handlers called");
}

/// The live record of `key` and its result.
async fn read_live(store: &impl IdempotencyStore, key: String) -> (crate::Record, Option<Vec<u8>>) {
    store
        .get_with_result(&key)
        .await
        .expect("get_with_result")
        .expect("a live record")
}

/// `complete_many` keeps each completion's result (and none for a completion without
/// one) in the same call, owner-checked per key.
pub async fn batch_completions_keep_their_results(f: &impl StoreFactory) {
    let store = f.create().await;
    let keys: Vec<String> = (0..4)
        .map(|i| unique_key(&format!("result-many-{i}")))
        .collect();
    assert_eq!(
        store
            .try_claim_many(&keys, "a", LONG)
            .await
            .expect("claim_many"),
        vec![Claim::Acquired; 4]
    );
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    let completions = [
        completion(&keys[0], "a", LONG).with_result(b"{\"n\":0}".to_vec()),
        completion(&keys[1], "a", LONG),
        completion(&keys[2], "a", LONG).with_result(binary.clone()),
        completion(&keys[3], "b", LONG).with_result(b"stolen".to_vec()),
    ];
    assert_eq!(
        store
            .complete_many(&completions)
            .await
            .expect("complete_many"),
        [true, true, true, false],
        "owner-checked per key"
    );
    let read = |key: &String| read_live(&store, key.clone());
    let (record, result) = read(&keys[0]).await;
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(result.as_deref(), Some(&b"{\"n\":0}"[..]));
    let (record, result) = read(&keys[1]).await;
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(result, None, "a completion without a result keeps none");
    assert_eq!(read(&keys[2]).await.1.as_deref(), Some(&binary[..]));
    let (record, result) = read(&keys[3]).await;
    assert_eq!(
        record.state,
        RecordState::Processing,
        "another owner's claim"
    );
    assert_eq!(result, None);
}

/// `complete_then_claim` writes the results of the completions it carries with them (one
/// with and one without a result), and still answers its claim.
pub async fn carried_completions_keep_their_results(f: &impl StoreFactory) {
    let store = f.create().await;
    let read = |key: &String| read_live(&store, key.clone());
    let carried = unique_key("result-carried");
    let next = unique_key("result-next");
    assert_eq!(
        store.try_claim(&carried, "c", LONG).await.expect("claim"),
        Claim::Acquired
    );
    let (done, claim) = store
        .complete_then_claim(
            &[completion(&carried, "c", LONG).with_result(b"[1,2,3]".to_vec())],
            &next,
            "d",
            LONG,
        )
        .await
        .expect("complete_then_claim");
    assert_eq!(done.expect("completions"), [true]);
    assert_eq!(claim, Claim::Acquired);
    let (record, result) = read(&carried).await;
    assert_eq!(record.state, RecordState::Completed);
    assert_eq!(result.as_deref(), Some(&b"[1,2,3]"[..]));
    // Several carried at once, one with and one without a result.
    let (x, y, z) = (
        unique_key("result-carried-x"),
        unique_key("result-carried-y"),
        unique_key("result-next-z"),
    );
    for key in [&x, &y] {
        assert_eq!(
            store.try_claim(key, "e", LONG).await.expect("claim"),
            Claim::Acquired
        );
    }
    let (done, claim) = store
        .complete_then_claim(
            &[
                completion(&x, "e", LONG).with_result(b"\"x\"".to_vec()),
                completion(&y, "e", LONG),
            ],
            &z,
            "f",
            LONG,
        )
        .await
        .expect("complete_then_claim");
    assert_eq!(done.expect("completions"), [true, true]);
    assert_eq!(claim, Claim::Acquired);
    assert_eq!(read(&x).await.1.as_deref(), Some(&b"\"x\""[..]));
    assert_eq!(read(&y).await.1, None);
}

/// With `defer_completion`, a `run_stored` result travels with its completion: the next
/// claim (or a flush) writes both, and a duplicate then answers `Replayed`. The batch
/// form keeps its results too.
pub async fn guard_deferred_completion_keeps_the_stored_result(f: &impl StoreFactory) {
    let g = guard(
        f,
        config(&unique_service("result-deferred"))
            .lease(std::time::Duration::from_secs(600))
            .defer_completion(std::time::Duration::from_secs(300)),
    )
    .await;
    let (a, b) = (event(1), event(2));
    let out = g
        .run_stored(&a, async { Ok::<_, Boom>(json!({"reply": "a"})) })
        .await
        .expect("run_stored");
    assert_eq!(out, StoredOutcome::Processed(json!({"reply": "a"})));
    let key = g.key_for(&a).expect("key");
    let state = g.store().get(&key).await.expect("get").expect("record");
    assert_eq!(state.state, RecordState::Processing, "deferred");
    // The next claim carries a's completion and its result.
    let out = g
        .run_stored(&b, async { Ok::<_, Boom>(json!({"reply": "b"})) })
        .await
        .expect("run_stored");
    assert_eq!(out, StoredOutcome::Processed(json!({"reply": "b"})));
    let (record, result) = g
        .store()
        .get_with_result(&key)
        .await
        .expect("get_with_result")
        .expect("record");
    assert_eq!(record.state, RecordState::Completed, "carried by b's claim");
    assert_eq!(result.as_deref(), Some(&br#"{"reply":"a"}"#[..]));
    // b redelivered to this guard while its completion waits: written first, replayed.
    let again = g
        .run_stored(&b, async { Ok::<_, Boom>(json!("second")) })
        .await
        .expect("run_stored");
    assert_eq!(again, StoredOutcome::Replayed(json!({"reply": "b"})));

    let batch = [event(3), event(4)];
    let answers = g
        .run_batch_stored(&batch, |e| {
            let n = e.data["n"].as_u64().unwrap_or(0);
            async move { Ok::<_, Boom>(n * 100) }
        })
        .await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("answer")).collect();
    assert_eq!(
        answers,
        [StoredOutcome::Processed(300), StoredOutcome::Processed(400)]
    );
    // A batch writes its completions (with their results) as it ends.
    let answers = g
        .run_batch_stored(&batch, |_| async { Ok::<_, Boom>(0u64) })
        .await;
    let answers: Vec<_> = answers.into_iter().map(|a| a.expect("answer")).collect();
    assert_eq!(
        answers,
        [StoredOutcome::Replayed(300), StoredOutcome::Replayed(400)]
    );
}

/// A completion the store did not take (an outage as the handler ends) is retried with its
/// result: once the store is back and the retry has written it, a duplicate answers
/// `Replayed` with the first run's value.
pub async fn guard_retried_completion_keeps_the_stored_result(f: &impl StoreFactory) {
    let faulty = FaultyStore::new(f.create().await);
    let control = faulty.control();
    let g = crate::Guard::new(
        faulty,
        config(&unique_service("result-retried"))
            .lease(std::time::Duration::from_secs(600))
            .store_timeout(std::time::Duration::from_millis(500))
            .build()
            .expect("config"),
    );
    let e = event(1);
    let cut = control.clone();
    let out = g
        .run_stored(&e, async move {
            // The store goes down while the handler runs: the completion is owed.
            cut.set(Fault::Fail);
            Ok::<_, Boom>(json!({"reply": 42}))
        })
        .await
        .expect("run_stored");
    assert_eq!(out, StoredOutcome::Processed(json!({"reply": 42})));
    assert_eq!(g.stats().completions_retried, 1, "{:?}", g.stats());
    control.set(Fault::None);
    let key = g.key_for(&e).expect("key");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let record = g.store().get(&key).await.expect("get").expect("record");
        if record.state == RecordState::Completed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owed completion was never retried"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = g
        .run_stored(&e, async { Ok::<_, Boom>(json!("second")) })
        .await
        .expect("run_stored");
    assert_eq!(again, StoredOutcome::Replayed(json!({"reply": 42})));
}
