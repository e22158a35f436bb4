//! `memory-leak-hunter`: memory that grows steadily toward its limit, and storms of major
//! page faults, per container, pod or systemd unit cgroup.
//!
//! The kernel already aggregates both per cgroup (`memory.stat`'s `anon` and `pgmajfault`),
//! so this collector samples them every `interval` instead of tracing each allocation: no
//! probe, and a cost that grows with the number of cgroups, not with the allocation rate.
//! A least-squares line through the last `window` of anonymous-memory samples decides
//! growth: `memory.growth` once when the slope passes `min_growth_per_minute` with a fit of
//! at least `min_fit` (R²), with the time until the cgroup's limit at that slope, and
//! `memory.growth_stopped` once when it no longer does. Works on cgroup v2 and on v1's
//! memory hierarchy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::ebpf::containers::{Identity, cgroup_dirs, from_path, hierarchy};
use super::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};

/// Registry name.
pub const NAME: &str = "memory-leak-hunter";

/// Options of the `memory-leak-hunter` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryLeakHunterConfig {
    /// How often every cgroup is sampled.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub interval: Duration,
    /// How far back the growth line is fitted.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub window: Duration,
    /// Growth slower than this (bytes per minute) is not growth.
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub min_growth_per_minute: u64,
    /// How well the line must fit the samples (R², 0 to 1) to call it steady growth.
    pub min_fit: f64,
    /// Major page faults per second in one cgroup that make a storm.
    pub major_faults_per_second: u64,
    /// The memory cgroup hierarchy; default `/sys/fs/cgroup` on v2, else
    /// `/sys/fs/cgroup/memory`.
    pub root: Option<PathBuf>,
    /// Cgroups sampled at most; the walk stops there and says so once.
    pub max_cgroups: usize,
}

impl Default for MemoryLeakHunterConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            window: Duration::from_mins(10),
            min_growth_per_minute: 1 << 20,
            min_fit: 0.9,
            major_faults_per_second: 1000,
            root: None,
            max_cgroups: 4096,
        }
    }
}

impl CollectorConfig for MemoryLeakHunterConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        if self.interval < Duration::from_millis(100) {
            problems.push(format!(
                "{path}.interval: must be at least 100ms, got {:?}",
                self.interval
            ));
        }
        if self.window < self.interval * 4 {
            problems.push(format!(
                "{path}.window: must hold at least 4 intervals ({:?}), got {:?}",
                self.interval * 4,
                self.window
            ));
        }
        if !(0.0..=1.0).contains(&self.min_fit) {
            problems.push(format!(
                "{path}.min_fit: must be from 0 to 1, got {}",
                self.min_fit
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
            let (root, v2) = hierarchy(self.root.as_deref(), "memory");
            if !root
                .join(if v2 {
                    "memory.stat"
                } else {
                    "memory.usage_in_bytes"
                })
                .exists()
                && !root.join("cgroup.procs").exists()
            {
                return Err(Error::unavailable(format!(
                    "no memory cgroup hierarchy at {}",
                    root.display()
                )));
            }
            let hunter = Hunter::new(self, root, v2, &cx.node_name);
            Ok::<Running, Error>(Box::pin(run(hunter, context)))
        })
    }
}

async fn run(mut hunter: Hunter, context: Context) -> Result<(), Error> {
    let mut ticker = tokio::time::interval(hunter.config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = context.shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let events = hunter.sample(unix_nanos_now(), &context);
        for event in events {
            context.out.send(event).await?;
        }
    }
}

/// One cgroup's reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Reading {
    anon: u64,
    usage: u64,
    limit: Option<u64>,
    major_faults: u64,
}

/// What is remembered of one cgroup between samples.
#[derive(Debug, Default)]
struct Watched {
    /// (Unix seconds, anonymous bytes), oldest first, within the window.
    samples: VecDeque<(f64, f64)>,
    growing: bool,
    storming: bool,
    last_faults: Option<(u64, u64)>,
    identity: Option<Arc<Identity>>,
}

struct Hunter {
    config: MemoryLeakHunterConfig,
    root: PathBuf,
    v2: bool,
    node: Arc<str>,
    ids: IdGenerator,
    watched: HashMap<PathBuf, Watched>,
    said_full: bool,
}

/// A line fitted through samples: its slope (per second) and how well it fits (R²).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Fit {
    slope: f64,
    r_squared: f64,
}

/// The least-squares line through `samples`; `None` with fewer than three.
#[allow(
    clippy::cast_precision_loss,
    reason = "a window holds far fewer than 2^52 samples"
)]
fn fit(samples: &VecDeque<(f64, f64)>) -> Option<Fit> {
    if samples.len() < 3 {
        return None;
    }
    let n = samples.len() as f64;
    let (t0, _) = samples[0];
    let mean_t = samples.iter().map(|(t, _)| t - t0).sum::<f64>() / n;
    let mean_y = samples.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut stt, mut sty, mut syy) = (0.0, 0.0, 0.0);
    for (t, y) in samples {
        let (dt, dy) = (t - t0 - mean_t, y - mean_y);
        stt += dt * dt;
        sty += dt * dy;
        syy += dy * dy;
    }
    if stt == 0.0 {
        return None;
    }
    let slope = sty / stt;
    // All samples equal: a flat line, no growth to fit.
    let r_squared = if syy == 0.0 {
        0.0
    } else {
        (sty * sty) / (stt * syy)
    };
    Some(Fit { slope, r_squared })
}

