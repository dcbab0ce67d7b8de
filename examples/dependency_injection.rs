//! The dependency-injection pattern: one `Guard`, in an `Arc`, inside the service struct
//! that the application builds once at start-up and hands to every consumer task. Several
//! handlers share it, and each event type gets the TTL its duplicates can arrive within.
//!
//! Run: `cargo run --example dependency_injection`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventonce::{EventEnvelope, Guard, GuardError, IdempotencyConfig, MemoryStore, Outcome};
use serde_json::json;

const ESSAY_SUBMITTED: &str = "huleedu.essay.submitted.v1";
const SPELLCHECK_DONE: &str = "huleedu.essay.spellcheck.completed.v1";
const BATCH_CLOSED: &str = "huleedu.batch.closed.v1";

/// What the handlers depend on besides the guard (a database pool, a client, ...).
#[derive(Default)]
struct Repository {
    essays: AtomicU64,
    reports: AtomicU64,
    batches: AtomicU64,
}

/// The service: built once, shared by every consumer task behind an `Arc`.
struct EssayService {
    guard: Arc<Guard>,
    repo: Arc<Repository>,
}

#[derive(Debug, thiserror::Error)]
enum HandlerError {
    #[error("event {0} has no data field {1:?}")]
    Missing(&'static str, &'static str),
}

impl EssayService {
    fn new(repo: Arc<Repository>) -> Result<Self, eventonce::ConfigError> {
        let config = IdempotencyConfig::builder("essay-service")
            // A retry of a submission arrives within minutes: keep it an hour.
            .event_type_ttl(ESSAY_SUBMITTED, Duration::from_secs(3600))
            .event_type_ttl(SPELLCHECK_DONE, Duration::from_secs(12 * 3600))
            // A batch may be replayed from the topic days later.
            .event_type_ttl(BATCH_CLOSED, Duration::from_secs(72 * 3600))
            .build()?;
        Ok(EssayService {
            guard: Arc::new(Guard::new(MemoryStore::new(), config)),
            repo,
        })
    }

    /// The consumer loop's single entry point: route by event type, each handler under the
    /// same guard.
    async fn handle(&self, payload: &[u8]) -> Result<&'static str, Box<dyn std::error::Error>> {
        let event = EventEnvelope::from_slice(payload)?;
        let outcome = match event.event_type.as_str() {
            ESSAY_SUBMITTED => self.guard.run(&event, self.on_submitted(&event)).await,
            SPELLCHECK_DONE => self.guard.run(&event, self.on_spellchecked(&event)).await,
            BATCH_CLOSED => self.guard.run(&event, self.on_batch_closed(&event)).await,
            _ => return Ok("ignored"),
        };
        match outcome {
            Ok(Outcome::Processed(())) => Ok("processed"),
            Ok(Outcome::Duplicate) => Ok("duplicate"),
            Ok(Outcome::Unprotected(())) => Ok("processed without protection"),
            Err(GuardError::InProgress) => Ok("in progress elsewhere: redeliver later"),
            Err(err) => Err(err.into()),
        }
    }

    async fn on_submitted(&self, event: &EventEnvelope) -> Result<(), HandlerError> {
        event
            .data
            .get("essay_id")
            .ok_or(HandlerError::Missing(ESSAY_SUBMITTED, "essay_id"))?;
        self.repo.essays.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_spellchecked(&self, _event: &EventEnvelope) -> Result<(), HandlerError> {
        self.repo.reports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_batch_closed(&self, _event: &EventEnvelope) -> Result<(), HandlerError> {
        self.repo.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repo = Arc::new(Repository::default());
    let service = Arc::new(EssayService::new(Arc::clone(&repo))?);

    let payloads: Vec<Vec<u8>> = [
        (ESSAY_SUBMITTED, "e-1", json!({"essay_id": 1})),
        (SPELLCHECK_DONE, "s-1", json!({"essay_id": 1, "errors": 3})),
        (BATCH_CLOSED, "b-1", json!({"batch_id": 9})),
    ]
    .iter()
    .map(|(t, id, data)| {
        serde_json::to_vec(&json!({"event_id": id, "event_type": t, "data": data}))
    })
    .collect::<Result<_, _>>()?;

    // Two consumer tasks receive the same stream: every event is processed once.
    let mut tasks = tokio::task::JoinSet::new();
    for consumer in 0..2 {
        let (service, payloads) = (Arc::clone(&service), payloads.clone());
        tasks.spawn(async move {
            for payload in &payloads {
                match service.handle(payload).await {
                    Ok(what) => println!("consumer {consumer}: {what}"),
                    Err(err) => eprintln!("consumer {consumer}: failed: {err}"),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}

    println!(
        "essays stored: {}, reports: {}, batches closed: {}",
        repo.essays.load(Ordering::Relaxed),
        repo.reports.load(Ordering::Relaxed),
        repo.batches.load(Ordering::Relaxed)
    );
    Ok(())
}
