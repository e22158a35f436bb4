//! The entity index: what the collectors have said about how entities nest (process ->
//! container -> pod -> workload, and process -> systemd unit), remembered so an event that
//! names only the inner entity is resolved to the outer ones. A kernel event knows the pid
//! and maybe the container or unit (from its cgroup); a Kubernetes event knows the pod and
//! its containers; a systemd event knows the unit and its main pid; together every event
//! can be matched by pod, workload and unit rules.
//!
//! Bounded: each map holds at most `capacity` entries and forgets the oldest first; a
//! process that exits is forgotten at once (its pid will be reused).

use std::sync::Arc;

use crate::bounded::Bounded;
use crate::event::Entities;

/// The pod a container belongs to, as some event named it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pod {
    uid: Arc<str>,
    namespace: Arc<str>,
    name: Arc<str>,
    workload_kind: Arc<str>,
    workload_name: Arc<str>,
}

impl Pod {
    /// The pod the kubeapi collector's directory describes.
    fn of(meta: &crate::metadata::PodMeta) -> Self {
        Self {
            uid: Arc::clone(&meta.uid),
            namespace: Arc::clone(&meta.namespace),
            name: Arc::clone(&meta.name),
            workload_kind: Arc::clone(&meta.workload_kind),
            workload_name: Arc::clone(&meta.workload_name),
        }
    }

    /// The pod an event names.
    fn named_by(entities: &Entities) -> Self {
        Self {
            uid: Arc::clone(&entities.pod_uid),
            namespace: Arc::clone(&entities.pod_namespace),
            name: Arc::clone(&entities.pod_name),
            workload_kind: Arc::clone(&entities.workload_kind),
            workload_name: Arc::clone(&entities.workload_name),
        }
    }
}

/// What a process runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Process {
    pid: u32,
    node: Arc<str>,
    container: Arc<str>,
    unit: Arc<str>,
}

/// The index.
#[derive(Debug)]
pub struct EntityIndex {
    containers: Bounded<Arc<str>, Pod>,
    // Direct-mapped by pid (a power of two of slots, at least the capacity): one memory
    // access per event where a hash map took two, and a pid whose slot another pid takes
    // is forgotten, which bounds it. The node is checked on lookup: hashing the node name
    // per event costs more than the rare cross-node collision (the agent sees one node).
    processes: Vec<Option<Process>>,
    // Occupied slots of `processes`, kept as they fill and empty so reading it is free.
    process_count: usize,
    // Pods by uid, for an event whose cgroup named the pod's uid but whose container is
    // not known yet.
    pods: Bounded<Arc<str>, Pod>,
    // Container -> pod pairs confirmed lately, by the container id's allocation: a
    // collector stamps one shared `Arc` per container on all its events, so most events
    // are confirmed here without hashing and comparing the 64-character id. The slots hold
    // their `Arc`s, so an address cannot be reused while it is remembered.
    confirmed: Vec<Option<(Arc<str>, Pod)>>,
    // The kubeapi collector's pods, asked when a container is not in `containers`.
    directory: Option<Arc<crate::metadata::PodDirectory>>,
}

/// Slots of `EntityIndex::confirmed`; a power of two.
const CONFIRMED: usize = 16_384;

