//! `KeyScheme::PythonV2` against its oracle, CPython itself: random JSON events (nested
//! objects with unsorted and non-ASCII keys, characters outside the BMP, escapes, big
//! integers, `-0`, floats of every magnitude and spelling) are keyed by eventonce and by
//! one `python3` process that runs the decorator's steps with `json` and `hashlib` (fed
//! one event per line over stdin). Every mismatch is printed with its input before the
//! test fails.
//!
//! `python3` (or the interpreter named by `EVENTONCE_PYTHON`) must be on the PATH; the
//! test fails with a message saying so when it is not. `EVENTONCE_ORACLE_CASES` sets the
//! number of random events per generator (default 700).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use eventonce::{EventEnvelope, IdempotencyConfig, IdentityError, KeyScheme};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

const PREFIX: &str = "huleedu:idempotency:v2";
const SERVICE: &str = "essay-lifecycle-service";

/// The decorator's steps for one message (PYTHON_V2 facts 1, 2, 4, 5, 6), one per line.
const ORACLE: &str = r#"
import hashlib, json, sys
prefix, service = sys.argv[1], sys.argv[2]
out = sys.stdout
for line in sys.stdin.buffer:
    try:
        event = json.loads(line)
        event_id = event.get("event_id")
        event_type = event.get("event_type", "unknown")
        data = event.get("data")
        hash_input = {"event_id": event_id, "data": data} if event_id else data
        dumped = json.dumps(hash_input, sort_keys=True)
        digest = hashlib.sha256(dumped.encode("utf-8")).hexdigest()
        key = f"{prefix}:{service}:{event_type.replace('.', '_')}:{digest}"
        answer = {"key": key, "dumped": dumped}
    except Exception as e:
        answer = {"error": repr(e)}
    out.write(json.dumps(answer) + "\n")
    out.flush()
"#;

struct Python {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn interpreter() -> String {
    std::env::var("EVENTONCE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The one oracle process of this test binary.
fn python() -> &'static Mutex<Python> {
    static PYTHON: OnceLock<Mutex<Python>> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let exe = interpreter();
        let mut child = Command::new(&exe)
            .args(["-c", ORACLE, PREFIX, SERVICE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {exe:?} ({e}): the KeyScheme::PythonV2 oracle test needs \
                     CPython 3 as `python3` on the PATH (or EVENTONCE_PYTHON=/path/to/python3)"
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Mutex::new(Python {
            _child: child,
            stdin,
            stdout,
        })
    })
}

/// What CPython says for one event: its key and the JSON it hashed, or its exception.
fn cpython(event_text: &str) -> Result<(String, String), String> {
    assert!(!event_text.contains('\n'), "one event per line");
    let mut p = python()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let p = &mut *p;
    writeln!(p.stdin, "{event_text}").expect("write to python3");
    p.stdin.flush().expect("flush python3's stdin");
    let mut line = String::new();
    p.stdout
        .read_line(&mut line)
        .expect("read python3's answer");
    assert!(!line.is_empty(), "python3 exited (see its stderr above)");
    let answer: Value = serde_json::from_str(&line).expect("python3 answers JSON");
    match (&answer["key"], &answer["dumped"], &answer["error"]) {
        (Value::String(k), Value::String(d), _) => Ok((k.clone(), d.clone())),
        (_, _, Value::String(e)) => Err(e.clone()),
        _ => panic!("unexpected answer from python3: {line}"),
    }
}

/// What eventonce says for one event: its key and the JSON it hashed.
fn eventonce(event_text: &str) -> Result<(String, String), String> {
    let config = IdempotencyConfig::builder(SERVICE)
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("config");
    let envelope = EventEnvelope::from_slice(event_text.as_bytes()).map_err(|e| e.to_string())?;
    let key = config.event_key(&envelope).map_err(|e| e.to_string())?;
    // The text hashed, numbers as the payload spells them (`envelope.data` holds them as
    // 64-bit integers or f64s).
    let dumped = envelope.python_v2_hash_input().map_err(|e| e.to_string())?;
    Ok((key, dumped))
}

/// Compares both for every event; prints each mismatch with its input. Returns how many
/// events disagreed.
fn compare(events: &[String]) -> usize {
    let mut mismatches = 0;
    for text in events {
        let ours = eventonce(text);
        let theirs = cpython(text);
        if ours != theirs {
            mismatches += 1;
            eprintln!(
                "MISMATCH for input:\n  {text}\n  eventonce: {ours:?}\n  cpython:   {theirs:?}"
            );
        }
    }
    mismatches
}

fn cases() -> usize {
    std::env::var("EVENTONCE_ORACLE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(700)
}

/// `n` values of `strategy`, from a fresh random seed each run (no shrinking: every
/// mismatch is printed as generated).
fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::new(Config::default());
    (0..n)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .expect("strategy generates")
                .current()
        })
        .collect()
}

