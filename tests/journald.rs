//! The journald collector against real journal files: written by systemd-journal-remote
//! from export format, read back by the collector and by journalctl, and delivered to a
//! real tapio-server across restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{COLLECTOR, Guard, ServerProcess, config, last_status, stats, text};
use serde_json::Value;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const BOOT_ID: &str = "0123456789abcdef0123456789abcdef";

/// Journal export format (systemd's `journal-export-format`): `FIELD=value` lines, or the
/// field name, a little-endian 64-bit length and the raw bytes for values with newlines.
fn export<'a>(
    entries: impl IntoIterator<Item = Vec<(&'a str, Vec<u8>)>>,
    first_usec: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, fields) in entries.into_iter().enumerate() {
        let n = n as u64;
        out.extend_from_slice(
            format!(
                "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={BOOT_ID}\n",
                first_usec + n * 1000,
                1_000_000 + n * 1000
            )
            .as_bytes(),
        );
        for (key, value) in fields {
            out.extend_from_slice(key.as_bytes());
            if value.contains(&b'\n') {
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            } else {
                out.push(b'=');
            }
            out.extend_from_slice(&value);
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out
}

/// Writes `export` into the journal file `dir/name` with systemd-journal-remote.
fn journal_file(dir: &Path, name: &str, export: &[u8]) -> PathBuf {
    assert!(
        Path::new(JOURNAL_REMOTE).exists(),
        "{JOURNAL_REMOTE} is missing: run scripts/setup (apt systemd-journal-remote)"
    );
    let input = dir.join(format!("{name}.export"));
    std::fs::write(&input, export).expect("writes the export");
    let output = dir.join(format!("{name}.journal"));
    let out = Command::new(JOURNAL_REMOTE)
        .arg(format!("--output={}", output.display()))
        .arg("--split-mode=none")
        .arg(&input)
        .output()
        .expect("journal-remote runs");
    assert!(
        out.status.success(),
        "journal-remote: {}",
        text(&out.stderr)
    );
    std::fs::remove_file(&input).expect("removes the export");
    output
}

fn field(key: &'static str, value: impl Into<Vec<u8>>) -> (&'static str, Vec<u8>) {
    (key, value.into())
}

/// Runs the collector to the end of `directory` with `--stdout`: (events, stderr).
fn read_all(directory: &Path, extra: &str) -> (Vec<Value>, String) {
    let yaml = config(&format!(
        "collectors:\n  journald:\n    config: {{ directory: {}, follow: false{extra} }}\n",
        directory.display()
    ));
    let out = Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args(["--server", "none", "--stdout", "--otel-endpoint", "none"])
        .output()
        .expect("collector runs");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "collector failed: {stderr}");
    let events = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event"))
        .collect();
    (events, stderr)
}

/// A journal field's values as bytes, the way journalctl's JSON gives them: a string, an
/// array of byte values, or an array of either when the field repeats.
fn journalctl_values(value: &Value) -> Vec<Vec<u8>> {
    let bytes = |v: &Value| -> Option<Vec<u8>> {
        match v {
            Value::String(s) => Some(s.as_bytes().to_vec()),
            Value::Array(items) if items.iter().all(Value::is_u64) => Some(
                items
                    .iter()
                    .map(|b| u8::try_from(b.as_u64().expect("a byte")).expect("a byte"))
                    .collect(),
            ),
            _ => None,
        }
    };
    match bytes(value) {
        Some(one) => vec![one],
        None => value
            .as_array()
            .expect("an array of values")
            .iter()
            .map(|v| bytes(v).expect("a value"))
            .collect(),
    }
}

/// The collector's attribute value as bytes (`hex:` marks bytes that are not UTF-8).
fn attribute_bytes(value: &Value) -> Vec<u8> {
    let text = value.as_str().expect("journal attributes are text");
    match text.strip_prefix("hex:") {
        Some(hex) => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect(),
        None => text.as_bytes().to_vec(),
    }
}

/// Checks that `event` holds every field of journalctl's `entry`, byte for byte, and
/// nothing else.
fn assert_same_fields(event: &Value, entry: &Value) {
    let entry = entry.as_object().expect("an object");
    let micros: u64 = entry["__REALTIME_TIMESTAMP"]
        .as_str()
        .expect("text")
        .parse()
        .expect("a number");
    assert_eq!(event["timestamp_unix_nano"].as_u64(), Some(micros * 1000));
    let attributes = event["attributes"].as_object().expect("attributes");
    let mut compared = 0;
    for (key, value) in entry {
        if key.starts_with("__") {
            continue;
        }
        let values = journalctl_values(value);
        if key == "MESSAGE" {
            assert_eq!(
                event["message"].as_str().map(str::as_bytes),
                Some(values[0].as_slice()),
                "MESSAGE"
            );
            continue;
        }
        for (n, expected_value) in values.iter().enumerate() {
            let name = if n == 0 {
                key.clone()
            } else {
                format!("{key}[{n}]")
            };
            let ours = attributes
                .get(&name)
                .unwrap_or_else(|| panic!("{name} missing from {attributes:?}"));
            assert_eq!(&attribute_bytes(ours), expected_value, "{name}");
            compared += 1;
        }
    }
    let journal_fields: usize = entry
        .iter()
        .filter(|(k, _)| !k.starts_with("__") && *k != "MESSAGE")
        .map(|(_, v)| journalctl_values(v).len())
        .sum();
    assert_eq!(compared, journal_fields);
    assert_eq!(
        attributes.len(),
        journal_fields,
        "no field of our own invented"
    );
}

