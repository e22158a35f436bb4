//! Semantic correlation on one core: throughput and per-event latency (p50, p99, p99.9)
//! over the `oom-cascade` scenario spread across 10 000 pods (10 000 live pods,
//! containers, processes and workloads, with the background noise of the scenario), beside
//! a ceiling measured in the same run: the `basic` engine over the same events (trace ids,
//! no entity index, no rules, no groups), and a tighter one: the entity index alone, which
//! the semantic engine runs first on every event.
//!
//! Each engine first takes `CORRELATION_WARM` events (default 2 000 000) untimed, so that
//! its bounded maps are full and it runs as it does after hours on a node; then it takes
//! `CORRELATION_EVENTS` more (default 1 000 000), timed batch by batch. Events are
//! generated on another thread and handed over a batch at a time through a bounded
//! channel, as the collectors hand them to the pipeline in the agent; only the engine is
//! timed. A fresh engine's first million events (its maps still growing) are measured as
//! well.
//!
//! Command: `cargo bench --bench correlation` (`CORRELATION_PODS=N` changes the pods). Under
//! `cargo test` it runs a small smoke version. Figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 become rates"
)]

use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use tapio::collectors::synthetic::{Scenario, SyntheticConfig, World};
use tapio::config::{CorrelationConfig, CorrelationMode};
use tapio::correlation::entities::EntityIndex;
use tapio::correlation::semantic::Limits;
use tapio::correlation::{self, Correlator};
use tapio::event::Event;

// The allocator the collector binary runs with: the engine allocates for groups and
// seeds on the pipeline thread, and glibc's heap fragments under it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The agent's pipeline step: it takes the closed groups after each batch of this many.
const BATCH: usize = 1024;

fn world(pods: usize) -> World {
    let config = SyntheticConfig {
        scenario: Scenario::OomCascade,
        seed: 11,
        pods,
        ..SyntheticConfig::default()
    };
    World::new(&config, "bench-node".into(), 1_790_000_000_000_000_000)
}

fn engine(mode: CorrelationMode) -> Box<dyn Correlator> {
    let config = CorrelationConfig {
        mode,
        ..CorrelationConfig::default()
    };
    correlation::build(&config, "bench-node")
}

/// The events of a world over `pods`, in batches, produced on a thread of their own.
fn stream(pods: usize) -> Receiver<Vec<Event>> {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        let mut world = world(pods);
        while tx
            .send((0..BATCH).map(|_| world.next_event()).collect())
            .is_ok()
        {}
    });
    rx
}

/// The next batch of `n` events.
fn batch(stream: &Receiver<Vec<Event>>, n: usize) -> Vec<Event> {
    let mut events = stream.recv().expect("the generator runs until dropped");
    events.truncate(n);
    events
}

/// Feeds `count` events of `stream` to `engine` untimed, taking closed groups per batch.
fn warm(engine: &mut dyn Correlator, stream: &Receiver<Vec<Event>>, count: usize) {
    for start in (0..count).step_by(BATCH) {
        for event in &mut batch(stream, BATCH.min(count - start)) {
            engine.process(event);
        }
        drop(engine.take_closed());
    }
}

/// Events per second through `engine` over the next `count` events of `stream`, timing
/// only the engine: its `process` calls and the closed groups taken after each batch.
fn throughput(engine: &mut dyn Correlator, stream: &Receiver<Vec<Event>>, count: usize) -> f64 {
    timed(stream, count, |events| {
        for event in events {
            engine.process(event);
        }
        drop(std::hint::black_box(engine.take_closed()));
    })
}

/// Events per second through `step`, given each batch of the next `count` events of
/// `stream`; only `step` is timed.
fn timed(stream: &Receiver<Vec<Event>>, count: usize, mut step: impl FnMut(&mut [Event])) -> f64 {
    let mut spent = Duration::ZERO;
    for start in (0..count).step_by(BATCH) {
        let mut events = batch(stream, BATCH.min(count - start));
        let started = Instant::now();
        step(&mut events);
        spent += started.elapsed();
        std::hint::black_box(&events);
    }
    count as f64 / spent.as_secs_f64()
}

/// Events per second through the entity index alone, warmed like the engines: the
/// semantic engine resolves every event through it first, so it bounds the engine.
fn index_alone(stream: &Receiver<Vec<Event>>, warmup: usize, count: usize) -> f64 {
    let mut index = EntityIndex::new(Limits::default().entities);
    let mut resolve = |events: &mut [Event]| {
        for event in events {
            let exited = event.kind == "process.exit";
            index.resolve(&mut event.entities, exited);
        }
    };
    timed(stream, warmup, &mut resolve);
    timed(stream, count, resolve)
}

/// Each event's own processing time over the next `count` events of `stream`, sorted.
fn latencies(
    engine: &mut dyn Correlator,
    stream: &Receiver<Vec<Event>>,
    count: usize,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for start in (0..count).step_by(BATCH) {
        let mut events = batch(stream, BATCH.min(count - start));
        for event in &mut events {
            let started = Instant::now();
            engine.process(event);
            times.push(started.elapsed());
        }
        drop(std::hint::black_box(engine.take_closed()));
    }
    times.sort_unstable();
    times
}

/// The `per_mille`-th of 1000 quantiles of `sorted`.
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let (count, warmup) = if measuring {
        (
            setting("CORRELATION_EVENTS", 1_000_000),
            setting("CORRELATION_WARM", 2_000_000),
        )
    } else {
        (20_000, 20_000)
    };
    // 10 000 pods stress the caches far past a node's 110 (Kubernetes' default limit).
    let pods = setting("CORRELATION_PODS", 10_000);

    // Each engine sees the same stream: the same warm-up, then the same measured events.
    let basic_stream = stream(pods);
    let mut basic = engine(CorrelationMode::Basic);
    warm(basic.as_mut(), &basic_stream, warmup);
    let ceiling = throughput(basic.as_mut(), &basic_stream, count);
    drop(basic_stream);

    let index_stream = stream(pods);
    let index_rate = index_alone(&index_stream, warmup, count);
    drop(index_stream);

    let fresh_stream = stream(pods);
    let mut fresh = engine(CorrelationMode::Semantic);
    let fresh_rate = throughput(fresh.as_mut(), &fresh_stream, count);
    drop(fresh_stream);

    let semantic_stream = stream(pods);
    let mut semantic = engine(CorrelationMode::Semantic);
    warm(semantic.as_mut(), &semantic_stream, warmup);
    let rate = throughput(semantic.as_mut(), &semantic_stream, count);
    let times = latencies(semantic.as_mut(), &semantic_stream, count);
    let groups = semantic.open_groups();

    println!("correlation/ceiling basic engine: {ceiling:.0} events/s on one core");
    println!(
        "correlation/entity index alone, {pods} pods, {count} events after {warmup}: {index_rate:.0} events/s on one core"
    );
    println!(
        "correlation/semantic, {pods} pods, {count} events after {warmup}: {rate:.0} events/s on one core (ratio {:.3} of ceiling, {:.3} of the index alone), {groups} incident groups open at the end",
        rate / ceiling,
        rate / index_rate
    );
    println!(
        "correlation/semantic, fresh engine, first {count} events: {fresh_rate:.0} events/s on one core (ratio {:.3} of ceiling)",
        fresh_rate / ceiling
    );
    println!(
        "correlation/semantic per-event latency (timer included): p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        percentile(&times, 500),
        percentile(&times, 990),
        percentile(&times, 999),
        times[times.len() - 1]
    );
}
