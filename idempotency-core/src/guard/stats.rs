//! The guard's decision counters: [`GuardStats`], and the live [`Counters`] behind it
//! that [`observe`](super::GuardInner::observe) bumps.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a guard's decisions since it was created (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardStats {
    /// Events processed and recorded as completed.
    pub processed: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Runs refused because another owner held the claim.
    pub in_progress: u64,
    /// Handler failures (claim released).
    pub handler_failures: u64,
    /// Handler panics (claim released, panic resumed).
    pub handler_panics: u64,
    /// Handlers run without protection because the store failed (`FailMode::Open`).
    pub unprotected: u64,
    /// Runs refused because the store failed (`FailMode::Closed`).
    pub store_refusals: u64,
    /// Failed store operations of any kind.
    pub store_errors: u64,
    /// Claims found lost at completion or renewal (the lease had expired).
    pub claims_lost: u64,
    /// Events that could not be identified.
    pub invalid_events: u64,
    /// `run` futures dropped while their handler was running.
    pub cancelled: u64,
    /// Completions of succeeded handlers that the store did not take at the first attempt
    /// (an outage, a timeout, an open breaker, a run dropped while completing): kept and
    /// retried with backoff until written or their lease ends.
    pub completions_retried: u64,
    /// Completions given up because their lease ended before the store took them: those
    /// events are processed but not recorded, so a redelivery may run them again.
    pub completions_abandoned: u64,
    /// Deliveries refused because their key is recorded with another payload fingerprint
    /// (`GuardError::Conflict`).
    pub conflicts: u64,
    /// Events older than their maximum age (skipped, refused or, with
    /// `StalePolicy::Process`, run).
    pub stale: u64,
    /// Results of [`Guard::run_stored`](crate::Guard::run_stored) not kept in the completed
    /// record (over [`max_result_bytes`](crate::ConfigBuilder::max_result_bytes), or not
    /// encodable): the event was completed without its result.
    pub results_dropped: u64,
    /// Stored results that did not decode as the handler's type: answered as plain
    /// duplicates.
    pub results_unreadable: u64,
}

/// One counter of [`GuardStats`].
#[derive(Clone, Copy)]
pub(super) enum Counter {
    Processed,
    Duplicates,
    InProgress,
    HandlerFailures,
    HandlerPanics,
    Unprotected,
    StoreRefusals,
    StoreErrors,
    ClaimsLost,
    InvalidEvents,
    Cancelled,
    CompletionsRetried,
    CompletionsAbandoned,
    Conflicts,
    Stale,
    ResultsDropped,
    ResultsUnreadable,
}

/// The live counters behind [`GuardStats`], one per [`Counter`].
#[derive(Default)]
pub(super) struct Counters([AtomicU64; 17]);

impl Counters {
    pub(super) fn bump(&self, counter: Counter) {
        self.0[counter as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub(super) fn stats(&self) -> GuardStats {
        let get = |c: Counter| self.0[c as usize].load(Ordering::Relaxed);
        GuardStats {
            processed: get(Counter::Processed),
            duplicates: get(Counter::Duplicates),
            in_progress: get(Counter::InProgress),
            handler_failures: get(Counter::HandlerFailures),
            handler_panics: get(Counter::HandlerPanics),
            unprotected: get(Counter::Unprotected),
            store_refusals: get(Counter::StoreRefusals),
            store_errors: get(Counter::StoreErrors),
            claims_lost: get(Counter::ClaimsLost),
            invalid_events: get(Counter::InvalidEvents),
            cancelled: get(Counter::Cancelled),
            completions_retried: get(Counter::CompletionsRetried),
            completions_abandoned: get(Counter::CompletionsAbandoned),
            conflicts: get(Counter::Conflicts),
            stale: get(Counter::Stale),
            results_dropped: get(Counter::ResultsDropped),
            results_unreadable: get(Counter::ResultsUnreadable),
        }
    }
}
