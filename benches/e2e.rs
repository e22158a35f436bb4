//! End-to-end load run: synthetic -> manager -> correlation -> bridge -> tapio-server
//! (acked after a durable SQLite commit) on loopback, as real processes; events/s and the
//! collector's peak RSS, beside a ceiling measured in the same run: a bare tonic client
//! streaming the same kind of pre-encoded batches (1000 events, window 8) to a server that
//! decodes each batch and acks it at once.
//!
//! Command: `cargo bench --bench e2e` (2 000 000 events; `E2E_EVENTS=N` to change).
//! Under `cargo test` it runs a 20 000-event smoke version. Machine and figures:
//! docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "event counts far below 2^52 become rates"
)]

mod support;

use std::pin::Pin;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tapio::bridge::{Batcher, PreEncoded};
use tapio::event::IdGenerator;
use tapio::pb;
use tapio::pb::tapio_service_server::{TapioService, TapioServiceServer};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

const BATCH: usize = 1000;
const WINDOW: usize = 8;

/// Acks every batch as soon as it is decoded.
struct AckOnly;

#[tonic::async_trait]
impl TapioService for AckOnly {
    type StreamEventsStream =
        UnboundedReceiverStream<Result<pb::TapioStreamEventsResponse, Status>>;
    type SubscribeToEventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

    async fn stream_events(
        &self,
        request: Request<Streaming<pb::TapioStreamEventsRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(pb::tapio_stream_events_request::Payload::Batch(batch)) =
                    message.payload
                {
                    let ack = pb::Ack {
                        batch_id: batch.batch_id,
                        status: pb::ack::Status::Ok.into(),
                        accepted: batch.events.len() as u32,
                        ..pb::Ack::default()
                    };
                    let _ = tx.send(Ok(pb::TapioStreamEventsResponse {
                        payload: Some(pb::tapio_stream_events_response::Payload::Ack(ack)),
                    }));
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn get_events(
        &self,
        _: Request<pb::GetEventsRequest>,
    ) -> Result<Response<pb::GetEventsResponse>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }

    async fn get_semantic_groups(
        &self,
        _: Request<pb::GetSemanticGroupsRequest>,
    ) -> Result<Response<pb::GetSemanticGroupsResponse>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }

    async fn subscribe_to_events(
        &self,
        _: Request<pb::SubscribeToEventsRequest>,
    ) -> Result<Response<Self::SubscribeToEventsStream>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }

    async fn health_check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        Err(Status::unimplemented("ceiling server"))
    }
}

/// The ceiling: pre-encoded batches over one stream to an ack-only server.
async fn ceiling(events: usize) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TapioServiceServer::new(AckOnly).max_decoding_message_size(16 << 20))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    stream_batches(&addr.to_string(), events).await
}

/// Streams pre-encoded batches with a window of unacked batches; events/s until the last ack.
async fn stream_batches(addr: &str, events: usize) -> f64 {
    let mut ids = IdGenerator::new();
    let mut sealer = Batcher::new("bench".into(), BATCH, Duration::from_hours(1), 1);
    let batches: Vec<Bytes> = (0..events)
        .filter_map(|_| {
            sealer
                .push(&support::tcp_connect(&mut ids))
                .expect("a small event fits")
        })
        .map(|s| s.bytes)
        .collect();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel(WINDOW + 1);
    let started = Instant::now();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tapio.v1.TapioService/StreamEvents");
    let mut responses = grpc
        .streaming(Request::new(ReceiverStream::new(rx)), path, PreEncoded)
        .await
        .expect("stream")
        .into_inner();
    let total = batches.len();
    let mut sent = 0;
    let mut acked = 0;
    while acked < total {
        while sent < total && sent - acked < WINDOW {
            tx.send(batches[sent].clone()).await.expect("open");
            sent += 1;
        }
        responses.message().await.expect("ack").expect("open");
        acked += 1;
    }
    (total * BATCH) as f64 / started.elapsed().as_secs_f64()
}

/// Peak RSS of a process so far, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// Lets the kernel finish writing back earlier files (the build, the previous run's store)
/// first, so one run's I/O does not land in the next one's figure.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// A tapio-server process with a fresh store.
struct ServerRun {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ServerRun {
    fn start(sync: &str) -> Self {
        settle();
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let child = Command::new(env!("CARGO_BIN_EXE_tapio-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--sync", sync])
            .args(["--log-level", "warn"])
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port, dir }
    }

    fn events_total(&self) -> u64 {
        let totals = Command::new(env!("CARGO_BIN_EXE_tapio-server"))
            .arg("stats")
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()
            .expect("stats");
        let value: serde_json::Value = serde_json::from_slice(&totals.stdout).expect("JSON");
        value["events_total"].as_u64().expect("events_total")
    }
}

impl Drop for ServerRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare streaming client against a fresh tapio-server: the server's own capacity.
fn server_only(events: usize, sync: &str) -> f64 {
    let server = ServerRun::start(sync);
    let rate = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(stream_batches(
            &format!("127.0.0.1:{}", server.port),
            events,
        ));
    assert_eq!(server.events_total(), (events / BATCH * BATCH) as u64);
    rate
}

/// The real collector against a fresh tapio-server: events/s and the collector's peak RSS.
fn end_to_end(events: usize, rate: u64, sync: &str) -> (f64, u64) {
    let server = ServerRun::start(sync);
    let config = server.dir.path().join("bench.yaml");
    std::fs::write(
        &config,
        format!("collectors:\n  synthetic: {{ config: {{ events: {events}, rate: {rate} }} }}\ncorrelation: {{ mode: basic }}\n"),
    )
    .expect("writes config");
    let started = Instant::now();
    let mut collector = Command::new(env!("CARGO_BIN_EXE_tapio-collector"))
        .arg("--config")
        .arg(&config)
        .args([
            "--server",
            &format!("127.0.0.1:{}", server.port),
            "--log-level",
            "warn",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("collector starts");
    let mut peak = 0;
    let status = loop {
        if let Some(status) = collector.try_wait().expect("try_wait") {
            break status;
        }
        peak = peak.max(peak_rss_kib(collector.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    assert!(status.success(), "collector failed");
    assert_eq!(server.events_total(), events as u64, "every event stored");
    (events as f64 / elapsed.as_secs_f64(), peak)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let events: usize = std::env::var("E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 2_000_000 } else { 20_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    settle();
    let ceiling = runtime.block_on(ceiling(events));
    drop(runtime);
    println!("e2e/ceiling (bare tonic stream, ack-only server): {ceiling:.0} events/s");
    for sync in ["normal", "full"] {
        let server_only = server_only(events, sync);
        println!(
            "e2e/bare client->tapio-server (--sync {sync}): {server_only:.0} events/s, ratio {:.2} of ceiling",
            server_only / ceiling
        );
        let (rate, rss) = end_to_end(events, 0, sync);
        println!(
            "e2e/collector->tapio-server (--sync {sync}): {rate:.0} events/s, ratio {:.2} of ceiling, collector peak RSS {} MiB",
            rate / ceiling,
            rss / 1024
        );
    }
    // The footprint target is at a sustained 100k events/s, not at full speed.
    let sustained = events / 2;
    let (rate, rss) = end_to_end(sustained, 100_000, "normal");
    println!(
        "e2e/collector at a sustained 100k events/s ({sustained} events): {rate:.0} events/s delivered, collector peak RSS {} MiB",
        rss / 1024
    );
}
