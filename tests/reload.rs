//! Config reload during a run, counting every event: an unchanged file (SIGHUP), a changed
//! one (noticed by `--watch-config`), and an invalid one, which is refused while the
//! running configuration keeps going.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ServerProcess, free_port, http_get, last_status, spawn_collector};

/// The config file, replaced whole (write, then rename), as an editor or Kubernetes does.
fn write_config(path: &std::path::Path, yaml: &str) {
    let part = path.with_extension("part");
    std::fs::write(&part, yaml).expect("writes");
    std::fs::rename(&part, path).expect("renames");
}

fn metric(port: u16, sample: &str) -> u64 {
    let (_, page) = http_get(port, "/metrics");
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{sample} in\n{page}"))
        .parse()
        .expect("a whole number")
}

fn wait_until(what: &str, log: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never happened:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(rate: u32, seed: u32, otel_port: u16, extra: &str) -> String {
    format!(
        "orchestrator: {{ status_interval: 200ms }}\n\
         collectors:\n  synthetic: {{ config: {{ events: 0, rate: {rate}, seed: {seed} }} }}\n  \
         otel: {{ config: {{ grpc_listen: '127.0.0.1:{otel_port}', http_listen: none }} }}\n{extra}"
    )
}

/// The applied reload's log: synthetic restarted, otel not, the live setting and the one
/// that needs a restart named.
fn check_applied(applied: &str) {
    let line = applied
        .lines()
        .find(|l| l.contains("Reload applied."))
        .expect("the reload is logged");
    assert!(
        line.contains(r#"stopped=["synthetic"]"#) && line.contains(r#"started=["synthetic"]"#),
        "{line}"
    );
    assert!(line.contains("server.flush_interval"), "{line}");
    assert!(
        applied
            .lines()
            .any(|l| l.contains("correlation.mode") && l.contains("restarts")),
        "{applied}"
    );
    assert!(
        !applied
            .lines()
            .any(|l| l.contains("collector=otel") && l.contains("finished")),
        "otel was not restarted:\n{applied}"
    );
}

/// Malformed YAML is refused naming the line; the running configuration written back is
/// no change; an invalid one after it is refused again.
fn refuse_malformed_then_take_the_same_again(
    file: &std::path::Path,
    otel_port: u16,
    metrics: u16,
    log: &dyn Fn() -> String,
) {
    let reloads = |outcome: &str| {
        metric(
            metrics,
            &format!("tapio_config_reloads_total{{outcome=\"{outcome}\"}}"),
        )
    };
    write_config(file, "collectors: [synthetic\n");
    wait_until("the second refusal", log, || reloads("refused") >= 2);
    assert!(
        log()
            .lines()
            .any(|l| l.contains("Reload refused.") && l.contains("line")),
        "{}",
        log()
    );
    write_config(
        file,
        &config(
            3000,
            2,
            otel_port,
            "server: { flush_interval: 50ms }\ncorrelation: { mode: basic }\n",
        ),
    );
    wait_until("the second unchanged reload", log, || {
        reloads("unchanged") >= 2
    });
    write_config(
        file,
        "orchestrator: { buffer_size: 0, status_interval: 1ms }\ncollectors:\n  synthetic: {}\n",
    );
    wait_until("the third refusal", log, || reloads("refused") >= 3);
    assert_eq!(metric(metrics, "tapio_config_generation"), 2);
}

#[test]
fn reloads_apply_changes_keep_what_did_not_change_refuse_bad_files_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(0, &dir.path().join("store"), &[]);
    let file = dir.path().join("tapio.yaml");
    let otel_port = free_port();
    write_config(
        &file,
        &config(2000, 1, otel_port, "server: { flush_interval: 100ms }\n"),
    );
    let metrics = free_port();
    let run = spawn_collector(
        &file,
        &[
            "--watch-config",
            "--server",
            &server.address(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    let log = || run.log();
    let accepted = "tapio_collector_events_accepted_total{collector=\"synthetic\"}";
    wait_until("the first events", log, || {
        std::net::TcpStream::connect(("127.0.0.1", metrics)).is_ok()
            && metric(metrics, accepted) >= 500
    });
    let hangup = || {
        let sent = Command::new("kill")
            .args(["-HUP", &run.guard.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    };
    let reloads = |outcome: &str| {
        metric(
            metrics,
            &format!("tapio_config_reloads_total{{outcome=\"{outcome}\"}}"),
        )
    };

    // Unchanged: SIGHUP re-reads the same file.
    hangup();
    wait_until("the unchanged reload", log, || reloads("unchanged") >= 1);
    assert_eq!(metric(metrics, "tapio_config_generation"), 1);

    // Changed: the watch notices. The synthetic collector restarts with its new section;
    // otel keeps running; delivery's flush interval changes live; the correlation mode
    // needs a restart and is named.
    let before = metric(metrics, accepted);
    write_config(
        &file,
        &config(
            3000,
            2,
            otel_port,
            "server: { flush_interval: 50ms }\ncorrelation: { mode: basic }\n",
        ),
    );
    wait_until("the applied reload", log, || reloads("applied") >= 1);
    assert_eq!(metric(metrics, "tapio_config_generation"), 2);
    wait_until("events from the restarted collector", log, || {
        metric(metrics, accepted) >= before + 1000
    });
    check_applied(&log());
    assert_eq!(metric(metrics, "tapio_collector_up{collector=\"otel\"}"), 1);

    // Invalid: refused with every problem named, and the running configuration goes on.
    write_config(
        &file,
        "orchestrator: { buffer_size: 0, status_interval: 1ms }\ncollectors:\n  synthetic: {}\n",
    );
    wait_until("the refused reload", log, || reloads("refused") >= 1);
    assert_eq!(metric(metrics, "tapio_config_generation"), 2);
    assert_eq!(metric(metrics, "tapio_config_last_reload_successful"), 0);
    let refused = log();
    for problem in ["orchestrator.buffer_size", "orchestrator.status_interval"] {
        assert!(
            refused
                .lines()
                .any(|l| l.contains("Reload refused.") && l.contains(problem)),
            "{problem} named in\n{refused}"
        );
    }
    refuse_malformed_then_take_the_same_again(&file, otel_port, metrics, &log);
    let after_refusal = metric(metrics, accepted);
    wait_until("events after the refusal", log, || {
        metric(metrics, accepted) >= after_refusal + 500
    });
    wait_until("the status line showing the refusal", log, || {
        log().contains("config_generation=2 last_reload=refused")
    });

    // Every event: what the collectors produced went through the pipeline to stdout and
    // was stored once, and nothing was dropped.
    let events = std::sync::Arc::clone(&run.events);
    let final_log = std::sync::Arc::clone(&run.log);
    run.stop();
    let final_log = final_log.lock().expect("lock").clone();
    let printed = events.lock().expect("lock").len() as u64;
    assert_eq!(last_status(&final_log, "events"), printed, "{final_log}");
    assert_eq!(last_status(&final_log, "delivered"), printed, "{final_log}");
    assert_eq!(last_status(&final_log, "dropped"), 0, "{final_log}");
    assert!(final_log.contains("config_generation=2 last_reload=refused"));
    assert_eq!(common::stats(&dir.path().join("store")).0, printed);
    assert!(printed > 3000, "{printed} events");
}
