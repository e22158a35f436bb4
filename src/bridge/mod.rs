//! The bridge: batches enriched events and delivers them to a Tapio server over one
//! bidirectional gRPC stream, keeping every batch until the server acks it after a durable
//! write.
//!
//! One task owns all delivery state, so there are no locks: it reads events from the
//! pipeline, seals batches, keeps a window of unacked batches on the stream, resends them
//! after a reconnect, honours the server's flow control, and on shutdown drains until
//! everything is acked or the drain timeout runs out.

mod batch;
mod codec;
pub mod spool;

use std::collections::VecDeque;
use std::future::{Future, pending};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Endpoint};

pub use batch::{Batcher, MAX_BATCH_BYTES, Origin, Sealed, TooLarge};
pub use codec::PreEncoded;
pub use spool::{Recovered, Spool, SpoolRef};

use crate::event::Event;
use crate::internal_events::EventsDropped;
use crate::pb;
use crate::source_sender::{Closed, WhenFull};
use crate::telemetry::{BridgeStats, DropCause};

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server address does not form a valid URI.
    #[error("invalid server address {address:?}: {source}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The token is not valid in an HTTP header.
    #[error("the bearer token contains characters not allowed in an HTTP header")]
    Token,
    /// A TLS file could not be read or used.
    #[error("TLS to the server: {0}")]
    Tls(#[from] crate::tls::Error),
    /// The TLS settings were refused by the gRPC transport.
    #[error("TLS to the server: {}", crate::tls::error_chain(.0))]
    TlsSetup(#[source] tonic::transport::Error),
    /// The spool directory could not be opened.
    #[error("cannot open the spool in {path}: {source}")]
    Spool {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The on-disk spool's settings.
#[derive(Clone, Debug)]
pub struct SpoolConfig {
    /// Directory of the segment files.
    pub dir: std::path::PathBuf,
    /// Cap on its size.
    pub max_bytes: u64,
    /// At the cap: `block` holds the pipeline back; `drop_newest` drops and counts.
    pub when_full: WhenFull,
}

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `host:port` of the server.
    pub address: String,
    /// Identifies this collector to the server (the node name).
    pub collector_id: String,
    /// Events per batch.
    pub batch_events: usize,
    /// Longest time an event waits in a partial batch.
    pub flush_interval: Duration,
    /// Unacked batches on the stream at most.
    pub window: usize,
    /// Sealed batches held in memory while the server is slow or away; beyond that the
    /// pipeline waits (back-pressure).
    pub max_pending_batches: usize,
    /// How long to keep delivering after the input ends.
    pub drain_timeout: Duration,
    /// Bearer token sent with the stream.
    pub token: Option<String>,
    /// Where batches wait on disk; without it they wait in memory only.
    pub spool: Option<SpoolConfig>,
    /// TLS to the server; `None` is plain text.
    pub tls: Option<TlsFiles>,
}

/// PEM files for TLS to the server.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA that signed the server's certificate; the system's roots when absent.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Events still unacknowledged when the drain timeout ran out, without a spool to keep
    /// them (counted as dropped). Events left in a spool are not undelivered: the next
    /// start sends them.
    pub undelivered: u64,
}

/// What the pipeline hands the bridge.
#[derive(Debug)]
pub enum Input {
    /// Enriched events.
    Events(Vec<Event>),
    /// Incident groups the correlation closed.
    Groups(Vec<pb::SemanticGroup>),
}

/// The pipeline's handle to the bridge task.
#[derive(Debug)]
pub struct Bridge {
    input: mpsc::Sender<Input>,
    task: JoinHandle<Report>,
    stats: Arc<BridgeStats>,
}

impl Bridge {
    /// Checks the configuration, opens the spool and starts the delivery task. Once
    /// `input_ending` is cancelled (no new events will come) it takes all remaining input
    /// without holding the pipeline back, so the pipeline can drain.
    pub fn spawn(
        config: BridgeConfig,
        stats: Arc<BridgeStats>,
        input_ending: CancellationToken,
    ) -> Result<Self, Error> {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", config.address))
            .map_err(|source| Error::Address {
                address: config.address.clone(),
                source,
            })?;
        if let Some(files) = &config.tls {
            endpoint = endpoint
                .tls_config(client_tls(files)?)
                .map_err(Error::TlsSetup)?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let token = config
            .token
            .as_deref()
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<tonic::metadata::MetadataValue<_>>()
                    .map_err(|_| Error::Token)
            })
            .transpose()?;
        let queue = match &config.spool {
            None => Queue::Memory(VecDeque::new()),
            Some(spool) => {
                let (opened, recovered) =
                    Spool::open(&spool.dir, spool.max_bytes, config.max_pending_batches).map_err(
                        |source| Error::Spool {
                            path: spool.dir.clone(),
                            source,
                        },
                    )?;
                if recovered.batches > 0 {
                    tracing::info!(
                        batches = recovered.batches,
                        events = recovered.events,
                        spool = %spool.dir.display(),
                        "Resending what an earlier run left in the spool."
                    );
                }
                stats.pending.fetch_add(recovered.events, Ordering::Relaxed);
                EventsDropped {
                    component: "bridge",
                    counters: &stats.dropped,
                    cause: DropCause::SpoolCorrupt,
                    count: recovered.corrupt_events,
                }
                .emit();
                stats.spooled.store(recovered.events, Ordering::Relaxed);
                Queue::Spool(opened, spool.when_full)
            }
        };
        let (input, events) = mpsc::channel(4);
        let task = tokio::spawn(run(
            config,
            endpoint,
            token,
            events,
            Arc::clone(&stats),
            queue,
            input_ending,
        ));
        Ok(Self { input, task, stats })
    }

    /// Hands a batch of enriched events to the bridge; waits while it holds as much as it
    /// may (back-pressure). When the bridge task is gone, the events are counted as lost.
    pub async fn send(&self, events: Vec<Event>) -> Result<(), Closed> {
        self.input
            .send(Input::Events(events))
            .await
            .map_err(|refused| {
                if let Input::Events(events) = refused.0 {
                    self.count_lost(events.len() as u64);
                }
                Closed
            })
    }

    /// Counts events the pipeline could not hand to a bridge task that is gone.
    pub fn count_lost(&self, events: u64) {
        EventsDropped {
            component: "bridge",
            counters: &self.stats.dropped,
            cause: DropCause::Internal,
            count: events,
        }
        .emit();
    }

    /// Hands closed incident groups to the bridge; they ride the next batch.
    pub async fn send_groups(&self, groups: Vec<pb::SemanticGroup>) -> Result<(), Closed> {
        if groups.is_empty() {
            return Ok(());
        }
        self.input
            .send(Input::Groups(groups))
            .await
            .map_err(|_| Closed)
    }

    /// Closes the input and waits until everything is acked or the drain timeout runs out.
    /// A bridge task that panicked loses what it held in memory (not what it spooled):
    /// that is counted as `internal_error`.
    pub async fn finish(self) -> Report {
        let Self { input, task, stats } = self;
        drop(input);
        task.await.unwrap_or_else(|e| {
            let pending = stats.pending.swap(0, Ordering::Relaxed);
            let spooled = match stats.spooled.load(Ordering::Relaxed) {
                u64::MAX => 0,
                n => n,
            };
            let lost = pending.saturating_sub(spooled);
            tracing::error!(error = %e, events = lost, "The bridge task failed; counting the events it held.");
            EventsDropped {
                component: "bridge",
                counters: &stats.dropped,
                cause: DropCause::Internal,
                count: lost,
            }
            .emit();
            Report { undelivered: lost }
        })
    }
}