#[test]
fn journal_files_read_field_by_field_as_journalctl_reads_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = "x".repeat(100_000);
    let entries = vec![
        vec![
            field("MESSAGE", "hello"),
            field("PRIORITY", "6"),
            field("SYSLOG_IDENTIFIER", "app"),
            field("_PID", "12"),
            field("_COMM", "app"),
            field("_SYSTEMD_UNIT", "app.service"),
            field(
                "CONTAINER_NAME",
                "k8s_app_web-7d9f_shop_0d3c2f1e-5a6b-4c7d-8e9f-0a1b2c3d4e5f_0",
            ),
        ],
        vec![
            field("MESSAGE", "line one\nline two\n\tindented"),
            field("PRIORITY", "3"),
            field("_SYSTEMD_UNIT", "db.service"),
        ],
        vec![
            field("MESSAGE", "h\u{e9}llo \u{2713}"),
            field("BINARY", vec![0u8, 1, 0xff, 0xfe]),
            field("CONTROL", vec![0u8, 1, 2]),
            field("PRIORITY", "4"),
        ],
        vec![
            field("MESSAGE", "a repeated field"),
            field("TAG", "first"),
            field("TAG", "second"),
            field("PRIORITY", "7"),
        ],
        vec![
            field("MESSAGE", "a large field"),
            field("LARGE", big.as_str()),
        ],
        vec![
            field("MESSAGE", "Failed with result 'exit-code'."),
            field("PRIORITY", "0"),
            field("_SYSTEMD_UNIT", "init.scope"),
            field("UNIT", "nginx.service"),
        ],
    ];
    let count = entries.len();
    let file = journal_file(
        dir.path(),
        "fields",
        &export(entries, 1_700_000_000_000_000),
    );
    let (events, _) = read_all(dir.path(), "");
    let journalctl = Command::new("journalctl")
        .arg("--file")
        .arg(&file)
        .args(["-o", "json", "--all"])
        .output()
        .expect("journalctl runs");
    assert!(journalctl.status.success(), "{}", text(&journalctl.stderr));
    let expected: Vec<Value> = text(&journalctl.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("journalctl JSON"))
        .collect();
    assert_eq!(expected.len(), count);
    assert_eq!(events.len(), count, "one event per entry");

    for (event, entry) in events.iter().zip(&expected) {
        assert_same_fields(event, entry);
    }

    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds,
        [
            "journal.entry",
            "journal.unit_error",
            "journal.entry",
            "journal.entry",
            "journal.entry",
            "journal.unit_error"
        ]
    );
    let severities: Vec<&str> = events
        .iter()
        .map(|e| e["severity"].as_str().expect("severity"))
        .collect();
    assert_eq!(
        severities,
        ["info", "error", "warning", "debug", "info", "critical"]
    );
    assert_eq!(events[0]["entities"]["pid"], 12);
    assert_eq!(events[0]["entities"]["comm"], "app");
    assert_eq!(events[0]["entities"]["unit"], "app.service");
    assert_eq!(events[0]["entities"]["pod_name"], "web-7d9f");
    assert_eq!(events[0]["entities"]["pod_namespace"], "shop");
    assert_eq!(
        events[5]["entities"]["unit"], "nginx.service",
        "systemd's message about a unit names that unit"
    );
}

#[test]
fn filters_select_by_unit_identifier_priority_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entry = |unit: &str, ident: &str, priority: &str, tag: &str| {
        vec![
            field("MESSAGE", format!("{unit} {ident} {priority} {tag}")),
            field("_SYSTEMD_UNIT", unit),
            field("SYSLOG_IDENTIFIER", ident),
            field("PRIORITY", priority),
            field("TAG", tag),
        ]
    };
    let entries = vec![
        entry("a.service", "x", "3", "t1"),
        entry("a.service", "x", "6", "t1"),
        entry("b.service", "x", "3", "t1"),
        entry("a.service", "y", "3", "t1"),
        entry("a.service", "x", "2", "t2"),
        entry("c.service", "x", "0", "t1"),
    ];
    journal_file(
        dir.path(),
        "filters",
        &export(entries, 1_700_000_000_000_000),
    );
    let messages = |extra: &str| -> Vec<String> {
        read_all(dir.path(), extra)
            .0
            .iter()
            .map(|e| e["message"].as_str().expect("message").to_owned())
            .collect()
    };
    assert_eq!(
        messages(
            ", units: [a.service, c.service], identifiers: [x], priority: err, matches: [TAG=t1]"
        ),
        ["a.service x 3 t1", "c.service x 0 t1"]
    );
    assert_eq!(messages(", priority: crit").len(), 2);
}

