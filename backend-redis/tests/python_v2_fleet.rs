//! A mixed Python/Rust fleet on one Redis processes nothing twice: the Python "idempotency
//! v2" decorator, played by `scripts/python_v2_decorator.py` (CPython's `json` and
//! `hashlib`, `redis-py`'s `SET key value NX EX ttl`), and a `Guard` with
//! `KeyScheme::PythonV2` take events from each other.
//!
//! The script runs in a virtualenv with `redis` installed (`python-v2-venv` in the cargo
//! target directory, or `EVENTONCE_PYTHON_V2_VENV`), created here on first use and reused
//! after (`make python-v2-venv` creates the same one). Kafka-free: the events are fed to
//! both sides directly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use eventonce_core::{EventEnvelope, Guard, IdempotencyConfig, KeyScheme, Outcome, RecordState};
use eventonce_redis::RedisStore;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const SERVICE: &str = "essay-lifecycle-service";
/// The redis-py versions the script is run with.
const REDIS_PY: &str = "redis>=5,<8";

fn url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the crate")
        .to_path_buf()
}

/// `<target dir>/python-v2-venv`: the test binary is `<target dir>/<profile>/deps/<name>`.
fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EVENTONCE_PYTHON_V2_VENV") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors().nth(3).map_or_else(
        || workspace().join("target").join("python-v2-venv"),
        |target| target.join("python-v2-venv"),
    )
}

fn run(what: &str, command: &mut Command) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The virtualenv's python, with `redis` importable: created and installed on first use.
fn python() -> PathBuf {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let host = std::env::var("EVENTONCE_PYTHON").unwrap_or_else(|_| "python3".into());
        run(
            &format!(
                "`{host} -m venv {}` (the mixed-fleet test needs CPython 3 with venv)",
                venv.display()
            ),
            Command::new(&host).args(["-m", "venv"]).arg(&venv),
        );
    }
    let has_redis = Command::new(&python)
        .args(["-c", "import redis"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_redis {
        run(
            &format!(
                "`pip install '{REDIS_PY}'` into {} (PyPI must be reachable, or install redis-py \
                 there yourself, or point EVENTONCE_PYTHON_V2_VENV at a virtualenv that has it)",
                venv.display()
            ),
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                REDIS_PY,
            ]),
        );
    }
    python
}

/// What the decorator did with one message.
#[derive(Debug)]
struct Answer {
    key: String,
    outcome: String,
    ttl: u64,
}

/// Runs the decorator over `events` (message values), one process for all of them.
async fn decorator(python: &Path, prefix: &str, events: &[String]) -> Vec<Answer> {
    let mut child = tokio::process::Command::new(python)
        .arg(workspace().join("scripts").join("python_v2_decorator.py"))
        .args(["--redis", &url(), "--prefix", prefix, "--service", SERVICE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the decorator script starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = events.join("\n") + "\n";
    let writer = tokio::spawn(async move {
        stdin
            .write_all(input.as_bytes())
            .await
            .expect("feed the script");
    });
    let out = child.wait_with_output().await.expect("the script ends");
    writer.await.expect("fed");
    assert!(
        out.status.success(),
        "the decorator script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Answer> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("the script answers JSON");
            Answer {
                key: v["key"].as_str().expect("a key").to_owned(),
                outcome: v["outcome"].as_str().expect("an outcome").to_owned(),
                ttl: v["ttl"].as_u64().expect("a ttl"),
            }
        })
        .collect();
    assert_eq!(answers.len(), events.len(), "one answer per message");
    answers
}

fn unique_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("eventonce:python-v2-fleet:{}-{nanos:x}", std::process::id())
}

