//! What a group predicts: the likely next effects from the rule graph, and prevention
//! actions read off the evidence.

use crate::event::Event;

/// A likely next effect of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The event type expected next.
    pub event_type: &'static str,
    /// 0..1.
    pub probability: f64,
    /// What would prevent it, from the group's evidence.
    pub prevention: Vec<String>,
}

/// A prevention action read off an event's figures.
pub(super) fn evidence(event: &Event) -> Option<String> {
    use crate::event::AttrValue;
    if event.kind != "memory.oom_kill" {
        return None;
    }
    let int = |key: &str| match event.attributes.get(key) {
        Some(AttrValue::Int(n)) => Some(*n),
        _ => None,
    };
    let peak = int("memory_usage_peak_bytes").or_else(|| int("anon_rss_bytes"))?;
    let who = if event.entities.workload_name.is_empty() {
        event.entities.comm.to_string()
    } else {
        format!(
            "{}/{}",
            event.entities.pod_namespace, event.entities.workload_name
        )
    };
    let mib = |b: i64| b >> 20;
    // Head-room of a quarter over the observed peak, rounded up to 64 MiB.
    let suggested = ((peak + peak / 4) >> 26) + 1;
    Some(match int("memory_limit_bytes") {
        Some(limit) => format!(
            "raise the memory limit of {who} from {} MiB to at least {} MiB (peak observed {} MiB)",
            mib(limit),
            suggested * 64,
            mib(peak)
        ),
        None => format!(
            "give {who} a memory limit above {} MiB (peak observed {} MiB)",
            suggested * 64,
            mib(peak)
        ),
    })
}
