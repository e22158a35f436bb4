//! A fleet of collectors as one server sees it: many concurrent gRPC streams, each sending
//! pre-encoded batches at a node's modest rate, every ack timed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tapio::bridge::{Batcher, PreEncoded};
use tapio::event::IdGenerator;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::processes::ServerRun;

/// Events in each batch a stream sends.
pub const EVENTS_PER_BATCH: usize = 100;
/// How often a stream sends one: 100 events every 200 ms is 500 events/s, a busy node's
/// rate after the collector's own filtering.
pub const BATCH_EVERY: Duration = Duration::from_millis(200);

/// `n` events sealed into batches of `per_batch`, as the bridge seals them.
pub fn sealed(n: usize, per_batch: usize, collector: &str, first_id: u64) -> Vec<(u64, Bytes)> {
    let mut ids = IdGenerator::new();
    let mut batcher = Batcher::new(
        collector.into(),
        per_batch,
        Duration::from_hours(1),
        first_id,
    );
    let mut out: Vec<(u64, Bytes)> = (0..n)
        .filter_map(|_| batcher.push(&super::tcp_connect(&mut ids)).expect("fits"))
        .map(|s| (s.batch_id, s.bytes))
        .collect();
    out.extend(batcher.seal().map(|s| (s.batch_id, s.bytes)));
    out
}

/// Resident memory of a process, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

/// What one fan-in run measured.
pub struct FanIn {
    /// Events sent (and acked: every stream waits for its last ack).
    pub events: u64,
    /// Acked events per second, from the start to the last ack.
    pub rate: f64,
    /// Ack latency, batch sent to ack received.
    pub p50: Duration,
    /// The same, 99th percentile.
    pub p99: Duration,
    /// The server's RSS before the streams opened.
    pub idle_rss_kib: u64,
    /// The server's highest RSS during the run (sampled every 100 ms).
    pub peak_rss_kib: u64,
}

/// `streams` concurrent streams into `server`, one connection each, every stream a batch
/// of [`EVENTS_PER_BATCH`] every [`BATCH_EVERY`] for `seconds`, the first one period after
/// the start, so that acked events/s can only reach the offered rate, never pass it.
#[allow(
    clippy::cast_precision_loss,
    reason = "event counts far below 2^52 become rates"
)]
pub fn fan_in(server: &ServerRun, streams: usize, seconds: u64) -> FanIn {
    let address = format!("127.0.0.1:{}", server.port);
    let pid = server.pid();
    let per_stream =
        usize::try_from(Duration::from_secs(seconds).as_millis() / BATCH_EVERY.as_millis())
            .expect("small");
    let loads: Vec<Vec<(u64, Bytes)>> = (0..streams)
        .map(|s| {
            sealed(
                per_stream * EVENTS_PER_BATCH,
                EVENTS_PER_BATCH,
                &format!("node-{s}"),
                1,
            )
        })
        .collect();
    let idle_rss_kib = rss_kib(pid);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let peak = Arc::new(AtomicU64::new(idle_rss_kib));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let (mut latencies, elapsed) = runtime.block_on(async move {
        let started = Instant::now();
        // A fleet's nodes are not in step: stream n sends at its own phase in the period.
        let phase = BATCH_EVERY / u32::try_from(streams).expect("streams fit u32");
        let tasks: Vec<_> = loads
            .into_iter()
            .enumerate()
            .map(|(n, batches)| {
                let address = address.clone();
                let first = started + BATCH_EVERY + phase * u32::try_from(n).expect("fits");
                tokio::spawn(async move { one_stream(&address, batches, first).await })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("joined"));
        }
        (latencies, started.elapsed())
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert_eq!(latencies.len(), streams * per_stream, "every batch acked");
    latencies.sort_unstable();
    let events = (streams * per_stream * EVENTS_PER_BATCH) as u64;
    FanIn {
        events,
        rate: events as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        idle_rss_kib,
        peak_rss_kib: peak.load(Ordering::Relaxed),
    }
}

/// One collector-like stream: a batch every [`BATCH_EVERY`] from `first`, each ack's
/// latency.
async fn one_stream(address: &str, batches: Vec<(u64, Bytes)>, first: Instant) -> Vec<Duration> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tapio.v1.TapioService/StreamEvents");
    let mut responses = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            path,
            PreEncoded,
        )
        .await
        .expect("stream")
        .into_inner();
    let total = batches.len();
    let sent_at = Arc::new(Mutex::new(HashMap::new()));
    let times = Arc::clone(&sent_at);
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(first.into(), BATCH_EVERY);
        for (id, bytes) in batches {
            tick.tick().await;
            times.lock().expect("lock").insert(id, Instant::now());
            if tx.send(bytes).await.is_err() {
                return;
            }
        }
        // Held open until the last ack arrives (the receiver ends the call).
        std::future::pending::<()>().await;
    });
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        let Some(response) = responses.message().await.expect("acks") else {
            break;
        };
        if let Some(tapio::pb::tapio_stream_events_response::Payload::Ack(ack)) = response.payload
            && let Some(at) = sent_at.lock().expect("lock").remove(&ack.batch_id)
        {
            latencies.push(at.elapsed());
        }
    }
    sender.abort();
    latencies
}
