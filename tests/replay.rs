//! The replay collector: a captured `--stdout` run replayed through semantic correlation
//! gives the same incidents; bad lines are skipped and named; stdin works like a file.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use common::{COLLECTOR, config, text};
use serde_json::Value;

fn collector(yaml: &str, stdin: Option<&[u8]>) -> Output {
    let file = config(yaml);
    let mut child = Command::new(COLLECTOR)
        .arg("--config")
        .arg(file.path())
        .args([
            "--server",
            "none",
            "--stdout",
            "--otel-endpoint",
            "none",
            "--correlation",
            "semantic",
        ])
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collector runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("writes stdin");
    }
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "{}", text(&out.stderr));
    out
}

fn events(out: &Output) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect()
}

/// A live run of the oom-cascade scenario, as `--stdout` wrote it.
fn capture() -> (tempfile::NamedTempFile, Vec<Value>) {
    let out = collector(
        "collectors:\n  synthetic: { config: { events: 3000, scenario: oom-cascade, seed: 7, pods: 20 } }\n",
        None,
    );
    let file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), &out.stdout).expect("writes the capture");
    (file, events(&out))
}

/// Each event's group as the index of the first event of that group, and its causal links
/// as (rule, index of the cause): the incidents, independent of ids.
/// One event's place in the incidents: (its group, its causal links).
type Place = (Option<usize>, Vec<(String, usize)>);

fn incidents(events: &[Value]) -> Vec<Place> {
    let index: HashMap<&str, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e["id"].as_str().expect("id"), i))
        .collect();
    let mut first_of_group: HashMap<String, usize> = HashMap::new();
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let correlation = &e["correlation"];
            let group = correlation["group_id"]
                .as_str()
                .map(|g| *first_of_group.entry(g.to_owned()).or_insert(i));
            let links = correlation["causal_links"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    (
                        l["rule"].as_str().expect("rule").to_owned(),
                        index[l["cause_event_id"].as_str().expect("cause")],
                    )
                })
                .collect();
            (group, links)
        })
        .collect()
}

#[test]
fn a_replayed_run_gives_the_same_incidents_as_the_live_one() {
    let (capture, live) = capture();
    let grouped = live
        .iter()
        .filter(|e| e["correlation"]["causal_links"].is_array())
        .count();
    assert!(
        grouped > 10,
        "the scenario made incidents: {grouped} linked events"
    );

    // Fresh ids, correlation recomputed: the same groups, roots and links.
    let replayed = events(&collector(
        &format!(
            "collectors:\n  replay: {{ config: {{ path: {} }} }}\n",
            capture.path().display()
        ),
        None,
    ));
    assert_eq!(replayed.len(), live.len());
    assert!(
        replayed.iter().zip(&live).all(|(r, l)| r["id"] != l["id"]),
        "fresh ids"
    );
    assert_eq!(incidents(&replayed), incidents(&live));

    // Recorded ids kept: the recomputed correlation is the live one, field for field.
    let kept = events(&collector(
        &format!(
            "collectors:\n  replay: {{ config: {{ path: {}, keep_ids: true }} }}\n",
            capture.path().display()
        ),
        None,
    ));
    for (replayed, live) in kept.iter().zip(&live) {
        for field in ["id", "trace_id", "span_id", "parent_span_id", "correlation"] {
            assert_eq!(replayed[field], live[field], "{field}");
        }
    }

    // The same through stdin.
    let piped = events(&collector(
        "collectors:\n  replay: { config: { path: \"-\" } }\n",
        Some(&std::fs::read(capture.path()).expect("reads")),
    ));
    assert_eq!(incidents(&piped), incidents(&live));
}

