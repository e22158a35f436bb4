//! `synthetic`: generated events for tests, benchmarks and demos.
//!
//! `uniform` is a steady mix of process, network, DNS, syscall and journal events across a
//! pool of pods; the incident scenarios add a scripted incident to the same background
//! every 30 s of scenario time, on one pod at a time: `oom-cascade` (kernel OOM kill ->
//! container exit 137 -> pod restart (`OOMKilled`) -> `CrashLoopBackOff`), `dns-outage`,
//! `restart-storm`, `node-pressure` and `unit-failure` (see [`Scenario`]). Every event has
//! the source and shape its real collector gives it (docs/event-types.md), and arrives when
//! that collector would send it: the kubelet's view of a container's exit comes with the
//! restart, a syscall error at the syscall collector's next interval. Everything but ids
//! and the start time is a function of `seed`. Timestamps follow the scenario's own clock,
//! so a cascade keeps realistic gaps at any speed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, IdGenerator, Severity, keys, unix_nanos_now};

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
    /// Background events with a scripted OOM cascade on one pod every 30 s.
    OomCascade,
    /// Background with the cluster DNS pod crash-looping: each time it turns not ready,
    /// two other pods' lookups fail (SERVFAIL) and one's TCP fallback times out, then its
    /// exit and restart are reported. One incident, rooted at its first exit.
    DnsOutage,
    /// Background with a crash loop: the process cannot open its config file (ENOENT,
    /// reported late) and exits 1 -> restart -> back-off.
    RestartStorm,
    /// Background with node memory pressure, then three pods evicted.
    NodePressure,
    /// Background with containerd logging errors -> containerd failed -> node `NotReady`
    /// -> two pods not ready, again every cycle: one incident, rooted at the first error.
    UnitFailure,
}

