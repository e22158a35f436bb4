//! The kubelet collector against a FAKE kubelet (no kubelet runs here): an HTTPS server with
//! a certificate made by the test, that wants the bearer token and serves `/pods` and
//! `/stats/summary` in the kubelet's JSON.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Running, config, spawn_collector};
use serde_json::{Value, json};

const TOKEN: &str = "a-service-account-token";
const WEB_UID: &str = "0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";

#[derive(Default)]
struct Served {
    summary: Value,
    pods: Value,
    authorized: usize,
    refused: usize,
}

/// A FAKE kubelet: TLS with the test's certificate, bearer token required.
struct FakeKubelet {
    port: u16,
    served: Arc<Mutex<Served>>,
    cert_pem: String,
}

impl FakeKubelet {
    fn start() -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(Mutex::new(Served::default()));
        let state = Arc::clone(&served);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (tls, state) = (Arc::clone(&tls), Arc::clone(&state));
                std::thread::spawn(move || {
                    let Ok(connection) = rustls::ServerConnection::new(tls) else {
                        return;
                    };
                    let mut stream = rustls::StreamOwned::new(connection, stream);
                    let mut reader = BufReader::new(&mut stream);
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line);
                    }
                    let path = head[0].split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let authorized = head.iter().any(|h| {
                        h.to_ascii_lowercase().starts_with("authorization:")
                            && h.trim_end().ends_with(&format!("Bearer {TOKEN}"))
                    });
                    let (status, body) = {
                        let mut served = state.lock().expect("lock");
                        if authorized {
                            served.authorized += 1;
                            match path.as_str() {
                                "/stats/summary" => ("200 OK", served.summary.to_string()),
                                "/pods" => ("200 OK", served.pods.to_string()),
                                _ => ("404 Not Found", "404 page not found".to_owned()),
                            }
                        } else {
                            served.refused += 1;
                            ("401 Unauthorized", "Unauthorized".to_owned())
                        }
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.flush();
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                    let _ = stream.read(&mut [0; 1]);
                });
            }
        });
        Self {
            port,
            served,
            cert_pem: cert.pem(),
        }
    }

    fn set(&self, memory_working_gib: f64, pod_working_mib: u64, restarts: i64) {
        let gib = 1024.0 * 1024.0 * 1024.0;
        let mut served = self.served.lock().expect("lock");
        served.summary = json!({
            "node": {
                "nodeName": "node-a",
                "cpu": {"time": "2026-11-25T10:00:00Z", "usageNanoCores": 100_000_000u64, "usageCoreNanoSeconds": 1u64},
                "memory": {"time": "2026-11-25T10:00:00Z", "workingSetBytes": memory_working_gib * gib,
                           "availableBytes": (8.0 - memory_working_gib) * gib, "usageBytes": memory_working_gib * gib},
                "fs": {"time": "2026-11-25T10:00:00Z", "availableBytes": 90u64 << 30, "capacityBytes": 100u64 << 30, "usedBytes": 10u64 << 30}
            },
            "pods": [{
                "podRef": {"name": "web-1", "namespace": "shop", "uid": WEB_UID},
                "startTime": "2026-11-25T09:00:00Z",
                "containers": [{"name": "app", "memory": {"workingSetBytes": pod_working_mib << 20}}],
                "memory": {"time": "2026-11-25T10:00:00Z", "workingSetBytes": pod_working_mib << 20}
            }]
        });
        let mut status = json!({"name": "app", "restartCount": restarts, "ready": true,
                                "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}}});
        if restarts > 0 {
            status["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        }
        served.pods = json!({
            "kind": "PodList", "apiVersion": "v1", "metadata": {},
            "items": [{
                "metadata": {"name": "web-1", "namespace": "shop", "uid": WEB_UID},
                "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "nginx",
                         "resources": {"limits": {"memory": "512Mi", "cpu": "500m"}}}]},
                "status": {"phase": "Running", "containerStatuses": [status]}
            }]
        });
    }

    fn authorized(&self) -> usize {
        self.served.lock().expect("lock").authorized
    }

    fn refused(&self) -> usize {
        self.served.lock().expect("lock").refused
    }
}

/// The collector with `yaml` as its configuration (kept alive with it).
fn spawn(yaml: &str) -> (Running, tempfile::NamedTempFile) {
    let file = config(yaml);
    (spawn_collector(file.path(), &["--server", "none"]), file)
}

fn wait(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pressure_pod_memory_and_restarts_from_a_fake_kubelet() {
    let kubelet = FakeKubelet::start();
    kubelet.set(1.0, 100, 0);
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, token) = (dir.path().join("ca.pem"), dir.path().join("token"));
    std::fs::write(&ca, &kubelet.cert_pem).expect("ca");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
    let (agent, _file) = spawn(&format!(
        "collectors:\n  kubelet:\n    config: {{ endpoint: \"https://127.0.0.1:{}\", ca_file: {}, token_file: {}, interval: 1s, cpu_cores: 2 }}\n",
        kubelet.port,
        ca.display(),
        token.display()
    ));
    // Two readings of a calm node: nothing to report.
    wait("two readings", || kubelet.authorized() >= 4);
    assert!(agent.events().is_empty(), "{:?}", agent.events());

    kubelet.set(7.5, 500, 1);
    let of = |kind: &str| agent.of(kind);
    wait("pressure, pod memory and a restart", || {
        !of("kubelet.node.pressure").is_empty()
            && !of("kubelet.pod.memory_near_limit").is_empty()
            && !of("kubelet.container.restart").is_empty()
    });
    let pressure = &of("kubelet.node.pressure")[0];
    assert_eq!(pressure["attributes"]["resource"], "memory");
    let near = &of("kubelet.pod.memory_near_limit")[0];
    assert_eq!(near["entities"]["pod_uid"], WEB_UID);
    assert_eq!(
        near["attributes"]["memory_limit_bytes"],
        f64::from(512u32 << 20)
    );
    let restart = &of("kubelet.container.restart")[0];
    assert_eq!(restart["attributes"]["reason"], "OOMKilled");
    assert_eq!(restart["attributes"]["exit_code"], 137);

    kubelet.set(1.0, 100, 1);
    wait("relief", || {
        !of("kubelet.node.pressure_relieved").is_empty()
    });
    let events = Arc::clone(&agent.events);
    agent.stop();
    let of = |kind: &str| {
        let events = events.lock().expect("lock");
        events.iter().filter(|e| e["type"] == kind).count()
    };
    for kind in [
        "kubelet.node.pressure",
        "kubelet.pod.memory_near_limit",
        "kubelet.container.restart",
        "kubelet.node.pressure_relieved",
    ] {
        assert_eq!(of(kind), 1, "{kind} once per crossing");
    }

    // A wrong token is refused by the kubelet, and the collector says so.
    std::fs::write(&token, "not-the-token").expect("token");
    let (agent, _file) = spawn(&format!(
        "collectors:\n  kubelet:\n    config: {{ endpoint: \"https://127.0.0.1:{}\", ca_file: {}, token_file: {}, interval: 1s }}\n",
        kubelet.port,
        ca.display(),
        token.display()
    ));
    wait("a refusal logged", || agent.log().contains("HTTP 401"));
    assert!(
        kubelet.refused() > 0,
        "the fake kubelet refused the wrong token"
    );
    drop(agent);
}
