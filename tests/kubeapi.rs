//! The kubeapi collector against a FAKE API server (no real one can be installed here; see
//! `tests/fake_kube_apiserver`), fed real-shaped pod, node and event JSON; and against a real
//! cluster when KUBECONFIG points at one.

mod common;
mod fake_kube_apiserver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, spawn_collector};
use fake_kube_apiserver::FakeApiServer;
use serde_json::{Value, json};

const WEB_UID: &str = "0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
const FIRST: &str = "3f4a1c2b9d8e7f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";
const SECOND: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b";

/// A pod as the API server returns it, on `node`, its one container `app` with
/// `restarts`, `waiting` (a reason, or running), and ready or not.
fn pod(
    name: &str,
    uid: &str,
    node: &str,
    restarts: i32,
    waiting: Option<&str>,
    ready: bool,
) -> Value {
    let state = match waiting {
        Some(reason) => {
            json!({"waiting": {"reason": reason, "message": "back-off 10s restarting failed container"}})
        }
        None => json!({"running": {"startedAt": "2026-11-25T10:00:00Z"}}),
    };
    let mut status = json!({
        "name": "app",
        "ready": ready,
        "restartCount": restarts,
        "image": "nginx:1.27",
        "imageID": "docker.io/library/nginx@sha256:0000",
        "containerID": format!("containerd://{}", if restarts > 0 { SECOND } else { FIRST }),
        "started": waiting.is_none(),
        "state": state,
    });
    if restarts > 0 {
        status["lastState"] = json!({"terminated": {
            "exitCode": 137, "reason": "OOMKilled",
            "startedAt": "2026-11-25T10:00:00Z", "finishedAt": "2026-11-25T10:05:00Z",
            "containerID": format!("containerd://{FIRST}")}});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid,
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "critical"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                                 "uid": "11111111-2222-3333-4444-555555555555", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "nginx:1.27"}]},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }},
                {"type": "PodScheduled", "status": "True"}
            ],
            "containerStatuses": [status]
        }
    })
}

fn node(name: &str, memory_pressure: bool) -> Value {
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": format!("{kind} is {status}"),
               "lastHeartbeatTime": "2026-11-25T10:00:00Z", "lastTransitionTime": "2026-11-25T10:00:00Z"})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": format!("node-uid-{name}")},
        "status": {"conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", if memory_pressure { "True" } else { "False" },
                      if memory_pressure { "KubeletHasInsufficientMemory" } else { "KubeletHasSufficientMemory" }),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ]}
    })
}

