//! The CI-size chaos soak as a test of the workspace: `cargo test` (and so `make test`)
//! runs the soak binary of the test build, 2,000 events through four worker processes with
//! handler failures, SIGKILLed workers and a Redis restart, against the PostgreSQL of the
//! other tests. The verdict is the soak's exit code; its table is printed as it runs.
//! `make soak-large` runs the large one by hand.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // `cargo test -- --list` (and test runners that ask) list one test.
    if std::env::args().any(|a| a == "--list") {
        println!("ci_soak: test");
        return ExitCode::SUCCESS;
    }
    let status = Command::new(env!("CARGO_BIN_EXE_eventonce-soak"))
        .args(["--events", "2000"])
        .status();
    let passed = match status {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("ci_soak: the soak failed ({s})");
            false
        }
        Err(e) => {
            eprintln!("ci_soak: could not start the soak binary: {e}");
            false
        }
    };
    println!("ci_soak: {} passed, {} failed", passed as u8, !passed as u8);
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
