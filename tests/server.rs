//! tapio-server as a client sees it, over real sockets: acks after commit, dedup, queries,
//! the live tail, and every kind of bad input refused with a clear status while good
//! streams keep flowing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::ServerProcess;
use tapio::event::{Event, IdGenerator};
use tapio::pb;
use tapio::pb::tapio_service_client::TapioServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn events(ids: &mut IdGenerator, n: usize, kind: &'static str) -> Vec<pb::Event> {
    (0..n)
        .map(|i| {
            let mut e = Event::new(ids.next_id(), 1_000 + i as u64, kind, "test");
            e.entities.pod_namespace = "payments".into();
            e.into()
        })
        .collect()
}

fn batch(batch_id: u64, events: Vec<pb::Event>) -> pb::TapioStreamEventsRequest {
    pb::TapioStreamEventsRequest {
        payload: Some(pb::tapio_stream_events_request::Payload::Batch(
            pb::EventBatch {
                batch_id,
                collector_id: "test".into(),
                sequence: batch_id,
                events,
                groups: Vec::new(),
            },
        )),
    }
}

async fn client(server: &ServerProcess) -> TapioServiceClient<Channel> {
    TapioServiceClient::connect(format!("http://{}", server.address()))
        .await
        .expect("connects")
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// Runs the collector with `yaml` against `server` until it finishes, successfully.
async fn run_collector(server: &ServerProcess, yaml: &tempfile::NamedTempFile) {
    let address = server.address();
    let path = yaml.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::COLLECTOR)
            .arg("--config")
            .arg(path)
            .args(["--server", &address, "--otel-endpoint", "none"])
            .output()
            .expect("collector runs")
    })
    .await
    .expect("joined");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
}

/// An open `StreamEvents` call.
struct Stream {
    tx: mpsc::Sender<pb::TapioStreamEventsRequest>,
    rx: tonic::Streaming<pb::TapioStreamEventsResponse>,
}

impl Stream {
    async fn open(client: &mut TapioServiceClient<Channel>) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let response = client.stream_events(ReceiverStream::new(rx)).await?;
        Ok(Self {
            tx,
            rx: response.into_inner(),
        })
    }

    async fn send(&self, request: pb::TapioStreamEventsRequest) {
        self.tx.send(request).await.expect("stream open");
    }

    /// The next ack, skipping other messages.
    async fn ack(&mut self) -> Result<pb::Ack, tonic::Status> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("an answer within 10 s")?
                .expect("stream still open");
            if let Some(pb::tapio_stream_events_response::Payload::Ack(ack)) = message.payload {
                return Ok(ack);
            }
        }
    }
}