fn warning(name: &str, pod_uid: &str, pod_name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("event-{name}")},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": pod_name, "uid": pod_uid, "apiVersion": "v1"},
        "reason": "BackOff",
        "message": "Back-off restarting failed container app",
        "source": {"component": "kubelet", "host": "node-a"},
        "count": 1,
        "type": "Warning",
        "firstTimestamp": "2026-11-25T10:05:00Z",
        "lastTimestamp": "2026-11-25T10:05:00Z"
    })
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn pod_and_node_changes_become_events_once_across_watch_expiry() {
    let api = FakeApiServer::start();
    api.apply("nodes", node("node-a", false));
    api.apply("nodes", node("node-b", false));
    api.apply(
        "pods",
        pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 0, None, true),
    );
    api.apply(
        "pods",
        pod(
            "other-1",
            "aaaaaaaa-0000-0000-0000-000000000001",
            "node-b",
            0,
            None,
            true,
        ),
    );
    api.apply("events", warning("old", WEB_UID, "web-7d9f8c6b5-x2x9q"));
    api.apply(
        "endpointslices",
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-abcde", "namespace": "shop", "uid": "slice-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": [
                {"addresses": ["10.0.0.7"], "nodeName": "node-a",
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-7d9f8c6b5-x2x9q", "uid": WEB_UID}},
                {"addresses": ["10.0.1.9"], "nodeName": "node-b",
                 "targetRef": {"kind": "Pod", "namespace": "shop", "name": "other-1", "uid": "aaaaaaaa-0000-0000-0000-000000000001"}}
            ]
        }),
    );

    let kubeconfig = config(&api.kubeconfig());
    let yaml = config(&format!(
        "collectors:\n  kubeapi:\n    config: {{ kubeconfig: {}, node_name: node-a }}\n",
        kubeconfig.path().display()
    ));
    let agent = spawn_collector(yaml.path(), &["--server", "none"]);
    api.wait_until("three watches", |a| {
        a.requests("pods", "watch") >= 1
            && a.requests("nodes", "watch") >= 1
            && a.requests("events", "watch") >= 1
            && a.requests("endpointslices", "watch") >= 1
    });

    // An OOM kill and a restart: the container's exit and the pod's restart.
    api.apply(
        "pods",
        pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 1, None, true),
    );
    let exit = &agent.wait_for("container.exit", 1)[0];
    assert_eq!(exit["attributes"]["exit_code"], 137);
    assert_eq!(exit["attributes"]["reason"], "OOMKilled");
    assert_eq!(
        exit["entities"]["container_id"], FIRST,
        "the container that died"
    );
    assert_eq!(exit["entities"]["workload_kind"], "Deployment");
    assert_eq!(exit["entities"]["workload_name"], "web");
    let restart = &agent.wait_for("k8s.pod.restart", 1)[0];
    assert_eq!(restart["attributes"]["restart_count"], 1);
    assert_eq!(
        restart["entities"]["container_id"], SECOND,
        "the container now running"
    );
    assert_eq!(restart["entities"]["pod_uid"], WEB_UID);
    assert_eq!(restart["attributes"]["k8s.pod.label.tier"], "critical");
    assert_eq!(
        restart["attributes"]["k8s.service.name"], "web",
        "the service its endpoint slice names"
    );

    // CrashLoopBackOff.
    api.apply(
        "pods",
        pod(
            "web-7d9f8c6b5-x2x9q",
            WEB_UID,
            "node-a",
            1,
            Some("CrashLoopBackOff"),
            false,
        ),
    );
    assert_eq!(
        agent.wait_for("k8s.pod.backoff", 1)[0]["attributes"]["reason"],
        "CrashLoopBackOff"
    );
    agent.wait_for("k8s.pod.not_ready", 1);

    // Another node's pod restarting is not this node's business.
    api.apply(
        "pods",
        pod(
            "other-1",
            "aaaaaaaa-0000-0000-0000-000000000001",
            "node-b",
            3,
            None,
            true,
        ),
    );
    api.apply("nodes", node("node-b", true));

    // Memory pressure on this node.
    api.apply("nodes", node("node-a", true));
    let pressure = &agent.wait_for("k8s.node.pressure", 1)[0];
    assert_eq!(pressure["attributes"]["condition"], "MemoryPressure");
    assert_eq!(pressure["entities"]["node"], "node-a");

    // The watch history is compacted and the watches drop: resuming gets 410 Gone and the
    // collector relists. A change made meanwhile is reported once; nothing else again.
    let lists_before = api.requests("pods", "list");
    api.compact();
    api.close_watches();
    api.apply(
        "pods",
        pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 1, None, true),
    );
    api.wait_until("a relist", |a| a.requests("pods", "list") > lists_before);
    agent.wait_for("k8s.pod.ready", 1);

    // A Warning event about this node's pod; the one listed at start stays history.
    api.apply("events", warning("fresh", WEB_UID, "web-7d9f8c6b5-x2x9q"));
    api.apply(
        "events",
        warning(
            "elsewhere",
            "aaaaaaaa-0000-0000-0000-000000000001",
            "other-1",
        ),
    );
    let warned = &agent.wait_for("k8s.event", 1)[0];
    assert_eq!(warned["severity"], "warning");
    assert_eq!(warned["attributes"]["reason"], "BackOff");
    assert_eq!(warned["entities"]["pod_name"], "web-7d9f8c6b5-x2x9q");

    // Evicted.
    let mut evicted = pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 1, None, false);
    evicted["status"]["phase"] = json!("Failed");
    evicted["status"]["reason"] = json!("Evicted");
    evicted["status"]["message"] = json!("The node was low on resource: memory.");
    api.apply("pods", evicted);
    agent.wait_for("k8s.pod.evicted", 1);

    let events = Arc::clone(&agent.events);
    agent.stop();
    let events = events.lock().expect("lock").clone();
    for (kind, count) in [
        ("container.exit", 1),
        ("k8s.pod.restart", 1),
        ("k8s.pod.backoff", 1),
        ("k8s.pod.not_ready", 2),
        ("k8s.pod.ready", 1),
        ("k8s.node.pressure", 1),
        ("k8s.event", 1),
        ("k8s.pod.evicted", 1),
    ] {
        assert_eq!(
            events.iter().filter(|e| e["type"] == kind).count(),
            count,
            "{kind} reported once per change, across the relist: {events:#?}"
        );
    }
    assert!(
        events.iter().all(|e| e["entities"]["node"] == "node-a"
            && !e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("other-1")),
        "nothing from node-b: {events:#?}"
    );
    assert!(
        api.selectors("pods")
            .iter()
            .all(|s| s == "spec.nodeName=node-a")
    );
    assert!(
        api.selectors("nodes")
            .iter()
            .all(|s| s == "metadata.name=node-a")
    );
    assert!(api.selectors("events").iter().all(|s| s == "type=Warning"));
    assert!(
        api.gone() >= 1,
        "a watch resumed from compacted history got 410 Gone"
    );
    assert!(api.requests("pods", "list") >= 2, "relisted after 410");
}

