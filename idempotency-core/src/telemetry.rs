//! Metrics and traces of the guard.
//!
//! Every `run` is one `tracing` span, `eventonce.run`, whose fields carry the decision;
//! with `tracing-opentelemetry` it becomes an OpenTelemetry span with those attributes.
//!
//! With the `metrics` feature the guard also records, through the
//! [`metrics`](https://docs.rs/metrics) facade (any recorder: Prometheus, StatsD, ...):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | [`RUNS_TOTAL`] | counter | `service`, `event_type`, `outcome` |
//! | [`RUN_DURATION_SECONDS`] | histogram | `service`, `event_type`, `outcome` |
//! | [`STORE_OPERATION_DURATION_SECONDS`] | histogram | `service`, `op`, `outcome` |
//!
//! Run outcomes: `processed`, `duplicate`, `unprotected`, `in_progress`,
//! `handler_failed`, `store_refused`, `invalid_event`, `panicked`, `cancelled`. Store
//! outcomes: `ok`, `error`, `timeout`. No label ever holds a key, a hash or an event id:
//! their values are unbounded, and a time series per event would overwhelm any
//! metrics backend. The `event_type` label is cut to 200 characters and takes at most
//! [`MAX_EVENT_TYPE_LABELS`] (100) distinct values per process; later new types are
//! counted under `other` ([`OTHER_EVENT_TYPES`]), which is logged once at WARN.

use std::time::Duration;
#[cfg(feature = "metrics")]
use std::time::Instant;

use tracing::field::Empty;
use tracing::Span;

use crate::bound::bounded;
use crate::config::IdempotencyConfig;
use crate::envelope::EventEnvelope;
use crate::error::{GuardError, StoreError};
use crate::guard::Outcome;

/// Counter of finished runs (`service`, `event_type`, `outcome`).
pub const RUNS_TOTAL: &str = "eventonce_runs_total";
/// Histogram of the whole run, handler included, in seconds (`service`, `event_type`,
/// `outcome`).
pub const RUN_DURATION_SECONDS: &str = "eventonce_run_duration_seconds";
/// Histogram of one store call as the guard sees it (timeout included), in seconds
/// (`service`, `op`, `outcome`).
///
/// `op` is the store operation (`try_claim`, `complete`, `release`, `extend`, and the
/// batch forms `try_claim_many`, `complete_many`, `release_many`, `extend_many`,
/// `complete_then_claim`): a slow claim and a slow lease renewal point at different
/// problems, and it takes nine values at most. The event type is left out: a store's latency does not depend on it, and it would
/// multiply the series for nothing.
pub const STORE_OPERATION_DURATION_SECONDS: &str = "eventonce_store_operation_duration_seconds";

/// The `outcome` label of a finished run.
pub(crate) fn run_outcome<T, E>(result: &Result<Outcome<T>, GuardError<E>>) -> &'static str {
    match result {
        Ok(Outcome::Processed(_)) => "processed",
        Ok(Outcome::Duplicate) => "duplicate",
        Ok(Outcome::Unprotected(_)) => "unprotected",
        Err(GuardError::InProgress) => "in_progress",
        Err(GuardError::Handler(_)) => "handler_failed",
        Err(GuardError::Store(_)) => "store_refused",
        Err(GuardError::InvalidEvent(_)) => "invalid_event",
        Err(GuardError::Conflict { .. }) => "conflict",
        Err(GuardError::Stale { skipped: true, .. }) => "stale_skipped",
        Err(GuardError::Stale { skipped: false, .. }) => "stale_refused",
    }
}

/// The span and the metrics of one run. Dropped without [`finish`](RunProbe::finish), it
/// records the run as `panicked` (while unwinding) or `cancelled` (its future dropped).
pub(crate) struct RunProbe<'a> {
    span: Span,
    #[cfg(feature = "metrics")]
    config: &'a IdempotencyConfig,
    #[cfg(feature = "metrics")]
    event_type: &'a str,
    #[cfg(feature = "metrics")]
    started: Instant,
    #[cfg(not(feature = "metrics"))]
    _run: std::marker::PhantomData<&'a ()>,
    finished: bool,
}

impl<'a> RunProbe<'a> {
    /// Opens the span of a run of `envelope`.
    pub(crate) fn start(config: &'a IdempotencyConfig, envelope: &'a EventEnvelope) -> Self {
        let span = tracing::info_span!(
            "eventonce.run",
            service = config.service_name(),
            event_type = bounded(&envelope.event_type).as_ref(),
            event_id = envelope.event_id.as_deref().map(bounded).as_deref(),
            correlation_id = envelope.correlation_id.as_deref().map(bounded).as_deref(),
            outcome = Empty,
            duplicate = Empty,
            handler_ran = Empty,
            "otel.status_code" = Empty,
        );
        RunProbe {
            span,
            #[cfg(feature = "metrics")]
            config,
            #[cfg(feature = "metrics")]
            event_type: &envelope.event_type,
            #[cfg(feature = "metrics")]
            started: Instant::now(),
            #[cfg(not(feature = "metrics"))]
            _run: std::marker::PhantomData,
            finished: false,
        }
    }

    /// The run's span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Records the run's decision on its span and in the metrics.
    pub(crate) fn finish<T, E>(mut self, result: &Result<Outcome<T>, GuardError<E>>) {
        self.finished = true;
        let ran = matches!(
            result,
            Ok(Outcome::Processed(_) | Outcome::Unprotected(_)) | Err(GuardError::Handler(_))
        );
        self.span
            .record("duplicate", matches!(result, Ok(Outcome::Duplicate)));
        self.span.record("handler_ran", ran);
        self.record(run_outcome(result));
    }