#[tokio::test]
async fn acks_dedup_queries_and_the_live_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let mut client = client(&server).await;
    let mut tail = client
        .subscribe_to_events(pb::SubscribeToEventsRequest {
            types: vec!["memory.oom_kill".into()],
            pod_namespace: String::new(),
        })
        .await
        .expect("subscribes")
        .into_inner();

    let mut ids = IdGenerator::new();
    let first = events(&mut ids, 5, "memory.oom_kill");
    let mut stream = Stream::open(&mut client).await.expect("opens");
    stream.send(batch(1, first.clone())).await;
    let ack = stream.ack().await.expect("acked");
    assert_eq!(
        (ack.batch_id, ack.status(), ack.accepted, ack.duplicates),
        (1, pb::ack::Status::Ok, 5, 0)
    );
    // The same batch again, as after a lost ack: acked, nothing stored twice.
    stream.send(batch(1, first.clone())).await;
    let ack = stream.ack().await.expect("acked");
    assert_eq!((ack.accepted, ack.duplicates), (0, 5));
    stream
        .send(batch(2, events(&mut ids, 3, "dns.query")))
        .await;
    assert_eq!(stream.ack().await.expect("acked").accepted, 3);

    for expected in &first {
        let live = tokio::time::timeout(Duration::from_secs(5), tail.message())
            .await
            .expect("live event in time")
            .expect("tail open")
            .expect("an event");
        assert_eq!(
            &live.id, &expected.id,
            "the tail filters by type and keeps order"
        );
    }

    let all = client
        .get_events(pb::GetEventsRequest::default())
        .await
        .expect("queries")
        .into_inner()
        .events;
    assert_eq!(all.len(), 8);
    let dns = client
        .get_events(pb::GetEventsRequest {
            types: vec!["dns.query".into()],
            limit: 2,
            ..pb::GetEventsRequest::default()
        })
        .await
        .expect("queries")
        .into_inner()
        .events;
    assert_eq!(dns.len(), 2);
    assert!(dns.iter().all(|e| e.r#type == "dns.query"));

    let health = client
        .health_check(pb::HealthCheckRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status(), pb::health_check_response::Status::Serving);
    assert_eq!(health.events_total, 8);
    assert_eq!(common::stats(dir.path()), (8, 2));
}

#[tokio::test]
async fn semantic_groups_are_derived_from_the_stored_correlation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let mut client = client(&server).await;
    let mut ids = IdGenerator::new();
    let group = tapio::event::GroupId::new([7; 16]);
    let grouped: Vec<pb::Event> = (0..3)
        .map(|i| {
            let mut e = Event::new(ids.next_id(), 100 + i, "memory.oom_kill", "test");
            e.correlation = Some(tapio::event::Correlation {
                group_id: group,
                impact: [0.25, 0.5, 0.75][i as usize],
                causal_links: Vec::new(),
            });
            e.into()
        })
        .collect();
    let mut stream = Stream::open(&mut client).await.expect("opens");
    stream.send(batch(1, grouped)).await;
    stream
        .send(batch(2, events(&mut ids, 2, "dns.query")))
        .await;
    stream.ack().await.expect("acked");
    stream.ack().await.expect("acked");
    let groups = client
        .get_semantic_groups(pb::GetSemanticGroupsRequest::default())
        .await
        .expect("queries")
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group_id, vec![7; 16]);
    assert_eq!(groups[0].event_ids.len(), 3);
    assert!((groups[0].impact - 0.75).abs() < 1e-9);
    assert_eq!(
        (
            groups[0].first_seen_unix_nano,
            groups[0].last_seen_unix_nano
        ),
        (100, 102)
    );
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_good_streams_keep_flowing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(
        0,
        dir.path(),
        &["--max-batch-events", "100", "--max-message-bytes", "65536"],
    );
    let mut client = client(&server).await;
    let mut ids = IdGenerator::new();
    let mut good = Stream::open(&mut client).await.expect("opens");
    good.send(batch(1, events(&mut ids, 10, "a.b"))).await;
    assert_eq!(
        good.ack().await.expect("acked").status(),
        pb::ack::Status::Ok
    );

    // Garbage bytes on the port: that connection is dropped, the server lives on.
    let mut raw = TcpStream::connect(server.address()).expect("connects");
    raw.write_all(b"\x16\x03\x01 this is not HTTP/2 at all \x00\xff\xfe")
        .expect("writes");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);

    // An event without an id: the batch is rejected with the reason; the stream goes on.
    let mut bad = Stream::open(&mut client).await.expect("opens");
    let mut no_id = events(&mut ids, 3, "a.b");
    no_id[1].id.clear();
    bad.send(batch(7, no_id)).await;
    let ack = bad.ack().await.expect("answered");
    assert_eq!(ack.status(), pb::ack::Status::Rejected);
    assert_eq!(
        ack.message,
        "batch 7, event 1: field `id` must be 16 bytes, got 0"
    );
    bad.send(batch(8, events(&mut ids, 2, "a.b"))).await;
    assert_eq!(
        bad.ack().await.expect("acked").status(),
        pb::ack::Status::Ok
    );

    // More events than the server takes in one batch.
    bad.send(batch(9, events(&mut ids, 101, "a.b"))).await;
    let ack = bad.ack().await.expect("answered");
    assert_eq!(ack.status(), pb::ack::Status::Rejected);
    assert_eq!(
        ack.message,
        "batch 9 has 101 events; this server accepts at most 100"
    );

    // A message over the size limit ends that stream with a status saying so.
    let mut huge = Stream::open(&mut client).await.expect("opens");
    let mut big = events(&mut ids, 1, "a.b");
    big[0].message = "x".repeat(100_000);
    huge.send(batch(10, big)).await;
    let status = huge.ack().await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // The well-behaved stream is unaffected by all of it.
    good.send(batch(2, events(&mut ids, 10, "a.b"))).await;
    assert_eq!(good.ack().await.expect("acked").accepted, 10);
    assert_eq!(
        common::stats(dir.path()).0,
        22,
        "only the good batches were stored"
    );
}

