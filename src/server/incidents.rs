//! `tapio-server incidents`: the closed groups of a store as a person reads them. Root cause
//! and where, summary (with the blast radius), the trace id to open in Jaeger or Tempo,
//! every event of the chain with the rules and confidences that link it to its causes,
//! and the predictions with what would prevent them. `--output json` gives the same as
//! one JSON object per incident.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::pb;

/// Where an event happened, as a person names it: pod, else unit, else node.
fn place(event: &pb::Event) -> String {
    let Some(e) = &event.entities else {
        return "unknown".into();
    };
    if !e.pod_name.is_empty() {
        format!("{}/{}", e.pod_namespace, e.pod_name)
    } else if !e.unit.is_empty() {
        e.unit.clone()
    } else {
        format!("node {}", e.node)
    }
}

fn hex(bytes: &[u8]) -> String {
    crate::event::to_hex(bytes)
}

fn seconds(from: u64, at: u64) -> f64 {
    Duration::from_nanos(at.saturating_sub(from)).as_secs_f64()
}

/// One incident as text; `events` are the group's stored events, oldest first.
#[must_use]
pub fn text(n: usize, group: &pb::SemanticGroup, events: &[pb::Event]) -> String {
    let by_id: HashMap<&[u8], &pb::Event> = events.iter().map(|e| (&e.id[..], e)).collect();
    let root = by_id.get(&group.root_cause_event_id[..]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "incident {n}: impact {:.2}, cascade risk {:.2}; root cause {} on {}",
        group.impact,
        group.cascade_risk,
        root.map_or("unknown", |e| e.r#type.as_str()),
        root.map_or_else(|| "unknown".into(), |e| place(e)),
    );
    let _ = writeln!(out, "  summary: {}", group.summary);
    let _ = writeln!(out, "  trace: {}", hex(&group.trace_id));
    for event in events {
        let _ = write!(
            out,
            "  +{:>6.1}s {:<22} {}",
            seconds(group.first_seen_unix_nano, event.timestamp_unix_nano),
            event.r#type,
            place(event)
        );
        for link in event.correlation.iter().flat_map(|c| &c.causal_links) {
            let cause = by_id
                .get(&link.cause_event_id[..])
                .map_or("an earlier event", |e| e.r#type.as_str());
            let _ = write!(out, "  <- {cause} ({}, {:.2})", link.rule, link.confidence);
        }
        out.push('\n');
    }
    for prediction in &group.predictions {
        let _ = writeln!(
            out,
            "  predicts {} p={:.2}",
            prediction.event_type, prediction.probability
        );
        for action in &prediction.prevention_actions {
            let _ = writeln!(out, "    prevent: {action}");
        }
    }
    out
}

/// One incident as a JSON object, with the same content as [`text`].
#[must_use]
pub fn json(group: &pb::SemanticGroup, events: &[pb::Event]) -> serde_json::Value {
    let by_id: HashMap<&[u8], &pb::Event> = events.iter().map(|e| (&e.id[..], e)).collect();
    let root = by_id.get(&group.root_cause_event_id[..]);
    serde_json::json!({
        "impact": group.impact,
        "cascade_risk": group.cascade_risk,
        "root_cause": root.map(|e| serde_json::json!({
            "type": e.r#type,
            "place": place(e),
            "event_id": hex(&e.id),
        })),
        "summary": group.summary,
        "trace_id": hex(&group.trace_id),
        "first_seen_unix_nano": group.first_seen_unix_nano,
        "last_seen_unix_nano": group.last_seen_unix_nano,
        "chain": events.iter().map(|e| serde_json::json!({
            "at_seconds": seconds(group.first_seen_unix_nano, e.timestamp_unix_nano),
            "type": e.r#type,
            "place": place(e),
            "event_id": hex(&e.id),
            "causes": e.correlation.iter().flat_map(|c| &c.causal_links).map(|l| serde_json::json!({
                "type": by_id.get(&l.cause_event_id[..]).map(|c| c.r#type.clone()),
                "event_id": hex(&l.cause_event_id),
                "rule": l.rule,
                "confidence": l.confidence,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "predictions": group.predictions.iter().map(|p| serde_json::json!({
            "event_type": p.event_type,
            "probability": p.probability,
            "prevention": p.prevention_actions,
        })).collect::<Vec<_>>(),
    })
}
