//! The kernel collectors against the real kernel, as root: each test starts the collector's
//! pipeline in-process, makes something happen (its own child, port, name) and waits for
//! the matching event. The machine is shared, so every match is on the test's own pids,
//! ports and names.
//!
//! Without root or BPF each test skips with a reason; with `TAPIO_REQUIRE_EBPF=1` (CI) it
//! fails instead.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapio::collectors::BuildContext;
use tapio::collectors::ebpf::unsupported_here;
use tapio::config::Config;
use tapio::event::{AttrValue, Event};
use tapio::manager::{FanIn, Manager};
use tapio::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

/// Whether the test can run; records the skip (see scripts/test) or fails under CI.
fn can_run(test: &str) -> bool {
    match unsupported_here() {
        None => true,
        Some(reason) => common::skip(test, &reason),
    }
}

/// Collectors from a YAML `collectors:` map, running into an in-process pipeline.
struct Pipeline {
    fan_in: FanIn,
    // Received but not yet asked for: one read can bring the events of several waits.
    backlog: Vec<Event>,
    shutdown: CancellationToken,
    telemetry: Arc<Telemetry>,
}

impl Pipeline {
    async fn start(collectors_yaml: &str) -> Self {
        Self::with_queue(collectors_yaml, 65_536).await
    }

    /// Collectors whose queues into the pipeline hold `capacity` events each.
    async fn with_queue(collectors_yaml: &str, capacity: usize) -> Self {
        let config = Config::from_yaml(collectors_yaml, "test").expect("valid config");
        let telemetry = Arc::new(Telemetry::default());
        let shutdown = CancellationToken::new();
        let mut manager = Manager::new(Arc::clone(&telemetry), capacity, shutdown.clone());
        let context = BuildContext {
            node_name: "test-node".into(),
            directory: tapio::metadata::PodDirectory::new(),
        };
        for built in config.collectors.build(&context) {
            let name = built.name;
            assert!(manager.start(built).await, "collector {name} starts");
        }
        Self {
            fan_in: manager.into_fan_in(),
            backlog: Vec::new(),
            shutdown,
            telemetry,
        }
    }

    /// The first event for which `wanted` holds, within `limit`.
    async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + limit;
        let mut searched = 0;
        loop {
            if let Some(at) = self.backlog[searched..].iter().position(&wanted) {
                return self.backlog.remove(searched + at);
            }
            searched = self.backlog.len();
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} within {limit:?}; status: {}",
                self.telemetry.status_line()
            );
            let received =
                tokio::time::timeout(left, self.fan_in.recv_many(&mut self.backlog, 4096)).await;
            if let Ok(0) = received {
                panic!("the pipeline closed before a {what}");
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn int(event: &Event, key: &str) -> Option<i64> {
    match event.attributes.get(key) {
        Some(AttrValue::Int(n)) => Some(*n),
        _ => None,
    }
}

fn text<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    match event.attributes.get(key) {
        Some(AttrValue::Str(s)) => Some(s),
        _ => None,
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_reports_a_childs_exec_and_its_exit_code() {
    if !can_run("kernel_reports_a_childs_exec_and_its_exit_code") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  kernel: {}\n").await;
    let marker = format!("tapio-exec-test-{}", std::process::id());
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exit 7", &marker])
        .spawn()
        .expect("spawns sh");
    let pid = child.id();
    assert_eq!(child.wait().expect("waits").code(), Some(7));

    let exec = pipeline
        .wait_for("exec of the child", WAIT, |e| {
            e.kind == "process.exec" && e.entities.pid == pid
        })
        .await;
    assert_eq!(text(&exec, "filename"), Some("/bin/sh"));
    let args = text(&exec, "args").expect("args");
    assert!(
        args.contains("exit 7") && args.contains(&marker),
        "args: {args}"
    );
    assert_eq!(int(&exec, "ppid"), Some(i64::from(std::process::id())));
    assert_eq!(exec.source, "kernel");
    assert_eq!(&*exec.entities.node, "test-node");
    assert!(exec.entities.cgroup_id != 0, "cgroup id stamped");

    let exit = pipeline
        .wait_for("exit of the child", WAIT, |e| {
            e.kind == "process.exit" && e.entities.pid == pid
        })
        .await;
    assert_eq!(int(&exit, "exit_code"), Some(7));
    assert_eq!(int(&exit, "signal"), Some(0));
    assert_eq!(&*exit.entities.comm, "sh");
    let now = tapio::event::unix_nanos_now();
    assert!(
        exit.timestamp <= now && now - exit.timestamp < 60_000_000_000,
        "kernel time maps to wall time: {} vs now {now}",
        exit.timestamp
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_reports_a_signal_as_the_cause_of_death() {
    if !can_run("kernel_reports_a_signal_as_the_cause_of_death") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  kernel: {}\n").await;
    let mut child = Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .expect("spawns sleep");
    let pid = child.id();
    child.kill().expect("kills");
    let _ = child.wait();
    let exit = pipeline
        .wait_for("exit of the killed child", WAIT, |e| {
            e.kind == "process.exit" && e.entities.pid == pid
        })
        .await;
    assert_eq!(int(&exit, "signal"), Some(9));
    assert_eq!(exit.severity, tapio::event::Severity::Warning);
}

#[test]
fn without_privileges_the_kernel_collector_says_why_and_the_others_run() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "collectors:\n  kernel: {}\n  synthetic: { config: { events: 500, rate: 0 } }\n",
    )
    .expect("writes config");
    for path in [dir.path(), config.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let collector = env!("CARGO_BIN_EXE_tapio-collector");
    let args = [
        "--config",
        config.to_str().expect("utf-8"),
        "--server",
        "none",
        "--stdout",
    ];
    let root = rustix::process::geteuid().is_root();
    // As root, drop to nobody for this one run; otherwise the test already lacks privileges.
    let out = if root {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                collector,
            ])
            .args(args)
            .output()
    } else {
        Command::new(collector).args(args).output()
    }
    .expect("collector runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let refusals: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("collector=\"kernel\"") || l.contains("collector=kernel"))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one clear line about the kernel collector:\n{stderr}"
    );
    assert!(refusals[0].contains("needs root"), "{}", refusals[0]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        500,
        "synthetic delivered all: {stderr}"
    );
}

