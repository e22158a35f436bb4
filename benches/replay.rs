//! Replay pacing: a recording whose events span a known time, replayed at `speed:
//! realtime` and at `speed: 4`, end to end through the collector binary (`--server none`).
//! The figure is how long each replay took against the recorded span: realtime should be
//! close to 1 of it, 4x close to 0.25 (plus the process's start and drain).
//!
//! Command: `cargo bench --bench replay` (a 4 s recording; `REPLAY_SECONDS=N` to change).
//! Under `cargo test` it runs a 0.4 s smoke version. Figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "small counts and durations become ratios"
)]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

const COLLECTOR: &str = env!("CARGO_BIN_EXE_tapio-collector");

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let seconds: u64 = if measuring {
        std::env::var("REPLAY_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4)
    } else {
        1
    };
    let span_ms = if measuring { seconds * 1000 } else { 400 };
    // 200 events evenly over the span, in the --stdout format.
    let mut recording = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .expect("temp file");
    let start: u64 = 1_790_000_000_000_000_000;
    for n in 0..200u64 {
        let at = start + n * span_ms * 1_000_000 / 199;
        writeln!(
            recording,
            "{{\"id\":\"01M8{n:022}\",\"timestamp_unix_nano\":{at},\"type\":\"process.exec\",\"source\":\"kernel\",\"severity\":\"info\"}}"
        )
        .expect("writes");
    }
    recording.flush().expect("flushes");
    for speed in ["realtime", "4"] {
        let config = tempfile::Builder::new()
            .suffix(".yaml")
            .tempfile()
            .expect("temp file");
        std::fs::write(
            config.path(),
            format!(
                "collectors:\n  replay: {{ config: {{ path: {}, speed: {speed} }} }}\n",
                recording.path().display()
            ),
        )
        .expect("writes");
        let started = Instant::now();
        let status = Command::new(COLLECTOR)
            .arg("--config")
            .arg(config.path())
            .args(["--server", "none", "--stdout", "--otel-endpoint", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("collector runs");
        assert!(status.success());
        let took = started.elapsed().as_secs_f64();
        let span = span_ms as f64 / 1000.0;
        println!(
            "replay/speed {speed}: {took:.3} s for a {span:.3} s recording (ratio {:.3} of the span)",
            took / span
        );
    }
}
