//! PostgreSQL's transactional mode: the handler's own writes and the idempotency record
//! commit in one transaction, so an event's effect exists exactly once even if the
//! consumer is killed between the two.
//!
//! Run against a database (the table `example_invoices` is created there):
//! `EVENTONCE_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!  cargo run --example postgres_transactional --features postgres`

use eventonce::{EventEnvelope, Guard, IdempotencyConfig, Outcome, PostgresOptions, PostgresStore};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let store =
        PostgresStore::connect_with(&url, PostgresOptions::default().table("example_records"))
            .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_invoices (
             order_id text PRIMARY KEY, amount_cents bigint NOT NULL)",
    )
    .execute(store.pool())
    .await?;
    let guard = Guard::new(
        store.clone(),
        IdempotencyConfig::builder("billing").build()?,
    );

    let order = format!("order-{}", std::process::id());
    let payload = json!({
        "event_id": format!("evt-{order}"),
        "event_type": "shop.order.paid.v1",
        "data": {"order_id": order, "amount_cents": 1250},
    });
    let event = EventEnvelope::from_slice(&serde_json::to_vec(&payload)?)?;

    for delivery in 1..=2 {
        let outcome = guard
            .run_in_transaction(&store, &event, |mut tx| async {
                // The handler writes through the transaction it was given, and hands it
                // back with its result: the guard completes the record in it and commits.
                let written = sqlx::query(
                    "INSERT INTO example_invoices (order_id, amount_cents) VALUES ($1, $2)",
                )
                .bind(&order)
                .bind(1250_i64)
                .execute(&mut *tx)
                .await;
                (tx, written)
            })
            .await?;
        match outcome {
            Outcome::Processed(_) => println!("delivery {delivery}: invoice written"),
            Outcome::Duplicate => println!("delivery {delivery}: duplicate, nothing written"),
            // Only a switched-off guard (EVENTONCE_DISABLED=1) runs unprotected here.
            Outcome::Unprotected(_) => println!("delivery {delivery}: guard switched off"),
        }
    }
    let invoices: i64 =
        sqlx::query_scalar("SELECT count(*) FROM example_invoices WHERE order_id = $1")
            .bind(&order)
            .fetch_one(store.pool())
            .await?;
    println!("invoices for {order}: {invoices}");
    Ok(())
}
