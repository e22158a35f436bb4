//! The kernel collectors' cost, as root against the real kernel, in one run:
//!
//! - overhead: `dd if=/dev/zero of=/dev/null bs=1 count=4M` (8M syscalls) with no probes,
//!   with `tapio-collector --enable-ebpf` (the default probe set) running, with the default
//!   set plus `syscall-errors`, and with bpftrace counting failing syscalls the way
//!   `syscall-errors` does;
//! - signals: a million `kill(self, SIGURG)` (a signal nothing handles) with no probes and
//!   with `runtime-signals` alone, which sees each one and filters it out in the kernel;
//! - block: `dd bs=4k oflag=direct` (one block request per write) with no probes and with
//!   `storage-io` alone;
//! - sampling: `memory-leak-hunter`'s CPU time over 500 container cgroups sampled every
//!   100 ms;
//! - sched: 200 000 round trips between two threads over pipes (`perf bench sched pipe`'s
//!   workload) with no probes and with `resource-starvation` alone;
//! - exits: 5 000 `/bin/true` started and reaped, with no probes and with `cri-ebpf` alone;
//! - drain: how many DNS packets per second the `dns` collector's user-space side takes
//!   from its ring buffer, and how many it loses, against the rate the sender reaches with
//!   no probe attached (the ceiling).
//!
//! Command: `cargo bench --bench ebpf`. Under `cargo test` it runs a small smoke version.
//! Without root or BPF it says why and measures nothing (under `TAPIO_REQUIRE_EBPF=1` it
//! fails). Machine and figures: docs/benchmarks.md.

#![allow(missing_docs, reason = "a bench binary")]
#![allow(
    clippy::cast_precision_loss,
    reason = "counts far below 2^52 become rates"
)]

