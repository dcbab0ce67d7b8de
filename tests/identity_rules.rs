//! Identities the caller builds, key rules for envelopes, payload conflicts and stale
//! events, through the facade (the conformance suite runs the conflict checks on every
//! store; these cover the rest on the memory store, and the transactional mode on
//! PostgreSQL).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use eventonce::{
    ConfigError, EventEnvelope, Guard, GuardError, IdempotencyConfig, Identity, IdentityError,
    IdentityRule, MemoryStore, Outcome, StalePolicy,
};
use serde_json::json;

fn guard(builder: eventonce::ConfigBuilder) -> Guard {
    Guard::new(MemoryStore::new(), builder.build().expect("config"))
}

async fn ok() -> Result<(), std::io::Error> {
    Ok(())
}

fn stamped(at: SystemTime) -> EventEnvelope {
    let text = time_text(at);
    EventEnvelope::from_slice(
        json!({"event_id": format!("e-{text}"), "event_type": "orders.placed.v1",
               "event_timestamp": text, "data": {"n": 1}})
        .to_string()
        .as_bytes(),
    )
    .expect("envelope")
}

/// RFC 3339 in UTC, seconds precision.
fn time_text(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn an_identity_is_keyed_by_its_id_in_a_domain_of_its_own() {
    let g = guard(IdempotencyConfig::builder("ids").identity_rule(IdentityRule::EventId));
    let id = Identity::new("orders.placed.v1", "e-1");
    let envelope = EventEnvelope::new("orders.placed.v1", json!({})).with_event_id("e-1");
    let bytes = Identity::new("orders.placed.v1", [0xff_u8, 0x00, 0x10]);
    let keys = [
        g.key_for(&id).expect("id"),
        g.key_for(&envelope).expect("envelope"),
        g.key_for(&bytes).expect("bytes"),
    ];
    assert!(
        keys[0] != keys[1] && keys[0] != keys[2] && keys[1] != keys[2],
        "{keys:?}"
    );
    assert!(keys
        .iter()
        .all(|k| k.starts_with("huleedu:idempotency:v2:ids:orders_placed_v1:")));
    assert_eq!(
        g.run(&bytes, ok()).await.expect("first"),
        Outcome::Processed(())
    );
    assert_eq!(
        g.run(&bytes, ok()).await.expect("again"),
        Outcome::Duplicate
    );
    let empty = g.run(&Identity::new("orders.placed.v1", ""), ok()).await;
    assert!(
        matches!(
            empty,
            Err(GuardError::InvalidEvent(IdentityError::MissingField { .. }))
        ),
        "{empty:?}"
    );
}

#[tokio::test]
async fn a_fields_rule_keys_by_business_key_and_refuses_a_missing_field() {
    let g = guard(
        IdempotencyConfig::builder("fields").event_type_identity_rule(
            "orders.charged.v1",
            IdentityRule::Fields(vec!["/data/order_id".into()]),
        ),
    );
    let charge = |id: &str, order: serde_json::Value| {
        EventEnvelope::new("orders.charged.v1", json!({"order_id": order, "amount": 5}))
            .with_event_id(id)
    };
    // Two producers' events for one business fact: one charge.
    assert_eq!(
        g.run(&charge("a", json!(42)), ok()).await.expect("a"),
        Outcome::Processed(())
    );
    assert_eq!(
        g.run(&charge("b", json!(42)), ok()).await.expect("b"),
        Outcome::Duplicate
    );
    for missing in [
        EventEnvelope::new("orders.charged.v1", json!({"amount": 5})),
        charge("c", serde_json::Value::Null),
    ] {
        let answer = g.run(&missing, ok()).await;
        match answer {
            Err(GuardError::InvalidEvent(IdentityError::MissingField { field, .. })) => {
                assert_eq!(field, "/data/order_id");
            }
            other => panic!("a missing field must be InvalidEvent, got {other:?}"),
        }
    }
    // Other event types keep the default rule: the content is the key.
    let other = EventEnvelope::new("orders.placed.v1", json!({"order_id": 42}));
    assert_eq!(
        g.run(&other, ok()).await.expect("other"),
        Outcome::Processed(())
    );
}

#[test]
fn an_identity_rule_that_cannot_identify_anything_is_refused_when_built() {
    for rule in [
        IdentityRule::Fields(vec![]),
        IdentityRule::Fields(vec!["data.order".into()]),
    ] {
        let err = IdempotencyConfig::builder("fields")
            .identity_rule(rule)
            .build()
            .expect_err("refused");
        assert!(
            matches!(err, ConfigError::InvalidIdentityRule { .. }),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_stale_event_is_refused_by_default_skipped_or_processed_as_configured() {
    let old = stamped(SystemTime::now() - 2 * HOUR);
    let refused = guard(IdempotencyConfig::builder("stale").max_event_age(HOUR));
    let runs = AtomicUsize::new(0);
    let handler = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>(())
    };
    let answer = refused.run(&old, handler()).await;
    assert!(
        matches!(answer, Err(GuardError::Stale { skipped: false, .. })),
        "{answer:?}"
    );
    assert!(!answer.as_ref().is_ok_and(|_| true) && !answer.expect_err("stale").is_retryable());
    let skipped = guard(
        IdempotencyConfig::builder("stale")
            .max_event_age(HOUR)
            .stale_events(StalePolicy::Skip),
    );
    let answer = skipped.run(&old, handler()).await;
    assert!(
        matches!(answer, Err(GuardError::Stale { skipped: true, .. })),
        "{answer:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "a stale event's handler is never polled"
    );
    let processed = guard(
        IdempotencyConfig::builder("stale")
            .max_event_age(HOUR)
            .stale_events(StalePolicy::Process),
    );
    assert_eq!(
        processed.run(&old, handler()).await.expect("run"),
        Outcome::Processed(())
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        (
            refused.stats().stale,
            skipped.stats().stale,
            processed.stats().stale
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn fresh_future_unstamped_and_other_types_events_run_and_an_unreadable_stamp_is_invalid() {
    let g = guard(
        IdempotencyConfig::builder("stale-edges")
            .max_event_age(HOUR)
            .event_type_max_age("audit.v1", 100 * HOUR),
    );
    let fresh = stamped(SystemTime::now() - Duration::from_secs(60));
    let future = stamped(SystemTime::now() + 24 * HOUR);
    let unstamped = EventEnvelope::new("orders.placed.v1", json!({"n": 2}));
    for event in [&fresh, &future, &unstamped] {
        assert_eq!(
            g.run(event, ok()).await.expect("runs"),
            Outcome::Processed(())
        );
    }
    let mut audit = stamped(SystemTime::now() - 2 * HOUR);
    audit.event_type = "audit.v1".into();
    assert_eq!(
        g.run(&audit, ok()).await.expect("within its type's age"),
        Outcome::Processed(())
    );
    let mut unreadable = unstamped.clone().with_event_id("x");
    unreadable.event_timestamp = Some("yesterday at noon".into());
    let answer = g.run(&unreadable, ok()).await;
    assert!(
        matches!(
            answer,
            Err(GuardError::InvalidEvent(
                IdentityError::UnreadableTimestamp { .. }
            ))
        ),
        "{answer:?}"
    );
    // Without a maximum age the timestamp is not read at all.
    let unchecked = guard(IdempotencyConfig::builder("no-age"));
    assert_eq!(
        unchecked.run(&unreadable, ok()).await.expect("runs"),
        Outcome::Processed(())
    );
}

#[tokio::test]
async fn an_identitys_timestamp_is_checked_too() {
    let g = guard(IdempotencyConfig::builder("stale-identity").max_event_age(HOUR));
    let old = Identity::new("orders.placed.v1", "o-1").with_timestamp(SystemTime::now() - 2 * HOUR);
    let answer = g.run(&old, ok()).await;
    assert!(
        matches!(answer, Err(GuardError::Stale { .. })),
        "{answer:?}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn the_transactional_mode_refuses_a_changed_payload_and_keeps_the_record() {
    use eventonce::{PostgresOptions, PostgresStore};
    let url = std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("eventonce_identity_{}", std::process::id());
    let store = PostgresStore::connect_with(&url, PostgresOptions::default().schema(&schema))
        .await
        .expect("store");
    let g = Guard::new(
        store.clone(),
        IdempotencyConfig::builder("tx-conflict")
            .build()
            .expect("config"),
    );
    let first = Identity::new("orders.placed.v1", "tx-1").with_fingerprint(b"v1");
    let changed = Identity::new("orders.placed.v1", "tx-1").with_fingerprint(b"v2");
    let run = |identity: Identity| {
        let (g, store) = (&g, &store);
        async move {
            g.run_in_transaction(store, &identity, |tx| async move {
                (tx, Ok::<_, std::io::Error>(()))
            })
            .await
        }
    };
    let outcomes = (
        run(first.clone()).await,
        run(first.clone()).await,
        run(changed).await,
    );
    let record = eventonce::IdempotencyStore::get(&store, &g.key_for(&first).expect("key"))
        .await
        .expect("get")
        .expect("record");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(store.pool())
        .await;
    assert!(
        matches!(outcomes.0, Ok(Outcome::Processed(()))),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes.1, Ok(Outcome::Duplicate)), "{outcomes:?}");
    assert!(
        matches!(outcomes.2, Err(GuardError::Conflict { .. })),
        "{outcomes:?}"
    );
    assert_eq!(record.fingerprint(), first.fingerprint());
}

#[tokio::test]
async fn the_payload_fingerprint_keeps_every_digit() {
    let g = guard(IdempotencyConfig::builder("digits").identity_rule(IdentityRule::EventId));
    let parse = |n: &str| {
        EventEnvelope::from_slice(
            format!(r#"{{"event_id":"e-1","event_type":"t.v1","data":{{"n":{n}}}}}"#).as_bytes(),
        )
        .expect("envelope")
    };
    // One f64, two values: a changed payload, not a duplicate.
    let first = parse("123456789012345678901");
    assert_eq!(
        g.run(&first, ok()).await.expect("first"),
        Outcome::Processed(())
    );
    assert_eq!(
        g.run(&parse("1.23456789012345678901e20"), ok())
            .await
            .expect("same value"),
        Outcome::Duplicate
    );
    let changed = g.run(&parse("123456789012345678902"), ok()).await;
    assert!(
        matches!(changed, Err(GuardError::Conflict { .. })),
        "{changed:?}"
    );
}