#[test]
fn a_real_cluster_when_kubeconfig_points_at_one() {
    let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| std::path::Path::new(p).is_file())
    else {
        // Not CI-gated: no cluster exists on these machines (DESIGN.md section 7).
        common::record_skip(
            "a_real_cluster_when_kubeconfig_points_at_one",
            "KUBECONFIG names no file",
        );
        return;
    };
    watches_a_cluster(std::path::Path::new(&path));
}

/// The collector binary against the cluster `kubeconfig` names: it lists the pods (the API
/// server answered), no watch fails, and it stops cleanly.
fn watches_a_cluster(kubeconfig: &std::path::Path) {
    let yaml = config(&format!(
        "collectors:\n  kubeapi:\n    config: {{ kubeconfig: {}, cluster_wide: true }}\n",
        kubeconfig.display()
    ));
    let agent = spawn_collector(
        yaml.path(),
        &["--server", "none", "--status-interval", "1s"],
    );
    let started = std::time::Instant::now();
    while !agent.log().contains("kubeapi: listed the pods") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster never answered the pod list:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!agent.log().contains("watch failed"), "{}", agent.log());
    agent.stop();
}

#[test]
fn the_real_cluster_check_holds_against_the_fake_api_server() {
    let api = FakeApiServer::start();
    api.apply("nodes", node("node-a", false));
    api.apply(
        "pods",
        pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 0, None, true),
    );
    let kubeconfig = config(&api.kubeconfig());
    watches_a_cluster(kubeconfig.path());
}

/// The metadata store: container id -> pod, labels and workload, for the correlation
/// engine, filled from the watch and updated when a container is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_directory_maps_containers_to_pods() {
    use tapio::collectors::BuildContext;
    use tapio::config::Config;
    use tapio::manager::Manager;
    use tapio::metadata::PodDirectory;
    use tapio::telemetry::Telemetry;
    use tokio_util::sync::CancellationToken;

    let api = FakeApiServer::start();
    api.apply("nodes", node("node-a", false));
    api.apply(
        "pods",
        pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 0, None, true),
    );
    let kubeconfig = config(&api.kubeconfig());
    let yaml = format!(
        "collectors:\n  kubeapi:\n    config: {{ kubeconfig: {}, node_name: node-a, events: none }}\n",
        kubeconfig.path().display()
    );
    let config = Config::from_yaml(&yaml, "test").expect("valid config");
    let directory = PodDirectory::new();
    let shutdown = CancellationToken::new();
    let mut manager = Manager::new(Arc::new(Telemetry::default()), 1024, shutdown.clone());
    for built in config.collectors.build(&BuildContext {
        node_name: "ignored".into(),
        directory: Arc::clone(&directory),
    }) {
        assert!(manager.start(built).await);
    }
    let mut fan_in = manager.into_fan_in();
    let wait = |id: &'static str| {
        let directory = Arc::clone(&directory);
        async move {
            let started = Instant::now();
            loop {
                if let Some(pod) = directory.pod_of_container(id) {
                    return pod;
                }
                assert!(
                    started.elapsed() < Duration::from_mins(1),
                    "{id} never mapped"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let pod_meta = wait(FIRST).await;
    assert_eq!(&*pod_meta.name, "web-7d9f8c6b5-x2x9q");
    assert_eq!(&*pod_meta.namespace, "shop");
    assert_eq!(&*pod_meta.uid, WEB_UID);
    assert_eq!(&*pod_meta.workload_kind, "Deployment");
    assert_eq!(&*pod_meta.workload_name, "web");
    assert_eq!(&*pod_meta.node, "node-a");
    assert_eq!(pod_meta.label("tier"), Some("critical"));

    // The container is replaced by a restart: the new id maps, the old one no longer does.
    api.apply(
        "pods",
        pod("web-7d9f8c6b5-x2x9q", WEB_UID, "node-a", 1, None, true),
    );
    wait(SECOND).await;
    assert!(directory.pod_of_container(FIRST).is_none());
    shutdown.cancel();
    let mut drained = Vec::new();
    while fan_in.recv_many(&mut drained, 1024).await > 0 {}
}
