//! Retention during ingest: how long a batch waits for its commit (the server acks right
//! after it) while `--retention-age` removes a backlog of old events, against the same
//! ingest with no retention running, in one run.
//!
//! The store is SQLite with `--sync full` (the server's default), filled with
//! `RETENTION_OLD` events collected ten days ago (default 2,000,000). Ingest then runs at
//! `RETENTION_RATE` events/s (default 20,000, in batches of 1000, several in flight) for
//! 10 s without retention, then for as long as a 7-day retention pass takes.
//!
//! Command: `cargo bench --bench retention`. Figures: docs/benchmarks.md.

#![allow(
    clippy::cast_precision_loss,
    reason = "event counts and batch sizes far below 2^52 become rates"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tapio::event::{Event, EventId, IdGenerator};
use tapio::pb;
use tapio::server::store::sqlite::Sqlite;
use tapio::server::store::{Batch, Removed, Retention, Sync};
use tapio::server::wire::RawEvent;
use tokio::sync::Mutex;

const BATCH: usize = 1000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(id: EventId, i: usize) -> RawEvent {
    let mut e = Event::new(
        id,
        1_790_000_000_000_000_000 + i as u64,
        "net.tcp.connect",
        "synthetic",
    );
    e.message = "java connected to postgres.data:5432".into();
    e.entities.node = "worker-3".into();
    e.entities.pod_namespace = "payments".into();
    e.entities.pod_name = "checkout-7d9f8-x2k4p".into();
    e.attributes.set("dport", 5432);
    RawEvent::from_message(&pb::Event::from(e)).expect("valid event")
}

fn batch(id: u64, events: Vec<RawEvent>) -> Batch {
    Batch {
        collector_id: "bench".into(),
        batch_id: id,
        sequence: id,
        events,
        groups: Vec::new(),
    }
}

/// Sorted commit latencies: (p50, p99, max), in milliseconds.
fn summary(latencies: &mut [Duration]) -> (f64, f64, f64) {
    latencies.sort_unstable();
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "an index into a short list"
        )]
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99), at(1.0))
}

/// Ingest at `rate` events/s until `until` resolves; returns each batch's commit latency.
async fn ingest(
    store: &Sqlite,
    ids: &Arc<Mutex<IdGenerator>>,
    next_batch: &mut u64,
    rate: u64,
    until: impl std::future::Future<Output = ()>,
) -> Vec<Duration> {
    let every = Duration::from_secs_f64(BATCH as f64 / rate as f64);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut writes = tokio::task::JoinSet::new();
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => break,
            _ = ticker.tick() => {
                let events = {
                    let mut ids = ids.lock().await;
                    (0..BATCH).map(|i| event(ids.next_id(), i)).collect()
                };
                *next_batch += 1;
                let (store, write) = (store.clone(), batch(*next_batch, events));
                writes.spawn(async move {
                    let started = Instant::now();
                    store.write(write).await.expect("commits");
                    started.elapsed()
                });
            }
        }
    }
    writes.join_all().await
}

/// Stores `old` events collected ten days ago; returns the last batch id used.
async fn fill(store: &Sqlite, old: u64) -> u64 {
    let ten_days_ago = u128::from(
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("fits")
            - 10 * 86_400_000,
    );
    let filling = Instant::now();
    let mut next_batch = 0u64;
    let mut pending = tokio::task::JoinSet::new();
    for start in (0..old).step_by(BATCH) {
        let events = (0..BATCH)
            .map(|i| {
                let n = u128::from(start) + i as u128;
                event(EventId::from_u128((ten_days_ago << 80) | n), i)
            })
            .collect();
        next_batch += 1;
        let (store, write) = (store.clone(), batch(next_batch, events));
        pending.spawn(async move { store.write(write).await.expect("commits") });
        if pending.len() >= 16 {
            pending.join_next().await;
        }
    }
    pending.join_all().await;
    let stats = store.stats().expect("stats");
    println!(
        "filled {} old events ({} MiB) in {:.1} s",
        stats.events_total,
        stats.used_bytes >> 20,
        filling.elapsed().as_secs_f64()
    );

    next_batch
}

fn main() {
    let old = env("RETENTION_OLD", 2_000_000);
    let rate = env("RETENTION_RATE", 20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let store = Sqlite::open(dir.path(), Sync::Full).expect("opens");
        let mut next_batch = fill(&store, old).await;

        let ids = Arc::new(Mutex::new(IdGenerator::new()));
        let mut baseline = ingest(
            &store,
            &ids,
            &mut next_batch,
            rate,
            tokio::time::sleep(Duration::from_secs(10)),
        )
        .await;

        let policy = Retention {
            age: Some(Duration::from_hours(24 * 7)),
            max_bytes: None,
        };
        let retaining = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let removed = store.retain(policy).expect("retains");
                (removed, started.elapsed())
            })
        };
        let done = Arc::new(tokio::sync::Notify::new());
        let result: Arc<std::sync::Mutex<Option<(Removed, Duration)>>> = Arc::default();
        {
            let (done, result) = (Arc::clone(&done), Arc::clone(&result));
            tokio::spawn(async move {
                let outcome = retaining.await.expect("retention ran");
                *result.lock().expect("lock") = Some(outcome);
                done.notify_one();
            });
        }
        let mut during = ingest(&store, &ids, &mut next_batch, rate, done.notified()).await;
        let (removed, took) = result.lock().expect("lock").take().expect("retention finished");

        let (b50, b99, bmax) = summary(&mut baseline);
        let (d50, d99, dmax) = summary(&mut during);
        println!(
            "ingest {rate} events/s, commit latency without retention: p50 {b50:.1} ms, p99 {b99:.1} ms, max {bmax:.1} ms ({} batches)",
            baseline.len()
        );
        println!(
            "during retention:                                 p50 {d50:.1} ms, p99 {d99:.1} ms, max {dmax:.1} ms ({} batches)",
            during.len()
        );
        println!(
            "retention removed {} events in {:.1} s ({:.0} events/s); p99 ratio {:.2}, max ratio {:.2}; the longest wait {} 100 ms",
            removed.events,
            took.as_secs_f64(),
            removed.events as f64 / took.as_secs_f64(),
            d99 / b99,
            dmax / bmax,
            if dmax < 100.0 { "stayed under" } else { "went over" }
        );
        let left = store.stats().expect("stats");
        println!(
            "left: {} events, {} MiB in use",
            left.events_total,
            left.used_bytes >> 20
        );
    });
}
