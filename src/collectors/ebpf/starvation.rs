//! `resource-starvation`: CPU a cgroup waited for, CPU it was refused, and pressure.
//!
//! - Run-queue latency: the kernel keeps a log2 histogram of how long tasks waited on a
//!   run queue, per cgroup (`ebpf/sched.bpf.c`); every interval this side reads what grew.
//!   `cpu.runqueue_latency` once when a cgroup's p99 reaches `runqueue_threshold`, and
//!   `cpu.runqueue_latency_recovered` once when it is back under or quiet.
//! - CFS throttling: every cgroup with a CPU limit, from its `cpu.stat` (v2 `cpu.max`, or
//!   v1's cpu hierarchy). `cpu.throttled` once when the share of periods throttled reaches
//!   `throttled_ratio`, and `cpu.throttled_ended` once when it is back under.
//! - Pressure (PSI): the node's `/proc/pressure/{cpu,memory,io}`, and each container, pod
//!   and unit cgroup's `{cpu,memory,io}.pressure` (cgroup v2). `pressure.high` once when a
//!   resource's `some avg10` reaches `pressure_threshold` percent, and `pressure.relieved`
//!   once when it is back under.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData};
use serde::Deserialize;

use super::containers::{Identity, cgroup_dirs, cgroup2_root, from_path, hierarchy};
use super::histogram::{Crossing, Growth, Lines, Log2, Totals};
use super::{Ring, Stamp, attach_btf_tracepoint, load};
use crate::collectors::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, Severity, unix_nanos_now};

/// Registry name.
pub const NAME: &str = "resource-starvation";

/// PSI resources, as `/proc/pressure` names them.
const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// Options of the `resource-starvation` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceStarvationConfig {
    /// How often everything is read.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub interval: Duration,
    /// A cgroup's interval p99 run-queue wait at or above this is starvation.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub runqueue_threshold: Duration,
    /// Waits an interval needs before its percentiles count.
    pub min_wakeups: u64,
    /// Share of a limited cgroup's periods throttled (0 to 1) that is throttling.
    pub throttled_ratio: f64,
    /// `some avg10` (percent of time) at or above which a resource is under pressure.
    pub pressure_threshold: f64,
    /// The cpu cgroup hierarchy; default `/sys/fs/cgroup` on v2, else `/sys/fs/cgroup/cpu`.
    pub cgroup_root: Option<PathBuf>,
    /// Cgroups read for throttling at most.
    pub max_cgroups: usize,
    /// Where PSI is read; default `/proc/pressure`.
    pub pressure_dir: PathBuf,
}

impl Default for ResourceStarvationConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            runqueue_threshold: Duration::from_millis(50),
            min_wakeups: 10,
            throttled_ratio: 0.25,
            pressure_threshold: 20.0,
            cgroup_root: None,
            max_cgroups: 4096,
            pressure_dir: "/proc/pressure".into(),
        }
    }
}

impl CollectorConfig for ResourceStarvationConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if self.interval < Duration::from_millis(100) {
            problems.push(format!(
                "{path}.interval: must be at least 100ms, got {:?}",
                self.interval
            ));
        }
        if self.runqueue_threshold.is_zero() {
            problems.push(format!("{path}.runqueue_threshold: must be above zero"));
        }
        if !(0.0..=1.0).contains(&self.throttled_ratio) {
            problems.push(format!(
                "{path}.throttled_ratio: must be from 0 to 1, got {}",
                self.throttled_ratio
            ));
        }
        if !(0.0..=100.0).contains(&self.pressure_threshold) {
            problems.push(format!(
                "{path}.pressure_threshold: must be a percentage from 0 to 100, got {}",
                self.pressure_threshold
            ));
        }
        if self.max_cgroups == 0 {
            problems.push(format!("{path}.max_cgroups: must be at least 1"));
        }
    }

    fn reporting_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            // Nothing is sent per record: the smallest ring buffer the kernel takes.
            let mut ebpf = load(object!("sched"), 4096, &[])?;
            attach_btf_tracepoint(&mut ebpf, "tapio_wakeup", "sched_wakeup")?;
            attach_btf_tracepoint(&mut ebpf, "tapio_wakeup_new", "sched_wakeup_new")?;
            attach_btf_tracepoint(&mut ebpf, "tapio_switch", "sched_switch")?;
            let waits: BpfHashMap<MapData, u64, Totals> = BpfHashMap::try_from(
                ebpf.take_map("waits")
                    .ok_or_else(|| Error::unavailable("probe object has no map waits"))?,
            )
            .map_err(|e| Error::unavailable_by("map waits", e))?;
            let ring = Ring::new(NAME, ebpf)?;
            let (root, v2) = hierarchy(self.cgroup_root.as_deref(), "cpu");
            let starvation = Starvation {
                stamp: Stamp::new(NAME, &cx.node_name),
                waits,
                growth: Growth::default(),
                queue_lines: Lines::default(),
                throttle_lines: Lines::default(),
                pressure_lines: Lines::default(),
                throttling: HashMap::new(),
                threshold_us: u64::try_from(self.runqueue_threshold.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
                root,
                v2,
                last_read: None,
                v2_root: cgroup2_root(),
                config: self,
            };
            let interval = starvation.config.interval;
            Ok::<Running, Error>(Box::pin(ring.pump_every(
                context,
                interval,
                starvation,
                |_, _| None,
                Starvation::read,
            )))
        })
    }
}