impl Scenario {
    /// Whether each cycle's incident strikes the same entity again (the DNS pod,
    /// containerd): a loop of one failure rather than new incidents.
    #[must_use]
    pub fn same_entity_each_cycle(self) -> bool {
        matches!(self, Self::DnsOutage | Self::UnitFailure)
    }

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

/// The shortest sleep of a paced run.
const PACE: Duration = Duration::from_millis(10);

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
            let now = Instant::now();
            if due > now {
                // Woken at most every PACE, then what is due goes out together, as a
                // kernel collector's ring buffer hands over records: one wake per step,
                // not one per event, and the same rate on average.
                tokio::select! {
                    biased;
                    () = context.shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(due.max(now + PACE)) => {}
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
    ip: String,
    /// The service it backs, with the service's cluster IP and port.
    service: Option<(&'static str, String, u16)>,
    memory_limit: i64,
    restarts: i64,
    /// The process it last started besides its main one, until that exits.
    child: Option<(u32, &'static str)>,
}

/// (namespace, kind, name, main command, memory limit, service and its port).
type Workload = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    i64,
    Option<(&'static str, u16)>,
);

const WORKLOADS: [Workload; 6] = [
    (
        "payments",
        "Deployment",
        "checkout",
        "java",
        512 << 20,
        Some(("checkout", 8080)),
    ),
    (
        "payments",
        "Deployment",
        "ledger",
        "ledger",
        256 << 20,
        Some(("ledger", 8080)),
    ),
    (
        "default",
        "Deployment",
        "frontend",
        "node",
        384 << 20,
        Some(("frontend", 3000)),
    ),
    (
        "data",
        "StatefulSet",
        "postgres",
        "postgres",
        1 << 30,
        Some(("postgres", 5432)),
    ),
    (
        "kube-system",
        "DaemonSet",
        "node-exporter",
        "node_exporter",
        64 << 20,
        None,
    ),
    ("batch", "Job", "report-nightly", "python3", 768 << 20, None),
];

/// The cluster's DNS, which every cluster has: one pod behind the `kube-dns` service.
const DNS_WORKLOAD: Workload = (
    "kube-system",
    "Deployment",
    "coredns",
    "coredns",
    170 << 20,
    Some(("kube-dns", 53)),
);

/// The `kube-dns` service's cluster IP, every pod's resolver.
const DNS_SERVICE_IP: &str = "10.96.0.10";

/// Where each scripted event of a cycle sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Background,
    OomKill,
    /// The OOM killer's SIGKILL, as `runtime-signals` reports it (from the kernel; its own
    /// ring buffer may bring it before or after the kill, and the engine takes either).
    OomSignal,
    /// The OOM victim's exit, as the kernel reports it.
    OomExit,
    /// The kubelet's view of the container's end: `container.exit` (sent with the
    /// restart, at the time it finished).
    ContainerExit,
    PodRestart,
    BackOff,
    /// The victim's main process fails to start (exit 1).
    CrashExit,
    /// The failing `openat` behind it, reported at the syscall collector's next interval.
    ConfigMissing,
    DnsPodNotReady,
    DnsPodExit,
    DnsPodRestart,
    /// The nth pod after the victim asks the cluster DNS, and the answer.
    DnsQuery(usize),
    DnsServfail(usize),
    /// The victim's TCP fallback to the DNS service times out.
    DnsConnectTimeout,
    NodePressure,
    /// The nth pod after the victim is evicted.
    Evicted(usize),
    UnitError,
    UnitFailed,
    NodeNotReady,
    /// The nth pod after the victim turns not ready.
    PodNotReady(usize),
}

/// Length of one incident cycle: 16 background events over 30 s with the incident's
/// events at scripted offsets among them.
const CYCLE: Duration = Duration::from_secs(30);

/// One scripted event: when it arrives (ms into the incident), what it is, and how long
/// before its arrival it happened (a collector that reports late).
type Script = (u64, Slot, u64);

fn script(scenario: Scenario) -> &'static [Script] {
    match scenario {
        Scenario::Uniform => &[],
        Scenario::OomCascade => &[
            (0, Slot::OomKill, 0),
            (0, Slot::OomSignal, 0),
            (1, Slot::OomExit, 0),
            (1_199, Slot::ContainerExit, 1_185),
            (1_200, Slot::PodRestart, 0),
            (11_200, Slot::BackOff, 0),
        ],
        Scenario::DnsOutage => &[
            (0, Slot::DnsPodNotReady, 0),
            (200, Slot::DnsQuery(0), 0),
            (2_200, Slot::DnsServfail(0), 0),
            (2_300, Slot::DnsQuery(1), 0),
            (4_300, Slot::DnsServfail(1), 0),
            (4_800, Slot::DnsConnectTimeout, 0),
            (6_000, Slot::DnsPodExit, 6_010),
            (6_001, Slot::DnsPodRestart, 0),
        ],
        Scenario::RestartStorm => &[
            (0, Slot::CrashExit, 0),
            (899, Slot::ContainerExit, 899),
            (900, Slot::PodRestart, 0),
            (5_900, Slot::BackOff, 0),
            (6_000, Slot::ConfigMissing, 6_002),
        ],
        Scenario::NodePressure => &[
            (0, Slot::NodePressure, 0),
            (5_000, Slot::Evicted(0), 0),
            (5_400, Slot::Evicted(1), 0),
            (6_100, Slot::Evicted(2), 0),
        ],
        Scenario::UnitFailure => &[
            (0, Slot::UnitError, 0),
            (6_000, Slot::UnitFailed, 0),
            (11_000, Slot::NodeNotReady, 0),
            (17_000, Slot::PodNotReady(0), 0),
            (17_300, Slot::PodNotReady(1), 0),
        ],
    }
}

/// The script's root cause: the event an operator would fix.
fn root_slot(scenario: Scenario) -> Option<Slot> {
    match scenario {
        Scenario::Uniform => None,
        Scenario::OomCascade => Some(Slot::OomKill),
        Scenario::DnsOutage => Some(Slot::DnsPodExit),
        Scenario::RestartStorm => Some(Slot::ConfigMissing),
        Scenario::NodePressure => Some(Slot::NodePressure),
        Scenario::UnitFailure => Some(Slot::UnitError),
    }
}

fn incident_cycle(scenario: Scenario) -> Vec<(u64, Slot, u64)> {
    const MS: u64 = 1_000_000;
    let step = CYCLE.as_nanos() as u64 / 16;
    let start = 4_000 * MS;
    let mut slots: Vec<(u64, Slot, u64)> =
        (0..16).map(|k| (k * step, Slot::Background, 0)).collect();
    slots.extend(
        script(scenario)
            .iter()
            .map(|&(offset, slot, ago)| (start + offset * MS, slot, ago * MS)),
    );
    slots.sort_by_key(|&(offset, _, _)| offset);
    slots
}

/// Which incident a generated event belongs to: the truth a scorer compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scripted {
    /// The incident's number (its cycle).
    pub incident: u64,
    /// Whether it is the incident's root cause.
    pub root: bool,
}

/// The generator behind the collector: the generated cluster and the scenario's clock,
/// usable on its own by tests and benchmarks.
///
/// Every event has the shape its real collector gives it (docs/event-types.md): the
/// kernel collectors' events name the process, cgroup, container and pod uid; the
/// Kubernetes ones the pod and its workload; journald and systemd the unit.
#[derive(Debug)]
pub struct World {
    rng: fastrand::Rng,
    ids: IdGenerator,
    node: Arc<str>,
    /// The application pods, then the DNS pod last.
    pods: Vec<Pod>,
    scenario: Scenario,
    start: u64,
    background_gap: u64,
    produced: u64,
    cycle: Vec<(u64, Slot, u64)>,
    victim: usize,
    next_pid: u32,
    last: Option<Scripted>,
    /// The process that last failed to start, and its container, for the report of why
    /// that comes after the pod has restarted.
    crashed: Option<(u32, Arc<str>)>,
}

impl World {
    /// A cluster from `config` on `node`, its clock starting at `start` (Unix nanoseconds).
    #[must_use]
    pub fn new(config: &SyntheticConfig, node: String, start: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(config.seed);
        let mut next_pid = 1000 + rng.u32(..20_000);
        let mut pods: Vec<Pod> = (0..config.pods)
            .map(|i| {
                next_pid += 1 + rng.u32(..50);
                make_pod(&mut rng, WORKLOADS[i % WORKLOADS.len()], i, next_pid)
            })
            .collect();
        next_pid += 1 + rng.u32(..50);
        pods.push(make_pod(&mut rng, DNS_WORKLOAD, config.pods, next_pid));
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
            last: None,
            crashed: None,
        }
    }

