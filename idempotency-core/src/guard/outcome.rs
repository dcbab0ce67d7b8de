//! What a run answers ([`Outcome`]), what the guard decided on the way ([`Decision`]),
//! and the one place that records a decision: [`GuardInner::observe`] (its counters and
//! its tracing event; the run's span and metrics are fed from its final answer by
//! [`RunProbe`](crate::telemetry::RunProbe)).

use std::fmt::Display;
use std::time::{Duration, Instant};

use tracing::Level;

use crate::bound::{bounded, Bounded};

use super::stats::Counter;
use super::GuardInner;
use crate::config::IdempotencyConfig;
use crate::envelope::EventEnvelope;
use crate::error::StoreError;

/// What happened to an event that [`Guard::run`](super::Guard::run) let through or skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome<T> {
    /// The event was new: the handler ran once and the event is recorded as completed.
    Processed(T),
    /// The event was completed before: the handler was never polled.
    Duplicate,
    /// The store failed and the configuration is `FailMode::Open`: the handler ran without
    /// protection, so this may be a second run.
    Unprotected(T),
}

impl<T> Outcome<T> {
    /// The handler's value, if the handler ran.
    pub fn into_value(self) -> Option<T> {
        match self {
            Outcome::Processed(v) | Outcome::Unprotected(v) => Some(v),
            Outcome::Duplicate => None,
        }
    }

    /// Whether the event was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Outcome::Duplicate)
    }
}