/// A limited cgroup's CFS counters, as last read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CfsStat {
    periods: u64,
    throttled: u64,
    throttled_us: u64,
}

/// The three readings, with what crossing them needs to remember.
struct Starvation {
    config: ResourceStarvationConfig,
    stamp: Stamp,
    waits: BpfHashMap<MapData, u64, Totals>,
    growth: Growth<u64>,
    queue_lines: Lines<u64>,
    throttle_lines: Lines<PathBuf>,
    // By (cgroup v2 path, or none for the node; resource).
    pressure_lines: Lines<(Option<String>, String)>,
    v2_root: Option<PathBuf>,
    throttling: HashMap<PathBuf, CfsStat>,
    threshold_us: u64,
    root: PathBuf,
    v2: bool,
    last_read: Option<u64>,
}

impl Starvation {
    /// Every event is stamped at the start of the interval its figures cover: what the
    /// starvation caused during it must not come before it.
    fn read(&mut self) -> Vec<Event> {
        let now = unix_nanos_now();
        let interval = u64::try_from(self.config.interval.as_nanos()).unwrap_or(u64::MAX);
        let started = self.last_read.replace(now).unwrap_or(now - interval);
        let mut events = self.run_queues(started);
        events.extend(self.throttling(started));
        events.extend(self.pressure(started));
        events
    }

    fn run_queues(&mut self, now: u64) -> Vec<Event> {
        let entries: Vec<(u64, Totals)> = self.waits.iter().filter_map(Result::ok).collect();
        let mut intervals: HashMap<u64, Log2> = HashMap::new();
        let mut idle = Vec::new();
        for (cgroup, totals) in entries {
            let Some(grown) = self.growth.since(cgroup, totals) else {
                idle.push(cgroup);
                continue;
            };
            intervals.entry(cgroup).or_default().add(&grown);
        }
        for cgroup in idle {
            // Deleted only after everything it counted was reported.
            let _ = self.waits.remove(&cgroup);
        }
        let readings: Vec<(u64, bool)> = intervals
            .iter()
            .map(|(cgroup, h)| (*cgroup, h.over(self.threshold_us, self.config.min_wakeups)))
            .collect();
        let mut events = Vec::new();
        for (cgroup, crossing) in self.queue_lines.cross(readings) {
            let waits = intervals.remove(&cgroup).unwrap_or_default();
            let kind = match crossing {
                Crossing::Over => "cpu.runqueue_latency",
                Crossing::Back => "cpu.runqueue_latency_recovered",
            };
            let mut event = self.stamp.node_event(now, kind);
            event.entities.cgroup_id = cgroup;
            if let Some(found) = self.stamp.container_of(0, cgroup) {
                event.entities.container_id = found;
            }
            let p99 = waits.quantile_us(990);
            let threshold = self.threshold_us;
            if crossing == Crossing::Over {
                event.severity = Severity::Warning;
                event.message = format!(
                    "tasks of cgroup {cgroup} waited p99 {p99} µs for a CPU, over {threshold} µs ({} waits)",
                    waits.count
                );
            } else {
                event.message =
                    format!("tasks of cgroup {cgroup} wait under {threshold} µs for a CPU again");
            }
            let as_int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let a = &mut event.attributes;
            a.set("p50_us", as_int(waits.quantile_us(500)));
            a.set("p99_us", as_int(p99));
            a.set("max_us", as_int(waits.max_us()));
            a.set("waits", as_int(waits.count));
            a.set("threshold_us", as_int(threshold));
            events.push(event);
        }
        events
    }

    /// The cgroups under the cpu hierarchy that have a CPU limit, with it: (quota, period)
    /// in microseconds.
    fn limited(&self) -> Vec<(PathBuf, (u64, u64))> {
        cgroup_dirs(&self.root, self.config.max_cgroups)
            .0
            .into_iter()
            .filter_map(|dir| Some((self.limit(&dir)?, dir)))
            .map(|(limit, dir)| (dir, limit))
            .collect()
    }

