//! End-to-end load run at the defaults: synthetic (`oom-cascade`) -> manager ->
//! correlation -> bridge -> tapio-server (`--sync full`, acked after a durable SQLite
//! commit) on loopback, as real processes; events/s and the collector's peak RSS with
//! basic correlation, with semantic (the default), and with semantic and the default
//! kernel collectors on (as root), beside two references measured in the same round:
//!
//! - the ceiling: the same client as the bridge (`TCP_NODELAY`, window 16) streaming the same
//!   events, pre-encoded in 1000-event batches, to a server built like tapio-server (its
//!   HTTP/2 settings, `TCP_NODELAY` on accepted connections, its request decoder, which
//!   walks each event's bytes) that acks each batch at once instead of committing it;
//! - tapio-server alone: that client against the real server.
//!
//! Rounds are interleaved (ceiling, server, basic, semantic, semantic + kernel), so
//! each ratio compares runs seconds apart on a noisy machine.
//!
//! Command: `cargo bench --bench e2e` (3 rounds of 1 000 000 events; `E2E_EVENTS=N`,
//! `E2E_ROUNDS=N` to change). Under `cargo test` it runs one 20 000-event round.
//! Machine and figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "event counts far below 2^52 become rates"
)]

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use support::processes::{
    ServerRun, free_port, kernel_collectors_here, peak_rss_kib, scrape, settle, start_collector,
    stop_collector, sum,
};
use tapio::bridge::{Batcher, PreEncoded};
use tapio::collectors::synthetic::{Scenario, SyntheticConfig, World};
use tapio::pb;
use tapio::server::wire::{RawCodec, RawRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

const BATCH: usize = 1000;
/// The bridge's default window of unacked batches.
const WINDOW: usize = 16;

type Acks = Pin<Box<dyn Stream<Item = Result<pb::TapioStreamEventsResponse, Status>> + Send>>;

/// Acks each batch as soon as tapio-server's decoder has parsed it.
struct AckEach;

impl tonic::server::StreamingService<RawRequest> for AckEach {
    type Response = pb::TapioStreamEventsResponse;
    type ResponseStream = Acks;
    type Future = tonic::codegen::BoxFuture<Response<Acks>, Status>;

    fn call(&mut self, request: Request<Streaming<RawRequest>>) -> Self::Future {
        let acks = request.into_inner().filter_map(|message| match message {
            Ok(RawRequest::Batch(batch)) => Some(Ok(pb::TapioStreamEventsResponse {
                payload: Some(pb::tapio_stream_events_response::Payload::Ack(pb::Ack {
                    batch_id: batch.batch_id,
                    status: pb::ack::Status::Ok.into(),
                    accepted: u32::try_from(batch.events.len()).unwrap_or(u32::MAX),
                    ..pb::Ack::default()
                })),
            })),
            _ => None,
        });
        Box::pin(async move { Ok(Response::new(Box::pin(acks) as Acks)) })
    }
}

/// `StreamEvents` through tapio-server's own codec, whatever the path.
#[derive(Clone)]
struct Ceiling;

impl tower::Service<http::Request<hyper::body::Incoming>> for Ceiling {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(16 << 20), Some(16 << 20));
            Ok(grpc.streaming(AckEach, request).await)
        })
    }
}

/// Serves the ceiling on `listener` with tapio-server's socket and HTTP/2 settings.
async fn serve_ceiling(listener: tokio::net::TcpListener) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let _ = rustix::net::sockopt::set_socket_keepalive(&tcp, true);
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http.timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(20));
            let _ = http
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(Ceiling))
                .await;
        });
    }
}

/// The synthetic collector's own events (`oom-cascade`, default seed), sealed in batches
/// as the bridge seals them; before correlation, so never larger than what the collector
/// sends.
fn batches(events: usize) -> Vec<Bytes> {
    let config = SyntheticConfig {
        scenario: Scenario::OomCascade,
        ..SyntheticConfig::default()
    };
    let mut world = World::new(&config, "bench".into(), 1_790_000_000_000_000_000);
    let mut sealer = Batcher::new("bench".into(), BATCH, Duration::from_hours(1), 1);
    (0..events)
        .filter_map(|_| {
            sealer
                .push(&world.next_event())
                .expect("a synthetic event fits")
        })
        .map(|s| s.bytes)
        .collect()
}

/// The ceiling, in-process on a runtime of its own: events/s.
fn ceiling(batches: &[Bytes]) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_ceiling(listener));
        stream_batches(&addr.to_string(), batches).await
    })
}

/// Streams pre-encoded batches with the bridge's client settings and window; events/s
/// until the last ack.
async fn stream_batches(addr: &str, batches: &[Bytes]) -> f64 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
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

