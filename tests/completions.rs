//! A succeeded handler's completion is never thrown away: not when the store blips, not
//! when the circuit breaker is open, not when the run carrying deferred completions fails
//! or is dropped; it is retried until its claim's lease ends. A claim is kept through
//! faults shorter than most of the lease: a failed renewal is retried soon. A batch never
//! starts a handler on a claim it knows is lost. Each test drives a real `MemoryStore`
//! through a switchable fault layer on Tokio's paused clock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce::{
    async_trait, Claim, EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig,
    IdempotencyStore, MemoryStore, Outcome, Record, RecordState, StoreError,
};
use serde_json::json;

/// A `MemoryStore` whose calls can be made to fail or hang, per operation.
#[derive(Clone, Default)]
struct Faulty {
    inner: MemoryStore,
    fail_claims: Arc<AtomicBool>,
    fail_completes: Arc<AtomicBool>,
    hang_completes: Arc<AtomicBool>,
    slow_completes: Arc<AtomicBool>,
    fail_extends: Arc<AtomicBool>,
    /// `extend` takes 100 ms (a remote store's round trip).
    slow_extends: Arc<AtomicBool>,
    /// `complete` answers that the claim is not held (a claim lost).
    refuse_completes: Arc<AtomicBool>,
    hang_gets: Arc<AtomicBool>,
    completes: Arc<AtomicUsize>,
}

fn down(operation: &str) -> StoreError {
    StoreError::Unavailable {
        message: format!("{operation}: injected outage"),
        source: None,
    }
}

#[async_trait]
impl IdempotencyStore for Faulty {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        if self.fail_claims.load(Ordering::SeqCst) {
            return Err(down("try_claim"));
        }
        self.inner.try_claim(key, owner, lease).await
    }
    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        if self.hang_completes.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.slow_completes.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.fail_completes.load(Ordering::SeqCst) {
            return Err(down("complete"));
        }
        if self.refuse_completes.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.inner.complete(key, owner, ttl).await
    }
    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.inner.release(key, owner).await
    }
    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        if self.fail_extends.load(Ordering::SeqCst) {
            return Err(down("extend"));
        }
        if self.slow_extends.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.inner.extend(key, owner, lease).await
    }
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        if self.hang_gets.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.get(key).await
    }
}

fn event(n: u32) -> EventEnvelope {
    EventEnvelope::new("orders.created.v1", json!({"order": n})).with_event_id(format!("o-{n}"))
}

const LEASE: Duration = Duration::from_secs(30);

fn builder() -> eventonce::ConfigBuilder {
    IdempotencyConfig::builder("orders")
        .lease(LEASE)
        .store_timeout(Duration::from_millis(200))
        .circuit_breaker(1, Duration::from_secs(1))
}

/// A guard configured by `config` over a fresh fault-injecting store, and the store.
fn guarded(config: eventonce::ConfigBuilder) -> (Faulty, Guard) {
    let store = Faulty::default();
    let guard = Guard::new(store.clone(), config.build().unwrap());
    (store, guard)
}

async fn state(store: &Faulty, guard: &Guard, e: &EventEnvelope) -> Option<RecordState> {
    let key = guard.key_for(e).expect("key");
    store.inner.get(&key).await.expect("get").map(|r| r.state)
}

async fn ok<T>(v: T) -> Result<T, String> {
    Ok(v)
}