/// One decision of the guard about an event (or a claim, or a batch's claims).
pub(super) enum Decision<'a> {
    /// The claim was acquired.
    Claimed,
    /// The claim was acquired inside the handler's transaction.
    ClaimedInTransaction,
    /// The event was completed before: skipped.
    Duplicate,
    /// Another live owner holds the claim.
    InProgress,
    /// Processed and marked completed.
    Completed,
    /// Processed and committed with its record in the handler's transaction.
    Committed,
    /// Processed; its completion waits to travel with the next claim.
    CompletionDeferred,
    /// Processed; its completion was not written and is owed (logged when queued).
    CompletionOwed,
    /// Processed, but the store said the claim was no longer ours.
    CompletionLost,
    /// The handler failed; its claim was released (or could not be).
    HandlerFailed {
        error: &'a dyn Display,
        released: bool,
    },
    /// The handler panicked; its claim was released (or could not be).
    HandlerPanicked { released: bool },
    /// The handler failed inside its transaction, rolled back.
    RolledBack { error: &'a dyn Display },
    /// Releasing a claim failed.
    ReleaseFailed { error: &'a StoreError },
    /// A store call failed (counted; the decision it led to is observed on its own).
    StoreFailed,
    /// The store failed and `FailMode::Closed` refused the run.
    Refused {
        store: &'a str,
        error: &'a StoreError,
    },
    /// The transactional store failed: nothing committed, the run refused.
    TransactionRefused {
        store: &'a str,
        error: &'a StoreError,
    },
    /// The store failed and `FailMode::Open` runs the handler without protection.
    Unprotected {
        store: &'a str,
        error: &'a StoreError,
    },
    /// A handler run without protection failed.
    UnprotectedFailed { error: &'a dyn Display },
    /// The event cannot be identified.
    Invalid { error: &'a dyn Display },
    /// The event's key is recorded with another payload fingerprint: refused.
    Conflict { error: &'a dyn Display },
    /// The recorded fingerprint could not be read (the store failed): answered as if the
    /// fingerprints agreed.
    ConflictUnchecked { error: &'a StoreError },
    /// A result of `run_stored` was not kept (over `max_result_bytes`, or not encodable):
    /// the event is completed without it.
    ResultDropped { error: &'a dyn Display },
    /// A stored result could not be decoded as the handler's type: answered as a plain
    /// duplicate.
    ResultUnreadable { error: &'a dyn Display },
    /// The event is older than its maximum age: skipped or refused.
    Stale {
        error: &'a dyn Display,
        skipped: bool,
    },
    /// The event is older than its maximum age, and run all the same
    /// (`StalePolicy::Process`).
    StaleProcessed { error: &'a dyn Display },
    /// The store confirmed a lease renewal.
    LeaseRenewed,
    /// A renewal found the claim lost while its handler ran.
    LeaseLost,
    /// Renewing a claim's lease failed; retried soon.
    LeaseRenewalFailed { error: &'a StoreError },
    /// Renewing a batch's leases failed; retried soon.
    BatchRenewalFailed { error: &'a StoreError },
    /// A queued event of a batch lost its claim before its handler started.
    QueuedClaimLost,
    /// A completion the store did not take is kept and retried.
    CompletionRetrying { error: &'a StoreError },
    /// An owed completion's lease ended before the store took it.
    CompletionAbandoned,
    /// An owed completion was answered "not ours": its claim had expired.
    OwedClaimLost,
    /// A write of owed completions failed; they are queued again.
    CompletionsUnwritten { error: &'a StoreError },
    /// A run or batch future was dropped with claims to settle.
    Cancelled,
}

/// What a decision is about: it sets the fields of its tracing event.
pub(super) enum Scope<'a> {
    /// An identified event of a run: every field of the design.
    Event(&'a Ctx<'a>),
    /// An event that could not be identified: its envelope's fields.
    Unidentified(&'a EventEnvelope),
    /// A claim known by its key only.
    Key(&'a str),
    /// Several claims, counted.
    Claims(usize),
    /// The guard itself: the decision is only counted.
    Guard,
}

impl<'a> From<&'a Ctx<'a>> for Scope<'a> {
    fn from(ctx: &'a Ctx<'a>) -> Self {
        Scope::Event(ctx)
    }
}

impl<'a> From<&'a str> for Scope<'a> {
    fn from(key: &'a str) -> Self {
        Scope::Key(key)
    }
}

impl Decision<'_> {
    /// The counters it bumps.
    fn counters(&self) -> &'static [Counter] {
        use Counter as C;
        match self {
            Decision::Claimed | Decision::ClaimedInTransaction | Decision::LeaseRenewed => &[],
            Decision::Duplicate => &[C::Duplicates],
            Decision::InProgress => &[C::InProgress],
            Decision::Completed
            | Decision::Committed
            | Decision::CompletionDeferred
            | Decision::CompletionOwed => &[C::Processed],
            Decision::CompletionLost => &[C::Processed, C::ClaimsLost],
            Decision::HandlerFailed { .. }
            | Decision::RolledBack { .. }
            | Decision::UnprotectedFailed { .. } => &[C::HandlerFailures],
            Decision::HandlerPanicked { .. } => &[C::HandlerPanics],
            Decision::ReleaseFailed { .. }
            | Decision::StoreFailed
            | Decision::LeaseRenewalFailed { .. }
            | Decision::BatchRenewalFailed { .. }
            | Decision::CompletionsUnwritten { .. } => &[C::StoreErrors],
            Decision::Refused { .. } => &[C::StoreRefusals],
            Decision::TransactionRefused { .. } => &[C::StoreErrors, C::StoreRefusals],
            Decision::Unprotected { .. } => &[C::Unprotected],
            Decision::Invalid { .. } => &[C::InvalidEvents],
            Decision::Conflict { .. } => &[C::Conflicts],
            Decision::ConflictUnchecked { .. } => &[C::StoreErrors],
            Decision::ResultDropped { .. } => &[C::ResultsDropped],
            Decision::ResultUnreadable { .. } => &[C::ResultsUnreadable],
            Decision::Stale { .. } | Decision::StaleProcessed { .. } => &[C::Stale],
            Decision::LeaseLost | Decision::QueuedClaimLost | Decision::OwedClaimLost => {
                &[C::ClaimsLost]
            }
            Decision::CompletionRetrying { .. } => &[C::CompletionsRetried],
            Decision::CompletionAbandoned => &[C::CompletionsAbandoned],
            Decision::Cancelled => &[C::Cancelled],
        }
    }

    /// Its event's level, `action` and message; `None` for a decision only counted.
    fn event(&self) -> Option<&'static EventSpec> {
        Some(match self {
            Decision::Claimed => &CLAIMED,
            Decision::ClaimedInTransaction => &CLAIMED_IN_TRANSACTION,
            Decision::Duplicate => &DUPLICATE,
            Decision::InProgress => &IN_PROGRESS,
            Decision::Completed => &COMPLETED,
            Decision::Committed => &COMMITTED,
            Decision::CompletionDeferred => &COMPLETION_DEFERRED,
            Decision::CompletionLost => &COMPLETION_LOST,
            Decision::HandlerFailed { .. } => &HANDLER_FAILED,
            Decision::HandlerPanicked { .. } => &HANDLER_PANICKED,
            Decision::RolledBack { .. } => &ROLLED_BACK,
            Decision::ReleaseFailed { .. } => &RELEASE_FAILED,
            Decision::Refused { .. } => &REFUSED,
            Decision::TransactionRefused { .. } => &TRANSACTION_REFUSED,
            Decision::Unprotected { .. } => &UNPROTECTED,
            Decision::UnprotectedFailed { .. } => &UNPROTECTED_FAILED,
            Decision::Invalid { .. } => &INVALID,
            Decision::Conflict { .. } => &CONFLICT,
            Decision::ConflictUnchecked { .. } => &CONFLICT_UNCHECKED,
            Decision::ResultDropped { .. } => &RESULT_DROPPED,
            Decision::ResultUnreadable { .. } => &RESULT_UNREADABLE,
            Decision::Stale { skipped: true, .. } => &STALE_SKIPPED,
            Decision::Stale { skipped: false, .. } => &STALE_REFUSED,
            Decision::StaleProcessed { .. } => &STALE_PROCESSED,
            Decision::LeaseRenewed => &LEASE_RENEWED,
            Decision::LeaseLost => &LEASE_LOST,
            Decision::LeaseRenewalFailed { .. } => &LEASE_RENEWAL_FAILED,
            Decision::BatchRenewalFailed { .. } => &BATCH_RENEWAL_FAILED,
            Decision::QueuedClaimLost => &QUEUED_CLAIM_LOST,
            Decision::CompletionRetrying { .. } => &COMPLETION_RETRYING,
            Decision::CompletionAbandoned => &COMPLETION_ABANDONED,
            Decision::OwedClaimLost => &OWED_CLAIM_LOST,
            Decision::CompletionsUnwritten { .. } => &COMPLETIONS_UNWRITTEN,
            Decision::CompletionOwed | Decision::StoreFailed | Decision::Cancelled => return None,
        })
    }

    /// The error it carries, for the event's `error` field.
    fn error(&self) -> Option<&dyn Display> {
        match self {
            Decision::HandlerFailed { error, .. }
            | Decision::RolledBack { error }
            | Decision::UnprotectedFailed { error }
            | Decision::Invalid { error }
            | Decision::Conflict { error }
            | Decision::ResultDropped { error }
            | Decision::ResultUnreadable { error }
            | Decision::Stale { error, .. }
            | Decision::StaleProcessed { error } => Some(*error),
            Decision::ReleaseFailed { error }
            | Decision::ConflictUnchecked { error }
            | Decision::Refused { error, .. }
            | Decision::TransactionRefused { error, .. }
            | Decision::Unprotected { error, .. }
            | Decision::LeaseRenewalFailed { error }
            | Decision::BatchRenewalFailed { error }
            | Decision::CompletionRetrying { error }
            | Decision::CompletionsUnwritten { error } => Some(*error),
            _ => None,
        }
    }

    /// The store it names, for the event's `store` field.
    fn store(&self) -> Option<&str> {
        match self {
            Decision::Refused { store, .. }
            | Decision::TransactionRefused { store, .. }
            | Decision::Unprotected { store, .. } => Some(store),
            _ => None,
        }
    }

    /// Whether the claim was released, for the event's `released` field.
    fn released(&self) -> Option<bool> {
        match self {
            Decision::HandlerFailed { released, .. } | Decision::HandlerPanicked { released } => {
                Some(*released)
            }
            _ => None,
        }
    }
}

/// The level, `action` and message of a decision's event.
struct EventSpec {
    level: Level,
    action: &'static str,
    message: &'static str,
}

/// The event of [`Decision::Claimed`].
const CLAIMED: EventSpec = EventSpec {
    level: Level::DEBUG,
    action: "claimed",
    message: "CLAIM_ACQUIRED: Event claimed for processing",
};

/// The event of [`Decision::ClaimedInTransaction`].
const CLAIMED_IN_TRANSACTION: EventSpec = EventSpec {
    level: Level::DEBUG,
    action: "claimed",
    message: "CLAIM_ACQUIRED: Event claimed inside the handler's transaction",
};

/// The event of [`Decision::Duplicate`].
const DUPLICATE: EventSpec = EventSpec {
    level: Level::WARN,
    action: "skipped_duplicate",
    message: "DUPLICATE_EVENT_DETECTED: Event already processed, skipping",
};

/// The event of [`Decision::InProgress`].
const IN_PROGRESS: EventSpec = EventSpec {
    level: Level::WARN,
    action: "in_progress",
    message: "EVENT_IN_PROGRESS: Event is being processed by another consumer, retry later",
};

/// The event of [`Decision::Completed`].
const COMPLETED: EventSpec = EventSpec {
    level: Level::DEBUG,
    action: "completed",
    message: "EVENT_PROCESSED: Event processed and marked completed",
};

/// The event of [`Decision::Committed`].
const COMMITTED: EventSpec = EventSpec {
    level: Level::DEBUG,
    action: "completed",
    message: "EVENT_PROCESSED: Event processed and committed with its record",
};

/// The event of [`Decision::CompletionDeferred`].
const COMPLETION_DEFERRED: EventSpec = EventSpec {
    level: Level::DEBUG,
    action: "completion_deferred",
    message: "EVENT_PROCESSED: Event processed; its completion travels with the next claim",
};

/// The event of [`Decision::CompletionLost`].
const COMPLETION_LOST: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "claim_lost",
    message: "CLAIM_LOST: Event processed, but its claim had expired and may have been taken over; raise processing_ttl",
};

/// The event of [`Decision::HandlerFailed`].
const HANDLER_FAILED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "released",
    message: "PROCESSING_FAILED: Handler failed, claim released so a redelivery can retry",
};

/// The event of [`Decision::HandlerPanicked`].
const HANDLER_PANICKED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "released",
    message: "PROCESSING_FAILED: Handler panicked, claim released so a redelivery can retry",
};

/// The event of [`Decision::RolledBack`].
const ROLLED_BACK: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "rolled_back",
    message: "PROCESSING_FAILED: Handler failed, transaction rolled back so a redelivery can retry",
};

/// The event of [`Decision::ReleaseFailed`].
const RELEASE_FAILED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "release_failed",
    message: "STORE_ERROR: Releasing the claim failed; it expires after the lease",
};

/// The event of [`Decision::Refused`].
const REFUSED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "fail_closed",
    message: "STORE_ERROR: Idempotency store unavailable, refusing to process (fail closed)",
};

/// The event of [`Decision::TransactionRefused`].
const TRANSACTION_REFUSED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "fail_closed",
    message: "STORE_ERROR: Transactional store failed, nothing committed; retry later",
};

/// The event of [`Decision::Unprotected`].
const UNPROTECTED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "fail_open",
    message:
        "STORE_ERROR: Idempotency store unavailable, processing without protection (fail open)",
};

/// The event of [`Decision::UnprotectedFailed`].
const UNPROTECTED_FAILED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "failed_unprotected",
    message: "PROCESSING_FAILED: Handler failed (unprotected run)",
};

