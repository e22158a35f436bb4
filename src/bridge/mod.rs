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
mod config;
mod connection;
mod delivery;
mod nats;
pub mod spool;

use std::collections::VecDeque;
use std::future::{Future, pending};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::Endpoint;

pub use batch::{Batcher, MAX_BATCH_BYTES, Origin, Sealed, TooLarge};
pub use codec::{BytesEncoder, PreEncoded};
pub use config::{ServerConfig, Transport};
use connection::{Backoff, Connection, client_tls, close, connect, hello, limit_from};
use delivery::{Delivery, Queue};
use nats::NatsLink;
pub use spool::{Recovered, Spool, SpoolRef};

use crate::event::{Event, Incident};
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
    /// The token file cannot be used.
    #[error("server.token_file: {0}")]
    TokenFile(#[source] crate::tls::TokenError),
    /// A TLS file could not be read or used.
    #[error("TLS to the server: {0}")]
    Tls(#[from] crate::tls::Error),
    /// The TLS settings were refused by the gRPC transport.
    #[error("TLS to the server: {}", crate::tls::error_chain(.0))]
    TlsSetup(#[source] tonic::transport::Error),
    /// NATS refused the connection, or the stream does not fit (`server.transport: nats`).
    #[error(transparent)]
    Nats(#[from] crate::nats::Error),
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
    /// Deliver through NATS JetStream instead of a gRPC stream (`server.transport: nats`).
    pub nats: Option<crate::nats::NatsConfig>,
}

impl BridgeConfig {
    /// The bridge's settings from the YAML `server:` section, to deliver to `address` (the
    /// section's, or the embedded server's) as `collector_id`, or through `nats` when the
    /// transport is NATS; reads the token file.
    pub fn from_settings(
        settings: &ServerConfig,
        address: String,
        collector_id: String,
        nats: Option<crate::nats::NatsConfig>,
    ) -> Result<Self, Error> {
        let token = settings
            .token_file
            .as_deref()
            .map(crate::tls::read_token)
            .transpose()
            .map_err(Error::TokenFile)?;
        Ok(Self {
            address,
            collector_id,
            batch_events: settings.buffer_size,
            flush_interval: settings.flush_interval,
            window: settings.window,
            max_pending_batches: settings.max_pending_batches,
            drain_timeout: settings.drain_timeout,
            token,
            spool: settings.spool_dir.as_ref().map(|dir| SpoolConfig {
                dir: dir.clone(),
                max_bytes: settings.spool_max_bytes,
                when_full: settings.spool_when_full,
            }),
            tls: (!settings.insecure).then(|| TlsFiles {
                ca: settings.tls_ca.clone(),
                identity: settings.tls_cert.clone().zip(settings.tls_key.clone()),
            }),
            nats,
        })
    }
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
    /// New delivery settings from a reload.
    Tune(Tuning),
}

/// The delivery settings a reload changes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Events per batch.
    pub batch_events: usize,
    /// Longest time an event waits in a partial batch.
    pub flush_interval: Duration,
    /// Unacked batches on the stream at most.
    pub window: usize,
    /// How long to keep delivering after the input ends.
    pub drain_timeout: Duration,
}

impl Tuning {
    /// The live part of the `server:` section.
    #[must_use]
    pub fn from_settings(settings: &ServerConfig) -> Self {
        Self {
            batch_events: settings.buffer_size,
            flush_interval: settings.flush_interval,
            window: settings.window,
            drain_timeout: settings.drain_timeout,
        }
    }
}

/// The pipeline's handle to the bridge task.
#[derive(Debug)]
pub struct Bridge {
    input: mpsc::Sender<Input>,
    task: JoinHandle<Report>,
    stats: Arc<BridgeStats>,
}

impl Bridge {
    /// Checks the configuration, connects NATS (with `server.transport: nats`), opens the
    /// spool and starts the delivery task. Once `input_ending` is cancelled (no new events
    /// will come) it takes all remaining input without holding the pipeline back, so the
    /// pipeline can drain.
    pub async fn spawn(
        config: BridgeConfig,
        stats: Arc<BridgeStats>,
        input_ending: CancellationToken,
    ) -> Result<Self, Error> {
        let link = match &config.nats {
            Some(settings) => Link::Nats(Arc::new(
                NatsLink::start(settings.clone(), config.collector_id.clone()).await?,
            )),
            None => Link::grpc(&config)?,
        };
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
            link,
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

    /// Applies a reload's delivery settings; later batches follow them.
    pub async fn tune(&self, tuning: Tuning) -> Result<(), Closed> {
        self.input
            .send(Input::Tune(tuning))
            .await
            .map_err(|_| Closed)
    }

    /// Hands closed incident groups to the bridge; they ride the next batch.
    pub async fn send_groups(&self, incidents: &[Incident]) -> Result<(), Closed> {
        if incidents.is_empty() {
            return Ok(());
        }
        let groups = incidents.iter().map(pb::SemanticGroup::from).collect();
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

/// Where batches go: a gRPC stream to a server, or JetStream.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per bridge, cloned once per connection attempt"
)]
enum Link {
    Grpc {
        endpoint: Endpoint,
        token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    },
    Nats(Arc<NatsLink>),
}

impl Link {
    fn grpc(config: &BridgeConfig) -> Result<Self, Error> {
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
        Ok(Self::Grpc { endpoint, token })
    }

    /// Opens a stream (gRPC) or a session (NATS) in the background.
    fn connect(&self, hello: &Bytes, window: usize) -> JoinHandle<Result<Connection, Status>> {
        match self {
            Self::Grpc { endpoint, token } => tokio::spawn(connect(
                endpoint.clone(),
                token.clone(),
                hello.clone(),
                window,
            )),
            Self::Nats(link) => tokio::spawn(nats::connect(Arc::clone(link), window)),
        }
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

#[allow(
    clippy::too_many_lines,
    reason = "one select loop owns all delivery state"
)]
async fn run(
    config: BridgeConfig,
    link: Link,
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
    let mut ever_connected = false;
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
            connecting = Some(link.connect(&hello, delivery.config.window));
        }
        delivery
            .stats
            .spool_full
            .store(!delivery.held.is_empty(), Ordering::Relaxed);
        if connection
            .as_ref()
            .is_some_and(|c| !delivery.pump(&c.outbound))
        {
            delivery.stats.connected.store(false, Ordering::Relaxed);
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
                    delivery.stats.connected.store(false, Ordering::Relaxed);
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
                        delivery.stats.connected.store(true, Ordering::Relaxed);
                        if ever_connected {
                            delivery.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_connected = true;
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
                        Input::Tune(tuning) => delivery.tune(tuning),
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
    delivery.stats.connected.store(false, Ordering::Relaxed);

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

    fn events(n: u128) -> Vec<Event> {
        (0..n)
            .map(|i| Event::new(EventId::from_u128((i + 1) << 80), 1, "a.b", "t"))
            .collect()
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
}
