//! `kubeapi`: what the Kubernetes API says happened to this node and its pods.
//!
//! Watchers (kube-runtime) on the pods of this node (field selector `spec.nodeName`), on the
//! node itself, and on Warning events. Each object's last state is kept, and an event is
//! produced for each change that matters: a container restart (with the last termination's
//! reason and exit code, and the container's exit), CrashLoopBackOff and image pull
//! back-off, readiness, eviction, phase, node conditions. A relist after the watch expired
//! (410 Gone) is compared with the same kept state, so nothing is reported twice; objects
//! listed at start are recorded, not reported.
//!
//! The pods also fill the node's [`PodDirectory`](crate::metadata::PodDirectory): container
//! id -> pod, labels and owner workload, for the correlation engine.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event as KubeEvent, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde::Deserialize;
use tokio_stream::StreamExt as _;

use crate::bounded::Bounded;
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};
use crate::metadata::{PodDirectory, PodMeta};

/// Registry name.
pub const NAME: &str = "kubeapi";

/// Kubernetes event objects remembered, to report each once.
const EVENTS_REMEMBERED: usize = 8192;

/// Which Kubernetes `Event` objects become events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventObjects {
    /// Only `type: Warning` (filtered by the API server).
    #[default]
    Warnings,
    /// Warning and Normal.
    All,
    /// None: no watch on events.
    None,
}

/// Options of the `kubeapi` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeApiConfig {
    /// This node's name in the cluster; default the `NODE_NAME` environment variable (the
    /// downward API), else the agent's node name.
    pub node_name: Option<String>,
    /// Watch every pod and node of the cluster instead of this node's: for one central
    /// agent, not a `DaemonSet` (per-node watches keep the API server cheap at scale).
    pub cluster_wide: bool,
    /// A kubeconfig file; unset: in-cluster service account, else `KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes `Event` objects to report: `warnings` (default), `all` or `none`.
    pub events: EventObjects,
    /// Watch `EndpointSlice`s to know which services a pod backs (on pod events as
    /// `k8s.service.name`, and in an incident's blast radius); default true.
    pub services: bool,
}

impl Default for KubeApiConfig {
    fn default() -> Self {
        Self {
            node_name: None,
            cluster_wide: false,
            kubeconfig: None,
            events: EventObjects::default(),
            services: true,
        }
    }
}

impl KubeApiConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        super::check_files(
            prefix,
            &[("kubeconfig", self.kubeconfig.as_deref())],
            problems,
        );
        if self.node_name.as_deref() == Some("") {
            problems.push(format!("{prefix}.node_name: must not be empty"));
        }
    }
}

impl CollectorConfig for KubeApiConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Kubernetes);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            // An unreadable kubeconfig or no in-cluster account fails here, at start.
            let client = client(&self)
                .await
                .map_err(|e| Error::Unavailable(format!("no Kubernetes API: {e}")))?;
            let node = self
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
                .unwrap_or(cx.node_name);
            let collector = Watching {
                config: self,
                node,
                directory: cx.directory,
            };
            Ok::<Running, Error>(Box::pin(run(collector, client, context)))
        })
    }
}

async fn client(config: &KubeApiConfig) -> Result<Client, String> {
    let config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    Client::try_from(config).map_err(|e| e.to_string())
}

/// What the running watches need.
struct Watching {
    config: KubeApiConfig,
    /// The node whose pods are watched.
    node: String,
    directory: Arc<PodDirectory>,
}

async fn run(collector: Watching, client: Client, context: Context) -> Result<(), Error> {
    let node = collector.node.clone();
    let scoped = |config: watcher::Config, field: &str| {
        if collector.config.cluster_wide {
            config
        } else {
            config.fields(&format!("{field}={node}"))
        }
    };
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        scoped(watcher::Config::default(), "spec.nodeName"),
    )
    .default_backoff();
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        scoped(watcher::Config::default(), "metadata.name"),
    )
    .default_backoff();
    let event_config = match collector.config.events {
        EventObjects::Warnings => Some(watcher::Config::default().fields("type=Warning")),
        EventObjects::All => Some(watcher::Config::default()),
        EventObjects::None => None,
    };
    let objects =
        event_config.map(|c| watcher(Api::<KubeEvent>::all(client.clone()), c).default_backoff());
    // Cluster-wide: a slice names its endpoints' nodes but cannot be selected by them.
    let slices = collector.config.services.then(|| {
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
    });
    tokio::pin!(pods, nodes);
    let mut objects = objects.map(Box::pin);
    let mut slices = slices.map(Box::pin);
    let mut state = State {
        ids: IdGenerator::new(),
        node: node.as_str().into(),
        cluster_wide: collector.config.cluster_wide,
        directory: collector.directory,
        pods: Track::default(),
        nodes: Track::default(),
        events: Track::default(),
        seen_events: Bounded::new(EVENTS_REMEMBERED),
        slices: HashMap::new(),
        services: HashMap::new(),
        relisted_slices: HashSet::new(),
        failing: false,
    };
    tracing::info!(node = %node, cluster_wide = collector.config.cluster_wide, "kubeapi: watching pods, the node and events.");
    loop {
        let out = tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            Some(item) = pods.next() => match item {
                Ok(change) => state.pod_change(change),
                Err(e) => { state.watch_failed(&context, "pods", &e); Vec::new() }
            },
            Some(item) = nodes.next() => match item {
                Ok(change) => state.node_change(change),
                Err(e) => { state.watch_failed(&context, "nodes", &e); Vec::new() }
            },
            Some(item) = next_or_pending(objects.as_mut()) => match item {
                Ok(change) => state.event_change(change),
                Err(e) => { state.watch_failed(&context, "events", &e); Vec::new() }
            },
            Some(item) = next_or_pending(slices.as_mut()) => match item {
                Ok(change) => { state.slice_change(change); Vec::new() }
                Err(e) => { state.watch_failed(&context, "endpointslices", &e); Vec::new() }
            },
        };
        for event in out {
            context.out.send(event).await?;
        }
    }
}

