//! `synthetic`: generated events for tests, benchmarks and demos.
//!
//! `uniform` is a steady mix of process, network, DNS and syscall events across a pool of
//! pods; the incident scenarios add a scripted incident to the same background every 30 s
//! of scenario time, on one pod at a time: `oom-cascade` (kernel OOM kill -> container exit
//! 137 -> pod restart (`OOMKilled`) -> `CrashLoopBackOff`), `dns-outage`, `restart-storm`,
//! `node-pressure` and `unit-failure` (see [`Scenario`]). Everything but ids and the start time is a
//! function of `seed`. Timestamps follow the scenario's own clock (start time plus the
//! scripted offsets), so a cascade keeps realistic gaps at any speed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};

/// Registry name.
pub const NAME: &str = "synthetic";

/// Options of the `synthetic` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// How many events to produce; 0 means endless.
    pub events: u64,
    /// Events per second; 0 means as fast as the pipeline takes them.
    pub rate: u64,
    /// `uniform`, or an incident among the same background: `oom-cascade`, `dns-outage`,
    /// `restart-storm`, `node-pressure`, `unit-failure`.
    pub scenario: Scenario,
    /// Seed of everything generated, so runs with one seed produce the same events.
    pub seed: u64,
    /// How many pods the events are spread over.
    pub pods: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            events: 100_000,
            rate: 0,
            scenario: Scenario::Uniform,
            seed: 1,
            pods: 8,
        }
    }
}

impl SyntheticConfig {
    /// Appends problems to `problems`, each prefixed with `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if self.rate > 10_000_000 {
            problems.push(format!(
                "{prefix}.rate: must be at most 10000000 events/s (0 = unlimited), got {}",
                self.rate
            ));
        }
        if !(1..=100_000).contains(&self.pods) {
            problems.push(format!(
                "{prefix}.pods: must be 1..=100000, got {}",
                self.pods
            ));
        }
    }
}

/// What the synthetic collector generates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A steady mix of ordinary events.
    #[default]
    Uniform,
    /// Background events with a scripted OOM cascade on one pod every 20 events.
    OomCascade,
    /// Background with a DNS failure (SERVFAIL) on one pod, then its connects failing.
    DnsOutage,
    /// Background with a crash loop: exit 1 -> restart -> back-off -> restart -> back-off.
    RestartStorm,
    /// Background with node memory pressure, then three pods evicted.
    NodePressure,
    /// Background with disk latency -> containerd logging errors -> containerd failed ->
    /// node `NotReady` -> two pods evicted.
    UnitFailure,
}

impl Scenario {
    /// Every scenario that scripts an incident.
    pub const INCIDENTS: [Self; 5] = [
        Self::OomCascade,
        Self::DnsOutage,
        Self::RestartStorm,
        Self::NodePressure,
        Self::UnitFailure,
    ];
}

impl CollectorConfig for SyntheticConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let world = World::new(&self, cx.node_name, unix_nanos_now());
            Ok::<Running, Error>(Box::pin(run(self, world, context)))
        })
    }
}