/// The event of [`Decision::Conflict`].
const CONFLICT: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "conflict",
    message: "PAYLOAD_CONFLICT: Event recorded with another payload under the same identity, not processing",
};

/// The event of [`Decision::ConflictUnchecked`].
const CONFLICT_UNCHECKED: EventSpec = EventSpec {
    level: Level::WARN,
    action: "conflict_unchecked",
    message: "STORE_ERROR: The recorded payload fingerprint could not be read; answered without the conflict check",
};

/// The event of [`Decision::ResultDropped`].
const RESULT_DROPPED: EventSpec = EventSpec {
    level: Level::WARN,
    action: "result_too_large",
    message:
        "RESULT_DROPPED: Result not kept in the completed record; a duplicate answers without it",
};

/// The event of [`Decision::ResultUnreadable`].
const RESULT_UNREADABLE: EventSpec = EventSpec {
    level: Level::WARN,
    action: "result_unreadable",
    message: "RESULT_UNREADABLE: Stored result does not decode as the handler's type; answered as a plain duplicate",
};

/// The event of [`Decision::Stale`] when skipped.
const STALE_SKIPPED: EventSpec = EventSpec {
    level: Level::WARN,
    action: "stale_skipped",
    message: "STALE_EVENT: Event older than its maximum age, skipped",
};