/// A JSON value as it is written: numbers as literal text, strings as their characters.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// Number literals: exact integers of any size, `-0`, floats of every magnitude in every
/// spelling JSON allows, the values whose printing differs between Python and others, and
/// random doubles as Rust writes them.
#[allow(clippy::too_many_lines, reason = "a table of cases")]
fn number() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        "0",
        "-0",
        "0.0",
        "-0.0",
        "-0e0",
        "0E-5",
        "1e16",
        "1e15",
        "1E16",
        "1e+16",
        "0.00001",
        "0.0001",
        "1E400",
        "-1E400",
        "1e-400",
        "-1e-400",
        "123456789.123456789",
        "1e2",
        "1.0",
        "100.0",
        "1e22",
        "1e23",
        "5e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "1.7976931348623158e308",
        "1.7976931348623159e308",
        "9007199254740993",
        "9007199254740993.0",
        "18446744073709551616",
        "-9223372036854775809",
        "12345678901234567890123456789012345678901234567890",
        "0.1",
        "0.30000000000000004",
        "4.35",
        "1234567890123456.7",
        "12345678901234567.0",
        "99999999999999999999.5",
        "1e99999999999999999999",
        "-1e-99999999999999999999",
    ])
    .prop_map(str::to_owned);
    let integer =
        (any::<bool>(), "0|[1-9][0-9]{0,45}").prop_map(
            |(neg, d)| {
                if neg {
                    format!("-{d}")
                } else {
                    d
                }
            },
        );
    let decimal = (
        any::<bool>(),
        "0|[1-9][0-9]{0,22}",
        prop::option::of("[0-9]{1,24}"),
        prop::option::of(("[eE]", "[+-]?", "[0-9]{1,3}")),
    )
        .prop_filter("a float literal", |(_, _, f, e)| f.is_some() || e.is_some())
        .prop_map(|(neg, int, frac, exp)| {
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            s.push_str(&int);
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            if let Some((e, sign, digits)) = exp {
                s.push_str(&e);
                s.push_str(&sign);
                s.push_str(&digits);
            }
            s
        });
    // Any finite double, written the shortest way Rust writes it (exponent or positional).
    let double = (any::<u64>(), any::<bool>()).prop_filter_map("finite", |(bits, exp_form)| {
        let x = f64::from_bits(bits);
        if !x.is_finite() {
            return None;
        }
        let s = if exp_form {
            format!("{x:e}")
        } else {
            format!("{x:?}")
        };
        Some(s)
    });
    // Doubles near the positional/exponent boundaries and near integers.
    let scaled = (-30i32..30, any::<u32>(), any::<bool>()).prop_map(|(p, m, neg)| {
        let x = f64::from(m) * 10f64.powi(p) / 4_294_967_296.0;
        let x = if neg { -x } else { x };
        format!("{x:e}")
    });
    prop_oneof![
        3 => special,
        2 => integer,
        3 => decimal,
        3 => double,
        2 => scaled,
    ]
}

/// Characters of every kind JSON and `ensure_ascii` treat differently.
fn character() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        1 => proptest::char::range('\u{0}', '\u{1f}'),
        1 => prop::sample::select(vec!['"', '\\', '/', '\u{7f}', '\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}', '\u{ffff}']),
        2 => proptest::char::range('\u{80}', '\u{7ff}'),
        1 => proptest::char::range('\u{800}', '\u{d7ff}'),
        1 => proptest::char::range('\u{e000}', '\u{ffff}'),
        2 => proptest::char::range('\u{10000}', '\u{10ffff}'),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(character(), 0..12).prop_map(|cs| cs.into_iter().collect())
}