async fn run(config: SyntheticConfig, mut world: World, context: Context) -> Result<(), Error> {
    let started = Instant::now();
    let mut produced: u64 = 0;
    while config.events == 0 || produced < config.events {
        let event = world.next_event();
        tokio::select! {
            biased;
            () = context.shutdown.cancelled() => break,
            sent = context.out.send(event) => sent?,
        }
        produced += 1;
        if config.rate > 0 {
            let offset = u128::from(produced) * 1_000_000_000 / u128::from(config.rate);
            let due = started + Duration::from_nanos(offset as u64);
            if due > Instant::now() {
                tokio::select! {
                    biased;
                    () = context.shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
            }
        }
    }
    Ok(())
}

/// One pod of the generated cluster, with its one container and main process.
#[derive(Clone, Debug)]
struct Pod {
    uid: Arc<str>,
    namespace: Arc<str>,
    name: Arc<str>,
    workload_kind: Arc<str>,
    workload_name: Arc<str>,
    container_id: Arc<str>,
    cgroup_id: u64,
    pid: u32,
    comm: Arc<str>,
    memory_limit: i64,
    restarts: i64,
}

const WORKLOADS: [(&str, &str, &str, &str, i64); 6] = [
    ("payments", "Deployment", "checkout", "java", 512 << 20),
    ("payments", "Deployment", "ledger", "ledger", 256 << 20),
    ("default", "Deployment", "frontend", "node", 384 << 20),
    ("data", "StatefulSet", "postgres", "postgres", 1 << 30),
    (
        "kube-system",
        "DaemonSet",
        "node-exporter",
        "node_exporter",
        64 << 20,
    ),
    ("batch", "Job", "report-nightly", "python3", 768 << 20),
];

const SERVICES: [&str; 5] = [
    "checkout.payments",
    "ledger.payments",
    "postgres.data",
    "frontend.default",
    "redis.cache",
];

/// Where each scripted event of a cycle sits.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Background,
    OomKill,
    ContainerExit,
    PodRestart,
    BackOff,
    CrashExit,
    DnsFailure,
    ConnectFailed,
    NodePressure,
    /// The nth pod after the victim is evicted.
    Evicted(usize),
    DiskLatency,
    UnitError,
    UnitFailed,
    NodeNotReady,
}

/// Length of one incident cycle: 16 background events over 30 s with the incident's
/// events at scripted offsets among them.
const CYCLE: Duration = Duration::from_secs(30);

fn incident_cycle(scenario: Scenario) -> Vec<(u64, Slot)> {
    const MS: u64 = 1_000_000;
    let step = CYCLE.as_nanos() as u64 / 16;
    let start = 4_000 * MS;
    let script: &[(u64, Slot)] = match scenario {
        Scenario::Uniform => &[],
        Scenario::OomCascade => &[
            (0, Slot::OomKill),
            (15, Slot::ContainerExit),
            (1_200, Slot::PodRestart),
            (11_200, Slot::BackOff),
        ],
        Scenario::DnsOutage => &[
            (0, Slot::DnsFailure),
            (180, Slot::ConnectFailed),
            (2_400, Slot::ConnectFailed),
        ],
        Scenario::RestartStorm => &[
            (0, Slot::CrashExit),
            (900, Slot::PodRestart),
            (5_900, Slot::BackOff),
            (15_900, Slot::PodRestart),
            (16_400, Slot::BackOff),
        ],
        Scenario::NodePressure => &[
            (0, Slot::NodePressure),
            (5_000, Slot::Evicted(0)),
            (5_400, Slot::Evicted(1)),
            (6_100, Slot::Evicted(2)),
        ],
        Scenario::UnitFailure => &[
            (0, Slot::DiskLatency),
            (3_000, Slot::UnitError),
            (9_000, Slot::UnitFailed),
            (14_000, Slot::NodeNotReady),
            (20_000, Slot::Evicted(0)),
            (20_300, Slot::Evicted(1)),
        ],
    };
    let mut slots: Vec<(u64, Slot)> = (0..16).map(|k| (k * step, Slot::Background)).collect();
    slots.extend(
        script
            .iter()
            .map(|&(offset, slot)| (start + offset * MS, slot)),
    );
    slots.sort_by_key(|&(offset, _)| offset);
    slots
}

/// The generator behind the collector: the generated cluster and the scenario's clock,
/// usable on its own by tests and benchmarks.
#[derive(Debug)]
pub struct World {
    rng: fastrand::Rng,
    ids: IdGenerator,
    node: Arc<str>,
    pods: Vec<Pod>,
    scenario: Scenario,
    start: u64,
    background_gap: u64,
    produced: u64,
    cycle: Vec<(u64, Slot)>,
    victim: usize,
    next_pid: u32,
}

