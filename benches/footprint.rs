//! What the collector costs a node at a steady rate: CPU (share of one core) and resident
//! memory of `tapio-collector` at the defaults (semantic correlation, the default kernel
//! collectors as root, incident export to the default OTLP endpoint) while the synthetic
//! collector adds `oom-cascade` events at a fixed rate, delivering to a tapio-server
//! (`--sync full`) on the same machine. Each row runs its own collector and store; the
//! first row is the reference measured in the same run: the same agent with the kernel
//! collectors alone (an idle node's few hundred events/s).
//!
//! Each row: a warm-up (the probes load, BTF is parsed once), then CPU from
//! /proc/PID/stat over the window and RSS sampled every second; the delivered rate comes
//! from the collector's `/metrics`, so a row where the collector falls behind says so.
//!
//! Command: `cargo bench --bench footprint` (rates 1 000, 10 000 and 50 000 events/s,
//! 60 s each; `FOOTPRINT_RATES=1000,20000`, `FOOTPRINT_SECONDS=N` to change). Under `cargo
//! test` it runs 3 s at 1 000 events/s. Figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "tick and byte counts far below 2^52 become shares"
)]

mod support;

use std::time::{Duration, Instant};

use support::processes::{
    ServerRun, free_port, kernel_collectors_here, peak_rss_kib, scrape, start_collector,
    stop_collector, sum,
};

/// Warm-up before the window: the probes load and the pipeline fills.
const WARM_UP: Duration = Duration::from_secs(5);

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Resident memory now, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// One row: the agent at `rate` synthetic events/s (0: none), kernel collectors with
/// `kernel`, for `window` after the warm-up.
struct Row {
    cpu_percent: f64,
    rss_mean: f64,
    rss_max: f64,
    peak_mib: u64,
    delivered_per_second: f64,
}

fn measure(rate: u64, kernel: bool, window: Duration) -> Row {
    let server = ServerRun::start();
    let config = server.dir.path().join("footprint.yaml");
    let synthetic = if rate > 0 {
        format!("  synthetic: {{ config: {{ events: 0, rate: {rate}, scenario: oom-cascade }} }}\n")
    } else {
        String::new()
    };
    std::fs::write(&config, format!("collectors:\n{synthetic}")).expect("writes config");
    let metrics = free_port();
    let collector = start_collector(&config, &server, metrics, kernel);
    let pid = collector.id();
    std::thread::sleep(WARM_UP);
    let delivered =
        || scrape(metrics).map_or(0.0, |page| sum(&page, "tapio_events_delivered_total"));
    let (cpu_start, delivered_start, started) = (
        cpu_seconds(pid).expect("the collector runs"),
        delivered(),
        Instant::now(),
    );
    let mut samples = Vec::new();
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_secs(1).min(window));
        samples.push(rss_mib(pid).expect("the collector runs"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).expect("the collector runs") - cpu_start;
    let delivered_per_second = (delivered() - delivered_start) / elapsed;
    let peak_mib = peak_rss_kib(pid).unwrap_or(0) / 1024;
    stop_collector(collector);
    Row {
        cpu_percent: 100.0 * cpu / elapsed,
        rss_mean: samples.iter().sum::<f64>() / samples.len() as f64,
        rss_max: samples.iter().copied().fold(0.0, f64::max),
        peak_mib,
        delivered_per_second,
    }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let rates: Vec<u64> = std::env::var("FOOTPRINT_RATES").ok().map_or_else(
        || {
            if measuring {
                vec![1_000, 10_000, 50_000]
            } else {
                vec![1_000]
            }
        },
        |v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect(),
    );
    let window = Duration::from_secs(
        std::env::var("FOOTPRINT_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if measuring { 60 } else { 3 }),
    );
    let kernel = kernel_collectors_here("footprint");
    let reference = kernel.then(|| measure(0, true, window));
    if let Some(idle) = &reference {
        println!(
            "footprint: kernel collectors alone (the reference): CPU {:.2}% of one core, RSS mean {:.1} MiB, max {:.1} MiB, peak with the start {} MiB, {:.0} events/s delivered",
            idle.cpu_percent, idle.rss_mean, idle.rss_max, idle.peak_mib, idle.delivered_per_second
        );
    }
    for rate in rates {
        let row = measure(rate, kernel, window);
        let over = reference.as_ref().map_or(String::new(), |idle| {
            format!(
                ", {:+.2} points of CPU and {:+.1} MiB over the reference",
                row.cpu_percent - idle.cpu_percent,
                row.rss_mean - idle.rss_mean
            )
        });
        println!(
            "footprint: {rate} events/s over {}s: CPU {:.2}% of one core, RSS mean {:.1} MiB, max {:.1} MiB, peak with the start {} MiB, {:.0} events/s delivered{over}",
            window.as_secs(),
            row.cpu_percent,
            row.rss_mean,
            row.rss_max,
            row.peak_mib,
            row.delivered_per_second
        );
        assert!(
            row.delivered_per_second >= rate as f64 * 0.9,
            "the collector fell behind at {rate} events/s: {:.0} delivered per second",
            row.delivered_per_second
        );
    }
}