    fn limit(&self, dir: &Path) -> Option<(u64, u64)> {
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
        if self.v2 {
            let text = read("cpu.max")?;
            let (quota, period) = text.trim().split_once(' ')?;
            Some((quota.parse().ok()?, period.parse().ok()?))
        } else {
            // -1: no limit, which does not parse as unsigned.
            let quota = read("cpu.cfs_quota_us")?.trim().parse().ok()?;
            let period = read("cpu.cfs_period_us")?.trim().parse().ok()?;
            Some((quota, period))
        }
    }

    fn cfs_stat(&self, dir: &Path) -> Option<CfsStat> {
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<u64>().ok())?
            })
        };
        Some(CfsStat {
            periods: field("nr_periods")?,
            throttled: field("nr_throttled")?,
            throttled_us: if self.v2 {
                field("throttled_usec")?
            } else {
                field("throttled_time")? / 1000
            },
        })
    }

    #[allow(
        clippy::cast_precision_loss,
        reason = "period counts far below 2^52 become a ratio"
    )]
    fn throttling(&mut self, now: u64) -> Vec<Event> {
        let mut readings = Vec::new();
        let mut figures: HashMap<PathBuf, (CfsStat, (u64, u64), f64)> = HashMap::new();
        let mut current = HashMap::new();
        for (dir, limit) in self.limited() {
            let Some(stat) = self.cfs_stat(&dir) else {
                continue;
            };
            current.insert(dir.clone(), stat);
            let Some(before) = self.throttling.get(&dir) else {
                continue;
            };
            let grown = CfsStat {
                periods: stat.periods.saturating_sub(before.periods),
                throttled: stat.throttled.saturating_sub(before.throttled),
                throttled_us: stat.throttled_us.saturating_sub(before.throttled_us),
            };
            // No period ran: the cgroup was idle, so not throttled.
            let ratio = if grown.periods == 0 {
                0.0
            } else {
                grown.throttled as f64 / grown.periods as f64
            };
            readings.push((dir.clone(), ratio >= self.config.throttled_ratio));
            figures.insert(dir, (grown, limit, ratio));
        }
        self.throttling = current;
        let mut events = Vec::new();
        for (dir, crossing) in self.throttle_lines.cross(readings) {
            let (grown, (quota, period), ratio) = figures.remove(&dir).unwrap_or_default();
            let relative = format!(
                "/{}",
                dir.strip_prefix(&self.root).unwrap_or(&dir).display()
            );
            let identity = from_path(&relative);
            let kind = match crossing {
                Crossing::Over => "cpu.throttled",
                Crossing::Back => "cpu.throttled_ended",
            };
            let mut event = self.cgroup_event(now, kind, &identity);
            let name = match identity.describe() {
                named if !named.is_empty() => named,
                _ => format!("cgroup {relative}"),
            };
            #[allow(
                clippy::cast_possible_truncation,
                reason = "a percentage, rounded on purpose"
            )]
            let percent = (ratio * 100.0).round() as i64;
            if crossing == Crossing::Over {
                event.severity = Severity::Warning;
                event.message = format!(
                    "{name} was throttled in {percent}% of its CPU periods ({} ms refused, limit {quota} µs per {period} µs)",
                    grown.throttled_us / 1000
                );
            } else {
                event.message = format!("{name} is no longer throttled");
            }
            let as_int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let a = &mut event.attributes;
            a.set("cgroup", relative);
            a.set("throttled_ratio", (ratio * 1000.0).round() / 1000.0);
            a.set("throttled_periods", as_int(grown.throttled));
            a.set("periods", as_int(grown.periods));
            a.set("throttled_ms", as_int(grown.throttled_us / 1000));
            a.set("quota_us", as_int(quota));
            a.set("period_us", as_int(period));
            events.push(event);
        }
        events
    }

    /// The container, pod and unit cgroups of the cgroup v2 hierarchy, by path below it.
    fn v2_cgroups(&self) -> Vec<(PathBuf, String)> {
        let Some(root) = &self.v2_root else {
            return Vec::new();
        };
        cgroup_dirs(root, self.config.max_cgroups)
            .0
            .into_iter()
            .map(|dir| {
                let relative = format!("/{}", dir.strip_prefix(root).unwrap_or(&dir).display());
                (dir, relative)
            })
            .filter(|(_, relative)| !from_path(relative).is_empty())
            .collect()
    }

    /// The node's PSI, and each container, pod and unit cgroup's (cgroup v2).
    fn pressure(&mut self, now: u64) -> Vec<Event> {
        let mut readings = Vec::new();
        let mut figures = HashMap::new();
        let mut sources: Vec<(Option<String>, PathBuf, String)> = RESOURCES
            .iter()
            .map(|r| (None, self.config.pressure_dir.join(r), (*r).to_owned()))
            .collect();
        for (dir, relative) in self.v2_cgroups() {
            for resource in RESOURCES {
                sources.push((
                    Some(relative.clone()),
                    dir.join(format!("{resource}.pressure")),
                    resource.to_owned(),
                ));
            }
        }
        for (cgroup, file, resource) in sources {
            let Some(psi) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| Psi::parse(&text))
            else {
                continue;
            };
            let key = (cgroup, resource);
            readings.push((
                key.clone(),
                psi.some_avg10 >= self.config.pressure_threshold,
            ));
            figures.insert(key, psi);
        }
        let mut events = Vec::new();
        for (key, crossing) in self.pressure_lines.cross(readings) {
            let psi = figures.remove(&key).unwrap_or_default();
            let (cgroup, resource) = key;
            let kind = match crossing {
                Crossing::Over => "pressure.high",
                Crossing::Back => "pressure.relieved",
            };
            let (mut event, whose) = match &cgroup {
                Some(path) => {
                    let identity = from_path(path);
                    let whose = format!("{}: ", identity.describe());
                    (self.cgroup_event(now, kind, &identity), whose)
                }
                None => (self.stamp.node_event(now, kind), String::new()),
            };
            if crossing == Crossing::Over {
                event.severity = Severity::Warning;
                event.message = format!(
                    "{whose}{resource} pressure: some task stalled {:.1}% of the last 10 s",
                    psi.some_avg10
                );
            } else {
                event.message = format!(
                    "{whose}{resource} pressure back under {}%",
                    self.config.pressure_threshold
                );
            }
            let a = &mut event.attributes;
            a.set("resource", resource);
            a.set("some_avg10", psi.some_avg10);
            a.set("some_avg60", psi.some_avg60);
            a.set("full_avg10", psi.full_avg10);
            a.set("threshold", self.config.pressure_threshold);
            if let Some(path) = cgroup {
                a.set("cgroup", path);
            }
            events.push(event);
        }
        events
    }

    fn cgroup_event(&mut self, now: u64, kind: &'static str, identity: &Identity) -> Event {
        let mut event = self.stamp.node_event(now, kind);
        let e = &mut event.entities;
        e.container_id = std::sync::Arc::clone(&identity.container_id);
        e.pod_uid = std::sync::Arc::clone(&identity.pod_uid);
        e.unit = std::sync::Arc::clone(&identity.unit);
        event
    }
}

