//! Real processes for the end-to-end benches: a tapio-server with a fresh store, the
//! collector's `/metrics`, and what /proc says of a process.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Peak RSS of a process so far, from /proc.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// Lets the kernel finish writing back earlier files (the build, the previous run's store)
/// first, so one run's I/O does not land in the next one's figure.
pub fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// A port free on loopback a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("addr").port()
}

/// A tapio-server process with a fresh store.
pub struct ServerRun {
    child: std::process::Child,
    /// Its gRPC port on loopback.
    pub port: u16,
    /// Its store's directory.
    pub dir: tempfile::TempDir,
}

impl ServerRun {
    /// Starts one with `--sync full`, once the writeback of earlier runs has settled.
    pub fn start() -> Self {
        settle();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tapio-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--sync", "full"])
            .args(["--log-level", "warn"])
            .arg("--data-dir")
            .arg(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, port, dir }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Events in its store, from `tapio-server stats`.
    pub fn events_total(&self) -> u64 {
        let totals = Command::new(env!("CARGO_BIN_EXE_tapio-server"))
            .arg("stats")
            .arg("--data-dir")
            .arg(self.dir.path())
            .output()
            .expect("stats");
        let value: serde_json::Value = serde_json::from_slice(&totals.stdout).expect("JSON");
        value["events_total"].as_u64().expect("events_total")
    }
}

impl Drop for ServerRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /metrics`.
pub fn scrape(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    stream.read_to_string(&mut page).ok()?;
    Some(page)
}

/// The sum of the samples whose name and labels start with `prefix`.
pub fn sum(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Whether the default kernel collectors can run here; if not, says why under `bench`'s
/// name, and fails under `TAPIO_REQUIRE_EBPF=1`.
pub fn kernel_collectors_here(bench: &str) -> bool {
    let Some(reason) = tapio::collectors::ebpf::unsupported_here() else {
        return true;
    };
    assert!(
        std::env::var("TAPIO_REQUIRE_EBPF").as_deref() != Ok("1"),
        "{bench} bench: TAPIO_REQUIRE_EBPF=1 but {reason}"
    );
    println!("{bench}: without the kernel collectors: {reason}");
    false
}

/// `tapio-collector` with `config`, delivering to `server`, serving `/metrics` on
/// `metrics`, with the default kernel collectors too when `kernel`.
pub fn start_collector(config: &Path, server: &ServerRun, metrics: u16, kernel: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tapio-collector"));
    command
        .arg("--config")
        .arg(config)
        .args(["--server", &format!("127.0.0.1:{}", server.port)])
        .args(["--log-level", "warn"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")]);
    if kernel {
        command.arg("--enable-ebpf");
    }
    command
        .stderr(Stdio::null())
        .spawn()
        .expect("collector starts")
}

/// SIGTERM, then checks that the collector drained and exited cleanly.
pub fn stop_collector(mut collector: Child) {
    let pid = i32::try_from(collector.id()).expect("a pid");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).expect("a pid"),
        rustix::process::Signal::TERM,
    );
    assert!(
        collector.wait().expect("waits").success(),
        "collector failed"
    );
}
