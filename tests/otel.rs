//! Incident traces over OTLP against a real receiver (`tests/peers/otlp_receiver.py`, on
//! `PyPI`'s opentelemetry-proto and grpcio, installed by `scripts/setup`): the collector binary
//! runs the oom-cascade scenario and the spans that arrive must form one trace per cascade
//! with causal parents; with the endpoint down the run still ends promptly and says what it
//! dropped.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{COLLECTOR, OtlpReceiver, config, free_port, last_status, text};
use serde_json::Value;

mod common;

fn run_cascade(endpoint: &str, extra: &[&str]) -> (std::process::Output, Duration) {
    let file = config(
        "collectors:\n  synthetic: { config: { events: 40, scenario: oom-cascade, seed: 9 } }\n",
    );
    let started = Instant::now();
    let out = Command::new(COLLECTOR)
        .args(["--config", file.path().to_str().expect("utf-8")])
        .args(["--server", "none", "--stdout", "--correlation", "semantic"])
        .args(["--otel-endpoint", endpoint])
        .args(extra)
        .output()
        .expect("collector runs");
    (out, started.elapsed())
}

#[test]
fn each_oom_cascade_arrives_as_one_trace_with_causal_parents() {
    let receiver = OtlpReceiver::start();
    let (out, _) = run_cascade(&format!("127.0.0.1:{}", receiver.port), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(last_status(&stderr, "spans_dropped"), 0, "{stderr}");
    assert_eq!(last_status(&stderr, "spans_exported"), 12, "{stderr}");
    let spans = receiver.wait_for(12, Duration::from_secs(10));
    assert_eq!(spans.len(), 12, "two cascades of six events: {spans:#?}");

    let mut traces: HashMap<String, Vec<&Value>> = HashMap::new();
    for span in &spans {
        traces
            .entry(span["trace_id"].as_str().expect("trace id").to_owned())
            .or_default()
            .push(span);
    }
    assert_eq!(traces.len(), 2, "one trace per cascade");
    // The events the collector printed carry the same trace ids.
    let printed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    for (trace, members) in traces {
        let by_name = |name: &str| {
            *members
                .iter()
                .find(|s| s["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {members:#?}"))
        };
        let mut names: Vec<&str> = members
            .iter()
            .map(|s| s["name"].as_str().expect("name"))
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "container.exit",
                "k8s.pod.backoff",
                "k8s.pod.restart",
                "memory.oom_kill",
                "process.exit",
                "process.signal"
            ]
        );
        let root = by_name("memory.oom_kill");
        assert_eq!(root["parent_span_id"], "", "the OOM kill is the root span");
        assert_eq!(root["attributes"]["tapio.root_cause"], true);
        assert!(
            root["attributes"]["tapio.prevention"]
                .as_str()
                .is_some_and(|p| p.contains("memory limit"))
        );
        // The kill sends its SIGKILL and ends the process and the container; the exit
        // restarts the pod, which backs off.
        for (effect, causes) in [
            ("process.signal", &["memory.oom_kill"][..]),
            ("process.exit", &["memory.oom_kill", "process.signal"][..]),
            ("container.exit", &["memory.oom_kill", "process.signal"][..]),
            ("k8s.pod.restart", &["container.exit"][..]),
            ("k8s.pod.backoff", &["k8s.pod.restart"][..]),
        ] {
            let parent = &by_name(effect)["parent_span_id"];
            assert!(
                causes.iter().any(|c| by_name(c)["span_id"] == *parent),
                "{effect}'s parent is one of its causes {causes:?}"
            );
        }
        let pod = root["attributes"]["k8s.pod.name"]
            .as_str()
            .expect("k8s.pod.name");
        for span in &members {
            assert_eq!(span["attributes"]["k8s.pod.name"], pod);
            assert!(span["attributes"]["k8s.namespace.name"].is_string());
            assert!(
                span["attributes"]["tapio.impact"]
                    .as_f64()
                    .is_some_and(|i| i > 0.0)
            );
            assert_eq!(span["resource"]["service.name"], "tapio-collector");
            assert!(
                span["attributes"]["tapio.message"].is_string(),
                "the event's message: {span:#}"
            );
        }
        let kill = printed
            .iter()
            .find(|e| e["type"] == "memory.oom_kill" && e["trace_id"] == trace.as_str())
            .expect("the printed OOM kill carries the exported trace id");
        assert_eq!(kill["span_id"], root["span_id"]);
    }
}

