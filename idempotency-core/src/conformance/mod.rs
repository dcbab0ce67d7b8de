//! The shared conformance suite: every backend runs all of it against a real store.
//!
//! Each check is an `async fn` taking a [`StoreFactory`]: something that makes store
//! handles sharing one backend (one per simulated consumer, each with its own connection
//! where the backend has connections). Keys are unique per check and per run, so checks
//! can run in parallel against one shared server.
//!
//! A backend's test file runs the whole suite with one macro call:
//!
//! ```text
//! fn factory() -> impl eventonce::conformance::StoreFactory {
//!     let store = MyStore::new();
//!     move || { let s = store.clone(); async move { s } }
//! }
//! eventonce::conformance_tests!(factory); // eventonce_core::conformance_tests! inside the workspace
//! ```
//!
//! Lease and TTL checks run in real time (real servers keep real time) with short leases
//! and generous margins.
//!
//! Every check panics when the store breaks its contract: a failed assertion is a failed
//! check, as in any test, so the checks carry no `# Panics` sections of their own.
#![allow(
    clippy::missing_panics_doc,
    reason = "every check panics when the store breaks its contract: that is how it fails"
)]

mod batch;
mod chain;
mod faulty;
mod guard;
mod guard_batch;
mod hostile;
mod identity;
mod results;
mod store;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use crate::{Completion, EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, Record};

pub use batch::*;
pub use chain::*;
pub use faulty::{Fault, FaultControl, FaultyStore};
pub use guard::*;
pub use guard_batch::*;
pub use hostile::*;
pub use identity::*;
pub use results::*;
pub use store::*;

#[doc(hidden)]
pub mod __private {
    pub use tokio;
}

/// A short lease for expiry checks.
pub const SHORT: Duration = Duration::from_millis(500);
/// How long a check waits for a [`SHORT`] lease to have certainly expired.
pub const PAST_SHORT: Duration = Duration::from_millis(1500);
/// A lease that certainly outlives a check.
pub const LONG: Duration = Duration::from_secs(60);

/// Makes store handles that share one backend.
pub trait StoreFactory: Send + Sync {
    /// The store type.
    type Store: IdempotencyStore + 'static;
    /// A new handle on the shared backend.
    fn create(&self) -> Pin<Box<dyn Future<Output = Self::Store> + Send + '_>>;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = S> + Send + 'static,
    S: IdempotencyStore + 'static,
{
    type Store = S;
    fn create(&self) -> Pin<Box<dyn Future<Output = S> + Send + '_>> {
        Box::pin(self())
    }
}

/// A key unique to this run and call, under the default prefix's namespace.
pub fn unique_key(check: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{:x}{:x}", std::process::id(), now)
    });
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("huleedu:idempotency:conformance:{run}:{check}:{n}")
}

/// A service name unique to this run and call, for guard checks.
pub fn unique_service(check: &str) -> String {
    unique_key(check)
        .rsplit(':')
        .take(3)
        .collect::<Vec<_>>()
        .join("-")
        .replace('_', "-")
}

fn config(service: &str) -> crate::ConfigBuilder {
    IdempotencyConfig::builder(service).key_prefix("huleedu:idempotency:conformance")
}

fn event(n: u64) -> EventEnvelope {
    EventEnvelope::new("conformance.event.v1", json!({"n": n, "payload": "x"}))
        .with_event_id(format!("event-{n}"))
}

#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

async fn record(store: &impl IdempotencyStore, key: &str) -> Option<Record> {
    store.get(key).await.expect("get succeeds")
}
async fn guard(f: &impl StoreFactory, builder: crate::ConfigBuilder) -> Guard {
    Guard::new(f.create().await, builder.build().expect("valid config"))
}

fn completion(key: &str, owner: &str, ttl: Duration) -> Completion {
    Completion::new(key, owner, ttl)
}

/// fresh [`StoreFactory`].
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@each $factory;
            claim_on_absent_key_is_acquired,
            claim_held_by_live_owner_is_in_progress,
            completed_key_reports_completed_with_its_ttl,
            complete_is_owner_checked,
            release_is_owner_checked_and_frees_the_key,
            release_never_deletes_a_completed_record,
            extend_is_owner_checked_and_renews_the_lease,
            expired_claim_counts_as_absent,
            completed_record_expires_after_its_ttl,
            keys_are_independent,
            unusual_keys_are_stored_exactly,
            invalid_arguments_are_refused,
            concurrent_claims_have_exactly_one_winner,
            claims_racing_completion_never_acquire,
            guard_processes_new_event_once_and_skips_duplicates,
            guard_uses_default_ttl_for_unlisted_types,
            guard_reports_in_progress_for_a_live_claim,
            guard_waits_for_a_live_claim_when_asked,
            guard_releases_on_handler_error_and_redelivery_retries,
            guard_releases_on_panic_and_resumes_it,
            guard_releases_when_the_run_future_is_dropped,
            guard_processes_redelivery_after_a_dead_consumers_lease,
            guard_renews_the_lease_of_a_slow_handler,
            guard_runs_concurrent_deliveries_once,
            guard_isolates_services,
            guard_rejects_unidentifiable_events,
            guard_applies_the_fail_mode_when_the_store_fails,
            claim_many_answers_each_key_in_order,
            batch_transitions_are_owner_checked,
            complete_then_claim_completes_then_claims,
            complete_then_claim_many_completes_then_claims,
            batch_calls_refuse_a_key_twice,
            concurrent_batches_have_one_winner_per_key,
            guard_batch_answers_each_event_in_order,
            guard_batch_bounds_concurrency,
            guard_batch_settles_then_resumes_a_panic,
            guard_batch_settles_its_claims_when_dropped,
            guard_batch_applies_the_fail_mode,
            guard_batch_renews_the_leases_of_slow_handlers,
            guard_defers_completion_to_the_next_claim,
            guard_batch_answers_duplicate_for_its_own_deferred_completion,
            guard_deferred_completion_lost_in_a_crash_costs_a_rerun,
            hostile_event_types_never_open_the_breaker_nor_run_twice,
            guard_runs_identities_once_and_refuses_changed_payloads,
            guard_refuses_a_changed_payload_while_the_first_claim_is_live,
            guard_keys_by_event_id_and_refuses_changed_data,
            guard_batch_refuses_changed_payloads_per_event,
            guard_deferred_completion_keeps_the_payload_fingerprint,
            guard_accepts_a_record_written_without_a_fingerprint,
            stored_result_is_kept_with_the_completion_and_read_back,
            guard_replays_the_stored_result_of_a_duplicate,
            guard_completes_without_a_result_over_the_size_bound,
            guard_replays_results_only_for_the_same_payload,
            guard_batch_replays_stored_results,
            batch_completions_keep_their_results,
            carried_completions_keep_their_results,
            guard_deferred_completion_keeps_the_stored_result,
            guard_retried_completion_keeps_the_stored_result,
            guard_chain_carries_completions_with_the_next_claim,
            guard_chain_owes_completions_its_carrier_failed_to_write,
            guard_chain_writes_completions_whose_carrier_was_dropped,
        );
    };
    (@each $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[$crate::conformance::__private::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let factory = $factory().await;
                $crate::conformance::$check(&factory).await;
            }
        )*
    };
}