/// The event of [`Decision::Stale`] when refused.
const STALE_REFUSED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "stale_refused",
    message: "STALE_EVENT: Event older than its maximum age, refused",
};

/// The event of [`Decision::StaleProcessed`].
const STALE_PROCESSED: EventSpec = EventSpec {
    level: Level::WARN,
    action: "stale_processed",
    message: "STALE_EVENT: Event older than its maximum age, processed all the same",
};

/// The event of [`Decision::Invalid`].
const INVALID: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "rejected",
    message: "INVALID_EVENT: Event cannot be identified, not processing",
};

/// The event of [`Decision::LeaseRenewed`].
const LEASE_RENEWED: EventSpec = EventSpec {
    level: Level::DEBUG,
    action: "lease_renewed",
    message: "LEASE_RENEWED: Claim lease renewed",
};

/// The event of [`Decision::LeaseLost`].
const LEASE_LOST: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "lease_lost",
    message: "LEASE_LOST: The claim expired while the handler ran; another consumer may process the event",
};

/// The event of [`Decision::LeaseRenewalFailed`].
const LEASE_RENEWAL_FAILED: EventSpec = EventSpec {
    level: Level::WARN,
    action: "lease_renewal_failed",
    message: "STORE_ERROR: Renewing the claim lease failed; will retry",
};

