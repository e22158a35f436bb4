//! tapio-server against hostile and broken clients: idle sockets by the thousand, a file
//! limit lower than they need, a client that floods without reading its acks, and
//! SIGTERM with all of that open. The server stays responsive, bounded and stoppable.

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{COLLECTOR, Guard, SERVER, ServerProcess, config, last_status, stats, text};
use tapio::event::{Event, IdGenerator};
use tapio::pb;
use tapio::pb::tapio_service_client::TapioServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// SIGTERM to the server; its exit status and how long it took.
fn terminate(server: ServerProcess) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let pid = server.guard.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs")
            .success()
    );
    let out = server.guard.wait_for(Duration::from_secs(30));
    (out.status, started.elapsed())
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// CPU time a process has used, user and system, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after pid and comm.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn sigterm_stops_the_server_at_once_with_idle_and_half_open_connections() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    // Sockets that never say a word, and one that stops halfway through the preface.
    let mut idle: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).expect("connects"))
        .collect();
    idle[0].write_all(b"PRI * HTTP/2.0\r\n").expect("writes");
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = terminate(server);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
}

#[test]
fn idle_sockets_past_the_file_limit_neither_spin_the_server_nor_lock_a_collector_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!(
        "ulimit -n 1024 && exec '{SERVER}' --listen 127.0.0.1:0 --data-dir '{}' --sync normal --handshake-timeout 5s",
        dir.path().display()
    ));
    let server = ServerProcess::spawn(command);
    let pid = server.guard.0.id();
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", server.port)).ok())
        .collect();
    assert!(idle.len() >= 1000, "{} sockets", idle.len());
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 30,
        "the server used {used} ticks of 100 in a second: spinning"
    );
    let started = Instant::now();
    while !server.log().contains("Refusing connections") {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "past the limit, connections are refused and that is logged: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.log().contains("Lowering --max-connections"));
    // Once the handshake timeout frees the slots, a collector gets in and delivers.
    let yaml = config("collectors:\n  synthetic: { config: { events: 20000 } }\n");
    let out = Guard(
        Command::new(COLLECTOR)
            .arg("--config")
            .arg(yaml.path())
            .args(["--server", &server.address(), "--otel-endpoint", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("collector starts"),
    )
    .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stats(dir.path()).0, 20_000);
    assert_eq!(last_status(&stderr, "delivered"), 20_000);
    assert!(
        server
            .log()
            .contains("Closing a connection with no request in time")
    );
    drop(idle);
}

fn batch(ids: &mut IdGenerator, batch_id: u64, events: usize) -> pb::TapioStreamEventsRequest {
    let events = (0..events)
        .map(|i| {
            let mut event =
                Event::new(ids.next_id(), 1_000 + i as u64, "journal.entry", "journald");
            event.message = "x".repeat(1000);
            event.into()
        })
        .collect();
    pb::TapioStreamEventsRequest {
        payload: Some(pb::tapio_stream_events_request::Payload::Batch(
            pb::EventBatch {
                batch_id,
                collector_id: "flood".into(),
                sequence: batch_id,
                events,
                groups: Vec::new(),
            },
        )),
    }
}

/// A `StreamEvents` call to the server at `address` that takes batches up to 64 MiB: the
/// sender of its requests, and the call's response.
async fn open_stream(
    address: String,
) -> (
    mpsc::Sender<pb::TapioStreamEventsRequest>,
    tonic::Response<tonic::Streaming<pb::TapioStreamEventsResponse>>,
) {
    let mut client = TapioServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connects")
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(4);
    let response = client
        .stream_events(ReceiverStream::new(rx))
        .await
        .expect("opens");
    (tx, response)
}

/// Reads acks until `count` have come, each one `Ok`.
async fn read_acks(mut inbound: tonic::Streaming<pb::TapioStreamEventsResponse>, count: u64) {
    let mut acked = 0;
    while acked < count {
        let message = tokio::time::timeout(Duration::from_mins(1), inbound.message())
            .await
            .expect("acks keep coming")
            .expect("stream open")
            .expect("a message");
        if let Some(pb::tapio_stream_events_response::Payload::Ack(ack)) = message.payload {
            assert_eq!(ack.status(), pb::ack::Status::Ok);
            acked += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_without_reading_its_acks_is_held_back_not_buffered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &["--stream-buffer-bytes", "16MiB"]);
    let pid = server.guard.0.id();
    let baseline = rss(pid);
    let (tx, response) = open_stream(server.address()).await;
    // 400 batches of ~1 MB, sent faster than any store commits them.
    let total = 400;
    let sender = tokio::spawn(async move {
        let mut ids = IdGenerator::new();
        let mut sent = 0u64;
        for batch_id in 1..=total {
            if tx.send(batch(&mut ids, batch_id, 1000)).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut peak = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss(pid));
        if sender.is_finished() {
            break;
        }
    }
    assert!(
        peak < baseline + (200 << 20),
        "server RSS grew from {} MiB to {} MiB while nobody read the acks",
        baseline >> 20,
        peak >> 20
    );
    // Reading the acks lets it go on; every batch sent is acked.
    read_acks(response.into_inner(), total).await;
    assert_eq!(sender.await.expect("sender"), total);
}

/// The value of an unlabelled integer sample on a Prometheus page.
fn sample(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not on the page:\n{page}"))
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_together_are_held_to_the_server_wide_buffer_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = common::free_port();
    let server = ServerProcess::start(
        0,
        dir.path(),
        &[
            "--buffer-bytes",
            "2MiB",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    let pid = server.guard.0.id();
    let baseline = rss(pid);
    // Eight streams, each sending 1 MB batches as fast as it can: far more at once than
    // the 2 MiB the server may hold.
    let (streams, per_stream) = (8u64, 40u64);
    let mut tasks = Vec::new();
    for stream in 0..streams {
        let address = server.address();
        tasks.push(tokio::spawn(async move {
            let (tx, response) = open_stream(address).await;
            let sender = tokio::spawn(async move {
                let mut ids = IdGenerator::new();
                for n in 1..=per_stream {
                    let mut request = batch(&mut ids, stream * 1000 + n, 1000);
                    if let Some(pb::tapio_stream_events_request::Payload::Batch(b)) =
                        &mut request.payload
                    {
                        b.collector_id = format!("flood-{stream}");
                    }
                    if tx.send(request).await.is_err() {
                        break;
                    }
                }
                // Open until every ack is read: the receiver ends the call.
                std::future::pending::<()>().await;
            });
            read_acks(response.into_inner(), per_stream).await;
            sender.abort();
            per_stream
        }));
    }
    let mut peak = 0;
    while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak = peak.max(rss(pid));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await.expect("stream task");
    }
    assert_eq!(acked, streams * per_stream, "every batch acked");
    assert_eq!(
        stats(dir.path()).0,
        streams * per_stream * 1000,
        "every event stored"
    );
    // 2 MiB of batches, eight streams' HTTP/2 windows and decoding buffers, and the
    // writer's 64 MiB SQLite page cache filling up: here about 120 MiB over the
    // baseline. Without the shared bound the same flood took about 300 MiB.
    assert!(
        peak < baseline + (200 << 20),
        "server RSS grew from {} MiB to {} MiB",
        baseline >> 20,
        peak >> 20
    );
    let page = common::http_get(metrics, "/metrics").1;
    assert_eq!(sample(&page, "tapio_server_buffer_limit_bytes"), 2 << 20);
    assert_eq!(
        sample(&page, "tapio_server_buffered_bytes"),
        0,
        "all given back"
    );
    assert!(
        sample(&page, "tapio_server_buffer_full_total") > 0,
        "streams waited on the shared buffer:\n{page}"
    );
}

#[test]
fn sigterm_mid_stream_acks_what_was_sent_and_the_collector_resends_the_rest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let port = server.port;
    let yaml = config("collectors:\n  synthetic: { config: { events: 150000, rate: 30000 } }\n");
    let run = Guard(
        Command::new(COLLECTOR)
            .arg("--config")
            .arg(yaml.path())
            .args([
                "--server",
                &server.address(),
                "--otel-endpoint",
                "none",
                "--spool-dir",
            ])
            .arg(spool.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("collector starts"),
    );
    let started = Instant::now();
    while stats(dir.path()).0 < 20_000 {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "nothing arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, took) = terminate(server);
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    let stored = stats(dir.path()).0;
    assert!(stored < 150_000, "stopped mid-stream");
    std::thread::sleep(Duration::from_millis(500));
    let _server = ServerProcess::start(port, dir.path(), &[]);
    let out = run.wait_for(Duration::from_mins(2));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stats(dir.path()).0, 150_000, "every event stored once");
    assert_eq!(last_status(&stderr, "dropped"), 0, "{stderr}");
}
