//! Past one server, measured side by side in one run on this machine, every peer real
//! (PostgreSQL 15 and nats-server from Debian, fresh for each path):
//!
//! - the three paths, each timed from the collector's start until the store holds every
//!   event: collector -> gRPC -> tapio-server -> SQLite (today's path, `--sync full`, the
//!   reference), and collector -> JetStream -> tapio-server -> PostgreSQL with one server
//!   and with two;
//! - the capacity model's parts: one collector into JetStream, one stream's ingest (four
//!   publishers of pre-encoded batches), one server draining a full stream into
//!   PostgreSQL, the PostgreSQL store's writer alone.
//!
//! Fleet fan-in into one server (many concurrent streams) is measured by
//! `benches/growth.rs`.
//!
//! Command: `cargo bench --bench scale` (1 000 000 events a path; `SCALE_EVENTS` changes
//! it). Under `cargo test` it is a short smoke run. Figures: docs/benchmarks.md and
//! docs/scaling.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "event counts far below 2^52 become rates"
)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ServerProcess;
use common::peers::{Nats, Postgres, STREAM_MAX_BYTES};
use tapio::event::IdGenerator;
use tapio::server::store::{Batch, Location, Store, Sync};
use tapio::server::wire::RawEvent;

const BATCH: usize = 1000;

fn stats(args: &[&str]) -> u64 {
    common::stats_of(args).0
}