    /// The scenario's next event.
    pub fn next_event(&mut self) -> Event {
        let n = self.produced;
        self.produced += 1;
        self.last = None;
        if self.scenario == Scenario::Uniform {
            let at = self.start + n * self.background_gap;
            return self.background(at);
        }
        let len = self.cycle.len() as u64;
        let (cycle, position) = (n / len, (n % len) as usize);
        let (offset, slot, ago) = self.cycle[position];
        let at = self.start + cycle * CYCLE.as_nanos() as u64 + offset;
        if position == 0 {
            self.victim = (cycle as usize) % self.apps();
        }
        if slot != Slot::Background {
            // The DNS pod and containerd are the same every cycle: their failures are one
            // failure loop, one incident rooted at the first.
            let incident = if self.scenario.same_entity_each_cycle() {
                0
            } else {
                cycle
            };
            self.last = Some(Scripted {
                incident,
                root: Some(slot) == root_slot(self.scenario) && incident == cycle,
            });
        }
        self.scripted(slot, at - ago)
    }

    /// Events per scripted incident, background included (0 for `uniform`).
    #[must_use]
    pub fn cycle_len(&self) -> usize {
        if self.scenario == Scenario::Uniform {
            0
        } else {
            self.cycle.len()
        }
    }

    /// Whether the event `next_event` returned last belongs to a scripted incident.
    #[must_use]
    pub fn last_scripted(&self) -> Option<Scripted> {
        self.last
    }

    fn apps(&self) -> usize {
        self.pods.len() - 1
    }

    fn dns_pod(&self) -> usize {
        self.pods.len() - 1
    }

    fn nth_after_victim(&self, nth: usize) -> usize {
        (self.victim + nth) % self.apps()
    }

    /// An event as a kernel collector makes it: the process, its cgroup, and the container
    /// and pod uid its cgroup path names. The pod's name and workload are the correlation
    /// engine's to fill in.
    fn kernel(
        &mut self,
        at: u64,
        kind: &'static str,
        source: &'static str,
        pod: usize,
        process: (u32, &str),
    ) -> Event {
        let mut event = Event::new(self.ids.next_id(), at, kind, source);
        let pod = &self.pods[pod];
        let e = &mut event.entities;
        e.node = Arc::clone(&self.node);
        e.pid = process.0;
        e.comm = process.1.into();
        e.cgroup_id = pod.cgroup_id;
        e.container_id = Arc::clone(&pod.container_id);
        e.pod_uid = Arc::clone(&pod.uid);
        event
    }

    /// An event as `kubeapi` makes it about a pod: the pod and its workload, the pod's
    /// labels, its service and its IP.
    fn kubeapi(&mut self, at: u64, kind: &'static str, pod: usize) -> Event {
        let mut event = Event::new(self.ids.next_id(), at, kind, "kubeapi");
        let pod = &self.pods[pod];
        let e = &mut event.entities;
        e.node = Arc::clone(&self.node);
        e.pod_uid = Arc::clone(&pod.uid);
        e.pod_namespace = Arc::clone(&pod.namespace);
        e.pod_name = Arc::clone(&pod.name);
        e.workload_kind = Arc::clone(&pod.workload_kind);
        e.workload_name = Arc::clone(&pod.workload_name);
        event
            .attributes
            .push("k8s.pod.label.app", pod.workload_name.to_string());
        if pod.workload_name.as_ref() == "coredns" {
            event.attributes.push("k8s.pod.label.k8s-app", "kube-dns");
        }
        if let Some((service, _, _)) = &pod.service {
            event.attributes.push(keys::SERVICE_NAME, *service);
        }
        event.attributes.push(keys::POD_IP, pod.ip.clone());
        event
    }

    /// An event about the node alone.
    fn node_event(&mut self, at: u64, kind: &'static str, source: &'static str) -> Event {
        let mut event = Event::new(self.ids.next_id(), at, kind, source);
        event.entities.node = Arc::clone(&self.node);
        event
    }

