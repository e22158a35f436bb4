//! The systemd collector against a real systemd user manager, started by the test in a
//! private mount namespace with its own D-Bus (systemd's dbus.socket), running real units
//! made with `systemd-run --user`.

mod common;

use std::process::Command;

use common::{COLLECTOR, text};
use serde_json::Value;

/// Runs in a private mount namespace (so /run/systemd/system can exist for the manager):
/// a `systemd --user` in a cgroup of its own, a unit that fails before the collector
/// starts, the collector following the manager's bus, then units that succeed, fail and
/// restart, a restart of the bus itself, and one more failing unit after it.
const SCRIPT: &str = r#"
set -eu
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system
export XDG_RUNTIME_DIR="$WORK/xdg"
mkdir -p "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
CGROUP=/sys/fs/cgroup/unified/tapio-test-$$
[ -d /sys/fs/cgroup/unified ] || CGROUP=/sys/fs/cgroup/tapio-test-$$
mkdir -p "$CGROUP"
echo $$ >"$CGROUP/cgroup.procs"
export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
/lib/systemd/systemd --user >"$WORK/systemd.log" 2>&1 &
MANAGER=$!
cleanup() {
  kill $MANAGER 2>/dev/null || true
  wait $MANAGER 2>/dev/null || true
  echo $$ >"$(dirname "$CGROUP")/cgroup.procs"
  find "$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 200); do systemctl --user is-system-running >/dev/null 2>&1 && break; sleep 0.05; done
systemd-run --user --quiet --unit=tapio-early-fail /bin/sh -c 'exit 4'
sleep 0.5
cat >"$WORK/collector.yaml" <<YAML
collectors:
  systemd:
    config: { bus_address: "unix:path=$XDG_RUNTIME_DIR/bus", units: ["tapio-*"], types: [service] }
YAML
"$COLLECTOR" --config "$WORK/collector.yaml" --server none --stdout --otel-endpoint none \
  >"$WORK/events.jsonl" 2>"$WORK/collector.log" &
AGENT=$!
for _ in $(seq 200); do grep -q tapio-early-fail "$WORK/events.jsonl" && break; sleep 0.05; done
systemd-run --user --quiet --unit=tapio-ok /bin/true
systemd-run --user --quiet --unit=tapio-fail /bin/sh -c 'exit 3'
systemd-run --user --quiet --unit=tapio-restart -p Restart=on-failure -p RestartSec=100ms \
  -p StartLimitBurst=3 -p StartLimitIntervalSec=60 /bin/sh -c 'exit 1'
for _ in $(seq 200); do grep -q systemd.job.finished "$WORK/events.jsonl" && break; sleep 0.05; done
systemctl --user stop dbus.service
for _ in $(seq 200); do grep -q reconnected "$WORK/collector.log" && break; sleep 0.05; done
systemd-run --user --quiet --unit=tapio-after /bin/sh -c 'exit 5'
for _ in $(seq 200); do grep -q tapio-after.service.*failed "$WORK/events.jsonl" && break; sleep 0.05; done
kill -TERM $AGENT
wait $AGENT
echo "collector exit: $?" >"$WORK/exit"
"#;

#[test]
fn unit_lifecycle_from_a_real_user_manager_across_a_bus_restart() {
    if !common::as_root("unit_lifecycle_from_a_real_user_manager_across_a_bus_restart") {
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", SCRIPT])
        .env("WORK", work.path())
        .env("COLLECTOR", COLLECTOR)
        .output()
        .expect("unshare runs");
    let file = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    let log = file("collector.log");
    assert!(
        out.status.success(),
        "script failed: {}\ncollector: {log}\nsystemd: {}",
        text(&out.stderr),
        file("systemd.log")
    );
    assert_eq!(file("exit").trim(), "collector exit: 0", "{log}");
    let events: Vec<Value> = file("events.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    let of = |unit: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["entities"]["unit"] == unit)
            .collect()
    };
    let kinds = |unit: &str| -> Vec<String> {
        of(unit)
            .iter()
            .map(|e| e["type"].as_str().expect("type").to_owned())
            .collect()
    };
    assert!(
        events.iter().all(|e| e["entities"]["unit"]
            .as_str()
            .is_some_and(|u| u.starts_with("tapio-") && u.ends_with(".service"))),
        "the unit filter holds: {events:?}"
    );

    // Failed before the collector started: reported by the snapshot.
    let early = &of("tapio-early-fail.service")[0];
    assert_eq!(early["type"], "systemd.unit.failed");
    assert_eq!(early["attributes"]["snapshot"], true);
    assert_eq!(early["attributes"]["exit_status"], 4);

    assert_eq!(
        kinds("tapio-ok.service"),
        ["systemd.unit.started", "systemd.unit.stopped"]
    );
    assert_eq!(of("tapio-ok.service")[1]["attributes"]["result"], "success");

    let failed = of("tapio-fail.service")
        .into_iter()
        .find(|e| e["type"] == "systemd.unit.failed" && e["attributes"]["snapshot"].is_null())
        .expect("a live failure");
    assert_eq!(failed["severity"], "error");
    assert_eq!(failed["attributes"]["result"], "exit-code");
    assert_eq!(failed["attributes"]["exit_code"], "exited");
    assert_eq!(failed["attributes"]["exit_status"], 3);
    assert!(failed["entities"]["pid"].as_u64().is_some_and(|p| p > 0));

    let restarts: Vec<u64> = of("tapio-restart.service")
        .iter()
        .filter(|e| e["type"] == "systemd.unit.restarted")
        .map(|e| e["attributes"]["n_restarts"].as_u64().expect("a count"))
        .collect();
    assert!(
        restarts.len() >= 2 && restarts.windows(2).all(|w| w[1] == w[0] + 1) && restarts[0] == 1,
        "restarts counted one by one: {restarts:?}"
    );
    let job = of("tapio-restart.service")
        .into_iter()
        .find(|e| e["type"] == "systemd.job.finished")
        .expect("the start job that hit the start limit");
    assert_eq!(job["attributes"]["result"], "failed");

    // The bus went away and came back: said once each way, snapshot again, events flow.
    assert_eq!(log.matches("lost the bus").count(), 1, "{log}");
    assert_eq!(log.matches("reconnected").count(), 1, "{log}");
    let snapshots = of("tapio-early-fail.service")
        .iter()
        .filter(|e| e["attributes"]["snapshot"] == true)
        .count();
    assert_eq!(snapshots, 2, "a fresh snapshot after the reconnect");
    let after = of("tapio-after.service")
        .into_iter()
        .find(|e| e["type"] == "systemd.unit.failed")
        .expect("a failure after the reconnect");
    assert_eq!(after["attributes"]["exit_status"], 5);
}
