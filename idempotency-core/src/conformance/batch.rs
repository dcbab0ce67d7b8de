//! Batch store calls: `try_claim_many`, the `*_many` transitions, `complete_then_claim`
//! and `complete_then_claim_many`.

use std::sync::Arc;

use super::{completion, record, unique_key, StoreFactory, LONG, PAST_SHORT, SHORT};
use crate::{Claim, IdempotencyStore, RecordState, StoreError};

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

/// Two handles on the store, and two keys: `{tag}-done` claimed by `a` through the first,
/// `{tag}-lost` claimed by `b` through the second (a completion by `a` loses it).
async fn claimed_by_a_and_b<F: StoreFactory>(
    f: &F,
    tag: &str,
) -> (F::Store, F::Store, String, String) {
    let (s1, s2) = (f.create().await, f.create().await);
    let done_key = unique_key(&format!("{tag}-done"));
    let lost_key = unique_key(&format!("{tag}-lost"));
    assert_eq!(
        s1.try_claim(&done_key, "a", LONG).await.expect("claim"),
        Claim::Acquired
    );
    assert_eq!(
        s2.try_claim(&lost_key, "b", LONG).await.expect("claim"),
        Claim::Acquired
    );
    (s1, s2, done_key, lost_key)
}

/// `complete_then_claim` writes the completions, then answers the claim as `try_claim`
/// would.
pub async fn complete_then_claim_completes_then_claims(f: &impl StoreFactory) {
    let (s1, s2, done_key, lost_key) = claimed_by_a_and_b(f, "ctc").await;
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

/// Four keys: absent, completed by `other`, held by `other`, and an expired claim of
/// `other`.
async fn absent_completed_held_expired(s: &impl IdempotencyStore, other: &str) -> Vec<String> {
    let keys: Vec<String> = (0..4).map(|_| unique_key("ctcm-next")).collect();
    assert_eq!(
        s.try_claim_many(&keys[1..3], other, LONG)
            .await
            .expect("claim"),
        vec![Claim::Acquired; 2]
    );
    assert!(s.complete(&keys[1], other, LONG).await.expect("complete"));
    assert_eq!(
        s.try_claim(&keys[3], other, SHORT).await.expect("claim"),
        Claim::Acquired
    );
    tokio::time::sleep(PAST_SHORT).await;
    keys
}

/// `complete_then_claim_many` writes the completions (owner-checked, each with its
/// result), then answers each claim as `try_claim_many` would, in order; either half may
/// be empty.
pub async fn complete_then_claim_many_completes_then_claims(f: &impl StoreFactory) {
    let (s1, s2, done_key, lost_key) = claimed_by_a_and_b(f, "ctcm").await;
    let keys = absent_completed_held_expired(&s2, "b").await;
    let (done, claims) = s1
        .complete_then_claim_many(
            &[
                completion(&done_key, "a", LONG).with_result(b"[7]".to_vec()),
                completion(&lost_key, "a", LONG),
            ],
            &keys,
            "c",
            LONG,
        )
        .await
        .expect("complete then claim many");
    assert_eq!(
        (done.ok(), claims),
        (
            Some(vec![true, false]),
            vec![
                Claim::Acquired,
                Claim::Completed,
                Claim::InProgress,
                Claim::Acquired
            ]
        )
    );
    let (done, result) = s1
        .get_with_result(&done_key)
        .await
        .expect("get")
        .expect("done");
    assert_eq!(
        (done.state, result.as_deref()),
        (RecordState::Completed, Some(&b"[7]"[..])),
        "completed with its result"
    );
    assert_eq!(
        record(&s1, &lost_key).await.expect("b's").owner.as_deref(),
        Some("b")
    );
    for i in [0, 3] {
        let r = record(&s1, &keys[i]).await.expect("claimed");
        assert_eq!(
            (r.state, r.owner.as_deref()),
            (RecordState::Processing, Some("c"))
        );
    }
    assert_eq!(
        record(&s1, &keys[2]).await.expect("b's").owner.as_deref(),
        Some("b")
    );
    // Either half alone.
    let (done, claims) = s1
        .complete_then_claim_many(&[completion(&keys[0], "c", LONG)], &[], "c", LONG)
        .await
        .expect("completions only");
    assert_eq!((done.ok(), claims), (Some(vec![true]), vec![]));
    let (done, claims) = s2
        .complete_then_claim_many(&[], &keys[..2], "d", LONG)
        .await
        .expect("claims only");
    assert_eq!(
        (done.ok(), claims),
        (Some(vec![]), vec![Claim::Completed, Claim::Completed])
    );
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
    // Completed and claimed in one call: refused, nothing written.
    assert!(matches!(
        s.complete_then_claim_many(&[completion(&key, "a", LONG)], &twice[..1], "a", LONG)
            .await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert_eq!(record(&s, &key).await, None, "nothing claimed");
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