    fn tcp(event: &mut Event, local: (&str, i64), remote: (&str, i64), duration_us: i64) {
        let a = &mut event.attributes;
        a.push("family", "ipv4");
        a.push("saddr", local.0.to_owned());
        a.push("sport", local.1);
        a.push("daddr", remote.0.to_owned());
        a.push("dport", remote.1);
        a.push("duration_us", duration_us);
    }

    fn dns(
        &mut self,
        at: u64,
        kind: &'static str,
        pod: usize,
        name: &str,
        transaction: i64,
    ) -> Event {
        let (pid, comm) = (self.pods[pod].pid, Arc::clone(&self.pods[pod].comm));
        let client = format!("{}:{}", self.pods[pod].ip, 40_000 + transaction % 20_000);
        let mut e = self.kernel(at, kind, "dns", pod, (pid, &comm));
        let a = &mut e.attributes;
        a.push("query_name", name.to_owned());
        a.push("query_type", "A");
        a.push("transaction_id", transaction);
        a.push("server", DNS_SERVICE_IP);
        a.push("client", client);
        e
    }

    #[allow(clippy::too_many_lines, reason = "one arm per kind of routine event")]
    fn background(&mut self, at: u64) -> Event {
        let pod = self.rng.usize(..self.apps());
        let (pid, comm) = (self.pods[pod].pid, Arc::clone(&self.pods[pod].comm));
        let ip = self.pods[pod].ip.clone();
        let sport = i64::from(self.rng.u16(32_768..60_999));
        match self.rng.u8(..100) {
            0..=24 => {
                let target = self.rng.usize(..self.pods.len());
                let (address, port) = self.pods[target]
                    .service
                    .as_ref()
                    .map_or((self.pods[target].ip.clone(), 9100), |(_, ip, port)| {
                        (ip.clone(), *port)
                    });
                let mut e = self.kernel(at, "net.tcp.connect", "network", pod, (pid, &comm));
                e.message = format!("{comm} connected {ip}:{sport} -> {address}:{port}");
                let duration = i64::from(self.rng.u32(80..4000));
                Self::tcp(&mut e, (&ip, sport), (&address, i64::from(port)), duration);
                e.attributes.push("old_state", "SYN_SENT");
                e.attributes.push("new_state", "ESTABLISHED");
                e
            }
            25..=27 => {
                // A refused connect to something unrelated to any incident.
                let address = format!("10.244.{}.{}", self.rng.u8(2..9), self.rng.u8(2..250));
                let mut e = self.kernel(at, "net.tcp.connect_failed", "network", pod, (pid, &comm));
                e.severity = Severity::Warning;
                e.message = format!(
                    "{comm} could not connect {ip}:{sport} -> {address}:8081: ECONNREFUSED"
                );
                Self::tcp(&mut e, (&ip, sport), (&address, 8081), 120);
                e.attributes.push("old_state", "SYN_SENT");
                e.attributes.push("new_state", "CLOSE");
                e.attributes.push("error", "ECONNREFUSED");
                e
            }
            28..=51 => {
                let target = self.rng.usize(..self.pods.len());
                let mut name = self.pods[target].service.as_ref().map_or_else(
                    || "example.com".to_owned(),
                    |(service, _, _)| {
                        format!(
                            "{service}.{}.svc.cluster.local",
                            self.pods[target].namespace
                        )
                    },
                );
                let transaction = i64::from(self.rng.u16(..));
                let query = self.rng.bool();
                let nxdomain = !query && self.rng.u8(..100) < 4;
                if nxdomain {
                    // A mistyped name: a warning that belongs to no incident.
                    name.insert(1, 'x');
                }
                let kind = if query { "dns.query" } else { "dns.response" };
                let mut e = self.dns(at, kind, pod, &name, transaction);
                if query {
                    e.message = format!("A {name} asked {DNS_SERVICE_IP}:53");
                } else {
                    let (rcode, answers) = if nxdomain {
                        ("NXDOMAIN", 0)
                    } else {
                        ("NOERROR", 1)
                    };
                    if nxdomain {
                        e.severity = Severity::Warning;
                    }
                    e.message = format!("A {name} -> {rcode}");
                    e.attributes.push("rcode", rcode);
                    e.attributes.push("answers", answers);
                    e.attributes
                        .push("latency_us", i64::from(self.rng.u32(100..20_000)));
                }
                e
            }
            52..=71 => {
                let (child, path) = [
                    ("sh", "/bin/sh"),
                    ("curl", "/usr/bin/curl"),
                    ("pg_isready", "/usr/bin/pg_isready"),
                    ("date", "/bin/date"),
                ][self.rng.usize(..4)];
                self.next_pid += 1;
                let child_pid = self.next_pid;
                self.pods[pod].child = Some((child_pid, child));
                let mut e = self.kernel(at, "process.exec", "kernel", pod, (child_pid, child));
                e.message = format!("{child} executed {path}");
                e.attributes.push("ppid", pid);
                e.attributes.push("uid", 1000i64);
                e.attributes.push("filename", path);
                e.attributes.push("args", path);
                e
            }
            72..=83 => {
                let (child_pid, child) = self.pods[pod].child.take().unwrap_or((pid, "sh"));
                let mut e = self.kernel(at, "process.exit", "kernel", pod, (child_pid, child));
                e.message = format!("{child} exited with code 0");
                e.attributes.push("ppid", pid);
                e.attributes.push("exit_code", 0i64);
                e.attributes.push("signal", 0i64);
                e
            }
            84..=91 => {
                let (syscall, errno) = [
                    ("openat", "ENOENT"),
                    ("connect", "ECONNREFUSED"),
                    ("newfstatat", "ENOENT"),
                ][self.rng.usize(..3)];
                let count = i64::from(self.rng.u32(1..50));
                let mut e = self.kernel(at, "syscall.error", "syscall-errors", pod, (pid, &comm));
                e.message =
                    format!("{comm} (pid {pid}): {syscall} failed with {errno} {count} times");
                e.attributes.push("syscall", syscall);
                e.attributes.push("errno", errno);
                e.attributes.push("count", count);
                let first = at.saturating_sub(u64::from(self.rng.u32(..10_000)) * 1_000_000);
                e.attributes.push(
                    "first_seen_unix_nano",
                    i64::try_from(first).unwrap_or(i64::MAX),
                );
                e
            }
            92..=95 => {
                // A server pod accepting a client: the listener's side.
                let server = self.rng.usize(..self.apps());
                let Some((_, _, port)) = self.pods[server].service.clone() else {
                    return self.background(at);
                };
                let (spid, scomm) = (self.pods[server].pid, Arc::clone(&self.pods[server].comm));
                let server_ip = self.pods[server].ip.clone();
                let mut e = self.kernel(at, "net.tcp.accept", "network", server, (spid, &scomm));
                e.message = format!("{scomm} accepted {ip}:{sport} on {server_ip}:{port}");
                Self::tcp(&mut e, (&server_ip, i64::from(port)), (&ip, sport), 0);
                e
            }
            _ => {
                let mut e = self.node_event(at, "journal.entry", "journald");
                let pid = 800 + self.rng.u32(..50);
                e.entities.pid = pid;
                e.entities.comm = "kubelet".into();
                e.entities.unit = "kubelet.service".into();
                e.message = "Volume is already mounted to pod".into();
                let a = &mut e.attributes;
                a.push("PRIORITY", "6");
                a.push("SYSLOG_IDENTIFIER", "kubelet");
                a.push("_PID", pid.to_string());
                a.push("_COMM", "kubelet");
                a.push("_SYSTEMD_UNIT", "kubelet.service");
                e
            }
        }
    }

