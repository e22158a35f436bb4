//! Delivery to a real tapio-server process over loopback gRPC: nothing lost, nothing
//! stored twice, whatever happens to the server.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Guard, ServerProcess, config, free_port, last_status, spool_bytes, stats, text};

fn collector(yaml: &tempfile::NamedTempFile, args: &[&str]) -> Guard {
    common::collector(yaml.path(), args)
}

#[test]
fn a_server_killed_mid_stream_and_restarted_ends_with_every_event_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let port = server.port;
    let yaml = config(
        "collectors:\n  synthetic: { config: { events: 200000, rate: 40000, scenario: oom-cascade } }\n",
    );
    let run = collector(
        &yaml,
        &["--server", &server.address(), "--flush-interval", "200ms"],
    );
    let started = Instant::now();
    while stats(dir.path()).0 < 20_000 {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "events did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let stored_before_restart = stats(dir.path()).0;
    assert!(
        stored_before_restart < 200_000,
        "the kill happened mid-stream"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _server = ServerProcess::start(port, dir.path(), &[]);
    let out = run.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "collector failed: {stderr}");
    assert_eq!(
        stats(dir.path()).0,
        200_000,
        "every event stored exactly once"
    );
    assert_eq!(last_status(&stderr, "delivered"), 200_000);
    assert_eq!(last_status(&stderr, "dropped"), 0);
    assert!(stderr.contains("Connected to the server."), "{stderr}");
}

#[test]
fn the_embedded_server_stores_every_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let yaml = config("collectors:\n  synthetic: { config: { events: 5000 } }\n");
    let data = dir.path().join("store");
    let out = collector(
        &yaml,
        &[
            "--server",
            "embedded",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
    )
    .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let (events, batches) = stats(&data);
    assert_eq!(events, 5000);
    // Five full batches of events; the incident groups closed at the end (the uniform
    // background has DNS failures followed by failed connects) ride a last one.
    assert!((5..=6).contains(&batches), "{batches} batches");
    assert_eq!(last_status(&stderr, "delivered"), 5000);
}

#[test]
fn a_server_that_never_answers_is_reported_not_silent() {
    let yaml = config("collectors:\n  synthetic: { config: { events: 100 } }\n");
    let address = format!("127.0.0.1:{}", free_port());
    let out = collector(&yaml, &["--server", &address, "--drain-timeout", "1s"])
        .wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("100 events were not acknowledged"),
        "{stderr}"
    );
    assert_eq!(last_status(&stderr, "dropped"), 100);
    assert!(stderr.contains("bridge/undelivered=100"), "{stderr}");
    assert!(stderr.contains("Cannot reach the server"), "{stderr}");
}

#[test]
fn the_collector_honours_the_servers_rate_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &["--max-events-per-second", "2000"]);
    let yaml = config("collectors:\n  synthetic: { config: { events: 3000 } }\n");
    let started = Instant::now();
    let out = collector(
        &yaml,
        &[
            "--server",
            &server.address(),
            "--buffer-size",
            "100",
            "--flush-interval",
            "50ms",
        ],
    )
    .wait_for(Duration::from_mins(1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // 3000 events at 2000/s cannot be delivered in much under 1.5 s (the first batch goes
    // at once); unthrottled this run takes a fraction of that.
    assert!(
        started.elapsed() >= Duration::from_millis(1300),
        "delivered in {:?}, faster than the limit allows",
        started.elapsed()
    );
    assert_eq!(stats(dir.path()).0, 3000);
}

#[test]
fn a_collector_killed_while_the_server_is_down_resends_its_spool_exactly_once() {
    let store = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let spool_dir = spool.path().to_str().expect("utf-8");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let endless =
        config("collectors:\n  synthetic: { config: { events: 0, rate: 5000, seed: 1 } }\n");
    let first = collector(
        &endless,
        &[
            "--server",
            &address,
            "--spool-dir",
            spool_dir,
            "--flush-interval",
            "100ms",
        ],
    );
    let started = Instant::now();
    while spool_bytes(spool.path()) < 500_000 {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "nothing was spooled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(first); // SIGKILL, mid-stream, server down.
    let (_, recovered) =
        tapio::bridge::Spool::open(spool.path(), 1 << 30, 8).expect("the spool opens");
    assert!(recovered.events >= 1000, "spooled {recovered:?}");

    let _server = ServerProcess::start(port, store.path(), &[]);
    let more = config("collectors:\n  synthetic: { config: { events: 1000, seed: 2 } }\n");
    let out = collector(&more, &["--server", &address, "--spool-dir", spool_dir])
        .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Resending what an earlier run left in the spool."),
        "{stderr}"
    );
    assert_eq!(
        stats(store.path()).0,
        recovered.events + 1000,
        "every spooled event and every new one stored exactly once"
    );
    assert_eq!(spool_bytes(spool.path()), 0, "an acked spool is emptied");
}

#[test]
fn sigterm_with_the_server_away_keeps_the_rest_in_the_spool_and_exits_zero() {
    let store = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let spool_dir = spool.path().to_str().expect("utf-8");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let yaml = config("collectors:\n  synthetic: { config: { events: 3000 } }\n");
    let out = collector(
        &yaml,
        &[
            "--server",
            &address,
            "--spool-dir",
            spool_dir,
            "--drain-timeout",
            "1s",
        ],
    )
    .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "spooled events are not a failure: {stderr}"
    );
    assert!(stderr.contains("stay in the spool"), "{stderr}");
    assert_eq!(last_status(&stderr, "spooled"), 3000);
    assert_eq!(last_status(&stderr, "dropped"), 0);

    let _server = ServerProcess::start(port, store.path(), &[]);
    let one = config("collectors:\n  synthetic: { config: { events: 1, seed: 5 } }\n");
    let out = collector(&one, &["--server", &address, "--spool-dir", spool_dir])
        .wait_for(Duration::from_mins(1));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stats(store.path()).0, 3001);
}

