//! Kubernetes `Event` objects about this node and its pods, each count reported once.

use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::runtime::watcher;

use super::{State, uid_of};
use crate::event::{Event, Severity};

impl State {
    pub(super) fn event_change(&mut self, change: watcher::Event<KubeEvent>) -> Vec<Event> {
        self.failing = false;
        let Some((_, report)) = self
            .events
            .step(&change, |e: &KubeEvent| uid_of(&e.metadata))
        else {
            return Vec::new();
        };
        let (watcher::Event::Apply(object) | watcher::Event::InitApply(object)) = change else {
            return Vec::new();
        };
        // An event object repeats by its count; report each count once, and none of the
        // history listed at start.
        let uid = uid_of(&object.metadata);
        let count = object.count.unwrap_or(1);
        let seen = self.seen_events.insert(uid, count);
        if !report || seen.is_some_and(|c| c >= count) {
            return Vec::new();
        }
        let involved = &object.involved_object;
        let on_this_node = match involved.kind.as_deref() {
            Some("Node") => involved.name.as_deref() == Some(&*self.node),
            Some("Pod") => involved
                .uid
                .as_deref()
                .is_some_and(|u| self.directory.pod(u).is_some()),
            _ => false,
        };
        if !self.cluster_wide && !on_this_node {
            return Vec::new();
        }
        let warning = object.type_.as_deref() == Some("Warning");
        let reason = object.reason.clone().unwrap_or_default();
        let message = object.message.clone().unwrap_or_default();
        let pod = involved
            .uid
            .as_deref()
            .filter(|_| involved.kind.as_deref() == Some("Pod"))
            .and_then(|u| self.directory.pod(u));
        let mut event = match &pod {
            Some(meta) => self.pod_event(meta, "k8s.event", Severity::Info, String::new()),
            None => self.event("k8s.event", Severity::Info, String::new()),
        };
        event.severity = if warning {
            Severity::Warning
        } else {
            Severity::Info
        };
        event.message = format!(
            "{} {}/{}: {reason}: {message}",
            involved.kind.as_deref().unwrap_or_default(),
            involved.namespace.as_deref().unwrap_or_default(),
            involved.name.as_deref().unwrap_or_default()
        );
        event.attributes.set("reason", reason.as_str());
        event.attributes.set("count", i64::from(count));
        event
            .attributes
            .set("involved_kind", involved.kind.clone().unwrap_or_default());
        if let Some(source) = object.source.as_ref().and_then(|s| s.component.clone()) {
            event.attributes.set("source", source);
        }
        vec![event]
    }
}
