//! `eventonce demo`, run as a user would run it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `eventonce demo ARGS`: exit code, stdout, stderr.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .arg("demo")
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_rejects_nonsense_arguments_naming_the_flag_the_value_and_the_range() {
    for (args, flag, value, range) in [
        (["--events", "0"], "--events", "'0'", "1 to 1,000,000"),
        (
            ["--events", "1000001"],
            "--events",
            "'1000001'",
            "1 to 1,000,000",
        ),
        (
            ["--events", "18446744073709551615"],
            "--events",
            "'18446744073709551615'",
            "1 to 1,000,000",
        ),
        (
            ["--events", "100000000000000000000000"],
            "--events",
            "'100000000000000000000000'",
            "1 to 1,000,000",
        ),
        (
            ["--duplicate-rate", "2"],
            "--duplicate-rate",
            "'2'",
            "0.0 to 1.0",
        ),
        (
            ["--duplicate-rate", "NaN"],
            "--duplicate-rate",
            "'NaN'",
            "0.0 to 1.0",
        ),
        (["--workers", "0"], "--workers", "'0'", "1 to 1,024"),
        (
            ["--ttl-secs", "0"],
            "--ttl-secs",
            "'0'",
            "a whole number of seconds, at least 1",
        ),
    ] {
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        for part in [flag, value, range] {
            assert!(stderr.contains(part), "{args:?}: {part} in {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
    }
}

/// The stream is generated as it is consumed: a large run takes time in proportion to its
/// events. Building it with `Vec::insert` took minutes for this many (quadratic); the
/// bound is generous for a loaded debug build.
#[test]
fn a_large_demo_runs_in_linear_time() {
    let events = 400_000;
    let limit = Duration::from_secs(150);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args(["demo", "--events", &events.to_string(), "--lease-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    // Read the output while it runs, so that a full pipe never blocks the child.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{events} events took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().expect("reader");
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "effects applied exactly once: {events}/{events}; twice or more: 0; never: 0"
        )),
        "{out}"
    );
    assert_eq!(row(&out, "distinct events"), events);
}

#[test]
fn demo_logs_carry_no_colour_codes_into_a_pipe() {
    let (code, stdout, stderr) = run(&["--events", "60", "--lease-ms", "100", "--log", "info"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains("PROCESSING_FAILED"),
        "the failing handlers are logged: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "ANSI escapes in a pipe: {stderr:?}"
    );
}

#[test]
fn the_header_is_the_first_line() {
    let (code, stdout, _) = run(&["--events", "20", "--lease-ms", "100"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with("eventonce demo: store=memory service=demo-service events=20 "),
        "{stdout}"
    );
}