#[tokio::test]
async fn a_token_is_required_when_the_server_has_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").expect("writes token");
    let server = ServerProcess::start(
        0,
        &dir.path().join("store"),
        &["--token-file", token.to_str().expect("utf-8")],
    );
    let mut client = client(&server).await;
    let missing = Stream::open(&mut client).await.err().expect("refused");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert!(
        missing.message().contains("missing bearer token"),
        "{missing:?}"
    );

    let mut wrong = tonic::Request::new(pb::HealthCheckRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().expect("ascii"));
    let refused = client.health_check(wrong).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(refused.message(), "invalid bearer token");

    let mut right = tonic::Request::new(pb::HealthCheckRequest {});
    right.metadata_mut().insert(
        "authorization",
        "Bearer s3cret-token".parse().expect("ascii"),
    );
    assert!(client.health_check(right).await.is_ok());

    // The collector with the right token file delivers; with a wrong one it says why.
    let yaml = common::config("collectors:\n  synthetic: { config: { events: 500 } }\n");
    let ok = std::process::Command::new(common::COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args([
            "--server",
            &server.address(),
            "--token-file",
            token.to_str().expect("utf-8"),
        ])
        .output()
        .expect("runs");
    assert!(ok.status.success(), "{}", common::text(&ok.stderr));
    let bad_token = dir.path().join("bad");
    std::fs::write(&bad_token, "nope").expect("writes");
    let refused = std::process::Command::new(common::COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args(["--server", &server.address(), "--drain-timeout", "1s"])
        .args(["--token-file", bad_token.to_str().expect("utf-8")])
        .output()
        .expect("runs");
    let stderr = common::text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("The server refused the credentials."),
        "{stderr}"
    );
    assert_eq!(common::stats(&dir.path().join("store")).0, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_a_collector_closed_arrive_whole_and_are_queryable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let yaml = common::config(
        "collectors:\n  synthetic: { config: { events: 40, scenario: oom-cascade, seed: 9 } }\ncorrelation: { mode: semantic }\n",
    );
    run_collector(&server, &yaml).await;

    let mut client = client(&server).await;
    let groups = client
        .get_semantic_groups(pb::GetSemanticGroupsRequest::default())
        .await
        .expect("groups")
        .into_inner()
        .groups;
    assert_eq!(groups.len(), 2, "one per cascade: {groups:#?}");
    for group in &groups {
        // The kill, its SIGKILL, the process's and the container's ends, the restart, the
        // back-off.
        assert_eq!(group.event_ids.len(), 6);
        assert_eq!(
            group.root_cause_event_id, group.event_ids[0],
            "the OOM kill is the root"
        );
        // The kill sends its SIGKILL (1); it and the signal end the process (2) and the
        // container (with the process's end: 3); the exit restarts the pod (with the
        // process's end: 2); the restart backs off (1).
        assert_eq!(group.causal_chain.len(), 9);
        assert!(
            group.summary.starts_with("memory.oom_kill led to"),
            "{}",
            group.summary
        );
        assert!(
            group
                .predictions
                .iter()
                .flat_map(|p| &p.prevention_actions)
                .any(|a| a.contains("memory limit")),
            "{:?}",
            group.predictions
        );
        assert!(group.impact > 0.0);
        // A restart (0.7), a spread in the workload (0.5), and, since the pod backs a
        // service, its callers' failed lookups (0.8) and connects (0.8) may follow.
        let expected = 1.0 - 0.3 * 0.5 * 0.2 * 0.2;
        assert!(
            (group.cascade_risk - expected).abs() < 1e-9,
            "{} vs {expected}",
            group.cascade_risk
        );
        // The same group's events are in the store with its id.
        let events = client
            .get_events(pb::GetEventsRequest {
                group_id: group.group_id.clone(),
                ..pb::GetEventsRequest::default()
            })
            .await
            .expect("events")
            .into_inner()
            .events;
        assert_eq!(events.len(), 6);
    }
}

#[tokio::test]
async fn a_group_with_a_bad_id_is_refused_by_name_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let mut client = client(&server).await;
    let mut stream = Stream::open(&mut client).await.expect("stream");
    let mut ids = IdGenerator::new();
    let mut bad = batch(1, events(&mut ids, 2, "a.b"));
    if let Some(pb::tapio_stream_events_request::Payload::Batch(b)) = bad.payload.as_mut() {
        b.groups.push(pb::SemanticGroup {
            group_id: vec![1, 2, 3],
            trace_id: vec![9; 16],
            ..pb::SemanticGroup::default()
        });
    }
    stream.send(bad).await;
    let refused = stream.ack().await.expect("an ack");
    assert_eq!(refused.status, i32::from(pb::ack::Status::Rejected));
    assert!(
        refused
            .message
            .contains("group 0: group_id and trace_id must be 16 bytes"),
        "{}",
        refused.message
    );
    stream.send(batch(2, events(&mut ids, 3, "a.b"))).await;
    let good = stream.ack().await.expect("an ack");
    assert_eq!(good.status, i32::from(pb::ack::Status::Ok));
    assert_eq!(good.accepted, 3);
}

