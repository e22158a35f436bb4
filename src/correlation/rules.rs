//! Causal rules as data: "an event of type `cause` on the same `relation` as an event of
//! type `effect`, at most `max_delay` before it, caused it with `confidence`".
//!
//! The built-in table is what an SRE reads off an incident timeline; docs/correlation.md
//! explains each rule and how to add one.

use std::fmt;
use std::time::Duration;

use crate::bounded::key_parts;
use crate::event::{AttrValue, Entities, Event, Severity};

/// Which entity a cause and its effect must share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// The same process on the same node.
    Process,
    /// The same container.
    Container,
    /// The same pod.
    Pod,
    /// The same owner workload (e.g. one Deployment's pods).
    Workload,
    /// The same node.
    Node,
    /// The same systemd unit.
    Unit,
    /// The cause is on the server the effect called: the pod, the service or the unit
    /// that the effect's connection or DNS lookup went to (learned from what the agent
    /// sees; see docs/correlation.md).
    Callee,
    /// The cause is on the node, the effect on a pod of that node.
    #[serde(rename = "node_pods")]
    NodePods,
}

impl Relation {
    /// Its name as the YAML writes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Container => "container",
            Self::Pod => "pod",
            Self::Workload => "workload",
            Self::Node => "node",
            Self::Unit => "unit",
            Self::Callee => "callee",
            Self::NodePods => "node_pods",
        }
    }

    /// The entity key of `entities` under this relation: a 64-bit hash of the entity's
    /// identifying strings (no allocation on the hot path; a collision needs ~2^32 live
    /// entities); `None` when the event lacks that entity. `callee` has no key of its own
    /// (the engine looks the server up), and `node_pods` keys on the node.
    #[must_use]
    pub fn key(self, entities: &Entities) -> Option<u64> {
        let parts: [&[u8]; 3] = match self {
            Self::Process if entities.pid != 0 => {
                return Some(key_parts(&[
                    entities.node.as_bytes(),
                    &entities.pid.to_le_bytes(),
                ]));
            }
            Self::Container if !entities.container_id.is_empty() => {
                [entities.container_id.as_bytes(), b"", b""]
            }
            Self::Pod if !entities.pod_uid.is_empty() => [entities.pod_uid.as_bytes(), b"", b""],
            Self::Pod if !entities.pod_name.is_empty() => [
                entities.pod_namespace.as_bytes(),
                b"/",
                entities.pod_name.as_bytes(),
            ],
            Self::Workload if !entities.workload_name.is_empty() => [
                entities.pod_namespace.as_bytes(),
                entities.workload_kind.as_bytes(),
                entities.workload_name.as_bytes(),
            ],
            Self::Node | Self::NodePods if !entities.node.is_empty() => {
                [entities.node.as_bytes(), b"", b""]
            }
            Self::Unit if !entities.unit.is_empty() => [entities.unit.as_bytes(), b"", b""],
            _ => return None,
        };
        Some(key_parts(&parts))
    }
}

/// One causal rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Short name, carried on every link the rule makes.
    pub name: &'static str,
    /// Event type of the cause.
    pub cause: &'static str,
    /// Event type of the effect.
    pub effect: &'static str,
    /// Entity both must share.
    pub relation: Relation,
    /// Longest time from cause to effect.
    pub max_delay: Duration,
    /// How sure a match is, 0..1.
    pub confidence: f64,
    /// What the cause must satisfy besides its type (a NOERROR answer causes nothing).
    pub cause_when: Condition,
    /// What the effect must satisfy besides its type.
    pub effect_when: Condition,
}

/// What an event must satisfy to take part in a rule: a lowest severity, tests on its
/// attributes (or on its entities, as `entities.<field>`), all of which must hold, and
/// alternatives of which at least one must hold when there are any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Condition {
    /// Events below this severity do not match.
    pub min_severity: Severity,
    /// (key, test) pairs; an event without the key fails its test.
    pub tests: Vec<(String, Test)>,
    /// Alternatives: when not empty, at least one must hold as well.
    pub any: Vec<Condition>,
}