/// A memory cgroup with a small limit, removed on drop; v2 or v1, whichever the host has.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn create(name: &str, limit_bytes: u64) -> Self {
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            std::path::Path::new("/sys/fs/cgroup").join(name)
        } else {
            std::path::Path::new("/sys/fs/cgroup/memory").join(name)
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creates {}: {e}", dir.display()));
        let write = |file: &str, value: &str| {
            std::fs::write(dir.join(file), value).unwrap_or_else(|e| panic!("writes {file}: {e}"));
        };
        if v2 {
            write("memory.max", &limit_bytes.to_string());
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        } else {
            write("memory.limit_in_bytes", &limit_bytes.to_string());
            let _ = std::fs::write(dir.join("memory.swappiness"), "0");
        }
        Self { dir }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The killed child may take a moment to leave the cgroup.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reports_the_oom_kill_of_a_child_past_its_cgroup_limit() {
    if !can_run("memory_reports_the_oom_kill_of_a_child_past_its_cgroup_limit") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  memory: {}\n").await;
    let cgroup = MemoryCgroup::create(&format!("tapio-oom-test-{}", std::process::id()), 32 << 20);
    // The child moves itself into the cgroup, then `tail` buffers an endless line.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
        cgroup.dir.display()
    );
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawns sh");
    let pid = child.id();
    let status = child.wait().expect("waits");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the child was OOM-killed: {status:?}"
    );
    let oom = pipeline
        .wait_for("OOM kill of the child", WAIT, |e| {
            e.kind == "memory.oom_kill" && e.entities.pid == pid
        })
        .await;
    assert_eq!(&*oom.entities.comm, "tail");
    assert_eq!(int(&oom, "victim_pid"), Some(i64::from(pid)));
    assert_eq!(oom.severity, tapio::event::Severity::Critical);
    let rss = int(&oom, "anon_rss_bytes").expect("anon rss");
    assert!(
        rss > 8 << 20 && rss <= 64 << 20,
        "anon rss near the 32 MiB limit: {rss}"
    );
    drop(cgroup);
}

