//! `eventonce demo`, run as a user would run it.

use std::process::Command;

fn demo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .arg("demo")
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn row(table: &str, name: &str) -> usize {
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("| {name} ")))
        .unwrap_or_else(|| panic!("no row {name:?} in\n{table}"));
    line.trim_end_matches('|')
        .rsplit('|')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

#[test]
fn demo_processes_every_event_once_and_prints_the_table() {
    let (ok, out) = demo(&["--events", "300", "--lease-ms", "300"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("OK: every event processed exactly once"),
        "{out}"
    );
    assert!(out.contains("effects applied exactly once: 300/300; twice or more: 0; never: 0"));
    assert_eq!(row(&out, "distinct events"), 300);
    assert_eq!(row(&out, "processed"), 300);
    let sent = row(&out, "duplicates sent by the producer");
    assert!(sent > 30, "{out}");
    assert_eq!(row(&out, "duplicates skipped"), sent);
    let failures = row(&out, "failures released");
    assert!(failures >= 300 / 17, "{out}");
    assert_eq!(row(&out, "  ... retried and processed"), failures);
    assert_eq!(row(&out, "crashed consumer's event recovered"), 1);
    assert!(row(&out, "in progress elsewhere, redelivered") >= 1);
    assert_eq!(row(&out, "unprotected runs"), 0);
    assert_eq!(row(&out, "handler runs"), 300 + failures);
}

#[test]
fn demo_rejects_nonsense_arguments() {
    let (ok, _) = demo(&["--events", "0"]);
    assert!(!ok);
    let (ok, _) = demo(&["--duplicate-rate", "2"]);
    assert!(!ok);
}
