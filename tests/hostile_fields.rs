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
    assert!(
        text.contains("DUPLICATE_EVENT_DETECTED"),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(
        logs.len() < 8 * 1024,
        "one duplicate logged {} bytes",
        logs.len()
    );
    assert!(
        text.contains("[truncated: 1048576 bytes]"),
        "no truncation marker"
    );
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

/// Runs one event of each type through a guard, under `recorder`.
#[cfg(feature = "metrics")]
fn run_types(recorder: &metrics_exporter_prometheus::PrometheusRecorder, types: &[String]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let guard = guard();
    metrics::with_local_recorder(recorder, || {
        runtime.block_on(async {
            for (n, event_type) in types.iter().enumerate() {
                let event = EventEnvelope::new(event_type.as_str(), json!({"n": n}));
                let _ = guard.run(&event, async { Ok::<_, String>(()) }).await;
            }
        });
    });
}

/// The distinct `event_type` label values of a Prometheus text, and their total length.
#[cfg(feature = "metrics")]
fn event_type_labels(text: &str) -> (std::collections::BTreeSet<String>, usize) {
    let values: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.split_once("event_type=\""))
        .filter_map(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value.to_owned())
        .collect();
    let bytes = values.iter().map(String::len).sum();
    (values, bytes)
}

/// Both halves in one test: the label registry is the process's.
#[cfg(feature = "metrics")]
#[test]
fn event_type_labels_are_cut_and_their_number_is_bounded() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // 20 events of 300 KiB types: each label is cut.
    let huge: Vec<String> = (0..20)
        .map(|n| format!("{n:02}{}", "t".repeat(300 * 1024)))
        .collect();
    run_types(&recorder, &huge);
    let (labels, bytes) = event_type_labels(&handle.render());
    assert_eq!(labels.len(), 20);
    assert!(
        bytes < 20 * 256 && handle.render().len() < 256 * 1024,
        "the labels of 20 events hold {bytes} bytes; the metrics text is {} bytes",
        handle.render().len()
    );
    // 150 more distinct types: the labels run out at 100 (other tests of this process may
    // have taken some), and the rest count as `other`.
    let many: Vec<String> = (0..150).map(|n| format!("orders.kind{n}.v1")).collect();
    let (logs, log_guard) = capture();
    run_types(&recorder, &many);
    drop(log_guard);
    assert_eq!(
        logs.text().matches("METRIC_LABELS_FOLDED").count(),
        1,
        "the folding is logged once"
    );
    let text = handle.render();
    let (labels, _) = event_type_labels(&text);
    assert!(
        labels.len() <= eventonce::MAX_EVENT_TYPE_LABELS + 1,
        "{} distinct event_type labels",
        labels.len()
    );
    let own = many.iter().filter(|t| labels.contains(*t)).count();
    let other = text
        .lines()
        .filter(|l| l.starts_with(eventonce::RUNS_TOTAL))
        .find(|l| l.contains(&format!("event_type=\"{}\"", eventonce::OTHER_EVENT_TYPES)))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    assert!(own <= 80, "{own} of the 150 types got a label of their own");
    assert_eq!(other, Some(150 - own), "the runs counted under `other`");
}