#[tokio::test]
async fn answers_larger_than_a_message_come_in_pages() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &["--max-message-bytes", "1000000"]);
    let mut client = client(&server).await;
    let mut stream = Stream::open(&mut client).await.expect("opens");
    let mut ids = IdGenerator::new();
    let mut sent = Vec::new();
    for batch_id in 1..=20 {
        let mut events = events(&mut ids, 1000, "journal.entry");
        for event in &mut events {
            event.message = "m".repeat(200);
        }
        sent.extend(events.iter().map(|e| e.id.clone()));
        stream.send(batch(batch_id, events)).await;
        assert_eq!(stream.ack().await.expect("acked").accepted, 1000);
    }
    // 20 000 events of ~260 bytes: five times what one answer may hold.
    let mut got = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .get_events(pb::GetEventsRequest {
                limit: 100_000,
                page_token: token.clone(),
                ..pb::GetEventsRequest::default()
            })
            .await
            .expect("a page, not OUT_OF_RANGE")
            .into_inner();
        pages += 1;
        assert!(!page.events.is_empty());
        got.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages < 100, "paging ends");
    }
    assert!(pages >= 5, "{pages} pages");
    sent.sort();
    let mut sorted = got.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "no event twice");
    sorted.sort();
    assert_eq!(sorted, sent, "every event once, over all pages");

    // A page of a given size; the limit is honoured and the token leads on.
    let page = client
        .get_events(pb::GetEventsRequest {
            limit: 10,
            ..pb::GetEventsRequest::default()
        })
        .await
        .expect("a page")
        .into_inner();
    assert_eq!(page.events.len(), 10);
    assert!(!page.next_page_token.is_empty());
    let bad = client
        .get_events(pb::GetEventsRequest {
            page_token: "not-a-token".into(),
            ..pb::GetEventsRequest::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("page_token"), "{}", bad.message());
}

