//! The `otel` collector under load, beside a peer: spans per second received over
//! OTLP/gRPC and turned into events, on one core, for tapio-collector and for rotel (`PyPI`
//! `rotel`, a Rust OpenTelemetry collector, with its blackhole exporter), driven by the
//! same generator of pre-encoded requests (512 spans each, the SDKs' default batch, over
//! 32 connections with one request in flight on each); and the latency
//! a span adds from its end (stamped by the client as it sends) to its event leaving
//! correlation, at a steady 50 000 spans/s, with the receiver and the semantic engine in
//! this process.
//!
//! Four receivers, each on CPU 1 (`taskset`), the generator on the other core:
//! - decode only: a bare tonic service of opentelemetry-proto's types that decodes each
//!   request and drops it, in this process on one pinned thread (what receiving costs);
//! - the `otel` collector alone, on one pinned thread in this process with the drain of
//!   its queue: every span (`sample_ratio: 1`) becomes an `app.span` event, then dropped;
//! - the whole agent: tapio-collector with one worker thread, keeping every span,
//!   correlating it (semantic) and writing it as a JSON line to /dev/null;
//! - rotel with its blackhole exporter (batches the spans and throws them away).
//!
//! Command: `cargo bench --bench otel` (10 s per run, three interleaved rounds;
//! `OTEL_SECONDS=N` to change; `OTEL_SPANS=N` spans per request). Under `cargo test` it runs a short smoke version. Figures:
//! docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "span counts far below 2^52 become rates"
)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind};
use prost::Message as _;
use tonic::codec::Codec;
use tonic::{Status, client::Grpc};

// As in tapio-collector.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Spans per request in the throughput runs by default: the OpenTelemetry SDKs' default
/// export batch (`OTEL_SPANS=N` to change).
const SPANS: usize = 512;

/// Spans per request in the throughput runs.
fn spans_per_request() -> usize {
    std::env::var("OTEL_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(SPANS)
}
/// Spans per request in the latency run: smaller batches, as an exporter that flushes
/// often sends.
const LATENCY_SPANS: usize = 100;
const IN_FLIGHT: usize = 32;

/// Sends pre-encoded requests as they are (the bridge's encoder); decodes the answer.
#[derive(Clone, Copy, Debug, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = tapio::bridge::BytesEncoder;
    type Decoder = tonic_prost::ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        tapio::bridge::BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// A request of `count` server spans of one service, the `n`th (distinct ids), ending at
/// `end` (Unix nanoseconds), each 2 ms long with a few attributes as HTTP servers have.
fn request(n: u64, count: usize, end: u64) -> ExportTraceServiceRequest {
    let spans = (0..count as u64)
        .map(|i| {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&n.to_be_bytes());
            trace[8..].copy_from_slice(&(i + 1).to_be_bytes());
            Span {
                trace_id: trace.to_vec(),
                span_id: (i + 1).to_be_bytes().to_vec(),
                parent_span_id: (i + 1000).to_be_bytes().to_vec(),
                name: "GET /api/cart".into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: end - 2_000_000,
                end_time_unix_nano: end,
                attributes: vec![
                    text("http.request.method", "GET"),
                    text("http.route", "/api/cart"),
                    text("url.path", "/api/cart/42"),
                    KeyValue {
                        key: "http.response.status_code".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::IntValue(200)),
                        }),
                        ..KeyValue::default()
                    },
                ],
                ..Span::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", "cart"),
                    text("k8s.pod.uid", "6f1c2d9e-0000-4000-8000-000000000001"),
                    text("k8s.namespace.name", "shop"),
                    text("k8s.pod.name", "cart-7d9f-abcde"),
                ],
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