fn client_tls(files: &TlsFiles) -> Result<tonic::transport::ClientTlsConfig, Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new();
    tls = match &files.ca {
        Some(ca) => {
            // Parsed here too, so a bad file is named rather than a transport error.
            crate::tls::roots(ca, "CA")?;
            tls.ca_certificate(Certificate::from_pem(crate::tls::read_pem(ca, "CA")?))
        }
        None => tls.with_native_roots(),
    };
    if let Some((cert, key)) = &files.identity {
        crate::tls::client_identity(cert, key)?;
        tls = tls.identity(Identity::from_pem(
            crate::tls::read_pem(cert, "client certificate")?,
            crate::tls::read_pem(key, "client key")?,
        ));
    }
    Ok(tls)
}

/// One open stream to the server.
struct Connection {
    outbound: mpsc::Sender<Bytes>,
    inbound: Streaming<pb::TapioStreamEventsResponse>,
    /// The server's rate limit from the response headers, if it set one.
    rate_limit: Option<u64>,
    /// The server's largest message, from the response headers, if it said.
    message_limit: Option<usize>,
}

async fn connect(
    endpoint: Endpoint,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    hello: Bytes,
    window: usize,
) -> Result<Connection, Status> {
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {}", crate::tls::error_chain(&e))))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {}", crate::tls::error_chain(&e))))?;
    // The outbound half is fed from the bridge task through this channel: the stream must
    // stay open across many sends, and room for the window plus the hello means a send
    // never waits while fewer than `window` batches are unacked.
    let (outbound, rx) = mpsc::channel(window + 2);
    outbound
        .try_send(hello)
        .map_err(|_| Status::internal("hello did not fit"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token);
    }
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/tapio.v1.TapioService/StreamEvents");
    let response = grpc.streaming(request, path, PreEncoded).await?;
    let header = |name: &str| {
        response
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    };
    let rate_limit = header(crate::pb::RATE_LIMIT_HEADER);
    let message_limit =
        header(crate::pb::MESSAGE_LIMIT_HEADER).and_then(|limit: u64| usize::try_from(limit).ok());
    Ok(Connection {
        outbound,
        inbound: response.into_inner(),
        rate_limit,
        message_limit,
    })
}

/// Jittered exponential backoff between connection attempts (backon's): a step from 50 ms
/// doubling up to 5 s, each delay the step plus up to as much again at random.
#[derive(Debug)]
struct Backoff(backon::ExponentialBackoff);

impl Backoff {
    const MAX: Duration = Duration::from_secs(10);

    fn new() -> Self {
        use backon::BackoffBuilder as _;
        Self(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Self::MAX / 2)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    /// The next delay.
    fn delay(&mut self) -> Duration {
        self.0.next().unwrap_or(Self::MAX)
    }

    /// Starts over from the first step (after a connection succeeded).
    fn reset(&mut self) {
        *self = Self::new();
    }
}

/// Awaits `f` if there is one, else never resolves (a disabled `select!` branch).
async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => pending().await,
    }
}

