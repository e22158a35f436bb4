//! Past one server: tapio-server on a PostgreSQL store shared by several servers, and
//! (with JetStream between collectors and servers) servers that die, a queue that
//! restarts, a database that restarts, a collector killed while the queue is away. Every
//! peer is the real one: PostgreSQL 15 and nats-server from Debian, started by the test.

mod common;

use std::time::{Duration, Instant};

use common::peers::{Nats, PG_PASSWORD, Postgres, STREAM_MAX_BYTES};
use common::{ServerProcess, config, last_status, stats, stats_of, text};
use tapio::event::{Event, EventId};
use tapio::pb;
use tapio::server::store::{Batch, EventQuery, Location, Retention, Store, Sync};
use tapio::server::wire::RawEvent;

const DAY: u64 = 86_400 * 1_000_000_000;

fn raw(n: u128, ts: u64, kind: &str) -> RawEvent {
    let mut e = Event::new(EventId::from_u128(n), ts, kind.to_owned(), "test");
    e.entities.pod_namespace = "shop".into();
    RawEvent::from_message(&pb::Event::from(e)).expect("valid event")
}

fn batch(id: u64, events: Vec<RawEvent>) -> Batch {
    Batch {
        collector_id: "node-a".into(),
        batch_id: id,
        sequence: id,
        events,
        groups: Vec::new(),
    }
}

/// The retention pass, by size: every past day goes, oldest first, and today's events stay
/// however small the cap; by age, the same for days older than the age. Each pass is
/// recorded for `stats`.
async fn retention_passes_keep_today(store: &Store) {
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("fits");
    let today = Event::new(EventId::from_u128(99), now, "test.today", "t");
    store
        .write(Batch {
            collector_id: "c".into(),
            batch_id: 99,
            sequence: 99,
            events: vec![RawEvent::from_message(&today.into()).expect("valid")],
            groups: Vec::new(),
        })
        .await
        .expect("commits");
    store
        .retain(Retention {
            age: None,
            max_bytes: Some(1),
        })
        .await
        .expect("retains");
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.events_total, 1, "today's event stays");
    assert_eq!(stats.retention.expect("recorded").max_bytes, Some(1));
    assert_eq!(stats.oldest_event_unix_ms, Some(now / 1_000_000));
    store
        .retain(Retention {
            age: Some(Duration::from_hours(24 * 30)),
            max_bytes: None,
        })
        .await
        .expect("retains");
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.events_total, 1);
    assert_eq!(
        stats.retention.expect("recorded").age_seconds,
        Some(30 * 86_400)
    );
    assert!(stats.used_bytes > 0);
}

#[tokio::test]
async fn the_postgres_store_keeps_each_event_once_and_drops_whole_days() {
    let pg = Postgres::start();
    let store = Store::open(&Location::Postgres(pg.url()), Sync::Full, 4, "a")
        .await
        .expect("connects and creates the schema");
    let monday = 20_000 * DAY;
    let first = store
        .write(batch(
            1,
            vec![
                raw(1, monday + 5, "a.b"),
                raw(2, monday + 6, "a.b"),
                raw(3, monday + DAY + 1, "c.d"),
            ],
        ))
        .await
        .expect("commits");
    assert_eq!((first.accepted, first.duplicates), (3, 0));
    let mut live = store.subscribe();
    // The same events again (a resend after a lost ack), with one new.
    let again = store
        .write(batch(
            2,
            vec![raw(2, monday + 6, "a.b"), raw(4, monday + DAY + 2, "c.d")],
        ))
        .await
        .expect("commits");
    assert_eq!((again.accepted, again.duplicates), (1, 1));
    let announced = live
        .recv()
        .await
        .expect("the live tail hears of the commit");
    assert_eq!(
        announced
            .iter()
            .map(|e| e.timestamp_unix_nano)
            .collect::<Vec<_>>(),
        [monday + DAY + 2],
        "only the new event"
    );
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.events_total, stats.batches_total), (4, 2));
    let found: Vec<u64> = store
        .events(EventQuery {
            types: vec!["c.d".into()],
            ..EventQuery::default()
        })
        .await
        .expect("queries")
        .iter()
        .map(|e| e.timestamp_unix_nano)
        .collect();
    assert_eq!(found, [monday + DAY + 1, monday + DAY + 2]);
    // A second store on the same database (another server) sees the same.
    let other = Store::open(&Location::Postgres(pg.url()), Sync::Full, 2, "b")
        .await
        .expect("a second server connects");
    assert_eq!(other.stats().await.expect("stats").events_total, 4);

    let Store::Postgres(postgres) = &store else {
        panic!("a PostgreSQL store")
    };
    let (dropped, _) = postgres
        .drop_before(monday + DAY)
        .await
        .expect("retention runs");
    assert_eq!(dropped, ["events_20241004"], "the first day's partition");
    let left: Vec<u64> = store
        .events(EventQuery::default())
        .await
        .expect("queries")
        .iter()
        .map(|e| e.timestamp_unix_nano)
        .collect();
    assert_eq!(left, [monday + DAY + 1, monday + DAY + 2]);

    retention_passes_keep_today(&store).await;
}