impl World {
    /// A cluster from `config` on `node`, its clock starting at `start` (Unix nanoseconds).
    #[must_use]
    pub fn new(config: &SyntheticConfig, node: String, start: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let mut next_pid = 1000 + rng.u32(..20_000);
        let pods = (0..config.pods)
            .map(|i| {
                next_pid += 1 + rng.u32(..50);
                make_pod(&mut rng, i, next_pid)
            })
            .collect();
        Self {
            rng,
            ids: IdGenerator::new(),
            node: node.into(),
            pods,
            scenario: config.scenario,
            start,
            background_gap: 1_000_000_000u64.checked_div(config.rate).unwrap_or(100_000),
            produced: 0,
            cycle: incident_cycle(config.scenario),
            victim: 0,
            next_pid,
        }
    }

    /// The scenario's next event.
    pub fn next_event(&mut self) -> Event {
        let n = self.produced;
        self.produced += 1;
        if self.scenario == Scenario::Uniform {
            let at = self.start + n * self.background_gap;
            self.background(at)
        } else {
            let len = self.cycle.len() as u64;
            let (cycle, position) = (n / len, (n % len) as usize);
            let (offset, slot) = self.cycle[position];
            let at = self.start + cycle * CYCLE.as_nanos() as u64 + offset;
            if position == 0 {
                self.victim = (cycle as usize) % self.pods.len();
            }
            self.scripted(slot, at)
        }
    }

    fn base(&mut self, at: u64, kind: &'static str, severity: Severity, pod: usize) -> Event {
        let mut event = Event::new(self.ids.next_id(), at, kind, NAME);
        event.severity = severity;
        let pod = &self.pods[pod];
        let e = &mut event.entities;
        e.node = Arc::clone(&self.node);
        e.pid = pod.pid;
        e.comm = Arc::clone(&pod.comm);
        e.cgroup_id = pod.cgroup_id;
        e.container_id = Arc::clone(&pod.container_id);
        e.pod_uid = Arc::clone(&pod.uid);
        e.pod_namespace = Arc::clone(&pod.namespace);
        e.pod_name = Arc::clone(&pod.name);
        e.workload_kind = Arc::clone(&pod.workload_kind);
        e.workload_name = Arc::clone(&pod.workload_name);
        event
    }

    fn background(&mut self, at: u64) -> Event {
        let pod = self.rng.usize(..self.pods.len());
        match self.rng.u8(..100) {
            0..=29 => {
                let mut e = self.base(at, "net.tcp.connect", Severity::Info, pod);
                let service = SERVICES[self.rng.usize(..SERVICES.len())];
                let port = [5432, 6379, 8080, 443][self.rng.usize(..4)];
                let latency = i64::from(self.rng.u32(80..4000));
                e.message = format!("{} connected to {service}:{port}", e.entities.comm);
                e.attributes.set(
                    "daddr",
                    format!("10.96.{}.{}", self.rng.u8(..255), self.rng.u8(1..255)),
                );
                e.attributes.set("dport", i64::from(port));
                e.attributes.set("duration_us", latency);
                e
            }
            30..=32 => {
                let mut e = self.base(at, "net.tcp.connect_failed", Severity::Warning, pod);
                e.message = format!("{} could not connect: connection refused", e.entities.comm);
                e.attributes.set("dport", 8080i64);
                e.attributes.set("error", "ECONNREFUSED");
                e
            }
            33..=57 => {
                let service = SERVICES[self.rng.usize(..SERVICES.len())];
                let nxdomain = self.rng.u8(..100) < 4;
                let (severity, rcode, answers) = if nxdomain {
                    (Severity::Warning, "NXDOMAIN", 0i64)
                } else {
                    (Severity::Info, "NOERROR", 1)
                };
                let mut e = self.base(at, "dns.query", severity, pod);
                let name = format!("{service}.svc.cluster.local");
                e.message = format!("A {name} -> {rcode}");
                e.attributes.set("query_name", name);
                e.attributes.set("query_type", "A");
                e.attributes.set("rcode", rcode);
                e.attributes.set("answers", answers);
                e.attributes
                    .set("latency_us", i64::from(self.rng.u32(100..20_000)));
                e
            }
            58..=79 => {
                let mut e = self.base(at, "process.exec", Severity::Info, pod);
                let (comm, path) = [
                    ("sh", "/bin/sh"),
                    ("curl", "/usr/bin/curl"),
                    ("pg_isready", "/usr/bin/pg_isready"),
                    ("date", "/bin/date"),
                ][self.rng.usize(..4)];
                self.next_pid += 1;
                e.entities.pid = self.next_pid;
                e.entities.comm = comm.into();
                e.message = format!("exec {path}");
                e.attributes.set("filename", path);
                e.attributes.set("ppid", self.pods[pod].pid);
                e
            }
            80..=91 => {
                let mut e = self.base(at, "process.exit", Severity::Info, pod);
                e.entities.pid = self.next_pid;
                e.message = "exited with code 0".into();
                e.attributes.set("exit_code", 0i64);
                e
            }
            _ => {
                let mut e = self.base(at, "syscall.error", Severity::Info, pod);
                let (syscall, errno) = [
                    ("openat", "ENOENT"),
                    ("connect", "ECONNREFUSED"),
                    ("read", "EAGAIN"),
                ][self.rng.usize(..3)];
                let count = i64::from(self.rng.u32(1..50));
                e.message = format!("{syscall} failed with {errno} {count} times");
                e.attributes.set("syscall", syscall);
                e.attributes.set("errno", errno);
                e.attributes.set("count", count);
                e
            }
        }
    }