/// The event of [`Decision::BatchRenewalFailed`].
const BATCH_RENEWAL_FAILED: EventSpec = EventSpec {
    level: Level::WARN,
    action: "lease_renewal_failed",
    message: "STORE_ERROR: Renewing the batch's claim leases failed; will retry",
};

/// The event of [`Decision::QueuedClaimLost`].
const QUEUED_CLAIM_LOST: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "claim_lost",
    message: "CLAIM_LOST: The claim of a queued event expired before its handler started; not starting it, redeliver it",
};

/// The event of [`Decision::CompletionRetrying`].
const COMPLETION_RETRYING: EventSpec = EventSpec {
    level: Level::WARN,
    action: "complete_retrying",
    message: "STORE_ERROR: Event processed, but marking it completed failed; retrying until written or the lease ends",
};

/// The event of [`Decision::CompletionAbandoned`].
const COMPLETION_ABANDONED: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "complete_abandoned",
    message: "STORE_ERROR: Event processed, but its completion could not be written before its lease ended; a redelivery may process it again",
};

/// The event of [`Decision::OwedClaimLost`].
const OWED_CLAIM_LOST: EventSpec = EventSpec {
    level: Level::ERROR,
    action: "claim_lost",
    message: "CLAIM_LOST: Event processed, but its claim had expired before its completion was written; raise processing_ttl",
};

/// The event of [`Decision::CompletionsUnwritten`].
const COMPLETIONS_UNWRITTEN: EventSpec = EventSpec {
    level: Level::WARN,
    action: "complete_retrying",
    message: "STORE_ERROR: Writing completions failed; they are kept and retried until written or their lease ends",
};

/// `tracing::event!` at a level known only at run time (a callsite per level).
macro_rules! event_at {
    ($level:expr, $($rest:tt)+) => {
        if $level == Level::ERROR {
            tracing::event!(Level::ERROR, $($rest)+)
        } else if $level == Level::WARN {
            tracing::event!(Level::WARN, $($rest)+)
        } else {
            tracing::event!(Level::DEBUG, $($rest)+)
        }
    };
}

