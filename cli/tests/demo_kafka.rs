//! `eventonce demo --kafka BOOTSTRAP`, run as a subprocess against the real broker that
//! `make test` starts (`KAFKA_BOOTSTRAP`; outside CI, `scripts/kafka.sh start`).
#![cfg(feature = "kafka")]

use std::process::Command;

fn bootstrap() -> String {
    eventonce_testkit::kafka_bootstrap()
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