#[tokio::test]
async fn groups_are_read_whole_and_derived_from_events_on_postgres() {
    let pg = Postgres::start();
    let store = Store::open(&Location::Postgres(pg.url()), Sync::Full, 2, "a")
        .await
        .expect("connects");
    let open = tapio::event::GroupId::new([7; 16]);
    let grouped: Vec<RawEvent> = (0..3u64)
        .map(|i| {
            let mut e = Event::new(
                EventId::from_u128(u128::from(i) + 10),
                100 + i,
                "memory.oom_kill",
                "test",
            );
            e.correlation = Some(tapio::event::Correlation {
                group_id: open,
                impact: [0.25, 0.5, 0.75][usize::try_from(i).expect("small")],
                causal_links: Vec::new(),
            });
            RawEvent::from_message(&pb::Event::from(e)).expect("valid")
        })
        .collect();
    let closed = pb::SemanticGroup {
        group_id: vec![9; 16],
        trace_id: vec![1; 16],
        summary: "node pressure".into(),
        impact: 0.9,
        first_seen_unix_nano: 50,
        last_seen_unix_nano: 60,
        ..pb::SemanticGroup::default()
    };
    let mut with_groups = batch(1, grouped);
    with_groups.groups = vec![closed.clone()];
    store.write(with_groups).await.expect("commits");
    let groups = store.groups(0, 0, 0.0, 0).await.expect("queries");
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0], closed, "a closed group comes back whole");
    assert_eq!(groups[1].group_id, vec![7; 16]);
    assert_eq!(groups[1].event_ids.len(), 3);
    assert!((groups[1].impact - 0.75).abs() < 1e-9);
    assert_eq!(
        (
            groups[1].first_seen_unix_nano,
            groups[1].last_seen_unix_nano
        ),
        (100, 102)
    );
    let heavy = store.groups(0, 0, 0.8, 0).await.expect("queries");
    assert_eq!(heavy, [closed], "min_impact filters");
}

#[test]
fn a_bad_store_url_or_bad_credentials_fail_at_start_by_name() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let start = |store: &str| {
        std::process::Command::new(common::SERVER)
            .args(["--listen", "127.0.0.1:0", "--store", store])
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .expect("server runs")
    };
    let wrong = start(&pg.url_with("not-the-password"));
    let stderr = text(&wrong.stderr);
    assert!(!wrong.status.success(), "{stderr}");
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
    assert!(stderr.contains("--store"), "{stderr}");

    let nobody = start(&format!(
        "postgres://tapio:{PG_PASSWORD}@127.0.0.1:{}/postgres",
        common::free_port()
    ));
    let stderr = text(&nobody.stderr);
    assert!(!nobody.status.success());
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains(PG_PASSWORD), "{stderr}");

    let other = start("mysql://tapio@127.0.0.1/tapio");
    let stderr = text(&other.stderr);
    assert!(!other.status.success());
    assert!(stderr.contains("expected postgres://"), "{stderr}");
}

