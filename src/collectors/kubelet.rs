//! `kubelet`: the node's kubelet, read over its HTTPS API (`/pods` and `/stats/summary`)
//! every interval, with the service account's token. Events when the node's memory, file
//! system or CPU crosses a pressure line (and when it falls back), when a pod's memory nears
//! its limit, and when a container restarts: the node's own view, for clusters where the
//! API server is far or slow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};
use crate::http::{HttpClient, Tls};
use crate::units::deserialize_duration;

/// Registry name.
pub const NAME: &str = "kubelet";

/// The service account's token and CA where Kubernetes mounts them.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Options of the `kubelet` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletConfig {
    /// The kubelet's API.
    pub endpoint: String,
    /// Bearer token file; default the service account's, when mounted.
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) the kubelet's certificate is checked against; unset: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate (kind and other clusters whose kubelets serve self-signed).
    pub insecure_skip_verify: bool,
    /// Time between reads.
    #[serde(deserialize_with = "deserialize_duration")]
    pub interval: Duration,
    /// Node memory in use (working set over working set plus available) at or above this
    /// share is pressure.
    pub memory_pressure_ratio: f64,
    /// Node file system in use at or above this share is pressure.
    pub fs_pressure_ratio: f64,
    /// Node CPU in use (of `cpu_cores`) at or above this share is pressure.
    pub cpu_pressure_ratio: f64,
    /// The node's cores; default this host's.
    pub cpu_cores: Option<u32>,
    /// A pod's working set at or above this share of its memory limit is reported.
    pub pod_memory_ratio: f64,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://127.0.0.1:10250".into(),
            token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            interval: Duration::from_secs(15),
            memory_pressure_ratio: 0.9,
            fs_pressure_ratio: 0.9,
            cpu_pressure_ratio: 0.9,
            cpu_cores: None,
            pod_memory_ratio: 0.9,
        }
    }
}

impl KubeletConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://")) {
            problems.push(format!(
                "{prefix}.endpoint: an https:// URL, got `{}`",
                self.endpoint
            ));
        }
        if self.interval < Duration::from_secs(1) {
            problems.push(format!(
                "{prefix}.interval: must be at least 1s, got {:?}",
                self.interval
            ));
        }
        for (field, ratio) in [
            ("memory_pressure_ratio", self.memory_pressure_ratio),
            ("fs_pressure_ratio", self.fs_pressure_ratio),
            ("cpu_pressure_ratio", self.cpu_pressure_ratio),
            ("pod_memory_ratio", self.pod_memory_ratio),
        ] {
            if !(ratio > 0.0 && ratio <= 1.0) {
                problems.push(format!(
                    "{prefix}.{field}: must be above 0 and at most 1, got {ratio}"
                ));
            }
        }
        super::check_files(
            prefix,
            &[
                ("token_file", self.token_file.as_deref()),
                ("ca_file", self.ca_file.as_deref()),
            ],
            problems,
        );
        if self.cpu_cores == Some(0) {
            problems.push(format!("{prefix}.cpu_cores: must be at least 1"));
        }
    }
}

impl CollectorConfig for KubeletConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Kubernetes);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn reporting_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mounted = Path::new(SERVICE_ACCOUNT).join("token");
            let token_file = self
                .token_file
                .clone()
                .or_else(|| mounted.is_file().then_some(mounted));
            let token = match &token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            Error::unavailable_by(format!("token_file {}", path.display()), e)
                        })?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let tls = Tls {
                ca_file: self.ca_file.clone(),
                insecure_skip_verify: self.insecure_skip_verify,
                ..Tls::default()
            };
            let client = HttpClient::new(&tls, token, Duration::from_secs(10))
                .map_err(|e| Error::unavailable_by("TLS settings", e))?;
            Ok::<Running, Error>(Box::pin(run(self, cx.node_name.into(), client, context)))
        })
    }
}

/// One reading of the node.
#[derive(Debug, Default)]
struct Reading {
    /// resource -> share in use.
    node: Vec<(&'static str, f64)>,
    /// pod uid -> (namespace, name, working set, limit).
    pod_memory: HashMap<String, (String, String, f64, f64)>,
    /// (pod uid, container) -> its restarts.
    restarts: HashMap<(String, String), Restarts>,
}

/// A container's restart count and how its last run ended.
#[derive(Debug)]
struct Restarts {
    namespace: String,
    pod: String,
    count: i64,
    reason: String,
    exit_code: i64,
}

fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(0.0)
}

