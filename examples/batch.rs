//! The batch API: a consumer that receives events in batches (a Kafka poll, an SQS receive)
//! hands the whole batch to `Guard::run_batch`, which costs two store round trips for the
//! batch instead of two per event, runs the new events' handlers concurrently, and answers
//! each event in order. The consumer acknowledges the events whose answer is final and
//! leaves the others for redelivery.
//!
//! Run: `cargo run --example batch --features redis` (Redis on 127.0.0.1:6379, or
//! `EVENTONCE_REDIS_URL`); without a reachable Redis it uses the in-memory store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventonce::{
    EventEnvelope, Guard, GuardError, IdempotencyConfig, IdempotencyStore, MemoryStore, Outcome,
    RedisStore,
};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
#[error("payment {0} was declined")]
struct Declined(u64);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("EVENTONCE_REDIS_URL").unwrap_or("redis://127.0.0.1:6379".into());
    let store: Box<dyn IdempotencyStore> = match RedisStore::connect(&url).await {
        Ok(store) => Box::new(store),
        Err(err) => {
            eprintln!("no Redis ({err}); using the in-memory store");
            Box::new(MemoryStore::new())
        }
    };
    let run = std::process::id();
    let config = IdempotencyConfig::builder("payments")
        .event_type_ttl("payment.captured.v1", Duration::from_secs(600))
        .batch_concurrency(16)
        .build()?;
    let guard = Guard::from_arc(store.into(), config);

    // A batch as a poll returns it: 100 payments, the last ten redelivered copies of the
    // first ten, and every 25th payment declined by the handler.
    let mut batch: Vec<EventEnvelope> = (0..90)
        .map(|n| {
            EventEnvelope::new(
                "payment.captured.v1",
                json!({ "payment": n, "cents": 1250 }),
            )
            .with_event_id(format!("pay-{run}-{n}"))
        })
        .collect();
    batch.extend(batch[..10].to_vec());
    let captured = AtomicU64::new(0);

    for round in 1..=2 {
        let started = Instant::now();
        let answers = guard
            .run_batch(&batch, |event| {
                let n = event.data["payment"].as_u64().unwrap_or_default();
                let captured = &captured;
                async move {
                    if n % 25 == 24 && round == 1 {
                        return Err(Declined(n));
                    }
                    captured.fetch_add(1, Ordering::Relaxed);
                    Ok(n)
                }
            })
            .await;
        let (mut done, mut skipped, mut retry) = (0, 0, 0);
        for answer in &answers {
            match answer {
                Ok(Outcome::Processed(_) | Outcome::Unprotected(_)) => done += 1,
                Ok(Outcome::Duplicate) => skipped += 1,
                Err(GuardError::InvalidEvent(err)) => eprintln!("dead-letter: {err}"),
                // Not final (handler failed, in progress elsewhere, store refused): leave
                // these for redelivery, do not acknowledge them.
                Err(_) => retry += 1,
            }
        }
        println!(
            "round {round}: {} events in {:?}: processed {done}, duplicates {skipped}, to redeliver {retry}",
            answers.len(),
            started.elapsed()
        );
    }
    println!("payments captured: {}", captured.load(Ordering::Relaxed));
    Ok(())
}
