//! Event encode/decode: the domain event to and from its wire message and its JSON line.
//!
//! Ceiling in the same run: prost alone on a message that is already built (`prost_only`),
//! so the ratio shows what the domain conversion costs on top of the wire codec.
//!
//! Machine: 2 cores, Debian 12, kernel 6.18. Command: `cargo bench --bench event_codec`.
//! Figures: docs/benchmarks.md.
#![allow(
    missing_docs,
    reason = "criterion_group! generates an undocumented public fn"
)]

mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use tapio::event::{Event, IdGenerator, Severity};
use tapio::pb;

const BATCH: usize = 1000;

/// An OOM-kill event with the entities and attributes a real one carries.
fn event(ids: &mut IdGenerator) -> Event {
    let mut e = support::container_event(
        ids,
        "memory.oom_kill",
        Severity::Critical,
        "OOM killer killed java (pid 4242) in payments/checkout-7d9f8-x2k4p",
    );
    e.attributes.set("victim_pid", 4242);
    e.attributes.set("memory_limit_bytes", 536_870_912i64);
    e.attributes.set("memory_usage_peak_bytes", 536_870_912i64);
    e.attributes.set("oom_score_adj", 985);
    e
}

fn codec(c: &mut Criterion) {
    let mut ids = IdGenerator::new();
    let events: Vec<Event> = (0..BATCH).map(|_| event(&mut ids)).collect();
    let messages: Vec<pb::Event> = events.iter().cloned().map(pb::Event::from).collect();
    let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode_to_vec).collect();

    let mut group = c.benchmark_group("event_codec");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(BenchmarkId::new("encode", "prost_only"), |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            for m in &messages {
                buf.clear();
                m.encode(&mut buf).expect("fits");
                black_box(&buf);
            }
        });
    });
    group.bench_function(BenchmarkId::new("encode", "domain_to_wire"), |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            for e in &events {
                buf.clear();
                pb::Event::from(e.clone()).encode(&mut buf).expect("fits");
                black_box(&buf);
            }
        });
    });
    group.bench_function(BenchmarkId::new("decode", "prost_only"), |b| {
        b.iter(|| {
            for bytes in &encoded {
                black_box(pb::Event::decode(bytes.as_slice()).expect("decodes"));
            }
        });
    });
    group.bench_function(BenchmarkId::new("decode", "wire_to_domain"), |b| {
        b.iter(|| {
            for bytes in &encoded {
                let m = pb::Event::decode(bytes.as_slice()).expect("decodes");
                black_box(Event::try_from(m).expect("converts"));
            }
        });
    });
    group.bench_function(BenchmarkId::new("json", "to_line"), |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            for e in &events {
                buf.clear();
                serde_json::to_writer(&mut buf, e).expect("serializes");
                black_box(&buf);
            }
        });
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