impl GuardInner {
    /// Records `decision` about `scope`: bumps its counters and emits its tracing event
    /// (a DEBUG one only with `debug_logging`).
    pub(super) fn observe<'a>(&self, scope: impl Into<Scope<'a>>, decision: Decision<'_>) {
        for &counter in decision.counters() {
            self.counters.bump(counter);
        }
        let Some(&EventSpec {
            level,
            action,
            message,
        }) = decision.event()
        else {
            return;
        };
        if level == Level::DEBUG && !self.config.debug_logging() {
            return;
        }
        // Every field is cut to MAX_FIELD_CHARS: one event's fields or error text can be
        // megabytes long.
        let error = decision
            .error()
            .map(|error| tracing::field::display(Bounded(error)));
        let service = self.config.service_name();
        match scope.into() {
            Scope::Event(ctx) => event_at!(
                level,
                service,
                event_type = bounded(&ctx.envelope.event_type).as_ref(),
                event_id = ctx.envelope.event_id.as_deref().map(bounded).as_deref(),
                correlation_id = ctx
                    .envelope
                    .correlation_id
                    .as_deref()
                    .map(bounded)
                    .as_deref(),
                source_service = ctx
                    .envelope
                    .source_service
                    .as_deref()
                    .map(bounded)
                    .as_deref(),
                deterministic_hash = ctx.hash,
                key = ctx.key,
                ttl_seconds = ctx.ttl.as_secs(),
                action,
                store_duration_ms = ctx.store_ms(),
                total_duration_ms = ctx.total_ms(),
                store = decision.store(),
                error,
                released = decision.released(),
                "{message}"
            ),
            Scope::Unidentified(envelope) => event_at!(
                level,
                service,
                event_type = bounded(&envelope.event_type).as_ref(),
                event_id = envelope.event_id.as_deref().map(bounded).as_deref(),
                correlation_id = envelope.correlation_id.as_deref().map(bounded).as_deref(),
                source_service = envelope.source_service.as_deref().map(bounded).as_deref(),
                action,
                error,
                "{message}"
            ),
            Scope::Key(key) => event_at!(level, service, key, action, error, "{message}"),
            Scope::Claims(completions)
                if matches!(decision, Decision::CompletionsUnwritten { .. }) =>
            {
                event_at!(level, service, completions, action, error, "{message}");
            }
            Scope::Claims(keys) => event_at!(level, service, keys, action, error, "{message}"),
            Scope::Guard => {}
        }
    }
}

/// Everything a decision's event carries about a run's event.
pub(super) struct Ctx<'a> {
    pub(super) envelope: &'a EventEnvelope,
    pub(super) hash: &'a str,
    pub(super) key: &'a str,
    pub(super) ttl: Duration,
    started: Instant,
    /// Time spent in store calls so far.
    pub(super) store_time: Duration,
    /// When the claim attempt that answered was sent (its lease counts from then).
    pub(super) claimed: tokio::time::Instant,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        config: &'a IdempotencyConfig,
        envelope: &'a EventEnvelope,
        hash: &'a str,
        key: &'a str,
        started: Instant,
    ) -> Self {
        // `claimed` is set by the claim, before anything reads it (no clock read here).
        Self::at(
            config,
            envelope,
            (hash, key),
            started,
            tokio::time::Instant::from_std(started),
        )
    }

    /// [`Ctx::new`] with the claim's instant given: a batch reads the clock once for all
    /// its events.
    pub(super) fn at(
        config: &'a IdempotencyConfig,
        envelope: &'a EventEnvelope,
        (hash, key): (&'a str, &'a str),
        started: Instant,
        claimed: tokio::time::Instant,
    ) -> Self {
        Ctx {
            envelope,
            hash,
            key,
            ttl: config.ttl_for_event_type(&envelope.event_type),
            started,
            store_time: Duration::ZERO,
            claimed,
        }
    }

    fn total_ms(&self) -> f64 {
        millis(self.started.elapsed())
    }

    fn store_ms(&self) -> f64 {
        millis(self.store_time)
    }
}

/// Milliseconds, to the microsecond.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
