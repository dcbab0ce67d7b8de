//! Row locks: batch statements that share keys never deadlock, a claim that meets a row
//! another transaction holds answers `InProgress` at once (never a store error), and the
//! transactional mode gets the isolation level and lock settings the docs promise.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventonce_core::conformance::unique_key;
use eventonce_core::{
    Claim, Completion, EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore,
    Outcome, StoreError, TransactionalStore,
};
use eventonce_postgres::{PostgresOptions, PostgresStore};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(600);
/// A generous bound for a call that must not wait for a lock: far above a round trip and
/// the store's short lock wait, far below "waits until the holder finishes".
const NO_WAIT: Duration = Duration::from_secs(3);

/// The keys in a scrambled order (a fixed permutation per seed).
fn scrambled(keys: &[String], seed: u64) -> Vec<String> {
    let mut out = keys.to_vec();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    for i in (1..out.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.swap(i, (x % (i as u64 + 1)) as usize);
    }
    out
}

fn completions(keys: &[String], owner: &str) -> Vec<Completion> {
    keys.iter()
        .map(|k| Completion {
            key: k.clone(),
            owner: owner.into(),
            ttl: TTL,
            result: None,
        })
        .collect()
}

/// Errors of one side of a race, with deadlocks counted apart.
#[derive(Default)]
struct Errors {
    deadlocks: usize,
    other: Vec<String>,
}

impl Errors {
    fn add(&mut self, err: StoreError) {
        let text = err.to_string();
        if text.contains("40P01") || text.contains("deadlock") {
            self.deadlocks += 1;
        } else {
            self.other.push(text);
        }
    }
}

