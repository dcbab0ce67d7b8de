//! Hostile input on the real PostgreSQL: keys the index refuses are the event's error,
//! every key a configuration can form fits, a large batch is claimed in chunks, and a
//! `statement_timeout` below the lock wait is a conflict, not an outage.

mod support;

use std::time::Duration;

use eventonce_core::conformance::unique_service;

/// 30,000 events in one `run_batch` under a 300 ms store timeout (one statement over all
/// of them takes longer): split into chunks, every event runs once over two deliveries,
/// none unprotected, and no claim is left processing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_claimed_in_chunks_and_runs_each_event_once() {
    let service = unique_service("large-batch");
    let tally = eventonce_testkit::large_batch::deliver_twice(
        support::store(4).await,
        &service,
        30_000,
        Duration::from_millis(300),
    )
    .await;
    let expected = eventonce_testkit::large_batch::LargeBatch {
        processed: 30_000,
        duplicates: 30_000,
        runs: 30_000,
        ..Default::default()
    };
    assert_eq!(tally, expected);
}
