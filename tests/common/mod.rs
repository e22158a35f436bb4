//! Helpers shared by the integration tests: the binaries, temp configs, real server
//! processes on free loopback ports, and reading status lines.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// A real tapio-server process on a loopback port.
pub struct ServerProcess {
    pub guard: Guard,
    pub port: u16,
}

impl ServerProcess {
    /// Starts a server on `port` with its store in `dir`, plus `extra` flags, and waits
    /// until it accepts connections.
    pub fn start(port: u16, dir: &Path, extra: &[&str]) -> Self {
        let child = Command::new(SERVER)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir)
            .args(["--sync", "normal"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        let server = Self {
            guard: Guard(child),
            port,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
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
    let out = Command::new(SERVER)
        .arg("stats")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("stats runs");
    assert!(out.status.success(), "stats failed: {}", text(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats is JSON");
    (
        value["events_total"].as_u64().expect("events_total"),
        value["batches_total"].as_u64().expect("batches_total"),
    )
}
