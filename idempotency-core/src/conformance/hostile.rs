//! Hostile input: an event the store cannot hold is that event's error, never an outage.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{config, event, guard, unique_service, Boom, StoreFactory};
use crate::{EventEnvelope, FailMode, GuardError, KeyScheme, Outcome};

/// `len` letters that do not repeat in any short period (a store that compresses its keys
/// gains nothing from them).
fn incompressible(len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + u8::try_from(x % 26).unwrap_or(0))
        })
        .collect()
}

/// Under `KeyScheme::PythonV2` (which keeps the event type's bytes in the key), events
/// whose types are too long for any store's keys are refused one by one as
/// `InvalidEvent`, their handlers never run, and they never count as an outage: with
/// `FailMode::Open` and a breaker of three failures, an honest event after three of them
/// delivered twice still runs once. A type that fits is kept whole and processed.
pub async fn hostile_event_types_never_open_the_breaker_nor_run_twice(f: &impl StoreFactory) {
    let service = unique_service("hostile-types");
    let g = guard(
        f,
        config(&service)
            .key_scheme(KeyScheme::PythonV2)
            .on_store_error(FailMode::Open)
            .circuit_breaker(3, Duration::from_secs(30)),
    )
    .await;
    let ran = AtomicUsize::new(0);
    let mut answers = Vec::new();
    for (n, len) in [2_600_usize, 3_000, 20_000, 1_000_000]
        .into_iter()
        .enumerate()
    {
        let hostile = EventEnvelope::new(incompressible(len, n as u64 + 7), json!({"n": n}));
        let answer = g
            .run(&hostile, async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Boom>(())
            })
            .await;
        answers.push(match answer {
            Err(GuardError::InvalidEvent(e)) => {
                format!("InvalidEvent({e})").chars().take(160).collect()
            }
            other => format!("{other:?}").chars().take(160).collect::<String>(),
        });
    }
    let hostile_runs = ran.swap(0, Ordering::SeqCst);
    let breaker_open = g.circuit_open();
    let honest = event(1);
    for _ in 0..2 {
        let _ = g
            .run(&honest, async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Boom>(())
            })
            .await;
    }
    let honest_runs = ran.swap(0, Ordering::SeqCst);
    let summary = format!(
        "hostile answers: {answers:?}; hostile handlers run: {hostile_runs}; breaker open: \
         {breaker_open}; honest event delivered twice ran {honest_runs} times"
    );
    assert!(
        answers.iter().all(|a| a.starts_with("InvalidEvent")),
        "{summary}"
    );
    assert_eq!(
        (hostile_runs, breaker_open, honest_runs),
        (0, false, 1),
        "{summary}"
    );

    // The longest type the scheme keeps is kept whole, and stored.
    let fits = EventEnvelope::new(
        incompressible(crate::key::MAX_PYTHON_V2_EVENT_TYPE, 3),
        json!({"n": "fits"}),
    );
    let out = g.run(&fits, async { Ok::<_, Boom>(1) }).await;
    assert!(matches!(out, Ok(Outcome::Processed(1))), "{out:?}");
    let key = g.key_for(&fits).expect("key");
    assert!(key.contains(&fits.event_type), "the type's bytes are kept");
}