/// Waits until the store `args` names holds `n` events.
fn until_stored(args: &[&str], n: u64, limit: Duration) {
    let started = Instant::now();
    loop {
        let stored = stats(args);
        assert!(stored <= n, "more stored than sent: {stored}");
        if stored == n {
            return;
        }
        assert!(started.elapsed() < limit, "only {stored} of {n} stored");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn server(args: &[&str]) -> ServerProcess {
    let dir = tempfile::tempdir().expect("dir").keep();
    let mut command = Command::new(common::SERVER);
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn,tapio_server=info",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(args);
    ServerProcess::spawn(command)
}

/// A server reading `nats`'s stream into the PostgreSQL at `url`, with `extra` flags.
fn queue_server(url: &str, nats: &Nats, extra: &[&str]) -> ServerProcess {
    let nats = nats.url();
    let mut args = vec![
        "--store",
        url,
        "--nats",
        &nats,
        "--nats-max-bytes",
        STREAM_MAX_BYTES,
    ];
    args.extend_from_slice(extra);
    server(&args)
}

fn collector(yaml: &str, args: &[&str]) -> Child {
    let file = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(file.path(), yaml).expect("written");
    let (_, path) = file.keep().expect("kept");
    Command::new(common::COLLECTOR)
        .arg("--config")
        .arg(path)
        .args(["--log-level", "warn", "--otel-endpoint", "none"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("collector starts")
}

fn synthetic(events: usize) -> String {
    format!(
        "collectors:\n  synthetic: {{ config: {{ events: {events} }} }}\ncorrelation: {{ mode: basic }}\n"
    )
}

/// Today's path: events/s from the collector's start until SQLite holds them all.
fn direct(events: usize) -> f64 {
    let server = server(&["--sync", "full"]);
    let dir = server_dir(&server);
    let started = Instant::now();
    let mut run = collector(&synthetic(events), &["--server", &server.address()]);
    assert!(run.wait().expect("waits").success());
    until_stored(&["--data-dir", &dir], events as u64, Duration::from_mins(5));
    events as f64 / started.elapsed().as_secs_f64()
}

/// The data directory a server was started with (for `stats`).
fn server_dir(server: &ServerProcess) -> String {
    let pid = server.guard.0.id();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--data-dir")
        .expect("--data-dir");
    args[at + 1].clone()
}

/// Through JetStream into `servers` servers on one fresh PostgreSQL: events/s until the
/// store holds them all, and the collector's own rate into JetStream.
fn through_jetstream(events: usize, servers: usize) -> (f64, f64) {
    let pg = Postgres::start();
    let nats = Nats::start(&[]);
    let url = pg.url();
    let names: Vec<String> = (0..servers).map(|n| format!("s{n}")).collect();
    let _servers: Vec<ServerProcess> = names
        .iter()
        .map(|name| queue_server(&url, &nats, &["--name", name]))
        .collect();
    let yaml = format!(
        "{}server: {{ transport: nats }}\nnats: {{ url: \"{}\", stream: {{ max_bytes: {STREAM_MAX_BYTES} }} }}\n",
        synthetic(events),
        nats.url()
    );
    let started = Instant::now();
    let mut run = collector(&yaml, &[]);
    assert!(run.wait().expect("waits").success());
    let published = events as f64 / started.elapsed().as_secs_f64();
    until_stored(&["--store", &url], events as u64, Duration::from_mins(10));
    let rate = events as f64 / started.elapsed().as_secs_f64();
    if servers == 1 {
        let bytes = postgres_bytes(&url);
        println!(
            "scale/PostgreSQL size: {:.0} bytes an event (table, TOAST and indexes)",
            bytes as f64 / events as f64
        );
    }
    (rate, published)
}

/// Bytes PostgreSQL holds for the events table's partitions, indexes included.
fn postgres_bytes(url: &str) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connects");
        tokio::spawn(connection);
        client
            .query_one(
                "SELECT COALESCE(sum(pg_total_relation_size(i.inhrelid)), 0)::bigint
                 FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = 'events'",
                &[],
            )
            .await
            .expect("queries")
            .get(0)
    })
}

/// One stream's ingest: four publishers of pre-encoded batches (a window of 32 acks each),
/// then one server draining the full stream into PostgreSQL. Events/s of each.
fn stream_then_drain(events: usize) -> (f64, f64) {
    let pg = Postgres::start();
    let nats = Nats::start(&[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let publishers = 4;
    let per = events / publishers;
    let loads: Vec<Vec<(u64, Bytes)>> = (0..publishers)
        .map(|p| support::fleet::sealed(per, BATCH, &format!("gen-{p}"), 1))
        .collect();
    let url = nats.url();
    let ingest = runtime.block_on(async move {
        let client = async_nats::connect(&url).await.expect("connects");
        let js = async_nats::jetstream::new(client);
        tapio::nats::open_stream(
            &js,
            &tapio::nats::StreamSettings {
                max_bytes: 1 << 30,
                ..tapio::nats::StreamSettings::default()
            },
        )
        .await
        .expect("stream");
        let started = Instant::now();
        let tasks: Vec<_> = loads
            .into_iter()
            .enumerate()
            .map(|(p, batches)| {
                let js = js.clone();
                tokio::spawn(async move {
                    let mut pending = std::collections::VecDeque::new();
                    for (id, bytes) in batches {
                        let publish = async_nats::jetstream::message::PublishMessage::build()
                            .payload(bytes)
                            .message_id(format!("gen-{p}:{id}"));
                        pending.push_back(
                            js.send_publish("tapio.events", publish)
                                .await
                                .expect("published"),
                        );
                        if pending.len() >= 32 {
                            pending.pop_front().expect("one").await.expect("acked");
                        }
                    }
                    for ack in pending {
                        ack.await.expect("acked");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("joined");
        }
        let rate = (per * publishers) as f64 / started.elapsed().as_secs_f64();
        let mut stream = js.get_stream("TAPIO_EVENTS").await.expect("stream");
        let state = stream.info().await.expect("info").state.clone();
        println!(
            "scale/JetStream size: {:.0} bytes an event on disk ({} messages)",
            state.bytes as f64 / (per * publishers) as f64,
            state.messages
        );
        rate
    });
    let url = pg.url();
    let started = Instant::now();
    let _server = queue_server(&url, &nats, &[]);
    until_stored(
        &["--store", &url],
        (per * publishers) as u64,
        Duration::from_mins(10),
    );
    let drain = (per * publishers) as f64 / started.elapsed().as_secs_f64();
    (ingest, drain)
}

/// The PostgreSQL store's writer alone: pre-built batches, `concurrency` at once.
fn postgres_writer(events: usize, concurrency: usize) -> f64 {
    let pg = Postgres::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut ids = IdGenerator::new();
    let batches: Vec<Vec<RawEvent>> = (0..events / BATCH)
        .map(|_| {
            (0..BATCH)
                .map(|_| {
                    RawEvent::from_message(&tapio::pb::Event::from(support::tcp_connect(&mut ids)))
                        .expect("valid")
                })
                .collect()
        })
        .collect();
    let url = pg.url();
    runtime.block_on(async move {
        let store = Store::open(&Location::Postgres(url), Sync::Full, concurrency, "bench")
            .await
            .expect("opens");
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let started = Instant::now();
        let mut tasks = Vec::new();
        let total = batches.len() * BATCH;
        for (n, events) in batches.into_iter().enumerate() {
            let permit = Arc::clone(&permits).acquire_owned().await.expect("open");
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .write(Batch {
                        collector_id: "bench".into(),
                        batch_id: n as u64,
                        sequence: n as u64,
                        events,
                        groups: Vec::new(),
                    })
                    .await
                    .expect("commits");
                drop(permit);
            }));
        }
        for task in tasks {
            task.await.expect("joined");
        }
        total as f64 / started.elapsed().as_secs_f64()
    })
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let number = |name: &str, full: usize, smoke: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if measuring { full } else { smoke })
    };
    let events = number("SCALE_EVENTS", 1_000_000, 20_000);

    let reference = direct(events);
    println!(
        "scale/collector->gRPC->tapio-server->SQLite (--sync full): {reference:.0} events/s (reference, 1.00)"
    );
    for servers in [1, 2] {
        let (rate, published) = through_jetstream(events, servers);
        println!(
            "scale/collector->JetStream->{servers} tapio-server->PostgreSQL: {rate:.0} events/s, ratio {:.2} of the reference; the collector published {published:.0} events/s into JetStream",
            rate / reference
        );
    }
    let (ingest, drain) = stream_then_drain(events);
    println!(
        "scale/one JetStream stream, 4 publishers of pre-encoded batches: {ingest:.0} events/s; one tapio-server draining it into PostgreSQL: {drain:.0} events/s"
    );
    for concurrency in [1, 8] {
        let rate = postgres_writer(events, concurrency);
        println!(
            "scale/PostgreSQL store writer alone, {concurrency} batch(es) at once: {rate:.0} events/s"
        );
    }
}