use std::io::{BufRead as _, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapio::collectors::BuildContext;
use tapio::collectors::ebpf::unsupported_here;
use tapio::config::Config;
use tapio::manager::Manager;
use tapio::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

/// A background process that observes; killed on drop.
struct Observer(Child);

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` and waits until a line of its output contains `ready`.
fn observe(mut command: Command, ready: &str, stderr: bool) -> Observer {
    let mut child = if stderr {
        command.stdout(Stdio::null()).stderr(Stdio::piped())
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::null())
    }
    .spawn()
    .expect("observer starts");
    let output: Box<dyn std::io::Read + Send> = if stderr {
        Box::new(child.stderr.take().expect("stderr"))
    } else {
        Box::new(child.stdout.take().expect("stdout"))
    };
    let mut lines = BufReader::new(output).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains(ready));
    assert!(found, "observer ended before saying {ready:?}");
    // Keep reading so the observer never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Observer(child)
}

fn dd(count: u64) -> Duration {
    let started = Instant::now();
    let status = Command::new("dd")
        .args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=1",
            &format!("count={count}"),
        ])
        .stderr(Stdio::null())
        .status()
        .expect("dd runs");
    assert!(status.success());
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn overhead(count: u64, rounds: usize) {
    let bpftrace = Command::new("bpftrace").arg("--version").output().is_ok();
    let (mut none, mut tapio, mut tapio_all, mut traced) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let dir = tempfile::tempdir().expect("temp dir");
    let with_syscalls = dir.path().join("syscall-errors.yaml");
    std::fs::write(&with_syscalls, "collectors:\n  syscall-errors: {}\n").expect("writes config");
    for _ in 0..rounds {
        none.push(dd(count));
        for (config, times) in [(None, &mut tapio), (Some(&with_syscalls), &mut tapio_all)] {
            let mut command = Command::new(env!("CARGO_BIN_EXE_tapio-collector"));
            command.args([
                "--enable-ebpf",
                "--server",
                "none",
                "--stdout",
                "--correlation",
                "basic",
            ]);
            if let Some(config) = config {
                command.arg("--config").arg(config);
            }
            let _collector = observe(command, "Agent started", true);
            times.push(dd(count));
        }
        if bpftrace {
            let mut command = Command::new("bpftrace");
            command.args([
                "-e",
                "tracepoint:raw_syscalls:sys_exit /args->ret < 0 && args->ret >= -4095/ { @[pid, args->id, -args->ret] = count(); }",
            ]);
            let _bpftrace = observe(command, "Attaching", false);
            traced.push(dd(count));
        }
    }
    let base = median(none).as_secs_f64();
    let with = |times: Vec<Duration>| {
        let t = median(times).as_secs_f64();
        format!("{t:.3} s ({:+.1}%)", (t / base - 1.0) * 100.0)
    };
    println!("ebpf/overhead dd bs=1 count={count}: no probes {base:.3} s");
    println!(
        "ebpf/overhead tapio-collector --enable-ebpf (default set: kernel, network, dns, memory, runtime-signals): {}",
        with(tapio)
    );
    println!(
        "ebpf/overhead tapio-collector --enable-ebpf plus syscall-errors: {}",
        with(tapio_all)
    );
    if bpftrace {
        println!(
            "ebpf/overhead bpftrace counting failing syscalls: {}",
            with(traced)
        );
    } else {
        println!("ebpf/overhead bpftrace: not installed (scripts/setup installs it)");
    }
}

/// Sends this process `count` SIGURGs (ignored by default, so nothing runs on delivery):
/// each passes the `signal_generate` tracepoint, where `runtime-signals` filters it out in
/// the kernel. Returns how long the sending took.
fn signal_storm(count: u64) -> Duration {
    let me = rustix::process::getpid();
    let started = Instant::now();
    for _ in 0..count {
        rustix::process::kill_process(me, rustix::process::Signal::URG).expect("signals self");
    }
    started.elapsed()
}

/// Writes `count` 4 KiB blocks with `O_DIRECT` into a file in `dir`: one block request each.
fn direct_writes(dir: &std::path::Path, count: u64) -> Duration {
    let started = Instant::now();
    let status = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "oflag=direct"])
        .arg(format!("of={}", dir.join("direct").display()))
        .arg(format!("count={count}"))
        .stderr(Stdio::null())
        .status()
        .expect("dd runs");
    assert!(status.success());
    started.elapsed()
}

/// `rounds` round trips of one byte between two threads over two pipes, the
/// `perf bench sched pipe` workload: every trip is two wakeups and two context switches.
fn ping_pong(rounds: u32) -> Duration {
    use std::io::{Read as _, Write as _};
    let (mut out_read, mut out_write) = std::io::pipe().expect("a pipe");
    let (mut back_read, mut back_write) = std::io::pipe().expect("a pipe");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8];
        while out_read.read_exact(&mut byte).is_ok() {
            if back_write.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut byte = [1u8];
    for _ in 0..rounds {
        out_write.write_all(&byte).expect("writes");
        back_read.read_exact(&mut byte).expect("reads");
    }
    let elapsed = started.elapsed();
    drop(out_write);
    echo.join().expect("the echo thread ends");
    elapsed
}

/// Starts and reaps `count` processes that exit at once (`/bin/true`).
fn spawn_exit(count: u32) -> Duration {
    let started = Instant::now();
    for _ in 0..count {
        let status = Command::new("/bin/true").status().expect("runs true");
        assert!(status.success());
    }
    started.elapsed()
}

/// One collector's own cost: `workload` timed `repeats` times with no probes and with
/// `tapio-collector` running only `collector`, alternating; the medians, as a ratio.
fn own_cost(collector: &str, what: &str, repeats: usize, mut workload: impl FnMut() -> Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("collector.yaml");
    std::fs::write(&config, format!("collectors:\n  {collector}: {{}}\n")).expect("writes config");
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        none.push(workload());
        let mut command = Command::new(env!("CARGO_BIN_EXE_tapio-collector"));
        command
            .args([
                "--server",
                "none",
                "--stdout",
                "--correlation",
                "basic",
                "--config",
            ])
            .arg(&config);
        let _collector = observe(command, "Agent started", true);
        with.push(workload());
    }
    let (base, probed) = (median(none).as_secs_f64(), median(with).as_secs_f64());
    println!(
        "ebpf/{what}: no probes {base:.3} s; {collector} {probed:.3} s ({:+.1}%)",
        (probed / base - 1.0) * 100.0
    );
}

/// The new collectors' own costs, each on the workload that exercises its probes.
fn measure_own_costs(signals: u64, writes: u64, trips: u32, exits: u32, repeats: usize) {
    own_cost(
        "runtime-signals",
        &format!("signals kill(self, SIGURG) x{signals}"),
        repeats,
        || signal_storm(signals),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    own_cost(
        "storage-io",
        &format!("block dd bs=4k oflag=direct count={writes}"),
        repeats,
        || direct_writes(dir.path(), writes),
    );
    own_cost(
        "resource-starvation",
        &format!("sched pipe ping-pong x{trips}"),
        repeats,
        || ping_pong(trips),
    );
    own_cost(
        "cri-ebpf",
        &format!("exits /bin/true x{exits}"),
        repeats,
        || spawn_exit(exits),
    );
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reads stat");
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("a command") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let hz = rustix::param::clock_ticks_per_second();
    ticks as f64 / hz as f64
}

/// `memory-leak-hunter`'s cost: CPU per cgroup sampled, over `cgroups` container cgroups
/// sampled every 100 ms for `seconds`.
fn sampling(cgroups: usize, seconds: u64) {
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let root = std::path::Path::new(if v2 {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/memory"
    })
    .join(format!("tapio-bench-{}", std::process::id()));
    std::fs::create_dir(&root).expect("creates the bench's cgroup");
    let dirs: Vec<std::path::PathBuf> = (0..cgroups)
        .map(|n| root.join(format!("docker-{n:064x}.scope")))
        .collect();
    for dir in &dirs {
        std::fs::create_dir(dir).expect("creates a cgroup");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("memory-leak-hunter.yaml");
    std::fs::write(
        &config,
        "collectors:\n  memory-leak-hunter: { config: { interval: 100ms, window: 1s } }\n",
    )
    .expect("writes config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tapio-collector"));
    command
        .args([
            "--server",
            "none",
            "--stdout",
            "--correlation",
            "basic",
            "--config",
        ])
        .arg(&config);
    let collector = observe(command, "Agent started", true);
    let pid = collector.0.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(seconds));
    let used = cpu_seconds(pid) - before;
    drop(collector);
    for dir in dirs.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir(&root);
    let samples = seconds as f64 * 10.0;
    println!(
        "ebpf/sampling memory-leak-hunter, {cgroups} container cgroups every 100 ms for {seconds} s: {used:.2} CPU s ({:.1}% of a core), {:.1} µs per container cgroup per sample",
        used / seconds as f64 * 100.0,
        used / samples / cgroups as f64 * 1e6
    );
}

/// A DNS query for `name`, type A.
fn query(id: u16) -> Vec<u8> {
    let mut message = Vec::new();
    for word in [id, 0x0100, 1, 0, 0, 0] {
        message.extend(word.to_be_bytes());
    }
    message.extend(b"\x05drain\x05tapio\x04test\x00\x00\x01\x00\x01");
    message
}

/// Sends `count` queries to a port 53 where nothing listens; each one still leaves through
/// loopback and passes the filter. Returns how long the sending took.
fn flood(count: u32) -> Duration {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("binds");
    let started = Instant::now();
    for i in 0..count {
        let _ = socket.send_to(&query(i as u16), "127.53.200.1:53");
    }
    started.elapsed()
}

fn drain(count: u32, ring_bytes: u32) {
    let ceiling = flood(count);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let yaml = format!("collectors:\n  dns: {{ config: {{ ring_buffer_bytes: {ring_bytes} }} }}\n");
        let config = Config::from_yaml(&yaml, "bench").expect("config");
        let telemetry = Arc::new(Telemetry::default());
        let shutdown = CancellationToken::new();
        let mut manager = Manager::new(Arc::clone(&telemetry), 65_536, shutdown.clone());
        for built in config.collectors.build(&BuildContext {
            node_name: "bench".into(),
            directory: tapio::metadata::PodDirectory::new(),
        }) {
            assert!(manager.start(built).await, "dns collector starts");
        }
        let mut fan_in = manager.into_fan_in();
        let started = Instant::now();
        let sender = tokio::task::spawn_blocking(move || flood(count));
        let mut received = 0usize;
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            match tokio::time::timeout(Duration::from_millis(500), fan_in.recv_many(&mut buffer, 8192)).await {
                Ok(n) if n > 0 => received += buffer.iter().filter(|e| e.kind == "dns.query").count(),
                _ => {
                    if sender.is_finished() {
                        break;
                    }
                }
            }
        }
        let sent_in = sender.await.expect("sender");
        // The last 500 ms waited for nothing.
        let elapsed = started.elapsed().saturating_sub(Duration::from_millis(500));
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let line = telemetry.status_line();
        let lost: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("dns/ring_buffer_full="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let rate = |n: f64, t: Duration| n / t.as_secs_f64();
        println!(
            "ebpf/drain ceiling: sender alone {:.0} packets/s",
            rate(f64::from(count), ceiling)
        );
        println!(
            "ebpf/drain dns collector, ring buffer {} KiB: sender {:.0} packets/s; drained {received} of {count} ({:.0} events/s, ratio {:.2} of ceiling), lost in the ring buffer {lost}",
            ring_bytes >> 10,
            rate(f64::from(count), sent_in),
            rate(received as f64, elapsed),
            rate(received as f64, elapsed) / rate(f64::from(count), ceiling),
        );
    });
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    if let Some(reason) = unsupported_here() {
        assert!(
            std::env::var("TAPIO_REQUIRE_EBPF").as_deref() != Ok("1"),
            "ebpf bench: TAPIO_REQUIRE_EBPF=1 but {reason}"
        );
        println!("ebpf bench skipped: {reason}");
        return;
    }
    if measuring {
        overhead(4 << 20, 3);
        measure_own_costs(1_000_000, 20_000, 200_000, 5_000, 3);
        sampling(500, 10);
        drain(200_000, 256 << 10);
        drain(200_000, 4 << 20);
    } else {
        overhead(20_000, 1);
        measure_own_costs(10_000, 200, 2_000, 100, 1);
        sampling(20, 1);
        drain(2_000, 256 << 10);
    }
}