    fn scripted(&mut self, slot: Slot, at: u64) -> Event {
        match slot {
            Slot::Background => self.background(at),
            Slot::OomSignal
            | Slot::OomKill
            | Slot::OomExit
            | Slot::ContainerExit
            | Slot::PodRestart
            | Slot::BackOff
            | Slot::CrashExit
            | Slot::ConfigMissing => self.crash(slot, at),
            Slot::DnsPodNotReady
            | Slot::DnsPodExit
            | Slot::DnsPodRestart
            | Slot::DnsQuery(_)
            | Slot::DnsServfail(_)
            | Slot::DnsConnectTimeout => self.dns_outage(slot, at),
            Slot::NodePressure
            | Slot::Evicted(_)
            | Slot::UnitError
            | Slot::UnitFailed
            | Slot::NodeNotReady
            | Slot::PodNotReady(_) => self.node_incident(slot, at),
        }
    }

    /// A pod's container dying: killed for memory, or failing to start.
    #[allow(clippy::too_many_lines, reason = "one arm per scripted event")]
    fn crash(&mut self, slot: Slot, at: u64) -> Event {
        let victim = self.victim;
        let (pid, comm) = (self.pods[victim].pid, Arc::clone(&self.pods[victim].comm));
        let oom = self.scenario == Scenario::OomCascade;
        let (reason, code) = if oom {
            ("OOMKilled", 137)
        } else {
            ("Error", 1)
        };
        match slot {
            Slot::OomSignal => {
                let (cgroup, container) = (
                    self.pods[victim].cgroup_id,
                    Arc::clone(&self.pods[victim].container_id),
                );
                let mut e = self.kernel(
                    at,
                    "process.signal",
                    "runtime-signals",
                    victim,
                    (pid, &comm),
                );
                e.severity = Severity::Warning;
                e.message = format!("the kernel sent SIGKILL to {comm} (pid {pid})");
                let a = &mut e.attributes;
                a.push("signal", 9i64);
                a.push("signal_name", "SIGKILL");
                a.push("code", 128i64);
                a.push("from_kernel", true);
                a.push("sender_pid", pid);
                a.push("sender_comm", comm.to_string());
                a.push("sender_cgroup_id", i64::try_from(cgroup).unwrap_or(0));
                a.push("sender_container_id", container.to_string());
                e
            }
            Slot::OomKill => {
                let pod = &self.pods[victim];
                let rss = pod.memory_limit - (8 << 20);
                let mut e = self.kernel(at, "memory.oom_kill", "memory", victim, (pid, &comm));
                e.severity = Severity::Critical;
                e.message = format!(
                    "OOM killer killed {comm} (pid {pid}) using {} MiB",
                    rss >> 20
                );
                let a = &mut e.attributes;
                a.push("victim_pid", pid);
                a.push("uid", 1000i64);
                a.push("total_vm_bytes", rss * 3);
                a.push("anon_rss_bytes", rss);
                a.push("file_rss_bytes", 4i64 << 20);
                a.push("shmem_rss_bytes", 0i64);
                a.push("oom_score_adj", 985i64);
                a.push("killer_pid", pid);
                a.push("killer_comm", comm.to_string());
                e
            }
            Slot::OomExit | Slot::CrashExit => {
                self.crashed = Some((pid, Arc::clone(&self.pods[victim].container_id)));
                let mut e = self.kernel(at, "process.exit", "kernel", victim, (pid, &comm));
                let signal = if slot == Slot::OomExit { 9i64 } else { 0 };
                if signal == 0 {
                    e.message = format!("{comm} exited with code {code}");
                } else {
                    e.severity = Severity::Warning;
                    e.message = format!("{comm} was killed by signal {signal}");
                }
                e.attributes.push("ppid", 1i64);
                e.attributes
                    .push("exit_code", if signal == 0 { code } else { 0 });
                e.attributes.push("signal", signal);
                e
            }
            Slot::ConfigMissing => {
                let (pid, container) = self
                    .crashed
                    .clone()
                    .unwrap_or((pid, Arc::clone(&self.pods[victim].container_id)));
                let mut e =
                    self.kernel(at, "syscall.error", "syscall-errors", victim, (pid, &comm));
                e.entities.container_id = container;
                e.message = format!("{comm} (pid {pid}): openat failed with ENOENT 1 times");
                e.attributes.push("syscall", "openat");
                e.attributes.push("errno", "ENOENT");
                e.attributes.push("count", 1i64);
                e.attributes.push(
                    "first_seen_unix_nano",
                    i64::try_from(at).unwrap_or(i64::MAX),
                );
                e
            }
            Slot::ContainerExit => {
                let mut e = self.kubeapi(at, "container.exit", victim);
                let pod = &self.pods[victim];
                e.severity = Severity::Error;
                e.entities.container_id = Arc::clone(&pod.container_id);
                e.message = format!(
                    "container {} of {}/{} exited with {code} ({reason})",
                    pod.workload_name, pod.namespace, pod.name
                );
                e.attributes
                    .push("container", pod.workload_name.to_string());
                e.attributes.push("exit_code", code);
                e.attributes.push("reason", reason);
                e
            }
            Slot::PodRestart => {
                // The kubelet starts a new container with a new main process.
                self.next_pid += 1 + self.rng.u32(..20);
                let new_id: Arc<str> = hex(&mut self.rng, 64).into();
                let pod = &mut self.pods[victim];
                pod.restarts += 1;
                pod.pid = self.next_pid;
                pod.container_id = new_id;
                let mut e = self.kubeapi(at, "k8s.pod.restart", victim);
                let pod = &self.pods[victim];
                e.severity = Severity::Warning;
                e.entities.container_id = Arc::clone(&pod.container_id);
                e.message = format!(
                    "container {} of {}/{} restarted ({} restarts, last: {reason} {code})",
                    pod.workload_name, pod.namespace, pod.name, pod.restarts
                );
                e.attributes
                    .push("container", pod.workload_name.to_string());
                e.attributes.push("restart_count", pod.restarts);
                e.attributes.push("reason", reason);
                e.attributes.push("exit_code", code);
                e
            }
            _ => {
                let mut e = self.kubeapi(at, "k8s.pod.backoff", victim);
                let pod = &self.pods[victim];
                e.severity = Severity::Warning;
                e.entities.container_id = Arc::clone(&pod.container_id);
                e.message = format!(
                    "container {} of {}/{} is waiting: CrashLoopBackOff back-off 10s restarting failed container",
                    pod.workload_name, pod.namespace, pod.name
                );
                e.attributes
                    .push("container", pod.workload_name.to_string());
                e.attributes.push("reason", "CrashLoopBackOff");
                e
            }
        }
    }

