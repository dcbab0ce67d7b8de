//! The identity model: generated envelopes built to collide, and a property that the
//! default scheme keys events by what they are.
//!
//! Each seed draws a few events, each an optional id and optional data (a JSON tree whose
//! object keys come from a small set, `data` and `event_id` among them, and whose numbers
//! come from a small pool, some differing only past an `f64`'s 17 digits). Then it adds
//! the events most likely to be confused with those: an id-less event whose data is
//! another event's `{"data": D, "event_id": X}` (the Python v2 decorator's hash input),
//! the same nested one level deeper or in an array, a second event with the same id and
//! that shape, and deliveries of the same events again. Every event is written out as a
//! payload in its own way: object keys shuffled, whitespace, numbers spelled in another
//! form of the same value (`100`, `1e2`, `100.0`, `1000e-1`), a missing id as absent,
//! `null` or `""`.
//!
//! What an event is, the model knows without eventonce: its id (empty: none) and its data
//! as a tree with exact decimal numbers. Properties, on the memory store:
//!
//! - PK1 two different events never share a key (and the second is never a duplicate);
//! - PK2 the same event always gets the same key, however its payload is written;
//! - PK3 through one guard, each distinct event's handler runs exactly once;
//! - PK4 with the id as the key and the data as the payload fingerprint (under
//!   `IdentityRule::EventId`, and as an `Identity` with a fingerprint), a delivery of an
//!   unchanged event is never answered `Conflict`;
//! - PK5 a delivery with a known id and changed data is answered `Conflict`: never
//!   `Duplicate`, and its handler never runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use eventonce::{
    EventEnvelope, Guard, GuardError, IdempotencyConfig, Identity, IdentityRule, MemoryStore,
    Outcome,
};

use crate::rng::Rng;
use crate::world::{Report, Stats};
use crate::Env;

/// A decimal: `±digits × 10^exp`, `digits` without leading or trailing zeros ("" is 0).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Dec {
    negative: bool,
    digits: String,
    exp: i32,
}

/// JSON as the model sees it: objects by key, numbers by exact value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum J {
    Null,
    Bool(bool),
    Num(Dec),
    Str(String),
    Arr(Vec<J>),
    Obj(BTreeMap<String, J>),
}

/// An event: its id (`None`: none, however the payload says so) and its data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    id: Option<String>,
    data: J,
}

impl Event {
    /// Whether the default scheme can identify it (an id or non-null data).
    fn identifiable(&self) -> bool {
        self.id.is_some() || self.data != J::Null
    }
}

const KEYS: [&str; 6] = ["data", "event_id", "a", "n", "", "b"];
const IDS: [&str; 4] = ["X", "Y", "e-1", "data"];

fn number_pool(rng: &mut Rng) -> Vec<Dec> {
    let mut pool = vec![
        Dec {
            negative: false,
            digits: "1".into(),
            exp: 2,
        },
        Dec {
            negative: false,
            digits: "15".into(),
            exp: -1,
        },
        Dec {
            negative: false,
            digits: String::new(),
            exp: 0,
        },
        Dec {
            negative: true,
            digits: "7".into(),
            exp: 0,
        },
    ];
    // Two numbers one unit apart in their 20th digit: one f64.
    let long: String = (0..19)
        .map(|_| char::from(b'1' + rng.below(9) as u8))
        .collect();
    pool.push(Dec {
        negative: false,
        digits: format!("{long}1"),
        exp: -10,
    });
    pool.push(Dec {
        negative: false,
        digits: format!("{long}2"),
        exp: -10,
    });
    pool
}

