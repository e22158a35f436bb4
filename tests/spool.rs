//! The spool under damage: a full disk, a removed directory, a cap that must block, batches
//! the server will not take. Each run ends with the accounting identity: every event the
//! collector produced is stored, counted as dropped by cause, or still spooled.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    COLLECTOR, Guard, ServerProcess, as_root, config, free_port, last_status, spool_bytes, stats,
    text,
};

fn collector(yaml: &tempfile::NamedTempFile, args: &[&str]) -> Guard {
    let mut all = vec!["--otel-endpoint", "none"];
    all.extend_from_slice(args);
    common::collector(yaml.path(), &all)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The drop counts of the last status line, by `component/cause`.
fn drops(stderr: &str) -> Vec<(String, u64)> {
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("Status: "))
        .unwrap_or_else(|| panic!("no status line in:\n{stderr}"));
    line.split_once("dropped_by_cause:")
        .map(|(_, causes)| {
            causes
                .split_whitespace()
                .map(|pair| {
                    let (cause, n) = pair.split_once('=').expect("cause=N");
                    (cause.to_owned(), n.parse().expect("a number"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// produced = stored + dropped by cause + still spooled, from the collector's last status
/// line and the server's store.
fn assert_accounted(produced: u64, stored: u64, stderr: &str) {
    let dropped: u64 = drops(stderr).iter().map(|(_, n)| n).sum();
    assert_eq!(
        dropped,
        last_status(stderr, "dropped"),
        "the causes add up: {stderr}"
    );
    let spooled = if stderr
        .lines()
        .rfind(|l| l.starts_with("Status: "))
        .is_some_and(|l| l.contains(" spooled="))
    {
        last_status(stderr, "spooled")
    } else {
        0
    };
    assert_eq!(
        stored + dropped + spooled,
        produced,
        "produced {produced} = stored {stored} + dropped {dropped} + spooled {spooled}\n{stderr}"
    );
}

#[test]
fn a_full_spool_under_block_waits_for_the_server_and_loses_nothing() {
    let store = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let yaml = config(&format!(
        "server:\n  spool_dir: {}\n  spool_max_bytes: 4MiB\n  spool_when_full: block\n\
         collectors:\n  synthetic: {{ config: {{ events: 60000, rate: 20000 }} }}\n",
        spool.path().display()
    ));
    let run = collector(&yaml, &["--server", &format!("127.0.0.1:{port}")]);
    // The spool reaches its cap while the server is away; the collector waits at it.
    wait_until("a full spool", Duration::from_mins(1), || {
        spool_bytes(spool.path()) > 3 << 20
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(spool_bytes(spool.path()) <= 4 << 20, "the cap holds");
    let _server = ServerProcess::start(port, store.path(), &[]);
    let out = run.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        last_status(&stderr, "dropped"),
        0,
        "block drops nothing: {stderr}"
    );
    assert_eq!(stats(store.path()).0, 60_000);
    assert_accounted(60_000, stats(store.path()).0, &stderr);
}

#[test]
fn a_spool_directory_removed_mid_run_is_recreated_and_nothing_is_lost() {
    let store = tempfile::tempdir().expect("temp dir");
    let parent = tempfile::tempdir().expect("temp dir");
    let spool = parent.path().join("spool");
    let port = free_port();
    let yaml = config(&format!(
        "server:\n  spool_dir: {}\n\
         collectors:\n  synthetic: {{ config: {{ events: 40000, rate: 20000 }} }}\n",
        spool.display()
    ));
    let run = collector(&yaml, &["--server", &format!("127.0.0.1:{port}")]);
    wait_until("a spool", Duration::from_mins(1), || {
        spool_bytes(&spool) > 1 << 20
    });
    std::fs::remove_dir_all(&spool).expect("removes the spool");
    wait_until("the spool to come back", Duration::from_secs(10), || {
        spool_bytes(&spool) > 1 << 20
    });
    let _server = ServerProcess::start(port, store.path(), &[]);
    let out = run.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recreated them"), "{stderr}");
    assert_eq!(stats(store.path()).0, 40_000);
    assert_accounted(40_000, stats(store.path()).0, &stderr);
}

/// Runs the collector on a spool in a `size` tmpfs mounted in a private mount namespace,
/// so the disk fills before the spool's own cap.
fn in_small_tmpfs(spool: &Path, size: &str, yaml: &Path, args: &[&str]) -> Guard {
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs '{}' && exec '{COLLECTOR}' --config '{}' --otel-endpoint none {}",
        spool.display(),
        yaml.display(),
        args.join(" ")
    );
    Guard(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare runs"),
    )
}

#[test]
fn a_disk_that_fills_under_the_spool_holds_the_input_back_and_loses_nothing() {
    if !as_root("a_disk_that_fills_under_the_spool_holds_the_input_back_and_loses_nothing") {
        return;
    }
    let store = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let yaml = config(&format!(
        "server:\n  spool_dir: {}\n\
         collectors:\n  synthetic: {{ config: {{ events: 150000, rate: 50000, scenario: oom-cascade }} }}\n",
        spool.path().display()
    ));
    let address = format!("127.0.0.1:{port}");
    let run = in_small_tmpfs(spool.path(), "6m", yaml.path(), &["--server", &address]);
    std::thread::sleep(Duration::from_secs(3));
    let _server = ServerProcess::start(port, store.path(), &["--max-events-per-second", "50000"]);
    let out = run.wait_for(Duration::from_mins(3));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Cannot write to the spool"),
        "the disk filled up: {stderr}"
    );
    assert_eq!(last_status(&stderr, "dropped"), 0, "{stderr}");
    assert_eq!(stats(store.path()).0, 150_000);
    assert_accounted(150_000, stats(store.path()).0, &stderr);
}

#[test]
fn a_disk_that_fills_under_a_drop_newest_spool_counts_every_drop() {
    if !as_root("a_disk_that_fills_under_a_drop_newest_spool_counts_every_drop") {
        return;
    }
    let store = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let yaml = config(&format!(
        "server:\n  spool_dir: {}\n  spool_when_full: drop_newest\n\
         collectors:\n  synthetic: {{ config: {{ events: 100000, rate: 50000 }} }}\n",
        spool.path().display()
    ));
    let address = format!("127.0.0.1:{port}");
    let run = in_small_tmpfs(spool.path(), "4m", yaml.path(), &["--server", &address]);
    std::thread::sleep(Duration::from_secs(3));
    let _server = ServerProcess::start(port, store.path(), &[]);
    let out = run.wait_for(Duration::from_mins(3));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        last_status(&stderr, "dropped") > 0,
        "4 MiB cannot hold it all: {stderr}"
    );
    assert!(stderr.contains("bridge/spool_full="), "{stderr}");
    assert_accounted(100_000, stats(store.path()).0, &stderr);
}

#[test]
fn batches_spooled_before_the_servers_limit_was_known_are_split_and_all_stored() {
    let store = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let spool_dir = spool.path().to_str().expect("utf-8");
    // First run: the server is away; batches of 1000 events (several hundred KB) wait in
    // the spool.
    let first = config("collectors:\n  synthetic: { config: { events: 20000 } }\n");
    let out = collector(
        &first,
        &[
            "--server",
            &address,
            "--spool-dir",
            spool_dir,
            "--drain-timeout",
            "500ms",
        ],
    )
    .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(last_status(&stderr, "spooled"), 20_000);
    // Second run: the server takes at most 200 kB per message.
    let _server = ServerProcess::start(port, store.path(), &["--max-message-bytes", "200000"]);
    let second = config("collectors:\n  synthetic: { config: { events: 5000, seed: 3 } }\n");
    let out = collector(&second, &["--server", &address, "--spool-dir", spool_dir])
        .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Splitting a batch"), "{stderr}");
    assert_eq!(
        stats(store.path()).0,
        25_000,
        "every event, split or not, stored once"
    );
    assert_eq!(last_status(&stderr, "dropped"), 0, "{stderr}");
    assert!(
        stderr.matches("Connected to the server.").count() == 1,
        "no stream was broken by an oversized message: {stderr}"
    );
    assert_eq!(spool_bytes(spool.path()), 0);
}

#[test]
fn an_event_larger_than_the_server_takes_is_refused_and_counted_and_the_rest_flows() {
    let store = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, store.path(), &["--max-message-bytes", "1000000"]);
    let lines = tempfile::NamedTempFile::new().expect("temp file");
    let mut text_lines = String::new();
    for n in 0..200u64 {
        let message = if n == 100 {
            "x".repeat(2_000_000)
        } else {
            format!("event {n}")
        };
        let _ = writeln!(
            text_lines,
            "{{\"id\":\"{}\",\"timestamp_unix_nano\":{},\"type\":\"journal.entry\",\"source\":\"journald\",\"severity\":\"info\",\"message\":\"{message}\"}}",
            tapio::event::EventId::from_u128((u128::from(n) + 1) << 80),
            1_700_000_000_000_000_000u64 + n,
        );
    }
    std::fs::write(lines.path(), text_lines).expect("writes");
    let yaml = config(&format!(
        "collectors:\n  replay: {{ config: {{ path: {} }} }}\n",
        lines.path().display()
    ));
    let out = collector(&yaml, &["--server", &server.address()]).wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stats(store.path()).0, 199);
    assert!(stderr.contains("bridge/too_large=1"), "{stderr}");
    assert_accounted(200, stats(store.path()).0, &stderr);
}