#[test]
fn a_truncated_file_is_skipped_with_a_counted_warning_and_the_rest_is_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let entries = |tag: &str| {
        (0..500)
            .map(|n| {
                vec![
                    field("MESSAGE", format!("{tag} {n}")),
                    field("PRIORITY", "6"),
                ]
            })
            .collect::<Vec<_>>()
    };
    journal_file(
        dir.path(),
        "good",
        &export(entries("good"), 1_700_000_000_000_000),
    );
    let bad = journal_file(
        dir.path(),
        "bad",
        &export(entries("bad"), 1_700_000_100_000_000),
    );
    let size = std::fs::metadata(&bad).expect("size").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .expect("opens")
        .set_len(size / 3)
        .expect("truncates");
    let (events, stderr) = read_all(dir.path(), "");
    assert_eq!(events.len(), 500, "the good file is read whole");
    assert!(
        events
            .iter()
            .all(|e| e["message"].as_str().is_some_and(|m| m.starts_with("good"))),
    );
    assert!(
        stderr.contains("bad.journal"),
        "the bad file is named: {stderr}"
    );
    assert_eq!(last_status(&stderr, "dropped"), 1, "and counted: {stderr}");
}

/// A journal of `count` entries in `dir`.
fn numbered_journal(dir: &Path, count: usize) {
    let entries = (0..count).map(|n| {
        vec![
            field("MESSAGE", format!("entry {n}")),
            field("PRIORITY", "6"),
            field("SYSLOG_IDENTIFIER", "numbered"),
        ]
    });
    journal_file(dir, "numbered", &export(entries, 1_700_000_000_000_000));
}