/// A test on one attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    /// Equal to one of these (text to text, numbers to numbers, booleans to booleans).
    OneOf(Vec<Scalar>),
    /// Equal to none of these; an absent attribute passes.
    NoneOf(Vec<Scalar>),
    /// A number compared with this one.
    Compare(Ordering, f64),
}

/// How a number must compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ordering {
    /// Greater than.
    Above,
    /// At least.
    AtLeast,
    /// Less than.
    Below,
    /// At most.
    AtMost,
}

/// A value a test names.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Str(String),
}

impl Scalar {
    fn matches(&self, value: &AttrValue) -> bool {
        match (self, value) {
            (Self::Str(want), AttrValue::Str(have)) => want == have,
            (Self::Bool(want), AttrValue::Bool(have)) => want == have,
            (Self::Int(want), AttrValue::Int(have)) => want == have,
            (Self::Int(want), AttrValue::Float(have)) => (float(*want) - have).abs() < 1e-9,
            (Self::Float(want), AttrValue::Float(have)) => (want - have).abs() < 1e-9,
            (Self::Float(want), AttrValue::Int(have)) => (want - float(*have)).abs() < 1e-9,
            _ => false,
        }
    }
}

/// An integer attribute as a float, for comparisons with a rule's numbers.
#[allow(
    clippy::cast_precision_loss,
    reason = "attribute values past 2^53 compare as their nearest float"
)]
fn float(n: i64) -> f64 {
    n as f64
}

impl Test {
    fn holds(&self, value: Option<&AttrValue>) -> bool {
        match self {
            Self::OneOf(values) => value.is_some_and(|v| values.iter().any(|s| s.matches(v))),
            Self::NoneOf(values) => value.is_none_or(|v| !values.iter().any(|s| s.matches(v))),
            Self::Compare(ordering, bound) => {
                let number = match value {
                    Some(AttrValue::Int(n)) => float(*n),
                    Some(AttrValue::Float(n)) => *n,
                    _ => return false,
                };
                match ordering {
                    Ordering::Above => number > *bound,
                    Ordering::AtLeast => number >= *bound,
                    Ordering::Below => number < *bound,
                    Ordering::AtMost => number <= *bound,
                }
            }
        }
    }
}

impl Condition {
    /// At least `severity`, nothing else.
    #[must_use]
    pub fn at_least(severity: Severity) -> Self {
        Self {
            min_severity: severity,
            ..Self::default()
        }
    }

    /// With `key` equal to one of `values` as well.
    #[must_use]
    pub fn one_of(mut self, key: &str, values: &[Scalar]) -> Self {
        self.tests
            .push((key.to_owned(), Test::OneOf(values.to_vec())));
        self
    }

    /// With `key` equal to none of `values` as well.
    #[must_use]
    pub fn none_of(mut self, key: &str, values: &[Scalar]) -> Self {
        self.tests
            .push((key.to_owned(), Test::NoneOf(values.to_vec())));
        self
    }

    /// With these alternatives, one of which must hold as well.
    #[must_use]
    pub fn any(mut self, alternatives: Vec<Condition>) -> Self {
        self.any = alternatives;
        self
    }

    /// Whether `event` satisfies it.
    #[must_use]
    pub fn holds(&self, event: &Event) -> bool {
        event.severity >= self.min_severity
            && self
                .tests
                .iter()
                .all(|(key, test)| match key.strip_prefix("entities.") {
                    Some(field) => {
                        let text = entity_field(&event.entities, field);
                        let value = text.map(|t| AttrValue::Str(t.to_owned()));
                        test.holds(value.as_ref())
                    }
                    None => test.holds(event.attributes.get(key)),
                })
            && (self.any.is_empty() || self.any.iter().any(|c| c.holds(event)))
    }
}

/// The entity fields a condition can test, as `entities.<field>`.
pub const ENTITY_FIELDS: [&str; 8] = [
    "node",
    "comm",
    "container_id",
    "pod_namespace",
    "pod_name",
    "workload_kind",
    "workload_name",
    "unit",
];