    fn scripted(&mut self, slot: Slot, at: u64) -> Event {
        let victim = self.victim;
        match slot {
            Slot::Background => self.background(at),
            Slot::OomKill => {
                let mut e = self.base(at, "memory.oom_kill", Severity::Critical, victim);
                let pod = &self.pods[victim];
                let limit = pod.memory_limit;
                e.message = format!(
                    "OOM killer killed {} (pid {}) in {}/{}: memory limit {} MiB reached",
                    pod.comm,
                    pod.pid,
                    pod.namespace,
                    pod.name,
                    limit >> 20
                );
                e.attributes.set("victim_pid", pod.pid);
                e.attributes.set("memory_limit_bytes", limit);
                e.attributes.set("memory_usage_peak_bytes", limit);
                e.attributes.set("oom_score_adj", 985i64);
                e
            }
            Slot::ContainerExit => {
                let mut e = self.base(at, "container.exit", Severity::Error, victim);
                e.message = format!(
                    "container {} exited with code 137 (SIGKILL)",
                    self.pods[victim].workload_name
                );
                e.attributes.set("exit_code", 137i64);
                e.attributes.set("signal", 9i64);
                e.attributes.set("reason", "OOMKilled");
                e
            }
            Slot::PodRestart => {
                self.pods[victim].restarts += 1;
                self.next_pid += 1 + self.rng.u32(..20);
                self.pods[victim].pid = self.next_pid;
                let mut e = self.base(at, "k8s.pod.restart", Severity::Warning, victim);
                let pod = &self.pods[victim];
                let (reason, code) = if self.scenario == Scenario::RestartStorm {
                    ("Error", 1i64)
                } else {
                    ("OOMKilled", 137)
                };
                e.message = format!(
                    "pod {}/{} restarted (restart {}): last state {reason}, exit code {code}",
                    pod.namespace, pod.name, pod.restarts
                );
                e.attributes.set("reason", reason);
                e.attributes.set("last_exit_code", code);
                e.attributes.set("restart_count", pod.restarts);
                e
            }
            Slot::BackOff => {
                let mut e = self.base(at, "k8s.pod.backoff", Severity::Error, victim);
                let pod = &self.pods[victim];
                e.message = format!(
                    "pod {}/{} is in CrashLoopBackOff: back-off 10s restarting failed container",
                    pod.namespace, pod.name
                );
                e.attributes.set("reason", "CrashLoopBackOff");
                e.attributes.set("back_off_seconds", 10i64);
                e.attributes.set("restart_count", pod.restarts);
                e
            }
            Slot::CrashExit | Slot::DnsFailure | Slot::ConnectFailed | Slot::Evicted(_) => {
                self.pod_incident(slot, at)
            }
            Slot::NodePressure
            | Slot::DiskLatency
            | Slot::UnitError
            | Slot::UnitFailed
            | Slot::NodeNotReady => self.node_incident(slot, at),
        }
    }