fn json_tree() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        1 => Just(J::Null),
        1 => any::<bool>().prop_map(J::Bool),
        4 => number().prop_map(J::Num),
        3 => text().prop_map(J::Str),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            // Keys may repeat: json.loads and serde_json both keep the last value.
            prop::collection::vec((text(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// A tiny deterministic generator for the writing choices (escapes, whitespace).
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
        // No line breaks: the oracle reads one event per line.
        const WS: [&str; 4] = ["", " ", "\t", "  "];
        out.push_str(WS[(self.next() % 4) as usize]);
    }
}

/// Writes a string literal, escaping what JSON requires and, at random, other characters
/// too (`\uXXXX` in either case, surrogate pairs, `\/`).
fn write_str(s: &str, rng: &mut Lcg, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let roll = rng.next() % 4;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if roll < 2 => out.push_str("\\n"),
            '\t' if roll < 2 => out.push_str("\\t"),
            '\u{8}' if roll < 2 => out.push_str("\\b"),
            '\u{c}' if roll < 2 => out.push_str("\\f"),
            '\r' if roll < 2 => out.push_str("\\r"),
            '/' if roll == 0 => out.push_str("\\/"),
            c if (c as u32) < 0x20 || roll == 0 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    if rng.next().is_multiple_of(2) {
                        out.push_str(&format!("\\u{u:04x}"));
                    } else {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(v: &J, rng: &mut Lcg, out: &mut String) {
    rng.ws(out);
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(n),
        J::Str(s) => write_str(s, rng, out),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, rng, out);
            }
            rng.ws(out);
            out.push(']');
        }
        J::Obj(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                rng.ws(out);
                write_str(k, rng, out);
                rng.ws(out);
                out.push(':');
                write_json(v, rng, out);
            }
            rng.ws(out);
            out.push('}');
        }
    }
    rng.ws(out);
}

/// An event type the scheme accepts: dots, underscores, dashes, `%`, `~`, non-ASCII.
fn event_type() -> impl Strategy<Value = String> {
    "[a-z0-9._%~é😀-]{1,40}"
}

/// How the envelope carries its id: none, `null`, empty, or a string.
fn event_id() -> impl Strategy<Value = Option<Option<String>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(None)),
        1 => Just(Some(Some(String::new()))),
        5 => text().prop_map(|s| Some(Some(s))),
    ]
}