    /// The cluster DNS pod failing, seen first as failed lookups in other pods.
    fn dns_outage(&mut self, slot: Slot, at: u64) -> Event {
        let dns = self.dns_pod();
        match slot {
            Slot::DnsPodNotReady => {
                let mut e = self.kubeapi(at, "k8s.pod.not_ready", dns);
                e.severity = Severity::Warning;
                e.message = format!(
                    "{}/{} is not ready",
                    self.pods[dns].namespace, self.pods[dns].name
                );
                e
            }
            Slot::DnsPodExit => {
                let mut e = self.kubeapi(at, "container.exit", dns);
                let pod = &self.pods[dns];
                e.severity = Severity::Error;
                e.entities.container_id = Arc::clone(&pod.container_id);
                e.message = format!(
                    "container coredns of {}/{} exited with 1 (Error)",
                    pod.namespace, pod.name
                );
                e.attributes.push("container", "coredns");
                e.attributes.push("exit_code", 1i64);
                e.attributes.push("reason", "Error");
                e
            }
            Slot::DnsPodRestart => {
                let new_id: Arc<str> = hex(&mut self.rng, 64).into();
                let pod = &mut self.pods[dns];
                pod.restarts += 1;
                pod.container_id = new_id;
                let mut e = self.kubeapi(at, "k8s.pod.restart", dns);
                let pod = &self.pods[dns];
                e.severity = Severity::Warning;
                e.entities.container_id = Arc::clone(&pod.container_id);
                e.message = format!(
                    "container coredns of {}/{} restarted ({} restarts, last: Error 1)",
                    pod.namespace, pod.name, pod.restarts
                );
                e.attributes.push("container", "coredns");
                e.attributes.push("restart_count", pod.restarts);
                e.attributes.push("reason", "Error");
                e.attributes.push("exit_code", 1i64);
                e
            }
            Slot::DnsQuery(nth) | Slot::DnsServfail(nth) => {
                let pod = self.nth_after_victim(nth);
                let name = "redis.cache.svc.cluster.local";
                let transaction = 4_000 + i64::try_from(nth).unwrap_or(0);
                if let Slot::DnsQuery(_) = slot {
                    let mut e = self.dns(at, "dns.query", pod, name, transaction);
                    e.message = format!("A {name} asked {DNS_SERVICE_IP}:53");
                    return e;
                }
                let mut e = self.dns(at, "dns.response", pod, name, transaction);
                e.severity = Severity::Warning;
                e.message = format!("A {name} -> SERVFAIL");
                e.attributes.push("rcode", "SERVFAIL");
                e.attributes.push("answers", 0i64);
                e.attributes.push("latency_us", 2_000_000i64);
                e
            }
            _ => {
                let victim = self.victim;
                let (pid, comm) = (self.pods[victim].pid, Arc::clone(&self.pods[victim].comm));
                let ip = self.pods[victim].ip.clone();
                let mut e = self.kernel(
                    at,
                    "net.tcp.connect_failed",
                    "network",
                    victim,
                    (pid, &comm),
                );
                e.severity = Severity::Warning;
                e.message = format!(
                    "{comm} could not connect {ip}:41234 -> {DNS_SERVICE_IP}:53: ETIMEDOUT"
                );
                Self::tcp(&mut e, (&ip, 41_234), (DNS_SERVICE_IP, 53), 3_000_000);
                e.attributes.push("old_state", "SYN_SENT");
                e.attributes.push("new_state", "CLOSE");
                e.attributes.push("error", "ETIMEDOUT");
                e
            }
        }
    }