/// Sends pre-encoded requests to `port` over `IN_FLIGHT` connections, one request in
/// flight on each, for `seconds`: spans acked
/// per second (a partial success's rejected spans do not count), and the requests refused
/// with back-pressure (sent again).
async fn load(port: u16, seconds: f64) -> (f64, u64) {
    let now = tapio::event::unix_nanos_now();
    let spans = spans_per_request();
    let requests: Arc<Vec<Bytes>> = Arc::new(
        (0..64)
            .map(|n| Bytes::from(request(n, spans, now).encode_to_vec()))
            .collect(),
    );
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .tcp_nodelay(true);
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..IN_FLIGHT {
        // A connection each, as many applications' exporters would have.
        let channel = endpoint.connect().await.expect("the receiver listens");
        let requests = Arc::clone(&requests);
        let (acked, refused) = (Arc::clone(&acked), Arc::clone(&refused));
        tasks.push(tokio::spawn(async move {
            let mut client = Grpc::new(channel);
            let path = http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            );
            let mut n = worker;
            while Instant::now() < deadline {
                client.ready().await.expect("ready");
                let body = requests[n % requests.len()].clone();
                n += IN_FLIGHT;
                match client
                    .unary(tonic::Request::new(body), path.clone(), Raw)
                    .await
                {
                    Ok(answer) => {
                        let rejected = answer
                            .into_inner()
                            .partial_success
                            .map_or(0, |p| p.rejected_spans);
                        acked.fetch_add(
                            spans as u64 - u64::try_from(rejected).unwrap_or(0),
                            Ordering::Relaxed,
                        );
                    }
                    // Back-pressure: the receiver is at its limit; ask again.
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => panic!("the receiver failed: {status}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a load task");
    }
    (
        acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        refused.load(Ordering::Relaxed),
    )
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, child: &mut Child) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the receiver exited"
        );
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// tapio-collector with the `otel` collector on CPU 1.
fn tapio(port: u16) -> (Child, tempfile::NamedTempFile) {
    let yaml = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(
        yaml.path(),
        format!(
            "orchestrator: {{ workers: 1, status_interval: 1h }}\ncollectors:\n  otel:\n    config: {{ grpc_listen: \"127.0.0.1:{port}\", http_listen: none, sample_ratio: 1.0 }}\ncorrelation: {{ mode: semantic }}\n"
        ),
    )
    .expect("config");
    let collector = env!("CARGO_BIN_EXE_tapio-collector");
    let child = Command::new("taskset")
        .args(["-c", "1", collector, "--config"])
        .arg(yaml.path())
        .args(["--server", "none", "--stdout", "--otel-endpoint", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("taskset and the collector run");
    (child, yaml)
}

/// rotel's agent binary, from the `rotel` wheel scripts/setup installs.
fn rotel_binary() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && std::path::Path::new(&path).exists()).then_some(path)
}

/// rotel on CPU 1, receiving OTLP/gRPC on `port`, exporting to its blackhole.
fn rotel(binary: &str, port: u16) -> Child {
    Command::new("taskset")
        .args(["-c", "1", binary, "start", "--otlp-grpc-endpoint"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--exporter", "blackhole"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rotel runs")
}

/// One throughput run against `child` listening on `port`.
/// Spans/s, requests refused, and the share of a core the receiver used meanwhile.
fn run(
    runtime: &tokio::runtime::Runtime,
    mut child: Child,
    port: u16,
    seconds: f64,
) -> (f64, u64, f64) {
    wait_listening(port, &mut child);
    // taskset execs the receiver: the same pid.
    let before = cpu_seconds(child.id());
    let started = Instant::now();
    let (rate, refused) = runtime.block_on(load(port, seconds));
    let used = (cpu_seconds(child.id()) - before) / started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (rate, refused, used)
}

/// CPU time (user and system) process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// CPU time (user and system) in a `/proc/.../stat` file, in seconds.
fn cpu_seconds_of(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |at: usize| {
        fields
            .get(at)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 / 100.0
}

/// The `otel` collector, keeping every span, on `port` in this process: its queue, which
/// closes once `shutdown` is cancelled.
async fn start_collector(
    port: u16,
    shutdown: &tokio_util::sync::CancellationToken,
    directory: Arc<tapio::metadata::PodDirectory>,
) -> tapio::manager::FanIn {
    let config = tapio::config::Config::from_yaml(
        &format!(
            "collectors:\n  otel:\n    config: {{ grpc_listen: \"127.0.0.1:{port}\", http_listen: none, sample_ratio: 1.0 }}\n"
        ),
        "bench",
    )
    .expect("config");
    let telemetry = Arc::new(tapio::telemetry::Telemetry::default());
    let mut manager = tapio::manager::Manager::new(telemetry, 10_000, shutdown.clone());
    let context = tapio::collectors::BuildContext {
        node_name: "bench-node".into(),
        directory,
    };
    for built in config.collectors.build(&context) {
        assert!(manager.start(built).await, "the otel collector starts");
    }
    manager.into_fan_in()
}

/// The receiver and the semantic engine in this process, the generator sending one
/// request of `LATENCY_SPANS` spans every `LATENCY_SPANS / rate` seconds, each stamped as it is sent: how
/// long from a span's end to its event leaving correlation (p50, p99, max, in µs).
async fn latency(rate: u64, seconds: f64) -> (f64, f64, f64, u64) {
    let port = free_port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let directory = tapio::metadata::PodDirectory::new();
    let mut fan_in = start_collector(port, &shutdown, Arc::clone(&directory)).await;
    let settings = tapio::correlation::CorrelationConfig {
        app_spans: true,
        ..tapio::correlation::CorrelationConfig::default()
    };
    let engine = tokio::spawn(async move {
        let mut correlator =
            tapio::correlation::build_with(&settings, "bench-node", Some(directory));
        let mut batch = Vec::with_capacity(1024);
        let mut latencies = Vec::new();
        while fan_in.recv_many(&mut batch, 1024).await > 0 {
            for event in &mut batch {
                correlator.process(event);
                let left = tapio::event::unix_nanos_now();
                latencies.push(left.saturating_sub(event.timestamp));
            }
            batch.clear();
            let _ = correlator.take_closed();
        }
        latencies
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("the receiver listens");
    let mut client = Grpc::new(channel);
    let path = http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let every = Duration::from_secs_f64(LATENCY_SPANS as f64 / rate as f64);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0;
    while Instant::now() < deadline {
        ticker.tick().await;
        n += 1;
        let body =
            Bytes::from(request(n, LATENCY_SPANS, tapio::event::unix_nanos_now()).encode_to_vec());
        client.ready().await.expect("ready");
        client
            .unary(tonic::Request::new(body), path.clone(), Raw)
            .await
            .expect("taken");
    }
    shutdown.cancel();
    let mut latencies = engine.await.expect("the engine");
    latencies.sort_unstable();
    #[allow(clippy::cast_sign_loss, reason = "q is from 0 to 1")]
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    (at(0.5), at(0.99), at(1.0), latencies.len() as u64)
}

/// Decodes each request (tonic and opentelemetry-proto, as the collector's own service)
/// and drops it: what receiving costs before anything is made of it.
struct DecodeOnly;

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for DecodeOnly
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        drop(std::hint::black_box(request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The `otel` collector alone in this process, on one thread pinned to CPU 1 with the
/// drain of its queue: spans received and turned into events per second, and the share of
/// that core the thread used. The same scope as rotel with its blackhole exporter: receive,
/// decode, make the records, throw them away.
fn receive_only(seconds: f64, bare: bool) -> (f64, u64, f64) {
    let port = free_port();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    let receiver = std::thread::spawn(move || {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|l| l.file_name().and_then(|t| t.to_str()).map(str::to_owned))
            .expect("this thread's id");
        let pinned = Command::new("taskset")
            .args(["-p", "-c", "1", &tid])
            .stdout(Stdio::null())
            .status()
            .expect("taskset runs");
        assert!(pinned.success(), "pinned to CPU 1");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            if bare {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                let service = opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer::new(DecodeOnly)
                    .max_decoding_message_size(4 << 20);
                let _ = ready_tx.send(tid);
                tonic::transport::Server::builder()
                    .max_frame_size(Some(256 * 1024))
                    .initial_stream_window_size(Some(4 << 20))
                    .initial_connection_window_size(Some(16 << 20))
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stopping.cancelled_owned())
                    .await
                    .expect("the bare service");
                return u64::MAX;
            }
            let mut fan_in =
                start_collector(port, &stopping, tapio::metadata::PodDirectory::new()).await;
            let _ = ready_tx.send(tid);
            let mut batch = Vec::with_capacity(1024);
            let mut events = 0u64;
            while fan_in.recv_many(&mut batch, 1024).await > 0 {
                events += batch.len() as u64;
                batch.clear();
            }
            events
        })
    });
    let tid = ready_rx.recv().expect("the receiver starts");
    let thread_cpu = || cpu_seconds_of(&format!("/proc/self/task/{tid}/stat"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = thread_cpu();
    let started = Instant::now();
    let (rate, refused) = runtime.block_on(load(port, seconds));
    let used = (thread_cpu() - before) / started.elapsed().as_secs_f64();
    // The generator's connections close with its runtime, so the receiver's graceful
    // shutdown has nothing to wait for.
    drop(runtime);
    stop.cancel();
    let events = receiver.join().expect("the receiver thread");
    assert!(
        bare || events as f64 >= rate * seconds * 0.9,
        "every acked span became an event"
    );
    (rate, refused, used)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("OTEL_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 10.0 } else { 0.5 });
    let rounds = if measuring { 3 } else { 1 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let peer = rotel_binary();
    if peer.is_none() {
        assert!(!measuring, "rotel is not installed: run scripts/setup");
        println!("otel: rotel is not installed (scripts/setup installs it); tapio alone");
    }
    for round in 1..=rounds {
        let (bare, _, cpu) = receive_only(seconds, true);
        println!(
            "otel/round {round}: decode only (tonic + opentelemetry-proto, dropped, one thread): {bare:.0} spans/s, {cpu:.2} cores"
        );
        let (alone, refused, cpu) = receive_only(seconds, false);
        println!(
            "otel/round {round}: otel collector alone (receive, decode, app.span events, one thread): {alone:.0} spans/s, {cpu:.2} cores, {refused} requests refused with back-pressure; {:.2} of decode only",
            alone / bare
        );
        let port = free_port();
        let (child, _yaml) = tapio(port);
        let (agent, refused, cpu) = run(&runtime, child, port, seconds);
        println!(
            "otel/round {round}: tapio-collector (otel, semantic, JSON out): {agent:.0} spans/s, {cpu:.2} cores, {refused} requests refused with back-pressure"
        );
        if let Some(binary) = &peer {
            let port = free_port();
            let (theirs, refused, cpu) = run(&runtime, rotel(binary, port), port, seconds);
            println!(
                "otel/round {round}: rotel (blackhole): {theirs:.0} spans/s, {cpu:.2} cores, {refused} requests refused with back-pressure; collector alone/rotel {:.2}, whole agent/rotel {:.2}",
                alone / theirs,
                agent / theirs
            );
        }
    }
    let rate = if measuring { 50_000 } else { 5_000 };
    let threads = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (p50, p99, max, events) = threads.block_on(latency(rate, seconds));
    println!(
        "otel/latency at {rate} spans/s ({events} spans): span end -> out of correlation p50 {p50:.0} µs, p99 {p99:.0} µs, max {max:.0} µs"
    );
}
