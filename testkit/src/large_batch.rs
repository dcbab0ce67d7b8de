//! A batch far larger than one store call should carry, delivered twice: each event runs
//! once, nothing runs unprotected, and no claim is left processing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventonce_core::{
    EventEnvelope, FailMode, Guard, IdempotencyConfig, IdempotencyStore, Outcome, RecordState,
};

/// What two deliveries of one large batch gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LargeBatch {
    /// Answers `Processed`, over both deliveries.
    pub processed: usize,
    /// Answers `Duplicate`.
    pub duplicates: usize,
    /// Answers `Unprotected`.
    pub unprotected: usize,
    /// Errors.
    pub errors: usize,
    /// Handler runs, over both deliveries.
    pub runs: usize,
    /// Records of a sample of the keys (every 97th and the last) still processing.
    pub processing_left: usize,
}

/// Delivers a batch of `n` events twice to a guard over `store` (`FailMode::Open`, a
/// store timeout of `timeout`, service `service`) and counts the answers. Prints the
/// counts and the time each delivery took.
pub async fn deliver_twice<S>(store: S, service: &str, n: usize, timeout: Duration) -> LargeBatch
where
    S: IdempotencyStore + Clone + 'static,
{
    let config = IdempotencyConfig::builder(service)
        .on_store_error(FailMode::Open)
        .store_timeout(timeout)
        .batch_concurrency(256)
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    let guard = Guard::new(store.clone(), config);
    let events: Vec<EventEnvelope> = (0..n)
        .map(|i| {
            EventEnvelope::new("large.batch.v1", serde_json::json!({ "i": i }))
                .with_event_id(format!("{service}-{i}"))
        })
        .collect();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut tally = LargeBatch::default();
    for delivery in 1..=2 {
        let started = Instant::now();
        let answers = guard
            .run_batch(&events, |_| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(())
                }
            })
            .await;
        println!("delivery {delivery} of {n} events: {:?}", started.elapsed());
        for answer in answers {
            match answer {
                Ok(Outcome::Processed(())) => tally.processed += 1,
                Ok(Outcome::Duplicate) => tally.duplicates += 1,
                Ok(Outcome::Unprotected(())) => tally.unprotected += 1,
                _ => tally.errors += 1,
            }
        }
    }
    tally.runs = runs.load(Ordering::Relaxed);
    for i in (0..n).step_by(97).chain([n - 1]) {
        let key = guard.key_for(&events[i]).unwrap_or_default();
        if let Ok(Some(record)) = store.get(&key).await {
            if record.state == RecordState::Processing {
                tally.processing_left += 1;
            }
        }
    }
    println!("{tally:?}");
    tally
}
