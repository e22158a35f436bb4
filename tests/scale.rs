//! Past one server: tapio-server on a PostgreSQL store shared by several servers, and
//! (with JetStream between collectors and servers) servers that die, a queue that
//! restarts, a database that restarts, a collector killed while the queue is away. Every
//! peer is the real one: PostgreSQL 15 and nats-server from Debian, started by the test.

mod common;

use std::time::{Duration, Instant};

use common::peers::{PG_PASSWORD, Postgres};
use common::{ServerProcess, config, last_status, stats_of, text};
use tapio::event::{Event, EventId};
use tapio::pb;
use tapio::server::store::{Batch, EventQuery, Location, Store, Sync};
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

#[tokio::test]
async fn the_postgres_store_keeps_each_event_once_and_drops_whole_days() {
    let pg = Postgres::start();
    let store = Store::open(&Location::Postgres(pg.url()), Sync::Full, 4)
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
    // The same events again (a resend after a lost ack), with one new.
    let again = store
        .write(batch(
            2,
            vec![raw(2, monday + 6, "a.b"), raw(4, monday + DAY + 2, "c.d")],
        ))
        .await
        .expect("commits");
    assert_eq!((again.accepted, again.duplicates), (1, 1));
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
    let other = Store::open(&Location::Postgres(pg.url()), Sync::Full, 2)
        .await
        .expect("a second server connects");
    assert_eq!(other.stats().await.expect("stats").events_total, 4);

    let Store::Postgres(postgres) = &store else {
        panic!("a PostgreSQL store")
    };
    let dropped = postgres
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
