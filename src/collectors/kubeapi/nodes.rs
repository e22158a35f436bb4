//! This node: readiness and pressure conditions.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;

use super::State;
use crate::event::{Event, Severity};

impl State {
    pub(super) fn node_change(&mut self, change: watcher::Event<Node>) -> Vec<Event> {
        self.failing = false;
        let Some((key, report)) = self.nodes.step(&change, |n: &Node| {
            n.metadata.name.clone().unwrap_or_default()
        }) else {
            return Vec::new();
        };
        let (watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = change else {
            return Vec::new();
        };
        let now: HashMap<String, String> = node
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        let before = self.nodes.known.insert(key.clone(), now.clone());
        let (Some(before), true) = (before, report) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let reason = |kind: &str| {
            node.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .find(|c| c.type_ == kind)
                .map(|c| {
                    format!(
                        "{} {}",
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default()
                    )
                })
                .unwrap_or_default()
        };
        for (kind, status) in &now {
            let was = before.get(kind).map_or("Unknown", String::as_str);
            if was == status {
                continue;
            }
            let (event_kind, severity, text) = match (kind.as_str(), status.as_str()) {
                ("Ready", "True") => ("k8s.node.ready", Severity::Info, "is Ready"),
                ("Ready", _) => ("k8s.node.not_ready", Severity::Critical, "is NotReady"),
                ("MemoryPressure" | "DiskPressure" | "PIDPressure", "True") => {
                    ("k8s.node.pressure", Severity::Warning, "is under pressure")
                }
                ("MemoryPressure" | "DiskPressure" | "PIDPressure", "False") if was == "True" => (
                    "k8s.node.pressure_relieved",
                    Severity::Info,
                    "is no longer under pressure",
                ),
                _ => continue,
            };
            let mut event = self.event(
                event_kind,
                severity,
                format!("node {key} {text}: {kind} ({})", reason(kind).trim()),
            );
            event.entities.node = key.as_str().into();
            event.attributes.set("condition", kind.as_str());
            event.attributes.set("status", status.as_str());
            event.attributes.set("previous_status", was);
            out.push(event);
        }
        out
    }
}
