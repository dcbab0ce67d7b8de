//! P10: hostile input. A seed draws event types of every length (from one byte to far
//! past what any store keys) and records of another kind planted at some events' keys,
//! under either key scheme, behind a store that refuses what a real one refuses: a key
//! longer than PostgreSQL's B-tree limit (`StoreError::Rejected`, as SQLSTATE 54000) and
//! a foreign record (`StoreError::InvalidData`, as Redis `WRONGTYPE`). Each event is
//! delivered two or three times, alone or in batches, to a guard that fails open with a
//! breaker of one to three failures. The property:
//!
//! - a refused event (its type over the scheme's bound, or its record foreign) is answered
//!   `InvalidEvent` every time and its handler never runs;
//! - every other event runs exactly once (`Processed`, then `Duplicate`);
//! - nothing runs `Unprotected`, and the circuit breaker never opens;
//! - no event the scheme accepts has a key the store refuses (the scheme's bound is
//!   within the stores' limits).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventonce::{
    async_trait, Claim, Completion, EventEnvelope, FailMode, Guard, GuardError, IdempotencyConfig,
    IdempotencyStore, KeyScheme, MemoryStore, Outcome, Record, StoreError,
};
use serde_json::json;

use crate::rng::Rng;

/// PostgreSQL's B-tree limit for a `text` key: 2,704 bytes of index entry, less its
/// 8-byte header and the value's 4-byte length.
const STORE_KEY_LIMIT: usize = 2_692;

/// A memory store that refuses what a real store refuses: keys over
/// [`STORE_KEY_LIMIT`], and keys where a record of another kind was planted.
struct Refusing {
    inner: MemoryStore,
    foreign: Mutex<HashSet<String>>,
    /// Keys the store refused for their length.
    too_long: Mutex<Vec<String>>,
}

impl Refusing {
    fn check(&self, key: &str) -> Result<(), StoreError> {
        if key.len() > STORE_KEY_LIMIT {
            self.too_long
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(key.chars().take(80).collect());
            return Err(StoreError::Rejected {
                message: format!("54000: index row requires {} bytes", key.len() + 12),
                source: None,
            });
        }
        let foreign = self
            .foreign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key);
        if foreign {
            return Err(StoreError::InvalidData {
                key: key.to_owned(),
                detail: "WRONGTYPE: a list is stored at this key".into(),
            });
        }
        Ok(())
    }

    fn check_all<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<(), StoreError> {
        keys.into_iter().try_for_each(|k| self.check(k))
    }
}

#[async_trait]
impl IdempotencyStore for Refusing {
    async fn try_claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.check(key)?;
        self.inner.try_claim(key, owner, lease).await
    }

    async fn complete(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.check(key)?;
        self.inner.complete(key, owner, ttl).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        self.check(key)?;
        self.inner.release(key, owner).await
    }

    async fn extend(&self, key: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.check(key)?;
        self.inner.extend(key, owner, lease).await
    }

    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.check(key)?;
        self.inner.get(key).await
    }

    /// One refused key fails the whole call, as one statement or one script does.
    async fn try_claim_many(
        &self,
        keys: &[String],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<Claim>, StoreError> {
        self.check_all(keys.iter().map(String::as_str))?;
        self.inner.try_claim_many(keys, owner, lease).await
    }

    async fn complete_many(&self, completions: &[Completion]) -> Result<Vec<bool>, StoreError> {
        self.check_all(completions.iter().map(|c| c.key.as_str()))?;
        self.inner.complete_many(completions).await
    }

    fn max_batch_chunk(&self) -> usize {
        // Small, so that batches span several chunks.
        4
    }
}

/// One event of the seed: its envelope, and whether its record is foreign.
struct Hostile {
    envelope: EventEnvelope,
    foreign: bool,
}

/// An event type of a length drawn over every scale: mostly short, often near the
/// schemes' bounds (200 and 2,000 bytes) and the store's limit, sometimes far past them.
fn event_type(rng: &mut Rng, n: usize) -> String {
    let len = match rng.below(6) {
        0 => rng.range(1, 40),
        1 => rng.range(190, 210),
        2 => rng.range(1_990, 2_010),
        3 => rng.range(2_600, 2_800),
        4 => rng.range(2_800, 100_000),
        _ => rng.range(1, 5_000),
    };
    let mut t = format!("h{n}.");
    while t.len() < len {
        t.push(char::from(b'a' + u8::try_from(rng.below(26)).unwrap_or(0)));
        if rng.chance(0.05) {
            t.push('.');
        }
    }
    t.truncate(len.max(t.find('.').map_or(1, |d| d + 1)));
    t
}

/// A seed's guard, its store and its events.
struct Setup {
    scheme: KeyScheme,
    store: Arc<Refusing>,
    guard: Guard,
    events: Vec<Hostile>,
}