#[tokio::test]
async fn an_event_past_the_year_2262_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let mut client = client(&server).await;
    let mut stream = Stream::open(&mut client).await.expect("opens");
    let mut ids = IdGenerator::new();
    let mut far = events(&mut ids, 3, "journal.entry");
    far[1].timestamp_unix_nano = 1 << 63;
    stream.send(batch(1, far)).await;
    let ack = stream.ack().await.expect("answered");
    assert_eq!(ack.status(), pb::ack::Status::Rejected);
    assert!(
        ack.message.contains("event 1") && ack.message.contains("2262"),
        "{}",
        ack.message
    );
    // The largest timestamp there is is stored, and found.
    let mut last = events(&mut ids, 1, "journal.entry");
    last[0].timestamp_unix_nano = i64::MAX.unsigned_abs();
    stream.send(batch(2, last.clone())).await;
    assert_eq!(stream.ack().await.expect("acked").accepted, 1);
    let found = client
        .get_events(pb::GetEventsRequest::default())
        .await
        .expect("queries")
        .into_inner()
        .events;
    assert_eq!(
        found.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&last[0].id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_file_replayed_into_the_server_gives_the_groups_the_scorer_sees() {
    // The path the corpus is scored on in tests/incidents.rs is the engine alone; this is
    // the whole way: replay with keep_ids -> agent (its late_window default) -> bridge ->
    // server, then GetSemanticGroups.
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/incidents/d-late.jsonl");
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &[]);
    let yaml = common::config(&format!(
        "collectors:\n  replay: {{ config: {{ path: {file}, keep_ids: true }} }}\ncorrelation: {{ mode: semantic }}\n"
    ));
    run_collector(&server, &yaml).await;
    let groups = client(&server)
        .await
        .get_semantic_groups(pb::GetSemanticGroupsRequest::default())
        .await
        .expect("groups")
        .into_inner()
        .groups;

    let text = std::fs::read_to_string(file).expect("corpus file");
    let mut engine =
        tapio::correlation::build(&tapio::correlation::CorrelationConfig::default(), "node-a");
    for line in text.lines() {
        let mut event: Event = serde_json::from_str(line).expect("an event");
        engine.process(&mut event);
    }
    engine.close_all();
    let mut expected: Vec<(Vec<u8>, Vec<Vec<u8>>)> = engine
        .take_closed()
        .iter()
        .map(|g| {
            let mut ids: Vec<Vec<u8>> = g.events.iter().map(|e| e.to_bytes().to_vec()).collect();
            ids.sort();
            (g.root.to_bytes().to_vec(), ids)
        })
        .collect();
    let mut stored: Vec<(Vec<u8>, Vec<Vec<u8>>)> = groups
        .into_iter()
        .map(|g| {
            let mut ids = g.event_ids;
            ids.sort();
            (g.root_cause_event_id, ids)
        })
        .collect();
    expected.sort();
    stored.sort();
    assert!(expected.len() >= 6, "the file's incidents close as groups");
    assert_eq!(
        stored, expected,
        "the server holds the groups the scorer scores"
    );
}

#[test]
fn the_standard_grpc_health_service_answers_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret").expect("token");
    let server = ServerProcess::start(
        0,
        &dir.path().join("store"),
        &["--token-file", token.to_str().expect("utf-8")],
    );
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/health_probe.py"
        ))
        .args([
            &server.address(),
            "",
            "tapio.v1.TapioService",
            "no.such.Service",
        ])
        .output()
        .expect("python3 runs");
    let answers = common::text(&out.stdout);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    assert_eq!(
        answers,
        "(server) SERVING\ntapio.v1.TapioService SERVING\nno.such.Service NOT_FOUND\n",
        "{}",
        common::text(&out.stderr)
    );
}

