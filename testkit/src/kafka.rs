//! The Kafka-protocol broker of the end-to-end tests.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The broker's address: `KAFKA_BOOTSTRAP` (`make test` starts the broker and sets it).
/// Unset outside CI, the broker is started once per process with `scripts/kafka.sh start`;
/// unset under CI (`CI` set), this panics: the run should have started it.
pub fn kafka_bootstrap() -> String {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(start_or_read).clone()
}

fn start_or_read() -> String {
    if let Some(b) = std::env::var("KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
    {
        return b;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "KAFKA_BOOTSTRAP is not set: the Kafka tests need the broker that `make test` starts \
         (scripts/kafka.sh start prints KAFKA_BOOTSTRAP=...)"
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh");
    eprintln!("KAFKA_BOOTSTRAP is not set: starting the broker with scripts/kafka.sh start");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
        .map_or_else(
            || panic!("scripts/kafka.sh start did not print KAFKA_BOOTSTRAP=...: {stdout}"),
            str::to_owned,
        )
}

/// A name no earlier run used: `prefix`, the process id and the time in nanoseconds (a
/// topic or consumer group of its own for each test or bench run).
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}