fn tree(rng: &mut Rng, pool: &[Dec], depth: usize) -> J {
    match rng.below(if depth >= 3 { 4 } else { 7 }) {
        0 => J::Null,
        1 => J::Bool(rng.chance(0.5)),
        2 => J::Num(pool[rng.below(pool.len())].clone()),
        3 => J::Str(IDS[rng.below(IDS.len())].to_owned()),
        4 => J::Arr(
            (0..rng.below(3))
                .map(|_| tree(rng, pool, depth + 1))
                .collect(),
        ),
        _ => J::Obj(
            (0..rng.range(1, 3))
                .map(|_| {
                    (
                        KEYS[rng.below(KEYS.len())].to_owned(),
                        tree(rng, pool, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// `{"data": d, "event_id": id}`: the Python v2 decorator's hash input as data.
fn wrapped(id: &str, d: &J) -> J {
    J::Obj(BTreeMap::from([
        ("data".to_owned(), d.clone()),
        ("event_id".to_owned(), J::Str(id.to_owned())),
    ]))
}

/// The seed's events: drawn ones, then those built to collide with them.
fn events(rng: &mut Rng) -> Vec<Event> {
    let pool = number_pool(rng);
    let mut events: Vec<Event> = (0..rng.range(2, 5))
        .map(|_| Event {
            id: rng
                .chance(0.6)
                .then(|| IDS[rng.below(IDS.len())].to_owned()),
            data: if rng.chance(0.1) {
                J::Null
            } else {
                tree(rng, &pool, 0)
            },
        })
        .collect();
    let drawn = events.clone();
    for e in &drawn {
        let Some(id) = &e.id else { continue };
        let shape = wrapped(id, &e.data);
        events.push(Event {
            id: None,
            data: shape.clone(),
        });
        match rng.below(4) {
            0 => events.push(Event {
                id: None,
                data: J::Obj(BTreeMap::from([("data".to_owned(), shape)])),
            }),
            1 => events.push(Event {
                id: None,
                data: J::Arr(vec![e.data.clone(), J::Str(id.clone())]),
            }),
            2 => events.push(Event {
                id: Some(id.clone()),
                data: shape,
            }),
            _ => events.push(Event {
                id: None,
                data: e.data.clone(),
            }),
        }
    }
    // The same events again, written otherwise.
    for _ in 0..rng.range(1, 3) {
        let again = events[rng.below(events.len())].clone();
        events.push(again);
    }
    events.retain(Event::identifiable);
    events
}

/// One spelling of `d`: its digits with `zeros` more zeros, `places` of them after the
/// point, and the exponent that makes up for both (left out when zero).
fn spell(d: &Dec, rng: &mut Rng) -> String {
    if d.digits.is_empty() {
        const ZEROS: [&str; 6] = ["0", "-0", "0.0", "-0.00", "0e7", "0E-2"];
        return ZEROS[rng.below(ZEROS.len())].to_owned();
    }
    let zeros = rng.below(3);
    let mantissa = format!("{}{}", d.digits, "0".repeat(zeros));
    let places = rng.below(mantissa.len() + 2);
    let mut out = String::new();
    if d.negative {
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
    let exp = i64::from(d.exp) + places as i64 - zeros as i64;
    if exp != 0 || rng.chance(0.2) {
        let _ = write!(out, "{}{exp}", if rng.chance(0.5) { "e" } else { "E" });
    }
    out
}

fn ws(rng: &mut Rng, out: &mut String) {
    const WS: [&str; 4] = ["", " ", "\n", "\t "];
    out.push_str(WS[rng.below(WS.len())]);
}

fn render(j: &J, rng: &mut Rng, out: &mut String) {
    ws(rng, out);
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(d) => out.push_str(&spell(d, rng)),
        J::Str(s) => out.push_str(&serde_json::Value::from(s.as_str()).to_string()),
        J::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, rng, out);
            }
            out.push(']');
        }
        J::Obj(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            for i in (1..entries.len()).rev() {
                entries.swap(i, rng.below(i + 1));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                out.push(':');
                render(v, rng, out);
            }
            out.push('}');
        }
    }
    ws(rng, out);
}

/// The payload of `e`, written in a way of its own.
fn payload(e: &Event, rng: &mut Rng) -> String {
    let mut fields = vec![r#""event_type":"orders.replayed.v1""#.to_owned()];
    match &e.id {
        Some(id) => fields.push(format!(
            r#""event_id":{}"#,
            serde_json::Value::from(id.as_str())
        )),
        None => match rng.below(3) {
            0 => {}
            1 => fields.push(r#""event_id":null"#.to_owned()),
            _ => fields.push(r#""event_id":"""#.to_owned()),
        },
    }
    if e.data != J::Null || rng.chance(0.5) {
        let mut data = String::from(r#""data":"#);
        render(&e.data, rng, &mut data);
        fields.push(data);
    }
    for i in (1..fields.len()).rev() {
        fields.swap(i, rng.below(i + 1));
    }
    format!("{{{}}}", fields.join(","))
}

/// One seed: the events, their keys, and one guard's answers.
async fn seed(seed: u64) -> Report {
    let mut rng = Rng::new(seed ^ 0x1D_E7_17_1E);
    let events = events(&mut rng);
    let guard = Guard::new(
        MemoryStore::new(),
        IdempotencyConfig::builder("sim").build().expect("config"),
    );
    let mut violations = Vec::new();
    let mut seen: Vec<(Event, String, String)> = Vec::new();
    let mut runs: BTreeMap<Event, usize> = BTreeMap::new();
    for e in &events {
        let text = payload(e, &mut rng);
        let envelope = match EventEnvelope::from_slice(text.as_bytes()) {
            Ok(envelope) => envelope,
            Err(err) => {
                violations.push(format!("PK2 payload not read: {err}: {text}"));
                continue;
            }
        };
        let key = match guard.key_for(&envelope) {
            Ok(key) => key,
            Err(err) => {
                violations.push(format!("PK2 no key: {err}: {text}"));
                continue;
            }
        };
        for (other, other_key, other_text) in &seen {
            if other != e && *other_key == key {
                violations.push(format!(
                    "PK1 two events share key {key}: {other_text} and {text}"
                ));
            } else if other == e && *other_key != key {
                violations.push(format!(
                    "PK2 one event, two keys ({other_key}, {key}): {other_text} and {text}"
                ));
            }
        }
        let ran = AtomicUsize::new(0);
        let answer = guard
            .run(&envelope, async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            })
            .await;
        *runs.entry(e.clone()).or_default() += ran.load(Ordering::SeqCst);
        if matches!(answer, Ok(Outcome::Duplicate)) && runs.get(e) == Some(&0) {
            violations.push(format!("PK3 answered Duplicate, never ran: {text}"));
        }
        seen.push((e.clone(), key, text));
    }
    for (e, n) in &runs {
        if *n != 1 {
            violations.push(format!("PK3 {e:?} ran {n} times"));
        }
    }
    fingerprinted(&events, &mut rng, &mut violations).await;
    violations.dedup();
    Report {
        seed,
        violations,
        stats: Stats {
            deliveries: seen.len() as u64,
            runs: runs.values().sum::<usize>() as u64,
            ..Stats::default()
        },
        plan: String::new(),
        trace: Vec::new(),
    }
}

/// The model's own canonical text of `j`: what "the same data" means, without eventonce.
fn canon(j: &J) -> String {
    match j {
        J::Null => "n".into(),
        J::Bool(b) => format!("b{b}"),
        J::Num(d) => format!(
            "d{}{}e{}",
            if d.negative && !d.digits.is_empty() {
                "-"
            } else {
                ""
            },
            d.digits,
            if d.digits.is_empty() { 0 } else { d.exp }
        ),
        J::Str(s) => format!("s{}:{s}", s.len()),
        J::Arr(items) => format!(
            "[{}]",
            items.iter().map(canon).collect::<Vec<_>>().join(",")
        ),
        J::Obj(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}:{k}={}", k.len(), canon(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// PK4 and PK5: the events with an id, delivered in order through a guard keyed by the id
/// with the data as fingerprint, once as envelopes under `IdentityRule::EventId` and once
/// as `Identity`s fingerprinted by the model's canonical text of the data.
async fn fingerprinted(events: &[Event], rng: &mut Rng, violations: &mut Vec<String>) {
    let by_id = Guard::new(
        MemoryStore::new(),
        IdempotencyConfig::builder("sim")
            .identity_rule(IdentityRule::EventId)
            .build()
            .expect("config"),
    );
    let identities = Guard::new(
        MemoryStore::new(),
        IdempotencyConfig::builder("sim").build().expect("config"),
    );
    let mut first: BTreeMap<String, J> = BTreeMap::new();
    for e in events {
        let Some(id) = &e.id else { continue };
        let text = payload(e, rng);
        let Ok(envelope) = EventEnvelope::from_slice(text.as_bytes()) else {
            continue;
        };
        let identity =
            Identity::new("orders.replayed.v1", id).with_fingerprint(canon(&e.data).as_bytes());
        let expected = first.get(id).map(|d| *d == e.data);
        let by_rule = run_counted(&by_id, &envelope).await;
        let by_identity = run_counted(&identities, &identity).await;
        for (how, (answer, ran)) in [("EventId rule", by_rule), ("Identity", by_identity)] {
            let verdict = match (expected, &answer) {
                (None, Ok(Outcome::Processed(()))) if ran == 1 => None,
                (Some(true), Ok(Outcome::Duplicate)) if ran == 0 => None,
                (Some(false), Err(GuardError::Conflict { .. })) if ran == 0 => None,
                (Some(true), _) => Some("PK4 an unchanged event"),
                (Some(false), _) => Some("PK5 a changed event"),
                (None, _) => Some("PK4 a new event"),
            };
            if let Some(what) = verdict {
                violations.push(format!(
                    "{what} ({how}) answered {answer:?} with {ran} handler runs: {text}"
                ));
            }
        }
        first.entry(id.clone()).or_insert_with(|| e.data.clone());
    }
}

/// A run whose handler counts its runs: the answer and the count.
async fn run_counted<I: eventonce::Identify>(
    guard: &Guard,
    event: &I,
) -> (Result<Outcome<()>, GuardError<String>>, usize) {
    let ran = AtomicUsize::new(0);
    let answer = guard
        .run(event, async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        })
        .await;
    (answer, ran.load(Ordering::SeqCst))
}

/// The identity model over the memory seeds' range (`SIM_SEEDS`, `SIM_FIRST`, `SIM_SEED`).
pub(crate) fn run(env: &Env) -> (bool, String) {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let reports: Vec<Report> = env
        .seeds(env.seeds)
        .into_iter()
        .map(|s| runtime.block_on(seed(s)))
        .collect();
    let failing: Vec<&Report> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    let mut out = String::new();
    for r in failing.iter().take(3) {
        let _ = writeln!(out, "sim[identity]: seed {} FAILED:", r.seed);
        for v in r.violations.iter().take(5) {
            let _ = writeln!(out, "  {v}");
        }
        let _ = writeln!(
            out,
            "  replay: SIM_SEED={} SIM_STORE=identity make sim",
            r.seed
        );
    }
    let events: u64 = reports.iter().map(|r| r.stats.deliveries).sum();
    let runs: u64 = reports.iter().map(|r| r.stats.runs).sum();
    let _ = writeln!(
        out,
        "sim[identity]: {} seeds, {events} payloads, {runs} handler runs; {} failed, in {:.1} s",
        reports.len(),
        failing.len(),
        started.elapsed().as_secs_f64()
    );
    (failing.is_empty(), out)
}