    /// The other scenarios' events about one pod.
    fn pod_incident(&mut self, slot: Slot, at: u64) -> Event {
        let victim = self.victim;
        match slot {
            Slot::CrashExit => {
                let mut e = self.base(at, "container.exit", Severity::Error, victim);
                e.message = format!(
                    "container {} exited with code 1: config file /etc/app/config.yaml not found",
                    self.pods[victim].workload_name
                );
                e.attributes.set("exit_code", 1i64);
                e.attributes.set("reason", "Error");
                e
            }
            Slot::DnsFailure => {
                let mut e = self.base(at, "dns.query", Severity::Warning, victim);
                e.message = "A redis.cache.svc.cluster.local -> SERVFAIL".into();
                e.attributes
                    .set("query_name", "redis.cache.svc.cluster.local");
                e.attributes.set("query_type", "A");
                e.attributes.set("rcode", "SERVFAIL");
                e.attributes.set("answers", 0i64);
                e.attributes.set("latency_us", 5_000_000i64);
                e
            }
            Slot::ConnectFailed => {
                let mut e = self.base(at, "net.tcp.connect_failed", Severity::Warning, victim);
                e.message = format!(
                    "{} could not connect to redis.cache:6379: no address (name resolution failed)",
                    e.entities.comm
                );
                e.attributes.set("dport", 6379i64);
                e.attributes.set("error", "EAI_AGAIN");
                e
            }
            Slot::Evicted(nth) => {
                let pod = (victim + nth) % self.pods.len();
                let mut e = self.base(at, "k8s.pod.evicted", Severity::Warning, pod);
                e.message = format!(
                    "pod {}/{} evicted: the node was low on resources",
                    self.pods[pod].namespace, self.pods[pod].name
                );
                e.attributes.set("reason", "Evicted");
                e
            }
            _ => self.background(at),
        }
    }

    /// The other scenarios' events about the node and its units.
    fn node_incident(&mut self, slot: Slot, at: u64) -> Event {
        match slot {
            Slot::NodePressure => {
                let mut e = self.node_event(at, "k8s.node.pressure", Severity::Warning);
                e.message = format!(
                    "node {} has MemoryPressure: available memory below 100Mi",
                    self.node
                );
                e.attributes.set("condition", "MemoryPressure");
                e
            }
            Slot::DiskLatency => {
                let mut e = self.node_event(at, "block.latency_spike", Severity::Warning);
                e.message =
                    "block device nvme0n1: p99 I/O latency 850 ms over the last 10 s".into();
                e.attributes.set("device", "nvme0n1");
                e.attributes.set("p99_latency_ms", 850i64);
                e
            }
            Slot::UnitError => {
                let mut e = self.node_event(at, "journal.unit_error", Severity::Error);
                e.entities.unit = "containerd.service".into();
                e.message =
                    "containerd.service: failed to write snapshot: context deadline exceeded"
                        .into();
                e
            }
            Slot::UnitFailed => {
                let mut e = self.node_event(at, "systemd.unit.failed", Severity::Critical);
                e.entities.unit = "containerd.service".into();
                e.message = "containerd.service entered failed state (watchdog timeout)".into();
                e.attributes.set("result", "watchdog");
                e
            }
            Slot::NodeNotReady => {
                let mut e = self.node_event(at, "k8s.node.not_ready", Severity::Critical);
                e.message = format!("node {} is NotReady: container runtime is down", self.node);
                e.attributes.set("reason", "ContainerRuntimeDown");
                e
            }
            _ => self.background(at),
        }
    }

    /// An event about the node itself: no pod, container or process.
    fn node_event(&mut self, at: u64, kind: &'static str, severity: Severity) -> Event {
        let mut event = Event::new(self.ids.next_id(), at, kind, NAME);
        event.severity = severity;
        event.entities.node = Arc::clone(&self.node);
        event
    }
}

