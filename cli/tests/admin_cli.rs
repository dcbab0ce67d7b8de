//! The admin commands (`keys`, `show`, `release`, `stats`) and `demo --redis/--postgres`,
//! run as an operator runs them: the binary as a subprocess, against the real Redis
//! (`EVENTONCE_REDIS_URL`, default `redis://127.0.0.1:6379`) and PostgreSQL
//! (`EVENTONCE_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`). Every
//! test works under a key prefix (and PostgreSQL schema) of its own.
#![cfg(all(feature = "redis", feature = "postgres"))]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventonce::{
    Claim, EventEnvelope, Guard, IdempotencyConfig, IdempotencyStore, KeyScheme, Outcome,
    RecordState, RedisStore,
};
use redis::AsyncCommands;
use serde_json::{json, Value};

fn redis_url() -> String {
    std::env::var("EVENTONCE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("EVENTONCE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A key prefix no other test (of this run or another) uses.
fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "eventonce:admin-test:{test}:{:x}-{:x}-{}",
        std::process::id(),
        epoch().as_nanos(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A PostgreSQL schema of this run, named so that the backend tests' clean-up drops it
/// after an hour.
fn unique_schema(test: &str) -> String {
    format!(
        "eventonce_test_{}_{}_cli_{test}",
        epoch().as_secs(),
        std::process::id()
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `eventonce ARGS`, feeding `stdin` (nothing: an empty, closed stdin).
fn eventonce(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args(args)
        .env_remove("EVENTONCE_REDIS_URL")
        .env_remove("EVENTONCE_POSTGRES_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("the binary finishes");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `eventonce COMMAND --redis URL --prefix PREFIX ARGS`.
fn on_redis(command: &str, prefix: &str, args: &[&str], stdin: &str) -> Run {
    let url = redis_url();
    let mut all = vec![command, "--redis", url.as_str(), "--prefix", prefix];
    all.extend_from_slice(args);
    eventonce(&all, stdin)
}

async fn store() -> RedisStore {
    RedisStore::connect(&redis_url())
        .await
        .unwrap_or_else(|e| panic!("these tests need Redis at {}: {e}", redis_url()))
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis is up")
}

fn config(prefix: &str, service: &str) -> IdempotencyConfig {
    IdempotencyConfig::builder(service)
        .key_prefix(prefix)
        .default_ttl(HOUR)
        .build()
        .expect("config")
}

fn key_of(prefix: &str, service: &str, event_type: &str, id: &str) -> String {
    let envelope = EventEnvelope::new(event_type, json!({"n": id})).with_event_id(id);
    let hash = envelope.deterministic_hash().expect("hash");
    config(prefix, service).generate_key(event_type, &hash)
}

const HOUR: Duration = Duration::from_secs(3600);

/// Writes a completed record of ours at `key`.
async fn completed(store: &RedisStore, key: &str) {
    assert_eq!(
        store
            .try_claim(key, "test-owner", HOUR)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    assert!(store
        .complete(key, "test-owner", HOUR)
        .await
        .expect("complete"));
}

fn keys_in(run: &Run) -> Vec<String> {
    run.json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", run.stdout))
        .iter()
        .filter_map(|k| k["key"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn keys_lists_state_owner_age_and_ttl_and_filters_by_service_type_and_state() {
    let prefix = unique_prefix("keys");
    let store = store().await;
    let billing_a = key_of(&prefix, "billing", "orders.created.v1", "1");
    let billing_b = key_of(&prefix, "billing", "orders.paid.v1", "2");
    let mail = key_of(&prefix, "mail", "orders.created.v1", "3");
    let claimed = key_of(&prefix, "billing", "orders.created.v1", "4");
    for key in [&billing_a, &billing_b, &mail] {
        completed(&store, key).await;
    }
    assert_eq!(
        store
            .try_claim(&claimed, "worker-7", HOUR)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    // Keys of another prefix that shares the first characters stay out.
    let neighbour = format!("{prefix}x:billing:t:h");
    let _: () = raw().await.set_ex(&neighbour, "1", 600).await.expect("set");

    let all = on_redis("keys", &prefix, &["--json"], "");
    assert_eq!(all.code, 0, "{}", all.stderr);
    let mut listed = keys_in(&all);
    listed.sort();
    let mut expected = vec![
        billing_a.clone(),
        billing_b.clone(),
        mail.clone(),
        claimed.clone(),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    let entry = all
        .json()
        .as_array()
        .and_then(|a| a.iter().find(|k| k["key"] == claimed.as_str()).cloned())
        .expect("the claim is listed");
    assert_eq!(entry["state"], "processing");
    assert_eq!(entry["owner"], "worker-7");
    assert_eq!(entry["service"], "billing");
    assert_eq!(entry["event_type"], "orders.created.v1");
    let ttl = entry["ttl_left_ms"].as_u64().expect("ttl");
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    assert!(entry["age_ms"].as_u64().expect("age") < 60_000);

    the_filters_narrow_the_listing(&prefix, &claimed, &billing_b);
    the_table_shows_the_limit_and_says_more_are_left_out(&prefix);
}

/// `keys` by service, event type and state, alone and together.
fn the_filters_narrow_the_listing(prefix: &str, claimed: &str, billing_b: &str) {
    let billing = on_redis("keys", prefix, &["--service", "billing", "--json"], "");
    assert_eq!(keys_in(&billing).len(), 3);
    let created = on_redis(
        "keys",
        prefix,
        &["--event-type", "orders.created.v1", "--json"],
        "",
    );
    assert_eq!(keys_in(&created).len(), 3);
    let processing = on_redis("keys", prefix, &["--state", "processing", "--json"], "");
    assert_eq!(keys_in(&processing), vec![claimed.to_owned()]);
    let one = on_redis(
        "keys",
        prefix,
        &[
            "--service",
            "billing",
            "--event-type",
            "orders.paid.v1",
            "--state",
            "completed",
            "--json",
        ],
        "",
    );
    assert_eq!(keys_in(&one), vec![billing_b.to_owned()]);
}

/// The table form: a header, `--limit` rows and a note that more were left out.
fn the_table_shows_the_limit_and_says_more_are_left_out(prefix: &str) {
    let table = on_redis("keys", prefix, &["--limit", "2"], "");
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.starts_with("| key ")
            && table.stdout.contains("| state ")
            && table.stdout.contains("ttl left"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("more left out"), "{}", table.stdout);
    let rows = table
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("| {prefix}")))
        .count();
    assert_eq!(rows, 2, "{}", table.stdout);
}

#[tokio::test]
async fn keys_and_stats_page_through_many_scan_pages() {
    let prefix = unique_prefix("paging");
    let mut con = raw().await;
    let mut pipe = redis::pipe();
    for i in 0..1234 {
        let key = key_of(&prefix, "bulk", "bulk.loaded.v1", &i.to_string());
        pipe.cmd("SET")
            .arg(key)
            .arg(format!("c|1732712345678|owner-{i}"))
            .arg("EX")
            .arg(600)
            .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.expect("load");
    let keys = on_redis("keys", &prefix, &["--json", "--limit", "5000"], "");
    assert_eq!(keys_in(&keys).len(), 1234);
    let stats = on_redis("stats", &prefix, &["--json"], "").json();
    assert_eq!(stats["total"]["completed"], 1234);
    assert_eq!(stats["groups"][0]["memory_keys_sampled"], 20);
}

#[tokio::test]
async fn show_decodes_a_record_by_key_and_computes_the_key_from_an_event() {
    let prefix = unique_prefix("show");
    let store = store().await;
    let data = json!({"essay_id": "e-9", "scores": [1, 2]});
    let envelope = EventEnvelope::new("essay.scored.v1", data.clone()).with_event_id("evt-9");
    let guard = Guard::new(store.clone(), config(&prefix, "grader"));
    let outcome = guard
        .run(&envelope, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("run");
    assert_eq!(outcome, Outcome::Processed(()));
    let key = guard.key_for(&envelope).expect("key");

    let text = on_redis("show", &prefix, &[&key], "");
    assert_eq!(text.code, 0, "{}", text.stderr);
    for line in [
        "service:    grader",
        "event type: essay.scored.v1",
        "state:      completed",
    ] {
        assert!(text.stdout.contains(line), "{line} in\n{}", text.stdout);
    }

    // The same record, found from the event: data re-spelled with another key order.
    let file = std::env::temp_dir().join(format!("{}.json", prefix.replace(':', "_")));
    std::fs::write(&file, r#"{ "scores": [1,2], "essay_id": "e-9" }"#).expect("write");
    let path = file.to_string_lossy().into_owned();
    let by_event = on_redis(
        "show",
        &prefix,
        &[
            "--service",
            "grader",
            "--event-type",
            "essay.scored.v1",
            "--event-id",
            "evt-9",
            "--data-file",
            &path,
            "--json",
        ],
        "",
    );
    let _ = std::fs::remove_file(&file);
    let shown = by_event.json();
    assert_eq!(shown["key"], key.as_str());
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["written_by"], "eventonce");
    let ttl = shown["ttl_left_ms"].as_u64().expect("ttl");
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "the test's TTL is an hour: {ttl}"
    );

    show_from_standard_input_finds_no_record_and_refuses_bad_json(&prefix, &data);
}

/// `show` prints the payload fingerprint a record was written with, and says when there
/// is none.
#[tokio::test]
async fn show_prints_the_recorded_payload_fingerprint() {
    let prefix = unique_prefix("showfp");
    let store = store().await;
    let guard = Guard::new(store.clone(), config(&prefix, "grader"));
    let identity = eventonce::Identity::new("essay.scored.v1", "evt-fp").with_fingerprint(b"body");
    let plain = eventonce::Identity::new("essay.scored.v1", "evt-plain");
    for id in [&identity, &plain] {
        let outcome = guard.run(id, async { Ok::<_, std::io::Error>(()) }).await;
        assert_eq!(outcome.expect("run"), Outcome::Processed(()));
    }
    let fingerprint = identity.fingerprint().expect("fingerprint");
    let key = guard.key_for(&identity).expect("key");
    let text = on_redis("show", &prefix, &[&key], "");
    assert_eq!(text.code, 0, "{}", text.stderr);
    let line = format!("fingerprint: {fingerprint} (of the payload)");
    assert!(text.stdout.contains(&line), "{line} in\n{}", text.stdout);
    let json = on_redis("show", &prefix, &[&key, "--json"], "").json();
    assert_eq!(json["fingerprint"], fingerprint);
    let key = guard.key_for(&plain).expect("key");
    let text = on_redis("show", &prefix, &[&key], "");
    assert!(
        text.stdout.contains("fingerprint: - (none recorded)"),
        "{}",
        text.stdout
    );
}

/// `show` with the data on standard input: another event id has no record; data that is
/// not JSON is refused.
fn show_from_standard_input_finds_no_record_and_refuses_bad_json(prefix: &str, data: &Value) {
    // The data from standard input, with another event id: no such record.
    let other = on_redis(
        "show",
        prefix,
        &[
            "--service",
            "grader",
            "--event-type",
            "essay.scored.v1",
            "--event-id",
            "evt-10",
            "--data-file",
            "-",
        ],
        &data.to_string(),
    );
    assert_eq!(other.code, 1, "{}{}", other.stdout, other.stderr);
    assert!(other.stdout.contains("absent"), "{}", other.stdout);

    let bad = on_redis(
        "show",
        prefix,
        &[
            "--service",
            "grader",
            "--event-type",
            "t",
            "--data-file",
            "-",
        ],
        "{not json",
    );
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("not JSON"), "{}", bad.stderr);
}

#[tokio::test]
async fn the_python_v2_key_scheme_finds_the_decorators_records() {
    let prefix = unique_prefix("python-v2");
    let event_type = "huleedu.cj_assessment.completed.v1";
    let data = json!({"batch": "b-1", "scores": [0.5, 1e16]});
    let envelope = EventEnvelope::new(event_type, data.clone()).with_event_id("evt-1");
    let v2 = IdempotencyConfig::builder("grader")
        .key_prefix(&prefix)
        .key_scheme(KeyScheme::PythonV2)
        .build()
        .expect("config");
    // The decorator's record: its key, its JSON value, one SET NX EX.
    let key = v2.event_key(&envelope).expect("key");
    assert!(
        key.contains(":huleedu_cj_assessment_completed_v1:"),
        "{key}"
    );
    let mut con = raw().await;
    let set: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(r#"{"processed_at": 1732712345.1, "processed_by": "grader", "event_id": "evt-1"}"#)
        .arg("NX")
        .arg("EX")
        .arg(600)
        .query_async(&mut con)
        .await
        .expect("set");
    assert_eq!(set.as_deref(), Some("OK"));

    let event_args = |scheme: &str| -> Vec<String> {
        [
            "--service",
            "grader",
            "--event-type",
            event_type,
            "--event-id",
            "evt-1",
            "--data-file",
            "-",
            "--json",
            "--key-scheme",
            scheme,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let args = event_args("python-v2");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let shown = on_redis("show", &prefix, &args, &data.to_string());
    assert_eq!(shown.code, 0, "{}{}", shown.stdout, shown.stderr);
    let shown = shown.json();
    assert_eq!(shown["key"], key.as_str());
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["written_by"], "an older writer");
    assert_eq!(shown["event_type"], "huleedu_cj_assessment_completed_v1");
    // The default scheme computes another key, with no record.
    let args = event_args("eventonce");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let other = on_redis("show", &prefix, &args, &data.to_string());
    assert_eq!(other.code, 1, "{}{}", other.stdout, other.stderr);
    assert_ne!(other.json()["key"], key.as_str());

    keys_and_stats_use_the_python_v2_key(&prefix, event_type, &key);

    let refused = on_redis(
        "keys",
        &prefix,
        &[
            "--service",
            "grader",
            "--event-type",
            "orders:*",
            "--key-scheme",
            "python-v2",
        ],
        "",
    );
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("python-v2"), "{}", refused.stderr);
    let unknown = on_redis("keys", &prefix, &["--key-scheme", "python-v3"], "");
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("python-v2"), "{}", unknown.stderr);
}

/// `keys` and `stats` with `--key-scheme python-v2` find the decorator's record; the
/// default scheme does not.
fn keys_and_stats_use_the_python_v2_key(prefix: &str, event_type: &str, key: &str) {
    let listed = on_redis(
        "keys",
        prefix,
        &[
            "--service",
            "grader",
            "--event-type",
            event_type,
            "--key-scheme",
            "python-v2",
            "--json",
        ],
        "",
    );
    assert_eq!(keys_in(&listed), vec![key.to_owned()]);
    let by_default = on_redis(
        "keys",
        prefix,
        &["--service", "grader", "--event-type", event_type, "--json"],
        "",
    );
    assert!(keys_in(&by_default).is_empty(), "{}", by_default.stdout);

    let stats = on_redis(
        "stats",
        prefix,
        &["--json", "--key-scheme", "python-v2"],
        "",
    )
    .json();
    assert_eq!(
        stats["groups"][0]["event_type"], "huleedu_cj_assessment_completed_v1",
        "{stats}"
    );
}

#[tokio::test]
async fn release_refuses_keys_outside_the_prefix_and_older_writers_values() {
    let prefix = unique_prefix("refuse");
    let store = store().await;
    let mut con = raw().await;
    // A record of ours, but under another prefix than the one given.
    let elsewhere = key_of(&format!("{prefix}-other"), "svc", "t.v1", "1");
    completed(&store, &elsewhere).await;
    for key in [elsewhere.as_str(), "unrelated:key", prefix.as_str()] {
        let run = on_redis("release", &prefix, &[key, "--yes"], "y\n");
        assert_eq!(run.code, 2, "{key}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("refusing"), "{}", run.stderr);
    }
    assert_eq!(
        store.get(&elsewhere).await.expect("get").map(|r| r.state),
        Some(RecordState::Completed)
    );

    // An older writer's value under the prefix: shown, never removed.
    let legacy = key_of(&prefix, "svc", "t.v1", "2");
    let _: () = con.set_ex(&legacy, "1", 600).await.expect("set");
    let run = on_redis("release", &prefix, &[&legacy, "--yes"], "");
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("older writer"), "{}", run.stderr);
    let still: String = con.get(&legacy).await.expect("get");
    assert_eq!(still, "1");

    let absent = on_redis(
        "release",
        &prefix,
        &[&key_of(&prefix, "svc", "t.v1", "3"), "--yes"],
        "",
    );
    assert_eq!(absent.code, 1);
    assert!(absent.stdout.contains("nothing to release"));
}

#[tokio::test]
async fn release_asks_first_and_only_yes_lets_the_event_be_processed_again() {
    let prefix = unique_prefix("release");
    let store = store().await;
    let guard = Guard::new(store.clone(), config(&prefix, "billing"));
    let envelope = EventEnvelope::new("invoice.sent.v1", json!({"invoice": 5})).with_event_id("i5");
    let ran = guard
        .run(&envelope, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("run");
    assert_eq!(ran, Outcome::Processed(()));
    let key = guard.key_for(&envelope).expect("key");

    for declined in ["n\n", "\n", "", "whatever\n"] {
        let run = on_redis("release", &prefix, &[&key], declined);
        assert_eq!(run.code, 1, "{declined:?}: {}", run.stdout);
        assert!(run.stdout.contains("[y/N]"), "{}", run.stdout);
        assert!(run.stdout.contains("not released"), "{}", run.stdout);
        assert!(
            run.stdout.contains("processed again"),
            "the prompt says what releasing a completed record does: {}",
            run.stdout
        );
    }
    let again = guard
        .run(&envelope, async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("run");
    assert_eq!(
        again,
        Outcome::Duplicate,
        "a declined release removed nothing"
    );

    let run = on_redis("release", &prefix, &[&key], "y\n");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("released"), "{}", run.stdout);
    assert_eq!(store.get(&key).await.expect("get"), None);
    let reprocessed = guard
        .run(&envelope, async { Ok::<_, std::io::Error>("again") })
        .await
        .expect("run");
    assert_eq!(reprocessed, Outcome::Processed("again"));

    // A live claim: the prompt warns that a consumer may be running it; --yes skips it.
    let claimed = key_of(&prefix, "billing", "invoice.sent.v1", "i6");
    assert_eq!(
        store
            .try_claim(&claimed, "worker-1", HOUR)
            .await
            .expect("claim"),
        Claim::Acquired
    );
    let run = on_redis("release", &prefix, &[&claimed, "--yes"], "");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("[y/N]"), "{}", run.stdout);
    assert!(run.stdout.contains("CLAIM_LOST"), "{}", run.stdout);
    assert_eq!(store.get(&claimed).await.expect("get"), None);
    assert!(
        !store
            .complete(&claimed, "worker-1", HOUR)
            .await
            .expect("complete"),
        "the former holder can no longer complete it"
    );
}

#[tokio::test]
async fn stats_counts_per_service_event_type_and_state_with_sampled_memory() {
    let prefix = unique_prefix("stats");
    let store = store().await;
    for i in 0..5 {
        completed(
            &store,
            &key_of(&prefix, "billing", "orders.created.v1", &i.to_string()),
        )
        .await;
    }
    for i in 0..3 {
        completed(
            &store,
            &key_of(&prefix, "mail", "orders.created.v1", &i.to_string()),
        )
        .await;
    }
    for i in 0..2 {
        let key = key_of(&prefix, "billing", "orders.created.v1", &format!("p{i}"));
        assert_eq!(
            store.try_claim(&key, "w", HOUR).await.expect("claim"),
            Claim::Acquired
        );
    }
    let stats = on_redis("stats", &prefix, &["--json", "--samples", "2"], "").json();
    assert_eq!(stats["backend"], "redis");
    assert_eq!(stats["memory"]["sampled"], true);
    assert_eq!(stats["memory"]["measure"], "MEMORY USAGE");
    let groups = stats["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 2, "{stats}");
    let billing = &groups[0];
    assert_eq!(
        (
            &billing["service"],
            &billing["event_type"],
            &billing["processing"],
            &billing["completed"],
            &billing["memory_keys_sampled"]
        ),
        (
            &json!("billing"),
            &json!("orders.created.v1"),
            &json!(2),
            &json!(5),
            &json!(2)
        )
    );
    let estimate = billing["memory_bytes_estimate"].as_u64().expect("estimate");
    assert!(
        (7 * 40..7 * 1000).contains(&estimate),
        "7 small records: {estimate}"
    );
    assert_eq!(groups[1]["service"], "mail");
    assert_eq!(groups[1]["completed"], 3);
    assert_eq!(stats["total"]["records"], 10);

    let only_mail = on_redis("stats", &prefix, &["--service", "mail", "--json"], "").json();
    assert_eq!(only_mail["total"]["records"], 3);

    let table = on_redis("stats", &prefix, &[], "");
    assert_eq!(table.code, 0, "{}", table.stderr);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("| billing "))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(&cells[1..5], ["billing", "orders.created.v1", "2", "5"]);
    assert!(
        table.stdout.contains("memory is sampled"),
        "{}",
        table.stdout
    );
}

#[test]
fn demo_on_redis_processes_every_event_once_and_leaves_records_for_stats() {
    let prefix = unique_prefix("demo");
    let run = on_redis(
        "demo",
        &prefix,
        &["--events", "120", "--lease-ms", "300"],
        "",
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("store=redis"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("OK: every event processed exactly once"),
        "{}",
        run.stdout
    );
    let stats = on_redis("stats", &prefix, &["--json"], "").json();
    assert_eq!(stats["total"]["completed"], 120);
    assert_eq!(stats["total"]["processing"], 0);
    // A second run is a run of new events, not 120 duplicates.
    let again = on_redis(
        "demo",
        &prefix,
        &["--events", "120", "--lease-ms", "300"],
        "",
    );
    assert_eq!(again.code, 0, "{}", again.stdout);
    let stats = on_redis("stats", &prefix, &["--json"], "").json();
    assert_eq!(stats["total"]["completed"], 240);
}

#[test]
fn the_admin_commands_work_on_postgres_after_a_demo_there() {
    let schema = unique_schema("pg");
    let url = postgres_url();
    let pg = |command: &str, args: &[&str], stdin: &str| {
        let mut all = vec![command, "--postgres", url.as_str(), "--pg-schema", &schema];
        all.extend_from_slice(args);
        eventonce(&all, stdin)
    };
    let demo = pg("demo", &["--events", "60", "--lease-ms", "300"], "");
    assert_eq!(demo.code, 0, "{}{}", demo.stdout, demo.stderr);
    assert!(demo.stdout.contains("store=postgres"), "{}", demo.stdout);
    assert!(demo
        .stdout
        .contains("OK: every event processed exactly once"));

    let stats = pg("stats", &["--json"], "").json();
    assert_eq!(stats["backend"], "postgres");
    assert_eq!(stats["memory"]["measure"], "pg_column_size");
    assert_eq!(stats["total"]["completed"], 60);
    assert_eq!(stats["groups"].as_array().map(Vec::len), Some(4));
    assert!(stats["total"]["memory_bytes_estimate"].as_u64() > Some(60 * 50));

    let listed = pg("keys", &["--state", "completed", "--json"], "");
    let keys = keys_in(&listed);
    assert_eq!(keys.len(), 60);
    let paged = pg(
        "keys",
        &[
            "--event-type",
            "huleedu.essay.spellcheck.requested.v1",
            "--json",
        ],
        "",
    );
    assert_eq!(keys_in(&paged).len(), 15);

    let shown = pg("show", &[&keys[0], "--json"], "").json();
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["service"], "demo-service");

    let declined = pg("release", &[&keys[0]], "n\n");
    assert_eq!(declined.code, 1, "{}", declined.stdout);
    let released = pg("release", &[&keys[0]], "y\n");
    assert_eq!(released.code, 0, "{}{}", released.stdout, released.stderr);
    assert_eq!(pg("show", &[&keys[0]], "").code, 1);
    let refused = pg("release", &["elsewhere:svc:t:h", "--yes"], "");
    assert_eq!(refused.code, 2);
    assert_eq!(
        pg("stats", &["--json"], "").json()["total"]["completed"],
        59
    );

    // The admin commands never create a table: a missing one is an error, not a migration.
    let missing = eventonce(
        &[
            "stats",
            "--postgres",
            &url,
            "--pg-schema",
            &schema,
            "--pg-table",
            "no_such_table",
        ],
        "",
    );
    assert_eq!(missing.code, 2, "{}", missing.stdout);
    assert!(
        missing.stderr.contains("no_such_table"),
        "{}",
        missing.stderr
    );
}

#[test]
fn admin_commands_take_their_store_from_the_environment() {
    let prefix = unique_prefix("env");
    let run = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args(["stats", "--json", "--prefix", &prefix])
        .env("EVENTONCE_REDIS_URL", redis_url())
        .env(
            "EVENTONCE_POSTGRES_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .output()
        .expect("runs");
    // Nothing under a fresh prefix (exit 1), read from the Redis of the environment.
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stats: Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(stats["backend"], "redis");

    let pg_only = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args(["stats", "--prefix", &prefix])
        .env_remove("EVENTONCE_REDIS_URL")
        .env(
            "EVENTONCE_POSTGRES_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .output()
        .expect("runs");
    assert_eq!(pg_only.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&pg_only.stderr).contains("PostgreSQL"),
        "{pg_only:?}"
    );
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A port whose server answers `HTTP/1.1 400 Bad Request` to anything (an HTTP port given
/// by mistake), or, `silent`, accepts connections and never answers.
fn fake_server(silent: bool) -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut socket in listener.incoming().flatten() {
            if silent {
                held.push(socket);
                continue;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf);
                let _ = socket.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    port
}

/// A connection failure case: (flag, URL, words the message must hold, whether it must
/// fail fast).
type ConnectCase = (&'static str, String, Vec<String>, bool);

/// The PostgreSQL URLs that cannot work: a closed port, a Redis URL, a Redis server, an
/// HTTP server, a silent server, no URL at all, TLS required.
fn postgres_cases(
    closed: u16,
    http: u16,
    silent: u16,
    redis_port: u16,
    pw: &str,
) -> Vec<ConnectCase> {
    vec![
        (
            "--postgres",
            format!("postgres://postgres:{pw}@127.0.0.1:{closed}/test"),
            vec![
                format!("cannot connect to PostgreSQL at postgres://postgres:***@127.0.0.1:{closed}/test"),
                "connection refused".into(),
                "check that PostgreSQL is running".into(),
            ],
            true,
        ),
        (
            "--postgres",
            format!("redis://:{pw}@127.0.0.1:{redis_port}"),
            vec![
                format!("invalid PostgreSQL URL redis://***@127.0.0.1:{redis_port}"),
                "Redis'".into(),
                "expected postgres://".into(),
            ],
            true,
        ),
        (
            "--postgres",
            format!("postgres://postgres@127.0.0.1:{redis_port}/test"),
            vec![
                format!("cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:{redis_port}/test"),
                format!("not a PostgreSQL server: 127.0.0.1:{redis_port} answered as a Redis server does ("),
                "is this the right port?".into(),
            ],
            true,
        ),
        (
            "--postgres",
            format!("postgres://postgres@127.0.0.1:{http}/test"),
            vec![
                "not a PostgreSQL server".into(),
                "is this the right port?".into(),
            ],
            true,
        ),
        (
            "--postgres",
            format!("postgres://postgres@127.0.0.1:{silent}/test"),
            vec![
                format!("cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:{silent}/test"),
                "no answer within 3s".into(),
            ],
            false,
        ),
        (
            "--postgres",
            "not a url".into(),
            vec![
                "invalid PostgreSQL URL not a url".into(),
                "relative URL without a base".into(),
            ],
            true,
        ),
        (
            "--postgres",
            format!("{}?sslmode=require", plain_postgres_url()),
            vec!["sslmode=require".into(), "the URL requires TLS".into()],
            true,
        ),
    ]
}

/// A PostgreSQL server without TLS: with TLS support built in, the usual local server may
/// offer TLS, so the one with `ssl=off` that scripts/postgres-tls.sh starts.
fn plain_postgres_url() -> String {
    if cfg!(feature = "postgres-tls") {
        eventonce_testkit::postgres_tls().plain_url.clone()
    } else {
        postgres_url()
    }
}

/// The Redis URLs that cannot work: a closed port, an HTTP server, a silent server, no URL
/// at all, a bad port.
fn redis_cases(closed: u16, http: u16, silent: u16, pw: &str) -> Vec<ConnectCase> {
    vec![
        (
            "--redis",
            format!("redis://:{pw}@127.0.0.1:{closed}/0"),
            vec![
                format!("cannot connect to Redis at redis://:***@127.0.0.1:{closed}/0"),
                "connection refused".into(),
                "check that Redis is running".into(),
            ],
            true,
        ),
        (
            "--redis",
            format!("redis://:{pw}@127.0.0.1:{http}"),
            vec![
                format!("cannot connect to Redis at redis://:***@127.0.0.1:{http}"),
                "not a Redis server".into(),
                "is this the right port?".into(),
            ],
            true,
        ),
        (
            "--redis",
            format!("redis://:{pw}@127.0.0.1:{silent}"),
            vec![
                format!("cannot connect to Redis at redis://:***@127.0.0.1:{silent}"),
                "no answer within 3s".into(),
            ],
            false,
        ),
        (
            "--redis",
            "not a url".into(),
            vec![
                "invalid Redis URL not a url".into(),
                "relative URL without a base".into(),
                "expected redis://".into(),
            ],
            true,
        ),
        (
            "--redis",
            format!("redis://:{pw}@127.0.0.1:port/0"),
            vec![
                "invalid Redis URL redis://***@127.0.0.1:port/0".into(),
                "invalid port number".into(),
            ],
            true,
        ),
    ]
}

/// The command failed with exit code 2 and one line on stderr naming every word, never the
/// password, in time.
fn check_connection_failure(
    case: &str,
    words: &[String],
    fast: bool,
    run: &Run,
    took: Duration,
    pw: &str,
) {
    let shown = format!("{case}: exit {}, {took:?}\n{}", run.code, run.stderr);
    println!("{shown}");
    assert_eq!(run.code, 2, "{shown}");
    assert!(run.stderr.starts_with("error: "), "{shown}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {shown}");
    for word in words {
        assert!(
            run.stderr.contains(word.as_str()),
            "{word:?} missing: {shown}"
        );
    }
    assert!(!run.stderr.contains(pw), "password shown: {shown}");
    assert!(!run.stderr.contains("0ns"), "{shown}");
    assert!(!run.stderr.contains("store unavailable"), "{shown}");
    if fast {
        assert!(took < Duration::from_secs(2), "not fast: {shown}");
    } else {
        assert!(took < Duration::from_secs(6), "{shown}");
    }
}

#[test]
fn connection_failures_name_the_target_the_cause_and_what_to_check() {
    let closed = closed_port();
    let http = fake_server(false);
    let silent = fake_server(true);
    let redis_port = redis_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(6379);
    let pw = "s3cret-pw";
    let mut cases = postgres_cases(closed, http, silent, redis_port, pw);
    cases.extend(redis_cases(closed, http, silent, pw));
    // All at once: the silent ports take their 3 s each.
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(flag, url, words, fast)| {
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let run = eventonce(&["keys", flag, &url], "");
                (flag, url, words, fast, run, started.elapsed())
            })
        })
        .collect();
    for handle in runs {
        let (flag, url, words, fast, run, took) = handle.join().expect("case");
        check_connection_failure(&format!("{flag} {url}"), &words, fast, &run, took, pw);
    }
}

#[tokio::test]
async fn show_refuses_keys_outside_the_prefix_and_explains_keys_that_hold_no_record() {
    let prefix = unique_prefix("show-refuse");
    let mut con = raw().await;
    // A plain string outside the prefix: not shown as an older writer's `completed`.
    let outside = format!("{prefix}-elsewhere:plain");
    let _: () = con.set_ex(&outside, "hello", 600).await.expect("set");
    let run = on_redis("show", &prefix, &[&outside], "");
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("refusing to show") && run.stderr.contains("--prefix"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("completed"), "{}", run.stdout);

    // A Redis list under the prefix: a plain explanation, not the read script's error.
    let list = key_of(&prefix, "svc", "t.v1", "list");
    let _: () = con.rpush(&list, "item").await.expect("rpush");
    let _: () = con.expire(&list, 600).await.expect("expire");
    for args in [
        vec!["show", list.as_str()],
        vec!["release", list.as_str(), "--yes"],
    ] {
        let command = args[0];
        let run = on_redis(command, &prefix, &args[1..], "");
        assert_eq!(run.code, 2, "{command}: {}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("not a string") && run.stderr.contains("not an eventonce record"),
            "{command}: {}",
            run.stderr
        );
        assert!(
            !run.stderr.contains("WRONGTYPE") && !run.stderr.contains("script"),
            "{command}: {}",
            run.stderr
        );
    }
    let len: usize = con.llen(&list).await.expect("llen");
    assert_eq!(len, 1, "the list is left alone");
}

#[tokio::test]
async fn keys_and_stats_exit_1_when_they_find_nothing() {
    let prefix = unique_prefix("empty");
    let table = on_redis("keys", &prefix, &[], "");
    assert_eq!(table.code, 1, "{}{}", table.stdout, table.stderr);
    assert!(table.stdout.contains("0 key(s)"), "{}", table.stdout);
    let json = on_redis("keys", &prefix, &["--json"], "");
    assert_eq!(json.code, 1, "{}", json.stderr);
    assert_eq!(json.json(), json!([]));
    let stats = on_redis("stats", &prefix, &["--json"], "");
    assert_eq!(stats.code, 1, "{}", stats.stderr);
    assert_eq!(stats.json()["total"]["records"], 0);
    assert_eq!(on_redis("stats", &prefix, &[], "").code, 1);
    assert!(table.stderr.is_empty() && stats.stderr.is_empty());

    // One record: found, exit 0.
    completed(&store().await, &key_of(&prefix, "svc", "t.v1", "1")).await;
    assert_eq!(on_redis("keys", &prefix, &["--json"], "").code, 0);
    assert_eq!(on_redis("stats", &prefix, &["--json"], "").code, 0);
    // Filtered down to nothing: exit 1.
    let none = on_redis("keys", &prefix, &["--state", "processing"], "");
    assert_eq!(none.code, 1, "{}", none.stdout);
}

#[test]
fn keys_refuses_a_limit_of_zero() {
    let run = on_redis("keys", &unique_prefix("limit"), &["--limit", "0"], "");
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("'0'")
            && run.stderr.contains("--limit")
            && run.stderr.contains("at least 1"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("raise --limit"), "{}", run.stdout);
}

#[test]
fn show_by_event_asks_for_the_missing_flags_not_for_a_key() {
    let run = eventonce(&["show", "--service", "billing", "--event-type", "t"], "");
    assert_eq!(run.code, 2, "{}", run.stderr);
    let missing = run
        .stderr
        .split("Usage:")
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(missing.contains("--data-file"), "{}", run.stderr);
    assert!(!missing.contains("<KEY>"), "{}", run.stderr);
    let usage = run.stderr.split("Usage:").nth(1).unwrap_or_default();
    let by_event = usage
        .lines()
        .find(|line| line.contains("--service"))
        .unwrap_or_else(|| panic!("no usage with --service in {}", run.stderr));
    assert!(!by_event.contains("KEY"), "{by_event}");
    assert!(
        usage.lines().any(|line| line.trim_end().ends_with("<KEY>")),
        "{usage}"
    );
}

#[test]
fn the_demo_exits_2_when_its_store_cannot_be_reached() {
    // Nothing listens on port 1 of the loopback interface.
    let run = eventonce(
        &["demo", "--redis", "redis://127.0.0.1:1", "--events", "10"],
        "",
    );
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
}

/// The keys of one namespace, and the key of a record of prefix `{prefix}:x`, service `s`
/// (whose key starts with `{prefix}:x:` too), written through `store`.
async fn own_and_foreign_keys(store: &dyn IdempotencyStore, prefix: &str) -> (String, String) {
    let own = key_of(prefix, "x", "orders.created.v1", "own");
    let foreign = key_of(&format!("{prefix}:x"), "s", "orders.created.v1", "foreign");
    for key in [&own, &foreign] {
        assert_eq!(
            store
                .try_claim(key, "test-owner", HOUR)
                .await
                .expect("claim"),
            Claim::Acquired
        );
        assert!(store
            .complete(key, "test-owner", HOUR)
            .await
            .expect("complete"));
    }
    (own, foreign)
}

/// `keys` and `stats` under `--prefix P [--service x]` show only the records of that
/// namespace, not those of prefix `P:x` whose keys share the literal beginning.
fn only_the_namespace_is_listed(run: impl Fn(&str, &[&str]) -> Run, own: &str, foreign: &str) {
    for args in [&["--service", "x", "--json"][..], &["--json"][..]] {
        let listed = keys_in(&run("keys", args));
        assert_eq!(
            listed,
            vec![own.to_owned()],
            "keys {args:?} also listed {foreign}"
        );
        let stats = run("stats", args).json();
        assert_eq!(
            stats["total"]["completed"], 1,
            "stats {args:?} also counted {foreign}: {stats}"
        );
    }
}

#[tokio::test]
async fn keys_and_stats_on_redis_list_only_their_namespace() {
    let prefix = unique_prefix("namespace");
    let store = store().await;
    let (own, foreign) = own_and_foreign_keys(&store, &prefix).await;
    let run = |command: &str, args: &[&str]| on_redis(command, &prefix, args, "");
    only_the_namespace_is_listed(run, &own, &foreign);
}

#[tokio::test]
async fn keys_and_stats_on_postgres_list_only_their_namespace() {
    let schema = unique_schema("namespace");
    let url = postgres_url();
    let store = eventonce::PostgresStore::connect_with(
        &url,
        eventonce::PostgresOptions::default().schema(&schema),
    )
    .await
    .expect("postgres is up");
    let prefix = "namespace";
    let (own, foreign) = own_and_foreign_keys(&store, prefix).await;
    let run = |command: &str, args: &[&str]| {
        let mut all = vec![
            command,
            "--postgres",
            url.as_str(),
            "--pg-schema",
            &schema,
            "--prefix",
            prefix,
        ];
        all.extend_from_slice(args);
        eventonce(&all, "")
    };
    only_the_namespace_is_listed(run, &own, &foreign);
}

#[test]
fn a_url_typed_without_its_scheme_is_shown_as_typed_with_the_fix() {
    for (flag, typed, printed) in [
        (
            "--redis",
            "localhost:6379",
            "error: invalid Redis URL localhost:6379: no scheme (did you mean `redis://localhost:6379`?); expected redis://[[user]:password@]host[:port][/db], or rediss://... for TLS",
        ),
        (
            "--redis",
            ":s3cret-pw@127.0.0.1:6379/0",
            "error: invalid Redis URL :***@127.0.0.1:6379/0: no scheme (did you mean `redis://:***@127.0.0.1:6379/0`?); expected redis://[[user]:password@]host[:port][/db], or rediss://... for TLS",
        ),
        (
            "--postgres",
            "app:s3cret-pw@localhost:5432/app",
            "error: invalid PostgreSQL URL app:***@localhost:5432/app: no scheme (did you mean `postgres://app:***@localhost:5432/app`?); expected postgres://[user[:password]@]host[:port]/database[?sslmode=disable|prefer|require|verify-ca|verify-full[&sslrootcert=FILE]]",
        ),
    ] {
        let run = eventonce(&["keys", flag, typed], "");
        println!("{}", run.stderr);
        assert_eq!(run.code, 2, "{typed}: {}", run.stderr);
        assert_eq!(run.stderr.trim_end(), printed, "{typed}");
    }
}

#[test]
fn a_missing_records_table_names_the_flags_and_the_migration() {
    let schema = unique_schema("missing");
    let url = postgres_url();
    let run = eventonce(&["keys", "--postgres", &url, "--pg-schema", &schema], "");
    println!("{}", run.stderr);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "error: there is no records table {schema}.eventonce_records in {url}: give the \
             schema and table your consumers use (--pg-schema, --pg-table; the defaults are \
             public.eventonce_records, as PostgresOptions::default()), or create the table by \
             running the migration (a consumer's PostgresStore::connect runs it, \
             PostgresStore::migrate on its own)"
        )
    );
    assert!(!run.stderr.contains("42P01"), "{}", run.stderr);
}

#[tokio::test]
async fn show_of_a_key_not_of_the_form_says_so_also_when_nothing_is_there() {
    let prefix = unique_prefix("show-short");
    let whole = key_of(&prefix, "svc", "t.v1", "1");
    let truncated = &whole[..whole.len() - 6];
    let no_hash = format!("{prefix}:svc:t_v1");
    for short in [truncated, no_hash.as_str()] {
        let run = on_redis("show", &prefix, &[short], "");
        println!("{}", run.stdout);
        assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
        assert_eq!(
            run.stdout,
            format!(
                "key:        {short}\n\
                 state:      absent (never processed, or expired)\n\
                 (the key is not of the form {prefix}:<service>:<event type>:<hash>: a shortened \
                 or mistyped key finds nothing; copy it whole from `eventonce keys`)\n"
            )
        );
    }
    let json = on_redis("show", &prefix, &[truncated, "--json"], "");
    assert_eq!(json.code, 1, "{}", json.stderr);
    assert_eq!(
        json.json(),
        json!({
            "key": truncated,
            "state": "absent",
            "note": format!("the key is not of the form {prefix}:<service>:<event type>:<hash>"),
        })
    );
    // A whole key that holds nothing: absent, without the note.
    let run = on_redis("show", &prefix, &[&whole], "");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stdout.contains("not of the form"), "{}", run.stdout);
}

#[test]
fn data_that_is_not_json_is_refused_with_the_line_the_column_and_the_cause() {
    let prefix = unique_prefix("bad-json");
    for (input, printed) in [
        (
            "{\"a\": 1,,}",
            "error: the data in standard input is not JSON: line 1, column 9: key must be a string; the line reads: {\"a\": 1,,}",
        ),
        (
            "{\n  \"a\": 1\n  \"b\": 2\n}",
            "error: the data in standard input is not JSON: line 3, column 3: expected `,` or `}`; the line reads:   \"b\": 2",
        ),
        (
            "",
            "error: the data in standard input is not JSON: line 1, column 0: EOF while parsing a value; the input is empty",
        ),
    ] {
        let run = on_redis(
            "show",
            &prefix,
            &["--service", "svc", "--event-type", "t.v1", "--data-file", "-"],
            input,
        );
        println!("{}", run.stderr);
        assert_eq!(run.code, 2, "{input:?}: {}{}", run.stdout, run.stderr);
        assert_eq!(run.stderr.trim_end(), printed, "{input:?}");
    }
}

/// `show` prints a record's stored result: its JSON, or its size and a hex prefix when it
/// is not JSON; and says when there is none.
#[tokio::test]
async fn show_prints_the_stored_result() {
    let prefix = unique_prefix("showresult");
    let store = store().await;
    let guard = Guard::new(store.clone(), config(&prefix, "quotes"));
    let stored = eventonce::Identity::new("quote.requested.v1", "req-1");
    let reply = json!({"quote": 1250, "currency": "EUR"});
    let out = guard
        .run_stored(&stored, async { Ok::<_, std::io::Error>(reply.clone()) })
        .await
        .expect("run_stored");
    assert_eq!(out, eventonce::StoredOutcome::Processed(reply.clone()));
    let key = guard.key_for(&stored).expect("key");
    let text = on_redis("show", &prefix, &[&key], "");
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .contains(r#"result:     {"currency":"EUR","quote":1250}"#),
        "{}",
        text.stdout
    );
    let shown = on_redis("show", &prefix, &[&key, "--json"], "").json();
    assert_eq!(shown["result"], reply);

    // A result that is not JSON (written by a store call of another writer).
    let binary = eventonce::Identity::new("quote.requested.v1", "req-2");
    let key = guard.key_for(&binary).expect("key");
    let lease = Duration::from_secs(60);
    assert_eq!(
        store.try_claim(&key, "me", lease).await.expect("claim"),
        Claim::Acquired
    );
    let bytes = [0xffu8, 0x00, 0x10, 0x20, 0x30];
    assert!(store
        .complete_with_result(&key, "me", lease, &bytes)
        .await
        .expect("complete_with_result"));
    let text = on_redis("show", &prefix, &[&key], "");
    assert!(
        text.stdout
            .contains("result:     5 bytes, not JSON: ff00102030"),
        "{}",
        text.stdout
    );
    let shown = on_redis("show", &prefix, &[&key, "--json"], "").json();
    assert_eq!(shown["result_bytes"], 5);
    assert_eq!(shown["result_hex_prefix"], "ff00102030");

    let plain = eventonce::Identity::new("quote.requested.v1", "req-3");
    let out = guard
        .run(&plain, async { Ok::<_, std::io::Error>(()) })
        .await;
    assert_eq!(out.expect("run"), Outcome::Processed(()));
    let key = guard.key_for(&plain).expect("key");
    let text = on_redis("show", &prefix, &[&key], "");
    assert!(
        text.stdout.contains("result:     - (none stored)"),
        "{}",
        text.stdout
    );
}
