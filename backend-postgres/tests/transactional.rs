//! Exactly-once effects: the handler's writes and the completed record commit in one
//! transaction, or neither does.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce_core::{
    EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig, IdempotencyStore, Outcome,
    RecordState,
};
use eventonce_postgres::{PgTx, PostgresOptions, PostgresStore};
use serde_json::json;
use sqlx::AssertSqlSafe;

/// A fresh effects table in this run's schema.
async fn effects_table(store: &PostgresStore, name: &str) -> String {
    let table = format!("\"{}\".\"{name}\"", support::schema());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, event_id text NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .expect("effects table");
    table
}

async fn count(store: &PostgresStore, table: &str, event_id: Option<&str>) -> i64 {
    match event_id {
        Some(id) => sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE event_id = $1"
        )))
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("count"),
        None => sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(store.pool())
            .await
            .expect("count"),
    }
}

async fn apply(tx: &mut PgTx, table: &str, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (event_id) VALUES ($1)"
    )))
    .bind(id)
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

fn guard(store: &PostgresStore, service: &str) -> Guard {
    Guard::new(
        store.clone(),
        IdempotencyConfig::builder(service).build().expect("config"),
    )
}

fn event(id: &str) -> EventEnvelope {
    EventEnvelope::new("orders.paid.v1", json!({"order": id})).with_event_id(id)
}

#[tokio::test]
async fn success_commits_the_effect_and_the_record_together_and_duplicates_skip() {
    let store = support::store(4).await;
    let table = effects_table(&store, "fx_success").await;
    let table = &table;
    let g = guard(&store, "tx-success");
    let e = event("ok-1");
    let out = g
        .run_in_transaction(&store, &e, |mut tx| async move {
            let r = apply(&mut tx, table, "ok-1").await.map(|_| "paid");
            (tx, r)
        })
        .await
        .expect("run");
    assert_eq!(out, Outcome::Processed("paid"));
    assert_eq!(count(&store, table, Some("ok-1")).await, 1);
    let record = store
        .get(&g.key_for(&e).expect("key"))
        .await
        .expect("get")
        .expect("record");
    assert_eq!(record.state, RecordState::Completed);
    let calls = AtomicUsize::new(0);
    let calls = &calls;
    let again = g
        .run_in_transaction(&store, &e, |mut tx| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let r = apply(&mut tx, table, "ok-1").await;
            (tx, r)
        })
        .await
        .expect("run");
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(count(&store, table, Some("ok-1")).await, 1);
}

#[tokio::test]
async fn a_handler_that_inserts_then_fails_leaves_neither_row_nor_record() {
    let store = support::store(4).await;
    let table = effects_table(&store, "fx_fail").await;
    let table = &table;
    let g = guard(&store, "tx-fail");
    let e = event("fail-1");
    let r = g
        .run_in_transaction(&store, &e, |mut tx| async move {
            if let Err(e) = apply(&mut tx, table, "fail-1").await {
                return (tx, Err(e.to_string()));
            }
            (tx, Err::<(), _>("payment provider refused".to_owned()))
        })
        .await;
    assert!(
        matches!(r, Err(GuardError::Handler(ref m)) if m == "payment provider refused"),
        "{r:?}"
    );
    assert_eq!(
        count(&store, table, Some("fail-1")).await,
        0,
        "the handler's insert was rolled back"
    );
    assert_eq!(
        store.get(&g.key_for(&e).expect("key")).await.expect("get"),
        None
    );
    // The redelivery applies it once.
    let out = g
        .run_in_transaction(&store, &e, |mut tx| async move {
            let r = apply(&mut tx, table, "fail-1").await;
            (tx, r)
        })
        .await
        .expect("retry");
    assert_eq!(out, Outcome::Processed(()));
    assert_eq!(count(&store, table, Some("fail-1")).await, 1);
}

