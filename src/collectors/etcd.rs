//! `etcd-metrics`: an etcd member's `/metrics` and `/health`, scraped every interval, turned
//! into events when something crosses a line: the leader changed or is missing, fsync or
//! commit latency is high, the database nears its quota, proposals failed, the member is
//! unhealthy or unreachable (and when it recovers).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::collectors::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};
use crate::http::{HttpClient, Tls};
use crate::units::deserialize_duration;

/// Registry name.
pub const NAME: &str = "etcd-metrics";

/// Options of the `etcd-metrics` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// The member's client URL.
    pub endpoint: String,
    /// Time between scrapes.
    #[serde(deserialize_with = "deserialize_duration")]
    pub interval: Duration,
    /// CA bundle (PEM) for an `https` endpoint; unset: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) when etcd asks for one.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
    /// p99 WAL fsync latency over an interval above this is `etcd.slow_fsync`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub slow_fsync: Duration,
    /// p99 backend commit latency over an interval above this is `etcd.slow_commit`.
    #[serde(deserialize_with = "deserialize_duration")]
    pub slow_commit: Duration,
    /// Database size over this share of the quota is `etcd.db_size_near_quota`.
    pub db_quota_ratio: f64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:2379".into(),
            interval: Duration::from_secs(15),
            ca_file: None,
            cert_file: None,
            key_file: None,
            insecure_skip_verify: false,
            // etcd's own guidance: WAL fsync p99 under 10 ms, backend commit under 25 ms.
            slow_fsync: Duration::from_millis(100),
            slow_commit: Duration::from_millis(250),
            db_quota_ratio: 0.8,
        }
    }
}

impl EtcdConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            problems.push(format!(
                "{prefix}.endpoint: an http:// or https:// URL, got `{}`",
                self.endpoint
            ));
        }
        if self.interval < Duration::from_secs(1) {
            problems.push(format!(
                "{prefix}.interval: must be at least 1s, got {:?}",
                self.interval
            ));
        }
        if !(self.db_quota_ratio > 0.0 && self.db_quota_ratio <= 1.0) {
            problems.push(format!(
                "{prefix}.db_quota_ratio: must be above 0 and at most 1, got {}",
                self.db_quota_ratio
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(format!(
                "{prefix}.cert_file: and key_file go together; set both or neither"
            ));
        }
        super::check_files(
            prefix,
            &[
                ("ca_file", self.ca_file.as_deref()),
                ("cert_file", self.cert_file.as_deref()),
                ("key_file", self.key_file.as_deref()),
            ],
            problems,
        );
    }
}

impl CollectorConfig for EtcdConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn reporting_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let tls = Tls {
                ca_file: self.ca_file.clone(),
                cert_file: self.cert_file.clone(),
                key_file: self.key_file.clone(),
                insecure_skip_verify: self.insecure_skip_verify,
            };
            let client = HttpClient::new(&tls, None, Duration::from_secs(5))
                .map_err(|e| Error::unavailable_by("TLS settings", e))?;
            Ok::<Running, Error>(Box::pin(run(self, cx.node_name.into(), client, context)))
        })
    }
}

/// Prometheus text format, reduced to what is read here: one value per name and label
/// set, as `name{labels}` -> value.
#[must_use]
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            // The value follows the last space outside the braces (labels can hold spaces).
            let end = line.rfind('}').map_or(0, |i| i + 1);
            let (series, rest) = match line[end..].find(' ') {
                Some(i) => (&line[..end + i], &line[end + i + 1..]),
                None => return None,
            };
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((series.to_owned(), value))
        })
        .collect()
}

