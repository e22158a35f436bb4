//! Semantic correlation on one core: throughput and per-event latency (p50, p99, p99.9)
//! over the `oom-cascade` scenario spread across 10 000 pods (10 000 live pods,
//! containers, processes and workloads, with the background noise of the scenario), beside
//! a ceiling measured in the same run: the `basic` engine over the same events (entities
//! and trace ids, no rules, no groups).
//!
//! Command: `cargo bench --bench correlation` (1 000 000 events over 10 000 pods;
//! `CORRELATION_EVENTS=N` and `CORRELATION_PODS=N` to change). Under `cargo test` it runs a small smoke version. Figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 become rates"
)]

use std::time::{Duration, Instant};

use tapio::collectors::synthetic::{Scenario, SyntheticConfig, World};
use tapio::config::{CorrelationConfig, CorrelationMode};
use tapio::correlation::{self, Correlator};
use tapio::event::Event;

// The allocator the collector binary runs with: the engine allocates for groups and
// seeds on the pipeline thread, and glibc's heap fragments under it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn events(count: usize, pods: usize) -> Vec<Event> {
    let config = SyntheticConfig {
        scenario: Scenario::OomCascade,
        seed: 11,
        pods,
        ..SyntheticConfig::default()
    };
    let mut world = World::new(&config, "bench-node".into(), 1_790_000_000_000_000_000);
    (0..count).map(|_| world.next_event()).collect()
}

fn config(mode: CorrelationMode) -> CorrelationConfig {
    CorrelationConfig {
        mode,
        ..CorrelationConfig::default()
    }
}

/// The agent's pipeline step: it takes the closed groups after each batch of this many.
const BATCH: usize = 1024;

/// Events per second through `engine`, over a fresh copy of `input`, taking the closed
/// groups after each batch as the agent does.
fn throughput(engine: &mut dyn Correlator, input: &[Event]) -> f64 {
    let mut batch = input.to_vec();
    let started = Instant::now();
    for chunk in batch.chunks_mut(BATCH) {
        for event in chunk {
            engine.process(event);
        }
        drop(std::hint::black_box(engine.take_closed()));
    }
    let elapsed = started.elapsed();
    std::hint::black_box(&batch);
    input.len() as f64 / elapsed.as_secs_f64()
}

/// Each event's own processing time, sorted.
fn latencies(engine: &mut dyn Correlator, input: &[Event]) -> Vec<Duration> {
    let mut batch = input.to_vec();
    let mut times = Vec::with_capacity(batch.len());
    for (n, event) in batch.iter_mut().enumerate() {
        let started = Instant::now();
        engine.process(event);
        times.push(started.elapsed());
        if n % BATCH == BATCH - 1 {
            drop(std::hint::black_box(engine.take_closed()));
        }
    }
    std::hint::black_box(&batch);
    times.sort_unstable();
    times
}

/// The `per_mille`-th of 1000 quantiles of `sorted`.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let count = if measuring {
        std::env::var("CORRELATION_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1_000_000)
    } else {
        20_000
    };
    // 10 000 pods stress the caches far past a node's 110 (Kubernetes' default limit).
    let pods = std::env::var("CORRELATION_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let input = events(count, pods);
    // Warm both engines' caches and the allocator on the same events first.
    let warm = &input[..count.min(100_000)];
    let mut basic = correlation::build(&config(CorrelationMode::Basic), "bench-node");
    throughput(basic.as_mut(), warm);
    let ceiling = throughput(basic.as_mut(), &input);

    let mut semantic = correlation::build(&config(CorrelationMode::Semantic), "bench-node");
    throughput(semantic.as_mut(), warm);
    let mut semantic = correlation::build(&config(CorrelationMode::Semantic), "bench-node");
    let rate = throughput(semantic.as_mut(), &input);
    let groups = semantic.open_groups();

    let mut fresh = correlation::build(&config(CorrelationMode::Semantic), "bench-node");
    let times = latencies(fresh.as_mut(), &input);
    println!("correlation/ceiling basic engine: {ceiling:.0} events/s on one core");
    println!(
        "correlation/semantic, {pods} pods, {count} events: {rate:.0} events/s on one core (ratio {:.2} of ceiling), {groups} incident groups open at the end",
        rate / ceiling
    );
    println!(
        "correlation/semantic per-event latency (timer included): p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        percentile(&times, 500),
        percentile(&times, 990),
        percentile(&times, 999),
        times[times.len() - 1]
    );
}
