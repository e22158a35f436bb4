//! What a group predicts: the likely next effects from the rule graph, the cascade risk,
//! and prevention actions read off the evidence.

use std::sync::Arc;

use crate::correlation::rules::{Relation, Rule};
use crate::event::{Event, Prediction};

/// What comes next: the rules leading on from the newest causal member (`newest`), and
/// the spread of the root cause across its workload while the group is open; most likely
/// first, one per event type. Failures of callers (`callee` rules) are predicted only for
/// a group that touched a service (`serves`): only then are there callers to fail; and
/// failures of applications' requests only where their spans reach the engine (`apps`).
pub(super) fn predict(
    rules: &[Rule],
    newest: &str,
    root_kind: &str,
    evidence: &[String],
    serves: bool,
    apps: bool,
) -> Vec<Prediction> {
    let mut predictions: Vec<Prediction> = rules
        .iter()
        .filter(|r| serves || r.relation != Relation::Callee)
        .filter(|r| apps || !r.effect.starts_with("app."))
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
    /// Steady growth (`memory.growth`): bytes per minute and seconds until the limit.
    growth: Option<(i64, Option<i64>)>,
}

/// Whose memory: a workload's, or a process's outside any.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Who {
    Workload { namespace: Arc<str>, name: Arc<str> },
    Process(Arc<str>),
}

impl Evidence {
    /// Adds `fact` to `facts`, one per workload (or process): a crash loop brings one per
    /// OOM kill, and the action is about the highest peak seen.
    pub(super) fn merge(facts: &mut Vec<Self>, fact: Self) {
        let alike = |known: &Self| {
            known.who.same(&fact.who) && known.growth.is_some() == fact.growth.is_some()
        };
        match facts.iter_mut().find(|known| alike(known)) {
            Some(known) if fact.peak > known.peak => *known = fact,
            Some(_) => {}
            None => facts.push(fact),
        }
    }

    /// The action, in words.
    pub(super) fn text(&self) -> String {
        let who = match &self.who {
            Who::Workload { namespace, name } => format!("{namespace}/{name}"),
            Who::Process(comm) => comm.to_string(),
        };
        let mib = |b: i64| b >> 20;
        if let Some((per_minute, to_limit)) = self.growth {
            return match (to_limit, self.limit) {
                (Some(seconds), Some(limit)) => format!(
                    "the memory of {who} grows {} MiB/min: at this rate it reaches its {} MiB limit in {seconds} s; find what holds it, or raise the limit",
                    mib(per_minute),
                    mib(limit)
                ),
                _ => format!(
                    "the memory of {who} grows {} MiB/min with no limit to stop it; find what holds it, and give it a limit",
                    mib(per_minute)
                ),
            };
        }
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

impl Who {
    fn same(&self, other: &Self) -> bool {
        // The index hands out one `Arc` per name, so the pointers decide most comparisons.
        let eq = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b) || a == b;
        match (self, other) {
            (
                Self::Workload { namespace, name },
                Self::Workload {
                    namespace: other_namespace,
                    name: other_name,
                },
            ) => eq(name, other_name) && eq(namespace, other_namespace),
            (Self::Process(comm), Self::Process(other)) => eq(comm, other),
            _ => false,
        }
    }
}

/// What an OOM kill or a steady memory growth says should change, from its figures.
pub(super) fn evidence(event: &Event) -> Option<Evidence> {
    use crate::event::AttrValue;
    // Called for every member: most are neither.
    if event.kind != "memory.oom_kill" && event.kind != "memory.growth" {
        return None;
    }
    let int = |key: &str| match event.attributes.get(key) {
        Some(AttrValue::Int(n)) => Some(*n),
        _ => None,
    };
    let e = &event.entities;
    let who = if !e.workload_name.is_empty() {
        Who::Workload {
            namespace: Arc::clone(&e.pod_namespace),
            name: Arc::clone(&e.workload_name),
        }
    } else if !e.comm.is_empty() {
        Who::Process(Arc::clone(&e.comm))
    } else if !e.container_id.is_empty() {
        // A cgroup's event names no process: its container (short id) or unit.
        Who::Process(Arc::from(format!(
            "container {}",
            &e.container_id[..12.min(e.container_id.len())]
        )))
    } else {
        Who::Process(Arc::clone(&e.unit))
    };
    match &*event.kind {
        "memory.oom_kill" => Some(Evidence {
            who,
            peak: int("memory_usage_peak_bytes").or_else(|| int("anon_rss_bytes"))?,
            limit: int("memory_limit_bytes"),
            growth: None,
        }),
        "memory.growth" => Some(Evidence {
            who,
            peak: int("usage_bytes")?,
            limit: int("limit_bytes"),
            growth: Some((int("growth_bytes_per_minute")?, int("seconds_to_limit"))),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom(workload: &str, peak_mib: i64) -> Evidence {
        let mut event = Event::new(
            crate::event::EventId::from_u128(1),
            1,
            "memory.oom_kill",
            "memory",
        );
        event.entities.pod_namespace = "shop".into();
        event.entities.workload_name = workload.into();
        event.attributes.set("anon_rss_bytes", peak_mib << 20);
        evidence(&event).expect("an OOM kill with a peak is evidence")
    }

    #[test]
    fn a_steady_growth_says_when_the_limit_is_reached() {
        let mut event = Event::new(
            crate::event::EventId::from_u128(2),
            1,
            "memory.growth",
            "memory-leak-hunter",
        );
        event.entities.container_id = "3f4a1c2b9d8e7f60a1b2c3d4".into();
        event.attributes.set("usage_bytes", 40i64 << 20);
        event.attributes.set("limit_bytes", 64i64 << 20);
        event
            .attributes
            .set("growth_bytes_per_minute", 120i64 << 20);
        event.attributes.set("seconds_to_limit", 12i64);
        let fact = evidence(&event).expect("growth is evidence");
        assert_eq!(
            fact.text(),
            "the memory of container 3f4a1c2b9d8e grows 120 MiB/min: at this rate it reaches its 64 MiB limit in 12 s; find what holds it, or raise the limit"
        );
    }

    #[test]
    fn a_workload_killed_again_keeps_one_action_at_its_highest_peak() {
        let mut facts = Vec::new();
        for (workload, peak) in [("cart", 300), ("cart", 500), ("web", 100), ("cart", 400)] {
            Evidence::merge(&mut facts, oom(workload, peak));
        }
        let text: Vec<String> = facts.iter().map(Evidence::text).collect();
        assert_eq!(
            text,
            [
                "give shop/cart a memory limit above 640 MiB (peak observed 500 MiB)",
                "give shop/web a memory limit above 128 MiB (peak observed 100 MiB)",
            ]
        );
    }
}