/// The bare client against a fresh tapio-server: the server's own capacity.
fn server_only(batches: &[Bytes]) -> f64 {
    let server = ServerRun::start();
    let rate = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(stream_batches(
            &format!("127.0.0.1:{}", server.port),
            batches,
        ));
    assert_eq!(server.events_total(), (batches.len() * BATCH) as u64);
    rate
}

/// What a collector run gave: events/s of the synthetic flood and the peak RSS.
struct Run {
    rate: f64,
    peak_mib: u64,
}

/// The real collector, synthetic flood of `events` with correlation `mode` (and the
/// default kernel collectors with `kernel`), against a fresh tapio-server. The rate is
/// timed from the first moment the flood is seen until everything taken in by then is
/// acked, read from the collector's `/metrics`, so the probes' load time is left out.
fn end_to_end(events: usize, mode: &str, kernel: bool) -> Run {
    let server = ServerRun::start();
    let config = server.dir.path().join("bench.yaml");
    std::fs::write(
        &config,
        format!("collectors:\n  synthetic: {{ config: {{ events: {events}, rate: 0, scenario: oom-cascade }} }}\ncorrelation: {{ mode: {mode} }}\n"),
    )
    .expect("writes config");
    let metrics = free_port();
    let mut collector = start_collector(&config, &server, metrics, kernel);
    let spawned = Instant::now();
    let pid = collector.id();
    let mut peak = 0;
    let mut first: Option<(Instant, f64)> = None;
    let mut target: Option<f64> = None;
    let mut exited = false;
    let done = loop {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        // Without the endless kernel collectors the run ends once all is acked.
        if let Some(status) = collector.try_wait().expect("try_wait") {
            assert!(status.success(), "collector failed: {status}");
            exited = true;
            break Instant::now();
        }
        let Some(page) = scrape(metrics) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let now = Instant::now();
        let flood = sum(
            &page,
            "tapio_collector_events_accepted_total{collector=\"synthetic\"}",
        );
        if first.is_none() && flood > 0.0 {
            first = Some((now, flood));
        }
        // Everything any collector took in by the time the flood was all in; the kernel
        // collectors' few events keep coming after it.
        if target.is_none() && flood >= events as f64 {
            target = Some(sum(&page, "tapio_collector_events_accepted_total{"));
        }
        if let Some(target) = target
            && sum(&page, "tapio_events_delivered_total") >= target
        {
            break now;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // A flood over before the first scrape is timed from the start of the process.
    let (start, seen) = first.unwrap_or((spawned, 0.0));
    if !exited {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        stop_collector(collector);
    }
    assert!(
        server.events_total() >= events as u64,
        "every synthetic event stored"
    );
    Run {
        rate: (events as f64 - seen) / done.duration_since(start).as_secs_f64(),
        peak_mib: peak / 1024,
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn range(values: &[f64], scale: f64) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let max = values.iter().copied().fold(0.0, f64::max) * scale;
    format!("{min:.2}-{max:.2}")
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let events = env_or("E2E_EVENTS", if measuring { 1_000_000 } else { 20_000 });
    let rounds = env_or("E2E_ROUNDS", if measuring { 3 } else { 1 });
    let kernel = kernel_collectors_here("e2e");
    let batches = batches(events);
    let rows = ["ceiling", "server", "basic", "semantic", "semantic+kernel"];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut semantic_to_basic = Vec::new();
    for round in 1..=rounds {
        settle();
        let ceiling = ceiling(&batches);
        println!(
            "e2e round {round}: ceiling (tapio-server's transport and decoder, ack at once): {ceiling:.0} events/s"
        );
        let server = server_only(&batches);
        println!(
            "e2e round {round}: bare client -> tapio-server --sync full: {server:.0} events/s, {:.2} of the ceiling",
            server / ceiling
        );
        ratios[1].push(server / ceiling);
        let mut basic = 0.0;
        for (row, mode, with_kernel) in [
            (2, "basic", false),
            (3, "semantic", false),
            (4, "semantic", true),
        ] {
            if with_kernel && !kernel {
                continue;
            }
            let run = end_to_end(events, mode, with_kernel);
            println!(
                "e2e round {round}: collector ({}) -> tapio-server --sync full: {:.0} events/s, {:.2} of the ceiling, peak RSS {} MiB",
                rows[row],
                run.rate,
                run.rate / ceiling,
                run.peak_mib
            );
            ratios[row].push(run.rate / ceiling);
            match row {
                2 => basic = run.rate,
                3 => semantic_to_basic.push(run.rate / basic),
                _ => {}
            }
        }
    }
    for (row, values) in rows.iter().zip(&ratios).skip(1) {
        if !values.is_empty() {
            println!("e2e summary: {row}: {} of the ceiling", range(values, 1.0));
        }
    }
    println!(
        "e2e summary: semantic / basic in the same round: {}",
        range(&semantic_to_basic, 1.0)
    );
}
