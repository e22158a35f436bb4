//! tapio-server's store: batches of 1000 events committed through the writer thread
//! (group commit, dedup by id), and the same events sent again (all duplicates).
//!
//! Command: `cargo bench --bench store`. Figures: docs/benchmarks.md.

#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented public fn"
)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tapio::event::{Event, IdGenerator};
use tapio::pb;
use tapio::server::store::sqlite::Sqlite;
use tapio::server::store::{Batch, Sync};
use tapio::server::wire::RawEvent;

const BATCH: usize = 1000;
const BATCHES: usize = 50;

fn batches(ids: &mut IdGenerator) -> Vec<Vec<RawEvent>> {
    (0..BATCHES)
        .map(|_| {
            (0..BATCH)
                .map(|i| {
                    let mut e = Event::new(
                        ids.next_id(),
                        1_790_000_000_000_000_000 + i as u64,
                        "net.tcp.connect",
                        "synthetic",
                    );
                    e.message = "java connected to postgres.data:5432".into();
                    e.entities.node = "worker-3".into();
                    e.entities.pid = 4242;
                    e.entities.container_id = "3f4e".repeat(16).into();
                    e.entities.pod_uid = "8f6fe56b-7ad0-4637-a0a3-1be51340079c".into();
                    e.entities.pod_namespace = "payments".into();
                    e.entities.pod_name = "checkout-7d9f8-x2k4p".into();
                    e.attributes.set("dport", 5432);
                    RawEvent::from_message(&pb::Event::from(e)).expect("valid event")
                })
                .collect()
        })
        .collect()
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements((BATCH * BATCHES) as u64));
    group.sample_size(10);
    for (name, sync) in [("sync_normal", Sync::Normal), ("sync_full", Sync::Full)] {
        let dir = tempfile::tempdir().expect("dir");
        let store = Sqlite::open(dir.path(), sync).expect("opens");
        let mut ids = IdGenerator::new();
        group.bench_function(BenchmarkId::new("write_new", name), |b| {
            b.iter_batched(
                || batches(&mut ids),
                |input| {
                    runtime.block_on(async {
                        let writes: Vec<_> = input
                            .into_iter()
                            .enumerate()
                            .map(|(n, events)| {
                                let store = store.clone();
                                tokio::spawn(async move {
                                    store
                                        .write(Batch {
                                            collector_id: "bench".into(),
                                            batch_id: n as u64,
                                            sequence: n as u64,
                                            events,
                                            groups: Vec::new(),
                                        })
                                        .await
                                        .expect("commits")
                                })
                            })
                            .collect();
                        for w in writes {
                            w.await.expect("joined");
                        }
                    });
                },
                criterion::BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