fn make_pod(rng: &mut fastrand::Rng, index: usize, pid: u32) -> Pod {
    let (namespace, workload_kind, workload_name, comm, memory_limit) =
        WORKLOADS[index % WORKLOADS.len()];
    let name = match workload_kind {
        "StatefulSet" => format!("{workload_name}-{}", index / WORKLOADS.len()),
        "Deployment" => format!("{workload_name}-{}-{}", hex(rng, 5), alnum(rng, 5)),
        _ => format!("{workload_name}-{}", alnum(rng, 5)),
    };
    Pod {
        uid: format!(
            "{}-{}-4{}-{}{}-{}",
            hex(rng, 8),
            hex(rng, 4),
            hex(rng, 3),
            ['8', '9', 'a', 'b'][rng.usize(..4)],
            hex(rng, 3),
            hex(rng, 12)
        )
        .into(),
        namespace: namespace.into(),
        name: name.into(),
        workload_kind: workload_kind.into(),
        workload_name: workload_name.into(),
        container_id: hex(rng, 64).into(),
        cgroup_id: 4096 + rng.u64(..1 << 20),
        pid,
        comm: comm.into(),
        memory_limit,
        restarts: 0,
    }
}

fn hex(rng: &mut fastrand::Rng, len: usize) -> String {
    let mut text = String::with_capacity(len);
    for _ in 0..len {
        let _ = write!(text, "{:x}", rng.u8(..16));
    }
    text
}

fn alnum(rng: &mut fastrand::Rng, len: usize) -> String {
    // Kubernetes' name suffix alphabet: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.usize(..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(scenario: Scenario, seed: u64) -> World {
        let config = SyntheticConfig {
            scenario,
            seed,
            ..SyntheticConfig::default()
        };
        World::new(&config, "node-a".into(), 1_000)
    }

    /// Everything but the id.
    fn content(event: &Event) -> String {
        let mut value = serde_json::to_value(event).expect("serializes");
        value.as_object_mut().expect("object").remove("id");
        value.to_string()
    }

    #[test]
    fn same_seed_same_events() {
        for scenario in [Scenario::Uniform, Scenario::OomCascade] {
            let mut a = world(scenario, 7);
            let mut b = world(scenario, 7);
            for _ in 0..500 {
                assert_eq!(content(&a.next_event()), content(&b.next_event()));
            }
            let mut c = world(scenario, 8);
            let mut a = world(scenario, 7);
            let differs = (0..50).any(|_| content(&a.next_event()) != content(&c.next_event()));
            assert!(differs, "another seed must give other events");
        }
    }

    #[test]
    fn oom_cascade_scripts_the_incident_in_order_on_one_pod() {
        let mut w = world(Scenario::OomCascade, 3);
        let cycle: Vec<Event> = (0..20).map(|_| w.next_event()).collect();
        let incident: Vec<&Event> = cycle
            .iter()
            .filter(|e| {
                matches!(
                    e.kind.as_ref(),
                    "memory.oom_kill" | "container.exit" | "k8s.pod.restart" | "k8s.pod.backoff"
                )
            })
            .collect();
        let kinds: Vec<&str> = incident.iter().map(|e| e.kind.as_ref()).collect();
        assert_eq!(
            kinds,
            [
                "memory.oom_kill",
                "container.exit",
                "k8s.pod.restart",
                "k8s.pod.backoff"
            ]
        );
        let pod = &incident[0].entities.pod_uid;
        assert!(incident.iter().all(|e| &e.entities.pod_uid == pod));
        assert!(
            incident.windows(2).all(|w| w[0].timestamp < w[1].timestamp),
            "causes precede effects"
        );
        assert_eq!(
            incident[1].attributes.get("exit_code"),
            Some(&crate::event::AttrValue::Int(137))
        );
        assert_eq!(incident[0].entities.container_id.len(), 64);
        // The next cycle's incident hits another pod.
        let next: Vec<Event> = (0..20).map(|_| w.next_event()).collect();
        let next_oom = next
            .iter()
            .find(|e| e.kind == "memory.oom_kill")
            .expect("second cascade");
        assert_ne!(&next_oom.entities.pod_uid, pod);
    }

    #[test]
    fn ids_are_unique() {
        let mut w = world(Scenario::Uniform, 1);
        let mut ids: Vec<_> = (0..10_000).map(|_| w.next_event().id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10_000);
    }
}