    fn record(&self, outcome: &'static str) {
        self.span.record("outcome", outcome);
        let failed = matches!(
            outcome,
            "handler_failed" | "store_refused" | "invalid_event" | "panicked"
        );
        self.span
            .record("otel.status_code", if failed { "ERROR" } else { "OK" });
        #[cfg(feature = "metrics")]
        {
            use metrics::{Key, Label};
            // One label vector for both metrics (the names differ, the labels do not).
            let labels = vec![
                Label::new("service", self.config.service_label()),
                Label::new("event_type", event_type_label(self.event_type)),
                Label::from_static_parts("outcome", outcome),
            ];
            let elapsed = self.started.elapsed().as_secs_f64();
            metrics::with_recorder(|recorder| {
                let key = Key::from_parts(RUNS_TOTAL, labels);
                recorder.register_counter(&key, &METADATA).increment(1);
                let key = Key::from_parts(RUN_DURATION_SECONDS, key.into_parts().1);
                recorder.register_histogram(&key, &METADATA).record(elapsed);
            });
        }
    }
}

/// The most distinct values the `event_type` label takes in this process; the event
/// types seen after them are counted under [`OTHER_EVENT_TYPES`].
pub const MAX_EVENT_TYPE_LABELS: usize = 100;

/// The `event_type` label of the event types beyond [`MAX_EVENT_TYPE_LABELS`].
pub const OTHER_EVENT_TYPES: &str = "other";

/// The `event_type` label of `event_type`: the type cut to
/// [`MAX_FIELD_CHARS`](crate::MAX_FIELD_CHARS) characters, or `other` once
/// [`MAX_EVENT_TYPE_LABELS`] distinct ones were given out (logged once, at WARN), so that
/// hostile or runaway event types cannot grow the metrics without bound.
#[cfg(feature = "metrics")]
fn event_type_label(event_type: &str) -> metrics::SharedString {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{OnceLock, RwLock};

    static SEEN: OnceLock<RwLock<HashSet<Box<str>>>> = OnceLock::new();
    static FOLDED: AtomicBool = AtomicBool::new(false);
    let label = bounded(event_type);
    let seen = SEEN.get_or_init(RwLock::default);
    let known = seen
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(label.as_ref());
    if known {
        return label.into_owned().into();
    }
    let mut seen = seen
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.contains(label.as_ref()) || seen.len() < MAX_EVENT_TYPE_LABELS {
        seen.insert(label.as_ref().into());
        return label.into_owned().into();
    }
    drop(seen);
    if !FOLDED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            limit = MAX_EVENT_TYPE_LABELS,
            event_type = label.as_ref(),
            "METRIC_LABELS_FOLDED: More than {MAX_EVENT_TYPE_LABELS} distinct event types; this and every further new one is counted under event_type=\"{OTHER_EVENT_TYPES}\" (logged once)"
        );
    }
    metrics::SharedString::const_str(OTHER_EVENT_TYPES)
}

/// What the metrics of a run and of a store call are registered with (as `metrics`'
/// macros would write it for this module).
#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Records the answers of one `run_batch` call: one count per event, with the same
/// labels as a `run` (the batch's duration is not split per event, so no run histogram).
/// Events with the same labels are counted in one increment: a batch mostly holds a few
/// event types, so a batch of 1,000 costs a few counter lookups, not 1,000.
pub(crate) fn batch_outcomes<V: std::borrow::Borrow<EventEnvelope>, T, E>(
    config: &IdempotencyConfig,
    envelopes: &[V],
    answers: &[Result<Outcome<T>, GuardError<E>>],
) {
    #[cfg(feature = "metrics")]
    {
        /// The label pairs counted at once; a batch with more goes on one event at a time.
        const GROUPS: usize = 8;
        let count = |event_type: &str, outcome: &'static str, n: u64| {
            metrics::counter!(
                RUNS_TOTAL,
                "service" => config.service_label(),
                "event_type" => event_type_label(event_type),
                "outcome" => outcome,
            )
            .increment(n);
        };
        let mut groups: Vec<(&str, &'static str, u64)> = Vec::new();
        for (envelope, answer) in envelopes.iter().zip(answers) {
            let labels = (envelope.borrow().event_type.as_str(), run_outcome(answer));
            if let Some(group) = groups.iter_mut().find(|g| (g.0, g.1) == labels) {
                group.2 += 1;
            } else if groups.len() < GROUPS {
                groups.push((labels.0, labels.1, 1));
            } else {
                count(labels.0, labels.1, 1);
            }
        }
        for (event_type, outcome, n) in groups {
            count(event_type, outcome, n);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (config, envelopes, answers);
}

impl Drop for RunProbe<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.record(if std::thread::panicking() {
                "panicked"
            } else {
                "cancelled"
            });
        }
    }
}

/// Records one store call's latency (a no-op without the `metrics` feature).
pub(crate) fn store_call<T>(
    config: &IdempotencyConfig,
    op: &'static str,
    elapsed: Duration,
    result: &Result<T, StoreError>,
) {
    #[cfg(feature = "metrics")]
    {
        use metrics::{Key, Label};
        let outcome = match result {
            Ok(_) => "ok",
            Err(StoreError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        let labels = vec![
            Label::new("service", config.service_label()),
            Label::from_static_parts("op", op),
            Label::from_static_parts("outcome", outcome),
        ];
        let key = Key::from_parts(STORE_OPERATION_DURATION_SECONDS, labels);
        metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(&key, &METADATA)
                .record(elapsed.as_secs_f64());
        });
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (config, op, elapsed, result);
}