#[test]
fn a_postgres_crash_mid_stream_loses_nothing_and_acks_nothing_early() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(0, dir.path(), &["--store", &pg.url()]);
    let store = ["--store", &pg.url()];
    let yaml = config(
        "collectors:\n  synthetic: { config: { events: 100000, rate: 25000, scenario: oom-cascade } }\n",
    );
    let run = common::collector(
        yaml.path(),
        &["--server", &server.address(), "--flush-interval", "100ms"],
    );
    let started = Instant::now();
    while stats_of(&store).0 < 15_000 {
        assert!(started.elapsed() < Duration::from_mins(1), "no events");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Committed and acked so far: none of it may be lost by a crash.
    pg.crash();
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    let out = run.wait_for(Duration::from_mins(3));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "collector failed: {stderr}");
    assert_eq!(stats_of(&store).0, 100_000, "every event once");
    assert_eq!(last_status(&stderr, "delivered"), 100_000);
    assert_eq!(last_status(&stderr, "dropped"), 0);
    assert!(
        server.log().contains("Batch not stored"),
        "the outage was seen and retried:\n{}",
        server.log()
    );
}

/// A collector config: `events` synthetic events at `rate` a second, through JetStream at
/// `nats`.
fn through_nats(nats: &str, events: u64, rate: u64) -> tempfile::NamedTempFile {
    config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: {events}, rate: {rate}, scenario: oom-cascade }} }}\n\
         server: {{ transport: nats, flush_interval: 100ms }}\n\
         nats: {{ url: \"{nats}\", stream: {{ max_bytes: {STREAM_MAX_BYTES} }} }}\n"
    ))
}

/// A server reading JetStream at `nats` into `store_args` (`--store URL` or none: SQLite).
fn queue_server(dir: &std::path::Path, nats: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--nats",
        nats,
        "--nats-ack-wait",
        "2s",
        "--nats-max-bytes",
        STREAM_MAX_BYTES,
    ];
    args.extend_from_slice(extra);
    let server = ServerProcess::start(0, dir, &args);
    assert!(
        server.log().contains("Reading batches from JetStream."),
        "{}",
        server.log()
    );
    server
}

