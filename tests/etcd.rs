//! The etcd-metrics collector against a real etcd (Debian's etcd-server): a database
//! filling up to its quota, the member killed and started again.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Guard, config, free_port, spawn_collector};

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

/// Puts 100 kB values until the database is at 85% of its quota by etcd's own metric: the
/// size per put depends on bbolt's page allocation, so a fixed count could stop short or
/// run into the quota alarm.
const FILL: &str = r#"
import base64, json, sys, urllib.error, urllib.request
base = "http://127.0.0.1:%s" % sys.argv[1]
def size():
    for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
        if line.startswith("etcd_mvcc_db_total_size_in_bytes "):
            return float(line.split()[1])
    return 0.0
for i in range(400):
    if size() >= 0.85 * 4194304:
        sys.exit(0)
    body = json.dumps({"key": base64.b64encode(b"k%d" % i).decode(),
                       "value": base64.b64encode(b"x" * 100000).decode()}).encode()
    try:
        urllib.request.urlopen(urllib.request.Request(base + "/v3/kv/put", data=body)).read()
    except urllib.error.HTTPError:
        sys.exit(0 if size() >= 0.8 * 4194304 else 1)
sys.exit(1)
"#;

#[test]
fn a_filling_database_and_a_dead_member_are_reported_once_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (client, peer) = (free_port(), free_port());
    let member = Guard(etcd(dir.path(), client, peer));
    python(WAIT_HEALTHY, client);

    // The latency lines are out of reach: this test is about reachability and size, and
    // the disk under a shared CI machine can make a 4 MiB fill's fsyncs slow for real
    // (crossing the latency lines is the collector's unit tests' business).
    let yaml = config(&format!(
        "collectors:\n  etcd-metrics:\n    config: {{ endpoint: \"http://127.0.0.1:{client}\", interval: 1s, slow_fsync: 1h, slow_commit: 1h }}\n"
    ));
    let agent = spawn_collector(yaml.path(), &["--server", "none"]);
    // Two scrapes of a healthy, small member: nothing to say.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(agent.events().is_empty(), "{:?}", agent.events());

    // The member dies and comes back.
    drop(member); // SIGKILL
    let down = agent.wait_for("etcd.unreachable", 1)[0].clone();
    assert_eq!(down["severity"], "critical");
    let _member = Guard(etcd(dir.path(), client, peer));
    python(WAIT_HEALTHY, client);
    agent.wait_for("etcd.healthy", 1);

    // Its database fills up to the quota.
    python(FILL, client);
    let near = agent.wait_for("etcd.db_size_near_quota", 1)[0].clone();
    assert!(
        near["attributes"]["ratio"]
            .as_f64()
            .is_some_and(|r| r >= 0.8),
        "{near}"
    );
    assert_eq!(near["attributes"]["quota_bytes"], 4_194_304.0);
    std::thread::sleep(Duration::from_millis(2500));

    let events = agent.events();
    agent.stop();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_owned())
        .collect();
    // A put that hits the quota raises etcd's NOSPACE alarm, which /health reports, in the
    // same scrape as the size or the next one.
    assert_eq!(
        &kinds[..2],
        ["etcd.unreachable", "etcd.healthy"],
        "each once; a restarted member's counters are not a leader change"
    );
    let mut rest: Vec<&str> = kinds[2..].iter().map(String::as_str).collect();
    rest.sort_unstable();
    assert!(
        rest == ["etcd.db_size_near_quota"]
            || rest == ["etcd.db_size_near_quota", "etcd.unhealthy"],
        "{kinds:?}"
    );
}