#[tokio::test]
async fn a_panicking_or_dropped_handler_rolls_everything_back() {
    let store = support::store(4).await;
    let table = effects_table(&store, "fx_panic").await;
    let g = guard(&store, "tx-panic");
    let e = event("panic-1");
    let task = tokio::spawn({
        let (g, store, e, table) = (g.clone(), store.clone(), e.clone(), table.clone());
        async move {
            let buggy = e.event_id.is_some();
            g.run_in_transaction(&store, &e, |mut tx| async move {
                apply(&mut tx, &table, "panic-1").await.expect("insert");
                if buggy {
                    panic!("handler bug");
                }
                (tx, Ok::<_, sqlx::Error>(()))
            })
            .await
        }
    });
    assert!(task.await.expect_err("panics").is_panic());
    let table = &table;
    let e2 = event("drop-1");
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        g.run_in_transaction(&store, &e2, |mut tx| async move {
            let r = apply(&mut tx, table, "drop-1").await;
            std::future::pending::<()>().await;
            (tx, r)
        }),
    )
    .await;
    assert!(cut.is_err(), "the run was cut off mid-handler");
    // The dropped transaction is rolled back when its connection returns to the pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = g
            .run_in_transaction(&store, &e2, |mut tx| async move {
                let r = apply(&mut tx, table, "drop-1").await;
                (tx, r)
            })
            .await;
        match out {
            Ok(Outcome::Processed(())) => break,
            Err(GuardError::InProgress) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        count(&store, table, Some("panic-1")).await,
        0,
        "the panicking handler's insert"
    );
    let out = g
        .run_in_transaction(&store, &e, |mut tx| async move {
            let r = apply(&mut tx, table, "panic-1").await;
            (tx, r)
        })
        .await
        .expect("redelivery");
    assert_eq!(out, Outcome::Processed(()));
    for id in ["panic-1", "drop-1"] {
        assert_eq!(count(&store, table, Some(id)).await, 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_deliveries_of_fifty_events_leave_fifty_rows() {
    let store = support::store(20).await;
    let table = Arc::new(effects_table(&store, "fx_concurrent").await);
    let g = guard(&store, "tx-concurrent");
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let handler_runs = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (g, store, table, barrier, runs) = (
            g.clone(),
            store.clone(),
            Arc::clone(&table),
            Arc::clone(&barrier),
            Arc::clone(&handler_runs),
        );
        tasks.push(tokio::spawn(async move {
            let id = format!("concurrent-{}", i % 50);
            let e = event(&id);
            barrier.wait().await;
            loop {
                let out = g
                    .run_in_transaction(&store, &e, |mut tx| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let r = apply(&mut tx, &table, &id).await;
                        (tx, r)
                    })
                    .await;
                match out {
                    Err(GuardError::InProgress) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => return other.expect("delivery"),
                }
            }
        }));
    }
    let mut processed = 0;
    let mut duplicates = 0;
    for t in tasks {
        match t.await.expect("task") {
            Outcome::Processed(()) => processed += 1,
            Outcome::Duplicate => duplicates += 1,
            Outcome::Unprotected(()) => panic!("transactional mode never runs unprotected"),
        }
    }
    let rows = count(&store, &table, None).await;
    let distinct: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(DISTINCT event_id) FROM {table}"
    )))
    .fetch_one(store.pool())
    .await
    .expect("distinct");
    println!(
        "transactional: 200 concurrent deliveries of 50 events: {processed} processed, {duplicates} duplicates, {} handler runs, {rows} rows ({distinct} distinct) in {:.0} ms",
        handler_runs.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!((processed, duplicates), (50, 150));
    assert_eq!((rows, distinct), (50, 50));
    assert_eq!(handler_runs.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn a_store_failure_is_always_a_store_error_in_transactional_mode() {
    // A pool whose server is not there: every store call fails.
    let options = PostgresOptions::default().schema(support::schema());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .expect("lazy pool");
    let store = PostgresStore::from_pool_with(pool, options).expect("names");
    for mode in [FailMode::Open, FailMode::Closed] {
        let g = Guard::new(
            store.clone(),
            IdempotencyConfig::builder("tx-down")
                .on_store_error(mode)
                .build()
                .expect("config"),
        );
        let calls = AtomicUsize::new(0);
        let calls = &calls;
        let r = g
            .run_in_transaction(&store, &event("down-1"), |tx| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                (tx, Ok::<_, sqlx::Error>(()))
            })
            .await;
        assert!(matches!(r, Err(GuardError::Store(_))), "{r:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
