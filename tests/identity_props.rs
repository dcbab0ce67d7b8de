//! Properties of event identity and keys.

use eventonce::{
    canonical_json, escape_event_type, unescape_event_type, EventEnvelope, IdempotencyConfig,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("\\PC{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A tiny deterministic generator for shuffles and whitespace.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn ws(&mut self, out: &mut String) {
        const WS: [&str; 5] = ["", " ", "\n", "\t", "  \r\n "];
        out.push_str(WS[(self.next() % 5) as usize]);
    }
}

/// Writes `v` as JSON with object keys in a shuffled order and random whitespace.
fn render(v: &Value, rng: &mut Lcg, out: &mut String) {
    rng.ws(out);
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, rng, out);
            }
            rng.ws(out);
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            for i in (1..entries.len()).rev() {
                let j = (rng.next() % (i as u64 + 1)) as usize;
                entries.swap(i, j);
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                rng.ws(out);
                out.push_str(&Value::String(k.clone()).to_string());
                rng.ws(out);
                out.push(':');
                render(v, rng, out);
            }
            rng.ws(out);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
    rng.ws(out);
}

fn envelope_text(event_id: Option<&str>, data: &Value, seed: u64) -> String {
    let mut rng = Lcg(seed);
    let mut fields = vec![
        ("\"event_type\"".to_owned(), "\"t.v1\"".to_owned()),
        ("\"data\"".to_owned(), {
            let mut s = String::new();
            render(data, &mut rng, &mut s);
            s
        }),
        ("\"source_service\"".to_owned(), format!("\"s{seed}\"")),
    ];
    if let Some(id) = event_id {
        fields.push((
            "\"event_id\"".to_owned(),
            Value::String(id.to_owned()).to_string(),
        ));
    }
    for i in (1..fields.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        fields.swap(i, j);
    }
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn hash_of(text: &str) -> String {
    EventEnvelope::from_slice(text.as_bytes())
        .expect("valid envelope")
        .deterministic_hash()
        .expect("identifiable")
}

/// A decimal number: its sign, its significant digits (no leading or trailing zero, up to
/// 60 of them: far beyond what u64 or f64 hold) and its exponent; value = ±digits × 10^exp.
fn decimal() -> impl Strategy<Value = (bool, String, i32)> {
    (any::<bool>(), "[1-9]([0-9]{0,58}[1-9])?", -90i32..90)
}

/// One JSON spelling of a decimal: `zeros` trailing zeros appended to the digits, `places`
/// digits after the point, and the exponent that makes up for both, written with `e` or
/// `E`, a `+` or not, or left out when zero.
fn spell(
    (negative, digits, exp): &(bool, String, i32),
    zeros: usize,
    places: usize,
    style: u8,
) -> String {
    let mantissa = format!("{digits}{}", "0".repeat(zeros));
    let mut out = String::new();
    if *negative {
        out.push('-');
    }
    if places == 0 {
        out.push_str(&mantissa);
    } else if places >= mantissa.len() {
        out.push_str("0.");
        out.push_str(&"0".repeat(places - mantissa.len()));
        out.push_str(&mantissa);
    } else {
        let (whole, fraction) = mantissa.split_at(mantissa.len() - places);
        out.push_str(whole);
        out.push('.');
        out.push_str(fraction);
    }
    let written = *exp as i64 + places as i64 - zeros as i64;
    match (written, style % 3) {
        (0, 0) => {}
        (e, 1) if e >= 0 => out.push_str(&format!("E+{e}")),
        (e, 2) => out.push_str(&format!("E{e}")),
        (e, _) => out.push_str(&format!("e{e}")),
    }
    out
}

fn number_event(number: &str) -> String {
    format!(r#"{{"event_type":"t.v1","data":{{"n":{number},"m":[{number}]}}}}"#)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_spelling_of_a_number_hashes_the_same(
        d in decimal(),
        spellings in proptest::collection::vec((0usize..5, 0usize..80, any::<u8>()), 1..4),
    ) {
        let first = hash_of(&number_event(&spell(&d, 0, 0, 0)));
        for (zeros, places, style) in spellings {
            let text = spell(&d, zeros, places, style);
            prop_assert_eq!(&hash_of(&number_event(&text)), &first, "{} vs {:?}", text, d);
        }
    }

    #[test]
    fn numbers_that_differ_in_any_digit_hash_differently(
        a in decimal(),
        b in decimal(),
        (za, pa, sa) in (0usize..3, 0usize..40, any::<u8>()),
        (zb, pb, sb) in (0usize..3, 0usize..40, any::<u8>()),
    ) {
        prop_assume!(a != b);
        let (ta, tb) = (spell(&a, za, pa, sa), spell(&b, zb, pb, sb));
        prop_assert_ne!(hash_of(&number_event(&ta)), hash_of(&number_event(&tb)), "{} vs {}", ta, tb);
    }

    #[test]
    fn a_number_one_unit_apart_in_its_last_digit_is_another_event(
        digits in "[1-9][0-9]{17,60}",
        exp in -40i32..40,
    ) {
        // Beyond 17 significant digits an f64 cannot tell these apart.
        let next = (digits.parse::<u128>().ok(), digits.len() <= 38);
        let bumped = match next {
            (Some(n), true) => (n + 1).to_string(),
            _ => format!("{}1", &digits[..digits.len() - 1]),
        };
        prop_assume!(bumped != digits);
        let a = number_event(&format!("{digits}e{exp}"));
        let b = number_event(&format!("{bumped}e{exp}"));
        prop_assert_ne!(hash_of(&a), hash_of(&b));
    }

    #[test]
    fn hash_ignores_key_order_and_whitespace(
        data in json_value(),
        id in proptest::option::of("[a-z0-9-]{1,16}"),
        s1 in any::<u64>(),
        s2 in any::<u64>(),
    ) {
        prop_assume!(id.is_some() || !data.is_null());
        let a = envelope_text(id.as_deref(), &data, s1);
        let b = envelope_text(id.as_deref(), &data, s2);
        prop_assert_eq!(hash_of(&a), hash_of(&b), "{} vs {}", a, b);
    }

    #[test]
    fn different_data_gives_different_hashes(a in json_value(), b in json_value()) {
        // Values compare by spelling (`1.0` != `1`); identity by value.
        prop_assume!(canonical_json(&a).ok() != canonical_json(&b).ok());
        prop_assume!(!a.is_null() && !b.is_null());
        let ha = EventEnvelope::new("t", a).deterministic_hash().expect("hash");
        let hb = EventEnvelope::new("t", b).deterministic_hash().expect("hash");
        prop_assert_ne!(ha, hb);
    }

    #[test]
    fn the_event_id_is_part_of_the_identity(data in json_value(), a in "[a-z]{1,8}", b in "[a-z]{1,8}") {
        prop_assume!(a != b);
        let ha = EventEnvelope::new("t", data.clone()).with_event_id(a).deterministic_hash();
        let hb = EventEnvelope::new("t", data).with_event_id(b).deterministic_hash();
        prop_assert_ne!(ha.expect("hash"), hb.expect("hash"));
    }

    #[test]
    fn an_event_without_an_id_never_has_the_hash_of_one_with_an_id(
        data in json_value(),
        id in "[a-z0-9-]{1,12}",
        form in 0usize..4,
        s1 in any::<u64>(),
        s2 in any::<u64>(),
    ) {
        // The id moved into the data: the Python v2 hash input, nested once, in an array,
        // and the same shape again under the same id.
        let shape = serde_json::json!({"data": data, "event_id": id});
        let (other_id, other_data) = match form {
            0 => (None, shape),
            1 => (None, serde_json::json!({"data": shape})),
            2 => (None, serde_json::json!([data, id])),
            _ => (Some(id.as_str()), shape),
        };
        let with_id = hash_of(&envelope_text(Some(&id), &data, s1));
        let other = hash_of(&envelope_text(other_id, &other_data, s2));
        prop_assert_ne!(&with_id, &other, "form {}", form);
        // An empty id is no id: the same event as the one without.
        if other_id.is_none() {
            prop_assert_eq!(other, hash_of(&envelope_text(Some(""), &other_data, s1)));
        }
    }

    #[test]
    fn no_event_type_can_leave_the_namespace(event_type in "\\PC{0,300}|.{0,300}", hash in ".{0,40}") {
        let config = IdempotencyConfig::builder("svc").build().expect("valid");
        let key = config.generate_key(&event_type, &hash);
        let rest = key.strip_prefix("huleedu:idempotency:v2:svc:").expect("inside the namespace");
        prop_assert_eq!(rest.matches(':').count(), 1, "{}", key);
        prop_assert!(key.is_ascii());
        for c in ['*', '?', '[', ']', '{', '}', '\\', ' '] {
            prop_assert!(!key.contains(c), "{:?} in {}", c, key);
        }
        prop_assert!(!key.chars().any(|c| c.is_control() || c.is_whitespace()));
        let segment = rest.split(':').next().unwrap_or_default();
        prop_assert!(segment.len() <= 200);
    }

    #[test]
    fn distinct_event_types_get_distinct_keys(a in "\\PC{0,260}", b in "\\PC{0,260}") {
        prop_assume!(a != b);
        let config = IdempotencyConfig::builder("svc").build().expect("valid");
        prop_assert_ne!(config.generate_key(&a, "h"), config.generate_key(&b, "h"));
    }

    #[test]
    fn dotted_and_underscored_twins_get_distinct_keys(parts in proptest::collection::vec("[a-z]{1,5}", 2..5)) {
        let config = IdempotencyConfig::builder("svc").build().expect("valid");
        prop_assert_ne!(
            config.generate_key(&parts.join("."), "h"),
            config.generate_key(&parts.join("_"), "h")
        );
    }

    #[test]
    fn escaping_is_reversible_unless_shortened(event_type in "\\PC{0,60}|.{0,60}") {
        let escaped = escape_event_type(&event_type);
        if escaped.contains('~') {
            prop_assert_eq!(unescape_event_type(&escaped), None);
        } else {
            prop_assert_eq!(unescape_event_type(&escaped), Some(event_type));
        }
    }
}

#[test]
fn a_number_hashes_the_same_however_it_is_spelled() {
    // Found by fuzzing: without correctly rounded float parsing, `19e33` and `1.9e34` (the
    // same number, as another serializer writes it) parsed to different doubles.
    for (a, b) in [
        ("-0", "0"),
        ("-0.0", "0.0"),
        ("0", "0.0"),
        ("100", "1e2"),
        ("19e33", "1.9e34"),
        ("0.1e1", "1.0"),
        ("2.5E-3", "0.0025"),
        ("1e22", "1e+22"),
    ] {
        let ha = hash_of(&format!(r#"{{"event_type":"t","data":{{"n":{a}}}}}"#));
        let hb = hash_of(&format!(r#"{{"event_type":"t","data":{{"n":{b}}}}}"#));
        assert_eq!(ha, hb, "{a} vs {b}");
    }
}

/// Runs `events` in order through one guard on one memory store, each with a handler that
/// counts its runs; returns the runs per event and each event's key.
async fn runs_through_one_guard(events: &[EventEnvelope]) -> (Vec<usize>, Vec<String>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let guard = eventonce::Guard::new(
        eventonce::MemoryStore::new(),
        IdempotencyConfig::builder("orders")
            .build()
            .expect("config"),
    );
    let mut runs = Vec::new();
    let mut keys = Vec::new();
    for event in events {
        let count = AtomicUsize::new(0);
        let outcome = guard
            .run(event, async {
                count.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            })
            .await;
        println!("{:?}: {outcome:?}", event.event_id);
        runs.push(count.load(Ordering::SeqCst));
        keys.push(guard.key_for(event).expect("key"));
    }
    (runs, keys)
}

#[tokio::test]
async fn an_event_without_an_id_cannot_take_the_key_of_one_with_an_id() {
    // A: an event with an id. B: no id, and data shaped like A's whole hash input.
    let a = EventEnvelope::from_slice(
        br#"{"event_type":"orders.replayed.v1","event_id":"X","data":{"order":7}}"#,
    )
    .expect("A");
    let b = EventEnvelope::from_slice(
        br#"{"event_type":"orders.replayed.v1","data":{"data":{"order":7},"event_id":"X"}}"#,
    )
    .expect("B");
    let (runs, keys) = runs_through_one_guard(&[a, b]).await;
    println!("keys: {keys:?}");
    assert_ne!(keys[0], keys[1], "A and B share a key");
    assert_eq!(runs, [1, 1], "handler runs of A and B");
}