/// The `le` buckets of histogram `name`, sorted by bound: (upper bound, cumulative count).
fn buckets(metrics: &HashMap<String, f64>, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = metrics
        .iter()
        .filter_map(|(series, count)| {
            let labels = series.strip_prefix(&prefix)?;
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The p99 (seconds, as a bucket's upper bound) of what histogram `name` saw between two
/// scrapes; `None` when it saw nothing.
#[must_use]
fn p99_between(
    before: &HashMap<String, f64>,
    now: &HashMap<String, f64>,
    name: &str,
) -> Option<f64> {
    let old: HashMap<u64, f64> = buckets(before, name)
        .into_iter()
        .map(|(b, c)| (b.to_bits(), c))
        .collect();
    let delta: Vec<(f64, f64)> = buckets(now, name)
        .into_iter()
        .map(|(b, c)| (b, c - old.get(&b.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, count)| *count >= total * 0.99)
        .map(|(bound, _)| *bound)
}

fn value(metrics: &HashMap<String, f64>, name: &str) -> Option<f64> {
    metrics.get(name).copied()
}

/// What changed between two scrapes, as (kind, severity, message, attributes).
type Finding = (&'static str, Severity, String, Vec<(&'static str, f64)>);

/// The findings of scrape `now` after scrape `before` (none at the first scrape).
#[must_use]
fn findings(
    config: &EtcdConfig,
    before: Option<&HashMap<String, f64>>,
    now: &HashMap<String, f64>,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let has_leader = value(now, "etcd_server_has_leader");
    if has_leader == Some(0.0)
        && before.and_then(|b| value(b, "etcd_server_has_leader")) != Some(0.0)
    {
        out.push((
            "etcd.no_leader",
            Severity::Critical,
            "the member has no leader".into(),
            Vec::new(),
        ));
    }
    let Some(before) = before else {
        return out;
    };
    // A counter that went down is a restarted member: not a change.
    let increase = |name: &str| {
        let (old, new) = (value(before, name)?, value(now, name)?);
        (new > old).then_some(new - old)
    };
    if let Some(changes) = increase("etcd_server_leader_changes_seen_total") {
        out.push((
            "etcd.leader_changed",
            Severity::Warning,
            format!("the leader changed {changes} time(s) since the last scrape"),
            vec![("leader_changes", changes)],
        ));
    }
    if let Some(failed) = increase("etcd_server_proposals_failed_total") {
        out.push((
            "etcd.proposals_failed",
            Severity::Warning,
            format!("{failed} proposal(s) failed since the last scrape"),
            vec![("proposals_failed", failed)],
        ));
    }
    for (metric, limit, kind, what) in [
        (
            "etcd_disk_wal_fsync_duration_seconds",
            config.slow_fsync,
            "etcd.slow_fsync",
            "WAL fsync",
        ),
        (
            "etcd_disk_backend_commit_duration_seconds",
            config.slow_commit,
            "etcd.slow_commit",
            "backend commit",
        ),
    ] {
        if let Some(p99) = p99_between(before, now, metric)
            && p99 > limit.as_secs_f64()
        {
            out.push((
                kind,
                Severity::Warning,
                format!(
                    "{what} p99 up to {:.0} ms over the last interval (limit {} ms)",
                    p99 * 1000.0,
                    limit.as_millis()
                ),
                vec![("p99_seconds", p99), ("limit_seconds", limit.as_secs_f64())],
            ));
        }
    }
    let size = value(now, "etcd_mvcc_db_total_size_in_bytes");
    let quota = value(now, "etcd_server_quota_backend_bytes");
    if let (Some(size), Some(quota)) = (size, quota)
        && quota > 0.0
    {
        let ratio = size / quota;
        let was = value(before, "etcd_mvcc_db_total_size_in_bytes").map_or(0.0, |s| s / quota);
        if ratio >= config.db_quota_ratio && was < config.db_quota_ratio {
            out.push((
                "etcd.db_size_near_quota",
                Severity::Warning,
                format!(
                    "the database is {:.0}% of its quota ({} of {} MiB)",
                    ratio * 100.0,
                    (size / 1_048_576.0).round(),
                    (quota / 1_048_576.0).round()
                ),
                vec![
                    ("db_size_bytes", size),
                    ("quota_bytes", quota),
                    ("ratio", ratio),
                ],
            ));
        }
    }
    out
}

async fn run(
    config: EtcdConfig,
    node: Arc<str>,
    client: HttpClient,
    context: Context,
) -> Result<(), Error> {
    let base = config.endpoint.trim_end_matches('/').to_owned();
    let mut ids = IdGenerator::new();
    let mut previous: Option<HashMap<String, f64>> = None;
    // None until the first scrape: a member down at start is reported, a healthy one not.
    // 0 healthy, 1 unhealthy, 2 unreachable: each change between them is an event.
    let mut state: Option<u8> = None;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let mut out = Vec::new();
        let health = match client.get(&format!("{base}/health")).await {
            Ok(response) => {
                let body: serde_json::Value =
                    serde_json::from_slice(&response.body).unwrap_or_default();
                let ok = response.status == 200 && body["health"] == "true";
                Ok((ok, body["reason"].as_str().unwrap_or_default().to_owned()))
            }
            Err(e) => Err(e),
        };
        let now = match &health {
            Ok((true, _)) => 0,
            Ok((false, _)) => 1,
            Err(_) => 2,
        };
        if state != Some(now) {
            let (kind, severity, message) = match &health {
                Ok((true, _)) if state.is_some() => (
                    "etcd.healthy",
                    Severity::Info,
                    format!("{base} is healthy again"),
                ),
                Ok((true, _)) => ("", Severity::Info, String::new()),
                Ok((false, reason)) => (
                    "etcd.unhealthy",
                    Severity::Critical,
                    format!("{base} reports unhealthy {reason}"),
                ),
                Err(e) => (
                    "etcd.unreachable",
                    Severity::Critical,
                    format!("{base} cannot be reached: {e}"),
                ),
            };
            if !kind.is_empty() {
                out.push((kind, severity, message, Vec::new()));
            }
            state = Some(now);
        }
        if let Ok(response) = client.get(&format!("{base}/metrics")).await
            && response.status == 200
        {
            let metrics = parse_metrics(&String::from_utf8_lossy(&response.body));
            out.extend(findings(&config, previous.as_ref(), &metrics));
            previous = Some(metrics);
        }
        for (kind, severity, message, attributes) in out {
            let mut event = Event::new(ids.next_id(), unix_nanos_now(), kind, NAME);
            event.severity = severity;
            event.message = message;
            event.entities.node = Arc::clone(&node);
            event.attributes.set("endpoint", base.as_str());
            for (key, value) in attributes {
                event.attributes.set(key, value);
            }
            context.out.send(event).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(
        leader_changes: f64,
        failed: f64,
        fsync_slow: f64,
        size: f64,
    ) -> HashMap<String, f64> {
        let text = format!(
            "# HELP etcd_server_has_leader Whether or not a leader exists.\n\
             # TYPE etcd_server_has_leader gauge\n\
             etcd_server_has_leader 1\n\
             etcd_server_leader_changes_seen_total {leader_changes}\n\
             etcd_server_proposals_failed_total {failed}\n\
             etcd_disk_wal_fsync_duration_seconds_bucket{{le=\"0.008\"}} 100\n\
             etcd_disk_wal_fsync_duration_seconds_bucket{{le=\"0.512\"}} {}\n\
             etcd_disk_wal_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
             etcd_mvcc_db_total_size_in_bytes {size}\n\
             etcd_server_quota_backend_bytes 1000\n",
            100.0 + fsync_slow,
            100.0 + fsync_slow
        );
        parse_metrics(&text)
    }

    #[test]
    fn crossings_between_scrapes_become_findings_and_steady_state_none() {
        let config = EtcdConfig::default();
        let first = scrape(1.0, 0.0, 0.0, 100.0);
        assert!(
            findings(&config, None, &first).is_empty(),
            "the first scrape is a baseline"
        );
        let steady = scrape(1.0, 0.0, 0.0, 100.0);
        assert!(findings(&config, Some(&first), &steady).is_empty());
        let bad = scrape(3.0, 2.0, 50.0, 900.0);
        let kinds: Vec<&str> = findings(&config, Some(&steady), &bad)
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            kinds,
            [
                "etcd.leader_changed",
                "etcd.proposals_failed",
                "etcd.slow_fsync",
                "etcd.db_size_near_quota"
            ]
        );
        // A restarted member's counters start again: no change reported; size stays high
        // but was already reported.
        let restarted = scrape(1.0, 0.0, 0.0, 900.0);
        assert!(findings(&config, Some(&bad), &restarted).is_empty());
    }

    #[test]
    fn labelled_series_parse_with_their_labels() {
        let metrics = parse_metrics("a_total{method=\"GET\",path=\"/x y\"} 7\nb 1.5e3\n");
        assert!((metrics["a_total{method=\"GET\",path=\"/x y\"}"] - 7.0).abs() < 1e-9);
        assert!((metrics["b"] - 1500.0).abs() < 1e-9);
    }
}
