//! Helpers shared by the integration tests: the binaries, temp configs, real server
//! processes on free loopback ports, and reading status lines.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod peers;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const COLLECTOR: &str = env!("CARGO_BIN_EXE_tapio-collector");
pub const SERVER: &str = env!("CARGO_BIN_EXE_tapio-server");

/// Writes `yaml` to a temporary config file that lives as long as the returned guard.
pub fn config(yaml: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::fs::write(file.path(), yaml).expect("write config");
    file
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of `key=N` in the last status line.
pub fn last_status(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("Status: "))
        .unwrap_or_else(|| panic!("no status line in:\n{stderr}"));
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .expect("a number")
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Kills the child if a test fails before it exits.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits for the child to exit, failing the test after `limit`.
    pub fn wait_for(mut self, limit: Duration) -> Output {
        let started = Instant::now();
        loop {
            if self.0.try_wait().expect("try_wait").is_some() {
                let child = std::mem::replace(
                    &mut self.0,
                    Command::new("true").spawn().expect("true runs"),
                );
                return child.wait_with_output().expect("output");
            }
            assert!(
                started.elapsed() < limit,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The collector with `--config yaml` and `args`, its stdout discarded and its log kept
/// for the exit.
pub fn collector(yaml: &Path, args: &[&str]) -> Guard {
    Guard(
        Command::new(COLLECTOR)
            .arg("--config")
            .arg(yaml)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("collector starts"),
    )
}

/// Bytes of the spool segments in `dir` (0 when it is gone).
pub fn spool_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "spool"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// A real tapio-server process on a loopback port.
pub struct ServerProcess {
    pub guard: Guard,
    pub port: u16,
    /// Its log (stderr) so far.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ServerProcess {
    /// Starts a server on `port` (0: a port the kernel picks) with its store in `dir`, plus
    /// `extra` flags, and waits for its "Listening." log line, which names the bound port.
    pub fn start(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(SERVER);
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .args(["--sync", "normal"])
            .args(extra);
        Self::spawn(command)
    }

    /// Starts the server `command` runs (under a shell, for instance) and waits for its
    /// "Listening." line.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut seen = String::new();
        let bound = loop {
            let mut line = String::new();
            let read = stderr.read_line(&mut line).expect("reads server log");
            assert!(read > 0, "server exited before listening:\n{seen}");
            seen.push_str(&line);
            if line.contains("Listening.") {
                let addr = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("addr="))
                    .expect("the log line names the address");
                break addr.parse::<SocketAddr>().expect("an address").port();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut log = kept.lock().expect("lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            guard: Guard(child),
            port: bound,
            log,
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// `host:port` for the collector's --server flag.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(mut self) {
        self.guard.0.kill().expect("kill");
        self.guard.0.wait().expect("reaped");
    }
}

/// `tapio-server stats` on a store: (`events_total`, `batches_total`).
pub fn stats(dir: &Path) -> (u64, u64) {
    stats_of(&["--data-dir", dir.to_str().expect("utf-8 path")])
}

/// `tapio-server stats` on the store `args` name (`--store URL` or `--data-dir DIR`).
pub fn stats_of(args: &[&str]) -> (u64, u64) {
    let out = Command::new(SERVER)
        .arg("stats")
        .args(args)
        .output()
        .expect("stats runs");
    assert!(out.status.success(), "stats failed: {}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats is JSON");
    (
        value["events_total"].as_u64().expect("events_total"),
        value["batches_total"].as_u64().expect("batches_total"),
    )
}

/// Records that `test` cannot run here and why (scripts/test counts the lines of
/// `TAPIO_SKIP_LOG`), and returns false; under `TAPIO_REQUIRE_EBPF=1` (CI, as root) it fails
/// the test instead.
pub fn skip(test: &str, reason: &str) -> bool {
    assert!(
        std::env::var("TAPIO_REQUIRE_EBPF").as_deref() != Ok("1"),
        "{test}: TAPIO_REQUIRE_EBPF=1 but {reason}"
    );
    record_skip(test, reason)
}

/// Records a skip that CI has no means to avoid either (no cluster exists here), and
/// returns false.
pub fn record_skip(test: &str, reason: &str) -> bool {
    eprintln!("SKIPPED {test}: {reason}");
    if let Ok(log) = std::env::var("TAPIO_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            // One write per line: appends of one write each do not interleave.
            let _ = file.write_all(format!("{test}: {reason}\n").as_bytes());
        }
    }
    false
}

/// Whether `test` can run as root here (mount namespaces, a private journald or systemd);
/// records the skip otherwise.
pub fn as_root(test: &str) -> bool {
    rustix::process::geteuid().is_root() || skip(test, "needs root (a private mount namespace)")
}

/// A collector process whose stdout events and stderr log are collected as they come.
pub struct Running {
    pub guard: Guard,
    pub events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Starts the collector with `--config config`, `--stdout` and `args`.
pub fn spawn_collector(config: &Path, args: &[&str]) -> Running {
    let mut child = Command::new(COLLECTOR)
        .arg("--config")
        .arg(config)
        .args(["--stdout", "--otel-endpoint", "none"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("collector starts");
    let (stdout, stderr) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let running = Running {
        guard: Guard(child),
        events: std::sync::Arc::default(),
        log: std::sync::Arc::default(),
    };
    let (events, log) = (
        std::sync::Arc::clone(&running.events),
        std::sync::Arc::clone(&running.log),
    );
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let event = serde_json::from_str(&line).expect("a JSON event");
            events.lock().expect("lock").push(event);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log.lock().expect("lock").push_str(&(line + "\n"));
        }
    });
    running
}

impl Running {
    /// The events so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().expect("lock").clone()
    }

    /// The events of type `kind` so far.
    pub fn of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"] == kind)
            .collect()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// Waits until `count` events of type `kind` arrived, failing after a minute.
    pub fn wait_for(&self, kind: &str, count: usize) -> Vec<serde_json::Value> {
        let started = Instant::now();
        loop {
            let found = self.of(kind);
            if found.len() >= count {
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_mins(1),
                "no {count} {kind} in {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit, which must be a success.
    pub fn stop(self) {
        let log = std::sync::Arc::clone(&self.log);
        let status = terminate(self.guard);
        assert!(status.status.success(), "{}", log.lock().expect("lock"));
    }
}

/// SIGTERM to the child, then its output within 30 s.
pub fn terminate(guard: Guard) -> Output {
    let kill = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    guard.wait_for(Duration::from_secs(30))
}

/// A real OTLP/gRPC trace receiver (`tests/peers/otlp_receiver.py`, on `PyPI`'s
/// opentelemetry-proto and grpcio) printing each span it gets as JSON; killed on drop.
pub struct OtlpReceiver {
    child: Child,
    pub port: u16,
    spans: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/setup installs the receiver's packages)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .expect("the receiver says where it listens (did scripts/setup run?)");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&spans);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let span: serde_json::Value = serde_json::from_str(&line).expect("a JSON span");
                sink.lock().expect("lock").push(span);
            }
        });
        Self { child, port, spans }
    }

    /// The spans received once at least `count` have arrived (or after `limit`).
    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans.lock().expect("lock").clone();
            if spans.len() >= count || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `port`: (status line, body).
pub fn http_get(port: u16, path: &str) -> (String, String) {
    http(port, "GET", path)
}

/// `method path` on `port`: (status line, body).
pub fn http(port: u16, method: &str, path: &str) -> (String, String) {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("sends");
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).expect("reads");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}
