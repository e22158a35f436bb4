//! The etcd-metrics collector against a real etcd (Debian's etcd-server): a database
//! filling up to its quota, the member killed and started again.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{COLLECTOR, Guard, config, free_port};
use serde_json::Value;

/// A single-member etcd with a 4 MiB quota.
fn etcd(dir: &Path, client: u16, peer: u16) -> Child {
    Command::new("etcd")
        .args(["--name", "default", "--data-dir"])
        .arg(dir)
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .args(["--quota-backend-bytes", "4194304"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd runs (scripts/setup installs etcd-server)")
}

/// Runs `script` with python3 against etcd's HTTP gateway on `port`.
fn python(script: &str, port: u16) {
    let status = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .status()
        .expect("python3 runs");
    assert!(status.success(), "{script}");
}

const WAIT_HEALTHY: &str = r#"
import sys, time, urllib.request
for _ in range(300):
    try:
        if b'"true"' in urllib.request.urlopen("http://127.0.0.1:%s/health" % sys.argv[1], timeout=1).read():
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(1)
"#;

const FILL: &str = r#"
import base64, json, sys, urllib.request
for i in range(45):
    body = json.dumps({"key": base64.b64encode(b"k%d" % i).decode(),
                       "value": base64.b64encode(b"x" * 100000).decode()}).encode()
    urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:%s/v3/kv/put" % sys.argv[1], data=body)).read()
"#;

fn wait_for(events: &Mutex<Vec<Value>>, kind: &str) -> Value {
    let started = Instant::now();
    loop {
        if let Some(found) = events
            .lock()
            .expect("lock")
            .iter()
            .find(|e| e["type"] == kind)
        {
            return found.clone();
        }
        assert!(started.elapsed() < Duration::from_mins(1), "no {kind}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_filling_database_and_a_dead_member_are_reported_once_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let member = Guard(etcd(dir.path(), client, peer));
    python(WAIT_HEALTHY, client);

    let yaml = config(&format!(
        "collectors:\n  etcd-metrics:\n    config: {{ endpoint: \"http://127.0.0.1:{client}\", interval: 1s }}\n"
    ));
    let mut child = Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args(["--server", "none", "--stdout", "--otel-endpoint", "none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("collector starts");
    let stdout = child.stdout.take().expect("stdout");
    let agent = Guard(child);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock()
                .expect("lock")
                .push(serde_json::from_str::<Value>(&line).expect("JSON"));
        }
    });
    // Two scrapes of a healthy, small member: nothing to say.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(events.lock().expect("lock").is_empty(), "{events:?}");

    python(FILL, client);
    let near = wait_for(&events, "etcd.db_size_near_quota");
    assert!(
        near["attributes"]["ratio"]
            .as_f64()
            .is_some_and(|r| r >= 0.8),
        "{near}"
    );
    assert_eq!(near["attributes"]["quota_bytes"], 4_194_304.0);

    drop(member); // SIGKILL
    let down = wait_for(&events, "etcd.unreachable");
    assert_eq!(down["severity"], "critical");

    let _member = Guard(etcd(dir.path(), client, peer));
    python(WAIT_HEALTHY, client);
    wait_for(&events, "etcd.healthy");
    std::thread::sleep(Duration::from_millis(2500));

    let kill = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    assert!(agent.wait_for(Duration::from_secs(30)).status.success());
    let kinds: Vec<String> = events
        .lock()
        .expect("lock")
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "etcd.db_size_near_quota",
            "etcd.unreachable",
            "etcd.healthy"
        ],
        "each once; a restarted member's counters are not a leader change"
    );
}