fn flag(event: &Event, key: &str) -> Option<bool> {
    match event.attributes.get(key) {
        Some(AttrValue::Bool(b)) => Some(*b),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_signals_names_the_sibling_that_sent_sigkill() {
    if !can_run("runtime_signals_names_the_sibling_that_sent_sigkill") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  runtime-signals: {}\n  kernel: {}\n").await;
    let mut victim = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawns sleep");
    let victim_pid = victim.id();
    // The sibling: a second child of this test, not the victim's parent.
    let mut sibling = Command::new("/bin/sh")
        .args(["-c", &format!("kill -KILL {victim_pid}")])
        .spawn()
        .expect("spawns sh");
    let sibling_pid = sibling.id();
    assert!(sibling.wait().expect("waits").success(), "kill succeeded");
    let status = victim.wait().expect("waits");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let signal = pipeline
        .wait_for("SIGKILL of the victim", WAIT, |e| {
            e.kind == "process.signal" && e.entities.pid == victim_pid
        })
        .await;
    tapio::event::schema::check(&signal).expect("the documented shape");
    assert_eq!(&*signal.entities.comm, "sleep");
    assert_eq!(text(&signal, "signal_name"), Some("SIGKILL"));
    assert_eq!(int(&signal, "signal"), Some(9));
    assert_eq!(int(&signal, "sender_pid"), Some(i64::from(sibling_pid)));
    assert_eq!(text(&signal, "sender_comm"), Some("sh"));
    assert_eq!(flag(&signal, "from_kernel"), Some(false));
    assert_eq!(signal.severity, tapio::event::Severity::Warning);

    // The built-in rules make the signal the root of the victim's exit.
    let exit = pipeline
        .wait_for("exit of the victim", WAIT, |e| {
            e.kind == "process.exit" && e.entities.pid == victim_pid
        })
        .await;
    let mut engine =
        tapio::correlation::build(&tapio::config::CorrelationConfig::default(), "test-node");
    let mut events = [signal, exit];
    events.sort_by_key(|e| e.timestamp);
    for event in &mut events {
        engine.process(event);
    }
    engine.close_all();
    let incidents = engine.take_closed();
    assert_eq!(incidents.len(), 1, "one incident: {incidents:?}");
    let root = events
        .iter()
        .find(|e| e.kind == "process.signal")
        .expect("the signal");
    assert_eq!(incidents[0].root, root.id, "the signal is the root");
    assert_eq!(incidents[0].events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_signals_reports_a_segfault_from_the_kernel_and_its_core_dump() {
    if !can_run("runtime_signals_reports_a_segfault_from_the_kernel_and_its_core_dump") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  runtime-signals: {}\n").await;
    // The core lands in the child's working directory (core_pattern `core` here; with a
    // pipe to a handler the kernel still marks the exit as dumped).
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "ulimit -c unlimited && exec python3 -c 'import ctypes; ctypes.string_at(0)'",
        ])
        .current_dir(dir.path())
        .spawn()
        .expect("spawns sh");
    let pid = child.id();
    let status = child.wait().expect("waits");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(11),
        "python3 segfaulted: {status:?}"
    );
    assert!(
        std::os::unix::process::ExitStatusExt::core_dumped(&status),
        "the child dumped core: {status:?}"
    );
    let signal = pipeline
        .wait_for("SIGSEGV of the child", WAIT, |e| {
            e.kind == "process.signal" && e.entities.pid == pid
        })
        .await;
    assert_eq!(text(&signal, "signal_name"), Some("SIGSEGV"));
    assert_eq!(
        flag(&signal, "from_kernel"),
        Some(true),
        "a fault: {signal:?}"
    );
    assert_eq!(int(&signal, "sender_pid"), Some(i64::from(pid)));
    let core = pipeline
        .wait_for("core dump of the child", WAIT, |e| {
            e.kind == "process.core_dump" && e.entities.pid == pid
        })
        .await;
    tapio::event::schema::check(&core).expect("the documented shape");
    assert_eq!(int(&core, "signal"), Some(11));
    assert_eq!(&*core.entities.comm, "python3");
}

/// A mount, unmounted on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A loop device over a file, detached on drop: a disk only the test writes to.
struct LoopDevice {
    path: String,
}

impl LoopDevice {
    fn over(file: &std::path::Path, bytes: u64) -> Self {
        std::fs::File::create(file)
            .and_then(|f| f.set_len(bytes))
            .unwrap_or_else(|e| panic!("creates {}: {e}", file.display()));
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("runs losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        }
    }

    /// Its name as the kernel's block layer knows it, e.g. `loop3`.
    fn name(&self) -> &str {
        self.path.trim_start_matches("/dev/")
    }

    /// Writes `blocks` of 64 KiB with `O_DIRECT`; whether dd succeeded.
    fn write(&self, blocks: u32) -> bool {
        Command::new("dd")
            .args(["if=/dev/zero", "bs=64k", "oflag=direct"])
            .arg(format!("of={}", self.path))
            .arg(format!("count={blocks}"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("runs dd")
            .success()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_io_reports_a_latency_spike_once_and_its_recovery() {
    if !can_run("storage_io_reports_a_latency_spike_once_and_its_recovery") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let device = LoopDevice::over(&dir.path().join("disk"), 16 << 20);
    // A line every request crosses (they take microseconds), on this device alone.
    let yaml = format!(
        "collectors:\n  storage-io: {{ config: {{ interval: 200ms, latency_threshold: 0.001ms, min_requests: 1, devices: [{}] }} }}\n",
        device.name()
    );
    let mut pipeline = Pipeline::start(&yaml).await;
    assert!(device.write(64), "dd wrote to {}", device.path);
    let spike = pipeline
        .wait_for("latency spike on the loop device", WAIT, |e| {
            e.kind == "block.latency_spike" && text(e, "op") == Some("write")
        })
        .await;
    tapio::event::schema::check(&spike).expect("the documented shape");
    assert_eq!(text(&spike, "device"), Some(device.name()));
    assert!(int(&spike, "requests").is_some_and(|n| n >= 1), "{spike:?}");
    assert!(int(&spike, "p99_us").is_some_and(|us| us >= 1), "{spike:?}");
    assert_eq!(spike.severity, tapio::event::Severity::Warning);
    // Idle from here: the next reading is back under the line, said once.
    let recovered = pipeline
        .wait_for("recovery of the loop device", WAIT, |e| {
            e.kind == "block.latency_recovered" && text(e, "op") == Some("write")
        })
        .await;
    assert_eq!(text(&recovered, "device"), Some(device.name()));
    assert!(
        !pipeline
            .backlog
            .iter()
            .any(|e| e.kind == "block.latency_spike"),
        "one spike per crossing: {:?}",
        pipeline.backlog
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_io_reports_failed_writes_of_a_device_out_of_space() {
    if !can_run("storage_io_reports_failed_writes_of_a_device_out_of_space") {
        return;
    }
    // A 16 MiB loop device over a file on a 1 MiB tmpfs: writes past 1 MiB fail.
    let dir = tempfile::tempdir().expect("temp dir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tapio-test"])
        .arg(dir.path())
        .status()
        .expect("runs mount");
    assert!(status.success(), "mounts a tmpfs");
    let _unmount = Unmount(dir.path().to_owned());
    let device = LoopDevice::over(&dir.path().join("disk"), 16 << 20);
    let yaml = format!(
        "collectors:\n  storage-io: {{ config: {{ interval: 200ms, devices: [{}] }} }}\n",
        device.name()
    );
    let mut pipeline = Pipeline::start(&yaml).await;
    assert!(!device.write(64), "writes past the tmpfs's size fail");
    let error = pipeline
        .wait_for("I/O error on the loop device", WAIT, |e| {
            e.kind == "block.io_error" && text(e, "device") == Some(device.name())
        })
        .await;
    tapio::event::schema::check(&error).expect("the documented shape");
    assert_eq!(text(&error, "op"), Some("write"));
    assert!(
        text(&error, "error").is_some_and(|e| e.starts_with('E')),
        "an errno: {error:?}"
    );
    assert_eq!(error.severity, tapio::event::Severity::Error);
    drop(device);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_io_reports_an_fsync_over_its_line() {
    if !can_run("storage_io_reports_an_fsync_over_its_line") {
        return;
    }
    let mut pipeline = Pipeline::start(
        "collectors:\n  storage-io: { config: { interval: 200ms, fsync_threshold: 0.001ms } }\n",
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=64", "conv=fsync"])
        .arg(format!("of={}", dir.path().join("synced").display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawns dd");
    let pid = child.id();
    assert!(child.wait().expect("waits").success());
    let fsync = pipeline
        .wait_for("slow fsync of dd", WAIT, |e| {
            e.kind == "fs.slow_fsync" && e.entities.pid == pid
        })
        .await;
    tapio::event::schema::check(&fsync).expect("the documented shape");
    assert_eq!(&*fsync.entities.comm, "dd");
    assert!(
        int(&fsync, "duration_us").is_some_and(|us| us >= 1),
        "{fsync:?}"
    );
    assert_eq!(int(&fsync, "result"), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_leak_hunter_sees_the_growth_that_ends_in_an_oom_kill_and_roots_it() {
    if !can_run("memory_leak_hunter_sees_the_growth_that_ends_in_an_oom_kill_and_roots_it") {
        return;
    }
    let mut pipeline = Pipeline::start(
        "collectors:\n  memory: {}\n  memory-leak-hunter: { config: { interval: 100ms, window: 1s } }\n",
    )
    .await;
    // Named as a container runtime names its scope, so both collectors resolve the
    // container from the cgroup.
    let container = format!("{:064x}", u64::from(std::process::id()) << 12 | 0xea5);
    let cgroup = MemoryCgroup::create(&format!("docker-{container}.scope"), 96 << 20);
    // 2 MiB more every 100 ms, written so that it is resident: about 4 s to the limit, long
    // enough for a loaded machine to sample it many times.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c 'import time\nheld = []\nwhile True:\n    held.append(b\"x\" * (2 << 20))\n    time.sleep(0.1)'",
        cgroup.dir.display()
    );
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawns sh");
    let pid = child.id();
    let growth = pipeline
        .wait_for("memory growth of the container", WAIT, |e| {
            e.kind == "memory.growth" && &*e.entities.container_id == container.as_str()
        })
        .await;
    tapio::event::schema::check(&growth).expect("the documented shape");
    assert_eq!(int(&growth, "limit_bytes"), Some(96 << 20));
    assert!(
        int(&growth, "growth_bytes_per_minute").is_some_and(|b| b > 100 << 20),
        "about 1.2 GiB a minute: {growth:?}"
    );
    assert!(
        int(&growth, "seconds_to_limit").is_some_and(|s| (0..60).contains(&s)),
        "{growth:?}"
    );
    // Reaped only after its OOM kill was read, so the kill still finds its cgroup.
    let oom = pipeline
        .wait_for("OOM kill of the child", WAIT, |e| {
            e.kind == "memory.oom_kill" && e.entities.pid == pid
        })
        .await;
    let status = child.wait().expect("waits");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "OOM-killed: {status:?}"
    );
    assert_eq!(&*oom.entities.container_id, container.as_str());
    let mut engine =
        tapio::correlation::build(&tapio::config::CorrelationConfig::default(), "test-node");
    let root = growth.id;
    let mut events = [growth, oom];
    events.sort_by_key(|e| e.timestamp);
    for event in &mut events {
        engine.process(event);
    }
    engine.close_all();
    let incidents = engine.take_closed();
    assert_eq!(incidents.len(), 1, "one incident: {incidents:?}");
    assert_eq!(incidents[0].root, root, "the growth is the root");
    let prevention: Vec<&String> = incidents[0]
        .predictions
        .iter()
        .flat_map(|p| &p.prevention)
        .collect();
    assert!(
        prevention
            .iter()
            .any(|p| p.contains("reaches its 96 MiB limit in")),
        "the time to the limit is in the predictions: {prevention:?}"
    );
    drop(cgroup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_leak_hunter_reports_a_storm_of_major_page_faults_and_its_end() {
    if !can_run("memory_leak_hunter_reports_a_storm_of_major_page_faults_and_its_end") {
        return;
    }
    let mut pipeline = Pipeline::start(
        "collectors:\n  memory-leak-hunter: { config: { interval: 100ms, window: 1s, major_faults_per_second: 100 } }\n",
    )
    .await;
    let container = format!("{:064x}", u64::from(std::process::id()) << 12 | 0xfa7);
    let cgroup = MemoryCgroup::create(&format!("docker-{container}.scope"), 256 << 20);
    // A 32 MiB file, synced so that its pages can be dropped, then read back through a
    // mapping with readahead off: one major fault per page. The reader first waits for
    // the collector to have sampled its cgroup once, the baseline of the rate.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pages");
    std::fs::write(&file, vec![1u8; 32 << 20]).expect("writes the file");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c '\
import mmap, os, time\n\
time.sleep(0.3)\n\
fd = os.open(\"{}\", os.O_RDONLY)\n\
os.fsync(fd)\n\
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n\
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\n\
m.madvise(mmap.MADV_RANDOM)\n\
print(sum(m[i] for i in range(0, len(m), 4096)))'",
        cgroup.dir.display(),
        file.display()
    );
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("runs sh");
    assert!(status.success(), "the reader ran: {status:?}");
    let storm = pipeline
        .wait_for("page fault storm of the container", WAIT, |e| {
            e.kind == "memory.page_fault_storm" && &*e.entities.container_id == container.as_str()
        })
        .await;
    tapio::event::schema::check(&storm).expect("the documented shape");
    assert!(
        int(&storm, "major_faults_per_second").is_some_and(|n| n >= 100),
        "{storm:?}"
    );
    let ended = pipeline
        .wait_for("end of the storm", WAIT, |e| {
            e.kind == "memory.page_fault_storm_ended"
                && &*e.entities.container_id == container.as_str()
        })
        .await;
    assert!(int(&ended, "major_faults_per_second").is_some_and(|n| n < 100));
    drop(cgroup);
}

/// A cgroup created for a test in the hierarchy at `root`, with its processes killed and
/// the directory removed on drop.
struct TestCgroup {
    dir: std::path::PathBuf,
    children: Vec<std::process::Child>,
}

impl TestCgroup {
    fn create(root: &std::path::Path, name: &str) -> Self {
        let dir = root.join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creates {}: {e}", dir.display()));
        Self {
            dir,
            children: Vec::new(),
        }
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value).unwrap_or_else(|e| panic!("writes {file}: {e}"));
    }

    /// Starts a busy loop in the cgroup, on CPU `cpu` when one is given.
    fn spin(&mut self, cpu: Option<u32>) -> u32 {
        let script = format!(
            "echo $$ > {}/cgroup.procs && while :; do :; done",
            self.dir.display()
        );
        let mut command = if let Some(cpu) = cpu {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "/bin/sh", "-c", &script]);
            c
        } else {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", &script]);
            c
        };
        let child = command.spawn().expect("spawns a spinner");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn stop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.stop();
        // The kernel takes a moment to release the cgroup of processes just reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where cgroup v2 is mounted; these tests need it.
fn cgroup2_root() -> std::path::PathBuf {
    tapio::collectors::ebpf::containers::cgroup2_root().expect("cgroup v2 is mounted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_starvation_reports_a_throttled_container_and_its_end() {
    if !can_run("resource_starvation_reports_a_throttled_container_and_its_end") {
        return;
    }
    let mut pipeline = Pipeline::start(
        "collectors:\n  resource-starvation: { config: { interval: 300ms, throttled_ratio: 0.5 } }\n",
    )
    .await;
    let container = format!("{:064x}", u64::from(std::process::id()) << 12 | 0xc90);
    let name = format!("docker-{container}.scope");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut cgroup = if v2 {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
        let cgroup = TestCgroup::create(std::path::Path::new("/sys/fs/cgroup"), &name);
        cgroup.write("cpu.max", "10000 100000");
        cgroup
    } else {
        let cgroup = TestCgroup::create(std::path::Path::new("/sys/fs/cgroup/cpu"), &name);
        cgroup.write("cpu.cfs_period_us", "100000");
        cgroup.write("cpu.cfs_quota_us", "10000");
        cgroup
    };
    // 10% of a CPU for a loop that wants all of one: throttled every period.
    cgroup.spin(None);
    let throttled = pipeline
        .wait_for("throttling of the container", WAIT, |e| {
            e.kind == "cpu.throttled" && &*e.entities.container_id == container.as_str()
        })
        .await;
    tapio::event::schema::check(&throttled).expect("the documented shape");
    assert_eq!(int(&throttled, "quota_us"), Some(10_000));
    assert_eq!(int(&throttled, "period_us"), Some(100_000));
    assert!(
        int(&throttled, "throttled_periods").is_some_and(|n| n >= 1),
        "{throttled:?}"
    );
    cgroup.stop();
    pipeline
        .wait_for("end of the throttling", WAIT, |e| {
            e.kind == "cpu.throttled_ended" && &*e.entities.container_id == container.as_str()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_starvation_reports_run_queue_waits_and_pressure_of_a_crowded_cpu() {
    if !can_run("resource_starvation_reports_run_queue_waits_and_pressure_of_a_crowded_cpu") {
        return;
    }
    let mut pipeline = Pipeline::start(
        "collectors:\n  resource-starvation: { config: { interval: 200ms, runqueue_threshold: 1ms, min_wakeups: 1, pressure_threshold: 0.5 } }\n",
    )
    .await;
    let container = format!("{:064x}", u64::from(std::process::id()) << 12 | 0xc90d);
    let mut cgroup = TestCgroup::create(
        &cgroup2_root(),
        &format!("cri-containerd-{container}.scope"),
    );
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(&cgroup.dir).expect("the cgroup exists"),
    );
    // Three loops on one CPU: each waits while the others run.
    for _ in 0..3 {
        cgroup.spin(Some(0));
    }
    let waits = pipeline
        .wait_for("run-queue waits of the crowded cgroup", WAIT, |e| {
            e.kind == "cpu.runqueue_latency" && e.entities.cgroup_id == cgroup_id
        })
        .await;
    tapio::event::schema::check(&waits).expect("the documented shape");
    assert!(
        int(&waits, "p99_us").is_some_and(|us| us >= 1000),
        "{waits:?}"
    );
    let pressure = pipeline
        .wait_for("CPU pressure", WAIT, |e| {
            e.kind == "pressure.high" && text(e, "resource") == Some("cpu")
        })
        .await;
    tapio::event::schema::check(&pressure).expect("the documented shape");
    let own = pipeline
        .wait_for("CPU pressure of the crowded container", WAIT, |e| {
            e.kind == "pressure.high"
                && text(e, "resource") == Some("cpu")
                && &*e.entities.container_id == container.as_str()
        })
        .await;
    tapio::event::schema::check(&own).expect("the documented shape");
    assert!(text(&own, "cgroup").is_some_and(|c| c.contains(&container)));
    cgroup.stop();
    pipeline
        .wait_for("the cgroup's waits back under the line", WAIT, |e| {
            e.kind == "cpu.runqueue_latency_recovered" && e.entities.cgroup_id == cgroup_id
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_ebpf_reports_a_containers_creation_and_exit_code_from_its_cgroup() {
    if !can_run("cri_ebpf_reports_a_containers_creation_and_exit_code_from_its_cgroup") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  cri-ebpf: {}\n").await;
    // A container as a runtime would make one: a scope named after its id, a process in
    // it, and the scope removed once the process is gone.
    let container = format!("{:064x}", u64::from(std::process::id()) << 12 | 0xc71);
    let dir = cgroup2_root().join(format!("cri-containerd-{container}.scope"));
    let _ = std::fs::remove_dir(&dir);
    // Made by a process under a runtime shim's name, as containerd's shim would.
    let bin = tempfile::tempdir().expect("temp dir");
    let shim = bin.path().join("containerd-shim-runc-v2");
    std::os::unix::fs::symlink("/usr/bin/python3", &shim).expect("links python3");
    let status = Command::new(&shim)
        .args([
            "-c",
            &format!("import os; os.mkdir({:?})", dir.display().to_string()),
        ])
        .status()
        .expect("runs the fake shim");
    assert!(status.success(), "the fake shim made the cgroup");
    let created = pipeline
        .wait_for("creation of the container", WAIT, |e| {
            e.kind == "container.created" && &*e.entities.container_id == container.as_str()
        })
        .await;
    tapio::event::schema::check(&created).expect("the documented shape");
    // The kernel keeps 15 characters of a command's name.
    assert_eq!(text(&created, "runtime_comm"), Some("containerd-shim"));
    let script = format!("echo $$ > {}/cgroup.procs && exit 3", dir.display());
    let status = Command::new("/bin/sh")
        .args(["-c", &script])
        .status()
        .expect("runs sh");
    assert_eq!(status.code(), Some(3));
    let mut removed = false;
    for _ in 0..50 {
        if std::fs::remove_dir(&dir).is_ok() {
            removed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(removed, "the container's cgroup is removed");
    let exit = pipeline
        .wait_for("exit of the container", WAIT, |e| {
            e.kind == "container.exit" && &*e.entities.container_id == container.as_str()
        })
        .await;
    tapio::event::schema::check(&exit).expect("the documented shape");
    assert_eq!(int(&exit, "exit_code"), Some(3), "{exit:?}");
    assert_eq!(text(&exit, "reason"), Some("Error"));
    assert_eq!(exit.severity, tapio::event::Severity::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syscall_errors_counts_a_childs_failing_opens_in_the_kernel() {
    if !can_run("syscall_errors_counts_a_childs_failing_opens_in_the_kernel") {
        return;
    }
    let mut pipeline = Pipeline::start(
        "collectors:\n  syscall-errors: { config: { interval: 200ms, syscalls: [openat] } }\n",
    )
    .await;
    let missing = format!("/nonexistent-tapio-{}", std::process::id());
    let script = format!("i=0; while [ $i -lt 100 ]; do true < {missing}; i=$((i+1)); done");
    // A clean environment: under cargo, LD_LIBRARY_PATH sends the loader through
    // directories where libc is not, each miss a failing openat of its own.
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawns sh");
    let pid = child.id();
    child.wait().expect("waits");
    let mut total = 0;
    while total < 100 {
        let event = pipeline
            .wait_for("openat/ENOENT counts of the child", WAIT, |e| {
                e.kind == "syscall.error" && e.entities.pid == pid
            })
            .await;
        assert_eq!(text(&event, "syscall"), Some("openat"));
        assert_eq!(text(&event, "errno"), Some("ENOENT"));
        total += int(&event, "count").expect("count");
    }
    // Two more intervals: nothing else for the child may come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        pipeline.fan_in.recv_many(&mut rest, 65_536),
    )
    .await;
    pipeline.backlog.extend(rest);
    let extra: i64 = pipeline
        .backlog
        .iter()
        .filter(|e| e.kind == "syscall.error" && e.entities.pid == pid)
        .filter_map(|e| int(e, "count"))
        .sum();
    assert_eq!(total + extra, 100, "exactly one failing openat per loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_reports_connect_accept_close_and_a_refused_connect() {
    if !can_run("network_reports_connect_accept_close_and_a_refused_connect") {
        return;
    }
    network_case("collectors:\n  network: {}\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_with_accept_syscalls_names_the_accepting_process() {
    if !can_run("network_with_accept_syscalls_names_the_accepting_process") {
        return;
    }
    network_case("collectors:\n  network: { config: { accept_syscalls: true } }\n").await;
}

/// Connections to a listener older than the collector and to one it saw start, then a
/// refused connect: every event names this process and the right ports.
async fn network_case(yaml: &str) {
    use std::net::{TcpListener, TcpStream};
    let early = TcpListener::bind("127.0.0.1:0").expect("binds");
    let mut pipeline = Pipeline::start(yaml).await;
    let (pairs, closed_port, _listeners) = tokio::task::spawn_blocking(move || {
        let late = TcpListener::bind("127.0.0.1:0").expect("binds");
        let mut pairs = Vec::new();
        for listener in [&early, &late] {
            let port = listener.local_addr().expect("addr").port();
            let client = TcpStream::connect(("127.0.0.1", port)).expect("connects");
            let client_port = client.local_addr().expect("addr").port();
            let (accepted, _) = listener.accept().expect("accepts");
            drop(client);
            drop(accepted);
            pairs.push((port, client_port));
        }
        // A port that was just free: nothing listens there.
        let closed_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let refused = TcpStream::connect(("127.0.0.1", closed_port)).expect_err("refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // The listeners live on, as a server's do, while the events are read.
        (pairs, closed_port, [early, late])
    })
    .await
    .expect("socket work");
    let me = std::process::id();
    let ports = |e: &Event, kind: &str, sport: u16, dport: u16| {
        e.kind == kind
            && int(e, "sport") == Some(i64::from(sport))
            && int(e, "dport") == Some(i64::from(dport))
    };
    for (port, client_port) in pairs {
        let connect = pipeline
            .wait_for("connect", WAIT, |e| {
                ports(e, "net.tcp.connect", client_port, port)
            })
            .await;
        assert_eq!(
            connect.entities.pid, me,
            "the connecting process, not the softirq's"
        );
        assert_eq!(text(&connect, "daddr"), Some("127.0.0.1"));
        assert_eq!(text(&connect, "new_state"), Some("ESTABLISHED"));
        let accept = pipeline
            .wait_for("accept", WAIT, |e| {
                ports(e, "net.tcp.accept", port, client_port)
            })
            .await;
        assert_eq!(
            accept.entities.pid, me,
            "the accepting process, port {port}"
        );
        for (sport, dport) in [(client_port, port), (port, client_port)] {
            let close = pipeline
                .wait_for("close", WAIT, |e| ports(e, "net.tcp.close", sport, dport))
                .await;
            assert_eq!(close.entities.pid, me, "close {sport}->{dport}");
            assert_eq!(text(&close, "new_state"), Some("CLOSE"));
        }
    }
    let refused = pipeline
        .wait_for("refused connect", WAIT, |e| {
            e.kind == "net.tcp.connect_failed" && int(e, "dport") == Some(i64::from(closed_port))
        })
        .await;
    assert_eq!(text(&refused, "error"), Some("ECONNREFUSED"));
    assert_eq!(refused.entities.pid, me);
    assert_eq!(refused.severity, tapio::event::Severity::Warning);
}

/// A DNS message: one question for `name` (type A), and for answers `rcode` plus `answers`
/// A records of 192.0.2.1.
fn dns_message(id: u16, name: &str, response: Option<(u16, u16)>) -> Vec<u8> {
    let (flags, answers) =
        response.map_or((0x0100, 0), |(rcode, answers)| (0x8180 | rcode, answers));
    let mut message = Vec::new();
    for word in [id, flags, 1, answers, 0, 0] {
        message.extend(word.to_be_bytes());
    }
    for label in name.split('.') {
        message.push(u8::try_from(label.len()).expect("short label"));
        message.extend(label.as_bytes());
    }
    message.extend([0, 0, 1, 0, 1]);
    for _ in 0..answers {
        message.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
    }
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_reports_queries_and_responses_with_rcode_and_latency() {
    use std::net::UdpSocket;
    if !can_run("dns_reports_queries_and_responses_with_rcode_and_latency") {
        return;
    }
    let mut pipeline = Pipeline::start("collectors:\n  dns: {}\n").await;
    let me = std::process::id();
    // A resolver of the test's own on port 53 of a loopback address no one else uses.
    let server_ip = format!("127.53.{}.{}", (me >> 8) % 250 + 1, me % 250 + 1);
    let found = format!("found-{me}.tapio.test");
    let missing = format!("missing-{me}.tapio.test");
    let (found2, missing2, ip) = (found.clone(), missing.clone(), server_ip.clone());
    tokio::task::spawn_blocking(move || {
        let server = UdpSocket::bind((ip.as_str(), 53)).expect("binds port 53");
        let client = UdpSocket::bind("127.0.0.1:0").expect("binds client");
        client.connect((ip.as_str(), 53)).expect("connects");
        for (id, name, rcode, answers) in [(0x1111, &found2, 0, 1), (0x2222, &missing2, 3, 0)] {
            client
                .send(&dns_message(id, name, None))
                .expect("sends query");
            let mut buffer = [0; 512];
            let (_, from) = server.recv_from(&mut buffer).expect("server receives");
            std::thread::sleep(Duration::from_millis(20));
            server
                .send_to(&dns_message(id, name, Some((rcode, answers))), from)
                .expect("answers");
            client.recv(&mut buffer).expect("client receives");
        }
    })
    .await
    .expect("resolver work");

    let named =
        |e: &Event, kind: &str, name: &str| e.kind == kind && text(e, "query_name") == Some(name);
    let query = pipeline
        .wait_for("query", WAIT, |e| named(e, "dns.query", &found))
        .await;
    assert_eq!(query.entities.pid, me, "the process that sent the query");
    assert_eq!(text(&query, "query_type"), Some("A"));
    assert_eq!(text(&query, "server"), Some(server_ip.as_str()));
    let answer = pipeline
        .wait_for("response", WAIT, |e| named(e, "dns.response", &found))
        .await;
    assert_eq!(text(&answer, "rcode"), Some("NOERROR"));
    assert_eq!(int(&answer, "answers"), Some(1));
    assert_eq!(
        answer.entities.pid, me,
        "a response is the asking process's"
    );
    let latency = int(&answer, "latency_us").expect("latency");
    assert!(
        (20_000..2_000_000).contains(&latency),
        "the resolver took 20 ms: {latency} us"
    );
    assert_eq!(answer.severity, tapio::event::Severity::Info);

    pipeline
        .wait_for("query", WAIT, |e| named(e, "dns.query", &missing))
        .await;
    let nxdomain = pipeline
        .wait_for("response", WAIT, |e| named(e, "dns.response", &missing))
        .await;
    assert_eq!(text(&nxdomain, "rcode"), Some("NXDOMAIN"));
    assert_eq!(nxdomain.severity, tapio::event::Severity::Warning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_lost_in_a_full_ring_buffer_are_counted_and_shown() {
    if !can_run("records_lost_in_a_full_ring_buffer_are_counted_and_shown") {
        return;
    }
    // One page of ring buffer, and a queue of one event that nobody reads yet: the
    // collector blocks on the queue, the ring buffer fills, the kernel counts what it lost.
    let mut pipeline = Pipeline::with_queue(
        "collectors:\n  kernel: { config: { ring_buffer_bytes: 4096 } }\n",
        1,
    )
    .await;
    tokio::task::spawn_blocking(|| {
        for _ in 0..100 {
            Command::new("/bin/true").status().expect("runs true");
        }
    })
    .await
    .expect("spawns");
    // Drain until the reported count has been read twice (reports come every second) and
    // stopped growing: the first report can come while the ring is still overflowing.
    let deadline = Instant::now() + WAIT;
    let mut drained = Vec::new();
    let mut previous = None;
    let mut steady_since = Instant::now();
    let lost = loop {
        let line = pipeline.telemetry.status_line();
        let count = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("kernel/ring_buffer_full="))
            .map(|n| n.parse::<u64>().expect("a count"));
        if count != previous {
            previous = count;
            steady_since = Instant::now();
        } else if let Some(count) = count
            && steady_since.elapsed() > Duration::from_millis(2500)
        {
            break count;
        }
        assert!(
            Instant::now() < deadline,
            "no settled ring_buffer_full in: {line}"
        );
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            pipeline.fan_in.recv_many(&mut drained, 4096),
        )
        .await;
    };
    // 100 execs and 100 exits, about 64 KiB of records, through 4 KiB.
    assert!(lost > 50, "lost {lost}");
    let line = pipeline.telemetry.status_line();
    let dropped: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("dropped="))
        .and_then(|n| n.parse().ok())
        .expect("dropped=");
    assert!(dropped >= lost, "the total counts the lost records: {line}");
}

/// How the application's worker dies under its request.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Past its memory cgroup's limit.
    Oom,
    /// Killed (`SIGKILL`) by a sibling process.
    Sibling,
}

/// The collector binary with the kernel collectors, the `otel` receiver on `grpc` and
/// semantic correlation, exporting incidents to `receiver`; its log is kept.
fn collector_with_apps(
    grpc: u16,
    receiver: u16,
) -> (
    common::Guard,
    Arc<std::sync::Mutex<String>>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::BufRead as _;
    let yaml = common::config(&format!(
        "collectors:\n  kernel: {{}}\n  memory: {{}}\n  runtime-signals: {{}}\n  otel:\n    config: {{ grpc_listen: \"127.0.0.1:{grpc}\", http_listen: none }}\ncorrelation:\n  mode: semantic\n"
    ));
    let mut child = Command::new(common::COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args([
            "--server",
            "none",
            "--stdout",
            "--otel-endpoint",
            &format!("127.0.0.1:{receiver}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("collector starts");
    // Whether an application span has come out of the pipeline yet.
    let app_span = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::clone(&app_span);
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("\"app.span\"") {
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // The file is read at start; it may go once the collector has read it.
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().expect("lock").push_str(&(line + "\n"));
        }
    });
    // Collectors start in registry order: once the receiver listens, the probes are in.
    let started = Instant::now();
    while !log
        .lock()
        .expect("lock")
        .contains("OTLP receiver listening")
    {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "the collector did not start: {}",
            log.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(yaml);
    (common::Guard(child), log, app_span)
}

/// An application request (a span of the real OpenTelemetry Python SDK) whose worker
/// process dies under it: the kill must reach the OTLP receiver inside the application's
/// trace, as a child of the request's span, and the incident's own trace must link to it.
fn a_killed_worker_is_inside_the_apps_trace(test: &str, kill: Kill) {
    if !can_run(test) {
        return;
    }
    let receiver = common::OtlpReceiver::start();
    let grpc = common::free_port();
    let (collector, log, span_out) = collector_with_apps(grpc, receiver.port);
    let me = std::process::id();
    // The app and its worker share a cgroup, as a container's processes do.
    let app_cgroup = TestCgroup::create(&cgroup2_root(), &format!("tapio-app-{me}-{kill:?}"));
    let memory = matches!(kill, Kill::Oom)
        .then(|| MemoryCgroup::create(&format!("tapio-app-oom-{me}"), 32 << 20));
    let worker = match &memory {
        Some(cgroup) => format!(
            "echo $$ > {}/cgroup.procs && exec tail /dev/zero",
            cgroup.dir.display()
        ),
        None => "exec sleep 30".to_owned(),
    };
    let ready = std::env::temp_dir().join(format!("tapio-app-{me}-{kill:?}.pid"));
    let _ = std::fs::remove_file(&ready);
    let app_script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/otel_app.py");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 {app_script} worker --protocol grpc --endpoint http://127.0.0.1:{grpc} --ready {} -- /bin/sh -c '{worker}'",
        app_cgroup.dir.display(),
        ready.display()
    );
    let app = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the app starts");
    if matches!(kill, Kill::Sibling) {
        let started = Instant::now();
        let pid = loop {
            if let Ok(pid) = std::fs::read_to_string(&ready) {
                break pid;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the worker never ran"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(300));
        let status = Command::new("/bin/sh")
            .args(["-c", &format!("kill -9 {pid}")])
            .status()
            .expect("the sibling runs");
        assert!(status.success());
    }
    let out = app.wait_with_output().expect("the app ends");
    let _ = std::fs::remove_file(&ready);
    assert!(out.status.success(), "the app failed");
    let request: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the app prints its span's ids");
    assert_eq!(
        request["status"], "error",
        "the request failed with its worker"
    );
    let (app_trace, app_span) = (
        request["trace_id"].as_str().expect("trace id").to_owned(),
        request["span_id"].as_str().expect("span id").to_owned(),
    );
    // The span reaches the collector, then the agent stops and exports its incidents.
    let waiting = Instant::now();
    while !span_out.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            waiting.elapsed() < Duration::from_secs(30),
            "the request's span never came through the pipeline: {}",
            log.lock().expect("lock")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = common::terminate(collector);
    assert!(stopped.status.success(), "{}", log.lock().expect("lock"));
    drop(memory);
    drop(app_cgroup);
    let kind = match kill {
        Kill::Oom => "memory.oom_kill",
        Kill::Sibling => "process.signal",
    };
    let log = log.lock().expect("lock").clone();
    assert_inside(&receiver, kind, (&app_trace, &app_span), &log);
}

/// Asserts that `receiver` got a `kind` span in the application's trace, a child of its
/// span, linked to the incident's own span of `kind`, which links back.
fn assert_inside(
    receiver: &common::OtlpReceiver,
    kind: &str,
    (app_trace, app_span): (&str, &str),
    log: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (inside, spans) = loop {
        let spans = receiver.wait_for(1, Duration::from_secs(1));
        let inside = spans
            .iter()
            .find(|s| s["trace_id"] == app_trace && s["name"] == kind);
        if let Some(inside) = inside {
            break (inside.clone(), spans);
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} in the app's trace {app_trace}; spans: {spans:#?}\nlog: {log}"
        );
    };
    assert_eq!(
        inside["parent_span_id"], app_span,
        "a child of the request: {inside:#}"
    );
    let back = inside["links"]
        .as_array()
        .and_then(|l| l.first())
        .unwrap_or_else(|| panic!("linked to its incident: {inside:#}"));
    let incident = spans
        .iter()
        .find(|s| s["trace_id"] == back["trace_id"] && s["span_id"] == back["span_id"])
        .unwrap_or_else(|| panic!("the incident's span {back} was exported: {spans:#?}"));
    assert_eq!(incident["name"], kind);
    assert_ne!(
        incident["trace_id"], app_trace,
        "the incident has its own trace"
    );
    let links_to_app = incident["links"].as_array().is_some_and(|links| {
        links
            .iter()
            .any(|l| l["trace_id"] == app_trace && l["span_id"] == app_span)
    });
    assert!(
        links_to_app,
        "the incident links to the request: {incident:#}"
    );
    // What the two traces hold, for the log (and the README's example).
    for span in spans
        .iter()
        .filter(|s| s["trace_id"] == app_trace || s["trace_id"] == back["trace_id"])
    {
        eprintln!(
            "trace {} span {} parent {} {}: {} links {}",
            span["trace_id"],
            span["span_id"],
            span["parent_span_id"],
            span["name"],
            span["attributes"]["tapio.message"],
            span["links"]
        );
    }
}

#[test]
fn an_oom_killed_worker_is_inside_the_apps_trace() {
    a_killed_worker_is_inside_the_apps_trace(
        "an_oom_killed_worker_is_inside_the_apps_trace",
        Kill::Oom,
    );
}

#[test]
fn a_worker_sigkilled_by_a_sibling_is_inside_the_apps_trace() {
    a_killed_worker_is_inside_the_apps_trace(
        "a_worker_sigkilled_by_a_sibling_is_inside_the_apps_trace",
        Kill::Sibling,
    );
}