#[test]
fn incidents_read_as_the_golden_file_and_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let yaml = common::config(
        "orchestrator: { node_name: node-a }\ncollectors:\n  synthetic: { config: { events: 60, scenario: oom-cascade, seed: 9 } }\ncorrelation: { mode: semantic }\n",
    );
    let out = std::process::Command::new(common::COLLECTOR)
        .arg("--config")
        .arg(yaml.path())
        .args([
            "--server",
            "embedded",
            "--otel-endpoint",
            "none",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("collector runs");
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let incidents = |args: &[&str]| {
        let out = std::process::Command::new(common::SERVER)
            .arg("incidents")
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .expect("incidents runs");
        assert!(out.status.success(), "{}", common::text(&out.stderr));
        (common::text(&out.stdout), common::text(&out.stderr))
    };
    let (text, count) = incidents(&[]);
    // Trace ids are random; everything else is the seed's.
    let shown: String = text
        .lines()
        .map(|line| match line.split_once("trace: ") {
            Some((indent, id)) => {
                assert_eq!(id.len(), 32, "{line}");
                format!("{indent}trace: <trace id>\n")
            }
            None => format!("{line}\n"),
        })
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/incidents.txt");
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(path, &shown).expect("writes the golden file");
    }
    let expected = std::fs::read_to_string(path).expect("the golden file (UPDATE_GOLDEN=1)");
    assert_eq!(shown, expected, "tapio-server incidents output changed");
    let n = text.lines().filter(|l| l.starts_with("incident ")).count();
    assert!(n >= 2, "{text}");
    assert_eq!(count.trim(), format!("{n} incidents"));

    let (json, _) = incidents(&["--output", "json", "--since", "1h"]);
    let objects: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(objects.len(), n);
    for incident in &objects {
        assert_eq!(incident["root_cause"]["type"], "memory.oom_kill");
        assert_eq!(incident["trace_id"].as_str().map(str::len), Some(32));
        let chain = incident["chain"].as_array().expect("a chain");
        assert!(chain.iter().any(|e| {
            e["causes"]
                .as_array()
                .is_some_and(|c| c.iter().any(|l| l["rule"] == "oom-kills-container"))
        }));
        assert!(
            !incident["predictions"]
                .as_array()
                .expect("predictions")
                .is_empty()
        );
    }
    let heavy: Vec<f64> = objects
        .iter()
        .filter_map(|o| o["impact"].as_f64())
        .filter(|i| *i >= 0.8)
        .collect();
    let (filtered, _) = incidents(&["--output", "json", "--min-impact", "0.8"]);
    assert_eq!(
        filtered.lines().count(),
        heavy.len(),
        "--min-impact filters"
    );
}

#[tokio::test]
async fn retention_removes_old_data_in_the_background_while_ingest_goes_on_and_stats_show_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(
        0,
        dir.path(),
        &["--retention-age", "1d", "--retention-interval", "200ms"],
    );
    let mut client = client(&server).await;
    let mut stream = Stream::open(&mut client).await.expect("opens");
    // Events collected three days ago: their ids carry when.
    let three_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        - 3 * 86_400_000;
    let old: Vec<pb::Event> = (0..5_000u128)
        .map(|n| {
            let id = tapio::event::EventId::from_u128((three_days_ago << 80) | n);
            Event::new(id, 1_000, "test.old", "test").into()
        })
        .collect();
    let mut ids = IdGenerator::new();
    for (n, chunk) in old.chunks(1_000).enumerate() {
        stream.send(batch(n as u64 + 1, chunk.to_vec())).await;
        assert_eq!(stream.ack().await.expect("acked").accepted, 1_000);
    }
    // Ingest goes on while retention removes the old events.
    for n in 0..20u64 {
        stream
            .send(batch(100 + n, events(&mut ids, 500, "test.new")))
            .await;
        assert_eq!(stream.ack().await.expect("acked").accepted, 500);
    }
    let started = std::time::Instant::now();
    let stats = loop {
        let out = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || {
                std::process::Command::new(common::SERVER)
                    .args(["stats", "--data-dir"])
                    .arg(dir)
                    .output()
                    .expect("stats runs")
            }
        })
        .await
        .expect("joined");
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        if stats["retention"]["removed_events"] == 5_000 {
            break stats;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "retention did not run: {stats}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stats["events_total"], 10_000, "{stats}");
    assert_eq!(stats["retention"]["age_seconds"], 86_400, "{stats}");
    let oldest = stats["oldest_event_unix_ms"]
        .as_u64()
        .expect("an oldest event");
    assert!(u128::from(oldest) > three_days_ago + 86_400_000, "{stats}");
    assert!(stats["used_bytes"].as_u64().expect("used bytes") > 0);
    assert!(server.log().contains("Retention removed old data."));
}