fn setup(seed: u64, rng: &mut Rng) -> Setup {
    let scheme = if rng.chance(0.5) {
        KeyScheme::PythonV2
    } else {
        KeyScheme::Eventonce
    };
    let store = Arc::new(Refusing {
        inner: MemoryStore::new(),
        foreign: Mutex::new(HashSet::new()),
        too_long: Mutex::new(Vec::new()),
    });
    let failures = u32::try_from(rng.range(1, 4)).unwrap_or(1);
    let config = IdempotencyConfig::builder(format!("hostile-{seed}"))
        .key_scheme(scheme)
        .on_store_error(FailMode::Open)
        .circuit_breaker(failures, Duration::from_secs(60))
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    let guard = Guard::from_arc(store.clone(), config);
    let events: Vec<Hostile> = (0..rng.range(4, 12))
        .map(|n| Hostile {
            envelope: EventEnvelope::new(event_type(rng, n), json!({ "n": n }))
                .with_event_id(format!("{seed}-{n}")),
            foreign: rng.chance(0.2),
        })
        .collect();
    for e in events.iter().filter(|e| e.foreign) {
        if let Ok(key) = guard.key_for(&e.envelope) {
            store
                .foreign
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key);
        }
    }
    Setup {
        scheme,
        store,
        guard,
        events,
    }
}

/// Delivers every event two or three times, one by one or as one batch; each event's
/// answers and handler runs, and a violation each time the breaker was found open.
async fn deliver(
    rng: &mut Rng,
    s: &Setup,
    violations: &mut Vec<String>,
) -> (Vec<Vec<String>>, Vec<usize>) {
    let runs: Vec<AtomicUsize> = s.events.iter().map(|_| AtomicUsize::new(0)).collect();
    let mut answers: Vec<Vec<String>> = s.events.iter().map(|_| Vec::new()).collect();
    for delivery in 0..rng.range(2, 4) {
        if rng.chance(0.5) {
            for (i, e) in s.events.iter().enumerate() {
                let answer = s
                    .guard
                    .run(&e.envelope, async {
                        runs[i].fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                answers[i].push(shown(&answer));
            }
        } else {
            let batch: Vec<EventEnvelope> = s.events.iter().map(|e| e.envelope.clone()).collect();
            let results = s
                .guard
                .run_batch(&batch, |envelope| {
                    let i = batch.iter().position(|b| std::ptr::eq(b, envelope));
                    let runs = &runs;
                    async move {
                        if let Some(i) = i {
                            runs[i].fetch_add(1, Ordering::SeqCst);
                        }
                        Ok::<_, std::io::Error>(())
                    }
                })
                .await;
            for (i, answer) in results.iter().enumerate() {
                answers[i].push(shown(answer));
            }
        }
        if s.guard.circuit_open() {
            violations.push(format!(
                "P10 the circuit breaker opened after delivery {} with no outage",
                delivery + 1
            ));
        }
    }
    let runs = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
    (answers, runs)
}

/// The violations of P10 for `seed`, on a paused clock.
pub(crate) async fn check(seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed ^ 0x4057_11e5);
    let s = setup(seed, &mut rng);
    let mut violations = Vec::new();
    let (answers, runs) = deliver(&mut rng, &s, &mut violations).await;
    let scheme = s.scheme;
    for (i, e) in s.events.iter().enumerate() {
        let refused = e.foreign || s.guard.key_for(&e.envelope).is_err();
        let (ran, all) = (runs[i], &answers[i]);
        let what = format!(
            "P10 event {i} (type of {} bytes, {scheme}, {})",
            e.envelope.event_type.len(),
            if e.foreign {
                "foreign record"
            } else {
                "own key"
            }
        );
        if refused && (ran > 0 || !all.iter().all(|a| a == "InvalidEvent")) {
            violations.push(format!(
                "{what}: refused, yet ran {ran} times; answers {all:?}"
            ));
        }
        if !refused && (ran != 1 || all.first().map(String::as_str) != Some("Processed")) {
            violations.push(format!("{what}: ran {ran} times; answers {all:?}"));
        }
        if all.iter().any(|a| a == "Unprotected") {
            violations.push(format!("{what}: ran unprotected with no outage; {all:?}"));
        }
    }
    let too_long = s
        .store
        .too_long
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(key) = too_long.first() {
        violations.push(format!(
            "P10 the {scheme} scheme formed a key the store refuses for its length: {key}..."
        ));
    }
    violations
}

fn shown(answer: &Result<Outcome<()>, GuardError<std::io::Error>>) -> String {
    match answer {
        Ok(Outcome::Processed(())) => "Processed".into(),
        Ok(Outcome::Duplicate) => "Duplicate".into(),
        Ok(Outcome::Unprotected(())) => "Unprotected".into(),
        Err(GuardError::InvalidEvent(_)) => "InvalidEvent".into(),
        Err(other) => format!("{other}").chars().take(100).collect(),
    }
}
