//! The cri collector against a FAKE container runtime (no containerd runs here): a gRPC
//! server on a unix socket that implements the CRI `RuntimeService` from the CRI's proto,
//! with and without `GetContainerEvents`.

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, spawn_collector};
use tapio::cri_pb::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tapio::cri_pb::{
    Container, ContainerEventResponse, ContainerEventType, ContainerMetadata, ContainerState,
    ContainerStatus, ContainerStatusRequest, ContainerStatusResponse, GetEventsRequest,
    ListContainersRequest, ListContainersResponse, VersionRequest, VersionResponse,
};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// A FAKE runtime: containers the test sets, events the test sends.
#[derive(Clone)]
struct FakeCriRuntime {
    containers: Arc<Mutex<HashMap<String, ContainerStatus>>>,
    events: Option<broadcast::Sender<ContainerEventResponse>>,
}

fn status(
    id: &str,
    name: &str,
    state: ContainerState,
    exit_code: i32,
    reason: &str,
) -> ContainerStatus {
    ContainerStatus {
        id: id.to_owned(),
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 1,
        }),
        state: state as i32,
        created_at: 1_790_000_000_000_000_000,
        started_at: 1_790_000_001_000_000_000,
        finished_at: if state == ContainerState::ContainerExited {
            1_790_000_002_000_000_000
        } else {
            0
        },
        exit_code,
        reason: reason.to_owned(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), "web-1".to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), "shop".to_owned()),
            (
                "io.kubernetes.pod.uid".to_owned(),
                "0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f".to_owned(),
            ),
            ("io.kubernetes.container.name".to_owned(), name.to_owned()),
        ]),
        ..ContainerStatus::default()
    }
}

impl FakeCriRuntime {
    fn set(&self, status: ContainerStatus) {
        let event_type = match ContainerState::try_from(status.state) {
            Ok(ContainerState::ContainerRunning) => ContainerEventType::ContainerStartedEvent,
            Ok(ContainerState::ContainerExited) => ContainerEventType::ContainerStoppedEvent,
            _ => ContainerEventType::ContainerCreatedEvent,
        };
        self.containers
            .lock()
            .expect("lock")
            .insert(status.id.clone(), status.clone());
        if let Some(events) = &self.events {
            let _ = events.send(ContainerEventResponse {
                container_id: status.id.clone(),
                container_event_type: event_type as i32,
                created_at: 1_790_000_000_000_000_000,
                pod_sandbox_status: None,
                containers_statuses: vec![status],
            });
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for FakeCriRuntime {
    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake-cri-runtime".into(),
            runtime_version: "1.0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let containers = self
            .containers
            .lock()
            .expect("lock")
            .values()
            .map(|s| Container {
                id: s.id.clone(),
                pod_sandbox_id: "sandbox-1".into(),
                metadata: s.metadata.clone(),
                state: s.state,
                created_at: s.created_at,
                labels: s.labels.clone(),
                ..Container::default()
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = request.into_inner().container_id;
        let status = self.containers.lock().expect("lock").get(&id).cloned();
        match status {
            Some(status) => Ok(Response::new(ContainerStatusResponse {
                status: Some(status),
                info: HashMap::new(),
            })),
            None => Err(Status::not_found(format!("container {id}"))),
        }
    }

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let Some(events) = &self.events else {
            return Err(Status::unimplemented("GetContainerEvents"));
        };
        let stream = tokio_stream::wrappers::BroadcastStream::new(events.subscribe())
            .filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}

use tokio_stream::StreamExt as _;

fn serve(runtime: FakeCriRuntime, socket: &std::path::Path) {
    let listener = tokio::net::UnixListener::bind(socket).expect("bind the socket");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(runtime))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .expect("serves");
    });
}

#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
async fn run(with_events: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cri.sock");
    let runtime = FakeCriRuntime {
        containers: Arc::default(),
        events: with_events.then(|| broadcast::channel(64).0),
    };
    runtime.set(status(
        "old",
        "sidecar",
        ContainerState::ContainerRunning,
        0,
        "",
    ));
    serve(runtime.clone(), &socket);
    let yaml = config(&format!(
        "collectors:\n  cri:\n    config: {{ socket: {}, follow: {}, poll_interval: 200ms }}\n",
        socket.display(),
        if with_events { "auto" } else { "poll" }
    ));
    let agent = spawn_collector(yaml.path(), &["--server", "none"]);
    // Async waits: the fake runtime serves on this test's own runtime.
    let started = Instant::now();
    while !agent.log().contains("following the container runtime") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mode = if with_events {
        "mode=\"events\""
    } else {
        "mode=\"polling\""
    };
    assert!(agent.log().contains(mode), "{}", agent.log());

    runtime.set(status("c1", "app", ContainerState::ContainerRunning, 0, ""));
    tokio::time::sleep(Duration::from_millis(600)).await;
    runtime.set(status(
        "c1",
        "app",
        ContainerState::ContainerExited,
        137,
        "OOMKilled",
    ));
    let started = Instant::now();
    while agent.of("container.exit").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:#?}",
            agent.events()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = Arc::clone(&agent.events);
    agent.stop();
    let events = events.lock().expect("lock").clone();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        ["container.created", "container.started", "container.exit"],
        "nothing about the container there at start"
    );
    let exit = &events[2];
    assert_eq!(exit["entities"]["container_id"], "c1");
    assert_eq!(exit["entities"]["pod_name"], "web-1");
    assert_eq!(exit["entities"]["pod_namespace"], "shop");
    assert_eq!(exit["attributes"]["exit_code"], 137);
    assert_eq!(exit["attributes"]["reason"], "OOMKilled");
    assert_eq!(exit["severity"], "error");
    assert_eq!(
        exit["timestamp_unix_nano"], 1_790_000_002_000_000_000u64,
        "at the container's finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_from_the_runtimes_event_stream() {
    run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_by_polling_a_runtime_without_events() {
    run(false).await;
}
