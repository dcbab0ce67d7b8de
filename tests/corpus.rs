//! The bad-input corpus under `tests/corpus/`: every file has its expected outcome in
//! `tests/corpus/EXPECTED`. Nothing panics, nothing is skipped silently: a file either
//! fails to parse with the expected `EnvelopeError`, or is refused by the guard as
//! unidentifiable, or is processed exactly once.

use std::path::Path;

use eventonce::{
    EnvelopeError, EventEnvelope, Guard, GuardError, IdempotencyConfig, MemoryStore, Outcome,
};

fn variant(err: &EnvelopeError) -> &'static str {
    match err {
        EnvelopeError::Empty => "Empty",
        EnvelopeError::NotUtf8 { .. } => "NotUtf8",
        EnvelopeError::InvalidJson { .. } => "InvalidJson",
        EnvelopeError::NotAnObject { .. } => "NotAnObject",
        EnvelopeError::MissingField { .. } => "MissingField",
        EnvelopeError::WrongType { .. } => "WrongType",
        EnvelopeError::EmptyField { .. } => "EmptyField",
        EnvelopeError::Malformed { .. } => "Malformed",
        EnvelopeError::TooLarge { .. } => "TooLarge",
        _ => "other",
    }
}

fn load(dir: &Path, name: &str) -> Vec<u8> {
    if name == "huge-10mb.recipe" {
        let mut bytes =
            br#"{"event_type":"bulk.import.v1","event_id":"huge-1","data":{"blob":""#.to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
        bytes.extend_from_slice(br#""}}"#);
        return bytes;
    }
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test]
async fn every_corpus_file_has_its_expected_outcome() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let manifest = std::fs::read_to_string(dir.join("EXPECTED")).expect("EXPECTED");
    let guard = Guard::new(
        MemoryStore::new(),
        IdempotencyConfig::builder("corpus")
            .build()
            .expect("config"),
    );
    let mut checked = 0;
    let mut listed = std::collections::BTreeSet::new();
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, expected) = line.split_once('\t').expect("file<TAB>outcome");
        listed.insert(name.to_owned());
        let bytes = load(&dir, name);
        let parsed = std::panic::catch_unwind(|| EventEnvelope::from_slice(&bytes))
            .unwrap_or_else(|_| panic!("{name}: from_slice panicked"));
        match (expected, parsed) {
            (expected, Err(err)) => {
                assert_eq!(
                    expected,
                    format!("error:{}", variant(&err)),
                    "{name}: {err}"
                );
                assert!(!err.to_string().is_empty());
            }
            ("ok", Ok(envelope)) => {
                let first = guard.run(&envelope, async { Ok::<_, String>(()) }).await;
                assert_eq!(first.expect(name), Outcome::Processed(()), "{name}");
                let again = guard.run(&envelope, async { Ok::<_, String>(()) }).await;
                assert_eq!(again.expect(name), Outcome::Duplicate, "{name}");
                let key = guard.key_for(&envelope).expect("key");
                assert!(
                    key.starts_with("huleedu:idempotency:v2:corpus:"),
                    "{name}: {key}"
                );
                assert!(key.len() < 300, "{name}: key of {} bytes", key.len());
            }
            ("unidentifiable", Ok(envelope)) => {
                let r = guard.run(&envelope, async { Ok::<_, String>(()) }).await;
                assert!(
                    matches!(r, Err(GuardError::InvalidEvent(_))),
                    "{name}: {r:?}"
                );
            }
            (expected, Ok(envelope)) => panic!("{name}: expected {expected}, parsed {envelope:?}"),
        }
        checked += 1;
    }
    // Every file of the corpus is listed, so none is silently left out.
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(
            name == "EXPECTED" || listed.contains(&name),
            "{name} has no expected outcome"
        );
    }
    assert!(checked >= 35, "{checked}");
}