impl EntityIndex {
    /// An index holding at most `capacity` containers and as many processes.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            containers: Bounded::new(capacity),
            processes: vec![None; capacity.next_power_of_two()],
            process_count: 0,
            pods: Bounded::new(capacity),
            confirmed: vec![None; CONFIRMED],
            directory: None,
        }
    }

    /// Also resolves containers through `directory`.
    pub fn set_directory(&mut self, directory: Arc<crate::metadata::PodDirectory>) {
        self.directory = Some(directory);
    }

    /// Learns from `entities` what they say about nesting, then fills in what they lack
    /// from what earlier events said. `exited` forgets the process afterwards.
    pub fn resolve(&mut self, entities: &mut Entities, exited: bool) {
        let pid = entities.pid;
        let placed = !entities.container_id.is_empty() || !entities.unit.is_empty();
        let slot = pid as usize & (self.processes.len() - 1);
        if pid != 0 && placed {
            let known = self.processes[slot].as_ref().is_some_and(|p| {
                p.pid == pid
                    && Arc::ptr_eq(&p.container, &entities.container_id)
                    && Arc::ptr_eq(&p.unit, &entities.unit)
                    && Arc::ptr_eq(&p.node, &entities.node)
            });
            if !known {
                self.process_count += usize::from(self.processes[slot].is_none());
                self.processes[slot] = Some(Process {
                    pid,
                    node: Arc::clone(&entities.node),
                    container: Arc::clone(&entities.container_id),
                    unit: Arc::clone(&entities.unit),
                });
            }
        } else if pid != 0
            && let Some(known) = self.processes[slot].as_ref()
            && known.pid == pid
            && known.node == entities.node
        {
            entities.container_id = Arc::clone(&known.container);
            entities.unit = Arc::clone(&known.unit);
        }
        // Only an event that names its pod itself teaches the uid; one the index filled in
        // would only confirm what the index holds.
        let named = !entities.pod_name.is_empty();
        if !entities.container_id.is_empty() {
            self.resolve_container(entities);
        }
        if entities.pod_name.is_empty() {
            self.by_uid(entities);
        } else if named && !entities.pod_uid.is_empty() && !entities.workload_name.is_empty() {
            self.learn_uid(entities);
        }
        if exited && pid != 0 && self.processes[slot].as_ref().is_some_and(|p| p.pid == pid) {
            self.processes[slot] = None;
            self.process_count -= 1;
        }
    }

    /// The container's pod: from the slot of recently confirmed pairs when the event
    /// shares the collector's `Arc` of the id (no hashing), else from what events said or
    /// the directory. An event naming both teaches the pair.
    fn resolve_container(&mut self, entities: &mut Entities) {
        let slot = (Arc::as_ptr(&entities.container_id).cast::<u8>() as usize >> 4) % CONFIRMED;
        let cached = self.confirmed[slot]
            .as_ref()
            .filter(|(container, _)| Arc::ptr_eq(container, &entities.container_id))
            .map(|(_, pod)| pod);
        let named = !entities.pod_uid.is_empty() && !entities.pod_name.is_empty();
        if named {
            if cached.is_some_and(|pod| Arc::ptr_eq(&pod.name, &entities.pod_name)) {
                return;
            }
            let pod = Pod::named_by(entities);
            let known = self
                .containers
                .get(&entities.container_id)
                .is_some_and(|p| p.uid == pod.uid && p.name == pod.name);
            if !known {
                self.containers
                    .insert(Arc::clone(&entities.container_id), pod.clone());
            }
            self.confirmed[slot] = Some((Arc::clone(&entities.container_id), pod));
            return;
        }
        let pod = if let Some(pod) = cached {
            pod.clone()
        } else {
            let pod = if let Some(pod) = self.containers.get(&entities.container_id) {
                pod.clone()
            } else {
                let Some(meta) = self
                    .directory
                    .as_ref()
                    .and_then(|d| d.pod_of_container(&entities.container_id))
                else {
                    return;
                };
                let pod = Pod::of(&meta);
                self.containers
                    .insert(Arc::clone(&entities.container_id), pod.clone());
                pod
            };
            self.confirmed[slot] = Some((Arc::clone(&entities.container_id), pod.clone()));
            pod
        };
        entities.pod_uid = pod.uid;
        entities.pod_namespace = pod.namespace;
        entities.pod_name = pod.name;
        if entities.workload_name.is_empty() {
            entities.workload_kind = pod.workload_kind;
            entities.workload_name = pod.workload_name;
        }
    }

    /// Learns a pod by uid from an event naming its uid, name and workload.
    fn learn_uid(&mut self, entities: &Entities) {
        if self
            .pods
            .get(&entities.pod_uid)
            .is_none_or(|pod| !Arc::ptr_eq(&pod.name, &entities.pod_name))
        {
            self.pods
                .insert(Arc::clone(&entities.pod_uid), Pod::named_by(entities));
        }
    }

    /// Fills in the name and workload of an event naming only its pod's uid (its cgroup
    /// did), whose container is not known.
    fn by_uid(&mut self, entities: &mut Entities) {
        if entities.pod_uid.is_empty() {
            return;
        }
        let pod = self.pods.get(&entities.pod_uid).cloned().or_else(|| {
            let meta = self.directory.as_ref()?.pod(&entities.pod_uid)?;
            Some(Pod::of(&meta))
        });
        if let Some(pod) = pod {
            entities.pod_namespace = pod.namespace;
            entities.pod_name = pod.name;
            if entities.workload_name.is_empty() {
                entities.workload_kind = pod.workload_kind;
                entities.workload_name = pod.workload_name;
            }
        }
    }

    /// Containers and processes remembered.
    #[must_use]
    pub fn len(&self) -> (usize, usize) {
        (self.containers.len(), self.process_count)
    }

    /// Every entry held: containers, processes and pods known by uid.
    #[must_use]
    pub fn entries(&self) -> usize {
        self.containers.len() + self.process_count + self.pods.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_event() -> Entities {
        Entities {
            node: "n".into(),
            pid: 10,
            container_id: "c1".into(),
            pod_uid: "u1".into(),
            pod_namespace: "shop".into(),
            pod_name: "cart-1".into(),
            workload_kind: "Deployment".into(),
            workload_name: "cart".into(),
            ..Entities::default()
        }
    }

    #[test]
    fn a_bare_pid_resolves_through_its_container_to_the_pod() {
        let mut index = EntityIndex::new(16);
        index.resolve(&mut pod_event(), false);
        let mut kernel = Entities {
            node: "n".into(),
            pid: 10,
            ..Entities::default()
        };
        index.resolve(&mut kernel, false);
        assert_eq!(&*kernel.container_id, "c1");
        assert_eq!(&*kernel.pod_name, "cart-1");
        assert_eq!(&*kernel.workload_name, "cart");
        // Same pid on another node is another process.
        let mut elsewhere = Entities {
            node: "m".into(),
            pid: 10,
            ..Entities::default()
        };
        index.resolve(&mut elsewhere, false);
        assert!(elsewhere.pod_name.is_empty());
    }

    #[test]
    fn a_bare_pid_resolves_to_the_unit_a_systemd_event_named() {
        let mut index = EntityIndex::new(16);
        let mut unit_started = Entities {
            node: "n".into(),
            pid: 42,
            unit: "nginx.service".into(),
            ..Entities::default()
        };
        index.resolve(&mut unit_started, false);
        let mut kernel = Entities {
            node: "n".into(),
            pid: 42,
            ..Entities::default()
        };
        index.resolve(&mut kernel, false);
        assert_eq!(&*kernel.unit, "nginx.service");
        assert!(kernel.container_id.is_empty());
    }

    #[test]
    fn a_pid_reused_after_an_exit_is_learned_again() {
        let mut index = EntityIndex::new(16);
        let c1: Arc<str> = "c1".into();
        let c2: Arc<str> = "c2".into();
        let kernel = |container: &Arc<str>| Entities {
            node: "n".into(),
            pid: 10,
            container_id: Arc::clone(container),
            ..Entities::default()
        };
        let bare = || Entities {
            node: "n".into(),
            pid: 10,
            ..Entities::default()
        };
        index.resolve(&mut pod_event(), false);
        for _ in 0..3 {
            index.resolve(&mut kernel(&c1), false);
        }
        let mut seen = bare();
        index.resolve(&mut seen, false);
        assert_eq!(&*seen.container_id, "c1");
        index.resolve(&mut kernel(&c1), true);
        index.resolve(&mut kernel(&c2), false);
        let mut again = bare();
        index.resolve(&mut again, false);
        assert_eq!(&*again.container_id, "c2", "the pid now runs in c2");
        index.resolve(&mut kernel(&c1), false);
        let mut back = bare();
        index.resolve(&mut back, false);
        assert_eq!(&*back.container_id, "c1");
    }

    #[test]
    fn an_exit_forgets_the_pid_and_the_maps_stay_bounded() {
        let mut index = EntityIndex::new(4);
        index.resolve(&mut pod_event(), true);
        let mut reused = Entities {
            node: "n".into(),
            pid: 10,
            ..Entities::default()
        };
        index.resolve(&mut reused, false);
        assert!(
            reused.container_id.is_empty(),
            "a reused pid is not the old process"
        );
        for n in 0..100u32 {
            let mut e = pod_event();
            e.pid = n + 100;
            e.container_id = format!("c{n}").into();
            index.resolve(&mut e, false);
            let (containers, processes) = index.len();
            assert!(containers <= 4 && processes <= 4);
        }
    }
}