impl Hunter {
    fn new(config: MemoryLeakHunterConfig, root: PathBuf, v2: bool, node: &str) -> Self {
        Self {
            config,
            root,
            v2,
            node: node.into(),
            ids: IdGenerator::new(),
            watched: HashMap::new(),
            said_full: false,
        }
    }

    /// The cgroups to sample; says once when there are more than `max_cgroups`.
    fn cgroups(&mut self, context: &Context) -> Vec<PathBuf> {
        let (found, more) = cgroup_dirs(&self.root, self.config.max_cgroups);
        if more && !self.said_full {
            self.said_full = true;
            context.degraded(format!(
                "more than max_cgroups ({}) cgroups; the rest are not sampled",
                self.config.max_cgroups
            ));
        }
        found
    }

    fn read(&self, dir: &Path) -> Option<Reading> {
        let text = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let number = |file: &str| text(file)?.trim().parse::<u64>().ok();
        let stat = text("memory.stat")?;
        let field = |name: &str| {
            stat.lines().find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<u64>().ok())?
            })
        };
        if self.v2 {
            Some(Reading {
                anon: field("anon")?,
                usage: number("memory.current")?,
                // "max" (no limit) does not parse.
                limit: number("memory.max"),
                major_faults: field("pgmajfault").unwrap_or(0),
            })
        } else {
            // v1 reports "no limit" as a page-rounded i64::MAX.
            let limit = number("memory.limit_in_bytes").filter(|l| *l < 1 << 60);
            Some(Reading {
                anon: field("total_rss").or_else(|| field("rss"))?,
                usage: number("memory.usage_in_bytes")?,
                limit,
                major_faults: field("total_pgmajfault")
                    .or_else(|| field("pgmajfault"))
                    .unwrap_or(0),
            })
        }
    }

    /// Samples every cgroup once; the events of what crossed a line.
    #[allow(
        clippy::cast_precision_loss,
        reason = "byte counts below 2^52 are exact enough for a fitted line"
    )]
    fn sample(&mut self, now: u64, context: &Context) -> Vec<Event> {
        let seconds = now as f64 / 1e9;
        let window = self.config.window.as_secs_f64();
        let mut events = Vec::new();
        let mut seen = HashSet::new();
        for dir in self.cgroups(context) {
            let relative = format!(
                "/{}",
                dir.strip_prefix(&self.root).unwrap_or(&dir).display()
            );
            let identity = from_path(&relative);
            if identity.is_empty() {
                continue;
            }
            let Some(reading) = self.read(&dir) else {
                continue;
            };
            seen.insert(dir.clone());
            let watched = self.watched.entry(dir.clone()).or_default();
            watched
                .identity
                .get_or_insert_with(|| Arc::new(identity.clone()));
            watched.samples.push_back((seconds, reading.anon as f64));
            while watched
                .samples
                .front()
                .is_some_and(|(t, _)| seconds - t > window)
            {
                watched.samples.pop_front();
            }
            let interval = self.config.interval.as_secs_f64();
            let span = watched.samples.back().map_or(0.0, |b| b.0) - watched.samples[0].0;
            let growth = (span >= window / 2.0 - interval / 2.0)
                .then(|| fit(&watched.samples))
                .flatten();
            let growing = growth.is_some_and(|f| {
                f.slope * 60.0 >= self.config.min_growth_per_minute as f64
                    && f.r_squared >= self.config.min_fit
            });
            let growth_kind = match (watched.growing, growing, growth) {
                (false, true, _) => Some("memory.growth"),
                (true, false, Some(_)) => Some("memory.growth_stopped"),
                _ => None,
            };
            let faults = watched.last_faults.map(|(at, before)| {
                let elapsed = (now.saturating_sub(at)) as f64 / 1e9;
                reading.major_faults.saturating_sub(before) as f64 / elapsed.max(1e-3)
            });
            watched.last_faults = Some((now, reading.major_faults));
            let storming = faults.is_some_and(|f| f >= self.config.major_faults_per_second as f64);
            let storm_kind = match (watched.storming, storming) {
                (false, true) => Some("memory.page_fault_storm"),
                (true, false) => Some("memory.page_fault_storm_ended"),
                _ => None,
            };
            watched.growing = growing;
            watched.storming = storming;
            let identity = watched.identity.clone().unwrap_or_default();
            if let Some(kind) = growth_kind {
                let fit = growth.expect("a crossing has a fit");
                events.push(self.growth_event(now, kind, &relative, &identity, reading, fit));
            }
            if let Some(kind) = storm_kind {
                events.push(self.storm_event(
                    now,
                    kind,
                    &relative,
                    &identity,
                    faults.unwrap_or(0.0),
                ));
            }
        }
        // Cgroups that are gone are forgotten.
        self.watched.retain(|dir, _| seen.contains(dir));
        events
    }

    fn event(&mut self, now: u64, kind: &'static str, cgroup: &str, identity: &Identity) -> Event {
        let mut event = Event::new(self.ids.next_id(), now, kind, NAME);
        let e = &mut event.entities;
        e.node = Arc::clone(&self.node);
        e.container_id = Arc::clone(&identity.container_id);
        e.pod_uid = Arc::clone(&identity.pod_uid);
        e.unit = Arc::clone(&identity.unit);
        event.attributes.set("cgroup", cgroup.to_owned());
        event
    }

    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_precision_loss,
        reason = "rates and times far inside i64, rounded on purpose"
    )]
    fn growth_event(
        &mut self,
        now: u64,
        kind: &'static str,
        cgroup: &str,
        identity: &Identity,
        reading: Reading,
        fit: Fit,
    ) -> Event {
        let mut event = self.event(now, kind, cgroup, identity);
        let per_minute = (fit.slope * 60.0) as i64;
        let to_limit = reading
            .limit
            .filter(|_| fit.slope > 0.0)
            .map(|limit| (limit.saturating_sub(reading.usage) as f64 / fit.slope).round() as i64);
        let name = identity.describe();
        if kind == "memory.growth" {
            event.severity = Severity::Warning;
            event.message = match to_limit {
                Some(s) => format!(
                    "{name}: memory grows {} MiB/min (R² {:.2}); its limit is {s} s away",
                    per_minute >> 20,
                    fit.r_squared
                ),
                None => format!(
                    "{name}: memory grows {} MiB/min (R² {:.2}), with no limit",
                    per_minute >> 20,
                    fit.r_squared
                ),
            };
        } else {
            event.message = format!("{name}: memory no longer grows steadily");
        }
        let a = &mut event.attributes;
        a.set("growth_bytes_per_minute", per_minute);
        a.set("r_squared", (fit.r_squared * 1000.0).round() / 1000.0);
        a.set(
            "anon_bytes",
            i64::try_from(reading.anon).unwrap_or(i64::MAX),
        );
        a.set(
            "usage_bytes",
            i64::try_from(reading.usage).unwrap_or(i64::MAX),
        );
        a.set(
            "window_seconds",
            i64::try_from(self.config.window.as_secs()).unwrap_or(i64::MAX),
        );
        if let Some(limit) = reading.limit {
            a.set("limit_bytes", i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(seconds) = to_limit {
            a.set("seconds_to_limit", seconds);
        }
        event
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "a rate far inside i64, rounded on purpose"
    )]
    fn storm_event(
        &mut self,
        now: u64,
        kind: &'static str,
        cgroup: &str,
        identity: &Identity,
        per_second: f64,
    ) -> Event {
        let mut event = self.event(now, kind, cgroup, identity);
        let rate = per_second.round() as i64;
        let name = identity.describe();
        if kind == "memory.page_fault_storm" {
            event.severity = Severity::Warning;
            event.message = format!("{name}: {rate} major page faults/s");
        } else {
            event.message = format!("{name}: major page faults back to {rate}/s");
        }
        event.attributes.set("major_faults_per_second", rate);
        event.attributes.set(
            "threshold",
            i64::try_from(self.config.major_faults_per_second).unwrap_or(i64::MAX),
        );
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: &[(f64, f64)]) -> VecDeque<(f64, f64)> {
        points.iter().copied().collect()
    }

    #[test]
    fn a_steady_climb_fits_and_noise_does_not() {
        let climb = line(&[(0.0, 100.0), (1.0, 110.0), (2.0, 120.0), (3.0, 130.0)]);
        let f = fit(&climb).expect("a fit");
        assert!((f.slope - 10.0).abs() < 1e-9);
        assert!((f.r_squared - 1.0).abs() < 1e-9);
        let noise = line(&[
            (0.0, 100.0),
            (1.0, 140.0),
            (2.0, 90.0),
            (3.0, 130.0),
            (4.0, 95.0),
        ]);
        assert!(fit(&noise).expect("a fit").r_squared < 0.3);
        let flat = line(&[(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)]);
        assert_eq!(fit(&flat).map(|f| f.r_squared), Some(0.0));
        assert!(fit(&line(&[(0.0, 1.0), (1.0, 2.0)])).is_none());
    }

    #[test]
    fn bad_options_are_named() {
        let config = MemoryLeakHunterConfig {
            interval: Duration::from_secs(10),
            window: Duration::from_secs(20),
            min_fit: 1.5,
            ..MemoryLeakHunterConfig::default()
        };
        let mut problems = Vec::new();
        config.validate("c", &mut problems);
        assert_eq!(
            problems,
            [
                "c.window: must hold at least 4 intervals (40s), got 20s",
                "c.min_fit: must be from 0 to 1, got 1.5",
            ]
        );
    }
}