async fn next_or_pending<S: tokio_stream::Stream + Unpin>(
    stream: Option<&mut S>,
) -> Option<S::Item> {
    match stream {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Kept states of one kind of object, and where its watch is in its list/watch cycle.
struct Track<S> {
    known: HashMap<String, S>,
    /// At least one full list has been taken: from then on changes are reported.
    synced: bool,
    /// Objects seen in the relist under way.
    relisted: HashSet<String>,
}

impl<S> Default for Track<S> {
    fn default() -> Self {
        Self {
            known: HashMap::new(),
            synced: false,
            relisted: HashSet::new(),
        }
    }
}

impl<S> Track<S> {
    /// Applies a list/watch step: `Some(key)` for an object to compare, with whether a
    /// change should be reported.
    fn step<K>(
        &mut self,
        change: &watcher::Event<K>,
        key: impl Fn(&K) -> String,
    ) -> Option<(String, bool)> {
        match change {
            watcher::Event::Init => {
                self.relisted.clear();
                None
            }
            watcher::Event::InitApply(object) => {
                let key = key(object);
                self.relisted.insert(key.clone());
                Some((key, self.synced))
            }
            watcher::Event::InitDone => {
                // Gone while the watch was down: forget them.
                let relisted = std::mem::take(&mut self.relisted);
                self.known.retain(|k, _| relisted.contains(k));
                self.synced = true;
                None
            }
            watcher::Event::Apply(object) => Some((key(object), self.synced)),
            watcher::Event::Delete(object) => {
                self.known.remove(&key(object));
                None
            }
        }
    }
}

/// A pod as last seen, reduced to what changes are reported on.
#[derive(Clone, Debug, Default, PartialEq)]
struct PodState {
    phase: String,
    ready: Option<bool>,
    evicted: bool,
    containers: HashMap<String, ContainerState>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ContainerState {
    restarts: i32,
    waiting: String,
}

struct State {
    ids: IdGenerator,
    node: Arc<str>,
    cluster_wide: bool,
    directory: Arc<PodDirectory>,
    pods: Track<PodState>,
    nodes: Track<HashMap<String, String>>,
    events: Track<()>,
    /// Event objects by uid, with the count last reported, the oldest forgotten first.
    seen_events: Bounded<String, i32>,
    /// Endpoint slice uid -> (pod uid, service) pairs it lists.
    slices: HashMap<String, Vec<(String, String)>>,
    /// Pod uid -> services it backs, with how many slices say so.
    services: HashMap<String, Vec<(String, usize)>>,
    relisted_slices: HashSet<String>,
    failing: bool,
}

fn uid_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    })
}

/// The runtime's container id without its `containerd://` (or `cri-o://`, `docker://`)
/// prefix.
fn container_id(raw: &str) -> &str {
    raw.split_once("://").map_or(raw, |(_, id)| id)
}

/// The pod's owner workload: a `Deployment` through its `ReplicaSet` (named
/// `<deployment>-<pod-template-hash>`), else the controller owner itself.
fn workload(pod: &Pod) -> (String, String) {
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

impl State {
    fn watch_failed(&mut self, context: &Context, what: &str, error: &watcher::Error) {
        // The watcher retries with backoff; say so once per failing spell.
        if !self.failing {
            tracing::warn!(watch = what, %error, "kubeapi: watch failed; retrying with backoff.");
            context.degraded(format!("{what} watch: {error}"));
            self.failing = true;
        }
    }

    fn event(&mut self, kind: &'static str, severity: Severity, message: String) -> Event {
        let mut event = Event::new(self.ids.next_id(), unix_nanos_now(), kind, NAME);
        event.severity = severity;
        event.message = message;
        event.entities.node = Arc::clone(&self.node);
        event
    }

    fn pod_change(&mut self, change: watcher::Event<Pod>) -> Vec<Event> {
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

    fn remember_pod(&self, pod: &Pod) -> PodMeta {
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

    fn pod_event(
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
        event
    }

    /// Keeps which services each pod backs, from the endpoint slices.
    fn slice_change(&mut self, change: watcher::Event<EndpointSlice>) {
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

    fn forget_slice(&mut self, uid: &str) {
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

    #[allow(
        clippy::too_many_lines,
        reason = "one flat list of the changes reported"
    )]
    fn pod_events(
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

    fn node_change(&mut self, change: watcher::Event<Node>) -> Vec<Event> {
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

    fn event_change(&mut self, change: watcher::Event<KubeEvent>) -> Vec<Event> {
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

fn pod_state(pod: &Pod) -> PodState {
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
