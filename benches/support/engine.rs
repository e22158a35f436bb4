//! The correlation engines fed as the agent feeds them: events of a synthetic world made on
//! a thread of their own and handed over in batches, the closed groups taken after each.

use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tapio::collectors::synthetic::{Scenario, SyntheticConfig, World};
use tapio::config::{CorrelationConfig, CorrelationMode};
use tapio::correlation::{self, Correlator};
use tapio::event::Event;

/// The agent's pipeline step: it takes the closed groups after each batch of this many.
pub const BATCH: usize = 1024;

/// The world of `scenario` over `pods`, with the bench's fixed seed and start.
pub fn world(scenario: Scenario, pods: usize) -> World {
    let config = SyntheticConfig {
        scenario,
        seed: 11,
        pods,
        ..SyntheticConfig::default()
    };
    World::new(&config, "bench-node".into(), 1_790_000_000_000_000_000)
}

/// An engine of `mode` with every other setting at its default.
pub fn engine(mode: CorrelationMode) -> Box<dyn Correlator> {
    engine_with(&CorrelationConfig {
        mode,
        ..CorrelationConfig::default()
    })
}

/// An engine built from `config`, as the agent builds it.
pub fn engine_with(config: &CorrelationConfig) -> Box<dyn Correlator> {
    correlation::build(config, "bench-node")
}

/// The events of a world, in batches, made on a thread of their own until stopped.
pub struct Feed {
    batches: Receiver<Vec<Event>>,
    thread: JoinHandle<()>,
}

impl Feed {
    /// Starts the generator of `scenario`'s events over `pods`.
    pub fn new(scenario: Scenario, pods: usize) -> Self {
        let (tx, batches) = sync_channel(4);
        let thread = std::thread::spawn(move || {
            let mut world = world(scenario, pods);
            while tx
                .send((0..BATCH).map(|_| world.next_event()).collect())
                .is_ok()
            {}
        });
        Self { batches, thread }
    }

    /// The next batch of `n` events.
    pub fn batch(&self, n: usize) -> Vec<Event> {
        let mut events = self
            .batches
            .recv()
            .expect("the generator runs until dropped");
        events.truncate(n);
        events
    }

    /// Stops the generator and waits until its world and batches are freed.
    pub fn stop(self) {
        drop(self.batches);
        self.thread.join().expect("the generator ends");
    }
}

/// Feeds `count` events to `engine` untimed, taking closed groups per batch.
pub fn warm(engine: &mut dyn Correlator, feed: &Feed, count: usize) {
    for start in (0..count).step_by(BATCH) {
        for event in &mut feed.batch(BATCH.min(count - start)) {
            engine.process(event);
        }
        drop(engine.take_closed());
    }
}

/// Events per second through `engine` over the next `count` events, timing only the
/// engine: its `process` calls and the closed groups taken after each batch.
pub fn throughput(engine: &mut dyn Correlator, feed: &Feed, count: usize) -> f64 {
    timed(feed, count, |events| {
        for event in events {
            engine.process(event);
        }
        drop(std::hint::black_box(engine.take_closed()));
    })
}

/// Events per second through `step`, given each batch of the next `count` events; only
/// `step` is timed.
#[allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 become rates"
)]
pub fn timed(feed: &Feed, count: usize, mut step: impl FnMut(&mut [Event])) -> f64 {
    let mut spent = Duration::ZERO;
    for start in (0..count).step_by(BATCH) {
        let mut events = feed.batch(BATCH.min(count - start));
        let started = Instant::now();
        step(&mut events);
        spent += started.elapsed();
        std::hint::black_box(&events);
    }
    count as f64 / spent.as_secs_f64()
}

/// Each event's own processing time over the next `count` events, sorted.
pub fn latencies(engine: &mut dyn Correlator, feed: &Feed, count: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for start in (0..count).step_by(BATCH) {
        let mut events = feed.batch(BATCH.min(count - start));
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
pub fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

/// A count from the environment, or `default`.
pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