/// Waits until `count()` reaches `want` (or the time runs out), then returns it.
fn settle(want: u64, limit: Duration, count: impl Fn() -> u64) -> u64 {
    let started = Instant::now();
    loop {
        let now = count();
        if now >= want || started.elapsed() > limit {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `SELECT stored_by, count(*) FROM batches`: which server stored how many batches.
async fn shares(url: &str) -> Vec<(String, i64)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);
    client
        .query(
            "SELECT stored_by, count(*) FROM batches GROUP BY stored_by ORDER BY stored_by",
            &[],
        )
        .await
        .expect("queries")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_into_two_servers_on_one_postgres_survives_a_server_killed_mid_stream() {
    let pg = Postgres::start();
    let nats = Nats::start(&[]);
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let url = pg.url();
    let a = queue_server(dir_a.path(), &nats.url(), &["--store", &url, "--name", "a"]);
    let b = queue_server(dir_b.path(), &nats.url(), &["--store", &url, "--name", "b"]);
    let yaml = through_nats(&nats.url(), 300_000, 60_000);
    let run = common::collector(yaml.path(), &[]);
    let store = ["--store", url.as_str()];
    let seen = tokio::task::block_in_place(|| {
        settle(60_000, Duration::from_mins(1), || stats_of(&store).0)
    });
    assert!(
        (60_000..300_000).contains(&seen),
        "mid-stream: {seen} stored"
    );
    a.kill();
    let out = tokio::task::block_in_place(|| run.wait_for(Duration::from_mins(3)));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "collector failed: {stderr}");
    assert_eq!(last_status(&stderr, "delivered"), 300_000);
    assert_eq!(last_status(&stderr, "dropped"), 0);
    // Server b takes the rest, and what a had fetched and not acked once its ack wait
    // runs out.
    let stored = tokio::task::block_in_place(|| {
        settle(300_000, Duration::from_mins(3), || stats_of(&store).0)
    });
    assert_eq!(stored, 300_000, "every event once:\n{}", b.log());
    let shares = shares(&url).await;
    let names: Vec<&str> = shares.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b"], "both servers took a share: {shares:?}");
    assert!(shares.iter().all(|(_, n)| *n > 0), "{shares:?}");
}

#[test]
fn a_nats_restart_mid_stream_with_a_file_store_loses_nothing() {
    let mut nats = Nats::start(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let spool = tempfile::tempdir().expect("spool");
    let _server = queue_server(dir.path(), &nats.url(), &[]);
    let yaml = through_nats(&nats.url(), 100_000, 20_000);
    let run = common::collector(
        yaml.path(),
        &["--spool-dir", spool.path().to_str().expect("utf-8")],
    );
    let seen = settle(20_000, Duration::from_mins(1), || stats(dir.path()).0);
    assert!((20_000..100_000).contains(&seen), "mid-stream: {seen}");
    nats.stop();
    std::thread::sleep(Duration::from_secs(2));
    nats.resume();
    let out = run.wait_for(Duration::from_mins(3));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "collector failed: {stderr}");
    assert_eq!(last_status(&stderr, "delivered"), 100_000);
    assert_eq!(last_status(&stderr, "dropped"), 0);
    let stored = settle(100_000, Duration::from_mins(2), || stats(dir.path()).0);
    assert_eq!(stored, 100_000, "every event once");
}

#[test]
fn a_postgres_crash_behind_jetstream_is_retried_and_nothing_is_acked_early() {
    let pg = Postgres::start();
    let nats = Nats::start(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let url = pg.url();
    let server = queue_server(dir.path(), &nats.url(), &["--store", &url]);
    let yaml = through_nats(&nats.url(), 100_000, 25_000);
    let run = common::collector(yaml.path(), &[]);
    let store = ["--store", url.as_str()];
    let seen = settle(15_000, Duration::from_mins(1), || stats_of(&store).0);
    assert!(seen >= 15_000, "only {seen}");
    pg.crash();
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    let out = run.wait_for(Duration::from_mins(3));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = settle(100_000, Duration::from_mins(3), || stats_of(&store).0);
    assert_eq!(stored, 100_000, "every event once:\n{}", server.log());
    assert!(
        server
            .log()
            .contains("Batch not stored; JetStream redelivers it."),
        "the outage was seen and retried:\n{}",
        server.log()
    );
}

#[test]
fn a_collector_killed_while_nats_is_down_replays_its_spool_once() {
    let mut nats = Nats::start(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let spool = tempfile::tempdir().expect("spool");
    let spool_dir = spool.path().to_str().expect("utf-8");
    let _server = queue_server(dir.path(), &nats.url(), &[]);
    // 20 000 events over 4 s: all produced before the kill, so the end count is exact
    // whatever was in flight, in JetStream or in the spool when NATS went away.
    let yaml = through_nats(&nats.url(), 20_000, 5_000);
    let started = Instant::now();
    let first = common::collector(yaml.path(), &["--spool-dir", spool_dir]);
    let before = settle(3_000, Duration::from_mins(1), || stats(dir.path()).0);
    assert!(before >= 3_000, "nothing arrived before the outage");
    nats.stop();
    while started.elapsed() < Duration::from_secs(6) || common::spool_bytes(spool.path()) == 0 {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "nothing was spooled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(first); // SIGKILL while draining, NATS down.
    let (_, recovered) =
        tapio::bridge::Spool::open(spool.path(), 1 << 30, 8).expect("the spool opens");
    assert!(recovered.events >= 1000, "spooled {recovered:?}");
    nats.resume();
    let more = through_nats(&nats.url(), 1000, 0);
    let out = common::collector(more.path(), &["--spool-dir", spool_dir])
        .wait_for(Duration::from_mins(1));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Resending what an earlier run left in the spool."),
        "{stderr}"
    );
    let stored = settle(21_000, Duration::from_mins(1), || stats(dir.path()).0);
    assert_eq!(
        stored, 21_000,
        "every spooled event and every new one stored exactly once"
    );
    assert_eq!(
        common::spool_bytes(spool.path()),
        0,
        "an acked spool is emptied"
    );
}

#[test]
fn bad_nats_urls_and_credentials_fail_at_start_by_name() {
    let nats = Nats::start(&["--user", "tapio", "--pass", "right-password"]);
    // The collector: a URL that is not NATS is refused by the config check.
    let yaml = config(
        "collectors:\n  synthetic: { config: { events: 10 } }\nserver: { transport: nats }\nnats: { url: \"http://127.0.0.1:4222\" }\n",
    );
    let out = common::collector(yaml.path(), &[]).wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("nats.url"), "{stderr}");

    // Wrong credentials: NATS answers and refuses, so the collector stops at start.
    let password = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(password.path(), "wrong-password").expect("written");
    let yaml = config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: 10 }} }}\nserver: {{ transport: nats }}\n\
         nats: {{ url: \"{}\", auth: {{ user: tapio, password_file: \"{}\" }} }}\n",
        nats.url(),
        password.path().display()
    ));
    let out = common::collector(yaml.path(), &[]).wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refused the connection"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");

    // A stream made with other settings is named field by field.
    let plain = Nats::start(&[]);
    let first = common::collector(through_nats(&plain.url(), 10, 0).path(), &[])
        .wait_for(Duration::from_secs(30));
    assert!(first.status.success(), "{}", text(&first.stderr));
    let yaml = config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: 10 }} }}\nserver: {{ transport: nats }}\n\
         nats: {{ url: \"{}\", stream: {{ max_age: 1h, retention: limits, max_bytes: {STREAM_MAX_BYTES} }} }}\n",
        plain.url()
    ));
    let out = common::collector(yaml.path(), &[]).wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exists with other settings")
            && stderr.contains("max_age is")
            && stderr.contains("retention is"),
        "{stderr}"
    );

    // The server: wrong credentials, and nothing listening, both stop it at start.
    let dir = tempfile::tempdir().expect("dir");
    let server = |args: &[&str]| {
        std::process::Command::new(common::SERVER)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .expect("server runs")
    };
    let out = server(&[
        "--nats",
        &nats.url(),
        "--nats-user",
        "tapio",
        "--nats-password-file",
        password.path().to_str().expect("utf-8"),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refused the connection"), "{stderr}");
    let nowhere = format!("nats://127.0.0.1:{}", common::free_port());
    let out = server(&["--nats", &nowhere]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach NATS"), "{stderr}");
}

#[test]
fn a_stream_cap_beyond_the_nats_storage_is_refused_at_start_naming_the_setting() {
    // NATS reserves a stream's max_bytes up front; this one has 64 MB of JetStream storage.
    let conf = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(conf.path(), "jetstream { max_file_store: 64MB }\n").expect("written");
    let nats = Nats::start(&["-c", conf.path().to_str().expect("utf-8")]);

    let dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(common::SERVER)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--nats", &nats.url()])
        .output()
        .expect("server runs");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot reserve the 10737418240 bytes --nats-max-bytes asks for"),
        "{stderr}"
    );

    let yaml = config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: 10 }} }}\nserver: {{ transport: nats }}\n\
         nats: {{ url: \"{}\" }}\n",
        nats.url()
    ));
    let out = common::collector(yaml.path(), &[]).wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("lower nats.stream.max_bytes"), "{stderr}");

    // A cap that fits is taken, and the events go through.
    let fits = config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: 10 }} }}\nserver: {{ transport: nats }}\n\
         nats: {{ url: \"{}\", stream: {{ max_bytes: 32MiB }} }}\n",
        nats.url()
    ));
    let out = common::collector(fits.path(), &[]).wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(last_status(&stderr, "delivered"), 10, "{stderr}");
    assert_eq!(last_status(&stderr, "dropped"), 0, "{stderr}");
}