fn entity_field<'a>(e: &'a Entities, field: &str) -> Option<&'a str> {
    let text: &str = match field {
        "node" => &e.node,
        "comm" => &e.comm,
        "container_id" => &e.container_id,
        "pod_namespace" => &e.pod_namespace,
        "pod_name" => &e.pod_name,
        "workload_kind" => &e.workload_kind,
        "workload_name" => &e.workload_name,
        "unit" => &e.unit,
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Text scalars, for the table below.
fn text(values: &[&str]) -> Vec<Scalar> {
    values
        .iter()
        .map(|v| Scalar::Str((*v).to_owned()))
        .collect()
}

const fn rule(
    name: &'static str,
    cause: &'static str,
    effect: &'static str,
    relation: Relation,
    max_delay_secs: u64,
    confidence: f64,
) -> Rule {
    Rule {
        name,
        cause,
        effect,
        relation,
        max_delay: Duration::from_secs(max_delay_secs),
        confidence,
        cause_when: Condition {
            min_severity: Severity::Debug,
            tests: Vec::new(),
            any: Vec::new(),
        },
        effect_when: Condition {
            min_severity: Severity::Debug,
            tests: Vec::new(),
            any: Vec::new(),
        },
    }
}

impl Rule {
    /// With `cause_when` set.
    #[must_use]
    pub fn cause_when(mut self, condition: Condition) -> Self {
        self.cause_when = condition;
        self
    }

    /// With `effect_when` set.
    #[must_use]
    pub fn effect_when(mut self, condition: Condition) -> Self {
        self.effect_when = condition;
        self
    }
}

/// The event types that report something broken on the far side of a connection or a
/// lookup: a pod, service or unit that is down.
const SERVER_DOWN: [&str; 7] = [
    "container.exit",
    "process.exit",
    "memory.oom_kill",
    "k8s.pod.not_ready",
    "k8s.pod.backoff",
    "k8s.pod.evicted",
    "systemd.unit.failed",
];

/// The rules every engine starts with.
#[must_use]
#[allow(clippy::too_many_lines, reason = "a table, one rule per entry")]
pub fn builtin() -> Vec<Rule> {
    use Relation::{Callee, Container, Node, NodePods, Pod, Process, Unit, Workload};
    use Severity::Warning;
    let failed_exit = || Condition::default().none_of("exit_code", &[Scalar::Int(0)]);
    // A process that did not end cleanly: a non-zero code, or a signal.
    let abnormal_end = || {
        Condition::default().any(vec![
            Condition::default().none_of("exit_code", &[Scalar::Int(0)]),
            Condition::default().none_of("signal", &[Scalar::Int(0)]),
        ])
    };
    let killed = || Condition::default().none_of("signal", &[Scalar::Int(0)]);
    let server_failure =
        || Condition::at_least(Warning).one_of("rcode", &text(&["SERVFAIL", "REFUSED"]));
    let mut rules = vec![
        // A process that cannot find what it needs exits, and its container with it.
        rule(
            "missing-file-fails-process",
            "syscall.error",
            "process.exit",
            Process,
            5,
            0.8,
        )
        .cause_when(Condition::default().one_of("errno", &text(&["ENOENT", "EACCES", "EPERM"])))
        .effect_when(abnormal_end()),
        rule(
            "refused-syscall-fails-process",
            "syscall.error",
            "process.exit",
            Process,
            5,
            0.6,
        )
        .cause_when(Condition::default().one_of(
            "errno",
            &text(&["ECONNREFUSED", "ENOSPC", "EMFILE", "ENOMEM", "EROFS"]),
        ))
        .effect_when(abnormal_end()),
        // The OOM cascade: kernel kill -> the process and its container end -> the kubelet
        // restarts it -> back-off.
        rule(
            "oom-kills-process",
            "memory.oom_kill",
            "process.exit",
            Process,
            10,
            0.95,
        )
        .effect_when(killed()),
        rule(
            "oom-kills-container",
            "memory.oom_kill",
            "container.exit",
            Container,
            60,
            0.95,
        ),
        rule(
            "oom-unreadies-pod",
            "memory.oom_kill",
            "k8s.pod.not_ready",
            Pod,
            120,
            0.8,
        ),
        rule(
            "process-exit-ends-container",
            "process.exit",
            "container.exit",
            Container,
            60,
            0.85,
        )
        .cause_when(abnormal_end())
        .effect_when(failed_exit()),
        rule(
            "process-exit-restarts-pod",
            "process.exit",
            "k8s.pod.restart",
            Pod,
            120,
            0.6,
        )
        .cause_when(abnormal_end()),
        rule(
            "process-exit-unreadies-pod",
            "process.exit",
            "k8s.pod.not_ready",
            Pod,
            120,
            0.6,
        )
        .cause_when(abnormal_end()),
        rule(
            "container-exit-restarts-pod",
            "container.exit",
            "k8s.pod.restart",
            Pod,
            180,
            0.9,
        ),
        rule(
            "container-exit-restarts-container",
            "container.exit",
            "kubelet.container.restart",
            Pod,
            180,
            0.9,
        ),
        rule(
            "container-exit-unreadies-pod",
            "container.exit",
            "k8s.pod.not_ready",
            Pod,
            120,
            0.8,
        )
        .cause_when(failed_exit()),
        rule(
            "restart-backs-off",
            "k8s.pod.restart",
            "k8s.pod.backoff",
            Pod,
            600,
            0.9,
        ),
        rule(
            "kubelet-restart-backs-off",
            "kubelet.container.restart",
            "k8s.pod.backoff",
            Pod,
            600,
            0.8,
        ),
        rule(
            "restart-duplicates-restart",
            "k8s.pod.restart",
            "kubelet.container.restart",
            Pod,
            60,
            0.8,
        ),
        // A crash loop: each back-off ends in another restart, which dies again.
        rule(
            "backoff-restarts-again",
            "k8s.pod.backoff",
            "k8s.pod.restart",
            Pod,
            600,
            0.7,
        ),
        rule(
            "restarted-container-dies-again",
            "k8s.pod.restart",
            "container.exit",
            Pod,
            600,
            0.7,
        )
        .effect_when(failed_exit()),
        rule(
            "restarted-process-dies-again",
            "k8s.pod.restart",
            "process.exit",
            Pod,
            600,
            0.6,
        )
        .effect_when(abnormal_end()),
        // One pod's OOM kills predict its siblings' under the same limit.
        rule(
            "oom-spreads-in-workload",
            "memory.oom_kill",
            "memory.oom_kill",
            Workload,
            300,
            0.5,
        ),
        // Memory that grows, then runs out.
        rule(
            "growth-ends-in-oom",
            "memory.growth",
            "memory.oom_kill",
            Container,
            3600,
            0.8,
        ),
        rule(
            "growth-nears-limit",
            "memory.growth",
            "kubelet.pod.memory_near_limit",
            Pod,
            3600,
            0.7,
        ),
        // Thrashing: pages read back from disk as fast as they are dropped, near the end.
        rule(
            "fault-storm-before-oom",
            "memory.page_fault_storm",
            "memory.oom_kill",
            Container,
            900,
            0.5,
        ),
        rule(
            "near-limit-ends-in-oom",
            "kubelet.pod.memory_near_limit",
            "memory.oom_kill",
            Pod,
            900,
            0.8,
        ),
        // The OOM killer kills with a SIGKILL of its own (`from_kernel`): the kill's
        // effect, not a second cause beside it.
        rule(
            "oom-sends-kill",
            "memory.oom_kill",
            "process.signal",
            Process,
            5,
            0.95,
        )
        .effect_when(
            Condition::default()
                .one_of("from_kernel", &[Scalar::Bool(true)])
                .one_of("signal_name", &text(&["SIGKILL"])),
        ),
        // A signal from another process ends its target.
        rule(
            "signal-kills-process",
            "process.signal",
            "process.exit",
            Process,
            10,
            0.95,
        )
        .effect_when(killed()),
        rule(
            "signal-ends-container",
            "process.signal",
            "container.exit",
            Container,
            60,
            0.9,
        ),
        rule(
            "signal-dumps-core",
            "process.signal",
            "process.core_dump",
            Process,
            10,
            0.95,
        ),
        // Name resolution failing -> connections failing from the same pod.
        // (A refused connect is a live server saying no, not a stale address.)
        rule(
            "dns-failure-fails-connects",
            "dns.response",
            "net.tcp.connect_failed",
            Pod,
            30,
            0.6,
        )
        .cause_when(server_failure())
        .effect_when(Condition::default().one_of(
            "error",
            &text(&["ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH"]),
        )),
        // CPU starved or throttled -> probes time out -> not ready.
        rule(
            "throttling-unreadies-pod",
            "cpu.throttled",
            "k8s.pod.not_ready",
            Pod,
            120,
            0.6,
        ),
        // The same, seen first as the kubelet's failed probes.
        rule(
            "throttling-fails-probes",
            "cpu.throttled",
            "k8s.event",
            Pod,
            120,
            0.6,
        )
        .effect_when(Condition::default().one_of("reason", &text(&["Unhealthy"]))),
        rule(
            "runqueue-fails-probes",
            "cpu.runqueue_latency",
            "k8s.event",
            Pod,
            120,
            0.5,
        )
        .effect_when(Condition::default().one_of("reason", &text(&["Unhealthy"]))),
        rule(
            "runqueue-unreadies-pod",
            "cpu.runqueue_latency",
            "k8s.pod.not_ready",
            Pod,
            120,
            0.5,
        ),
        rule(
            "pressure-precedes-node-pressure",
            "pressure.high",
            "k8s.node.pressure",
            Node,
            300,
            0.6,
        ),
        rule(
            "pressure-precedes-kubelet-pressure",
            "pressure.high",
            "kubelet.node.pressure",
            Node,
            300,
            0.6,
        ),
        // Disk trouble -> slow fsync -> the unit or etcd suffers.
        rule(
            "disk-latency-slows-fsync",
            "block.latency_spike",
            "fs.slow_fsync",
            Node,
            120,
            0.7,
        ),
        rule(
            "disk-latency-slows-etcd",
            "block.latency_spike",
            "etcd.slow_fsync",
            Node,
            120,
            0.7,
        ),
        rule(
            "slow-fsync-slows-etcd",
            "fs.slow_fsync",
            "etcd.slow_fsync",
            Node,
            120,
            0.7,
        ),
        // Not every unit error on a node with a slow disk is the disk's: the unit whose
        // fsync stalled is.
        rule(
            "slow-fsync-unit-errors",
            "fs.slow_fsync",
            "journal.unit_error",
            Unit,
            300,
            0.6,
        ),
        rule(
            "disk-errors-unit-errors",
            "block.io_error",
            "journal.unit_error",
            Node,
            300,
            0.6,
        ),
        // etcd losing its footing.
        rule(
            "slow-fsync-loses-leader",
            "etcd.slow_fsync",
            "etcd.leader_changed",
            Node,
            300,
            0.7,
        ),
        rule(
            "slow-commit-loses-leader",
            "etcd.slow_commit",
            "etcd.leader_changed",
            Node,
            300,
            0.6,
        ),
        rule(
            "leader-loss-fails-proposals",
            "etcd.leader_changed",
            "etcd.proposals_failed",
            Node,
            120,
            0.7,
        ),
        rule(
            "no-leader-fails-proposals",
            "etcd.no_leader",
            "etcd.proposals_failed",
            Node,
            120,
            0.8,
        ),
        rule(
            "full-db-fails-proposals",
            "etcd.db_size_near_quota",
            "etcd.proposals_failed",
            Node,
            600,
            0.6,
        ),
        // A unit's own trouble: its errors, its process ending -> it fails or restarts.
        rule(
            "unit-errors-fail-unit",
            "journal.unit_error",
            "systemd.unit.failed",
            Unit,
            300,
            0.7,
        ),
        rule(
            "unit-errors-restart-unit",
            "journal.unit_error",
            "systemd.unit.restarted",
            Unit,
            300,
            0.6,
        ),
        rule(
            "unit-errors-end-process",
            "journal.unit_error",
            "process.exit",
            Unit,
            30,
            0.7,
        )
        .effect_when(abnormal_end()),
        rule(
            "restarted-unit-errors-again",
            "systemd.unit.restarted",
            "journal.unit_error",
            Unit,
            120,
            0.6,
        ),
        rule(
            "process-exit-fails-unit",
            "process.exit",
            "systemd.unit.failed",
            Unit,
            60,
            0.8,
        )
        .cause_when(abnormal_end()),
        rule(
            "process-exit-restarts-unit",
            "process.exit",
            "systemd.unit.restarted",
            Unit,
            60,
            0.7,
        )
        .cause_when(abnormal_end()),
        rule(
            "oom-fails-unit",
            "memory.oom_kill",
            "systemd.unit.failed",
            Unit,
            60,
            0.9,
        ),
        rule(
            "failure-fails-job",
            "systemd.unit.failed",
            "systemd.job.finished",
            Unit,
            60,
            0.8,
        )
        .effect_when(Condition::at_least(Warning)),
        // A node agent failing -> node NotReady -> its pods not ready, failed or evicted.
        rule(
            "unit-failure-node-notready",
            "systemd.unit.failed",
            "k8s.node.not_ready",
            Node,
            300,
            0.8,
        ),
        rule(
            "notready-unreadies-pods",
            "k8s.node.not_ready",
            "k8s.pod.not_ready",
            NodePods,
            600,
            0.8,
        ),
        rule(
            "notready-evicts-pods",
            "k8s.node.not_ready",
            "k8s.pod.evicted",
            NodePods,
            600,
            0.8,
        ),
        rule(
            "notready-fails-pods",
            "k8s.node.not_ready",
            "k8s.pod.phase",
            NodePods,
            600,
            0.7,
        )
        .effect_when(Condition::at_least(Warning)),
        rule(
            "pressure-evicts-pods",
            "k8s.node.pressure",
            "k8s.pod.evicted",
            NodePods,
            600,
            0.8,
        ),
        rule(
            "kubelet-pressure-evicts-pods",
            "kubelet.node.pressure",
            "k8s.pod.evicted",
            NodePods,
            600,
            0.7,
        ),
        rule(
            "kubelet-sees-pressure-first",
            "kubelet.node.pressure",
            "k8s.node.pressure",
            Node,
            300,
            0.8,
        ),
        rule(
            "eviction-fails-pod",
            "k8s.pod.evicted",
            "k8s.pod.phase",
            Pod,
            120,
            0.9,
        )
        .effect_when(Condition::at_least(Warning)),
        // A Job's container fails, and with it the pod.
        rule(
            "container-exit-fails-pod",
            "container.exit",
            "k8s.pod.phase",
            Pod,
            120,
            0.8,
        )
        .cause_when(failed_exit())
        .effect_when(Condition::at_least(Warning)),
        // A pod that cannot start: the image or its config is wrong; the kubelet's
        // warnings about it follow.
        rule(
            "pull-failure-warns",
            "k8s.pod.image_pull_backoff",
            "k8s.event",
            Pod,
            600,
            0.7,
        )
        // The kubelet's image events; a probe failure needs a container that ran.
        .effect_when(Condition::at_least(Warning).one_of(
            "reason",
            &text(&[
                "Failed",
                "BackOff",
                "ErrImagePull",
                "ImagePullBackOff",
                "InspectFailed",
                "ErrImageNeverPull",
            ]),
        )),
        rule(
            "waiting-warns",
            "k8s.container.waiting",
            "k8s.event",
            Pod,
            600,
            0.7,
        )
        .effect_when(Condition::at_least(Warning)),
        // Recovery closes the story: what failed comes back.
        rule(
            "node-recovers",
            "k8s.node.not_ready",
            "k8s.node.ready",
            Node,
            3600,
            0.6,
        ),
        rule(
            "pressure-relieved",
            "k8s.node.pressure",
            "k8s.node.pressure_relieved",
            Node,
            3600,
            0.6,
        ),
        rule(
            "kubelet-pressure-relieved",
            "kubelet.node.pressure",
            "kubelet.node.pressure_relieved",
            Node,
            3600,
            0.6,
        ),
        rule(
            "unit-recovers",
            "systemd.unit.failed",
            "systemd.unit.started",
            Unit,
            3600,
            0.6,
        ),
        rule(
            "pod-recovers",
            "k8s.pod.not_ready",
            "k8s.pod.ready",
            Pod,
            900,
            0.6,
        ),
        // An application's own requests (the otel collector): the kernel kills what served
        // them, and they fail; the same for its error logs.
        rule(
            "oom-fails-request",
            "memory.oom_kill",
            "app.span",
            Container,
            60,
            0.8,
        )
        .effect_when(failed_request()),
        rule(
            "oom-fails-pod-request",
            "memory.oom_kill",
            "app.span",
            Pod,
            60,
            0.7,
        )
        .effect_when(failed_request()),
        rule(
            "oom-fails-unit-request",
            "memory.oom_kill",
            "app.span",
            Unit,
            60,
            0.7,
        )
        .effect_when(failed_request()),
        rule(
            "kill-fails-request",
            "process.signal",
            "app.span",
            Container,
            30,
            0.7,
        )
        .cause_when(Condition::at_least(Warning))
        .effect_when(failed_request()),
        rule(
            "exit-fails-request",
            "container.exit",
            "app.span",
            Pod,
            30,
            0.6,
        )
        .cause_when(failed_exit())
        .effect_when(failed_request()),
        rule(
            "throttling-slows-requests",
            "cpu.throttled",
            "app.span",
            Container,
            120,
            0.6,
        )
        .effect_when(Condition::default().one_of("kept", &text(&["slow"]))),
        rule(
            "oom-logs-errors",
            "memory.oom_kill",
            "app.log",
            Container,
            60,
            0.6,
        )
        .effect_when(Condition::at_least(Severity::Error)),
        rule(
            "etcd-recovers",
            "etcd.unhealthy",
            "etcd.healthy",
            Node,
            3600,
            0.6,
        ),
        rule(
            "etcd-reachable-again",
            "etcd.unreachable",
            "etcd.healthy",
            Node,
            3600,
            0.6,
        ),
    ];
    // A server that is down (a pod, the service it backs, or a unit) fails its callers:
    // their lookups (the cluster DNS) and their connects.
    for cause in SERVER_DOWN {
        let when = match cause {
            "container.exit" => failed_exit(),
            "process.exit" => abnormal_end(),
            _ => Condition::default(),
        };
        rules.push(
            rule(
                "server-down-fails-lookups",
                cause,
                "dns.response",
                Callee,
                300,
                0.8,
            )
            .cause_when(when.clone())
            .effect_when(server_failure()),
        );
        rules.push(
            rule(
                "server-down-fails-connects",
                cause,
                "net.tcp.connect_failed",
                Callee,
                300,
                0.8,
            )
            .cause_when(when.clone()),
        );
        // An application's client span that failed, toward that server.
        rules.push(
            rule(
                "server-down-fails-requests",
                cause,
                "app.span",
                Callee,
                300,
                0.75,
            )
            .cause_when(when)
            .effect_when(failed_request().one_of("span.kind", &text(&["client", "producer"]))),
        );
    }
    rules
}

/// An application span whose status is an error.
fn failed_request() -> Condition {
    Condition::default().one_of("otel.status_code", &text(&["error"]))
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        // Info and above is every event but debug ones: not worth a word.
        if self.min_severity > Severity::Info {
            parts.push(format!("{}+", self.min_severity.as_str()));
        }
        for (key, test) in &self.tests {
            let values = |values: &[Scalar]| {
                values
                    .iter()
                    .map(|v| match v {
                        Scalar::Str(s) => s.clone(),
                        Scalar::Int(n) => n.to_string(),
                        Scalar::Float(n) => n.to_string(),
                        Scalar::Bool(b) => b.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            };
            parts.push(match test {
                Test::OneOf(v) => format!("{key}={}", values(v)),
                Test::NoneOf(v) => format!("{key}!={}", values(v)),
                Test::Compare(o, n) => {
                    let op = match o {
                        Ordering::Above => ">",
                        Ordering::AtLeast => ">=",
                        Ordering::Below => "<",
                        Ordering::AtMost => "<=",
                    };
                    format!("{key}{op}{n}")
                }
            });
        }
        if !self.any.is_empty() {
            let any: Vec<String> = self.any.iter().map(ToString::to_string).collect();
            parts.push(format!("({})", any.join(" or ")));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The built-in rules as docs/correlation.md lists them.
#[must_use]
pub fn render(rules: &[Rule]) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| rule | cause | effect | relation | max delay | confidence |\n|---|---|---|---|---|---|\n",
    );
    let side = |kind: &str, when: &Condition| {
        let when = when.to_string();
        if when.is_empty() {
            format!("`{kind}`")
        } else {
            format!("`{kind}` ({when})")
        }
    };
    for rule in rules {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:?} | {} |",
            rule.name,
            side(rule.cause, &rule.cause_when),
            side(rule.effect, &rule.effect_when),
            rule.relation.name(),
            rule.max_delay,
            rule.confidence
        );
    }
    out
}

/// A rule from the YAML file. Its strings live for the whole run: rules are read once at
/// start, and the engine keys its tables by `&'static str`.
#[must_use]
pub fn from_config(rule: &super::RuleConfig) -> Rule {
    let keep = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let mut cause_when = rule.cause_when.to_condition();
    cause_when.min_severity = cause_when.min_severity.max(rule.cause_min_severity);
    Rule {
        name: keep(&rule.name),
        cause: keep(&rule.cause),
        effect: keep(&rule.effect),
        relation: rule.relation,
        max_delay: rule.max_delay,
        confidence: rule.confidence,
        cause_when,
        effect_when: rule.effect_when.to_condition(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_rule_is_well_formed() {
        for rule in builtin() {
            assert!((0.0..=1.0).contains(&rule.confidence), "{}", rule.name);
            assert!(!rule.max_delay.is_zero(), "{}", rule.name);
            assert!(
                rule.cause.contains('.') && rule.effect.contains('.'),
                "{}",
                rule.name
            );
        }
    }

    #[test]
    fn docs_correlation_md_lists_the_builtin_rules() {
        const START: &str = "<!-- rules: generated from src/correlation/rules.rs -->\n";
        const END: &str = "<!-- end of rules -->";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/correlation.md");
        let doc = std::fs::read_to_string(path).expect("docs/correlation.md");
        let from = doc.find(START).expect("the rules marker") + START.len();
        let to = doc.find(END).expect("the end marker");
        let table = render(&builtin());
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, format!("{}{table}{}", &doc[..from], &doc[to..]))
                .expect("rewrite");
            return;
        }
        assert!(
            doc[from..to] == table,
            "docs/correlation.md's rule table differs from builtin() (UPDATE_GOLDEN=1 rewrites it)"
        );
    }

    #[test]
    fn every_event_type_is_in_a_rule_or_listed_as_needing_none() {
        // Types that are the routine record of normal work, or whose meaning no rule can
        // read: a new collector's type that is in no rule must be added to a rule or here.
        const NEED_NO_RULE: [&str; 17] = [
            "process.exec",
            "net.tcp.connect",
            "net.tcp.accept",
            "net.tcp.close",
            "dns.query",
            "journal.entry",
            "k8s.event",
            "container.created",
            "container.started",
            // An operator's stop or reload, not a failure.
            "systemd.unit.stopped",
            "systemd.unit.reloading",
            // The end of a spike: good news, the cause of nothing.
            "block.latency_recovered",
            "memory.growth_stopped",
            "memory.page_fault_storm_ended",
            "cpu.runqueue_latency_recovered",
            "cpu.throttled_ended",
            "pressure.relieved",
        ];
        let rules = builtin();
        let unruled: Vec<&str> = crate::event::schema::SHAPES
            .iter()
            .map(|s| s.kind)
            .filter(|k| !rules.iter().any(|r| r.cause == *k || r.effect == *k))
            .filter(|k| !NEED_NO_RULE.contains(k))
            .collect();
        assert!(unruled.is_empty(), "event types in no rule: {unruled:?}");
    }

    #[test]
    fn relations_key_on_their_entity_or_not_at_all() {
        let mut entities = Entities::default();
        assert_eq!(Relation::Pod.key(&entities), None);
        entities.pod_namespace = "shop".into();
        entities.pod_name = "cart-1".into();
        let by_name = Relation::Pod.key(&entities).expect("keyed by name");
        let mut other = entities.clone();
        other.pod_name = "cart-2".into();
        assert_ne!(Relation::Pod.key(&other), Some(by_name));
        entities.pod_uid = "u-1".into();
        assert_ne!(Relation::Pod.key(&entities), Some(by_name), "the uid wins");
        assert_eq!(Relation::Process.key(&entities), None, "no pid, no process");
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(key_parts(&[b"ab", b"c"]), key_parts(&[b"a", b"bc"]));
    }
}