/// A whole event as a producer might have written it, fields in random order.
fn event_text(
    id: &Option<Option<String>>,
    event_type: &str,
    data: &J,
    extra: bool,
    seed: u64,
) -> String {
    let mut rng = Lcg(seed);
    let mut fields: Vec<String> = Vec::new();
    let mut s = String::new();
    write_str("event_type", &mut rng, &mut s);
    s.push(':');
    write_str(event_type, &mut rng, &mut s);
    fields.push(std::mem::take(&mut s));
    write_str("data", &mut rng, &mut s);
    s.push(':');
    write_json(data, &mut rng, &mut s);
    fields.push(std::mem::take(&mut s));
    if let Some(id) = id {
        write_str("event_id", &mut rng, &mut s);
        s.push(':');
        match id {
            Some(id) => write_str(id, &mut rng, &mut s),
            None => s.push_str("null"),
        }
        fields.push(std::mem::take(&mut s));
    }
    if extra {
        fields.push(r#""correlation_id":"c-1","metadata":{"trace":[1,2.50]}"#.to_owned());
    }
    for i in (1..fields.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        fields.swap(i, j);
    }
    format!("{{{}}}", fields.join(","))
}

fn check(what: &str, events: &[String]) {
    let mismatches = compare(events);
    eprintln!(
        "{what}: {} events compared with CPython, {mismatches} mismatch(es)",
        events.len()
    );
    assert_eq!(
        mismatches,
        0,
        "{mismatches} of {} {what} keyed differently from CPython (each printed above)",
        events.len()
    );
}

#[test]
fn random_events_get_the_decorators_keys() {
    let strategy = (
        event_id(),
        event_type(),
        json_tree(),
        any::<bool>(),
        any::<u64>(),
    );
    let events: Vec<String> = sample(strategy, cases())
        .into_iter()
        .filter_map(|(id, t, data, extra, seed)| {
            let text = event_text(&id, &t, &data, extra, seed);
            // The decorator fails on data null (it runs the handler unprotected, keying
            // nothing); eventonce refuses such events without an id. Key the others.
            let has_id = matches!(&id, Some(Some(s)) if !s.is_empty());
            (has_id || !matches!(data, J::Null)).then_some(text)
        })
        .collect();
    check("random events", &events);
}

#[test]
fn random_numbers_are_printed_as_cpython_prints_them() {
    let strategy = (prop::collection::vec(number(), 1..6), any::<u64>());
    let events: Vec<String> = sample(strategy, cases() * 2)
        .into_iter()
        .map(|(numbers, seed)| {
            let data = J::Obj(vec![
                ("n".into(), J::Num(numbers[0].clone())),
                (
                    "all".into(),
                    J::Arr(numbers.into_iter().map(J::Num).collect()),
                ),
            ]);
            event_text(&Some(Some("e-1".into())), "t.v1", &data, false, seed)
        })
        .collect();
    check("number events", &events);
}

#[test]
fn random_strings_and_keys_are_escaped_and_sorted_as_cpython_does() {
    let strategy = (
        prop::collection::vec((text(), text()), 1..8),
        text(),
        any::<u64>(),
    );
    let events: Vec<String> = sample(strategy, cases())
        .into_iter()
        .map(|(pairs, id, seed)| {
            let data = J::Obj(pairs.into_iter().map(|(k, v)| (k, J::Str(v))).collect());
            event_text(&Some(Some(id)), "t.v1", &data, false, seed)
        })
        .collect();
    check("string events", &events);
}

#[test]
fn chosen_events_get_the_decorators_keys() {
    let events = [
        r#"{"event_id":"e-1","event_type":"huleedu.essay.spellcheck.requested.v1","data":{"essay_id":"a1","n":3}}"#,
        r#"{"event_type":"huleedu.cj_assessment.completed.v1","data":{"b":1,"a":[1,2,{"d":null,"c":true}]}}"#,
        r#"{"event_id":"","event_type":"t","data":{"x":1}}"#,
        r#"{"event_id":null,"event_type":"t","data":[]}"#,
        r#"{"event_id":"e","event_type":"t","data":null}"#,
        r#"{"event_id":"e","event_type":"t"}"#,
        r#"{"event_type":"t","data":{"\u00e9":"😀","é":"x","\ue000":1,"😀":2,"":0}}"#,
        r#"{"event_type":"t","data":{"n":[1e16,0.00001,1E400,-1E400,123456789.123456789,-0,-0.0,1e2,0.0001]}}"#,
        r#"{"event_type":"t","data":{"big":123456789012345678901234567890,"neg":-98765432109876543210}}"#,
        r#"{"event_type":"t","data":"a\"b\\c\/d\b\f\n\r\t\u0000\u001f\u007f\u2028"}"#,
        r#"{"event_type":"t","data":{"dup":1,"dup":2}}"#,
        r#"{"event_type":"t","data":0}"#,
        r#"{"event_type":"t","data":false}"#,
        r#"{"event_type":"t","data":""}"#,
        r#"{"event_type":"a.b_c.d","data":{}}"#,
        r#"{"event_type":"ünï%~code","data":[[[]]]}"#,
        r#"{"event_id":"id with spaces and ü","event_type":"t","data":{"k":"v"}}"#,
    ];
    let events: Vec<String> = events.iter().map(|s| (*s).to_owned()).collect();
    check("chosen events", &events);
}

#[test]
fn event_types_that_would_leave_the_namespace_are_refused() {
    let config = IdempotencyConfig::builder(SERVICE)
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("config");
    for bad in [
        "orders:created",
        "orders.*",
        "a?b",
        "a[0]",
        "{tag}",
        "a\\b",
        "a b",
        "a\tb",
        "a\u{7}b",
        "a\u{a0}b",
    ] {
        let e = EventEnvelope::new(bad, serde_json::json!({"n": 1}));
        let err = config.event_key(&e).expect_err(bad);
        assert!(
            matches!(err, IdentityError::EventTypeOutsideNamespace { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("python-v2"), "{err}");
    }
}

#[test]
fn the_default_scheme_is_unchanged_and_differs() {
    let text = r#"{"event_id":"e-1","event_type":"a.b_c","data":{"n":1}}"#;
    let envelope = EventEnvelope::from_slice(text.as_bytes()).expect("envelope");
    let default = IdempotencyConfig::builder(SERVICE).build().expect("config");
    assert_eq!(default.key_scheme(), KeyScheme::Eventonce);
    let hash = envelope.deterministic_hash().expect("hash");
    assert_eq!(
        default.event_key(&envelope).as_deref(),
        Ok(format!("{PREFIX}:{SERVICE}:a_b%5Fc:{hash}").as_str())
    );
    let (python_key, _) = cpython(text).expect("cpython keys it");
    assert_ne!(default.event_key(&envelope).ok(), Some(python_key.clone()));
    let v2 = IdempotencyConfig::builder(SERVICE)
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("config");
    assert_eq!(v2.event_key(&envelope).ok(), Some(python_key));
}

#[test]
fn events_cpython_reads_but_eventonce_refuses_are_never_keyed() {
    // Documented as not covered: the decorator keys these, eventonce refuses to parse
    // them (so the Rust consumer processes none of them, and none twice).
    for text in [
        r#"{"event_id":7,"event_type":"t","data":{"n":1}}"#,
        r#"{"event_type":"t","data":{"n":NaN}}"#,
        r#"{"event_type":"t","data":{"n":Infinity}}"#,
        r#"{"event_type":"t","data":{"n":-Infinity}}"#,
        r#"{"event_type":"t","data":"\ud800"}"#,
        r#"{"event_type":"t","event_type":"t","data":1}"#,
        r#"{"data":{"n":1}}"#,
    ] {
        assert!(cpython(text).is_ok(), "CPython keys {text}");
        assert!(
            EventEnvelope::from_slice(text.as_bytes()).is_err(),
            "eventonce refuses {text}"
        );
    }
}