#[test]
fn a_stream_the_server_creates_has_what_its_flags_give_and_bad_ones_are_named() {
    let nats = Nats::start(&[]);
    let dir = tempfile::tempdir().expect("dir");
    let server = |args: &[&str]| {
        std::process::Command::new(common::SERVER)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--nats", &nats.url(), "--nats-max-bytes", STREAM_MAX_BYTES])
            .args(args)
            .output()
            .expect("server runs")
    };
    for (args, named) in [
        (&["--nats-replicas", "2"][..], "--nats-replicas"),
        (&["--nats-max-age", "1m"][..], "--nats-max-age"),
    ] {
        let out = server(args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
    }

    // The server comes first and creates the stream; a collector asking for the same
    // settings finds them, and delivers.
    let _server = queue_server(dir.path(), &nats.url(), &["--nats-max-age", "1h"]);
    let yaml = config(&format!(
        "collectors:\n  synthetic: {{ config: {{ events: 10 }} }}\nserver: {{ transport: nats }}\n\
         nats: {{ url: \"{}\", stream: {{ max_bytes: {STREAM_MAX_BYTES}, max_age: 1h }} }}\n",
        nats.url()
    ));
    let out = common::collector(yaml.path(), &[]).wait_for(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(last_status(&stderr, "delivered"), 10, "{stderr}");
}
