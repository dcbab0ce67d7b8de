//! `eventonce demo --kafka BOOTSTRAP`, run as a subprocess against the real broker that
//! `make test` starts (`KAFKA_BOOTSTRAP`; outside CI, `scripts/kafka.sh start`).
#![cfg(feature = "kafka")]

use std::process::Command;

fn bootstrap() -> String {
    if let Some(b) = std::env::var("KAFKA_BOOTSTRAP")
        .ok()
        .filter(|b| !b.trim().is_empty())
    {
        return b;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "KAFKA_BOOTSTRAP is not set: this test needs the broker `make test` starts"
    );
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .output()
        .expect("scripts/kafka.sh start");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_BOOTSTRAP="))
        .map(str::to_owned)
        .expect("scripts/kafka.sh start prints KAFKA_BOOTSTRAP=...")
}

#[test]
fn demo_runs_through_a_real_kafka_broker_exactly_once() {
    let bootstrap = bootstrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args(["demo", "--kafka", &bootstrap, "--events", "150"])
        .output()
        .expect("run eventonce");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("kafka bootstrap={bootstrap} events=150")),
        "{stdout}"
    );
    assert!(stdout.contains("exactly once"), "{stdout}");
}

#[test]
fn demo_kafka_excludes_the_other_stores() {
    let out = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args([
            "demo",
            "--kafka",
            "127.0.0.1:1",
            "--redis",
            "redis://127.0.0.1:6379",
        ])
        .output()
        .expect("run eventonce");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
