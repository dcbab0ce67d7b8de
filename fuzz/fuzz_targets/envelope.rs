//! Fuzzes `EventEnvelope::from_slice`, the deterministic hash and key generation: no input
//! may panic, and every key must stay inside its service's namespace.
#![no_main]

use eventonce_core::{EventEnvelope, IdempotencyConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = EventEnvelope::from_slice(data) else {
        return;
    };
    let Ok(hash) = envelope.deterministic_hash() else {
        return;
    };
    assert_eq!(hash.len(), 32);
    let config = IdempotencyConfig::builder("fuzz").build().expect("valid config");
    let key = config.generate_key(&envelope.event_type, &hash);
    let rest = key
        .strip_prefix("huleedu:idempotency:v2:fuzz:")
        .expect("the key stays in its namespace");
    assert_eq!(rest.matches(':').count(), 1, "{key}");
    assert!(key.is_ascii(), "{key}");
    // Re-serializing writes `data` as its `Value` holds it (numbers as 64-bit integers or
    // f64s, a number beyond an f64's range as null); parsing that again gives the identity
    // of that value (or none, for data that was only such a number).
    let again = serde_json::to_vec(&envelope).expect("serializable");
    let reparsed = EventEnvelope::from_slice(&again).expect("round trip");
    let of_value = EventEnvelope::from_value(serde_json::to_value(&envelope).expect("value"))
        .expect("a value envelope");
    assert_eq!(
        reparsed.deterministic_hash().ok(),
        of_value.deterministic_hash().ok()
    );
});
