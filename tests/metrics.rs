//! `/metrics` of the collector and of tapio-server, checked by Prometheus's own
//! `promtool check metrics` (Debian's `prometheus` package), and the Grafana dashboard in
//! the chart checked against what the two actually serve.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProcess, collector, config, free_port, http_get};

/// `promtool check metrics` on `page`: its complaints, if any.
fn promtool(page: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("writes the page");
    let out = child.wait_with_output().expect("promtool exits");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// The value of the first sample of `name` (with the exact label set `labels`, `""` for
/// none) in `page`.
fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{labels} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

/// Scrapes `port` until `ready` holds for the page, failing after 30 s.
fn scrape_until(port: u16, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, body) = http_get(port, "/metrics");
            assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
            if ready(&body) {
                return body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the page never got there"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every sample name on a page.
fn names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// Every metric the Grafana dashboard queries is one of the two pages'.
fn dashboard_queries_only(agent: &str, server: &str) {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/tapio-collector/dashboards/tapio-overview.json"
        ))
        .expect("the dashboard is in the chart"),
    )
    .expect("the dashboard is JSON");
    let served_names: BTreeSet<String> = names(agent).union(&names(server)).cloned().collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("each target has a query");
            let metrics: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|w| w.starts_with("tapio_") || w.starts_with("process_"))
                .collect();
            assert!(!metrics.is_empty(), "{expr} queries no metric of ours");
            for metric in metrics {
                queried += 1;
                assert!(
                    served_names.contains(metric),
                    "panel {:?} queries {metric}, which neither /metrics serves",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "the dashboard queries {queried} metrics");
}

#[test]
fn both_metrics_pages_pass_promtool_and_carry_what_an_operator_alerts_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_metrics = free_port();
    let server = ServerProcess::start(
        0,
        &dir.path().join("store"),
        &["--metrics-listen", &format!("127.0.0.1:{server_metrics}")],
    );
    let agent_metrics = free_port();
    let yaml = config("collectors:\n  synthetic: { config: { events: 0, rate: 2000, seed: 3 } }\n");
    let run = collector(
        yaml.path(),
        &[
            "--server",
            &server.address(),
            "--spool-dir",
            dir.path().join("spool").to_str().expect("utf-8"),
            "--flush-interval",
            "100ms",
            "--metrics-listen",
            &format!("127.0.0.1:{agent_metrics}"),
            "--memory-limit",
            "1GiB",
        ],
    );

    let agent = scrape_until(agent_metrics, |p| {
        sample(p, "tapio_batch_ack_latency_seconds_count", "").is_some_and(|n| n >= 5.0)
    });
    let server_page = scrape_until(server_metrics, |p| {
        sample(p, "tapio_server_batches_stored_total", "").is_some_and(|n| n >= 5.0)
    });
    promtool(&agent).unwrap_or_else(|e| panic!("collector /metrics: {e}\n{agent}"));
    promtool(&server_page).unwrap_or_else(|e| panic!("server /metrics: {e}\n{server_page}"));

    // The collector: process, queue, delivery, spool, correlation, export.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "tapio_correlation_open_groups",
        "tapio_correlation_index_entries",
        "tapio_events_pending",
        "tapio_spool_bytes",
        "tapio_spool_segments",
        "tapio_bridge_reconnects_total",
        "tapio_otel_spans_exported_total",
        "tapio_otel_spans_export_dropped_total",
    ] {
        assert!(sample(&agent, name, "").is_some(), "{name} in\n{agent}");
    }
    assert!(sample(&agent, "process_resident_memory_bytes", "").is_some_and(|b| b > 1e6));
    assert_eq!(sample(&agent, "tapio_bridge_connected", ""), Some(1.0));
    // A ceiling far above what the run needs: stated, and not shedding.
    assert_eq!(
        sample(&agent, "tapio_memory_limit_bytes", ""),
        Some(f64::from(1u32 << 30))
    );
    assert_eq!(sample(&agent, "tapio_memory_shedding", ""), Some(0.0));
    for name in [
        "tapio_collector_queue_depth",
        "tapio_ebpf_records_lost_total",
    ] {
        assert!(
            sample(&agent, name, "{collector=\"synthetic\"}").is_some(),
            "{name} in\n{agent}"
        );
    }
    // A histogram's buckets are cumulative and end with every observation.
    let count = sample(&agent, "tapio_batch_ack_latency_seconds_count", "").expect("count");
    assert_eq!(
        sample(
            &agent,
            "tapio_batch_ack_latency_seconds_bucket",
            "{le=\"+Inf\"}"
        ),
        Some(count)
    );

    // The server: ingest, commit latency, store size, streams, refusals by reason.
    assert!(sample(&server_page, "tapio_server_events_stored_total", "").is_some_and(|n| n > 0.0));
    assert!(
        sample(
            &server_page,
            "tapio_server_commit_latency_seconds_count",
            ""
        )
        .is_some_and(|n| n >= 5.0)
    );
    assert!(sample(&server_page, "tapio_server_store_bytes", "").is_some_and(|b| b > 4096.0));
    assert_eq!(
        sample(&server_page, "tapio_server_connected_collectors", ""),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &server_page,
            "tapio_server_batches_rejected_total",
            "{reason=\"malformed_event\"}"
        ),
        Some(0.0)
    );
    assert!(sample(&server_page, "process_open_fds", "").is_some());

    dashboard_queries_only(&agent, &server_page);

    drop(run);
    drop(server);
}