#[tokio::test(start_paused = true)]
async fn a_completion_refused_by_an_open_breaker_is_retried_until_written() {
    for mode in [FailMode::Open, FailMode::Closed] {
        let (store, guard) = guarded(builder().on_store_error(mode));
        let e = event(1);
        // The handler finishes while the store refuses writes and the breaker opens.
        let answer = guard
            .run(&e, async {
                store.fail_completes.store(true, Ordering::SeqCst);
                ok("charged").await
            })
            .await;
        assert_eq!(answer.ok(), Some(Outcome::Processed("charged")), "{mode:?}");
        assert!(
            guard.circuit_open(),
            "the failed completion opened the breaker"
        );
        assert_eq!(
            state(&store, &guard, &e).await,
            Some(RecordState::Processing)
        );
        assert_eq!(guard.stats().completions_retried, 1);

        // The store recovers; the completion is written without any new event.
        store.fail_completes.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            state(&store, &guard, &e).await,
            Some(RecordState::Completed),
            "{mode:?}: the completion was retried and written"
        );
        // After the lease a redelivery is a duplicate, not a second run.
        tokio::time::sleep(LEASE * 2).await;
        let again = guard.run(&e, ok("twice")).await;
        assert_eq!(again.ok(), Some(Outcome::Duplicate), "{mode:?}");
        assert_eq!(guard.stats().completions_abandoned, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_completion_that_cannot_be_written_within_its_lease_is_counted_and_given_up() {
    let (store, guard) = guarded(builder());
    let e = event(2);
    store.fail_completes.store(true, Ordering::SeqCst);
    let answer = guard.run(&e, ok(())).await;
    assert_eq!(answer.ok(), Some(Outcome::Processed(())));
    tokio::time::sleep(LEASE * 2).await;
    let stats = guard.stats();
    assert_eq!(stats.completions_retried, 1);
    assert_eq!(stats.completions_abandoned, 1, "{stats:?}");
    let attempts = store.completes.load(Ordering::SeqCst);
    assert!(attempts > 3, "retried with backoff: {attempts} attempts");
    // Given up: no more attempts once the lease is over.
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(store.completes.load(Ordering::SeqCst), attempts);
}

#[tokio::test(start_paused = true)]
async fn deferred_completions_survive_a_failed_carrier() {
    let (store, guard) = guarded(builder().defer_completion(Duration::from_secs(5)));
    let first = event(10);
    assert_eq!(
        guard.run(&first, ok(1)).await.ok(),
        Some(Outcome::Processed(1))
    );
    // The next claim carries the deferred completion, and the store blips.
    store.fail_completes.store(true, Ordering::SeqCst);
    store.fail_claims.store(true, Ordering::SeqCst);
    let second = event(11);
    let answer = guard.run(&second, ok(2)).await;
    assert_eq!(answer.ok(), Some(Outcome::Unprotected(2)));
    store.fail_completes.store(false, Ordering::SeqCst);
    store.fail_claims.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        state(&store, &guard, &first).await,
        Some(RecordState::Completed),
        "the completion the failed carrier took was put back and written"
    );
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        guard.run(&first, ok(3)).await.ok(),
        Some(Outcome::Duplicate)
    );
}

#[tokio::test(start_paused = true)]
async fn deferred_completions_survive_a_dropped_carrier() {
    let (store, guard) = guarded(
        builder()
            .defer_completion(Duration::from_secs(5))
            .store_timeout(Duration::from_secs(60)),
    );
    let first = event(20);
    assert_eq!(
        guard.run(&first, ok(1)).await.ok(),
        Some(Outcome::Processed(1))
    );
    // The carrier hangs in the store and the caller gives up on it (a shutdown, a
    // `select!`, a timeout): its future is dropped mid-call.
    store.hang_completes.store(true, Ordering::SeqCst);
    let second = event(21);
    let cut = tokio::time::timeout(Duration::from_millis(100), guard.run(&second, ok(2))).await;
    assert!(cut.is_err(), "the carrier was dropped while it hung");
    store.hang_completes.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        state(&store, &guard, &first).await,
        Some(RecordState::Completed),
        "the completion the dropped carrier took was put back and written"
    );
}

