//! What the server counts, and `--metrics-listen`: `GET /metrics` (Prometheus text) and
//! `GET /healthz`, for the same scrape and alerting setup as the collectors'.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Refused;
use super::store::{self, Committed, Store};
use crate::prom::{Exposition, Histogram, Kind, LATENCY_BUCKETS};

/// Why a batch was refused for good, as the `reason` label.
const REASONS: [&str; 4] = [
    "too_many_events",
    "malformed_event",
    "malformed_group",
    "not_a_batch",
];

impl Refused {
    /// The `reason` label of this refusal.
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::TooManyEvents { .. } => REASONS[0],
            Self::Event { .. } => REASONS[1],
            Self::Group { .. } => REASONS[2],
            Self::NotABatch(_) => REASONS[3],
        }
    }
}

/// The server's counters, shared by the gRPC streams and the JetStream reader.
#[derive(Debug)]
pub struct ServerMetrics {
    events_stored: AtomicU64,
    duplicates: AtomicU64,
    batches_stored: AtomicU64,
    batches_retried: AtomicU64,
    rejected: [AtomicU64; REASONS.len()],
    streams: AtomicU64,
    commit_latency: Histogram,
    retained: [AtomicU64; 3],
    buffered: AtomicU64,
    buffer_limit: u64,
    buffer_full: AtomicU64,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self {
            events_stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            batches_stored: AtomicU64::new(0),
            batches_retried: AtomicU64::new(0),
            rejected: Default::default(),
            streams: AtomicU64::new(0),
            commit_latency: Histogram::new(LATENCY_BUCKETS),
            retained: Default::default(),
            buffered: AtomicU64::new(0),
            buffer_limit: 0,
            buffer_full: AtomicU64::new(0),
        }
    }
}

impl ServerMetrics {
    /// Counters for a server whose streams share `limit` bytes of buffer.
    #[must_use]
    pub fn with_buffer_limit(limit: u64) -> Self {
        Self {
            buffer_limit: limit,
            ..Self::default()
        }
    }

