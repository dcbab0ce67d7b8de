//! `eventonce demo` draws a progress bar on a terminal, and nothing of it anywhere else.

use std::process::Command;

/// Whether the output holds a drawn bar: `[====>   ] 120/340 deliveries`.
fn has_bar(output: &str) -> bool {
    output.split("deliveries").any(|before| {
        let tail = before.trim_end();
        let count = tail.rsplit(' ').next().unwrap_or_default();
        let mut sides = count.split('/');
        matches!(
            (sides.next(), sides.next()),
            (Some(done), Some(len)) if done.parse::<u64>().is_ok() && len.parse::<u64>().is_ok()
        )
    })
}

#[test]
fn the_progress_bar_stays_quiet_when_output_is_not_a_terminal() {
    let out = Command::new(env!("CARGO_BIN_EXE_eventonce"))
        .args(["demo", "--events", "200", "--lease-ms", "200"])
        .output()
        .expect("the binary runs");
    assert!(out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!has_bar(&stdout) && !has_bar(&stderr), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal() {
    // util-linux `script` gives the demo a pseudo-terminal for stdout and stderr.
    let bin = env!("CARGO_BIN_EXE_eventonce").replace('\'', "'\\''");
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("'{bin}' demo --events 200 --lease-ms 200"),
            "/dev/null",
        ])
        .output()
        .expect("script(1) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("OK: every event processed exactly once"),
        "{text}"
    );
    assert!(has_bar(&text), "no progress bar in:\n{text}");
    // The header and the table start lines of their own, never the bar's line.
    for start in ["eventonce demo: store=memory", "| what happened "] {
        assert!(
            text.lines().any(|line| line.starts_with(start)),
            "{start:?} does not start a line in:\n{text:?}"
        );
    }
    // The rate reads `10,523/s`: whole deliveries, grouped by thousands.
    let rates: Vec<&str> = text
        .split("/s")
        .filter_map(|before| before.rsplit(' ').next())
        .filter(|rate| rate.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(!rates.is_empty(), "no rate in:\n{text}");
    for rate in rates {
        assert!(
            rate.chars().all(|c| c.is_ascii_digit() || c == ','),
            "a rate of {rate:?}/s"
        );
    }
}
