//! The `otel` collector against real OTLP clients: the OpenTelemetry Python SDK with its
//! gRPC and HTTP exporters (`tests/peers/otel_app.py`), and raw requests for what no SDK
//! sends (malformed bodies, wrong content types, oversized and gzip requests, a full queue).

mod common;

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{COLLECTOR, Guard, config, free_port, spawn_collector};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use prost::Message as _;
use serde_json::Value;
use tonic_types::StatusExt as _;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/otel_app.py");

fn receiver_yaml(grpc: u16, http: u16, extra: &str) -> tempfile::NamedTempFile {
    config(&format!(
        "collectors:\n  otel:\n    config:\n      grpc_listen: 127.0.0.1:{grpc}\n      http_listen: 127.0.0.1:{http}\n      sample_ratio: 0.0\n      min_severity: warning\n{extra}"
    ))
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the Python app in `mode`; its printed JSON lines.
fn app(mode: &str, protocol: &str, endpoint: &str) -> Vec<Value> {
    let out = Command::new("python3")
        .args([APP, mode, "--protocol", protocol, "--endpoint", endpoint])
        .output()
        .expect("python3 runs (scripts/setup installs the OpenTelemetry SDK)");
    assert!(
        out.status.success(),
        "the app failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn the_python_sdk_over_grpc_and_http_becomes_app_spans_and_logs() {
    for protocol in ["grpc", "http"] {
        let (grpc, http) = (free_port(), free_port());
        let yaml = receiver_yaml(grpc, http, "");
        let collector = spawn_collector(yaml.path(), &["--server", "none"]);
        wait_listening(if protocol == "grpc" { grpc } else { http });
        let endpoint = if protocol == "grpc" {
            format!("http://127.0.0.1:{grpc}")
        } else {
            format!("http://127.0.0.1:{http}")
        };
        let spans = app("requests", protocol, &endpoint);
        assert_eq!(spans.len(), 3);
        let failed = spans
            .iter()
            .find(|s| s["status"] == "error")
            .expect("one request failed");
        // Only the failed request is kept (sample_ratio 0): the other two are counted.
        let events = collector.wait_for("app.span", 1);
        let logs = collector.wait_for("app.log", 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            collector.of("app.span").len(),
            1,
            "{protocol}: only the error span"
        );
        let span = &events[0];
        assert_eq!(span["trace_id"], failed["trace_id"], "{protocol}: {span:#}");
        assert_eq!(span["span_id"], failed["span_id"]);
        assert_eq!(span["severity"], "error");
        assert_eq!(span["source"], "otel");
        let attributes = &span["attributes"];
        assert_eq!(attributes["span.name"], "GET /cart/1");
        assert_eq!(attributes["span.kind"], "server");
        assert_eq!(attributes["otel.status_code"], "error");
        assert_eq!(attributes["service.name"], "checkout");
        assert_eq!(attributes["http.response.status_code"], 503);
        assert_eq!(attributes["kept"], "error");
        // The sender, from the SDK's resource: the app's own process.
        assert!(
            span["entities"]["pid"].as_u64().is_some_and(|p| p > 0),
            "{span:#}"
        );
        assert_eq!(
            span["entities"]["comm"]
                .as_str()
                .map(|c| c.starts_with("python")),
            Some(true),
            "{span:#}"
        );
        // The ERROR log record, inside the failed request's span; the INFO ones are not kept.
        assert_eq!(logs.len(), 1, "{protocol}: {logs:#?}");
        assert_eq!(logs[0]["message"], "payment failed");
        assert_eq!(logs[0]["trace_id"], failed["trace_id"]);
        assert_eq!(logs[0]["parent_span_id"], failed["span_id"]);
        assert_eq!(logs[0]["attributes"]["app.order"], 42);
        collector.stop();
    }
}

fn text_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// A request of `count` error spans, the `n`th of its kind (distinct ids).
fn error_spans(n: u32, count: u32) -> ExportTraceServiceRequest {
    let spans = (0..count)
        .map(|i| {
            let mut trace = [0u8; 16];
            trace[..4].copy_from_slice(&n.to_be_bytes());
            trace[4..8].copy_from_slice(&i.to_be_bytes());
            trace[15] = 1;
            Span {
                trace_id: trace.to_vec(),
                span_id: vec![7; 8],
                name: "GET /".into(),
                start_time_unix_nano: 1_790_000_000_000_000_000,
                end_time_unix_nano: 1_790_000_000_001_000_000,
                status: Some(Status {
                    code: status::StatusCode::Error as i32,
                    message: "boom".into(),
                }),
                ..Span::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text_kv("service.name", "load")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        }],
    }
}

/// One HTTP/1.1 POST; the status code, headers and body of the answer.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    // A server may answer (413) before it reads a large body; a reset then is fine.
    let _ = stream.write_all(body);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head, answer[split + 4..].to_vec())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

/// A bad request: its name, the status it must get, its headers and its body.
type Case<'a> = (&'a str, u16, Vec<(&'a str, &'a str)>, Vec<u8>);

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario: every bad request on both transports, then good ones"
)]
fn malformed_requests_get_the_right_answer_and_the_next_good_one_is_taken() {
    let (grpc, http) = (free_port(), free_port());
    let yaml = receiver_yaml(grpc, http, "      max_request_bytes: 64KiB\n");
    let collector = spawn_collector(yaml.path(), &["--server", "none"]);
    wait_listening(http);
    wait_listening(grpc);
    let protobuf = [("Content-Type", "application/x-protobuf")];
    let json = [("Content-Type", "application/json")];
    let good = error_spans(1, 2).encode_to_vec();

    let cases: Vec<Case> = vec![
        (
            "bad protobuf",
            400,
            protobuf.to_vec(),
            b"\xff\xff\xff garbage".to_vec(),
        ),
        (
            "bad JSON",
            400,
            json.to_vec(),
            b"{\"resourceSpans\": [".to_vec(),
        ),
        (
            "wrong content type",
            415,
            vec![("Content-Type", "text/plain")],
            good.clone(),
        ),
        ("oversized", 413, protobuf.to_vec(), vec![0u8; 200 * 1024]),
        (
            "oversized once decompressed",
            413,
            vec![
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "gzip"),
            ],
            gzip(&error_spans(2, 2000).encode_to_vec()),
        ),
        (
            "bad gzip",
            400,
            vec![
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "gzip"),
            ],
            b"not gzip at all".to_vec(),
        ),
        (
            "unknown encoding",
            415,
            vec![
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "br"),
            ],
            good.clone(),
        ),
    ];
    for (name, want, headers, body) in cases {
        let (code, head, answer) = post(http, "/v1/traces", &headers, &body);
        assert_eq!(code, want, "{name}: {head}");
        if want == 400 && headers.contains(&("Content-Type", "application/x-protobuf")) {
            let status = tonic_types::Status::decode(&answer[..]).expect("a google.rpc.Status");
            assert_eq!(status.code, 3, "{name}: INVALID_ARGUMENT");
            assert!(!status.message.is_empty());
        }
    }
    // The good ones, as protobuf, gzip and JSON: all taken after the bad ones.
    let (code, _, _) = post(http, "/v1/traces", &protobuf, &good);
    assert_eq!(code, 200);
    let gz = gzip(&error_spans(3, 2).encode_to_vec());
    let (code, _, _) = post(
        http,
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        &gz,
    );
    assert_eq!(code, 200);
    let body = serde_json::json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-app"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "GET /json", "kind": 2,
            "startTimeUnixNano": "1790000000000000000",
            "endTimeUnixNano": "1790000000002000000",
            "status": {"code": 2, "message": "bad"}
        }]}]
    }]});
    let (code, head, answer) = post(http, "/v1/traces", &json, body.to_string().as_bytes());
    assert_eq!(code, 200, "{head}: {}", String::from_utf8_lossy(&answer));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );

    // gRPC: garbage on the port, then an oversized message, then a good one.
    let mut garbage = TcpStream::connect(("127.0.0.1", grpc)).expect("connect");
    let _ = garbage.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x01\x02 not http2");
    drop(garbage);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .expect("connect");
        let refused = client
            .export(error_spans(4, 2000))
            .await
            .expect_err("over 64KiB is refused");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{refused:?}"
        );
        let answer = client.export(error_spans(5, 3)).await.expect("taken");
        assert!(answer.into_inner().partial_success.is_none());
    });
    // 2 (protobuf) + 2 (gzip) + 1 (JSON) + 3 (gRPC), and none of the refused ones.
    let spans = collector.wait_for("app.span", 8);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(collector.of("app.span").len(), 8, "{spans:#?}");
    let json_span = spans
        .iter()
        .find(|s| s["attributes"]["service.name"] == "json-app")
        .expect("the JSON span");
    assert_eq!(json_span["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(json_span["span_id"], "eee19b7ec3c1b174");
    assert_eq!(json_span["attributes"]["span.kind"], "server");
    // The client's runtime is not driven any more: its connection stays open and never
    // answers the server's goodbye, like a frozen application's. The agent stops anyway.
    collector.stop();
    drop(runtime);
}

#[test]
fn a_full_queue_answers_with_back_pressure_and_loses_nothing_it_took() {
    let (grpc, http) = (free_port(), free_port());
    let yaml = config(&format!(
        "orchestrator: {{ buffer_size: 64 }}\ncollectors:\n  otel:\n    config:\n      grpc_listen: 127.0.0.1:{grpc}\n      http_listen: 127.0.0.1:{http}\n      full_queue_wait: 100ms\n"
    ));
    // Nobody reads the collector's stdout until the end: the pipe fills, the pipeline
    // stops behind it, and the queue into it fills.
    let mut child = Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args(["--stdout", "--server", "none", "--otel-endpoint", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("collector starts");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Guard(child);
    wait_listening(http);
    let (mut accepted, mut n) = (0u64, 0u32);
    let (mut busy_http, mut busy_grpc) = (false, false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut client = runtime
        .block_on(TraceServiceClient::connect(format!(
            "http://127.0.0.1:{grpc}"
        )))
        .expect("connect");
    while !(busy_http && busy_grpc) {
        n += 1;
        assert!(n < 2000, "no back-pressure after {accepted} spans");
        let request = error_spans(n, 50);
        if n % 2 == 0 {
            let (code, head, _) = post(
                http,
                "/v1/traces",
                &[("Content-Type", "application/x-protobuf")],
                &request.encode_to_vec(),
            );
            match code {
                200 => accepted += 50,
                429 => {
                    assert!(
                        head.to_ascii_lowercase().contains("retry-after: 1"),
                        "{head}"
                    );
                    busy_http = true;
                }
                other => panic!("HTTP {other}: {head}"),
            }
        } else {
            match runtime.block_on(client.export(request)) {
                Ok(answer) => {
                    assert!(answer.into_inner().partial_success.is_none());
                    accepted += 50;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
                    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
                    busy_grpc = true;
                }
            }
        }
    }
    // Now read: every span that was accepted comes out, and once the queue drains a new
    // request is taken again.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = std::sync::Arc::clone(&lines);
    let reading = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            reader.lock().expect("lock").push(line);
        }
    });
    let started = Instant::now();
    loop {
        if runtime
            .block_on(client.export(error_spans(100_000, 50)))
            .is_ok()
        {
            accepted += 50;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the queue never drained"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(client);
    drop(runtime);
    let output = common::terminate(guard);
    assert!(output.status.success());
    reading.join().expect("the reader ends with the pipe");
    let spans = lines
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.contains("\"app.span\""))
        .count() as u64;
    assert_eq!(
        spans, accepted,
        "every accepted span came out, and no refused one"
    );
}
