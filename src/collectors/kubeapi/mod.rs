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

mod events;
mod nodes;
mod pods;
mod services;

use crate::bounded::Bounded;
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};
use crate::metadata::PodDirectory;
use pods::PodState;

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
            let client = client(&self).await?;
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

async fn client(config: &KubeApiConfig) -> Result<Client, Error> {
    const NO_API: &str = "no Kubernetes API";
    let config = match &config.kubeconfig {
        Some(path) => {
            let at = || format!("{NO_API}: {}", path.display());
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::unavailable_by(at(), e))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| Error::unavailable_by(at(), e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::unavailable_by(NO_API, e))?,
    };
    Client::try_from(config).map_err(|e| Error::unavailable_by(NO_API, e))
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
            if !crate::collectors::first_report(&state.directory, &context.stats, &event) {
                continue;
            }
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
}
