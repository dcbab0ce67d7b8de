//! Metrics as Prometheus receives them: the text a real `metrics-exporter-prometheus`
//! recorder renders after a run of every outcome.
#![cfg(all(feature = "metrics", feature = "memory"))]

mod telemetry_support;

use std::collections::{BTreeMap, BTreeSet};

use metrics_exporter_prometheus::PrometheusBuilder;
use telemetry_support::{every_outcome, SERVICE, TYPE};

/// One sample line of the Prometheus text format: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once("=\"").expect("k=\"v\"");
                (k.to_owned(), v.trim_end_matches('"').to_owned())
            })
            .collect();
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value.parse().expect("a number"),
        });
    }
    samples
}

fn label_names(sample: &Sample) -> BTreeSet<&str> {
    sample
        .labels
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "le")
        .collect()
}

#[test]
fn prometheus_text_counts_runs_per_service_event_type_and_outcome_and_times_the_store() {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.005, 0.05, 0.5, 5.0])
        .expect("buckets")
        .build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, every_outcome);
    let text = handle.render();
    let samples = parse(&text);

    let runs = |service: &str, outcome: &str| {
        samples
            .iter()
            .filter(|s| s.name == eventonce::RUNS_TOTAL)
            .find(|s| {
                s.labels.get("service").map(String::as_str) == Some(service)
                    && s.labels.get("event_type").map(String::as_str) == Some(TYPE)
                    && s.labels.get("outcome").map(String::as_str) == Some(outcome)
            })
            .map(|s| s.value)
    };
    for outcome in [
        "processed",
        "duplicate",
        "handler_failed",
        "in_progress",
        "invalid_event",
        "panicked",
        "cancelled",
    ] {
        assert_eq!(runs(SERVICE, outcome), Some(1.0), "{outcome} in\n{text}");
    }
    assert_eq!(runs("telemetry-outage", "unprotected"), Some(1.0), "{text}");

    let run_labels = BTreeSet::from(["event_type", "outcome", "service"]);
    let store_labels = BTreeSet::from(["op", "outcome", "service"]);
    let mut seen = BTreeSet::new();
    for sample in &samples {
        let expected = if sample
            .name
            .starts_with(eventonce::STORE_OPERATION_DURATION_SECONDS)
        {
            &store_labels
        } else if sample.name.starts_with("eventonce_") {
            &run_labels
        } else {
            continue;
        };
        assert_eq!(&label_names(sample), expected, "{}", sample.name);
        seen.insert(sample.name.as_str());
    }
    for name in [
        "eventonce_runs_total",
        "eventonce_run_duration_seconds_bucket",
        "eventonce_run_duration_seconds_count",
        "eventonce_store_operation_duration_seconds_bucket",
        "eventonce_store_operation_duration_seconds_count",
    ] {
        assert!(seen.contains(name), "{name} missing in\n{text}");
    }

    let store_count = |op: &str, outcome: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == "eventonce_store_operation_duration_seconds_count"
                    && s.labels.get("op").map(String::as_str) == Some(op)
                    && s.labels.get("outcome").map(String::as_str) == Some(outcome)
            })
            .map(|s| s.value)
    };
    assert!(store_count("try_claim", "ok") >= Some(5.0), "{text}");
    assert!(store_count("complete", "ok") >= Some(1.0), "{text}");
    assert!(store_count("release", "ok") >= Some(1.0), "{text}");
    assert_eq!(store_count("try_claim", "error"), Some(1.0), "{text}");

    // Never a key, hash or event id.
    for unbounded in ["evt-", "eventonce:telemetry-test"] {
        assert!(!text.contains(unbounded), "{unbounded} in\n{text}");
    }
}
