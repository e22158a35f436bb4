//! Pods: their changes become events (exits, restarts, back-offs, readiness, evictions),
//! and each pod fills the node's pod directory.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

use super::{State, uid_of};
use crate::event::{Event, Severity};
use crate::metadata::PodMeta;

/// A pod as last seen, reduced to what changes are reported on.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct PodState {
    phase: String,
    ready: Option<bool>,
    evicted: bool,
    containers: HashMap<String, ContainerState>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ContainerState {
    restarts: i32,
    waiting: String,
}

/// The runtime's container id without its `containerd://` (or `cri-o://`, `docker://`)
/// prefix.
pub(super) fn container_id(raw: &str) -> &str {
    raw.split_once("://").map_or(raw, |(_, id)| id)
}

/// The pod's owner workload: a `Deployment` through its `ReplicaSet` (named
/// `<deployment>-<pod-template-hash>`), else the controller owner itself.
pub(super) fn workload(pod: &Pod) -> (String, String) {
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return (String::new(), String::new());
    };
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"))
        && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
    {
        return ("Deployment".into(), deployment.into());
    }
    (owner.kind.clone(), owner.name.clone())
}

pub(super) fn pod_state(pod: &Pod) -> PodState {
    let status = pod.status.as_ref();
    PodState {
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True"),
        evicted: status.and_then(|s| s.reason.as_deref()) == Some("Evicted"),
        containers: status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| {
                (
                    c.name.clone(),
                    ContainerState {
                        restarts: c.restart_count,
                        waiting: c
                            .state
                            .as_ref()
                            .and_then(|s| s.waiting.as_ref())
                            .and_then(|w| w.reason.clone())
                            .unwrap_or_default(),
                    },
                )
            })
            .collect(),
    }
}

