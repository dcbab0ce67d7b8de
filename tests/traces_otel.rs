//! Traces as an OpenTelemetry SDK exports them through `tracing-opentelemetry`: the
//! finished spans of a run of every outcome, from an in-memory exporter. (A file of its
//! own: one process, one subscriber.)
#![cfg(feature = "memory")]

mod telemetry_support;

use opentelemetry::trace::{Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use telemetry_support::{every_outcome, SERVICE, TYPE};
use tracing_subscriber::layer::SubscriberExt;

fn attribute(span: &SpanData, name: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == name)
        .map(|kv| kv.value.as_str().into_owned())
}

#[test]
fn every_run_is_one_finished_span_with_its_decision_as_attributes() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("eventonce-test")));
    tracing::subscriber::with_default(subscriber, every_outcome);
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let runs: Vec<&SpanData> = spans.iter().filter(|s| s.name == "eventonce.run").collect();
    assert_eq!(
        runs.len(),
        8,
        "one span per run: {:?}",
        runs.iter()
            .map(|s| (attribute(s, "event_id"), attribute(s, "outcome")))
            .collect::<Vec<_>>()
    );

    let by_id = |id: &str, outcome: &str| {
        runs.iter()
            .copied()
            .find(|s| {
                attribute(s, "event_id").as_deref() == Some(id)
                    && attribute(s, "outcome").as_deref() == Some(outcome)
            })
            .unwrap_or_else(|| panic!("no span of {id} with outcome {outcome}"))
    };
    let processed = by_id("evt-1", "processed");
    assert_eq!(attribute(processed, "service").as_deref(), Some(SERVICE));
    assert_eq!(attribute(processed, "event_type").as_deref(), Some(TYPE));
    assert_eq!(attribute(processed, "duplicate").as_deref(), Some("false"));
    assert_eq!(attribute(processed, "handler_ran").as_deref(), Some("true"));
    assert_eq!(processed.status, Status::Ok);

    let duplicate = by_id("evt-1", "duplicate");
    assert_eq!(attribute(duplicate, "duplicate").as_deref(), Some("true"));
    assert_eq!(
        attribute(duplicate, "handler_ran").as_deref(),
        Some("false")
    );

    let failed = by_id("evt-2", "handler_failed");
    assert!(
        matches!(failed.status, Status::Error { .. }),
        "{:?}",
        failed.status
    );
    by_id("evt-3", "in_progress");
    let panicked = by_id("evt-4", "panicked");
    assert!(matches!(panicked.status, Status::Error { .. }));
    by_id("evt-5", "cancelled");
    by_id("evt-6", "unprotected");
    assert!(runs
        .iter()
        .any(|s| attribute(s, "outcome").as_deref() == Some("invalid_event")));
}
