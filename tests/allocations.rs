//! Heap allocations per guarded event on the in-memory store, counted by a global
//! allocator: a regression check on the hot path (benches/PROFILES.md gives the history).
//! The bounds sit a little above what the guard does today; a change that allocates more
//! per event fails here and must say why.

use std::alloc::System;

use eventonce::{EventEnvelope, Guard, IdempotencyConfig, MemoryStore};
use serde_json::json;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const EVENTS: u64 = 1_000;
/// Measured 12.0 and 7.0 with every feature on (metrics included), 2026-12-02.
const NEW_EVENT_BOUND: f64 = 13.0;
const DUPLICATE_BOUND: f64 = 8.0;

fn envelope(n: u64) -> EventEnvelope {
    EventEnvelope::new("order.placed.v1", json!({"order": n, "lines": [1, 2, 3]}))
        .with_event_id(format!("e-{n}"))
}

/// Allocations per event of `events` run through `guard` (the envelopes are built first).
async fn per_event(guard: &Guard, events: &[EventEnvelope]) -> f64 {
    let region = Region::new(GLOBAL);
    for e in events {
        let _ = guard.run(e, async { Ok::<_, String>(()) }).await;
    }
    let change = region.change();
    (change.allocations + change.reallocations) as f64 / events.len() as f64
}

#[tokio::test(flavor = "current_thread")]
async fn a_guarded_event_allocates_a_bounded_few_times() {
    let guard = Guard::new(
        MemoryStore::with_capacity(100_000),
        IdempotencyConfig::builder("billing").build().unwrap(),
    );
    // Warm up: the store's shards, the per-thread buffers, tracing's callsites.
    let warm: Vec<_> = (0..EVENTS).map(|n| envelope(u64::MAX - n)).collect();
    per_event(&guard, &warm).await;

    let new: Vec<_> = (0..EVENTS).map(envelope).collect();
    let new_event = per_event(&guard, &new).await;
    let duplicate = per_event(&guard, &new).await;
    println!("allocations per event: new {new_event:.1}, duplicate {duplicate:.1}");
    assert!(
        new_event <= NEW_EVENT_BOUND,
        "a new event allocated {new_event:.1} times"
    );
    assert!(
        duplicate <= DUPLICATE_BOUND,
        "a duplicate allocated {duplicate:.1} times"
    );
}