    /// The node under pressure or losing its container runtime, and its pods after.
    fn node_incident(&mut self, slot: Slot, at: u64) -> Event {
        match slot {
            Slot::NodePressure => {
                let mut e = self.node_event(at, "k8s.node.pressure", "kubeapi");
                e.severity = Severity::Warning;
                e.message = format!(
                    "node {} is under pressure: MemoryPressure (KubeletHasInsufficientMemory kubelet has insufficient memory available)",
                    self.node
                );
                e.attributes.push("condition", "MemoryPressure");
                e.attributes.push("status", "True");
                e.attributes.push("previous_status", "False");
                e
            }
            Slot::Evicted(nth) => {
                let pod = self.nth_after_victim(nth);
                let mut e = self.kubeapi(at, "k8s.pod.evicted", pod);
                e.severity = Severity::Warning;
                e.message = format!(
                    "{}/{} was evicted: The node was low on resource: memory.",
                    self.pods[pod].namespace, self.pods[pod].name
                );
                e.attributes.push("reason", "Evicted");
                e
            }
            Slot::UnitError => {
                let mut e = self.node_event(at, "journal.unit_error", "journald");
                e.severity = Severity::Error;
                e.entities.pid = 612;
                e.entities.comm = "containerd".into();
                e.entities.unit = "containerd.service".into();
                e.message = "failed to write snapshot: context deadline exceeded".into();
                let a = &mut e.attributes;
                a.push("PRIORITY", "3");
                a.push("SYSLOG_IDENTIFIER", "containerd");
                a.push("_PID", "612");
                a.push("_COMM", "containerd");
                a.push("_SYSTEMD_UNIT", "containerd.service");
                e
            }
            Slot::UnitFailed => {
                let mut e = self.node_event(at, "systemd.unit.failed", "systemd");
                e.severity = Severity::Error;
                e.entities.unit = "containerd.service".into();
                e.entities.pid = 612;
                e.message = "containerd.service failed (result watchdog, signal 6)".into();
                let a = &mut e.attributes;
                a.push("unit_type", "service");
                a.push("active_state", "failed");
                a.push("sub_state", "failed");
                a.push("previous_state", "active");
                a.push("result", "watchdog");
                a.push("n_restarts", 0i64);
                a.push("exit_code", "killed");
                a.push("exit_status", 6i64);
                e
            }
            Slot::NodeNotReady => {
                let mut e = self.node_event(at, "k8s.node.not_ready", "kubeapi");
                e.severity = Severity::Critical;
                e.message = format!(
                    "node {} is NotReady: Ready (KubeletNotReady container runtime is down)",
                    self.node
                );
                e.attributes.push("condition", "Ready");
                e.attributes.push("status", "False");
                e.attributes.push("previous_status", "True");
                e
            }
            _ => {
                let Slot::PodNotReady(nth) = slot else {
                    return self.background(at);
                };
                let pod = self.nth_after_victim(nth);
                let mut e = self.kubeapi(at, "k8s.pod.not_ready", pod);
                e.severity = Severity::Warning;
                e.message = format!(
                    "{}/{} is not ready",
                    self.pods[pod].namespace, self.pods[pod].name
                );
                e
            }
        }
    }
}

