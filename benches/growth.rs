//! How cost grows with the work, one curve per dimension, each point beside its ceiling:
//!
//! - semantic correlation against the pods its events come from (10 -> 10 000), against
//!   the incident groups it holds open (10 -> 10 000, set through `group_quiet` on the
//!   `restart-storm` scenario, whose incidents stay apart), and
//!   against the entries of its entity index (set through `max_entities` over more pods
//!   than any cap). Each point gives the engine's events/s on one core after a warm-up,
//!   its per-event p99, and its heap (the bytes it holds, counted by the allocator), with
//!   the entity index alone over the same events as the ceiling: the engine runs it first
//!   on every event, so it can never be faster.
//! - one tapio-server (SQLite, `--sync full`) against the collectors streaming into it at
//!   once (1 -> 1 000), each stream a pre-encoded 100-event batch every 200 ms (500
//!   events/s, a busy node): acked events/s beside the offered rate (its ceiling), p99
//!   ack latency and the server's peak RSS.
//!
//! Each curve is written as CSV and drawn as PNG by `scripts/plot-growth` (matplotlib,
//! installed by `scripts/setup`).
//!
//! Command: `cargo bench --bench growth` writes docs/growth/. `GROWTH_WARM`,
//! `GROWTH_EVENTS` and `GROWTH_SECONDS` change the events per point and the seconds per
//! fan-in point; `GROWTH_ONLY=correlation` or `=server` redraws one part. Under `cargo test` a small version writes to a temporary directory and
//! checks the plots were drawn. Figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 become rates and MiB"
)]

mod support;

use std::alloc::{GlobalAlloc, Layout};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use support::engine::{
    Feed, engine_with, latencies, percentile, setting, throughput, timed, warm, world,
};
use support::fleet::{BATCH_EVERY, EVENTS_PER_BATCH, fan_in};
use support::processes::ServerRun;
use tapio::collectors::synthetic::Scenario;
use tapio::config::{CorrelationConfig, CorrelationMode};
use tapio::correlation::entities::EntityIndex;
use tapio::event::Event;

/// mimalloc, the collector binary's allocator, with a count of the bytes live while
/// [`COUNTING`] is on: the heap an engine holds, without the noise of RSS.
struct Counted;

/// Whether allocations are being counted (only in the single-threaded heap pass).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed while counting.
static LIVE: AtomicI64 = AtomicI64::new(0);

fn count(delta: i64) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(delta, Ordering::Relaxed);
    }
}

fn size(bytes: usize) -> i64 {
    i64::try_from(bytes).expect("an allocation below 2^63")
}