/// A memory quantity (`512Mi`, `1G`, `1048576`) in bytes.
fn quantity(text: &str) -> Option<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let base: f64 = digits.parse().ok()?;
    let factor = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some(base * factor)
}

fn read(summary: &Value, pods: &Value, cores: f64) -> Reading {
    let mut reading = Reading::default();
    let node = &summary["node"];
    let (working, available) = (
        number(&node["memory"]["workingSetBytes"]),
        number(&node["memory"]["availableBytes"]),
    );
    if working + available > 0.0 {
        reading
            .node
            .push(("memory", working / (working + available)));
    }
    let capacity = number(&node["fs"]["capacityBytes"]);
    if capacity > 0.0 {
        reading
            .node
            .push(("fs", number(&node["fs"]["usedBytes"]) / capacity));
    }
    if node["cpu"]["usageNanoCores"].is_number() {
        reading.node.push((
            "cpu",
            number(&node["cpu"]["usageNanoCores"]) / (cores * 1e9),
        ));
    }
    // Limits come from the pod specs; a pod has one only when every container has one.
    let mut limits: HashMap<String, f64> = HashMap::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let containers = pod["spec"]["containers"].as_array().into_iter().flatten();
        let limit: Option<f64> = containers
            .map(|c| {
                c["resources"]["limits"]["memory"]
                    .as_str()
                    .and_then(quantity)
            })
            .sum();
        if let Some(limit) = limit.filter(|l| *l > 0.0) {
            limits.insert(uid.clone(), limit);
        }
        let (namespace, name) = (
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let last = &status["lastState"]["terminated"];
            reading.restarts.insert(
                (
                    uid.clone(),
                    status["name"].as_str().unwrap_or_default().to_owned(),
                ),
                Restarts {
                    namespace: namespace.clone(),
                    pod: name.clone(),
                    count: status["restartCount"].as_i64().unwrap_or(0),
                    reason: last["reason"].as_str().unwrap_or_default().to_owned(),
                    exit_code: last["exitCode"].as_i64().unwrap_or(0),
                },
            );
        }
    }
    for pod in summary["pods"].as_array().into_iter().flatten() {
        let reference = &pod["podRef"];
        let uid = reference["uid"].as_str().unwrap_or_default();
        if let Some(limit) = limits.get(uid) {
            reading.pod_memory.insert(
                uid.to_owned(),
                (
                    reference["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    reference["name"].as_str().unwrap_or_default().to_owned(),
                    number(&pod["memory"]["workingSetBytes"]),
                    *limit,
                ),
            );
        }
    }
    reading
}

/// Why a scrape of the kubelet failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    /// The request did not complete.
    #[error(transparent)]
    Http(#[from] crate::http::Error),
    /// The kubelet answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    /// The body is not the JSON expected.
    #[error("{url}: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

async fn fetch(client: &HttpClient, url: &str) -> Result<Value, FetchError> {
    let response = client.get(url).await?;
    if response.status != 200 {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: response.status,
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| FetchError::Json {
        url: url.to_owned(),
        source,
    })
}

async fn run(
    config: KubeletConfig,
    node: Arc<str>,
    client: HttpClient,
    context: Context,
) -> Result<(), Error> {
    let base = config.endpoint.trim_end_matches('/').to_owned();
    let cores = f64::from(config.cpu_cores.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    }));
    let (summary_url, pods_url) = (format!("{base}/stats/summary"), format!("{base}/pods"));
    let mut ids = IdGenerator::new();
    let mut previous: Option<Reading> = None;
    let mut failing = false;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let fetched = tokio::try_join!(fetch(&client, &summary_url), fetch(&client, &pods_url));
        let (summary, pods) = match fetched {
            Ok(both) => {
                if failing {
                    tracing::info!(endpoint = %base, "kubelet: reachable again.");
                    context.stats.set_health(crate::telemetry::Health::Running);
                    failing = false;
                }
                both
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(endpoint = %base, error = %e, "kubelet: cannot read; retrying every interval.");
                    context.degraded(e.to_string());
                    failing = true;
                }
                continue;
            }
        };
        let now = read(&summary, &pods, cores);
        let events = compare(&config, previous.as_ref(), &now);
        previous = Some(now);
        for (kind, severity, message, pod, attributes) in events {
            let mut event = Event::new(ids.next_id(), unix_nanos_now(), kind, NAME);
            event.severity = severity;
            event.message = message;
            event.entities.node = Arc::clone(&node);
            if let Some((uid, namespace, name)) = pod {
                event.entities.pod_uid = uid.into();
                event.entities.pod_namespace = namespace.into();
                event.entities.pod_name = name.into();
            }
            for (key, value) in attributes {
                event.attributes.set(key, value);
            }
            context.out.send(event).await?;
        }
    }
}

