//! `EventEnvelope::from_slice`: every bad input has its own readable error, none panics.

use eventonce::{EnvelopeError, EventEnvelope, IdentityError};
use proptest::prelude::*;

#[test]
fn a_full_envelope_parses_with_every_field() {
    let e = EventEnvelope::from_slice(
        br#"{"event_id":"7d9c","event_type":"huleedu.essay.spellcheck.requested.v1",
             "event_timestamp":"2026-11-27T12:00:00Z","source_service":"bos",
             "correlation_id":"c-1","schema_version":1,"data":{"essay_id":"e-1"},
             "metadata":{"trace":"t"},"unknown_field":true}"#,
    )
    .expect("valid");
    assert_eq!(e.event_id.as_deref(), Some("7d9c"));
    assert_eq!(e.event_type, "huleedu.essay.spellcheck.requested.v1");
    assert_eq!(e.event_timestamp.as_deref(), Some("2026-11-27T12:00:00Z"));
    assert_eq!(e.source_service.as_deref(), Some("bos"));
    assert_eq!(e.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(e.schema_version, Some(1));
    assert_eq!(e.data["essay_id"], "e-1");
    assert_eq!(e.metadata.as_ref().map(serde_json::Map::len), Some(1));
}

#[test]
fn an_envelope_round_trips_through_serde() {
    let e = EventEnvelope::new("t.v1", serde_json::json!({"a": [1, 2]}))
        .with_event_id("id")
        .with_correlation_id("c");
    let bytes = serde_json::to_vec(&e).expect("serialize");
    assert_eq!(EventEnvelope::from_slice(&bytes).expect("parse"), e);
    let via_serde: EventEnvelope = serde_json::from_slice(&bytes).expect("deserialize");
    assert_eq!(via_serde, e);
}