#[tokio::test(start_paused = true)]
async fn flush_failing_keeps_the_completions_for_later() {
    let (store, guard) = guarded(builder().defer_completion(Duration::from_secs(5)));
    let e = event(30);
    assert_eq!(
        guard.run(&e, ok(())).await.ok(),
        Some(Outcome::Processed(()))
    );
    store.fail_completes.store(true, Ordering::SeqCst);
    assert!(guard.flush().await.is_err());
    store.fail_completes.store(false, Ordering::SeqCst);
    assert_eq!(
        guard.flush().await.ok(),
        Some(1),
        "still queued after the failure"
    );
    assert_eq!(
        state(&store, &guard, &e).await,
        Some(RecordState::Completed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_never_starts_a_handler_on_a_claim_it_knows_is_lost() {
    let (store, guard) = guarded(
        builder()
            .batch_concurrency(1)
            .circuit_breaker(0, Duration::from_secs(1)),
    );
    let (a, b) = (event(40), event(41));
    let key_b = guard.key_for(&b).expect("key");
    let batch = [a.clone(), b.clone()];
    let runs = Arc::new(AtomicUsize::new(0));
    let answers = guard
        .run_batch(&batch, |event| {
            let (store, key_b, runs) = (store.clone(), key_b.clone(), Arc::clone(&runs));
            let first = event.event_id == a.event_id;
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                if first {
                    // Renewals fail for longer than the lease; consumer B takes e2 over.
                    store.fail_extends.store(true, Ordering::SeqCst);
                    tokio::time::sleep(LEASE + LEASE / 2).await;
                    let taken = store
                        .inner
                        .try_claim(&key_b, "consumer-b", LEASE * 10)
                        .await;
                    assert_eq!(taken.ok(), Some(Claim::Acquired));
                    store.fail_extends.store(false, Ordering::SeqCst);
                    // The next renewal reports e2's claim lost.
                    tokio::time::sleep(LEASE).await;
                }
                Ok::<_, String>(())
            }
        })
        .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "e2's handler never started");
    assert!(
        matches!(answers[1], Err(GuardError::InProgress)),
        "e2 is redelivered, not committed: {:?}",
        answers[1].as_ref().map(|_| ())
    );
    let record = store.inner.get(&key_b).await.expect("get").expect("record");
    assert_eq!(record.state, RecordState::Processing, "B's claim is intact");
}

/// Switches `flag` on at `from` and off at `to` (from now), in the background.
fn fault_between(flag: &Arc<AtomicBool>, from: Duration, to: Duration) {
    let flag = Arc::clone(flag);
    tokio::spawn(async move {
        tokio::time::sleep(from).await;
        flag.store(true, Ordering::SeqCst);
        tokio::time::sleep(to - from).await;
        flag.store(false, Ordering::SeqCst);
    });
}

/// Renewals are due every 10 s under the 30 s lease. Failing from 9 s to 22 s, the
/// renewals due at 10 s and 20 s fail; the one of 30 s would be too late.
const RENEWALS_DOWN: (Duration, Duration) = (Duration::from_secs(9), Duration::from_secs(22));

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_is_retried_before_the_lease_ends() {
    let (store, guard) = guarded(builder().circuit_breaker(0, Duration::from_secs(1)));
    let e = event(50);
    let key = guard.key_for(&e).expect("key");
    fault_between(&store.fail_extends, RENEWALS_DOWN.0, RENEWALS_DOWN.1);
    let answer = guard
        .run(&e, async {
            tokio::time::sleep(LEASE + LEASE / 2).await;
            // Past the lease that the failed renewals would have let lapse.
            let other = store.inner.try_claim(&key, "consumer-b", LEASE).await;
            assert_eq!(other.ok(), Some(Claim::InProgress), "still held");
            ok(()).await
        })
        .await;
    assert_eq!(answer.ok(), Some(Outcome::Processed(())));
    assert_eq!(guard.stats().claims_lost, 0);
    assert_eq!(
        state(&store, &guard, &e).await,
        Some(RecordState::Completed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_retries_a_failed_renewal_before_the_lease_ends() {
    let (store, guard) = guarded(builder().circuit_breaker(0, Duration::from_secs(1)));
    let batch = [event(51), event(52)];
    let keys: Vec<String> = batch.iter().map(|e| guard.key_for(e).unwrap()).collect();
    fault_between(&store.fail_extends, RENEWALS_DOWN.0, RENEWALS_DOWN.1);
    let answers = guard
        .run_batch(&batch, |_| {
            let (store, keys) = (store.clone(), keys.clone());
            async move {
                tokio::time::sleep(LEASE + LEASE / 2).await;
                for key in &keys {
                    let other = store.inner.try_claim(key, "consumer-b", LEASE).await;
                    assert_eq!(other.ok(), Some(Claim::InProgress), "still held");
                }
                ok(()).await
            }
        })
        .await;
    assert!(answers
        .iter()
        .all(|a| matches!(a, Ok(Outcome::Processed(())))));
    assert_eq!(guard.stats().claims_lost, 0);
}

#[tokio::test(start_paused = true)]
async fn checking_a_completion_the_store_refused_is_bounded_by_the_store_timeout() {
    let (store, guard) = guarded(builder().defer_completion(Duration::from_secs(5)));
    assert_eq!(
        guard.run(&event(60), ok(1)).await.ok(),
        Some(Outcome::Processed(1))
    );
    // The next claim carries the completion; the store says the claim is not held, and
    // the read that checks whether it was completed anyway never answers.
    store.refuse_completes.store(true, Ordering::SeqCst);
    store.hang_gets.store(true, Ordering::SeqCst);
    let answer = tokio::time::timeout(LEASE, guard.run(&event(61), ok(2))).await;
    assert!(
        matches!(answer, Ok(Ok(Outcome::Processed(2)))),
        "the run answers within its store timeouts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_completion_is_retried_until_its_claims_lease_ends() {
    let (store, guard) = guarded(builder());
    let e = event(70);
    // The handler runs 25 s (renewed at 10 s and 20 s: its lease ends at 50 s); the store
    // refuses completions from its end until 45 s.
    let answer = guard
        .run(&e, async {
            tokio::time::sleep(Duration::from_secs(25)).await;
            store.fail_completes.store(true, Ordering::SeqCst);
            ok(()).await
        })
        .await;
    assert_eq!(answer.ok(), Some(Outcome::Processed(())));
    tokio::time::sleep(Duration::from_secs(20)).await;
    store.fail_completes.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        state(&store, &guard, &e).await,
        Some(RecordState::Completed),
        "written in the last seconds of the lease"
    );
    assert_eq!(guard.stats().completions_abandoned, 0);
}

#[tokio::test(start_paused = true)]
async fn a_deferred_completion_is_written_before_its_claim_needs_renewing_and_retried_to_the_end() {
    let (store, guard) = guarded(builder().defer_completion(LEASE / 2));
    let e = event(80);
    // Claimed at 0 s, its lease ends at 30 s; the store refuses completions from 12 s
    // to 26 s. Deferred by up to 15 s, the completion is first tried by 10 s, when the
    // claim's renewal would have been due.
    fault_between(
        &store.fail_completes,
        Duration::from_secs(12),
        Duration::from_secs(26),
    );
    assert_eq!(
        guard.run(&e, ok(())).await.ok(),
        Some(Outcome::Processed(()))
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        state(&store, &guard, &e).await,
        Some(RecordState::Completed),
        "written before the claim needed renewing"
    );

    // Claimed at 11 s, its lease ends at 41 s: first tried by 21 s, during the fault, then
    // retried until written after it.
    let f = event(81);
    assert_eq!(
        guard.run(&f, ok(())).await.ok(),
        Some(Outcome::Processed(()))
    );
    tokio::time::sleep(Duration::from_secs(28)).await;
    assert_eq!(
        state(&store, &guard, &f).await,
        Some(RecordState::Completed),
        "retried until written within its lease"
    );
    assert_eq!(guard.stats().completions_abandoned, 0);
}

#[tokio::test(start_paused = true)]
async fn flush_returns_only_after_a_write_already_in_flight() {
    let (store, guard) = guarded(builder().defer_completion(Duration::from_secs(1)));
    let e = event(50);
    assert_eq!(
        guard.run(&e, ok(())).await.ok(),
        Some(Outcome::Processed(()))
    );
    // The deferral timer fires and its write is in flight (slow) when flush is called,
    // as at a shutdown: flush must not return before that write has landed.
    store.slow_completes.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1010)).await;
    assert_eq!(
        state(&store, &guard, &e).await,
        Some(RecordState::Processing)
    );
    assert!(guard.flush().await.is_ok());
    assert_eq!(
        state(&store, &guard, &e).await,
        Some(RecordState::Completed),
        "flush returned while a write of the completion was still in flight"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_dropped_while_settling_still_completes_its_successes() {
    let (store, guard) = guarded(builder().store_timeout(Duration::from_secs(60)));
    let batch = [event(50), event(51)];
    // The completion call hangs in the store and the caller gives up on the batch: its
    // future is dropped while the completion and the release are in flight.
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        guard.run_batch(&batch, |e| {
            let fail = e.event_id.as_deref() == Some("o-51");
            store.hang_completes.store(true, Ordering::SeqCst);
            async move {
                if fail {
                    Err("failed".to_owned())
                } else {
                    Ok(())
                }
            }
        }),
    )
    .await;
    assert!(
        cut.is_err(),
        "the batch was dropped while its completion hung"
    );
    store.hang_completes.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        state(&store, &guard, &batch[0]).await,
        Some(RecordState::Completed),
        "the completion in flight was owed and written"
    );
    assert_eq!(state(&store, &guard, &batch[1]).await, None, "released");
    assert_eq!(guard.stats().cancelled, 1);
}

/// A guard dropped while its queue owes one key twice (an expired owner's completion put
/// back after a write that outlasted its lease, beside the completion of the redelivery
/// that claimed the key after it) still writes the live completion at drop.
#[tokio::test(start_paused = true)]
async fn a_dropped_guard_writes_its_live_completion_beside_an_expired_one_of_the_same_key() {
    let lease = Duration::from_secs(6);
    let (store, guard) = guarded(
        builder()
            .lease(lease)
            .store_timeout(Duration::from_secs(5))
            .defer_completion(Duration::from_secs(3)),
    );
    let a = event(90);
    store.hang_completes.store(true, Ordering::SeqCst);
    assert_eq!(guard.run(&a, ok(1)).await.ok(), Some(Outcome::Processed(1)));
    // The deferred completion is written at 2 s (before a renewal would be due) and hangs
    // until the store timeout, at 7 s; the first claim's lease ends at 6 s.
    tokio::time::sleep(Duration::from_millis(6_100)).await;
    assert_eq!(
        guard.run(&a, ok(2)).await.ok(),
        Some(Outcome::Processed(2)),
        "the redelivery claims the lapsed key"
    );
    // At 7 s the hung write gives up and puts the first completion back: the queue owes
    // the key twice, once for an expired claim.
    tokio::time::sleep(Duration::from_millis(950)).await;
    store.hang_completes.store(false, Ordering::SeqCst);
    drop(guard);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let key = IdempotencyConfig::builder("orders")
        .build()
        .unwrap()
        .generate_key(&a.event_type, &a.deterministic_hash().unwrap());
    let record = store.inner.get(&key).await.unwrap();
    assert_eq!(
        record.as_ref().map(|r| r.state),
        Some(RecordState::Completed),
        "the live completion was written at drop: {record:?}"
    );
}

/// A batch of slow handlers on a store without a batch renewal of its own (the trait's
/// `extend_many` renews key after key): the renewals of eight claims, 100 ms each, fit in
/// one 200 ms store timeout, so no claim is lost.
#[tokio::test(start_paused = true)]
async fn a_batch_renewal_on_a_store_without_extend_many_is_not_the_sum_of_its_keys() {
    let (store, guard) = guarded(builder().batch_concurrency(8));
    store.slow_extends.store(true, Ordering::SeqCst);
    let events: Vec<EventEnvelope> = (0..8).map(|n| event(300 + n)).collect();
    let answers = guard
        .run_batch(&events, |_| async {
            tokio::time::sleep(LEASE * 2).await;
            Ok::<_, String>(())
        })
        .await;
    let stats = guard.stats();
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(Outcome::Processed(())))),
        "{answers:?}; {stats:?}"
    );
    assert_eq!(stats.claims_lost, 0, "{stats:?}");
}
