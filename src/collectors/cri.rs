//! `cri`: container lifecycle from the container runtime over its CRI gRPC socket
//! (containerd, CRI-O): `container.created`, `container.started`, `container.exit` with the
//! exit code and reason. It follows `GetContainerEvents` where the runtime has it, and
//! otherwise polls `ListContainers`; the containers there at start are recorded, not
//! reported. For nodes where the Kubernetes API is too far or too slow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

use crate::collectors::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::cri_pb::runtime_service_client::RuntimeServiceClient;
use crate::cri_pb::{
    Container, ContainerEventType, ContainerState, ContainerStatus, ContainerStatusRequest,
    GetEventsRequest, ListContainersRequest, VersionRequest,
};
use crate::event::{Event, IdGenerator, Severity, unix_nanos_now};
use crate::units::deserialize_duration;

/// Registry name.
pub const NAME: &str = "cri";

/// Where runtimes put their CRI socket, looked at in this order.
const SOCKETS: [&str; 3] = [
    "/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
];

/// How the collector learns of changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Follow {
    /// `GetContainerEvents` when the runtime has it, else polling.
    #[default]
    Auto,
    /// Only polling `ListContainers`.
    Poll,
}

/// Options of the `cri` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriConfig {
    /// The runtime's CRI socket; unset: containerd's, CRI-O's or cri-dockerd's, whichever
    /// exists.
    pub socket: Option<PathBuf>,
    /// `auto` or `poll`.
    pub follow: Follow,
    /// Time between `ListContainers` calls when polling.
    #[serde(deserialize_with = "deserialize_duration")]
    pub poll_interval: Duration,
}

impl Default for CriConfig {
    fn default() -> Self {
        Self {
            socket: None,
            follow: Follow::Auto,
            poll_interval: Duration::from_secs(2),
        }
    }
}

impl CriConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if self.poll_interval < Duration::from_millis(100) {
            problems.push(format!(
                "{prefix}.poll_interval: must be at least 100ms, got {:?}",
                self.poll_interval
            ));
        }
    }
}

impl CollectorConfig for CriConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn reporting_interval(&self) -> Option<Duration> {
        // Polling (forced, or where the runtime has no event stream) reports a change up
        // to one interval late.
        Some(self.poll_interval)
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let socket = match &self.socket {
                Some(path) => path.clone(),
                None => SOCKETS
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
                    .ok_or_else(|| {
                        Error::unavailable(format!("no CRI socket at {}", SOCKETS.join(", ")))
                    })?,
            };
            Ok::<Running, Error>(Box::pin(run(
                self,
                socket,
                (cx.node_name.into(), cx.directory),
                context,
            )))
        })
    }
}

/// A gRPC channel over the unix socket at `path`.
async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API and unused: every connection goes to the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// What is known of a container.
#[derive(Clone, Debug)]
struct Known {
    state: i32,
    labels: HashMap<String, String>,
    name: String,
    attempt: u32,
}

struct Lifecycle {
    ids: IdGenerator,
    node: Arc<str>,
    known: HashMap<String, Known>,
    // Shared with the other collectors that see containers: each is reported once.
    directory: Arc<crate::metadata::PodDirectory>,
}

impl Lifecycle {
    fn event(&mut self, kind: &'static str, id: &str, known: &Known) -> Event {
        let mut event = Event::new(self.ids.next_id(), unix_nanos_now(), kind, NAME);
        event.entities.node = Arc::clone(&self.node);
        event.entities.container_id = id.into();
        let label = |key: &str| {
            known
                .labels
                .get(key)
                .map(String::as_str)
                .unwrap_or_default()
        };
        event.entities.pod_uid = label("io.kubernetes.pod.uid").into();
        event.entities.pod_namespace = label("io.kubernetes.pod.namespace").into();
        event.entities.pod_name = label("io.kubernetes.pod.name").into();
        event.attributes.set("container", known.name.as_str());
        event.attributes.set("attempt", i64::from(known.attempt));
        event
    }

    /// Events for a container now in `state`, with its status when it has exited.
    fn changed(&mut self, id: &str, known: &Known, status: Option<&ContainerStatus>) -> Vec<Event> {
        let before = self
            .known
            .insert(id.to_owned(), known.clone())
            .map(|k| k.state);
        let mut out = Vec::new();
        let created = ContainerState::ContainerCreated as i32;
        let running = ContainerState::ContainerRunning as i32;
        let exited = ContainerState::ContainerExited as i32;
        if before.is_none() {
            let mut event = self.event("container.created", id, known);
            event.message = format!("container {} created", known.name);
            out.push(event);
        }
        if known.state == running && before.is_none_or(|b| b == created) {
            let mut event = self.event("container.started", id, known);
            event.message = format!("container {} started", known.name);
            out.push(event);
        }
        if known.state == exited && before != Some(exited) {
            let mut event = self.event("container.exit", id, known);
            let (code, reason) = status.map_or((0, ""), |s| (s.exit_code, s.reason.as_str()));
            event.severity = if code == 0 {
                Severity::Info
            } else {
                Severity::Error
            };
            event.message = format!("container {} exited with {code} ({reason})", known.name);
            if let Some(finished) = status.map(|s| s.finished_at).filter(|t| *t > 0) {
                event.timestamp = u64::try_from(finished).unwrap_or(event.timestamp);
            }
            event.attributes.set("exit_code", i64::from(code));
            event.attributes.set("reason", reason);
            out.push(event);
        }
        out
    }
}