fn make_pod(rng: &mut fastrand::Rng, workload: Workload, index: usize, pid: u32) -> Pod {
    let (namespace, workload_kind, workload_name, comm, memory_limit, service) = workload;
    let name = match workload_kind {
        "StatefulSet" => format!("{workload_name}-{}", index / WORKLOADS.len()),
        "Deployment" => format!("{workload_name}-{}-{}", hex(rng, 5), alnum(rng, 5)),
        _ => format!("{workload_name}-{}", alnum(rng, 5)),
    };
    let ip = format!("10.244.0.{}", 10 + index % 240);
    let service = service.map(|(name, port)| {
        let address = if name == "kube-dns" {
            DNS_SERVICE_IP.to_owned()
        } else {
            format!("10.96.{}.10", 1 + index % WORKLOADS.len())
        };
        (name, address, port)
    });
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
        ip,
        service,
        memory_limit,
        restarts: 0,
        child: None,
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
        let len = incident_cycle(Scenario::OomCascade).len();
        let cycle: Vec<Event> = (0..len).map(|_| w.next_event()).collect();
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
        let next: Vec<Event> = (0..len).map(|_| w.next_event()).collect();
        let next_oom = next
            .iter()
            .find(|e| e.kind == "memory.oom_kill")
            .expect("second cascade");
        assert_ne!(&next_oom.entities.pod_uid, pod);
    }

    #[test]
    fn every_event_has_its_real_collectors_shape() {
        for scenario in std::iter::once(Scenario::Uniform).chain(Scenario::INCIDENTS) {
            let mut w = world(scenario, 5);
            for _ in 0..2_000 {
                let event = w.next_event();
                if let Err(mismatch) = crate::event::schema::check(&event) {
                    panic!("{scenario:?}: {mismatch}: {event:?}");
                }
            }
        }
    }

    #[test]
    fn each_incident_has_one_root_and_its_events_are_marked() {
        for scenario in Scenario::INCIDENTS {
            let mut w = world(scenario, 5);
            let len = incident_cycle(scenario).len();
            let marks: Vec<Scripted> = (0..len * 3)
                .filter_map(|_| {
                    w.next_event();
                    w.last_scripted()
                })
                .collect();
            let incidents = if scenario.same_entity_each_cycle() {
                1
            } else {
                3
            };
            for incident in 0..incidents {
                let of: Vec<&Scripted> = marks.iter().filter(|m| m.incident == incident).collect();
                assert_eq!(
                    of.len() * incidents as usize,
                    script(scenario).len() * 3,
                    "{scenario:?}"
                );
                assert_eq!(of.iter().filter(|m| m.root).count(), 1, "{scenario:?}");
            }
        }
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
