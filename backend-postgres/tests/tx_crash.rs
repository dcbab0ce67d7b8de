//! A consumer process SIGKILLed in the middle of a transactional handler, after the
//! handler's insert and before the commit: neither the row nor the record survives, and
//! the redelivery applies the row exactly once.
//!
//! Runs without the libtest harness: the parent re-runs its own executable as the consumer
//! (`EVENTONCE_TX_CHILD` set), waits until it reports its insert, kills it with SIGKILL,
//! and checks the database.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventonce_core::{
    EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, Outcome,
};
use eventonce_postgres::PostgresStore;
use serde_json::json;
use sqlx::AssertSqlSafe;

const SERVICE: &str = "tx-crash";

fn event() -> EventEnvelope {
    EventEnvelope::new("orders.paid.v1", json!({"order": "crash-1"})).with_event_id("crash-1")
}

fn effects(schema: &str) -> String {
    format!("\"{schema}\".\"fx_crash\"")
}

fn guard(store: &PostgresStore) -> Guard {
    Guard::new(
        store.clone(),
        IdempotencyConfig::builder(SERVICE).build().expect("config"),
    )
}

async fn insert(tx: &mut eventonce_postgres::PgTx, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} (event_id) VALUES ('crash-1')"
    )))
    .execute(&mut **tx)
    .await
    .map(|_| ())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Ok(schema) = std::env::var("EVENTONCE_TX_CHILD") {
        runtime.block_on(child(schema));
        return;
    }
    runtime.block_on(parent());
    println!("tx_crash: 1 passed, 0 failed");
}

async fn child(schema: String) {
    let options = eventonce_postgres::PostgresOptions::default().schema(schema.clone());
    let store = PostgresStore::connect_with(&support::url(), options)
        .await
        .expect("connect");
    let table = effects(&schema);
    let table = &table;
    let _ = guard(&store)
        .run_in_transaction(&store, &event(), |mut tx| async move {
            let r = insert(&mut tx, table).await;
            println!("INSERTED");
            let _ = std::io::stdout().flush();
            // The consumer hangs here, mid-handler, until it is killed.
            std::future::pending::<()>().await;
            (tx, r)
        })
        .await;
}

/// Starts the consumer (this executable in its child role) and waits until it reports
/// its insert, made in the transaction that holds the claim.
fn spawn_consumer(schema: &str) -> std::process::Child {
    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe)
        .env("EVENTONCE_TX_CHILD", schema)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the consumer");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "INSERTED", "the consumer reports its insert");
    child
}

/// While the consumer lives, its transaction holds the claim: a redelivery answers
/// InProgress (after the store's short lock wait) and its handler does not run.
async fn redelivery_waits_while_the_consumer_lives(g: &Guard, store: &PostgresStore) {
    let ran = std::sync::atomic::AtomicBool::new(false);
    let meanwhile = tokio::time::timeout(
        Duration::from_secs(5),
        g.run_in_transaction(store, &event(), |tx| async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            (tx, Ok::<_, sqlx::Error>(()))
        }),
    )
    .await;
    assert!(
        matches!(meanwhile, Ok(Err(GuardError::InProgress))),
        "a redelivery while the first consumer lives is in progress: {meanwhile:?}"
    );
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "a redelivery must not run while the first consumer lives"
    );
}

async fn parent() {
    let store = support::store(4).await;
    let schema = support::schema();
    let table = effects(schema);
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, event_id text NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .expect("effects table");
    let count = || async {
        sqlx::query_scalar::<_, i64>(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(store.pool())
            .await
            .expect("count")
    };

    let mut child = spawn_consumer(schema);
    let g = guard(&store);
    let key = g.key_for(&event()).expect("key");
    redelivery_waits_while_the_consumer_lives(&g, &store).await;

    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reaped");
    let killed_at = Instant::now();
    println!("tx_crash: consumer killed mid-handler ({status})");

    let redelivered = loop {
        let t = Instant::now();
        let out = g
            .run_in_transaction(&store, &event(), |mut tx| {
                let table = table.clone();
                async move {
                    let r = insert(&mut tx, &table).await;
                    (tx, r)
                }
            })
            .await;
        match out {
            Ok(outcome) => break (outcome, t.elapsed()),
            Err(GuardError::InProgress) if killed_at.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("redelivery failed: {e}"),
        }
    };
    let rows_after_redelivery = count().await;
    let again = g
        .run_in_transaction(&store, &event(), |mut tx| {
            let table = table.clone();
            async move {
                let r = insert(&mut tx, &table).await;
                (tx, r)
            }
        })
        .await
        .expect("second redelivery");
    let rows_final = count().await;
    let record = store.get(&key).await.expect("get").map(|r| r.state);
    println!(
        "tx_crash: after SIGKILL the redelivery was {:?} after {:.0} ms; rows after it: {rows_after_redelivery}; a second redelivery: {again:?}; rows: {rows_final}; record: {record:?}",
        redelivered.0,
        killed_at.elapsed().as_secs_f64() * 1000.0 - redelivered.1.as_secs_f64() * 1000.0,
    );
    assert_eq!(redelivered.0, Outcome::Processed(()));
    assert_eq!(
        rows_after_redelivery, 1,
        "the killed consumer's insert did not survive"
    );
    assert_eq!(again, Outcome::Duplicate);
    assert_eq!(rows_final, 1);
}
