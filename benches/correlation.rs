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

mod support;

use support::engine::{Feed, engine, latencies, percentile, setting, throughput, timed, warm};
use tapio::collectors::synthetic::Scenario;
use tapio::config::CorrelationMode;
use tapio::correlation::entities::EntityIndex;
use tapio::correlation::semantic::Limits;
use tapio::event::Event;

// The allocator the collector binary runs with: the engine allocates for groups and
// seeds on the pipeline thread, and glibc's heap fragments under it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per second through the entity index alone, warmed like the engines: the
/// semantic engine resolves every event through it first, so it bounds the engine.
fn index_alone(feed: &Feed, warmup: usize, count: usize) -> f64 {
    let mut index = EntityIndex::new(Limits::default().entities);
    let mut resolve = |events: &mut [Event]| {
        for event in events {
            let exited = event.kind == "process.exit";
            index.resolve(&mut event.entities, exited);
        }
    };
    timed(feed, warmup, &mut resolve);
    timed(feed, count, resolve)
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
    let feed = Feed::new(Scenario::OomCascade, pods);
    let mut basic = engine(CorrelationMode::Basic);
    warm(basic.as_mut(), &feed, warmup);
    let ceiling = throughput(basic.as_mut(), &feed, count);
    feed.stop();

    let feed = Feed::new(Scenario::OomCascade, pods);
    let index_rate = index_alone(&feed, warmup, count);
    feed.stop();

    let feed = Feed::new(Scenario::OomCascade, pods);
    let mut fresh = engine(CorrelationMode::Semantic);
    let fresh_rate = throughput(fresh.as_mut(), &feed, count);
    feed.stop();

    let feed = Feed::new(Scenario::OomCascade, pods);
    let mut semantic = engine(CorrelationMode::Semantic);
    warm(semantic.as_mut(), &feed, warmup);
    let rate = throughput(semantic.as_mut(), &feed, count);
    let times = latencies(semantic.as_mut(), &feed, count);
    let groups = semantic.open_groups();
    feed.stop();

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