/// One `/proc/pressure` file's averages.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Psi {
    some_avg10: f64,
    some_avg60: f64,
    full_avg10: f64,
}

impl Psi {
    /// `some avg10=1.18 avg60=3.08 avg300=7.42 total=4772584733` and a `full` line (absent
    /// for cpu on old kernels).
    fn parse(text: &str) -> Option<Self> {
        let line = |kind: &str| text.lines().find(|l| l.starts_with(kind));
        let value = |line: &str, key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse::<f64>().ok())
        };
        let some = line("some ")?;
        let full = line("full ");
        Some(Self {
            some_avg10: value(some, "avg10")?,
            some_avg60: value(some, "avg60")?,
            full_avg10: full.and_then(|f| value(f, "avg10")).unwrap_or(0.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_lines_are_read() {
        let text = "some avg10=21.50 avg60=3.08 avg300=7.42 total=4772584733\nfull avg10=2.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            Psi::parse(text),
            Some(Psi {
                some_avg10: 21.5,
                some_avg60: 3.08,
                full_avg10: 2.0
            })
        );
        assert_eq!(
            Psi::parse("some avg10=1.00 avg60=2.00 avg300=0 total=0\n").map(|p| p.full_avg10),
            Some(0.0)
        );
        assert_eq!(Psi::parse("garbage"), None);
    }

    #[test]
    fn bad_options_are_named() {
        let config = ResourceStarvationConfig {
            throttled_ratio: 2.0,
            pressure_threshold: 120.0,
            ..ResourceStarvationConfig::default()
        };
        let mut problems = Vec::new();
        config.validate("c", &mut problems);
        assert_eq!(
            problems,
            [
                "c.throttled_ratio: must be from 0 to 1, got 2",
                "c.pressure_threshold: must be a percentage from 0 to 100, got 120",
            ]
        );
    }
}