/// Consumer A holds 300 claims and settles them with `settle` (in reverse or scrambled
/// order) while consumer B, on its own pool, claims the same keys (a redelivery after a
/// rebalance). Every round starts both at once; returns A's and B's errors. B may acquire
/// a key only when `settle` releases the claims.
async fn race_against_claims<F, Fut>(
    what: &str,
    rounds: usize,
    b_may_acquire: bool,
    settle: F,
) -> (Errors, Errors)
where
    F: Fn(PostgresStore, Vec<String>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send,
{
    let a = support::store(4).await;
    let b = support::store(4).await;
    let (mut a_errors, mut b_errors) = (Errors::default(), Errors::default());
    for round in 0..rounds {
        let keys: Vec<String> = (0..300)
            .map(|i| unique_key(&format!("{what}-{round}-{i}")))
            .collect();
        let claims = a.try_claim_many(&keys, "a", LEASE).await.expect("A claims");
        assert!(claims.iter().all(|c| *c == Claim::Acquired));
        let a_order = if round % 2 == 0 {
            keys.iter().rev().cloned().collect()
        } else {
            scrambled(&keys, round as u64)
        };
        let b_order = scrambled(&keys, 1000 + round as u64);
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let a_done = Arc::new(AtomicBool::new(false));
        let task_a = tokio::spawn({
            let (a, barrier, settle) = (a.clone(), Arc::clone(&barrier), settle.clone());
            let a_done = Arc::clone(&a_done);
            async move {
                barrier.wait().await;
                let settled = settle(a, a_order).await;
                a_done.store(true, Ordering::SeqCst);
                settled
            }
        });
        // B claims again while A is still settling (at most 5 times), so the two overlap.
        let task_b = tokio::spawn({
            let (b, barrier) = (b.clone(), Arc::clone(&barrier));
            async move {
                barrier.wait().await;
                let mut answers = Vec::new();
                for _ in 0..5 {
                    answers.push(b.try_claim_many(&b_order, "b", LEASE).await);
                    if a_done.load(Ordering::SeqCst) {
                        break;
                    }
                }
                answers
            }
        });
        if let Err(err) = task_a.await.expect("task A") {
            a_errors.add(err);
        }
        for answer in task_b.await.expect("task B") {
            match answer {
                Ok(claims) => assert!(
                    b_may_acquire || !claims.contains(&Claim::Acquired),
                    "B acquired a key A holds: {claims:?}"
                ),
                Err(err) => b_errors.add(err),
            }
        }
    }
    (a_errors, b_errors)
}

/// One line per race; a race with any deadlock or store error is also a failure.
fn report(what: &str, rounds: usize, a: &Errors, b: &Errors, failures: &mut Vec<String>) {
    let line = format!(
        "{what}: {rounds} rounds of 300 keys: A {} deadlocks, {} other errors; B {} deadlocks, {} other errors",
        a.deadlocks,
        a.other.len(),
        b.deadlocks,
        b.other.len()
    );
    println!("{line}");
    if a.deadlocks + b.deadlocks > 0 || !a.other.is_empty() || !b.other.is_empty() {
        failures.push(format!("{line} (A {:?}, B {:?})", a.other, b.other));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_many_racing_try_claim_many_never_deadlocks() {
    let (a, b) = race_against_claims("deadlock-complete", 40, false, |a, order| async move {
        let done = a.complete_many(&completions(&order, "a")).await?;
        assert!(done.iter().all(|d| *d), "every completion of A applies");
        Ok(())
    })
    .await;
    let mut failures = Vec::new();
    report("complete_many vs try_claim_many", 40, &a, &b, &mut failures);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_statement_racing_try_claim_many_never_deadlocks() {
    let (a, b) = race_against_claims("deadlock-extend", 20, false, |a, order| async move {
        let done = a.extend_many(&order, "a", LEASE).await?;
        assert!(done.iter().all(|d| *d), "every renewal of A applies");
        Ok(())
    })
    .await;
    let mut failures = Vec::new();
    report("extend_many vs try_claim_many", 20, &a, &b, &mut failures);
    let (a, b) = race_against_claims("deadlock-release", 20, true, |a, order| async move {
        let done = a.release_many(&order, "a").await?;
        assert!(done.iter().all(|d| *d), "every release of A applies");
        Ok(())
    })
    .await;
    report("release_many vs try_claim_many", 20, &a, &b, &mut failures);
    let (a, b) = race_against_claims("deadlock-then-claim", 20, false, |a, order| async move {
        let next = unique_key("deadlock-then-claim-next");
        let (done, claim) = a
            .complete_then_claim(&completions(&order, "a"), &next, "a", LEASE)
            .await?;
        assert!(done?.iter().all(|d| *d), "every completion of A applies");
        assert_eq!(claim, Claim::Acquired);
        Ok(())
    })
    .await;
    report(
        "complete_then_claim vs try_claim_many",
        20,
        &a,
        &b,
        &mut failures,
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_racing_the_completion_of_the_same_batch_never_deadlocks() {
    // One consumer: its heartbeat renews a batch while the batch completes.
    let store = support::store(4).await;
    let mut errors = Errors::default();
    for round in 0..40 {
        let keys: Vec<String> = (0..300)
            .map(|i| unique_key(&format!("heartbeat-{round}-{i}")))
            .collect();
        store
            .try_claim_many(&keys, "a", LEASE)
            .await
            .expect("claims");
        let reverse: Vec<String> = keys.iter().rev().cloned().collect();
        let order = scrambled(&keys, round);
        let reverse = completions(&reverse, "a");
        let (renewed, completed) = tokio::join!(
            store.extend_many(&order, "a", LEASE),
            store.complete_many(&reverse),
        );
        if let Err(err) = renewed {
            errors.add(err);
        }
        match completed {
            Ok(done) => assert!(done.iter().all(|d| *d)),
            Err(err) => errors.add(err),
        }
    }
    let mut failures = Vec::new();
    let none = Errors::default();
    report(
        "extend_many vs complete_many",
        40,
        &errors,
        &none,
        &mut failures,
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

fn event(id: &str) -> EventEnvelope {
    EventEnvelope::new("orders.paid.v1", json!({"order": id})).with_event_id(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_run_meeting_a_transactional_run_answers_in_progress_at_once() {
    let store = support::store(4).await;
    let store_timeout = Duration::from_secs(5);
    let g = Guard::new(
        store.clone(),
        IdempotencyConfig::builder(format!("lock-mix-{}", std::process::id()))
            .store_timeout(store_timeout)
            .build()
            .expect("config"),
    );
    let e = event("mixed-1");
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let held = tokio::spawn({
        let (g, store, e) = (g.clone(), store.clone(), e.clone());
        async move {
            g.run_in_transaction(&store, &e, |tx| async move {
                let _ = entered_tx.send(());
                let _ = released.await;
                (tx, Ok::<_, sqlx::Error>("transactional"))
            })
            .await
        }
    });
    entered.await.expect("the transactional handler runs");

    let polled = AtomicBool::new(false);
    let started = Instant::now();
    let plain = g
        .run(&e, async {
            polled.store(true, Ordering::SeqCst);
            Ok::<_, String>("plain")
        })
        .await;
    let took = started.elapsed();
    let (circuit_open, store_errors) = (g.circuit_open(), g.stats().store_errors);
    release.send(()).expect("the transactional handler waits");
    let transactional = held.await.expect("task");

    println!("plain run against a transactional run: {plain:?} in {took:?}");
    assert!(
        matches!(plain, Err(GuardError::InProgress)),
        "the plain run answers InProgress: {plain:?}"
    );
    assert!(
        !polled.load(Ordering::SeqCst),
        "the plain handler never ran"
    );
    assert!(
        took < store_timeout / 2,
        "answered in {took:?}, not after waiting for the lock"
    );
    assert!(!circuit_open, "the breaker stays closed");
    assert_eq!(store_errors, 0, "a row lock is not a store failure");
    assert_eq!(
        transactional.expect("the transactional run"),
        Outcome::Processed("transactional")
    );
    let again = g
        .run(&e, async { Ok::<_, String>("again") })
        .await
        .expect("redelivery");
    assert_eq!(again, Outcome::Duplicate);
}

/// Claims `key` inside a transaction of `store` and returns the transaction, which holds
/// the record's row until it ends.
async fn hold(store: &PostgresStore, key: &str) -> eventonce_postgres::PgTx {
    let mut tx = store.begin().await.expect("begin");
    let claim = store
        .claim_in(&mut tx, key, "holder", LEASE)
        .await
        .expect("claim in the transaction");
    assert_eq!(claim, Claim::Acquired);
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_meeting_a_held_row_answer_in_progress_for_that_key_only() {
    let store = support::store(6).await;
    // A fresh key claimed inside a transaction: an uncommitted insert.
    let fresh = unique_key("held-fresh");
    let fresh_tx = hold(&store, &fresh).await;
    // An expired record reclaimed inside a transaction: a committed row, locked.
    let expired = unique_key("held-expired");
    store
        .try_claim(&expired, "gone", Duration::from_millis(1))
        .await
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired_tx = hold(&store, &expired).await;

    let timed = |what: &'static str, took: Duration| {
        println!("{what}: {took:?}");
        assert!(took < NO_WAIT, "{what} waited {took:?} for a row lock");
    };
    for key in [&fresh, &expired] {
        let t = Instant::now();
        let claim = tokio::time::timeout(NO_WAIT * 2, store.try_claim(key, "other", LEASE))
            .await
            .expect("try_claim does not wait for the holder");
        timed("try_claim", t.elapsed());
        assert_eq!(claim.expect("not a store error"), Claim::InProgress);
    }

    let (a, b) = (unique_key("free-a"), unique_key("free-b"));
    let keys = vec![a.clone(), fresh.clone(), expired.clone(), b.clone()];
    let t = Instant::now();
    let claims = tokio::time::timeout(NO_WAIT * 2, store.try_claim_many(&keys, "other", LEASE))
        .await
        .expect("try_claim_many does not wait for the holders");
    timed("try_claim_many", t.elapsed());
    assert_eq!(
        claims.expect("not a store error"),
        vec![
            Claim::Acquired,
            Claim::InProgress,
            Claim::InProgress,
            Claim::Acquired
        ]
    );

    for key in [&fresh, &expired] {
        let t = Instant::now();
        let result = tokio::time::timeout(
            NO_WAIT * 2,
            store.complete_then_claim(
                &completions(&[a.clone(), b.clone()], "other"),
                key,
                "other",
                LEASE,
            ),
        )
        .await
        .expect("complete_then_claim does not wait for the holder");
        timed("complete_then_claim", t.elapsed());
        let (done, claim) = result.expect("not a store error");
        assert_eq!(claim, Claim::InProgress);
        assert_eq!(done.map(|d| d.len()).ok(), Some(2));
    }
    assert_eq!(
        store.get(&a).await.expect("get").map(|r| r.state),
        Some(eventonce_core::RecordState::Completed),
        "the completions travelled despite the held claim"
    );

    // A transactional claim meeting another transaction's claim does not wait either.
    let mut tx = store.begin().await.expect("begin");
    let t = Instant::now();
    let claim = tokio::time::timeout(NO_WAIT * 2, store.claim_in(&mut tx, &fresh, "third", LEASE))
        .await
        .expect("claim_in does not wait for the holder");
    timed("claim_in", t.elapsed());
    assert_eq!(claim.expect("not a store error"), Claim::InProgress);
    store.rollback(tx).await.expect("rollback");

    // Once the holders are gone, the keys are claimable again.
    store.rollback(fresh_tx).await.expect("rollback");
    store.rollback(expired_tx).await.expect("rollback");
    let claims = store
        .try_claim_many(&[fresh.clone(), expired.clone()], "other", LEASE)
        .await
        .expect("claims");
    assert_eq!(claims, vec![Claim::Acquired, Claim::Acquired]);
}

/// A pool whose server-side defaults differ from PostgreSQL's: SERIALIZABLE transactions
/// and a 7 s lock timeout, set per connection as an `ALTER DATABASE` or `ALTER ROLE` would.
async fn store_with_other_defaults(connections: u32) -> PostgresStore {
    store_with_other_defaults_named(connections, "eventonce-test", PostgresOptions::default()).await
}

/// The same, with the connections' `application_name` and the store's options.
async fn store_with_other_defaults_named(
    connections: u32,
    application: &str,
    options: PostgresOptions,
) -> PostgresStore {
    drop(support::store(1).await);
    let connect: PgConnectOptions = support::url().parse().expect("url");
    let connect = connect.application_name(application).options([
        ("default_transaction_isolation", "serializable"),
        ("lock_timeout", "7s"),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect_with(connect)
        .await
        .expect("connect");
    PostgresStore::from_pool_with(pool, options.schema(support::schema())).expect("names")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_claim_under_a_serializable_default_meeting_a_newer_record_answers_in_progress() {
    // Under SERIALIZABLE, a claim that waited for another transaction's record and then
    // meets it committed fails with a serialization error (40001): nothing was claimed,
    // so it is an answer (in progress), not a store failure.
    let application = format!("eventonce-serializable-{}", std::process::id());
    let store = store_with_other_defaults_named(
        3,
        &application,
        PostgresOptions::default().lock_wait(Duration::from_secs(20)),
    )
    .await;
    let key = unique_key("serializable-plain");
    let holder = hold(&store, &key).await;
    let waiting = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move { store.try_claim(&key, "other", LEASE).await }
    });
    // Commit the holder only once the claim waits for it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let waiters: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&application)
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_activity");
        if waiters > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the claim never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.commit(holder).await.expect("commit");
    let claim = waiting.await.expect("task");
    assert!(
        matches!(claim, Ok(Claim::InProgress)),
        "a claim meeting a newer record is in progress, not an error: {claim:?}"
    );
}

#[tokio::test]
async fn run_in_transaction_is_read_committed_whatever_the_server_default() {
    let store = store_with_other_defaults(2).await;
    let server_default: String =
        sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
            .fetch_one(store.pool())
            .await
            .expect("setting");
    assert_eq!(server_default, "serializable", "the pool's own default");
    let g = Guard::new(
        store.clone(),
        IdempotencyConfig::builder("tx-isolation")
            .build()
            .expect("config"),
    );
    let seen = g
        .run_in_transaction(&store, &event("isolation-1"), |mut tx| async move {
            let r = sqlx::query_as::<_, (String, String)>(
                "SELECT current_setting('transaction_isolation'), current_setting('lock_timeout')",
            )
            .fetch_one(&mut *tx)
            .await;
            (tx, r)
        })
        .await
        .expect("run")
        .into_value()
        .expect("processed");
    assert_eq!(
        seen,
        ("read committed".to_owned(), "7s".to_owned()),
        "the handler's transaction is READ COMMITTED and keeps the session's lock timeout"
    );
}

#[tokio::test]
async fn store_statements_leave_the_session_lock_timeout_alone() {
    // One connection: every statement below runs on it.
    let store = store_with_other_defaults(1).await;
    let key = unique_key("session");
    store.try_claim(&key, "o", LEASE).await.expect("claim");
    store
        .try_claim_many(&[unique_key("session-many")], "o", LEASE)
        .await
        .expect("claim many");
    store
        .complete_then_claim(
            &completions(&[key], "o"),
            &unique_key("session-next"),
            "o",
            LEASE,
        )
        .await
        .expect("complete then claim")
        .0
        .expect("the completions apply");
    let after: String = sqlx::query_scalar("SELECT current_setting('lock_timeout')")
        .fetch_one(store.pool())
        .await
        .expect("setting");
    assert_eq!(after, "7s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_runs_of_one_event_under_serializable_defaults_run_it_once() {
    // Under SERIALIZABLE, a claim meeting a record committed after its snapshot fails with
    // a serialization error; at READ COMMITTED it reads the record.
    let store = store_with_other_defaults(8).await;
    let g = Guard::new(
        store.clone(),
        IdempotencyConfig::builder(format!("tx-serializable-{}", std::process::id()))
            .build()
            .expect("config"),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (g, store, runs, barrier) = (
            g.clone(),
            store.clone(),
            Arc::clone(&runs),
            Arc::clone(&barrier),
        );
        tasks.push(tokio::spawn(async move {
            let e = event("serializable-1");
            barrier.wait().await;
            loop {
                let out = g
                    .run_in_transaction(&store, &e, |tx| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        (tx, Ok::<_, sqlx::Error>(()))
                    })
                    .await;
                match out {
                    Err(GuardError::InProgress) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => return other,
                }
            }
        }));
    }
    let mut processed = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(Outcome::Processed(())) => processed += 1,
            Ok(Outcome::Duplicate) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(processed, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