fn known_of(container: &Container) -> Known {
    Known {
        state: container.state,
        labels: container.labels.clone(),
        name: container
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        attempt: container.metadata.as_ref().map_or(0, |m| m.attempt),
    }
}

fn status_known(status: &ContainerStatus) -> Known {
    Known {
        state: status.state,
        labels: status.labels.clone(),
        name: status
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default(),
        attempt: status.metadata.as_ref().map_or(0, |m| m.attempt),
    }
}

async fn run(
    config: CriConfig,
    socket: PathBuf,
    (node, directory): (Arc<str>, Arc<crate::metadata::PodDirectory>),
    context: Context,
) -> Result<(), Error> {
    let unavailable = |what: &str, e: super::Cause| {
        Error::unavailable_by(format!("CRI socket {}: {what}", socket.display()), e)
    };
    let channel = connect(&socket)
        .await
        .map_err(|e| unavailable("connect", e.into()))?;
    let mut client = RuntimeServiceClient::new(channel);
    let version = client
        .version(VersionRequest::default())
        .await
        .map_err(|e| unavailable("Version", e.into()))?
        .into_inner();
    let mut lifecycle = Lifecycle {
        ids: IdGenerator::new(),
        node,
        known: HashMap::new(),
        directory,
    };
    for container in list(&mut client)
        .await
        .map_err(|e| unavailable("ListContainers", e.into()))?
    {
        lifecycle
            .known
            .insert(container.id.clone(), known_of(&container));
    }
    let stream = match config.follow {
        Follow::Auto => match client.get_container_events(GetEventsRequest {}).await {
            Ok(stream) => Some(stream.into_inner()),
            Err(status) if status.code() == tonic::Code::Unimplemented => None,
            Err(e) => return Err(unavailable("GetContainerEvents", e.into())),
        },
        Follow::Poll => None,
    };
    tracing::info!(
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        containers = lifecycle.known.len(),
        mode = if stream.is_some() { "events" } else { "polling" },
        "cri: following the container runtime."
    );
    match stream {
        Some(stream) => follow_events(stream, client, lifecycle, &context).await,
        None => poll(client, lifecycle, config.poll_interval, &context).await,
    }
}

/// Follows `GetContainerEvents` until shutdown.
async fn follow_events(
    mut stream: tonic::Streaming<crate::cri_pb::ContainerEventResponse>,
    mut client: RuntimeServiceClient<Channel>,
    mut lifecycle: Lifecycle,
    context: &Context,
) -> Result<(), Error> {
    loop {
        let item = tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            item = stream.next() => item,
        };
        let event = match item {
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                return Err(Error::unavailable_by("CRI event stream broke", e));
            }
            None => return Err(Error::unavailable("CRI event stream ended")),
        };
        if event.container_event_type == ContainerEventType::ContainerDeletedEvent as i32 {
            lifecycle.known.remove(&event.container_id);
            continue;
        }
        let status = match event
            .containers_statuses
            .iter()
            .find(|s| s.id == event.container_id)
        {
            Some(status) => Some(status.clone()),
            None => container_status(&mut client, &event.container_id).await,
        };
        let Some(status) = status else { continue };
        for out in lifecycle.changed(&event.container_id, &status_known(&status), Some(&status)) {
            if super::first_report(&lifecycle.directory, &context.stats, &out) {
                context.out.send(out).await?;
            }
        }
    }
}

/// Compares `ListContainers` with what is known, every `interval`, until shutdown.
async fn poll(
    mut client: RuntimeServiceClient<Channel>,
    mut lifecycle: Lifecycle,
    interval: Duration,
    context: &Context,
) -> Result<(), Error> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = context.shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let containers = match list(&mut client).await {
            Ok(containers) => containers,
            Err(e) => {
                context.degraded(format!("ListContainers: {e}"));
                continue;
            }
        };
        let present: std::collections::HashSet<String> =
            containers.iter().map(|c| c.id.clone()).collect();
        lifecycle.known.retain(|id, _| present.contains(id));
        for container in containers {
            let before = lifecycle.known.get(&container.id).map(|k| k.state);
            if before == Some(container.state) {
                continue;
            }
            let status = if container.state == ContainerState::ContainerExited as i32 {
                container_status(&mut client, &container.id).await
            } else {
                None
            };
            for out in lifecycle.changed(&container.id, &known_of(&container), status.as_ref()) {
                if super::first_report(&lifecycle.directory, &context.stats, &out) {
                    context.out.send(out).await?;
                }
            }
        }
    }
}

async fn list(client: &mut RuntimeServiceClient<Channel>) -> Result<Vec<Container>, tonic::Status> {
    Ok(client
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers)
}

async fn container_status(
    client: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Option<ContainerStatus> {
    client
        .container_status(ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        })
        .await
        .ok()?
        .into_inner()
        .status
}
