//! One hostile event writes a bounded amount into logs, error texts and metric labels,
//! whatever the size of its fields: every field is cut to 200 characters (with a marker
//! giving its length), and the event-type label takes at most 100 distinct values, the
//! rest folded into `other`.
#![cfg(feature = "memory")]

use std::io::Write;
use std::sync::{Arc, Mutex};

use eventonce::{EventEnvelope, Guard, GuardError, IdempotencyConfig, MemoryStore, Outcome};
use serde_json::json;

const MIB: usize = 1 << 20;

/// Counts the bytes written by a `fmt` subscriber (span fields included).
#[derive(Clone, Default)]
struct Bytes(Arc<Mutex<Vec<u8>>>);

impl Bytes {
    fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for Bytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> (Bytes, tracing::subscriber::DefaultGuard) {
    let bytes = Bytes::default();
    let writer = bytes.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    (bytes, tracing::subscriber::set_default(subscriber))
}

fn guard() -> Guard {
    let config = IdempotencyConfig::builder("hostile-fields")
        .debug_logging(true)
        .build()
        .expect("config");
    Guard::new(MemoryStore::new(), config)
}

#[tokio::test]
async fn a_duplicate_with_megabytes_of_header_fields_logs_a_few_kilobytes() {
    let guard = guard();
    let event = EventEnvelope::new("t".repeat(MIB), json!({"n": 1}))
        .with_event_id("i".repeat(MIB))
        .with_correlation_id("c".repeat(MIB))
        .with_source_service("s".repeat(MIB));
    let first = guard.run(&event, async { Ok::<_, String>(()) }).await;
    assert!(matches!(first, Ok(Outcome::Processed(()))));
    let (logs, _guard) = capture();
    let second = guard.run(&event, async { Ok::<_, String>(()) }).await;
    assert!(matches!(second, Ok(Outcome::Duplicate)));
    let text = logs.text();
    assert!(text.contains("DUPLICATE_EVENT_DETECTED"), "{}", &text[..text.len().min(500)]);
    assert!(
        logs.len() < 8 * 1024,
        "one duplicate logged {} bytes",
        logs.len()
    );
    assert!(text.contains("[truncated: 1048576 bytes]"), "no truncation marker");
}

#[tokio::test]
async fn an_unidentifiable_event_with_a_huge_type_logs_and_says_a_few_kilobytes() {
    let guard = guard();
    let event = EventEnvelope::new("t".repeat(MIB), serde_json::Value::Null)
        .with_correlation_id("c".repeat(MIB));
    let (logs, _guard) = capture();
    let answer = guard.run(&event, async { Ok::<_, String>(()) }).await;
    let Err(err @ GuardError::InvalidEvent(_)) = answer else {
        panic!("expected InvalidEvent, got {answer:?}");
    };
    let message = err.to_string();
    assert!(
        logs.len() < 8 * 1024,
        "one unidentifiable event logged {} bytes; its error text is {} bytes",
        logs.len(),
        message.len()
    );
    assert!(
        message.len() < 1024,
        "the error text is {} bytes",
        message.len()
    );
    assert!(message.contains("[truncated: 1048576 bytes]"), "{message}");
}