#[test]
fn a_full_spool_under_drop_newest_counts_what_it_drops() {
    let spool = tempfile::tempdir().expect("temp dir");
    let yaml = config(&format!(
        "server:\n  address: 127.0.0.1:{}\n  spool_dir: {}\n  spool_max_bytes: 1MiB\n  \
         spool_when_full: drop_newest\n  drain_timeout: 500ms\n\
         collectors:\n  synthetic: {{ config: {{ events: 20000 }} }}\n",
        free_port(),
        spool.path().display()
    ));
    let out = collector(&yaml, &[]).wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let spooled = last_status(&stderr, "spooled");
    let dropped = last_status(&stderr, "dropped");
    assert!(dropped > 0, "1 MiB cannot hold 20000 events: {stderr}");
    assert_eq!(
        spooled + dropped,
        20_000,
        "every event is spooled or counted"
    );
    assert!(stderr.contains("bridge/spool_full="), "{stderr}");
    assert!(spool_bytes(spool.path()) <= 1 << 20, "the cap holds");
}

/// A TCP proxy on loopback whose connections the test can cut at will.
struct Proxy {
    port: u16,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("addr").port();
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (conns, stopped) = (Arc::clone(&live), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).expect("blocking");
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                let mut guard = conns.lock().expect("lock");
                guard.push(client.try_clone().expect("clone"));
                guard.push(server.try_clone().expect("clone"));
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
        });
        Self { port, live, stop }
    }

    /// Cuts every connection through the proxy, as a network failure would.
    fn cut(&self) -> usize {
        let mut live = self.live.lock().expect("lock");
        for socket in live.iter() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        let cut = live.len() / 2;
        live.clear();
        cut
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }
}

#[test]
fn a_connection_cut_again_and_again_loses_nothing_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let proxy = Proxy::start(server.port);
    let yaml = config("collectors:\n  synthetic: { config: { events: 100000, rate: 25000 } }\n");
    let mut run = collector(
        &yaml,
        &[
            "--server",
            &format!("127.0.0.1:{}", proxy.port),
            "--flush-interval",
            "100ms",
        ],
    );
    let mut cuts = 0;
    while run.0.try_wait().expect("try_wait").is_none() && cuts < 8 {
        std::thread::sleep(Duration::from_millis(400));
        cuts += proxy.cut();
    }
    let out = run.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(cuts >= 3, "the connection was cut only {cuts} times");
    assert!(
        stderr.matches("Connected to the server.").count() > cuts / 2,
        "the bridge reconnected after the cuts: {stderr}"
    );
    assert_eq!(
        stats(dir.path()).0,
        100_000,
        "no loss and no duplicate stored"
    );
    assert_eq!(last_status(&stderr, "delivered"), 100_000);
}

#[test]
fn sigterm_with_the_server_away_and_no_spool_ends_within_the_drain_timeout() {
    // Without a spool the bridge holds max_pending_batches in memory and then holds the
    // pipeline back; a SIGTERM must still end the run, counting what was never acked.
    let yaml = config(
        "orchestrator: { buffer_size: 1000 }\n\
         server: { max_pending_batches: 2, buffer_size: 100 }\n\
         collectors:\n  synthetic: { config: { events: 0, rate: 0 } }\n",
    );
    let address = format!("127.0.0.1:{}", free_port());
    let run = collector(&yaml, &["--server", &address, "--drain-timeout", "1s"]);
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-TERM", &run.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = run.wait_for(Duration::from_secs(20));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let processed = last_status(&stderr, "events");
    assert!(processed > 200, "the pipeline kept draining: {stderr}");
    assert_eq!(last_status(&stderr, "delivered"), 0);
    assert_eq!(
        last_status(&stderr, "dropped"),
        processed,
        "every event the pipeline took is counted as undelivered"
    );
}

