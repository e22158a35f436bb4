//! Prometheus text exposition (format 0.0.4) shared by the agent's and the server's
//! `/metrics`: families with their HELP and TYPE, latency histograms that are updated
//! without a lock, and the standard `process_*` set read from `/proc/self`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a scraper's keep-alive connection may hold the process's exit.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `stop` is cancelled, then gives open connections a
/// moment to finish before closing them.
pub fn serve_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::spawn(async move {
        let mut serving = tokio::spawn(server.into_future());
        stop.cancelled().await;
        if tokio::time::timeout(CLOSE_GRACE, &mut serving)
            .await
            .is_err()
        {
            serving.abort();
        }
    })
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets on restart); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in cumulative buckets, with `_sum` and `_count`.
    Histogram,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a family: its HELP and TYPE lines. Samples of it follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample of the family just started, with its labels (values are escaped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help).sample(name, &[], value);
    }

    /// A histogram's samples (buckets, sum and count) under `labels`; the family must have
    /// been started with [`Kind::Histogram`].
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], histogram: &Histogram) {
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = write!(self.out, "{name}_bucket");
            write_labels(&mut self.out, labels, Some(&bound.to_string()));
            let _ = writeln!(self.out, " {cumulative}");
        }
        let count = histogram.count.load(Ordering::Relaxed);
        let _ = write!(self.out, "{name}_bucket");
        write_labels(&mut self.out, labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        let _ = write!(self.out, "{name}_sum");
        write_labels(&mut self.out, labels, None);
        let sum = histogram.sum_nanos.load(Ordering::Relaxed);
        let _ = writeln!(self.out, " {}", Duration::from_nanos(sum).as_secs_f64());
        let _ = write!(self.out, "{name}_count");
        write_labels(&mut self.out, labels, None);
        let _ = writeln!(self.out, " {count}");
    }

    /// The finished page.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{name}=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Bucket bounds, in seconds, for latencies from a millisecond to a minute: acks and
/// commits are a few milliseconds when all is well and seconds when a disk or peer stalls.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Durations counted into fixed buckets; observing takes no lock.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (seconds, ascending).
    #[must_use]
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The smallest bound under which at least `quantile` of the observations fall
    /// (`f64::INFINITY` past the last bound); `None` before any observation.
    #[must_use]
    pub fn quantile_bound(&self, quantile: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        #[expect(clippy::cast_precision_loss, reason = "a rank among counts")]
        let rank = (quantile * count as f64).ceil().max(1.0);
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n.load(Ordering::Relaxed);
            #[expect(clippy::cast_precision_loss, reason = "a rank among counts")]
            if cumulative as f64 >= rank {
                return Some(*bound);
            }
        }
        Some(f64::INFINITY)
    }
}

/// Linux reports CPU times in clock ticks of `USER_HZ`, which the kernel fixes at 100 for
/// user space on every architecture it runs on.
const USER_HZ: f64 = 100.0;

/// Writes the standard `process_*` families (as the Prometheus client libraries name
/// them) for this process: CPU seconds, resident and virtual memory, open and maximum file
/// descriptors, and the start time. A value `/proc` does not give is left out.
pub fn process(out: &mut Exposition) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name, field 3 (state) is index 0: utime is field 14, stime 15,
    // starttime 22, vsize 23.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        #[expect(clippy::cast_precision_loss, reason = "ticks far below 2^52")]
        let seconds = (user + system) as f64 / USER_HZ;
        out.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
            seconds,
        );
    }
    if let Some(rss) = status_kib("VmRSS:") {
        out.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
            rss * 1024,
        );
    }
    if let Some(vsize) = field(23) {
        out.single(
            "process_virtual_memory_bytes",
            Kind::Gauge,
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            fds.count(),
        );
    }
    if let Some(max) = max_open_files() {
        out.single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            max,
        );
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time()) {
        #[expect(clippy::cast_precision_loss, reason = "ticks far below 2^52")]
        let seconds = boot as f64 + start as f64 / USER_HZ;
        out.single(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
            seconds,
        );
    }
}

/// A `kB` line of `/proc/self/status`, in KiB.
fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// This process's resident memory in bytes, from `/proc/self/status`.
#[must_use]
pub fn resident_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

fn max_open_files() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files  <soft>  <hard>  files": the soft limit is the one that applies.
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_writes_cumulative_buckets_sum_and_count() {
        static BOUNDS: &[f64] = &[0.01, 0.1];
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(2));
        let mut page = Exposition::default();
        page.family("x_seconds", Kind::Histogram, "X.")
            .histogram("x_seconds", &[("a", "q\"")], &h);
        assert_eq!(
            page.finish(),
            "# HELP x_seconds X.\n# TYPE x_seconds histogram\n\
             x_seconds_bucket{a=\"q\\\"\",le=\"0.01\"} 1\n\
             x_seconds_bucket{a=\"q\\\"\",le=\"0.1\"} 2\n\
             x_seconds_bucket{a=\"q\\\"\",le=\"+Inf\"} 3\n\
             x_seconds_sum{a=\"q\\\"\"} 2.055\n\
             x_seconds_count{a=\"q\\\"\"} 3\n"
        );
        assert_eq!(h.quantile_bound(0.5), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), Some(f64::INFINITY));
    }

    #[test]
    fn the_process_set_reads_this_process() {
        let mut page = Exposition::default();
        process(&mut page);
        let page = page.finish();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                page.contains(&format!("\n{name} ")),
                "{name} missing: {page}"
            );
        }
        assert!(resident_bytes().is_some_and(|b| b > 1 << 20));
    }
}