/// An event to send: kind, severity, message, the pod (uid, namespace, name), attributes.
type Finding = (
    &'static str,
    Severity,
    String,
    Option<(String, String, String)>,
    Vec<(&'static str, crate::event::AttrValue)>,
);

fn compare(config: &KubeletConfig, before: Option<&Reading>, now: &Reading) -> Vec<Finding> {
    use crate::event::AttrValue;
    let Some(before) = before else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (resource, share) in &now.node {
        let limit = match *resource {
            "memory" => config.memory_pressure_ratio,
            "fs" => config.fs_pressure_ratio,
            _ => config.cpu_pressure_ratio,
        };
        let was = before
            .node
            .iter()
            .find(|(r, _)| r == resource)
            .map_or(0.0, |(_, s)| *s);
        let crossing = if *share >= limit && was < limit {
            Some(("kubelet.node.pressure", Severity::Warning, "under pressure"))
        } else if *share < limit && was >= limit {
            Some((
                "kubelet.node.pressure_relieved",
                Severity::Info,
                "no longer under pressure",
            ))
        } else {
            None
        };
        if let Some((kind, severity, text)) = crossing {
            out.push((
                kind,
                severity,
                format!("node {resource} {text}: {:.0}% in use", share * 100.0),
                None,
                vec![
                    ("resource", AttrValue::Str((*resource).to_owned())),
                    ("ratio", AttrValue::Float(*share)),
                    ("limit_ratio", AttrValue::Float(limit)),
                ],
            ));
        }
    }
    for (uid, (namespace, name, working, limit)) in &now.pod_memory {
        let share = working / limit;
        let was = before.pod_memory.get(uid).map_or(0.0, |(_, _, w, l)| w / l);
        if share >= config.pod_memory_ratio && was < config.pod_memory_ratio {
            out.push((
                "kubelet.pod.memory_near_limit",
                Severity::Warning,
                format!(
                    "{namespace}/{name} uses {:.0}% of its memory limit ({} of {} MiB)",
                    share * 100.0,
                    (working / 1_048_576.0).round(),
                    (limit / 1_048_576.0).round()
                ),
                Some((uid.clone(), namespace.clone(), name.clone())),
                vec![
                    ("memory_working_set_bytes", AttrValue::Float(*working)),
                    ("memory_limit_bytes", AttrValue::Float(*limit)),
                    ("ratio", AttrValue::Float(share)),
                ],
            ));
        }
    }
    for ((uid, container), latest) in &now.restarts {
        let Restarts {
            namespace,
            pod: name,
            count: restarts,
            reason,
            exit_code,
        } = latest;
        let was = before
            .restarts
            .get(&(uid.clone(), container.clone()))
            .map_or(*restarts, |r| r.count);
        if *restarts > was {
            out.push((
                "kubelet.container.restart",
                Severity::Warning,
                format!("container {container} of {namespace}/{name} restarted ({restarts} restarts, last: {reason} {exit_code})"),
                Some((uid.clone(), namespace.clone(), name.clone())),
                vec![
                    ("container", AttrValue::Str(container.clone())),
                    ("restart_count", AttrValue::Int(*restarts)),
                    ("reason", AttrValue::Str(reason.clone())),
                    ("exit_code", AttrValue::Int(*exit_code)),
                ],
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_binary_and_decimal_units() {
        let near = |text: &str, want: f64| quantity(text).is_some_and(|b| (b - want).abs() < 0.5);
        assert!(near("512Mi", 536_870_912.0));
        assert!(near("1G", 1e9));
        assert!(near("1048576", 1_048_576.0));
        assert_eq!(quantity("1Zi"), None);
    }
}