#[test]
fn a_finite_run_with_the_server_away_and_no_spool_ends_within_the_drain_timeout() {
    // More events than the bridge holds in memory: once the collectors are done, the
    // bridge must take the rest so the drain timeout can end the run.
    let yaml = config(
        "server: { max_pending_batches: 2, buffer_size: 100 }\n\
         collectors:\n  synthetic: { config: { events: 5000 } }\n",
    );
    let address = format!("127.0.0.1:{}", free_port());
    let out = collector(&yaml, &["--server", &address, "--drain-timeout", "1s"])
        .wait_for(Duration::from_secs(20));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("5000 events were not acknowledged"),
        "{stderr}"
    );
    assert_eq!(last_status(&stderr, "dropped"), 5000);
}

/// Polls `/readyz` on `port` until its status line contains `want`.
fn readyz_until(port: u16, want: &str, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, body) = common::http_get(port, "/readyz");
            if status.contains(want) {
                return body;
            }
        }
        assert!(started.elapsed() < limit, "/readyz never answered {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn readyz_turns_unready_when_the_server_goes_away_without_a_spool_and_not_with_one() {
    for spooled in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = tempfile::tempdir().expect("spool");
        let server = ServerProcess::start(0, dir.path(), &[]);
        let port = free_port();
        let endless = config("collectors:\n  synthetic: { config: { events: 0, rate: 2000 } }\n");
        let listen = format!("127.0.0.1:{port}");
        let address = server.address();
        let mut args = vec!["--server", &address, "--metrics-listen", &listen];
        if spooled {
            args.extend(["--spool-dir", spool.path().to_str().expect("utf-8")]);
        }
        let _agent = collector(&endless, &args);
        let body = readyz_until(port, "200", Duration::from_secs(30));
        assert!(body.contains("connected to the server"), "{body}");
        let (status, body) = common::http_get(port, "/healthz");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        server.kill();
        if spooled {
            // Batches go to the spool: still ready, saying so, for as long as it has room.
            let body = readyz_until(port, "200", Duration::from_secs(5));
            let started = Instant::now();
            let mut body = body;
            while !body.contains("spooling within the cap") {
                assert!(started.elapsed() < Duration::from_secs(10), "{body}");
                std::thread::sleep(Duration::from_millis(50));
                body = common::http_get(port, "/readyz").1;
            }
            for _ in 0..20 {
                let (status, body) = common::http_get(port, "/readyz");
                assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            let body = readyz_until(port, "503", Duration::from_secs(10));
            assert!(body.contains("no spool"), "{body}");
            // Liveness does not follow delivery.
            let (status, body) = common::http_get(port, "/healthz");
            assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        }
    }
}

/// `VmHWM` (peak resident memory) of a process, in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line["VmHWM:".len()..]
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

#[test]
fn a_memory_limit_sheds_a_flood_with_the_server_gone_and_every_event_is_counted() {
    // A flood with nowhere to go: no server, no spool. Without a ceiling back-pressure
    // holds the collector for ever at about 90 MiB here (a debug build); with one, new
    // events are shed past its high watermark, counted as `memory_limit`, and the run ends.
    const EVENTS: u64 = 600_000;
    const LIMIT: u64 = 96 << 20;
    let yaml = config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: {EVENTS}, rate: 0, scenario: oom-cascade, seed: 1 }} }}\n"
    ));
    let address = format!("127.0.0.1:{}", free_port());
    let run = common::collector(
        yaml.path(),
        &[
            "--server",
            &address,
            "--drain-timeout",
            "1s",
            "--memory-limit",
            "96MiB",
        ],
    );
    let pid = run.0.id();
    let mut peak = 0;
    let mut run = Some(run);
    let started = Instant::now();
    while let Some(bytes) = peak_rss(pid) {
        peak = peak.max(bytes);
        if run
            .as_mut()
            .is_some_and(|r| r.0.try_wait().ok().flatten().is_some())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "the flood never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run
        .take()
        .expect("the run")
        .wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing could be delivered: {stderr}"
    );
    eprintln!(
        "peak RSS {} MiB under a limit of {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
    assert!(
        peak > 0 && peak < LIMIT,
        "peak RSS {peak} over the limit {LIMIT}\n{stderr}"
    );
    let shed = last_status(&stderr, "synthetic/memory_limit");
    let undelivered = last_status(&stderr, "bridge/undelivered");
    assert!(shed > 0, "{stderr}");
    assert!(stderr.contains("shedding new events"), "{stderr}");
    // Every event produced is accounted for: shed at the door, or taken in and not
    // delivered; nothing else was lost or is unaccounted.
    assert_eq!(shed + undelivered, EVENTS, "{stderr}");
    assert_eq!(last_status(&stderr, "dropped"), EVENTS, "{stderr}");
    assert_eq!(last_status(&stderr, "events"), undelivered, "{stderr}");
}
