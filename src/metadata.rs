//! The node's pod metadata: container id -> pod (uid, namespace, name, labels, owner
//! workload, node), filled by the `kubeapi` collector and read by the correlation engine,
//! so a kernel event that knows only its container gets its pod.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// What is known of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Pod UID.
    pub uid: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
    /// Labels, sorted by key.
    pub labels: Vec<(String, String)>,
    /// Owner workload kind (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`, ...).
    pub workload_kind: Arc<str>,
    /// Owner workload name.
    pub workload_name: Arc<str>,
    /// The node it runs on.
    pub node: Arc<str>,
    /// Its IP address; empty until it has one.
    pub ip: Arc<str>,
}

impl PodMeta {
    /// The value of label `key`.
    #[must_use]
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.labels[i].1.as_str())
    }
}

#[derive(Debug, Default)]
struct Maps {
    by_uid: HashMap<Arc<str>, (Arc<PodMeta>, Vec<String>)>,
    by_container: HashMap<String, Arc<PodMeta>>,
}

/// Pods by container id and by UID; shared between writer and readers.
#[derive(Debug, Default)]
pub struct PodDirectory {
    maps: RwLock<Maps>,
    reported: std::sync::Mutex<Reported>,
}

/// Container lifecycle events reported lately, by (type, container id): the collectors
/// that see containers (`cri-ebpf`, `cri`, `kubeapi`) report each one once between them.
#[derive(Debug)]
struct Reported(crate::bounded::Bounded<u64, ()>);

impl Default for Reported {
    fn default() -> Self {
        Self(crate::bounded::Bounded::new(16_384))
    }
}

impl PodDirectory {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The pod running container `id` (the runtime's id, without a `containerd://` prefix).
    #[must_use]
    pub fn pod_of_container(&self, id: &str) -> Option<Arc<PodMeta>> {
        self.read().by_container.get(id).cloned()
    }

    /// Whether `kind` (`container.created`, `container.exit`) of container `id` is reported
    /// here for the first time; a collector that is not first counts its event as a
    /// `duplicate` drop instead of sending it.
    pub fn first_report(&self, kind: &str, id: &str) -> bool {
        let key = crate::bounded::key_parts(&[kind.as_bytes(), id.as_bytes()]);
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .insert(key, ())
            .is_none()
    }

    /// The pod with UID `uid`.
    #[must_use]
    pub fn pod(&self, uid: &str) -> Option<Arc<PodMeta>> {
        self.read().by_uid.get(uid).map(|(pod, _)| Arc::clone(pod))
    }

    /// The pod with IP `ip`: a scan, for callers that cache the answer (a node runs about
    /// a hundred pods). Host-network pods share the node's IP and are never the answer.
    #[must_use]
    pub fn pod_by_ip(&self, ip: &str) -> Option<Arc<PodMeta>> {
        let maps = self.read();
        let mut found = maps
            .by_uid
            .values()
            .filter(|(pod, _)| !ip.is_empty() && &*pod.ip == ip)
            .map(|(pod, _)| pod);
        match (found.next(), found.next()) {
            (Some(pod), None) => Some(Arc::clone(pod)),
            _ => None,
        }
    }

    /// Pods known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    /// Whether no pod is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `pod` and the ids of its containers, replacing what was known of it.
    pub fn upsert(&self, pod: PodMeta, containers: Vec<String>) {
        let pod = Arc::new(pod);
        let mut maps = self.write();
        if let Some((_, old)) = maps.by_uid.remove(&pod.uid) {
            for id in old {
                maps.by_container.remove(&id);
            }
        }
        for id in &containers {
            maps.by_container.insert(id.clone(), Arc::clone(&pod));
        }
        maps.by_uid.insert(Arc::clone(&pod.uid), (pod, containers));
    }

    /// Forgets the pod with UID `uid`.
    pub fn remove(&self, uid: &str) {
        let mut maps = self.write();
        if let Some((_, containers)) = maps.by_uid.remove(uid) {
            for id in containers {
                maps.by_container.remove(&id);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // Maps are replaced entry by entry: whole after a writer's panic.
        self.maps.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_containers_creation_and_exit_is_reported_once() {
        let directory = PodDirectory::new();
        assert!(directory.first_report("container.exit", "c1"));
        assert!(
            !directory.first_report("container.exit", "c1"),
            "a second collector's"
        );
        assert!(directory.first_report("container.created", "c1"));
        assert!(directory.first_report("container.exit", "c2"));
    }

    #[test]
    fn containers_map_to_their_pod_until_it_changes_or_goes() {
        let directory = PodDirectory::new();
        let pod = PodMeta {
            uid: "u1".into(),
            name: "web-1".into(),
            labels: vec![
                ("app".into(), "web".into()),
                ("tier".into(), "critical".into()),
            ],
            ..PodMeta::default()
        };
        directory.upsert(pod.clone(), vec!["c1".into(), "c2".into()]);
        assert_eq!(
            directory.pod_of_container("c2").map(|p| p.name.clone()),
            Some("web-1".into())
        );
        assert_eq!(
            directory
                .pod("u1")
                .and_then(|p| p.label("tier").map(str::to_owned)),
            Some("critical".into())
        );
        // A restart replaces a container id.
        directory.upsert(pod, vec!["c1".into(), "c3".into()]);
        assert!(directory.pod_of_container("c2").is_none());
        assert!(directory.pod_of_container("c3").is_some());
        directory.remove("u1");
        assert!(directory.pod_of_container("c1").is_none());
        assert!(directory.is_empty());
    }
}
