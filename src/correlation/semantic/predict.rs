//! What a group predicts: the likely next effects from the rule graph, the cascade risk,
//! and prevention actions read off the evidence.

use std::sync::Arc;

use crate::correlation::rules::{Relation, Rule};
use crate::event::{Event, Prediction};

/// What comes next: the rules leading on from the newest causal member (`newest`), and
/// the spread of the root cause across its workload while the group is open; most likely
/// first, one per event type. Failures of callers (`callee` rules) are predicted only for
/// a group that touched a service (`serves`): only then are there callers to fail.
pub(super) fn predict(
    rules: &[Rule],
    newest: &str,
    root_kind: &str,
    evidence: &[String],
    serves: bool,
) -> Vec<Prediction> {
    let mut predictions: Vec<Prediction> = rules
        .iter()
        .filter(|r| serves || r.relation != Relation::Callee)
        .filter(|r| r.cause == newest || (r.cause == root_kind && r.relation == Relation::Workload))
        .map(|r| Prediction {
            event_type: r.effect,
            probability: r.confidence,
            prevention: evidence.to_vec(),
        })
        .collect();
    predictions.sort_by(|a, b| {
        b.probability
            .total_cmp(&a.probability)
            .then(a.event_type.cmp(b.event_type))
    });
    predictions.dedup_by(|a, b| a.event_type == b.event_type);
    predictions
}

/// 0..1: how likely at least one more effect follows, 1 - prod(1 - p) over predictions.
pub(super) fn cascade_risk(predictions: &[Prediction]) -> f64 {
    1.0 - predictions
        .iter()
        .map(|p| 1.0 - p.probability)
        .product::<f64>()
}

/// A prevention action read off an event's figures; written out only when the group
/// closes (a crash-looping workload brings the same one a thousand times).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Evidence {
    who: Who,
    peak: i64,
    limit: Option<i64>,
}

/// Whose memory: a workload's, or a process's outside any.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    Workload { namespace: Arc<str>, name: Arc<str> },
    Process(Arc<str>),
}

impl Evidence {
    /// The action, in words.
    pub(super) fn text(&self) -> String {
        let who = match &self.who {
            Who::Workload { namespace, name } => format!("{namespace}/{name}"),
            Who::Process(comm) => comm.to_string(),
        };
        let mib = |b: i64| b >> 20;
        // Head-room of a quarter over the observed peak, rounded up to 64 MiB.
        let suggested = ((self.peak + self.peak / 4) >> 26) + 1;
        match self.limit {
            Some(limit) => format!(
                "raise the memory limit of {who} from {} MiB to at least {} MiB (peak observed {} MiB)",
                mib(limit),
                suggested * 64,
                mib(self.peak)
            ),
            None => format!(
                "give {who} a memory limit above {} MiB (peak observed {} MiB)",
                suggested * 64,
                mib(self.peak)
            ),
        }
    }
}

/// What an OOM kill says should change, from its figures.
pub(super) fn evidence(event: &Event) -> Option<Evidence> {
    use crate::event::AttrValue;
    if event.kind != "memory.oom_kill" {
        return None;
    }
    let int = |key: &str| match event.attributes.get(key) {
        Some(AttrValue::Int(n)) => Some(*n),
        _ => None,
    };
    let peak = int("memory_usage_peak_bytes").or_else(|| int("anon_rss_bytes"))?;
    let e = &event.entities;
    let who = if e.workload_name.is_empty() {
        Who::Process(Arc::clone(&e.comm))
    } else {
        Who::Workload {
            namespace: Arc::clone(&e.pod_namespace),
            name: Arc::clone(&e.workload_name),
        }
    };
    Some(Evidence {
        who,
        peak,
        limit: int("memory_limit_bytes"),
    })
}
