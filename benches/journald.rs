//! Journal read throughput: the journald collector's reader (sd-journal, every field of
//! every entry made into an event) over a journal, beside journalctl printing the same
//! files as JSON (`journalctl --file F... -o json > /dev/null`) in the same run. The journal
//! is written by systemd-journal-remote from export format, with the field mix of a busy
//! node's service logs; journal-remote rotates its output every ~300 000 entries, so both
//! readers get every file.
//!
//! Command: `cargo bench --bench journald` (1 000 000 entries; `JOURNAL_ENTRIES=N` to
//! change). Under `cargo test` it runs a small smoke version. Figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 become rates"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tapio::collectors::journald::{JournaldConfig, Mapper};

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";

/// Streams `count` entries in export format into systemd-journal-remote, writing `file`.
fn write_journal(file: &Path, count: usize) {
    let mut child = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", file.display()))
        .args(["--split-mode=none", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-journal-remote runs (scripts/setup installs it)");
    let mut input = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
    let units = [
        "kubelet.service",
        "containerd.service",
        "sshd.service",
        "cron.service",
    ];
    for n in 0..count {
        let unit = units[n % units.len()];
        let pid = 1000 + n % 97;
        let priority = if n % 50 == 0 { 3 } else { 6 };
        write!(
            input,
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
             _MACHINE_ID=3d1219c7c4c5404aaa1f6d2a48adfda4\n_HOSTNAME=node-a\n_TRANSPORT=stdout\n\
             PRIORITY={priority}\nSYSLOG_FACILITY=3\nSYSLOG_IDENTIFIER={ident}\n_PID={pid}\n_UID=0\n_GID=0\n\
             _COMM={ident}\n_EXE=/usr/bin/{ident}\n_CMDLINE=/usr/bin/{ident} --config /etc/{ident}.conf\n\
             _CAP_EFFECTIVE=1ffffffffff\n_SYSTEMD_CGROUP=/system.slice/{unit}\n_SYSTEMD_UNIT={unit}\n\
             _SYSTEMD_SLICE=system.slice\n_SYSTEMD_INVOCATION_ID=5f0c3b7f2d6a4e1c9b8a7f6e5d4c3b2a\n\
             _STREAM_ID=9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d\n\
             MESSAGE=I1125 {n:08} {unit}: request handled in {} ms for pod default/web-{}\n\n",
            1_700_000_000_000_000 + n as u64 * 10,
            1_000_000 + n as u64 * 10,
            n % 250,
            n % 300,
            ident = unit.trim_end_matches(".service"),
        )
        .expect("writes");
    }
    drop(input);
    assert!(
        child.wait().expect("waits").success(),
        "journal-remote failed"
    );
}

/// `journalctl` with every journal file in `dir`, as JSON.
fn journalctl_command(dir: &Path) -> Command {
    let mut command = Command::new("journalctl");
    for entry in std::fs::read_dir(dir).expect("reads the directory") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "journal") {
            command.arg("--file").arg(path);
        }
    }
    command.args(["-o", "json"]);
    command
}

/// Entries per second journalctl prints as JSON to /dev/null.
fn journalctl(dir: &Path, count: usize) -> f64 {
    let started = Instant::now();
    let status = journalctl_command(dir)
        .stdout(Stdio::null())
        .status()
        .expect("journalctl runs");
    assert!(status.success());
    count as f64 / started.elapsed().as_secs_f64()
}

/// Entries per second the collector's reader turns into events.
fn collector(dir: &Path, count: usize) -> f64 {
    let config = JournaldConfig {
        directory: Some(dir.to_path_buf()),
        follow: false,
        ..JournaldConfig::default()
    };
    let started = Instant::now();
    let mut journal = config.open(None).expect("opens");
    let mut mapper = Mapper::new("node-a".into());
    let mut read = 0;
    let mut bytes = 0;
    while journal.advance().expect("reads") {
        let event = mapper.map(&mut journal).expect("maps");
        bytes += event.message.len() + event.attributes.iter().count();
        read += 1;
    }
    let rate = read as f64 / started.elapsed().as_secs_f64();
    assert_eq!(read, count, "every entry read");
    assert!(bytes > 0);
    rate
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let count = if measuring {
        std::env::var("JOURNAL_ENTRIES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        5_000
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let file: PathBuf = dir.path().join("bench.journal");
    let started = Instant::now();
    write_journal(&file, count);
    println!(
        "journald/setup: {count} entries written in {:.1} s ({} MiB)",
        started.elapsed().as_secs_f64(),
        std::fs::metadata(&file).expect("size").len() >> 20
    );
    // Warm the page cache for both readers, and check journalctl sees every entry.
    let out = journalctl_command(dir.path())
        .output()
        .expect("journalctl runs");
    let lines = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(lines, count, "journalctl prints every entry");
    for round in 1..=3 {
        let peer = journalctl(dir.path(), count);
        let ours = collector(dir.path(), count);
        println!(
            "journald/round {round}: collector reader {ours:.0} entries/s, journalctl -o json {peer:.0} entries/s (ratio {:.2})",
            ours / peer
        );
    }
}