impl State {
    pub(super) fn pod_change(&mut self, change: watcher::Event<Pod>) -> Vec<Event> {
        self.failing = false;
        if let watcher::Event::Delete(pod) = &change {
            self.directory.remove(&uid_of(&pod.metadata));
        }
        let was_synced = self.pods.synced;
        let Some((key, report)) = self.pods.step(&change, |p: &Pod| uid_of(&p.metadata)) else {
            if !was_synced && self.pods.synced {
                // The API server answered the first full list: the watch is live.
                tracing::info!(
                    pods = self.pods.known.len(),
                    "kubeapi: listed the pods; reporting changes from now on."
                );
            }
            return Vec::new();
        };
        let (watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = change else {
            return Vec::new();
        };
        let meta = self.remember_pod(&pod);
        let now = pod_state(&pod);
        let before = self.pods.known.insert(key, now.clone());
        match before {
            Some(before) if report => self.pod_events(&pod, &meta, &before, &now),
            _ => Vec::new(),
        }
    }

    pub(super) fn remember_pod(&self, pod: &Pod) -> PodMeta {
        let (workload_kind, workload_name) = workload(pod);
        let mut labels: Vec<(String, String)> = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let node: Arc<str> = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .map_or_else(|| Arc::clone(&self.node), Arc::from);
        let meta = PodMeta {
            uid: uid_of(&pod.metadata).into(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default().into(),
            name: pod.metadata.name.clone().unwrap_or_default().into(),
            labels,
            workload_kind: workload_kind.into(),
            workload_name: workload_name.into(),
            node,
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .unwrap_or_default()
                .into(),
        };
        let containers = pod
            .status
            .iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .filter_map(|c| {
                c.container_id
                    .as_deref()
                    .map(|id| container_id(id).to_owned())
            })
            .collect();
        self.directory.upsert(meta.clone(), containers);
        meta
    }

    pub(super) fn pod_event(
        &mut self,
        meta: &PodMeta,
        kind: &'static str,
        severity: Severity,
        message: String,
    ) -> Event {
        let mut event = self.event(kind, severity, message);
        let e = &mut event.entities;
        e.pod_uid = Arc::clone(&meta.uid);
        e.pod_namespace = Arc::clone(&meta.namespace);
        e.pod_name = Arc::clone(&meta.name);
        e.workload_kind = Arc::clone(&meta.workload_kind);
        e.workload_name = Arc::clone(&meta.workload_name);
        if self.cluster_wide {
            e.node = Arc::clone(&meta.node);
        }
        for (key, value) in &meta.labels {
            event.attributes.push(
                format!("{}{key}", crate::event::keys::POD_LABEL_PREFIX),
                value.as_str(),
            );
        }
        if let Some((service, _)) = self.services.get(&*meta.uid).and_then(|s| s.first()) {
            event
                .attributes
                .set(crate::event::keys::SERVICE_NAME, service.as_str());
        }
        if !meta.ip.is_empty() {
            event.attributes.set(crate::event::keys::POD_IP, &*meta.ip);
        }
        event
    }

    #[allow(
        clippy::too_many_lines,
        reason = "one flat list of the changes reported"
    )]
    pub(super) fn pod_events(
        &mut self,
        pod: &Pod,
        meta: &PodMeta,
        before: &PodState,
        now: &PodState,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let who = format!("{}/{}", meta.namespace, meta.name);
        let statuses: Vec<_> = pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .collect();
        for status in statuses {
            let old = before
                .containers
                .get(&status.name)
                .cloned()
                .unwrap_or_default();
            let new = now
                .containers
                .get(&status.name)
                .cloned()
                .unwrap_or_default();
            let id = status
                .container_id
                .as_deref()
                .map(container_id)
                .unwrap_or_default();
            if new.restarts > old.restarts {
                let last = status
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref());
                let reason = last.and_then(|t| t.reason.clone()).unwrap_or_default();
                let exit_code = last.map_or(0, |t| t.exit_code);
                if let Some(terminated) = last {
                    let mut exit = self.pod_event(
                        meta,
                        "container.exit",
                        if exit_code == 0 {
                            Severity::Info
                        } else {
                            Severity::Error
                        },
                        format!(
                            "container {} of {who} exited with {exit_code} ({reason})",
                            status.name
                        ),
                    );
                    if let Some(at) = terminated.finished_at.as_ref() {
                        exit.timestamp =
                            u64::try_from(at.0.as_nanosecond()).unwrap_or(exit.timestamp);
                    }
                    if let Some(previous) = terminated.container_id.as_deref() {
                        exit.entities.container_id = container_id(previous).into();
                    }
                    exit.attributes.set("container", status.name.as_str());
                    exit.attributes.set("exit_code", i64::from(exit_code));
                    exit.attributes.set("reason", reason.as_str());
                    out.push(exit);
                }
                let mut restart = self.pod_event(
                    meta,
                    "k8s.pod.restart",
                    Severity::Warning,
                    format!(
                        "container {} of {who} restarted ({} restarts, last: {reason} {exit_code})",
                        status.name, new.restarts
                    ),
                );
                restart.entities.container_id = id.into();
                restart.attributes.set("container", status.name.as_str());
                restart
                    .attributes
                    .set("restart_count", i64::from(new.restarts));
                restart.attributes.set("reason", reason.as_str());
                restart.attributes.set("exit_code", i64::from(exit_code));
                out.push(restart);
            }
            if new.waiting != old.waiting && !new.waiting.is_empty() {
                let kind = match new.waiting.as_str() {
                    "CrashLoopBackOff" => Some("k8s.pod.backoff"),
                    "ImagePullBackOff" | "ErrImagePull" => Some("k8s.pod.image_pull_backoff"),
                    "ContainerCreating" | "PodInitializing" => None,
                    _ => Some("k8s.container.waiting"),
                };
                if let Some(kind) = kind {
                    let detail = status
                        .state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.message.clone())
                        .unwrap_or_default();
                    let mut event = self.pod_event(
                        meta,
                        kind,
                        Severity::Warning,
                        format!(
                            "container {} of {who} is waiting: {} {detail}",
                            status.name, new.waiting
                        ),
                    );
                    event.entities.container_id = id.into();
                    event.attributes.set("container", status.name.as_str());
                    event.attributes.set("reason", new.waiting.as_str());
                    out.push(event);
                }
            }
        }
        if now.evicted && !before.evicted {
            let why = pod
                .status
                .as_ref()
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            let mut event = self.pod_event(
                meta,
                "k8s.pod.evicted",
                Severity::Warning,
                format!("{who} was evicted: {why}"),
            );
            event.attributes.set("reason", "Evicted");
            out.push(event);
        } else if now.phase != before.phase && !now.phase.is_empty() {
            let severity = if now.phase == "Failed" {
                Severity::Warning
            } else {
                Severity::Info
            };
            let mut event = self.pod_event(
                meta,
                "k8s.pod.phase",
                severity,
                format!("{who} is {}", now.phase),
            );
            event.attributes.set("phase", now.phase.as_str());
            event
                .attributes
                .set("previous_phase", before.phase.as_str());
            out.push(event);
        }
        match (before.ready, now.ready) {
            (Some(true), Some(false)) => {
                out.push(self.pod_event(
                    meta,
                    "k8s.pod.not_ready",
                    Severity::Warning,
                    format!("{who} is not ready"),
                ));
            }
            (Some(false) | None, Some(true)) => {
                out.push(self.pod_event(
                    meta,
                    "k8s.pod.ready",
                    Severity::Info,
                    format!("{who} is ready"),
                ));
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn a_replicaset_owner_with_its_hash_is_a_deployment() {
        let p = pod(serde_json::json!({
            "metadata": {
                "name": "web-7d9f8c6b5-x2x9q", "namespace": "shop", "uid": "u1",
                "labels": {"pod-template-hash": "7d9f8c6b5", "app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "uid": "r1", "controller": true}]
            }
        }));
        assert_eq!(workload(&p), ("Deployment".into(), "web".into()));
        let s = pod(serde_json::json!({
            "metadata": {"name": "db-0", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "s1", "controller": true}]}
        }));
        assert_eq!(workload(&s), ("StatefulSet".into(), "db".into()));
        assert_eq!(container_id("containerd://abc"), "abc");
    }
}
