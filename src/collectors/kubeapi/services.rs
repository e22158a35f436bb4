//! `EndpointSlice`s: which services this node's pods back, named on their events.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

use super::{State, uid_of};

impl State {
    /// Keeps which services each pod backs, from the endpoint slices.
    pub(super) fn slice_change(&mut self, change: watcher::Event<EndpointSlice>) {
        self.failing = false;
        let (slice, present) = match change {
            watcher::Event::Apply(slice) => (slice, true),
            watcher::Event::InitApply(slice) => {
                self.relisted_slices.insert(uid_of(&slice.metadata));
                (slice, true)
            }
            watcher::Event::Delete(slice) => (slice, false),
            watcher::Event::Init => {
                self.relisted_slices.clear();
                return;
            }
            watcher::Event::InitDone => {
                // Slices gone while the watch was down.
                let gone: Vec<String> = self
                    .slices
                    .keys()
                    .filter(|k| !self.relisted_slices.contains(*k))
                    .cloned()
                    .collect();
                for uid in gone {
                    self.forget_slice(&uid);
                }
                return;
            }
        };
        let uid = uid_of(&slice.metadata);
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned();
        let pairs: Vec<(String, String)> = match (&service, present) {
            (Some(service), true) => slice
                .endpoints
                .iter()
                // On a node agent, only this node's endpoints: the rest is never asked for.
                .filter(|e| self.cluster_wide || e.node_name.as_deref() == Some(&*self.node))
                .filter_map(|e| e.target_ref.as_ref())
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .filter_map(|r| r.uid.clone())
                .map(|pod| (pod, service.clone()))
                .collect(),
            _ => Vec::new(),
        };
        self.forget_slice(&uid);
        for (pod, service) in &pairs {
            let list = self.services.entry(pod.clone()).or_default();
            match list.iter_mut().find(|(s, _)| s == service) {
                Some(entry) => entry.1 += 1,
                None => list.push((service.clone(), 1)),
            }
        }
        if !pairs.is_empty() {
            self.slices.insert(uid, pairs);
        }
    }

    pub(super) fn forget_slice(&mut self, uid: &str) {
        for (pod, service) in self.slices.remove(uid).unwrap_or_default() {
            if let Some(list) = self.services.get_mut(&pod) {
                if let Some(entry) = list.iter_mut().find(|(s, _)| *s == service) {
                    entry.1 -= 1;
                }
                list.retain(|(_, n)| *n > 0);
                if list.is_empty() {
                    self.services.remove(&pod);
                }
            }
        }
    }
}