// SAFETY: every call is forwarded unchanged to mimalloc; counting has no effect on memory.
#[allow(unsafe_code, reason = "a GlobalAlloc is an unsafe trait")]
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            count(size(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            count(size(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        count(-size(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(size(new_size) - size(layout.size()));
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counted = Counted;

/// Events per point: untimed warm-up, then timed.
#[derive(Clone, Copy)]
struct Sizes {
    warm: usize,
    events: usize,
}

/// One point of a correlation curve.
struct Point {
    pods: usize,
    index_entries: usize,
    open_groups: usize,
    /// The entity index alone over the same events: the engine's ceiling.
    index_rate: f64,
    rate: f64,
    p99: Duration,
    heap_bytes: i64,
}

impl Point {
    fn csv_header() -> &'static str {
        "pods,index_entries,open_groups,index_alone_events_per_s,semantic_events_per_s,ratio_to_index,p99_us,heap_mib"
    }

    fn csv(&self) -> String {
        format!(
            "{},{},{},{:.0},{:.0},{:.3},{:.2},{:.2}",
            self.pods,
            self.index_entries,
            self.open_groups,
            self.index_rate,
            self.rate,
            self.rate / self.index_rate,
            self.p99.as_secs_f64() * 1e6,
            self.heap_bytes as f64 / f64::from(1 << 20)
        )
    }
}

/// The entity index alone with `capacity`, warmed and timed like the engine.
fn index_alone(feed: &Feed, capacity: usize, sizes: Sizes) -> f64 {
    let mut index = EntityIndex::new(capacity);
    let mut resolve = |events: &mut [Event]| {
        for event in events {
            let exited = event.kind == "process.exit";
            index.resolve(&mut event.entities, exited);
        }
    };
    timed(feed, sizes.warm, &mut resolve);
    timed(feed, sizes.events, resolve)
}

/// The bytes the engine holds after `events` events over `pods`, generated on this thread
/// so that nothing else allocates while they are counted; the world is dropped before the
/// count, so what is left is the engine's (and the names it shares with the world).
fn heap(config: &CorrelationConfig, scenario: Scenario, pods: usize, events: usize) -> i64 {
    LIVE.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let mut world = world(scenario, pods);
    let mut engine = engine_with(config);
    for _ in 0..events / support::engine::BATCH {
        for _ in 0..support::engine::BATCH {
            engine.process(&mut world.next_event());
        }
        drop(engine.take_closed());
    }
    drop(world);
    let held = LIVE.load(Ordering::Relaxed);
    COUNTING.store(false, Ordering::Relaxed);
    drop(engine);
    held
}

/// One point: the index alone, then the engine warmed, timed, timed event by event, and
/// its heap counted on a run of its own.
fn point(config: &CorrelationConfig, scenario: Scenario, pods: usize, sizes: Sizes) -> Point {
    let feed = Feed::new(scenario, pods);
    let index_rate = index_alone(&feed, config.max_entities, sizes);
    feed.stop();

    let feed = Feed::new(scenario, pods);
    let mut engine = engine_with(config);
    warm(engine.as_mut(), &feed, sizes.warm);
    let rate = throughput(engine.as_mut(), &feed, sizes.events);
    let times = latencies(engine.as_mut(), &feed, sizes.events / 2);
    let (open_groups, index_entries) = (engine.open_groups(), engine.index_entries());
    feed.stop();
    drop(engine);

    Point {
        pods,
        index_entries,
        open_groups,
        index_rate,
        rate,
        p99: percentile(&times, 990),
        heap_bytes: heap(config, scenario, pods, sizes.warm + sizes.events),
    }
}

fn semantic() -> CorrelationConfig {
    CorrelationConfig {
        mode: CorrelationMode::Semantic,
        ..CorrelationConfig::default()
    }
}

/// Prints a row of `name` as soon as it is measured, and returns it.
fn row(name: &str, row: String) -> String {
    println!("growth/{name}: {row}");
    row
}

/// Writes `rows` under `header` to `dir/name`.
fn write_csv(dir: &Path, name: &str, header: &str, rows: &[String]) {
    let mut text = format!("{header}\n");
    for row in rows {
        let _ = writeln!(text, "{row}");
    }
    std::fs::write(dir.join(name), text).expect("CSV written");
}

fn correlation_curves(dir: &Path, measuring: bool, sizes: Sizes) {
    let pods: &[usize] = if measuring {
        &[10, 100, 1_000, 10_000]
    } else {
        &[10, 1_000]
    };
    let rows: Vec<String> = pods
        .iter()
        .map(|&pods| {
            let point = point(&semantic(), Scenario::OomCascade, pods, sizes);
            row("correlation-pods.csv", point.csv())
        })
        .collect();
    write_csv(dir, "correlation-pods.csv", Point::csv_header(), &rows);

    // A group closes after `group_quiet` without a new member. `restart-storm` starts an
    // incident every 30 s of event time on the next of its pods, each a group of its own
    // (in `oom-cascade` the OOMs of one workload's pods chain into one group), so the quiet
    // window sets how many stay open. 20 000 pods: no pod fails twice within the longest
    // window, and the bound on open groups is raised past the curve's end.
    let quiet_minutes: &[u64] = if measuring {
        &[5, 50, 500, 5_000]
    } else {
        &[5, 50]
    };
    let rows: Vec<String> = quiet_minutes
        .iter()
        .map(|&minutes| {
            let config = CorrelationConfig {
                group_quiet: Duration::from_mins(minutes),
                max_groups: 20_000,
                ..semantic()
            };
            let point = point(&config, Scenario::RestartStorm, 20_000, sizes);
            row(
                "correlation-groups.csv",
                format!("{minutes},{}", point.csv()),
            )
        })
        .collect();
    write_csv(
        dir,
        "correlation-groups.csv",
        &format!("group_quiet_min,{}", Point::csv_header()),
        &rows,
    );

    // More pods than any cap: the index holds as many entries as it may.
    let caps: &[usize] = if measuring {
        &[1_024, 4_096, 16_384, 65_536]
    } else {
        &[1_024, 4_096]
    };
    let rows: Vec<String> = caps
        .iter()
        .map(|&cap| {
            let config = CorrelationConfig {
                max_entities: cap,
                ..semantic()
            };
            let point = point(&config, Scenario::OomCascade, 50_000, sizes);
            row("correlation-entities.csv", format!("{cap},{}", point.csv()))
        })
        .collect();
    write_csv(
        dir,
        "correlation-entities.csv",
        &format!("max_entities,{}", Point::csv_header()),
        &rows,
    );
}

fn server_curve(dir: &Path, measuring: bool, seconds: u64) {
    let fleet: &[usize] = if measuring {
        &[1, 10, 100, 300, 1_000]
    } else {
        &[1, 10]
    };
    let per_stream = EVENTS_PER_BATCH as f64 / BATCH_EVERY.as_secs_f64();
    let rows: Vec<String> = fleet
        .iter()
        .map(|&streams| {
            let server = ServerRun::start();
            let run = fan_in(&server, streams, seconds);
            assert_eq!(
                server.events_total(),
                run.events,
                "the store holds every acked event"
            );
            let line = format!(
                "{streams},{:.0},{:.0},{:.3},{:.1},{:.1},{:.1},{:.1}",
                streams as f64 * per_stream,
                run.rate,
                run.rate / (streams as f64 * per_stream),
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.idle_rss_kib as f64 / 1024.0,
                run.peak_rss_kib as f64 / 1024.0
            );
            row("server-streams.csv", line)
        })
        .collect();
    write_csv(
        dir,
        "server-streams.csv",
        "streams,offered_events_per_s,acked_events_per_s,ratio_to_offered,p50_ack_ms,p99_ack_ms,idle_rss_mib,peak_rss_mib",
        &rows,
    );
}

fn plot(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/plot-growth");
    let status = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .status()
        .expect("python3 runs (scripts/setup installs matplotlib)");
    assert!(status.success(), "scripts/plot-growth failed");
    for name in [
        "correlation-pods",
        "correlation-groups",
        "correlation-entities",
        "server-streams",
    ] {
        let png = std::fs::read(dir.join(format!("{name}.png"))).expect("the plot was drawn");
        assert!(png.starts_with(b"\x89PNG"), "{name}.png is a PNG");
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let sizes = if measuring {
        Sizes {
            warm: setting("GROWTH_WARM", 1_000_000),
            events: setting("GROWTH_EVENTS", 500_000),
        }
    } else {
        Sizes {
            warm: 20_000,
            events: 10_000,
        }
    };
    let seconds = setting("GROWTH_SECONDS", if measuring { 10 } else { 1 }) as u64;
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = if measuring {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/growth")
    } else {
        scratch.path().to_path_buf()
    };
    std::fs::create_dir_all(&dir).expect("output directory");

    // `GROWTH_ONLY=correlation` or `server` draws one part (the other's CSVs stay as
    // they were), for work on one of them.
    let only = std::env::var("GROWTH_ONLY").unwrap_or_default();
    let started = Instant::now();
    if only != "server" {
        correlation_curves(&dir, measuring, sizes);
    }
    if only != "correlation" {
        server_curve(&dir, measuring, seconds);
    }
    plot(&dir);
    println!(
        "growth: curves in {} ({:.0} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}
