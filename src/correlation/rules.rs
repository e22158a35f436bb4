//! Causal rules as data: "an event of type `cause` on the same `relation` as an event of
//! type `effect`, at most `max_delay` before it, caused it with `confidence`".
//!
//! The built-in table is what an SRE reads off an incident timeline; docs/correlation.md
//! explains each rule and how to add one.

use std::time::Duration;

use crate::event::{Entities, Severity, hash_parts};

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
        }
    }

    /// The entity key of `entities` under this relation: a 64-bit hash of the entity's
    /// identifying strings (no allocation on the hot path; a collision needs ~2^32 live
    /// entities); `None` when the event lacks that entity.
    #[must_use]
    pub fn key(self, entities: &Entities) -> Option<u64> {
        let parts: [&[u8]; 3] = match self {
            Self::Process if entities.pid != 0 => {
                return Some(hash_parts(&[
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
            Self::Node if !entities.node.is_empty() => [entities.node.as_bytes(), b"", b""],
            Self::Unit if !entities.unit.is_empty() => [entities.unit.as_bytes(), b"", b""],
            _ => return None,
        };
        Some(hash_parts(&parts))
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
    /// Causes below this severity do not match (a NOERROR DNS answer causes nothing).
    pub cause_min_severity: Severity,
}

const fn rule(
    name: &'static str,
    cause: &'static str,
    effect: &'static str,
    relation: Relation,
    max_delay_secs: u64,
    confidence: f64,
    cause_min_severity: Severity,
) -> Rule {
    Rule {
        name,
        cause,
        effect,
        relation,
        max_delay: Duration::from_secs(max_delay_secs),
        confidence,
        cause_min_severity,
    }
}

/// The rules every engine starts with.
#[must_use]
#[allow(clippy::too_many_lines, reason = "a table, one rule per entry")]
pub fn builtin() -> Vec<Rule> {
    use Relation::{Container, Node, Pod, Process, Unit, Workload};
    use Severity::{Info, Warning};
    vec![
        // The OOM cascade: kernel kill -> runtime exit 137 -> kubelet restart -> back-off.
        rule(
            "oom-kills-container",
            "memory.oom_kill",
            "container.exit",
            Container,
            30,
            0.95,
            Info,
        ),
        rule(
            "oom-kills-process",
            "memory.oom_kill",
            "process.exit",
            Process,
            10,
            0.95,
            Info,
        ),
        rule(
            "container-exit-restarts-pod",
            "container.exit",
            "k8s.pod.restart",
            Pod,
            120,
            0.9,
            Info,
        ),
        rule(
            "restart-backs-off",
            "k8s.pod.restart",
            "k8s.pod.backoff",
            Pod,
            600,
            0.9,
            Info,
        ),
        // A restart storm: each back-off ends in another restart.
        rule(
            "backoff-restarts-again",
            "k8s.pod.backoff",
            "k8s.pod.restart",
            Pod,
            600,
            0.7,
            Info,
        ),
        // One pod's OOM kills predict its siblings' under the same limit.
        rule(
            "oom-spreads-in-workload",
            "memory.oom_kill",
            "memory.oom_kill",
            Workload,
            300,
            0.5,
            Info,
        ),
        // Name resolution failing -> connections failing from the same pod.
        rule(
            "dns-failure-fails-connects",
            "dns.query",
            "net.tcp.connect_failed",
            Pod,
            30,
            0.6,
            Warning,
        ),
        rule(
            "dns-failure-fails-connects",
            "dns.response",
            "net.tcp.connect_failed",
            Pod,
            30,
            0.6,
            Warning,
        ),
        // Disk trouble -> the unit logs errors -> the unit fails.
        rule(
            "disk-latency-unit-errors",
            "block.latency_spike",
            "journal.unit_error",
            Node,
            300,
            0.5,
            Warning,
        ),
        rule(
            "unit-errors-fail-unit",
            "journal.unit_error",
            "systemd.unit.failed",
            Unit,
            300,
            0.7,
            Info,
        ),
        // A node agent failing -> node NotReady -> its pods evicted.
        rule(
            "unit-failure-node-notready",
            "systemd.unit.failed",
            "k8s.node.not_ready",
            Node,
            300,
            0.8,
            Info,
        ),
        rule(
            "notready-evicts-pods",
            "k8s.node.not_ready",
            "k8s.pod.evicted",
            Node,
            600,
            0.8,
            Info,
        ),
        rule(
            "pressure-evicts-pods",
            "k8s.node.pressure",
            "k8s.pod.evicted",
            Node,
            600,
            0.8,
            Info,
        ),
    ]
}

/// A rule from the YAML file. Its strings live for the whole run: rules are read once at
/// start, and the engine keys its tables by `&'static str`.
#[must_use]
pub fn from_config(rule: &super::RuleConfig) -> Rule {
    let keep = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    Rule {
        name: keep(&rule.name),
        cause: keep(&rule.cause),
        effect: keep(&rule.effect),
        relation: rule.relation,
        max_delay: rule.max_delay,
        confidence: rule.confidence,
        cause_min_severity: rule.cause_min_severity,
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
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
    }
}