#[test]
#[allow(clippy::too_many_lines, reason = "a table of cases")]
fn each_bad_input_gets_its_own_error() {
    use EnvelopeError::*;
    let cases: Vec<(&[u8], EnvelopeError)> = vec![
        (b"", Empty),
        (b"  \n ", Empty),
        (b"\xff\xfe{}", NotUtf8 { valid_up_to: 0 }),
        (b"[1,2]", NotAnObject { found: "array" }),
        (b"42", NotAnObject { found: "number" }),
        (b"\"event\"", NotAnObject { found: "string" }),
        (b"null", NotAnObject { found: "null" }),
        (b"true", NotAnObject { found: "boolean" }),
        (
            br#"{"data":{}}"#,
            MissingField {
                field: "event_type",
            },
        ),
        (
            br#"{"event_type":null}"#,
            MissingField {
                field: "event_type",
            },
        ),
        (
            br#"{"event_type":""}"#,
            EmptyField {
                field: "event_type",
            },
        ),
        (
            br#"{"event_type":["a"]}"#,
            WrongType {
                field: "event_type",
                expected: "a string",
                found: "array",
            },
        ),
        (
            br#"{"event_type":"t","event_id":5}"#,
            WrongType {
                field: "event_id",
                expected: "a string",
                found: "number",
            },
        ),
        (
            br#"{"event_type":"t","correlation_id":{}}"#,
            WrongType {
                field: "correlation_id",
                expected: "a string",
                found: "object",
            },
        ),
        (
            br#"{"event_type":"t","schema_version":"1"}"#,
            WrongType {
                field: "schema_version",
                expected: "a non-negative integer",
                found: "string",
            },
        ),
        (
            br#"{"event_type":"t","schema_version":-1}"#,
            WrongType {
                field: "schema_version",
                expected: "a non-negative integer",
                found: "number",
            },
        ),
        (
            br#"{"event_type":"t","metadata":[1]}"#,
            WrongType {
                field: "metadata",
                expected: "an object",
                found: "array",
            },
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            EventEnvelope::from_slice(input),
            Err(expected),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn invalid_json_says_where() {
    let err = EventEnvelope::from_slice(b"{\"event_type\": \"t\",\n \"data\": }").unwrap_err();
    match &err {
        EnvelopeError::InvalidJson { line, column, .. } => assert_eq!((*line, *column), (2, 10)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("line 2, column 10"), "{err}");
}

#[test]
fn a_field_given_twice_is_malformed_not_silently_resolved() {
    let err = EventEnvelope::from_slice(br#"{"event_type":"t","event_id":"a","event_id":"b"}"#)
        .unwrap_err();
    assert!(matches!(err, EnvelopeError::Malformed { .. }), "{err:?}");
}

#[test]
fn nesting_deeper_than_the_parser_allows_is_an_error() {
    let deep = format!(
        "{{\"event_type\":\"t\",\"data\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let err = EventEnvelope::from_slice(deep.as_bytes()).unwrap_err();
    assert!(matches!(err, EnvelopeError::InvalidJson { .. }), "{err:?}");
}

#[test]
fn missing_data_and_id_parse_but_cannot_be_identified() {
    let e = EventEnvelope::from_slice(br#"{"event_type":"t"}"#).expect("parses");
    assert!(matches!(
        e.deterministic_hash(),
        Err(IdentityError::Unidentifiable { .. })
    ));
    let e = EventEnvelope::from_slice(br#"{"event_type":"t","event_id":""}"#).expect("parses");
    assert!(matches!(
        e.deterministic_hash(),
        Err(IdentityError::Unidentifiable { .. })
    ));
    let e = EventEnvelope::from_slice(br#"{"event_type":"t","event_id":"x"}"#).expect("parses");
    assert!(e.deterministic_hash().is_ok());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = EventEnvelope::from_slice(&bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(s in "\\{(\"[a-z_]{1,12}\":(null|true|1|-2|\"x\"|\\[\\]|\\{\\}),?){0,8}\\}") {
        if let Ok(e) = EventEnvelope::from_slice(s.as_bytes()) {
            let _ = e.deterministic_hash();
        }
    }
}

/// A payload of exactly `n` bytes: a JSON envelope whose data is an array of small
/// numbers (the costliest shape per byte to parse), padded with whitespace.
fn numbers_payload(n: usize) -> Vec<u8> {
    let mut p = br#"{"event_type":"big.v1","data":["#.to_vec();
    while p.len() + 4 < n {
        p.extend_from_slice(b"1,");
    }
    p.extend_from_slice(b"1]}");
    p.resize(n.max(p.len()), b' ');
    p
}

#[test]
fn a_payload_over_the_default_limit_is_refused_before_parsing() {
    let limit = eventonce::config::defaults::DEFAULT_MAX_PAYLOAD_BYTES;
    let at_limit = numbers_payload(limit);
    assert_eq!(at_limit.len(), limit);
    assert!(EventEnvelope::from_slice(&at_limit).is_ok());
    // 50 MB took seconds and a gigabyte of heap to parse; refused, it takes neither.
    let huge = numbers_payload(50_000_000);
    let started = std::time::Instant::now();
    let refused = EventEnvelope::from_slice(&huge);
    let took = started.elapsed();
    assert_eq!(
        refused,
        Err(EnvelopeError::TooLarge {
            size: huge.len(),
            limit
        })
    );
    assert!(took < std::time::Duration::from_millis(50), "{took:?}");
    let text = format!("{}", refused.expect_err("refused"));
    assert!(
        text.contains("50000000") && text.contains(&limit.to_string()),
        "{text}"
    );
}

#[test]
fn a_configured_payload_limit_applies_to_parsing() {
    let config = eventonce::IdempotencyConfig::builder("payload-limit")
        .max_payload_bytes(1_000)
        .build()
        .expect("config");
    assert_eq!(config.max_payload_bytes(), 1_000);
    let small = numbers_payload(1_000);
    assert!(config.parse_envelope(&small).is_ok());
    let big = numbers_payload(1_001);
    assert_eq!(
        config.parse_envelope(&big),
        Err(EnvelopeError::TooLarge {
            size: 1_001,
            limit: 1_000
        })
    );
    assert_eq!(
        EventEnvelope::from_slice_within(&big, 1_000),
        Err(EnvelopeError::TooLarge {
            size: 1_001,
            limit: 1_000
        })
    );
    let zero = eventonce::IdempotencyConfig::builder("payload-limit")
        .max_payload_bytes(0)
        .build();
    assert!(zero.is_err());
}