#[test]
fn bad_lines_are_skipped_counted_and_named() {
    let (capture, live) = capture();
    let recorded = std::fs::read_to_string(capture.path()).expect("reads");
    let good: Vec<&str> = recorded.lines().take(3).collect();
    let unknown_type = good[0].replace(
        &format!("\"type\":{}", live[0]["type"]),
        "\"type\":\"nodots\"",
    );
    let lines = [
        good[0],
        "this is not JSON",
        good[1],
        "{\"type\":\"process.exec\"}",
        &unknown_type,
        good[2],
        "",
        "{\"id\":",
    ];
    let file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), lines.join("\n")).expect("writes");
    let out = collector(
        &format!(
            "collectors:\n  replay: {{ config: {{ path: {} }} }}\n",
            file.path().display()
        ),
        None,
    );
    assert_eq!(events(&out).len(), 3, "the good lines replay");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("lines=2,4,5,8"), "{stderr}");
    assert!(stderr.contains("unknown event type `nodots`"), "{stderr}");
    assert!(stderr.contains("replay/unreadable=4"), "counted: {stderr}");
}

#[test]
fn lines_that_are_not_utf8_or_carry_bad_ids_or_times_are_skipped_and_the_rest_replays() {
    let (capture, _) = capture();
    let recorded = std::fs::read_to_string(capture.path()).expect("reads");
    let good: Vec<&str> = recorded.lines().collect();
    // Right lengths, wrong characters: 16 two-byte characters are 32 bytes.
    let with = |field: &str, value: &str| {
        let line: Value = serde_json::from_str(good[0]).expect("JSON");
        let mut line = line.as_object().expect("an object").clone();
        line.insert(field.into(), Value::String(value.into()));
        serde_json::to_string(&line).expect("serializes")
    };
    let bad_trace = with("trace_id", &"é".repeat(16));
    let bad_span = with("span_id", &"é".repeat(8));
    let bad_group = {
        let line: Value = serde_json::from_str(good[0]).expect("JSON");
        let mut line = line.as_object().expect("an object").clone();
        line.insert(
            "correlation".into(),
            serde_json::json!({ "group_id": "é".repeat(16) }),
        );
        serde_json::to_string(&line).expect("serializes")
    };
    let far_future = {
        let line: Value = serde_json::from_str(good[0]).expect("JSON");
        let mut line = line.as_object().expect("an object").clone();
        line.insert("timestamp_unix_nano".into(), Value::from(1u64 << 63));
        serde_json::to_string(&line).expect("serializes")
    };
    let mut input: Vec<u8> = Vec::new();
    let mut bad = Vec::new();
    let mut line_number = 0;
    for (n, line) in good.iter().enumerate().take(2000) {
        line_number += 1;
        match n % 400 {
            100 => {
                input.extend_from_slice(b"{\"id\": \"\xff\xfe not utf-8\"}\n");
                bad.push(line_number);
            }
            200 => {
                input.extend_from_slice(bad_trace.as_bytes());
                input.push(b'\n');
                bad.push(line_number);
            }
            250 => {
                input.extend_from_slice(bad_span.as_bytes());
                input.push(b'\n');
                bad.push(line_number);
            }
            300 => {
                input.extend_from_slice(bad_group.as_bytes());
                input.push(b'\n');
                bad.push(line_number);
            }
            350 => {
                input.extend_from_slice(far_future.as_bytes());
                input.push(b'\n');
                bad.push(line_number);
            }
            _ => {
                input.extend_from_slice(line.as_bytes());
                input.push(b'\n');
                continue;
            }
        }
        // The good line displaced by a bad one follows it.
        line_number += 1;
        input.extend_from_slice(line.as_bytes());
        input.push(b'\n');
    }
    let replayed = good.len().min(2000);
    let file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), &input).expect("writes");
    let out = collector(
        &format!(
            "collectors:\n  replay: {{ config: {{ path: {} }} }}\n",
            file.path().display()
        ),
        None,
    );
    assert_eq!(events(&out).len(), replayed, "every good line replays");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("replay/unreadable={}", bad.len())),
        "{stderr}"
    );
    let named: Vec<String> = bad.iter().map(u64::to_string).collect();
    assert!(
        stderr.contains(&format!("lines={}", named.join(","))),
        "{stderr}"
    );
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    assert!(stderr.contains("past the year 2262"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