async fn next_response(
    connection: Option<&mut Connection>,
) -> Result<Option<pb::TapioStreamEventsResponse>, Status> {
    match connection {
        Some(c) => c.inbound.message().await,
        None => pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

/// Sealed batches not on the stream yet, in send order.
#[derive(Debug)]
enum Queue {
    /// In memory, up to `max_pending_batches`.
    Memory(VecDeque<Sealed>),
    /// Written ahead to disk (and the oldest cached in memory), with its policy at the cap.
    Spool(Spool, WhenFull),
}

/// Delivery state owned by the bridge task.
struct Delivery {
    config: BridgeConfig,
    stats: Arc<BridgeStats>,
    batcher: Batcher,
    pending: Queue,
    /// Sealed batches the spool has no room for yet, in order; while any wait here, a
    /// `block` spool takes no more input.
    held: VecDeque<Sealed>,
    /// When to try the spool again after a failed write.
    spool_retry_at: Option<Instant>,
    /// Stopping: take every remaining input, even past the memory or spool cap (what is
    /// still held past the spool's at the end is dropped and counted), so the pipeline can
    /// drain and the drain timeout can start.
    stopping: bool,
    /// On the stream, not acked yet, in send order.
    inflight: VecDeque<Sealed>,
    /// Server flow control: paused, events per second (0 = no limit).
    paused: bool,
    limit_per_second: u64,
    /// No batch goes before this (rate limit, or a server's request to retry later).
    next_send_at: Instant,
    /// Spool write failures in a row, for a log that is visible but not a flood.
    spool_failures: u64,
}

/// How long a batch the spool could not take waits before the next try.
const SPOOL_RETRY: Duration = Duration::from_secs(1);

impl Delivery {
    fn new(config: BridgeConfig, stats: Arc<BridgeStats>, pending: Queue, first_id: u64) -> Self {
        let mut batcher = Batcher::new(
            config.collector_id.clone(),
            config.batch_events,
            config.flush_interval,
            first_id,
        );
        if let Some(spool) = &config.spool {
            // A sealed batch always fits in an empty spool, so `block` never waits for
            // room that cannot come.
            batcher.limit_bytes(Spool::largest_batch(spool.max_bytes));
        }
        Self {
            batcher,
            config,
            stats,
            pending,
            held: VecDeque::new(),
            spool_retry_at: None,
            stopping: false,
            inflight: VecDeque::new(),
            paused: false,
            limit_per_second: 0,
            next_send_at: Instant::now(),
            spool_failures: 0,
        }
    }

    fn has_room(&self) -> bool {
        match &self.pending {
            Queue::Memory(batches) => {
                self.stopping || batches.len() < self.config.max_pending_batches
            }
            Queue::Spool(_, WhenFull::Block) => self.stopping || self.held.is_empty(),
            Queue::Spool(_, WhenFull::DropNewest) => true,
        }
    }

    fn nothing_pending(&self) -> bool {
        match &self.pending {
            Queue::Memory(batches) => batches.is_empty(),
            Queue::Spool(spool, _) => spool.is_drained(),
        }
    }

    fn is_empty(&self) -> bool {
        self.nothing_pending()
            && self.held.is_empty()
            && self.inflight.is_empty()
            && self.batcher.is_empty()
    }

    fn push(&mut self, events: Vec<Event>) {
        self.stats
            .pending
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        for event in events {
            match self.batcher.push(&event) {
                Ok(Some(sealed)) => self.enqueue(sealed),
                Ok(None) => {}
                Err(too_large) => {
                    tracing::warn!(event_type = %event.kind, id = %event.id, error = %too_large, "Event refused: too large to deliver.");
                    self.drop_events(DropCause::TooLarge, 1);
                }
            }
        }
    }

    fn push_groups(&mut self, groups: &[pb::SemanticGroup]) {
        for group in groups {
            match self.batcher.push_group(group) {
                Ok(Some(sealed)) => self.enqueue(sealed),
                Ok(None) => {}
                Err(too_large) => {
                    tracing::warn!(summary = %group.summary, error = %too_large, "Incident group not sent: too large for a batch.");
                }
            }
        }
    }

    fn seal(&mut self) {
        if let Some(sealed) = self.batcher.seal() {
            self.enqueue(sealed);
        }
    }

    fn enqueue(&mut self, sealed: Sealed) {
        match &mut self.pending {
            Queue::Memory(batches) => batches.push_back(sealed),
            Queue::Spool(..) if !self.held.is_empty() => self.held.push_back(sealed),
            Queue::Spool(..) => {
                if let Err(sealed) = self.spool(sealed) {
                    self.held.push_back(sealed);
                }
            }
        }
    }

    /// Writes a batch to the spool. Gives it back when it must wait (`block`: no room yet,
    /// or the write failed); under `drop_newest` such a batch is dropped and counted.
    fn spool(&mut self, mut sealed: Sealed) -> Result<(), Sealed> {
        let Queue::Spool(spool, when_full) = &mut self.pending else {
            unreachable!("only called with a spool")
        };
        let when_full = *when_full;
        let outcome = if spool.has_room(sealed.bytes.len()) {
            spool.append(&mut sealed).map_err(|e| {
                self.spool_failures += 1;
                if self.spool_failures.is_power_of_two() {
                    tracing::error!(error = %e, failures = self.spool_failures, "Cannot write to the spool; holding the batch and retrying.");
                }
                if e.raw_os_error().is_some_and(is_disk_full) {
                    DropCause::SpoolFull
                } else {
                    DropCause::SpoolError
                }
            })
        } else {
            Err(DropCause::SpoolFull)
        };
        match outcome {
            Ok(()) => {
                self.spool_failures = 0;
                // On disk, it survives a restart: as good as delivered for the receipts.
                crate::delivery::confirm_all(std::mem::take(&mut sealed.receipts));
                self.update_spooled();
                Ok(())
            }
            Err(cause) if when_full == WhenFull::DropNewest => {
                self.drop_events(cause, u64::from(sealed.events));
                Ok(())
            }
            Err(cause) => {
                if cause != DropCause::SpoolFull || self.spool_failures > 0 {
                    self.spool_retry_at = Some(Instant::now() + SPOOL_RETRY);
                }
                Err(sealed)
            }
        }
    }

    /// Moves held batches into the spool while it takes them.
    fn flush_held(&mut self) {
        self.spool_retry_at = None;
        while let Some(sealed) = self.held.pop_front() {
            if let Err(sealed) = self.spool(sealed) {
                self.held.push_front(sealed);
                break;
            }
        }
    }

    /// Periodic spool upkeep: files removed under the agent come back, held batches are
    /// retried.
    fn tend_spool(&mut self) {
        if let Queue::Spool(spool, _) = &mut self.pending {
            match spool.check() {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        segments = n,
                        "The spool's files were removed while in use; recreated them from the open files."
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "The spool's files were removed while in use and cannot be recreated; unacked batches survive only in this process.");
                }
            }
        }
        if self.spool_retry_at.is_some_and(|at| at <= Instant::now()) {
            self.flush_held();
        }
    }

    fn update_spooled(&self) {
        if let Queue::Spool(spool, _) = &self.pending {
            self.stats
                .spooled
                .store(spool.unacked_events(), Ordering::Relaxed);
        }
    }

    /// The next batch to send, if any.
    fn next_pending(&mut self) -> Option<Sealed> {
        match &mut self.pending {
            Queue::Memory(batches) => batches.pop_front(),
            Queue::Spool(spool, _) => {
                let next = spool.next_unsent().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "Cannot read the spool; what is left in it waits for the next start.");
                    None
                });
                let lost = spool.take_lost();
                if lost > 0 {
                    self.drop_events(DropCause::SpoolCorrupt, lost);
                    self.update_spooled();
                }
                next
            }
        }
    }

    fn push_front(&mut self, batch: Sealed) {
        match &mut self.pending {
            Queue::Memory(batches) => batches.push_front(batch),
            Queue::Spool(spool, _) => spool.requeue(batch),
        }
    }

    /// Puts what was on a lost stream back in front, in order, to be resent.
    fn requeue(&mut self) {
        while let Some(batch) = self.inflight.pop_back() {
            self.push_front(batch);
        }
    }

    /// When the rate limit or a retry hold next lets a batch go, if that is what holds
    /// sending back.
    fn rate_wait(&self) -> Option<Instant> {
        (!self.paused
            && !self.nothing_pending()
            && self.inflight.len() < self.config.window
            && Instant::now() < self.next_send_at)
            .then_some(self.next_send_at)
    }

    /// Sends pending batches while the window, flow control and rate limit allow. Returns
    /// false when the stream turned out to be closed.
    fn pump(&mut self, outbound: &mpsc::Sender<Bytes>) -> bool {
        while !self.paused && self.inflight.len() < self.config.window {
            let now = Instant::now();
            if now < self.next_send_at {
                break;
            }
            let Some(batch) = self.next_pending() else {
                break;
            };
            if batch.bytes.len() > self.batcher.max_bytes() {
                // Sealed before the server's limit was known: sent in pieces that fit.
                self.split(batch);
                continue;
            }
            match outbound.try_send(batch.bytes.clone()) {
                Ok(()) => {
                    if self.limit_per_second > 0 {
                        let nanos = u128::from(batch.events) * 1_000_000_000
                            / u128::from(self.limit_per_second);
                        let cost = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                        self.next_send_at = self.next_send_at.max(now) + cost;
                    }
                    self.inflight.push_back(batch);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.push_front(batch);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.push_front(batch);
                    return false;
                }
            }
        }
        true
    }

    /// Replaces a batch too large for the server by pieces within the limit, in its place
    /// at the front; events too large for any batch are dropped and counted.
    fn split(&mut self, batch: Sealed) {
        let (mut pieces, too_large) = match self.batcher.split(&batch) {
            Ok(split) => split,
            Err(e) => {
                // Only bytes this collector encoded are split; this is a bug, not input.
                tracing::error!(batch_id = batch.batch_id, error = %e, "Cannot split a batch; dropping it.");
                self.drop_events(DropCause::Internal, u64::from(batch.events));
                self.settle(batch, false);
                return;
            }
        };
        tracing::info!(
            batch_id = batch.batch_id,
            bytes = batch.bytes.len(),
            limit = self.batcher.max_bytes(),
            pieces = pieces.len(),
            "Splitting a batch larger than the server takes."
        );
        if too_large > 0 {
            tracing::warn!(
                batch_id = batch.batch_id,
                events = too_large,
                limit = self.batcher.max_bytes(),
                "Events refused: each alone is larger than the server takes."
            );
            self.drop_events(DropCause::TooLarge, too_large);
        }
        if pieces.is_empty() {
            self.settle(batch, false);
            return;
        }
        let origin = match &batch.origin {
            Some(parent) => {
                parent.replace_piece(pieces.len(), too_large > 0);
                Arc::clone(parent)
            }
            None => Origin::new(pieces.len(), too_large > 0, batch.spooled, batch.receipts),
        };
        for piece in &mut pieces {
            piece.origin = Some(Arc::clone(&origin));
        }
        while let Some(piece) = pieces.pop() {
            self.push_front(piece);
        }
    }

    /// A lower message limit learnt from the server: later batches are sealed within it
    /// and larger ones already sealed are split before they go.
    fn limit_message_bytes(&mut self, limit: usize) {
        let before = self.batcher.max_bytes();
        let now = self.batcher.limit_bytes(limit);
        if now < before {
            tracing::info!(
                limit = now,
                "Batches now stay within the server's message limit."
            );
        }
    }

    fn on_response(&mut self, response: pb::TapioStreamEventsResponse) {
        use pb::tapio_stream_events_response::Payload;
        match response.payload {
            Some(Payload::Ack(ack)) => self.on_ack(&ack),
            Some(Payload::FlowControl(directive)) => self.on_flow_control(&directive),
            Some(Payload::Error(error)) => {
                tracing::warn!(code = error.code, batch_id = error.batch_id, message = %error.message, "Server reported an error.");
            }
            Some(Payload::SemanticGroup(_)) | None => {}
        }
    }

    fn on_ack(&mut self, ack: &pb::Ack) {
        // An ack for a batch no longer in flight belongs to a stream already given up on.
        let Some(position) = self
            .inflight
            .iter()
            .position(|b| b.batch_id == ack.batch_id)
        else {
            return;
        };
        match ack.status() {
            pb::ack::Status::Ok => {
                let batch = self.inflight.remove(position).expect("position is valid");
                let events = u64::from(batch.events);
                self.stats.delivered.fetch_add(events, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.pending.fetch_sub(events, Ordering::Relaxed);
                self.settle(batch, true);
            }
            pb::ack::Status::Rejected => {
                let batch = self.inflight.remove(position).expect("position is valid");
                tracing::error!(batch_id = batch.batch_id, reason = %ack.message, "Server rejected a batch.");
                self.drop_events(DropCause::Rejected, u64::from(batch.events));
                self.settle(batch, false);
            }
            pb::ack::Status::Retry | pb::ack::Status::Unspecified => {
                let batch = self.inflight.remove(position).expect("position is valid");
                tracing::warn!(batch_id = batch.batch_id, reason = %ack.message, "Server asked to resend a batch later.");
                self.push_front(batch);
                self.next_send_at = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// The server is done with `batch` (`stored`, or refused for good): its receipts are
    /// confirmed or dropped, and its spool record can go, once every piece of it is done.
    fn settle(&mut self, mut batch: Sealed, stored: bool) {
        let (spooled, receipts, stored) = match batch.origin.take() {
            None => (batch.spooled, std::mem::take(&mut batch.receipts), stored),
            Some(origin) => match origin.settle(stored) {
                Some(whole) => (whole.spooled, whole.receipts, whole.stored),
                None => return,
            },
        };
        if stored {
            crate::delivery::confirm_all(receipts);
        }
        if let (Queue::Spool(spool, _), Some(at)) = (&mut self.pending, spooled)
            && let Err(e) = spool.ack(at)
        {
            tracing::error!(error = %e, "Cannot remove acked batches from the spool.");
        }
        self.update_spooled();
        if !self.held.is_empty() {
            self.flush_held();
        }
    }

    fn on_flow_control(&mut self, directive: &pb::FlowControl) {
        match directive.action() {
            pb::flow_control::Action::Limit => {
                self.limit_per_second = directive.max_events_per_second;
                tracing::info!(
                    max_events_per_second = directive.max_events_per_second,
                    "Server set a rate limit."
                );
            }
            pb::flow_control::Action::Pause => {
                self.paused = true;
                tracing::info!("Server paused delivery.");
            }
            pb::flow_control::Action::Resume => {
                self.paused = false;
                tracing::info!("Server resumed delivery.");
            }
            pb::flow_control::Action::Unspecified => {}
        }
    }

    fn drop_events(&self, cause: DropCause, count: u64) {
        self.stats.pending.fetch_sub(count, Ordering::Relaxed);
        EventsDropped {
            component: "bridge",
            counters: &self.stats.dropped,
            cause,
            count,
        }
        .emit();
    }

    /// The run is over: batches the spool never had room for are dropped and counted.
    fn drop_held(&mut self) {
        let events: u64 = self.held.drain(..).map(|b| u64::from(b.events)).sum();
        if events > 0 {
            tracing::error!(
                events,
                "The spool was full when the agent stopped; these events could not be kept."
            );
            self.drop_events(DropCause::SpoolFull, events);
        }
    }
}

/// The limit a server names in its `OUT_OF_RANGE` answer to an oversized message
/// ("... the limit is: N bytes").
fn limit_from(message: &str) -> Option<usize> {
    let (_, rest) = message.rsplit_once("limit is")?;
    rest.trim_start_matches([':', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// ENOSPC and EDQUOT: the disk under the spool is full, which `block` waits out.
fn is_disk_full(errno: i32) -> bool {
    errno == rustix::io::Errno::NOSPC.raw_os_error()
        || errno == rustix::io::Errno::DQUOT.raw_os_error()
}

/// Ends the stream politely: a close message, the end of the outbound half, then the
/// server's end of the inbound half (bounded, the server may be gone).
async fn close(mut connection: Connection, collector_id: &str) {
    let _ = connection
        .outbound
        .try_send(control(collector_id, pb::stream_control::Kind::Close));
    drop(connection.outbound);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = connection.inbound.message().await {}
    })
    .await;
}

fn hello(collector_id: &str) -> Bytes {
    control(collector_id, pb::stream_control::Kind::Hello)
}

fn control(collector_id: &str, kind: pb::stream_control::Kind) -> Bytes {
    let request = pb::TapioStreamEventsRequest {
        payload: Some(pb::tapio_stream_events_request::Payload::Control(
            pb::StreamControl {
                kind: kind.into(),
                collector_id: collector_id.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
        )),
    };
    Bytes::from(request.encode_to_vec())
}

#[allow(
    clippy::too_many_lines,
    reason = "one select loop owns all delivery state"
)]
async fn run(
    config: BridgeConfig,
    endpoint: Endpoint,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    mut input: mpsc::Receiver<Input>,
    stats: Arc<BridgeStats>,
    queue: Queue,
    input_ending: CancellationToken,
) -> Report {
    // Ids from the clock keep batch ids unique across restarts of the collector.
    let first_id = crate::event::unix_nanos_now();
    let hello = hello(&config.collector_id);
    let mut delivery = Delivery::new(config, stats, queue, first_id);
    let mut backoff = Backoff::new();
    let mut connection: Option<Connection> = None;
    let mut connecting: Option<JoinHandle<Result<Connection, Status>>> = None;
    let mut retry_at = Some(Instant::now());
    let mut failures = 0u32;
    let mut input_open = true;
    let mut drain_deadline: Option<Instant> = None;
    let spooling = matches!(delivery.pending, Queue::Spool(..));
    let mut upkeep = tokio::time::interval(Duration::from_secs(1));
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if connection.is_none()
            && connecting.is_none()
            && retry_at.is_some_and(|t| t <= Instant::now())
        {
            retry_at = None;
            connecting = Some(tokio::spawn(connect(
                endpoint.clone(),
                token.clone(),
                hello.clone(),
                delivery.config.window,
            )));
        }
        if connection
            .as_ref()
            .is_some_and(|c| !delivery.pump(&c.outbound))
        {
            connection = None;
            delivery.requeue();
            retry_at = Some(Instant::now() + backoff.delay());
            continue;
        }
        if !input_open && delivery.is_empty() {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::select! {
            response = next_response(connection.as_mut()) => match response {
                Ok(Some(response)) => delivery.on_response(response),
                end => {
                    if let Err(broken) = end {
                        tracing::warn!(code = ?broken.code(), message = %broken.message(), "Stream to the server broke; resending what was unacked after reconnecting.");
                        if broken.code() == tonic::Code::OutOfRange {
                            // A message over the server's limit: never resend it unchanged.
                            let limit = limit_from(broken.message()).unwrap_or_else(|| {
                                delivery.inflight.iter().map(|b| b.bytes.len()).max().unwrap_or(0) / 2
                            });
                            delivery.limit_message_bytes(limit);
                        }
                    } else {
                        tracing::warn!("Server closed the stream; resending what was unacked after reconnecting.");
                    }
                    connection = None;
                    delivery.requeue();
                    retry_at = Some(Instant::now() + backoff.delay());
                }
            },
            outcome = maybe(connecting.as_mut()) => {
                connecting = None;
                match outcome {
                    Ok(Ok(c)) => {
                        tracing::info!(server = %delivery.config.address, pending_events = delivery.stats.pending.load(Ordering::Relaxed), "Connected to the server.");
                        failures = 0;
                        backoff.reset();
                        delivery.paused = false;
                        delivery.limit_per_second = c.rate_limit.unwrap_or(0);
                        if let Some(limit) = c.message_limit {
                            delivery.limit_message_bytes(limit);
                        }
                        connection = Some(c);
                    }
                    Ok(Err(refused)) => {
                        failures += 1;
                        // The first failure and then every tenth: visible, not a flood.
                        if failures % 10 == 1 {
                            tracing::warn!(server = %delivery.config.address, failures, error = %refused.message(), "Cannot reach the server; retrying with backoff.");
                        }
                        if refused.code() == tonic::Code::Unauthenticated {
                            tracing::error!(error = %refused.message(), "The server refused the credentials.");
                        }
                        retry_at = Some(Instant::now() + backoff.delay());
                    }
                    Err(join) => {
                        tracing::error!(error = %join, "Connection attempt failed.");
                        retry_at = Some(Instant::now() + backoff.delay());
                    }
                }
            },
            events = input.recv(), if input_open && delivery.has_room() => {
                if let Some(input) = events {
                    match input {
                        Input::Events(events) => delivery.push(events),
                        Input::Groups(groups) => delivery.push_groups(&groups),
                    }
                } else {
                    input_open = false;
                    delivery.seal();
                    drain_deadline = Some(Instant::now() + delivery.config.drain_timeout);
                }
            },
            () = sleep_until_some(delivery.batcher.deadline()) => delivery.seal(),
            () = sleep_until_some(retry_at), if connection.is_none() && connecting.is_none() => {},
            () = sleep_until_some(delivery.rate_wait()) => {},
            () = sleep_until_some(drain_deadline) => {},
            _ = upkeep.tick(), if spooling => delivery.tend_spool(),
            () = input_ending.cancelled(), if !delivery.stopping => delivery.stopping = true,
        }
    }
    delivery.drop_held();

    if let Some(task) = connecting {
        task.abort();
    }
    if let Some(connection) = connection {
        close(connection, &delivery.config.collector_id).await;
    }
    let unacked = delivery.stats.pending.load(Ordering::Relaxed);
    match &delivery.pending {
        Queue::Spool(spool, _) => {
            let spooled = spool.unacked_events();
            if spooled > 0 {
                tracing::warn!(
                    events = spooled,
                    "Drain timeout ran out; unacknowledged events stay in the spool for the next start."
                );
            }
            Report { undelivered: 0 }
        }
        Queue::Memory(_) => {
            if unacked > 0 {
                tracing::error!(
                    events = unacked,
                    "Drain timeout ran out with events unacknowledged and no spool to keep them."
                );
                delivery.drop_events(DropCause::Undelivered, unacked);
            }
            Report {
                undelivered: unacked,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    fn delivery(window: usize) -> Delivery {
        let config = BridgeConfig {
            address: "127.0.0.1:1".into(),
            collector_id: "node".into(),
            batch_events: 10,
            flush_interval: Duration::from_secs(1),
            window,
            max_pending_batches: 100,
            drain_timeout: Duration::from_secs(1),
            token: None,
            spool: None,
            tls: None,
        };
        Delivery::new(
            config,
            Arc::new(BridgeStats::default()),
            Queue::Memory(VecDeque::new()),
            1,
        )
    }

    fn directive(action: pb::flow_control::Action, rate: u64) -> pb::TapioStreamEventsResponse {
        pb::TapioStreamEventsResponse {
            payload: Some(pb::tapio_stream_events_response::Payload::FlowControl(
                pb::FlowControl {
                    action: action.into(),
                    max_events_per_second: rate,
                },
            )),
        }
    }

    fn ack(batch_id: u64, status: pb::ack::Status) -> pb::TapioStreamEventsResponse {
        pb::TapioStreamEventsResponse {
            payload: Some(pb::tapio_stream_events_response::Payload::Ack(pb::Ack {
                batch_id,
                status: status.into(),
                ..pb::Ack::default()
            })),
        }
    }

    fn events(n: u128) -> Vec<Event> {
        (0..n)
            .map(|i| Event::new(EventId::from_u128((i + 1) << 80), 1, "a.b", "t"))
            .collect()
    }

    #[tokio::test]
    async fn pause_resume_and_the_window_govern_what_is_sent() {
        let mut d = delivery(2);
        let (tx, mut rx) = mpsc::channel(16);
        d.push(events(40)); // four batches of ten
        d.on_response(directive(pb::flow_control::Action::Pause, 0));
        assert!(d.pump(&tx));
        assert!(rx.try_recv().is_err(), "nothing goes while paused");
        d.on_response(directive(pb::flow_control::Action::Resume, 0));
        assert!(d.pump(&tx));
        assert_eq!(d.inflight.len(), 2, "the window caps what is in flight");
        d.on_response(ack(1, pb::ack::Status::Ok));
        assert!(d.pump(&tx));
        let ids: Vec<u64> = d.inflight.iter().map(|b| b.batch_id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(d.stats.delivered.load(Ordering::Relaxed), 10);
        // A lost stream puts what was in flight back in front, in order.
        d.requeue();
        let Queue::Memory(pending) = &d.pending else {
            panic!("memory queue")
        };
        let order: Vec<u64> = pending.iter().map(|b| b.batch_id).collect();
        assert_eq!(order, [2, 3, 4]);
    }

    #[tokio::test]
    async fn a_rate_limit_spaces_batches_and_a_rejection_is_counted() {
        let mut d = delivery(8);
        let (tx, _rx) = mpsc::channel(16);
        d.push(events(30));
        d.on_response(directive(pb::flow_control::Action::Limit, 10));
        assert!(d.pump(&tx));
        assert_eq!(
            d.inflight.len(),
            1,
            "ten events at ten per second: one batch now"
        );
        let wait = d.rate_wait().expect("held back by the limit");
        assert!(wait >= Instant::now() + Duration::from_millis(900));
        d.on_response(ack(1, pb::ack::Status::Rejected));
        assert_eq!(d.stats.dropped.get(DropCause::Rejected), 10);
        assert!(d.inflight.is_empty());
    }

    fn spooled(dir: &std::path::Path, max_bytes: u64, when_full: WhenFull) -> Delivery {
        let mut d = delivery(4);
        d.config.spool = Some(SpoolConfig {
            dir: dir.to_owned(),
            max_bytes,
            when_full,
        });
        let (spool, _) = Spool::open(dir, max_bytes, 16).expect("opens");
        d.pending = Queue::Spool(spool, when_full);
        d.batcher.limit_bytes(Spool::largest_batch(max_bytes));
        d
    }

    /// Events with a 1 KiB message each, so batches have a size worth measuring.
    fn big_events(from: u128, n: u128) -> Vec<Event> {
        (from..from + n)
            .map(|i| {
                let mut e = Event::new(EventId::from_u128((i + 1) << 80), 1, "a.b", "t");
                e.message = "x".repeat(1024);
                e
            })
            .collect()
    }

    fn spool_of(d: &Delivery) -> &Spool {
        let Queue::Spool(spool, _) = &d.pending else {
            panic!("a spool")
        };
        spool
    }

    #[tokio::test]
    async fn a_full_spool_under_block_holds_the_input_back_and_drops_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let mut d = spooled(dir.path(), 1 << 20, WhenFull::Block);
        let mut pushed = 0;
        while d.has_room() {
            d.push(big_events(pushed, 10));
            pushed += 10;
            assert!(pushed < 10_000, "the gate never closed");
        }
        assert_eq!(
            d.stats.dropped.get(DropCause::SpoolFull),
            0,
            "block drops nothing"
        );
        assert!(!d.held.is_empty(), "the batch that did not fit waits");
        assert!(spool_of(&d).bytes() <= 1 << 20, "the cap holds");
        // The server comes back and acks what it gets: the held batch moves into the spool
        // and the gate opens again.
        let (tx, mut rx) = mpsc::channel(64);
        let mut delivered = 0;
        while !d.is_empty() {
            assert!(d.pump(&tx));
            while rx.try_recv().is_ok() {}
            let acks: Vec<u64> = d.inflight.iter().map(|b| b.batch_id).collect();
            for id in acks {
                d.on_response(ack(id, pb::ack::Status::Ok));
            }
            d.seal();
            delivered += 1;
            assert!(delivered < 10_000, "delivery stalled");
        }
        assert!(d.has_room());
        assert_eq!(d.stats.delivered.load(Ordering::Relaxed), pushed as u64);
        assert_eq!(spool_of(&d).unacked_events(), 0);
    }

    #[tokio::test]
    async fn a_full_spool_under_drop_newest_counts_what_it_drops() {
        let dir = tempfile::tempdir().expect("dir");
        let mut d = spooled(dir.path(), 1 << 20, WhenFull::DropNewest);
        d.push(big_events(0, 2000));
        d.seal();
        let dropped = d.stats.dropped.get(DropCause::SpoolFull);
        assert!(dropped > 0);
        assert_eq!(spool_of(&d).unacked_events() + dropped, 2000);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_server_takes_goes_in_pieces_and_settles_once() {
        let mut d = delivery(64);
        d.config.batch_events = 100;
        d.batcher = Batcher::new("node".into(), 100, Duration::from_secs(1), 1);
        let ledger = crate::delivery::Ledger::new();
        let mut events = big_events(0, 100);
        for e in &mut events {
            e.receipt = Some(ledger.issue());
        }
        d.push(events);
        // One batch of ~100 KiB was sealed before the server said it takes 20 KB.
        d.limit_message_bytes(20_000);
        let (tx, mut rx) = mpsc::channel(64);
        assert!(d.pump(&tx));
        let mut sizes = Vec::new();
        while let Ok(bytes) = rx.try_recv() {
            sizes.push(bytes.len());
        }
        assert!(sizes.len() >= 5, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 20_000), "{sizes:?}");
        let pieces: Vec<u64> = d.inflight.iter().map(|b| b.batch_id).collect();
        for (n, id) in pieces.iter().enumerate() {
            assert_eq!(ledger.watermark(), 0, "receipts wait for the last piece");
            d.on_response(ack(*id, pb::ack::Status::Ok));
            assert_eq!(d.inflight.len(), pieces.len() - n - 1);
        }
        assert_eq!(
            ledger.watermark(),
            100,
            "every receipt confirmed once all pieces are"
        );
        assert_eq!(d.stats.delivered.load(Ordering::Relaxed), 100);
    }

    #[tokio::test]
    async fn an_event_larger_than_any_batch_is_refused_and_counted() {
        let mut d = delivery(4);
        d.limit_message_bytes(50_000);
        let mut events = big_events(0, 3);
        events[1].message = "y".repeat(200_000);
        d.push(events);
        d.seal();
        assert_eq!(d.stats.dropped.get(DropCause::TooLarge), 1);
        assert_eq!(d.stats.pending.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_bridge_task_that_panics_counts_what_it_held_in_memory() {
        let stats = Arc::new(BridgeStats::default());
        stats.pending.store(1500, Ordering::Relaxed);
        stats.spooled.store(500, Ordering::Relaxed);
        let (input, _rx) = mpsc::channel(1);
        let task = tokio::spawn(async { panic!("a bug in the bridge") });
        let bridge = Bridge {
            input,
            task,
            stats: Arc::clone(&stats),
        };
        let report = bridge.finish().await;
        assert_eq!(
            report.undelivered, 1000,
            "the spooled 500 wait for the next start"
        );
        assert_eq!(stats.dropped.get(DropCause::Internal), 1000);
    }

    #[tokio::test]
    async fn events_handed_to_a_bridge_that_is_gone_are_counted() {
        let stats = Arc::new(BridgeStats::default());
        let (input, rx) = mpsc::channel(1);
        drop(rx);
        let bridge = Bridge {
            input,
            task: tokio::spawn(async { Report { undelivered: 0 } }),
            stats: Arc::clone(&stats),
        };
        assert!(bridge.send(events(7)).await.is_err());
        assert_eq!(stats.dropped.get(DropCause::Internal), 7);
    }

    #[test]
    fn the_limit_is_read_from_the_servers_out_of_range_answer() {
        assert_eq!(
            limit_from(
                "Error, decoded message length too large: found 5242880 bytes, the limit is: 200000 bytes"
            ),
            Some(200_000)
        );
        assert_eq!(limit_from("something else"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut backoff = Backoff::new();
        let first = backoff.delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(150));
        for _ in 0..20 {
            assert!(backoff.delay() <= Backoff::MAX.mul_f64(1.5));
        }
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(150));
    }
}