    /// A batch took `bytes` of the server-wide buffer.
    pub fn buffered(&self, bytes: u64) {
        self.buffered.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A batch gave its `bytes` back.
    pub fn unbuffered(&self, bytes: u64) {
        self.buffered.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A stream found the server-wide buffer full and waits for commits to free room.
    pub fn buffer_full(&self) {
        self.buffer_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes `batch` to `store`, counting its outcome and how long the commit took.
    pub async fn commit(&self, store: &Store, batch: store::Batch) -> store::Result<Committed> {
        let started = Instant::now();
        let result = store.write(batch).await;
        match &result {
            Ok(done) => {
                self.commit_latency.observe(started.elapsed());
                self.events_stored
                    .fetch_add(u64::from(done.accepted), Ordering::Relaxed);
                self.duplicates
                    .fetch_add(u64::from(done.duplicates), Ordering::Relaxed);
                self.batches_stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.batches_retried.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Counts a batch refused for good.
    pub fn refused(&self, refused: &Refused) {
        let i = REASONS
            .iter()
            .position(|r| *r == refused.reason())
            .unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Batches stored, retried (the store failed) and refused for good, so far.
    #[must_use]
    pub fn batch_outcomes(&self) -> (u64, u64, u64) {
        (
            self.batches_stored.load(Ordering::Relaxed),
            self.batches_retried.load(Ordering::Relaxed),
            self.rejected
                .iter()
                .map(|r| r.load(Ordering::Relaxed))
                .sum(),
        )
    }

    /// A collector's stream opened; the guard counts it closed when dropped.
    #[must_use]
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(Arc::clone(self))
    }

    /// The Prometheus page, with the store's size read now.
    pub async fn render(&self, store: &Store) -> String {
        let mut page = Exposition::default();
        crate::prom::process(&mut page);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        page.single(
            "tapio_server_events_stored_total",
            Kind::Counter,
            "Events stored for the first time (the ingest rate is its rate()).",
            load(&self.events_stored),
        );
        page.single(
            "tapio_server_events_duplicate_total",
            Kind::Counter,
            "Events received again and recognised as already stored.",
            load(&self.duplicates),
        );
        page.single(
            "tapio_server_batches_stored_total",
            Kind::Counter,
            "Batches committed and acknowledged.",
            load(&self.batches_stored),
        );
        page.single(
            "tapio_server_batches_retried_total",
            Kind::Counter,
            "Batches the store failed to commit; the sender resends them.",
            load(&self.batches_retried),
        );
        let name = "tapio_server_batches_rejected_total";
        page.family(
            name,
            Kind::Counter,
            "Batches refused for good, by reason; resending them cannot help.",
        );
        for (reason, count) in REASONS.iter().zip(&self.rejected) {
            page.sample(name, &[("reason", reason)], load(count));
        }
        page.single(
            "tapio_server_connected_collectors",
            Kind::Gauge,
            "Collector streams open over gRPC.",
            load(&self.streams),
        );
        page.single(
            "tapio_server_buffered_bytes",
            Kind::Gauge,
            "Bytes of batches received over gRPC and not yet acked, all streams together.",
            load(&self.buffered),
        );
        page.single(
            "tapio_server_buffer_limit_bytes",
            Kind::Gauge,
            "The bound on tapio_server_buffered_bytes (--buffer-bytes).",
            self.buffer_limit,
        );
        page.single(
            "tapio_server_buffer_full_total",
            Kind::Counter,
            "Times a stream waited because the server-wide buffer was full (the store commits less than the collectors send).",
            load(&self.buffer_full),
        );
        let name = "tapio_server_commit_latency_seconds";
        page.family(
            name,
            Kind::Histogram,
            "Time to commit one batch to the store.",
        )
        .histogram(name, &[], &self.commit_latency);
        let name = "tapio_server_retention_removed_total";
        page.family(
            name,
            Kind::Counter,
            "What retention removed, by kind (events, groups, batch records).",
        );
        for (what, count) in ["events", "groups", "batches"].iter().zip(&self.retained) {
            page.sample(name, &[("kind", what)], load(count));
        }
        match store.size_bytes().await {
            Ok(bytes) => page.single(
                "tapio_server_store_bytes",
                Kind::Gauge,
                "Bytes the store takes: SQLite's files, or PostgreSQL's database.",
                bytes,
            ),
            Err(e) => tracing::warn!(error = %e, "Cannot read the store's size for /metrics."),
        }
        page.finish()
    }
}

/// Runs a retention pass every `every` until `stop`; each pass removes in small steps,
/// beside ingest, never in it.
pub async fn retain_every(
    store: Store,
    policy: store::Retention,
    every: std::time::Duration,
    metrics: Arc<ServerMetrics>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        // A pass is not cut short by shutdown mid-step: each step is its own transaction.
        match store.retain(policy).await {
            Ok(removed) => {
                for (count, n) in
                    metrics
                        .retained
                        .iter()
                        .zip([removed.events, removed.groups, removed.batches])
                {
                    count.fetch_add(n, Ordering::Relaxed);
                }
                if removed != store::Removed::default() {
                    tracing::info!(
                        events = removed.events,
                        groups = removed.groups,
                        batches = removed.batches,
                        took_ms = started.elapsed().as_millis(),
                        "Retention removed old data."
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Retention pass failed; the next one tries again.");
            }
        }
    }
}

/// Counts one open stream until dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<ServerMetrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Scraped {
    metrics: Arc<ServerMetrics>,
    store: Store,
}

/// Binds `addr` and serves `/metrics` and `/healthz` until `stop` is cancelled.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<ServerMetrics>,
    store: Store,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "Serving /metrics and /healthz.");
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(Scraped { metrics, store });
    Ok(crate::prom::serve_until(listener, app, stop))
}

async fn render(State(scraped): State<Scraped>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        scraped.metrics.render(&scraped.store).await,
    )
}
