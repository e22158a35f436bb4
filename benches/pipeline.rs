//! Manager fan-in throughput and basic correlation per event.
//!
//! Ceiling in the same run: one bare tokio mpsc channel carrying the same events
//! (`bare_channel`), against two collectors' queues merged by the manager's fan-in
//! (`manager_fan_in`). Basic correlation is measured per event against the 2M events/s per
//! core that DESIGN.md sets for correlation.
//!
//! Machine: 2 cores, Debian 12, kernel 6.18. Command: `cargo bench --bench pipeline`.
//! Figures: docs/benchmarks.md.
#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented public fn"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tapio::correlation::{Basic, Correlator};
use tapio::event::{Event, IdGenerator};
use tapio::manager::FanIn;
use tapio::source_sender::{WhenFull, queue};
use tapio::telemetry::CollectorStats;

const EVENTS: usize = 200_000;
const CAPACITY: usize = 10_000;

fn events(n: usize) -> Vec<Event> {
    let mut ids = IdGenerator::new();
    (0..n)
        .map(|_| {
            let mut e = Event::new(ids.next_id(), 1, "net.tcp.connect", "synthetic");
            e.entities.pid = 42;
            e.entities.pod_name = "checkout-7d9f8-x2k4p".into();
            e
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime")
}

fn fan_in(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("fan_in");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("bare_channel", "1_producer"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = events(EVENTS);
                total += rt.block_on(async move {
                    let start = Instant::now();
                    let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
                    let producer = tokio::spawn(async move {
                        for e in batch {
                            tx.send(e).await.expect("open");
                        }
                    });
                    let mut buf = Vec::with_capacity(1024);
                    let mut got = 0;
                    loop {
                        let n = rx.recv_many(&mut buf, 1024).await;
                        if n == 0 {
                            break;
                        }
                        got += n;
                        buf.clear();
                    }
                    producer.await.expect("producer");
                    assert_eq!(got, EVENTS);
                    start.elapsed()
                });
            }
            total
        });
    });
    group.bench_function(BenchmarkId::new("manager_fan_in", "2_collectors"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let halves = [events(EVENTS / 2), events(EVENTS / 2)];
                total += rt.block_on(async move {
                    let start = Instant::now();
                    let mut receivers = Vec::new();
                    let mut producers = Vec::new();
                    for half in halves {
                        let stats = Arc::new(CollectorStats::new("bench"));
                        let (tx, rx) = queue(CAPACITY, WhenFull::Block, stats);
                        receivers.push(rx);
                        producers.push(tokio::spawn(async move {
                            for e in half {
                                tx.send(e).await.expect("open");
                            }
                        }));
                    }
                    let mut fan_in = FanIn::new(receivers);
                    let mut buf = Vec::with_capacity(1024);
                    let mut got = 0;
                    loop {
                        let n = fan_in.recv_many(&mut buf, 1024).await;
                        if n == 0 {
                            break;
                        }
                        got += n;
                        buf.clear();
                    }
                    for p in producers {
                        p.await.expect("producer");
                    }
                    assert_eq!(got, EVENTS);
                    start.elapsed()
                });
            }
            total
        });
    });
    group.finish();
}

fn correlation(c: &mut Criterion) {
    let mut group = c.benchmark_group("correlation");
    let batch = events(1000);
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function(BenchmarkId::new("basic", "per_event"), |b| {
        let mut engine = Basic::new("worker-3");
        let mut work = batch.clone();
        b.iter(|| {
            for e in &mut work {
                e.trace_id = None;
                e.span_id = None;
                e.entities.node = std::sync::Arc::default();
                engine.process(e);
            }
            black_box(&work);
        });
    });
    group.finish();
}

criterion_group!(benches, fan_in, correlation);
criterion_main!(benches);
