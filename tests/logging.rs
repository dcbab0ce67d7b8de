//! The guard's structured logs: one event per decision, the design's fields and the
//! Python decorator's message strings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use eventonce::{EventEnvelope, FailMode, Guard, IdempotencyConfig, MemoryStore};
use eventonce_core::conformance::{Fault, FaultyStore};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    message: String,
    fields: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        self.0.lock().expect("lock").push(Captured {
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (capture, guard)
}

fn envelope() -> EventEnvelope {
    let mut e = EventEnvelope::new("huleedu.essay.spellcheck.requested.v1", json!({"essay": 1}))
        .with_event_id("evt-1")
        .with_correlation_id("corr-1")
        .with_source_service("bos");
    e.schema_version = Some(1);
    e
}

const DECISION_FIELDS: [&str; 11] = [
    "service",
    "event_type",
    "event_id",
    "correlation_id",
    "source_service",
    "deterministic_hash",
    "key",
    "ttl_seconds",
    "action",
    "store_duration_ms",
    "total_duration_ms",
];

fn assert_decision_fields(event: &Captured, guard: &Guard, e: &EventEnvelope) {
    for f in DECISION_FIELDS {
        assert!(event.fields.contains_key(f), "{f} missing from {event:?}");
    }
    assert_eq!(event.fields["service"], "essay-svc");
    assert_eq!(event.fields["event_type"], e.event_type);
    assert_eq!(event.fields["event_id"], "evt-1");
    assert_eq!(event.fields["correlation_id"], "corr-1");
    assert_eq!(event.fields["source_service"], "bos");
    assert_eq!(event.fields["key"], guard.key_for(e).expect("key"));
    assert_eq!(
        event.fields["deterministic_hash"],
        e.deterministic_hash().expect("hash")
    );
    assert_eq!(event.fields["ttl_seconds"], "3600");
}

fn guard(debug: bool) -> Guard {
    Guard::new(
        MemoryStore::new(),
        IdempotencyConfig::builder("essay-svc")
            .debug_logging(debug)
            .build()
            .expect("config"),
    )
}

#[tokio::test]
async fn duplicate_is_one_warn_event_with_the_seed_message_and_all_fields() {
    let g = guard(false);
    let e = envelope();
    let _ = g
        .run(&e, async { Ok::<_, String>(()) })
        .await
        .expect("first");
    let (logs, _guard) = capture();
    let _ = g.run(&e, async { Ok::<_, String>(()) }).await.expect("dup");
    let events = logs.take();
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev.level, Level::WARN);
    assert_eq!(
        ev.message,
        "DUPLICATE_EVENT_DETECTED: Event already processed, skipping"
    );
    assert_eq!(ev.fields["action"], "skipped_duplicate");
    assert_decision_fields(ev, &g, &e);
}

#[tokio::test]
async fn handler_failure_is_one_error_event_naming_the_error() {
    let g = guard(false);
    let e = envelope();
    let (logs, _guard) = capture();
    let _ = g
        .run(&e, async { Err::<(), _>("db down".to_owned()) })
        .await;
    let events = logs.take();
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev.level, Level::ERROR);
    assert!(
        ev.message.starts_with("PROCESSING_FAILED: "),
        "{}",
        ev.message
    );
    assert_eq!(ev.fields["error"], "db down");
    assert_eq!(ev.fields["action"], "released");
    assert_eq!(ev.fields["released"], "true");
    assert_decision_fields(ev, &g, &e);
}

#[tokio::test]
async fn store_errors_are_error_events_with_the_fail_mode_as_action() {
    for (mode, action) in [
        (FailMode::Open, "fail_open"),
        (FailMode::Closed, "fail_closed"),
    ] {
        let store = FaultyStore::new(MemoryStore::new());
        store.control().set(Fault::Fail);
        let g = Guard::new(
            store,
            IdempotencyConfig::builder("essay-svc")
                .on_store_error(mode)
                .build()
                .expect("config"),
        );
        let e = envelope();
        let (logs, _guard) = capture();
        let _ = g.run(&e, async { Ok::<_, String>(()) }).await;
        let events = logs.take();
        assert_eq!(events.len(), 1, "{events:?}");
        let ev = &events[0];
        assert_eq!(ev.level, Level::ERROR);
        assert!(ev.message.starts_with("STORE_ERROR: "), "{}", ev.message);
        assert_eq!(ev.fields["action"], action);
        assert_eq!(ev.fields["store"], "memory");
        assert!(ev.fields["error"].contains("connection refused"));
        assert_decision_fields(ev, &g, &e);
    }
}

#[tokio::test]
async fn routine_decisions_are_silent_without_debug_logging() {
    let g = guard(false);
    let (logs, _guard) = capture();
    let _ = g
        .run(&envelope(), async { Ok::<_, String>(()) })
        .await
        .expect("run");
    assert!(logs.take().is_empty());
}

#[tokio::test]
async fn routine_decisions_are_debug_events_with_debug_logging() {
    let g = guard(true);
    let e = envelope();
    let (logs, _guard) = capture();
    let _ = g.run(&e, async { Ok::<_, String>(()) }).await.expect("run");
    let events = logs.take();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(events.len(), 2, "{messages:?}");
    assert!(events.iter().all(|e| e.level == Level::DEBUG));
    assert!(messages[0].starts_with("CLAIM_ACQUIRED: "));
    assert!(messages[1].starts_with("EVENT_PROCESSED: "));
    assert_eq!(events[1].fields["action"], "completed");
    for ev in &events {
        assert_decision_fields(ev, &g, &e);
    }
}

#[tokio::test]
async fn an_unidentifiable_event_is_one_error_event() {
    let g = guard(false);
    let e = EventEnvelope::new("t.v1", serde_json::Value::Null);
    let (logs, _guard) = capture();
    let _ = g.run(&e, async { Ok::<_, String>(()) }).await;
    let events = logs.take();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].level, Level::ERROR);
    assert!(events[0].message.starts_with("INVALID_EVENT: "));
    assert_eq!(events[0].fields["event_type"], "t.v1");
}