/// `n` message values of the shapes a fleet sees: with and without ids, event types with
/// `_` and tiers of their own, unsorted and non-ASCII keys, characters outside the BMP,
/// escapes, big integers and floats spelled as producers spell them.
fn events(batch: &str, n: usize) -> Vec<String> {
    const TYPES: [&str; 4] = [
        "huleedu.cj_assessment.completed.v1",
        "huleedu.essay.spellcheck.requested.v1",
        "huleedu.result_aggregator.batch.completed.v1",
        "orders.created.v1",
    ];
    (0..n)
        .map(|i| {
            let event_type = TYPES[i % TYPES.len()];
            let data = format!(
                r#"{{"zeta": {i}, "Ärger": "naïve 😀 \u00e9\n\"q\"", "amount": 12.50, "big": 1234567890123456789012345678{i}, "tiny": 0.00001, "huge": 1e16, "inf": 1E400, "neg0": -0, "nested": {{"b": [true, null, -0.0], "a": {{"é": "{batch}-{i}"}}}}}}"#
            );
            match i % 3 {
                0 => format!(
                    r#"{{"event_id": "{batch}-{i}", "event_type": "{event_type}", "data": {data}, "correlation_id": "c-{i}"}}"#
                ),
                1 => format!(r#"{{"event_type": "{event_type}", "data": {data}}}"#),
                _ => format!(
                    r#"{{"data": {data}, "event_id": "", "source_service": "s", "event_type": "{event_type}"}}"#
                ),
            }
        })
        .collect()
}

/// Runs `event` through `guard` with a handler that counts its runs.
async fn run_counted(guard: &Guard, event: &str, runs: &Arc<AtomicUsize>) -> Outcome<()> {
    let envelope = EventEnvelope::from_slice(event.as_bytes()).expect("envelope");
    let runs = Arc::clone(runs);
    guard
        .run(&envelope, async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await
        .expect("run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn python_and_rust_consumers_on_one_redis_process_nothing_twice() {
    const N: usize = 24;
    let python = python();
    let prefix = unique_prefix();
    let store = RedisStore::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("this test needs Redis at {}: {e}", url()));
    let config = IdempotencyConfig::builder(SERVICE)
        .key_prefix(&prefix)
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("config");
    let guard = Guard::new(store.clone(), config.clone());

    // 1. The decorator processes N events first; the guard then finds every one of them
    //    processed, under the very key the decorator wrote.
    let by_python = events("py", N);
    let answers = decorator(&python, &prefix, &by_python).await;
    let runs = Arc::new(AtomicUsize::new(0));
    for (event, answer) in by_python.iter().zip(&answers) {
        assert_eq!(answer.outcome, "processed", "{event}");
        let envelope = EventEnvelope::from_slice(event.as_bytes()).expect("envelope");
        assert_eq!(
            guard.key_for(&envelope).expect("key"),
            answer.key,
            "{event}"
        );
        assert_eq!(
            run_counted(&guard, event, &runs).await,
            Outcome::Duplicate,
            "{event}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a handler ran twice");
    println!("{N} events processed by the decorator: {N} duplicates for the guard");

    // The same events keyed with eventonce's default scheme would all run again.
    let default = Guard::new(
        store.clone(),
        IdempotencyConfig::builder(SERVICE)
            .key_prefix(&prefix)
            .build()
            .expect("config"),
    );
    assert_eq!(
        run_counted(&default, &by_python[0], &runs).await,
        Outcome::Processed(())
    );

    // 2. The guard processes N other events first; the decorator's SET NX is refused for
    //    every one (it sees them as processed) and the guard's records stay as written.
    let by_rust = events("rs", N);
    let runs = Arc::new(AtomicUsize::new(0));
    for event in &by_rust {
        assert_eq!(
            run_counted(&guard, event, &runs).await,
            Outcome::Processed(()),
            "{event}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), N);
    let answers = decorator(&python, &prefix, &by_rust).await;
    for (event, answer) in by_rust.iter().zip(&answers) {
        assert_eq!(answer.outcome, "duplicate", "{event}");
        let envelope = EventEnvelope::from_slice(event.as_bytes()).expect("envelope");
        assert_eq!(guard.key_for(&envelope).expect("key"), answer.key);
        let record = eventonce_core::IdempotencyStore::get(&store, &answer.key)
            .await
            .expect("get")
            .expect("the guard's record");
        assert_eq!(record.state, RecordState::Completed);
        assert!(record.owner.is_some(), "still the guard's own record");
        // Both sides give the event type the same TTL tier.
        let left = record.ttl_left.expect("a TTL").as_secs();
        assert!(
            left <= answer.ttl && left + 60 >= answer.ttl,
            "{event}: the guard's TTL {left} s, the decorator's {} s",
            answer.ttl
        );
    }
    println!("{N} events processed by the guard: {N} refused by the decorator's SET NX");

    // 3. In flight: while the guard's handler runs, the decorator sees the event as taken.
    let in_flight = events("flight", 1).remove(0);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (started, has_started) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let guard = guard.clone();
        let event = in_flight.clone();
        tokio::spawn(async move {
            let envelope = EventEnvelope::from_slice(event.as_bytes()).expect("envelope");
            guard
                .run(&envelope, async move {
                    let _ = started.send(());
                    let _ = released.await;
                    Ok::<_, std::io::Error>(())
                })
                .await
                .expect("run")
        })
    };
    has_started.await.expect("the handler starts");
    let answers = decorator(&python, &prefix, std::slice::from_ref(&in_flight)).await;
    assert_eq!(answers[0].outcome, "duplicate", "a claim held by the guard");
    let _ = release.send(());
    assert_eq!(running.await.expect("joined"), Outcome::Processed(()));
    println!("an event in the guard's hands: refused by the decorator's SET NX");
}