fn collector_to(
    server: &ServerProcess,
    journal: &Path,
    state: &Path,
) -> (Guard, tempfile::NamedTempFile) {
    let yaml = config(&format!(
        "collectors:\n  journald:\n    config: {{ directory: {}, follow: false, state_dir: {} }}\n",
        journal.display(),
        state.display()
    ));
    let child = Command::new(COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args(["--server", &server.address(), "--otel-endpoint", "none"])
        .args(["--flush-interval", "100ms", "--status-interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collector starts");
    (Guard(child), yaml)
}

fn wait_for_stored(store: &Path, at_least: u64) {
    let started = Instant::now();
    while stats(store).0 < at_least {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "events did not arrive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ENTRIES: usize = 100_000;

#[test]
fn sigterm_mid_stream_then_a_restart_delivers_every_entry_exactly_once() {
    let journal = tempfile::tempdir().expect("temp dir");
    let state = tempfile::tempdir().expect("temp dir");
    let store = tempfile::tempdir().expect("temp dir");
    numbered_journal(journal.path(), ENTRIES);
    // Paced, so the stop lands mid-stream however fast the machine is.
    let server = ServerProcess::start(0, store.path(), &["--max-events-per-second", "25000"]);

    let (first, _yaml) = collector_to(&server, journal.path(), state.path());
    wait_for_stored(store.path(), 5_000);
    let out = common::terminate(first);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let first_delivered = last_status(&stderr, "delivered");
    assert!(
        (5_000..ENTRIES as u64).contains(&first_delivered),
        "stopped mid-stream: {first_delivered}"
    );

    let (second, _yaml) = collector_to(&server, journal.path(), state.path());
    let out = second.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let second_delivered = last_status(&stderr, "delivered");
    assert_eq!(
        first_delivered + second_delivered,
        ENTRIES as u64,
        "the restart resumed right after the last stored entry: nothing sent twice"
    );
    assert_eq!(
        stats(store.path()).0,
        ENTRIES as u64,
        "every entry stored once"
    );
}

#[test]
fn sigkill_mid_stream_then_a_restart_stores_every_entry_exactly_once() {
    let journal = tempfile::tempdir().expect("temp dir");
    let state = tempfile::tempdir().expect("temp dir");
    let store = tempfile::tempdir().expect("temp dir");
    numbered_journal(journal.path(), ENTRIES);
    // Paced, so the stop lands mid-stream however fast the machine is.
    let server = ServerProcess::start(0, store.path(), &["--max-events-per-second", "25000"]);

    let (first, _yaml) = collector_to(&server, journal.path(), state.path());
    wait_for_stored(store.path(), 20_000);
    let cursor = state.path().join("journald.cursor");
    let started = Instant::now();
    while !cursor.exists() {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "no cursor saved"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(first); // SIGKILL: no drain, no last save.
    let stored = stats(store.path()).0;
    assert!(stored < ENTRIES as u64, "killed mid-stream");
    let saved = std::fs::read_to_string(&cursor).expect("the saved cursor");
    assert!(saved.starts_with("s="), "{saved}");

    let (second, _yaml) = collector_to(&server, journal.path(), state.path());
    let out = second.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        last_status(&stderr, "delivered") < ENTRIES as u64,
        "resumed from the saved cursor, not from the start"
    );
    assert_eq!(
        stats(store.path()).0,
        ENTRIES as u64,
        "none lost, none twice"
    );
}

/// Runs in a private mount namespace: a real systemd-journald on tmpfs, the collector
/// following it, entries written over journald's native socket, a rotation and a vacuum
/// between the three rounds of writes.
const LIVE_SCRIPT: &str = r#"
set -eu
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/log /var/log/journal
mount -t tmpfs tmpfs /run/log
mount -t tmpfs tmpfs /var/log/journal
/lib/systemd/systemd-journald >"$WORK/journald.log" 2>&1 &
JOURNALD=$!
trap 'kill $JOURNALD 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
"$COLLECTOR" --config "$CONFIG" --server none --stdout --otel-endpoint none \
  >"$WORK/events.jsonl" 2>"$WORK/collector.log" &
AGENT=$!
write() {
  python3 -c '
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect("/run/systemd/journal/socket")
for n in range(int(sys.argv[1]), int(sys.argv[2])):
    text = ("live %d" % n + ("\nsecond line" if n % 100 == 0 else "")).encode()
    s.send(b"SYSLOG_IDENTIFIER=tapio-live\nPRIORITY=5\nMESSAGE\n" + struct.pack("<Q", len(text)) + text + b"\n")
' "$1" "$2"
}
arrived() {
  for _ in $(seq 600); do
    [ "$(grep -c tapio-live "$WORK/events.jsonl" || true)" -ge "$1" ] && return 0
    sleep 0.05
  done
  echo "only $(grep -c tapio-live "$WORK/events.jsonl" || true) of $1 arrived" >&2
  return 1
}
sleep 0.5
write 0 1000
arrived 1000
kill -USR2 $JOURNALD
sleep 1.2
write 1000 2000
arrived 2000
echo "files before vacuum: $(find /run/log/journal -name '*.journal' | wc -l)" >>"$WORK/steps.log"
journalctl -D /run/log/journal --vacuum-time=1s >>"$WORK/steps.log" 2>&1
echo "files after vacuum: $(find /run/log/journal -name '*.journal' | wc -l)" >>"$WORK/steps.log"
write 2000 3000
arrived 3000
kill -TERM $AGENT
wait $AGENT
echo "collector exit: $?" >>"$WORK/steps.log"
"#;

#[test]
fn a_live_journald_is_followed_across_rotation_and_vacuum() {
    if !common::as_root("a_live_journald_is_followed_across_rotation_and_vacuum") {
        return;
    }
    let work = tempfile::tempdir().expect("temp dir");
    let yaml = config(
        "collectors:\n  journald:\n    config: { directory: /run/log/journal, start_at: head, identifiers: [tapio-live] }\n",
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", LIVE_SCRIPT])
        .env("WORK", work.path())
        .env("COLLECTOR", COLLECTOR)
        .env("CONFIG", yaml.path())
        .output()
        .expect("unshare runs");
    let log = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "script failed: {}\ncollector: {}\njournald: {}",
        text(&out.stderr),
        log("collector.log"),
        log("journald.log")
    );
    let steps = log("steps.log");
    assert!(steps.contains("collector exit: 0"), "{steps}");
    let count = |prefix: &str| -> usize {
        steps
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {steps}"))
    };
    assert!(
        count("files after vacuum: ") < count("files before vacuum: "),
        "the rotated file was vacuumed: {steps}"
    );
    let messages: Vec<String> = log("events.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON event"))
        .filter(|e| e["attributes"]["SYSLOG_IDENTIFIER"] == "tapio-live")
        .map(|e| e["message"].as_str().expect("message").to_owned())
        .collect();
    let expected: Vec<String> = (0..3000)
        .map(|n| {
            if n % 100 == 0 {
                format!("live {n}\nsecond line")
            } else {
                format!("live {n}")
            }
        })
        .collect();
    assert_eq!(messages.len(), 3000, "every entry once");
    assert_eq!(messages, expected, "in order, multi-line ones whole");
}
