//! `BatchChain`: a batch's completions carried by the next batch's claim call, and what
//! a batch's answers promise when the call that carried them fails or is dropped.

use std::time::Duration;

use tokio::sync::Notify;

use super::{config, event, guard, record, unique_service, Boom, Fault, FaultyStore, StoreFactory};
use crate::{EventEnvelope, Guard, Outcome, RecordState};

/// The state of each event's record.
async fn states(g: &Guard, events: &[EventEnvelope]) -> Vec<Option<RecordState>> {
    let mut states = Vec::with_capacity(events.len());
    for e in events {
        let key = g.key_for(e).expect("key");
        states.push(record(g.store(), &key).await.map(|r| r.state));
    }
    states
}

/// Two overlapping batches of a chain, the second coming to claim while the first runs
/// its handlers: the second's claim carries the first's completions, and the first
/// answers only once they are written.
pub async fn guard_chain_carries_completions_with_the_next_claim(f: &impl StoreFactory) {
    let g = guard(f, config(&unique_service("chain"))).await;
    let chain = g.batch_chain().with_carry_wait(Duration::from_secs(2));
    let first: Vec<EventEnvelope> = (900..903).map(event).collect();
    let second: Vec<EventEnvelope> = (903..906).map(event).collect();
    let handler = |_: &EventEnvelope| async { Ok::<_, Boom>(()) };
    // The second batch comes to claim while the first runs its handlers.
    let running = Notify::new();
    let (first_answers, second_answers) = futures_util::future::join(
        async {
            let answers = chain
                .run_batch(&first, |_| {
                    running.notify_one();
                    async { Ok::<_, Boom>(()) }
                })
                .await;
            // Its answers in hand: its completions are written.
            let written = states(&g, &first).await;
            // No batch follows the second: its completions go at once.
            chain.expect_more(false);
            (answers, written)
        },
        async {
            running.notified().await;
            chain.run_batch(&second, handler).await
        },
    )
    .await;
    let (first_answers, written) = first_answers;
    assert!(
        first_answers
            .iter()
            .chain(&second_answers)
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "{first_answers:?} {second_answers:?}"
    );
    assert_eq!(written, vec![Some(RecordState::Completed); 3]);
    assert_eq!(
        states(&g, &second).await,
        vec![Some(RecordState::Completed); 3]
    );
    assert_eq!(
        chain.carried(),
        (1, 1),
        "the first batch's completions carried, the second's alone"
    );
    assert_eq!(g.stats().processed, 6);
}

/// A carried completion whose call fails is owed, exactly as after a failed batch
/// completion: its event answers `Processed`, and the completion is written once the
/// store is back.
pub async fn guard_chain_owes_completions_its_carrier_failed_to_write(f: &impl StoreFactory) {
    let faulty = FaultyStore::new(f.create().await);
    let control = faulty.control();
    let g = Guard::new(
        faulty,
        config(&unique_service("chain-fault"))
            .build()
            .expect("config"),
    );
    let chain = g.batch_chain().with_carry_wait(Duration::from_secs(2));
    let first: Vec<EventEnvelope> = (910..912).map(event).collect();
    let second: Vec<EventEnvelope> = (912..914).map(event).collect();
    let running = Notify::new();
    let (first_answers, second_answers) = futures_util::future::join(
        chain.run_batch(&first, |_| {
            // From the first batch's handlers on, the store fails: the second batch's
            // claim, carrying their completions, fails.
            control.set(Fault::Fail);
            running.notify_one();
            async { Ok::<_, Boom>(()) }
        }),
        async {
            running.notified().await;
            chain
                .run_batch(&second, |_| async { Ok::<_, Boom>(()) })
                .await
        },
    )
    .await;
    assert!(
        first_answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "{first_answers:?}"
    );
    assert!(
        second_answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Unprotected(())))),
        "{second_answers:?}"
    );
    assert_eq!(g.stats().completions_retried, 2);
    control.set(Fault::None);
    g.flush().await.expect("the owed completions are written");
    assert_eq!(
        states(&g, &first).await,
        vec![Some(RecordState::Completed); 2]
    );
}

/// A batch whose completions were taken by a claim that is dropped before the store
/// answered writes them itself: its answers still mean written.
pub async fn guard_chain_writes_completions_whose_carrier_was_dropped(f: &impl StoreFactory) {
    let faulty = FaultyStore::new(f.create().await);
    let control = faulty.control();
    let g = Guard::new(
        faulty,
        config(&unique_service("chain-drop"))
            .build()
            .expect("config"),
    );
    let chain = g.batch_chain().with_carry_wait(Duration::from_secs(2));
    let first: Vec<EventEnvelope> = (920..922).map(event).collect();
    let second: Vec<EventEnvelope> = (922..924).map(event).collect();
    let running = Notify::new();
    let (first_answers, second) = futures_util::future::join(
        async {
            let answers = chain
                .run_batch(&first, |_| {
                    // The second batch's claim, carrying these completions, hangs.
                    control.set(Fault::Hang);
                    running.notify_one();
                    async { Ok::<_, Boom>(()) }
                })
                .await;
            // Bounded: the store may still hang if the batch returned too early.
            let written = tokio::time::timeout(Duration::from_secs(5), states(&g, &first)).await;
            (
                answers,
                written.expect("the store answers once the batch returned"),
            )
        },
        async {
            running.notified().await;
            let second = tokio::time::timeout(
                Duration::from_millis(200),
                chain.run_batch(&second, |_| async { Ok::<_, Boom>(()) }),
            )
            .await;
            // Dropped: the store answers again.
            control.set(Fault::None);
            second
        },
    )
    .await;
    let (answers, written) = first_answers;
    assert!(second.is_err(), "the second batch was dropped mid-claim");
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "{answers:?}"
    );
    assert_eq!(written, vec![Some(RecordState::Completed); 2]);
    assert_eq!(chain.carried(), (0, 1), "written alone after the drop");
}
