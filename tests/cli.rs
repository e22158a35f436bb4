//! The `tapio-collector` binary as a user runs it: flags, `validate`, finite and endless
//! synthetic runs, signals, and drop accounting.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{COLLECTOR, Guard, config, http, http_get, last_status, text};
use tapio::event::Event;

mod common;

const BIN: &str = COLLECTOR;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .expect("binary runs")
}

fn parse_events(stdout: &str) -> Vec<Event> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn help_lists_every_flag() {
    let help = text(&run(&["--help"]).stdout);
    for flag in [
        "--server",
        "--otel-endpoint",
        "--otel-self-tracing",
        "--enable-ebpf",
        "--enable-k8s",
        "--enable-systemd",
        "--enable-journald",
        "--buffer-size",
        "--flush-interval",
        "--correlation",
        "--grpc-insecure",
        "--config",
        "--log-level",
        "--stdout",
        "validate",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    for default in [
        "localhost:9090",
        "localhost:4317",
        "[default: 1000]",
        "[default: 1s]",
    ] {
        assert!(help.contains(default), "--help lacks default {default}");
    }
}

#[test]
fn validate_names_the_bad_field_and_line() {
    for (file, expected) in [
        (
            "unknown_collector.yaml",
            "collectors.kernal: unknown collector `kernal`",
        ),
        (
            "unknown_field.yaml",
            "orchestrator.bufer_size: unknown field",
        ),
        (
            "wrong_type.yaml",
            "collectors.synthetic.config.rate: invalid type",
        ),
    ] {
        let path = data(file);
        let out = run(&["validate", "--config", path.to_str().expect("utf-8 path")]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(stderr.contains(expected), "{file}: {stderr}");
        assert!(
            stderr.contains("at line 4"),
            "{file} names the line: {stderr}"
        );
    }
}

#[test]
fn validate_lists_every_problem_and_accepts_a_good_file() {
    let bad = config(
        "orchestrator: { workers: 0 }\nserver: { address: nohost }\n\
         collectors:\n  synthetic: { config: { pods: 0 } }\n",
    );
    let out = run(&["validate", "--config", bad.path().to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    for field in [
        "orchestrator.workers",
        "server.address",
        "collectors.synthetic.config.pods",
    ] {
        assert!(stderr.contains(field), "{field} missing: {stderr}");
    }
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/synthetic.yaml");
    let out = run(&["validate", "--config", good.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_finite_run_prints_exactly_its_events_then_exits_zero() {
    let file = config(
        "collectors:\n  synthetic: { enabled: true, config: { events: 1000, rate: 0, scenario: uniform } }\n",
    );
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events = parse_events(&text(&out.stdout));
    assert_eq!(events.len(), 1000);
    let ids: HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1000, "ids are unique");
    assert!(
        events
            .iter()
            .all(|e| e.trace_id.is_some() && e.span_id.is_some())
    );
    assert!(events.iter().all(|e| !e.entities.node.is_empty()));
    assert_eq!(last_status(&stderr, "events"), 1000);
    assert_eq!(last_status(&stderr, "dropped"), 0);
}

#[test]
fn the_oom_cascade_reaches_the_output_in_causal_order() {
    let file = config(
        "collectors:\n  synthetic: { config: { events: 40, scenario: oom-cascade, seed: 9 } }\n",
    );
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
        "--correlation",
        "basic",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = parse_events(&text(&out.stdout));
    let incident: Vec<&str> = events
        .iter()
        .map(|e| e.kind.as_ref())
        .filter(|k| {
            [
                "memory.oom_kill",
                "container.exit",
                "k8s.pod.restart",
                "k8s.pod.backoff",
            ]
            .contains(k)
        })
        .collect();
    assert_eq!(
        incident,
        [
            "memory.oom_kill",
            "container.exit",
            "k8s.pod.restart",
            "k8s.pod.backoff",
            "memory.oom_kill",
            "container.exit",
            "k8s.pod.restart",
            "k8s.pod.backoff"
        ]
    );
}

#[test]
fn semantic_mode_puts_each_cascade_in_one_trace_with_causal_parents() {
    let file = config(
        "collectors:\n  synthetic: { config: { events: 40, scenario: oom-cascade, seed: 9 } }\n",
    );
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
        "--correlation",
        "semantic",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events = parse_events(&text(&out.stdout));
    let kill = events
        .iter()
        .find(|e| e.kind == "memory.oom_kill")
        .expect("an OOM kill");
    let group = kill
        .correlation
        .as_ref()
        .expect("the kill opens a group")
        .group_id;
    let members: Vec<&Event> = events
        .iter()
        .filter(|e| e.correlation.as_ref().is_some_and(|c| c.group_id == group))
        .collect();
    let kinds: Vec<&str> = members.iter().map(|e| e.kind.as_ref()).collect();
    assert_eq!(
        kinds,
        [
            "memory.oom_kill",
            "process.signal",
            "process.exit",
            "container.exit",
            "k8s.pod.restart",
            "k8s.pod.backoff"
        ]
    );
    for effect in &members[1..] {
        assert_eq!(effect.trace_id, kill.trace_id, "one trace per group");
        let links = &effect
            .correlation
            .as_ref()
            .expect("correlated")
            .causal_links;
        let cause = members
            .iter()
            .find(|m| m.id == links[0].cause_event_id)
            .expect("the cause is a member");
        assert!(cause.timestamp <= effect.timestamp, "the cause comes first");
        assert_eq!(
            effect.parent_span_id, cause.span_id,
            "parent = causal predecessor"
        );
    }
    let background = events
        .iter()
        .filter(|e| e.kind == "process.exec")
        .find(|e| e.trace_id == kill.trace_id);
    assert!(
        background.is_none(),
        "background stays out of the incident's trace"
    );
}

#[test]
fn sigterm_stops_collectors_drains_and_exits_zero() {
    let file = config(
        "collectors:\n  synthetic: { config: { events: 0, rate: 20000, scenario: oom-cascade } }\n",
    );
    let mut child = Guard(
        Command::new(BIN)
            .args([
                "--config",
                file.path().to_str().expect("utf-8"),
                "--server",
                "none",
                "--stdout",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut lines = 0u64;
    let mut line = String::new();
    // Wait until events flow, then ask it to stop.
    while lines < 100 {
        line.clear();
        assert!(
            stdout.read_line(&mut line).expect("reads") > 0,
            "output ended early"
        );
        lines += 1;
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("reads the rest");
    lines += rest.lines().count() as u64;
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("reads stderr");
    let exit = child.0.wait().expect("exits");
    assert!(exit.success(), "exit {exit:?}: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_eq!(
        last_status(&stderr, "events"),
        lines,
        "every event the pipeline took reached stdout"
    );
}

#[test]
fn drops_under_drop_newest_are_counted_not_silent() {
    let file = config(
        "orchestrator: { buffer_size: 16 }\n\
         collectors:\n  synthetic:\n    when_full: drop_newest\n    config: { events: 50000 }\n",
    );
    let mut child = Guard(
        Command::new(BIN)
            .args([
                "--config",
                file.path().to_str().expect("utf-8"),
                "--server",
                "none",
                "--stdout",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts"),
    );
    // Not reading stdout for a while fills the pipe, stalls the pipeline and fills the queue.
    std::thread::sleep(Duration::from_millis(500));
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("reads");
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("reads");
    assert!(child.0.wait().expect("exits").success(), "{stderr}");
    let printed = stdout.lines().count() as u64;
    let dropped = last_status(&stderr, "dropped");
    assert!(
        dropped > 0,
        "a stalled pipeline must drop under drop_newest: {stderr}"
    );
    assert_eq!(
        printed + dropped,
        50_000,
        "every event is printed or counted"
    );
    assert!(stderr.contains("synthetic/queue_full="), "{stderr}");
    assert!(
        stderr.contains("Events dropped."),
        "drops are logged: {stderr}"
    );
}

#[test]
fn the_status_line_repeats_while_running() {
    let file = config("collectors:\n  synthetic: { config: { events: 2000, rate: 2000 } }\n");
    let started = Instant::now();
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
        "--status-interval",
        "200ms",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "rate limit is honoured"
    );
    let status_lines = stderr
        .lines()
        .filter(|l| l.starts_with("Status: events="))
        .count();
    assert!(
        status_lines >= 3,
        "periodic plus final status lines: {stderr}"
    );
}

#[test]
fn durations_too_long_to_add_to_the_clock_are_refused_by_name() {
    let file = config("collectors:\n  synthetic: { config: { events: 10 } }\n");
    let path = file.path().to_str().expect("utf-8");
    for flag in ["--flush-interval", "--drain-timeout", "--status-interval"] {
        let out = run(&[
            "--config",
            path,
            "--server",
            "none",
            "--stdout",
            flag,
            "18000000000000000000s",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("longest allowed"),
            "{stderr}"
        );
    }
    let file = config(
        "server: { flush_interval: 18000000000000000000s }\n\
         collectors:\n  synthetic: { config: { events: 10 } }\n",
    );
    let out = run(&["validate", "--config", file.path().to_str().expect("utf-8")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("server.flush_interval") && stderr.contains("longest allowed"),
        "{stderr}"
    );
}

#[test]
fn nothing_enabled_and_nowhere_to_send_are_clear_errors() {
    let out = run(&["--server", "none", "--stdout"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("no collector is enabled"), "{stderr}");

    let file = config("collectors:\n  synthetic: { config: { events: 10 } }\n");
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("events would go nowhere"));
}

#[test]
fn healthz_and_metrics_are_served_while_collectors_run() {
    let port = common::free_port();
    let file = config("collectors:\n  synthetic: { config: { events: 0, rate: 2000 } }\n");
    let child = Command::new(COLLECTOR)
        .arg("--config")
        .arg(file.path())
        .args([
            "--server",
            "none",
            "--stdout",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collector starts");
    let agent = Guard(child);
    let started = Instant::now();
    let (status, body) = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, body) = http_get(port, "/metrics");
            if body.contains("tapio_collector_events_accepted_total{collector=\"synthetic\"} ")
                && !body
                    .contains("tapio_collector_events_accepted_total{collector=\"synthetic\"} 0\n")
            {
                break (status, body);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no metrics");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, "HTTP/1.1 200 OK");
    for name in [
        "# TYPE tapio_events_processed_total counter",
        "tapio_collector_up{collector=\"synthetic\"} 1",
        "tapio_events_dropped_total{component=\"synthetic\",cause=\"queue_full\"} 0",
    ] {
        assert!(body.contains(name), "{name} in {body}");
    }
    let (status, body) = http_get(port, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let probe = run(&["health", &format!("http://127.0.0.1:{port}/healthz")]);
    assert!(probe.status.success(), "{}", text(&probe.stderr));
    assert_eq!(http_get(port, "/nope").0, "HTTP/1.1 404 Not Found");
    for method in ["POST", "PUT", "DELETE"] {
        for path in ["/healthz", "/metrics"] {
            assert_eq!(
                http(port, method, path).0,
                "HTTP/1.1 405 Method Not Allowed",
                "{method} {path}"
            );
        }
    }
    assert_eq!(http(port, "HEAD", "/healthz").0, "HTTP/1.1 200 OK");
    assert!(common::terminate(agent).status.success());
    let probe = run(&["health", &format!("http://127.0.0.1:{port}/healthz")]);
    assert_eq!(
        probe.status.code(),
        Some(1),
        "nothing answers once it stopped"
    );

    // An address already taken is an error that names the setting.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
        "--metrics-listen",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("orchestrator.metrics_listen"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_empty_token_file_is_named_as_the_token_file_not_the_embedded_server() {
    let token = tempfile::NamedTempFile::new().expect("temp file");
    let file = config("collectors:\n  synthetic: { config: { events: 10 } }\n");
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "127.0.0.1:1",
        "--token-file",
        token.path().to_str().expect("utf-8"),
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("server.token_file") && stderr.contains("is empty"),
        "{stderr}"
    );
    assert!(!stderr.contains("embedded server"), "{stderr}");
}

#[test]
fn a_collector_whose_setup_fails_is_not_counted_as_started() {
    // No bus behind the address, and a kubeconfig that is not one: both fail while the
    // collector is built, so neither counts as started and the run says so.
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "this: [is not, a kubeconfig").expect("writes");
    let file = config(&format!(
        "collectors:\n  systemd: {{ config: {{ bus_address: 'unix:path={}/no-bus' }} }}\n  \
         kubeapi: {{ config: {{ kubeconfig: {} }} }}\n",
        dir.path().display(),
        kubeconfig.display()
    ));
    let out = run(&[
        "--config",
        file.path().to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no collector could start"), "{stderr}");
    assert!(stderr.contains("cannot reach systemd"), "{stderr}");
    assert!(stderr.contains("no Kubernetes API"), "{stderr}");
}
