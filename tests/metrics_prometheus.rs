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

/// `run_batch` counts every event under its own labels, however many label pairs the
/// batch holds: here 12 event types (more than the pairs counted at once) in three
/// outcomes, each type's events interleaved with the others'.
#[test]
fn a_batch_counts_each_event_under_its_type_and_outcome() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let config = eventonce::IdempotencyConfig::builder("batch-metrics")
                .key_prefix("eventonce:batch-metrics-test")
                .build()
                .expect("config");
            let guard = eventonce::Guard::new(eventonce::MemoryStore::new(), config);
            // Event i: type i % 12; the first 60 succeed, the next 60 fail, then the
            // first 24 again (duplicates).
            let events: Vec<eventonce::EventEnvelope> = (0..120)
                .map(|i| {
                    eventonce::EventEnvelope::new(format!("type.{}", i % 12), serde_json::json!(i))
                        .with_event_id(format!("id-{i}"))
                })
                .collect();
            let answers = guard
                .run_batch(&events, |e| {
                    let fail = e.data.as_i64() >= Some(60);
                    async move {
                        if fail {
                            Err("failed")
                        } else {
                            Ok(())
                        }
                    }
                })
                .await;
            assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 60);
            let again = guard
                .run_batch(&events[..24], |_| async { Ok::<_, &str>(()) })
                .await;
            assert!(again.iter().all(|a| matches!(a, Ok(o) if o.is_duplicate())));
        });
    });
    let text = handle.render();
    let samples = parse(&text);
    let count = |event_type: &str, outcome: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == eventonce::RUNS_TOTAL
                    && s.labels.get("event_type").map(String::as_str) == Some(event_type)
                    && s.labels.get("outcome").map(String::as_str) == Some(outcome)
            })
            .map(|s| s.value)
    };
    for t in 0..12 {
        let event_type = format!("type.{t}");
        assert_eq!(count(&event_type, "processed"), Some(5.0), "{text}");
        assert_eq!(count(&event_type, "handler_failed"), Some(5.0), "{text}");
        assert_eq!(count(&event_type, "duplicate"), Some(2.0), "{text}");
    }
}

#[test]
fn prometheus_text_counts_memory_store_evictions_and_refused_claims() {
    use eventonce::{Claim, IdempotencyStore};
    use std::time::Duration;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let store = eventonce::MemoryStore::with_capacity(1);
            let (lease, ttl) = (Duration::from_secs(30), Duration::from_secs(3600));
            for key in ["a", "b", "c"] {
                let claim = store.try_claim(key, "o", lease).await;
                assert!(matches!(claim, Ok(Claim::Acquired)), "{claim:?}");
                assert!(matches!(store.complete(key, "o", ttl).await, Ok(true)));
            }
            let claim = store.try_claim("d", "o", lease).await;
            assert!(matches!(claim, Ok(Claim::Acquired)), "{claim:?}");
            assert!(store.try_claim("e", "o", lease).await.is_err());
        });
    });
    let samples = parse(&handle.render());
    let value = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
    assert_eq!(value(eventonce::memory::EVICTIONS_TOTAL), Some(3.0));
    assert_eq!(value(eventonce::memory::CLAIMS_REFUSED_TOTAL), Some(1.0));
}