#[test]
fn with_the_endpoint_down_the_run_ends_and_counts_what_it_dropped() {
    // A port where nothing listens.
    let port = free_port();
    let (out, took) = run_cascade(&format!("127.0.0.1:{port}"), &["--otel-export-events"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        took < Duration::from_secs(20),
        "the exporter does not hold the exit: {took:?}"
    );
    assert_eq!(last_status(&stderr, "spans_exported"), 0);
    assert_eq!(last_status(&stderr, "spans_dropped"), 12, "{stderr}");
    assert_eq!(last_status(&stderr, "logs_exported"), 0);
    assert_eq!(
        last_status(&stderr, "logs_dropped"),
        40,
        "every event's record is counted"
    );
    assert_eq!(
        last_status(&stderr, "dropped"),
        0,
        "events themselves are all delivered"
    );
    assert_eq!(text(&out.stdout).lines().count(), 40);
}

#[test]
fn the_agents_own_spans_are_exported_only_when_asked_for() {
    let receiver = OtlpReceiver::start();
    let file = config("collectors:\n  synthetic: { config: { events: 3000, rate: 0 } }\n");
    let out = Command::new(COLLECTOR)
        .args(["--config", file.path().to_str().expect("utf-8")])
        .args(["--server", "none", "--stdout", "--otel-self-tracing"])
        .args(["--otel-endpoint", &format!("127.0.0.1:{}", receiver.port)])
        .stdout(Stdio::null())
        .output()
        .expect("collector runs");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Exported each second: give the last batch its chance while the collector ran.
    let deadline = Instant::now() + Duration::from_secs(10);
    let own = loop {
        let own: Vec<Value> = receiver
            .wait_for(1, Duration::from_millis(200))
            .into_iter()
            .filter(|s| s["resource"]["service.name"] == "tapio-collector-agent")
            .collect();
        if !own.is_empty() || Instant::now() > deadline {
            break own;
        }
    };
    assert!(!own.is_empty(), "no agent spans arrived");
    assert!(own.iter().all(|s| s["name"] == "correlate"), "{own:#?}");
    assert!(
        own.iter().all(
            |s| s["attributes"]["events"].as_str().is_some_and(|n| n != "0")
                || s["attributes"]["events"].as_i64().is_some_and(|n| n > 0)
        ),
        "{own:#?}"
    );
}

/// A run of the oom-cascade scenario with `endpoint` as the OTLP endpoint: its last status
/// line and how long it took.
#[test]
fn with_export_events_every_event_arrives_as_a_log_record_with_its_trace_context() {
    let receiver = OtlpReceiver::start();
    let (out, _) = run_cascade(
        &format!("127.0.0.1:{}", receiver.port),
        &["--otel-export-events"],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    assert_eq!(printed.len(), 40);
    assert_eq!(last_status(&stderr, "logs_exported"), 40, "{stderr}");
    assert_eq!(last_status(&stderr, "logs_dropped"), 0, "{stderr}");
    // 40 log records and the 12 spans of the two incidents.
    let arrived = receiver.wait_for(52, Duration::from_secs(10));
    let logs: Vec<&Value> = arrived.iter().filter(|r| r["log"] == true).collect();
    assert_eq!(logs.len(), 40, "one record per event");
    for event in &printed {
        let id = event["id"].as_str().expect("id");
        let record = logs
            .iter()
            .find(|r| r["attributes"]["tapio.event.id"] == id)
            .unwrap_or_else(|| panic!("no record for {event:#}"));
        assert_eq!(record["event_name"], event["type"]);
        assert_eq!(record["trace_id"], event["trace_id"], "its trace context");
        assert_eq!(record["span_id"], event["span_id"]);
        assert_eq!(record["time"], event["timestamp_unix_nano"]);
        assert_eq!(record["body"], event["message"]);
        let severity = match event["severity"].as_str().expect("severity") {
            "debug" => 5,
            "info" => 9,
            "warning" => 13,
            "error" => 17,
            _ => 21,
        };
        assert_eq!(record["severity_number"], severity);
        if let Some(pod) = event["entities"]["pod_name"].as_str() {
            assert_eq!(record["attributes"]["k8s.pod.name"], pod);
        }
        assert_eq!(record["resource"]["service.name"], "tapio-collector");
    }
}

fn run_against(endpoint: &str, extra: &[&str]) -> (String, Duration) {
    let yaml = config(
        "collectors:\n  synthetic: { config: { events: 3000, scenario: oom-cascade, seed: 11 } }\n",
    );
    let started = Instant::now();
    let out = Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args(["--server", "none", "--stdout", "--otel-endpoint", endpoint])
        .args(extra)
        .stdout(Stdio::null())
        .output()
        .expect("collector runs");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    (stderr, started.elapsed())
}

#[test]
fn an_endpoint_that_never_answers_holds_the_exit_only_for_the_shutdown_timeout() {
    // Accepts connections (the kernel does) but never speaks: the worst kind of down.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let endpoint = silent.local_addr().expect("addr").to_string();
    let (stderr, took) = run_against(&endpoint, &["--otel-shutdown-timeout", "1s"]);
    assert!(
        took < Duration::from_secs(5),
        "the exit took {took:?}: {stderr}"
    );
    // Every span is accounted for: as many dropped as when the endpoint refuses at once.
    let (refused, _) = run_against(&format!("127.0.0.1:{}", free_port()), &[]);
    let dropped = last_status(&stderr, "spans_dropped");
    assert!(dropped > 0, "{stderr}");
    assert_eq!(
        dropped,
        last_status(&refused, "spans_dropped"),
        "{stderr}\n{refused}"
    );
    assert_eq!(last_status(&stderr, "spans_exported"), 0);
}
