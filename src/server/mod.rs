//! tapio-server: the counterpart of the bridge. Serves `TapioService`, stores events
//! durably (see [`store`]), acks a batch only after its commit, and answers queries.

pub mod incidents;
mod listen;
pub mod metrics;
pub mod queue;
pub mod store;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::pb::tapio_service_server::{TapioService, TapioServiceServer};
use crate::pb::{self, MESSAGE_LIMIT_HEADER, RATE_LIMIT_HEADER};
use metrics::ServerMetrics;
pub use store::{EventQuery, Stats, Store, Sync};
use wire::{RawBatch, RawEvent, RawRequest};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file could not be read or is empty.
    #[error(transparent)]
    Token(crate::tls::TokenError),
    /// A TLS file could not be read or used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::Error),
    /// A flag's value is out of its range.
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// NATS refused, could not be reached, or its stream or consumer cannot be used.
    #[error(transparent)]
    Nats(#[from] crate::nats::Error),
    /// The gRPC transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Result of server operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// tapio-server: receives event batches from tapio-collectors over gRPC, stores them
/// durably, and answers queries.
#[derive(Debug, Parser)]
#[command(name = "tapio-server", version, about, long_about = None)]
pub struct Cli {
    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the server run.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands that read a store directly (also while a server runs on it).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print totals as JSON: `events_total` (distinct events) and `batches_total`.
    Stats {
        /// Which store.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print stored events as JSON lines, oldest first.
    Events {
        /// Which store.
        #[command(flatten)]
        store: StoreArgs,
        /// Only events of this type (repeatable).
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// At most this many [default: 1000].
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u32,
    },
    /// Print the incidents collectors closed, oldest first: root cause, the chain with its
    /// rules and confidences, impact and blast radius, predictions and prevention, and the
    /// trace id to open in Jaeger or Tempo.
    Incidents {
        /// Which store.
        #[command(flatten)]
        store: StoreArgs,
        /// Only incidents first seen within this much time, e.g. `1h` [default: all].
        #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
        since: Option<Duration>,
        /// Only incidents with at least this impact (0 to 1).
        #[arg(long, value_name = "IMPACT", default_value_t = 0.0)]
        min_impact: f64,
        /// Keep printing incidents as they are stored (every 2 s) until interrupted.
        #[arg(long)]
        follow: bool,
        /// `text` or `json` (one object per line).
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        output: Output,
    },
}

/// How `incidents` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// As a person reads them.
    Text,
    /// One JSON object per incident, one per line.
    Json,
}

/// Which store a subcommand reads: a SQLite data directory or a PostgreSQL URL.
#[derive(Clone, Debug, Args)]
#[group(required = true, multiple = false)]
pub struct StoreArgs {
    /// The server's data directory (SQLite).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The servers' PostgreSQL, as `postgres://user:password@host:port/database`.
    #[arg(long, value_name = "URL", env = "TAPIO_STORE")]
    pub store: Option<String>,
}

impl StoreArgs {
    /// Where the store is.
    pub fn location(&self) -> store::Result<store::Location> {
        store::Location::from_flags(
            self.store.as_deref(),
            self.data_dir.as_deref().unwrap_or(std::path::Path::new("")),
        )
    }
}

/// Flags of the server run.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Directory of the store (SQLite), when --store does not name another.
    #[arg(long, value_name = "DIR", default_value = "tapio-data")]
    pub data_dir: PathBuf,
    /// A PostgreSQL store shared by several servers, as
    /// `postgres://user:password@host:port/database` (also from `$TAPIO_STORE`, which keeps
    /// the password off the command line); without it, SQLite in --data-dir.
    #[arg(long, value_name = "URL", env = "TAPIO_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// This server's name in the shared store's batch records (`batches.stored_by`)
    /// [default: the hostname, a pod's name in Kubernetes].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Connections to PostgreSQL at most (with --store): concurrent batch writes.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub store_connections: usize,
    /// `full`: fsync every commit (survives power loss); `normal`: survives a server crash.
    #[arg(long, value_name = "MODE", default_value = "full")]
    pub sync: Sync,
    /// Require `authorization: Bearer <token>` with the token in this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest batch, in events, accepted; larger ones are rejected with a message.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_batch_events: usize,
    /// Largest gRPC message, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Ask each collector to send at most this many events per second; 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_events_per_second: u64,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Connections open at once; more are closed as they come (lowered to fit the open
    /// file limit).
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub max_connections: usize,
    /// A new connection must finish its TLS handshake and send its first request within
    /// this, or it is closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub handshake_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long open streams get to commit and ack what they sent before
    /// their connections are closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Bytes of batches one stream may have sent and not yet been acked for; past it the
    /// server reads no more from that stream and HTTP/2 flow control holds the client.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::units::parse_bytes)]
    pub stream_buffer_bytes: u64,
    /// Bytes of batches all streams together may have sent and not yet been acked for;
    /// past it the server reads no more from any stream until commits free room, and
    /// HTTP/2 flow control holds the clients (they keep their batches, and spool them).
    /// It bounds the server's memory when more collectors send than the store commits.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::units::parse_bytes)]
    pub buffer_bytes: u64,
    /// Require client certificates signed by this PEM CA (mutual TLS); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Log filter.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    /// Remove events collected longer ago than this (and the groups and batch records of
    /// that time), e.g. `7d`; in the background, a step at a time.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub retention_age: Option<Duration>,
    /// Remove the oldest events while the store takes more than this, e.g. `50GiB`.
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_bytes)]
    pub retention_bytes: Option<u64>,
    /// How often retention looks at the store.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = crate::units::parse_duration)]
    pub retention_interval: Duration,
    /// Serve `GET /metrics` (Prometheus text) and `GET /healthz` on this address, e.g.
    /// `0.0.0.0:9465`; unset: not served.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Reading batches from NATS JetStream.
    #[command(flatten)]
    pub nats: queue::NatsArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9090".into(),
            data_dir: PathBuf::from("tapio-data"),
            store: None,
            name: None,
            store_connections: 8,
            sync: Sync::Full,
            token_file: None,
            max_batch_events: 10_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_events_per_second: 0,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(5),
            shutdown_timeout: Duration::from_secs(10),
            stream_buffer_bytes: 64 << 20,
            buffer_bytes: 64 << 20,
            log_level: "info".into(),
            metrics_listen: None,
            retention_age: None,
            retention_bytes: None,
            retention_interval: Duration::from_mins(1),
            nats: queue::NatsArgs::default(),
        }
    }
}

impl ServeArgs {
    /// Checks the values together; every problem names its flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &'static str, reason: String| Err(Error::Flag { flag, reason });
        if !(1..=256).contains(&self.store_connections) {
            return bad(
                "--store-connections",
                format!("must be 1..=256, got {}", self.store_connections),
            );
        }
        if self.max_connections == 0 {
            return bad("--max-connections", "must be at least 1".into());
        }
        if self.handshake_timeout < Duration::from_millis(100) {
            return bad("--handshake-timeout", "must be at least 100ms".into());
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return bad("--idle-timeout", "must be at least 1s".into());
        }
        if !(1 << 20..=1 << 30).contains(&self.stream_buffer_bytes) {
            return bad(
                "--stream-buffer-bytes",
                format!("must be 1MiB..=1GiB, got {}", self.stream_buffer_bytes),
            );
        }
        if !(1 << 20..=1 << 32).contains(&self.buffer_bytes) {
            return bad(
                "--buffer-bytes",
                format!("must be 1MiB..=4GiB, got {}", self.buffer_bytes),
            );
        }
        if self
            .retention_age
            .is_some_and(|a| a < Duration::from_mins(1))
        {
            return bad("--retention-age", "must be at least 1m".into());
        }
        if self.retention_bytes.is_some_and(|b| b < 1 << 20) {
            return bad("--retention-bytes", "must be at least 1MiB".into());
        }
        if self.retention_interval < Duration::from_millis(100) {
            return bad("--retention-interval", "must be at least 100ms".into());
        }
        if !(4096..=1 << 30).contains(&self.max_message_bytes) {
            return bad(
                "--max-message-bytes",
                format!("must be 4096..=1073741824, got {}", self.max_message_bytes),
            );
        }
        Ok(())
    }
}

/// The gRPC service over a store.
#[derive(Clone, Debug)]
pub struct Service {
    store: Store,
    max_batch_events: usize,
    max_events_per_second: u64,
    max_message_bytes: usize,
    stream_buffer_bytes: u32,
    /// The server-wide budget of `--buffer-bytes`, shared by every stream.
    buffer: Arc<Semaphore>,
    buffer_bytes: u32,
    /// Cancelled when the server stops: streams end once their batches are acked.
    closing: CancellationToken,
    metrics: Arc<ServerMetrics>,
}

impl Service {
    /// A service over `store`.
    #[must_use]
    pub fn new(store: Store, args: &ServeArgs) -> Self {
        Self {
            store,
            max_batch_events: args.max_batch_events,
            max_events_per_second: args.max_events_per_second,
            max_message_bytes: args.max_message_bytes,
            stream_buffer_bytes: u32::try_from(args.stream_buffer_bytes).unwrap_or(u32::MAX),
            buffer: Arc::new(Semaphore::new(
                usize::try_from(args.buffer_bytes).unwrap_or(usize::MAX),
            )),
            buffer_bytes: u32::try_from(args.buffer_bytes).unwrap_or(u32::MAX),
            closing: CancellationToken::new(),
            metrics: Arc::new(ServerMetrics::with_buffer_limit(args.buffer_bytes)),
        }
    }
}

/// A batch's share of its stream's buffer and of the server's, given back (and counted
/// out of `tapio_server_buffered_bytes`) once its ack is queued.
struct Held {
    _stream: OwnedSemaphorePermit,
    server: OwnedSemaphorePermit,
    metrics: Arc<ServerMetrics>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.unbuffered(self.server.num_permits() as u64);
    }
}

type ResponseSender = mpsc::Sender<Result<pb::TapioStreamEventsResponse, Status>>;
type ResponseStream = ReceiverStream<Result<pb::TapioStreamEventsResponse, Status>>;

/// Answers queued per stream; a client that does not read them holds its own stream
/// back, not the server.
const RESPONSE_QUEUE: usize = 256;

/// Queues an answer; waits while the client is not reading them.
async fn respond(tx: &ResponseSender, payload: pb::tapio_stream_events_response::Payload) {
    let _ = tx
        .send(Ok(pb::TapioStreamEventsResponse {
            payload: Some(payload),
        }))
        .await;
}

fn ack(
    batch_id: u64,
    status: pb::ack::Status,
    message: String,
    accepted: u32,
    duplicates: u32,
) -> pb::tapio_stream_events_response::Payload {
    pb::tapio_stream_events_response::Payload::Ack(pb::Ack {
        batch_id,
        status: status.into(),
        message,
        accepted,
        duplicates,
    })
}

/// Why a batch is refused for good (resending it cannot help).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// More events than `--max-batch-events`.
    #[error("batch {batch_id} has {events} events; this server accepts at most {max}")]
    TooManyEvents {
        /// The batch.
        batch_id: u64,
        /// Its events.
        events: usize,
        /// The limit.
        max: usize,
    },
    /// An event is not a valid `Event`.
    #[error("batch {batch_id}, event {index}: {error}")]
    Event {
        /// The batch.
        batch_id: u64,
        /// The event's place in it.
        index: usize,
        /// Why.
        error: wire::WireError,
    },
    /// A group's ids have the wrong length.
    #[error(
        "batch {batch_id}, group {index}: group_id and trace_id must be 16 bytes, got {group_id} and {trace_id}"
    )]
    Group {
        /// The batch.
        batch_id: u64,
        /// The group's place in it.
        index: usize,
        /// Its `group_id` length.
        group_id: usize,
        /// Its `trace_id` length.
        trace_id: usize,
    },
    /// Not a batch: a control message or nothing (on the queue, where only batches go).
    #[error("not a batch: {0}")]
    NotABatch(String),
}

/// Checks a batch as it arrived (over gRPC or from JetStream) and makes it a store write.
pub fn check_batch(batch: RawBatch, max_batch_events: usize) -> Result<store::Batch, Refused> {
    let batch_id = batch.batch_id;
    if batch.events.len() > max_batch_events {
        return Err(Refused::TooManyEvents {
            batch_id,
            events: batch.events.len(),
            max: max_batch_events,
        });
    }
    let events = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| {
            RawEvent::parse(bytes).map_err(|error| Refused::Event {
                batch_id,
                index,
                error,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((index, group)) = batch
        .groups
        .iter()
        .enumerate()
        .find(|(_, g)| g.group_id.len() != 16 || g.trace_id.len() != 16)
    {
        return Err(Refused::Group {
            batch_id,
            index,
            group_id: group.group_id.len(),
            trace_id: group.trace_id.len(),
        });
    }
    Ok(store::Batch {
        collector_id: batch.collector_id,
        batch_id,
        sequence: batch.sequence,
        events,
        groups: batch.groups,
    })
}

impl Service {
    /// Checks a batch and queues it for commit; the ack is sent when the commit is done.
    /// `held` is the batch's share of the buffers, given back once its ack is queued.
    async fn accept_batch(&self, batch: RawBatch, peer: &str, tx: &ResponseSender, held: Held) {
        let batch_id = batch.batch_id;
        let write = match check_batch(batch, self.max_batch_events) {
            Ok(write) => write,
            Err(refused) => {
                tracing::warn!(peer, batch_id, error = %refused, "Batch rejected.");
                self.metrics.refused(&refused);
                respond(
                    tx,
                    ack(
                        batch_id,
                        pb::ack::Status::Rejected,
                        refused.to_string(),
                        0,
                        0,
                    ),
                )
                .await;
                return;
            }
        };
        let store = self.store.clone();
        let metrics = Arc::clone(&self.metrics);
        let tx = tx.clone();
        // Queue the write now, in arrival order; answer whenever its commit is done.
        tokio::spawn(async move {
            let payload = match metrics.commit(&store, write).await {
                Ok(done) => ack(
                    batch_id,
                    pb::ack::Status::Ok,
                    String::new(),
                    done.accepted,
                    done.duplicates,
                ),
                Err(error) => {
                    tracing::warn!(batch_id, error = %error, "Batch not stored; asking the collector to resend it.");
                    ack(
                        batch_id,
                        pb::ack::Status::Retry,
                        format!("not stored: {error}"),
                        0,
                        0,
                    )
                }
            };
            respond(&tx, payload).await;
            drop(held);
        });
    }
}

impl Service {
    /// Takes a batch's `size` from its stream's `buffer` and from the server's, waiting
    /// while either is full; `None` when the server stops meanwhile.
    async fn hold(&self, size: usize, buffer: &Arc<Semaphore>) -> Option<Held> {
        let size = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
        let stream = tokio::select! {
            held = Arc::clone(buffer).acquire_many_owned(size.min(self.stream_buffer_bytes)) => held.ok()?,
            () = self.closing.cancelled() => return None,
        };
        let share = size.min(self.buffer_bytes);
        let server = if let Ok(held) = Arc::clone(&self.buffer).try_acquire_many_owned(share) {
            held
        } else {
            self.metrics.buffer_full();
            tokio::select! {
                held = Arc::clone(&self.buffer).acquire_many_owned(share) => held.ok()?,
                () = self.closing.cancelled() => return None,
            }
        };
        self.metrics.buffered(u64::from(share));
        Some(Held {
            _stream: stream,
            server,
            metrics: Arc::clone(&self.metrics),
        })
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Service {
    /// Runs one `StreamEvents` call: batches in, acks (after commit) and directives out.
    /// Batches not yet acked hold at most `--stream-buffer-bytes`; past that the stream
    /// is not read until acks free room. When the server stops, the stream takes no more
    /// batches, acks the ones it holds and ends.
    fn stream(&self, request: Request<BoxStream<RawRequest>>) -> Response<ResponseStream> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        if self.max_events_per_second > 0 {
            let _ = tx.try_send(Ok(pb::TapioStreamEventsResponse {
                payload: Some(pb::tapio_stream_events_response::Payload::FlowControl(
                    pb::FlowControl {
                        action: pb::flow_control::Action::Limit.into(),
                        max_events_per_second: self.max_events_per_second,
                    },
                )),
            }));
        }
        let service = self.clone();
        let buffer = Arc::new(Semaphore::new(self.stream_buffer_bytes as usize));
        let open = self.metrics.stream_opened();
        tokio::spawn(async move {
            let _open = open;
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = service.closing.cancelled() => {
                        tracing::info!(peer, "Server stopping; ending the stream once what it sent is acked.");
                        break;
                    }
                };
                let Some(message) = message else { break };
                match message {
                    Ok(RawRequest::Batch(batch)) => {
                        let size = batch.events.iter().map(bytes::Bytes::len).sum::<usize>()
                            + batch.groups.len() * 512;
                        let Some(held) = service.hold(size, &buffer).await else {
                            break;
                        };
                        service.accept_batch(batch, &peer, &tx, held).await;
                    }
                    Ok(RawRequest::Control(control)) => match control.kind() {
                        pb::stream_control::Kind::Hello => {
                            tracing::info!(
                                peer,
                                collector = control.collector_id,
                                version = control.version,
                                "Collector connected."
                            );
                        }
                        pb::stream_control::Kind::Close => {
                            tracing::info!(peer, "Collector closed its stream.");
                        }
                        _ => {}
                    },
                    Ok(RawRequest::Empty) => {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "a stream message must carry a batch or a control message",
                            )))
                            .await;
                        break;
                    }
                    Err(status) => {
                        tracing::warn!(peer, error = %status.message(), "Stream ended with an error.");
                        // Tell the client why, if it is still there (e.g. a message over the limit).
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        response
            .metadata_mut()
            .insert(MESSAGE_LIMIT_HEADER, (self.max_message_bytes as u64).into());
        if self.max_events_per_second > 0 {
            // Also in the response headers, so the limit holds from the very first batch
            // rather than from whenever the client reads the directive.
            response
                .metadata_mut()
                .insert(RATE_LIMIT_HEADER, self.max_events_per_second.into());
        }
        response
    }
}

/// `TapioService` with `StreamEvents` routed through [`wire::RawCodec`], so events are
/// stored as the bytes they arrived as; every other method goes to the generated server.
#[derive(Clone)]
struct Routes {
    generated: TapioServiceServer<Service>,
    service: Arc<Service>,
    max_message_bytes: usize,
}

const STREAM_EVENTS_PATH: &str = "/tapio.v1.TapioService/StreamEvents";

impl tonic::server::NamedService for Routes {
    const NAME: &'static str = "tapio.v1.TapioService";
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Routes
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        if request.uri().path() != STREAM_EVENTS_PATH {
            return self.generated.call(request);
        }
        let method = RawStreamEvents(Arc::clone(&self.service));
        let limit = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(wire::RawCodec)
                .apply_max_message_size_config(Some(limit), Some(limit));
            Ok(grpc.streaming(method, request).await)
        })
    }
}

/// The standard `grpc.health.v1.Health` service beside the authenticated ones: Kubernetes
/// gRPC probes carry no token.
#[derive(Clone)]
struct WithHealth<H, S> {
    health: H,
    inner: S,
}

const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

impl<B, H, HB, S, SB> tonic::codegen::Service<tonic::codegen::http::Request<B>> for WithHealth<H, S>
where
    H: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<HB>,
            Error = std::convert::Infallible,
        >,
    H::Future: Send + 'static,
    HB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    HB::Error: Into<tonic::codegen::StdError>,
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<SB>,
            Error = std::convert::Infallible,
        >,
    S::Future: Send + 'static,
    SB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    SB::Error: Into<tonic::codegen::StdError>,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with(HEALTH_PREFIX) {
            let answer = self.health.call(request);
            Box::pin(async move { Ok(answer.await?.map(tonic::body::Body::new)) })
        } else {
            let answer = self.inner.call(request);
            Box::pin(async move { Ok(answer.await?.map(tonic::body::Body::new)) })
        }
    }
}

struct RawStreamEvents(Arc<Service>);

impl tonic::server::StreamingService<RawRequest> for RawStreamEvents {
    type Response = pb::TapioStreamEventsResponse;
    type ResponseStream = ResponseStream;
    type Future = tonic::codegen::BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<RawRequest>>) -> Self::Future {
        let service = Arc::clone(&self.0);
        let (metadata, extensions, inbound) = request.into_parts();
        let request = Request::from_parts(metadata, extensions, Box::pin(inbound) as BoxStream<_>);
        Box::pin(async move { Ok(service.stream(request)) })
    }
}

#[tonic::async_trait]
impl TapioService for Service {
    type StreamEventsStream = ResponseStream;
    type SubscribeToEventsStream = BoxStream<pb::Event>;

    /// Served by [`Routes`] with the zero-copy codec; this prost-typed entry point (used
    /// only when the generated server is mounted on its own) re-encodes each event.
    async fn stream_events(
        &self,
        request: Request<Streaming<pb::TapioStreamEventsRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let (metadata, extensions, inbound) = request.into_parts();
        let inbound = inbound.map(|message| message.map(RawRequest::from));
        Ok(self.stream(Request::from_parts(metadata, extensions, Box::pin(inbound))))
    }

    async fn get_events(
        &self,
        request: Request<pb::GetEventsRequest>,
    ) -> Result<Response<pb::GetEventsResponse>, Status> {
        let r = request.into_inner();
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&r.page_token).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "page_token {:?} is not one this server gave out",
                    r.page_token
                ))
            })?)
        };
        let limit = match r.limit {
            0 => 1000,
            n => n.min(100_000),
        };
        let query = EventQuery {
            start: r.start_unix_nano,
            end: r.end_unix_nano,
            types: r.types,
            pod_namespace: r.pod_namespace,
            pod_name: r.pod_name,
            group_id: r.group_id,
            // One more than asked: whether a next page exists.
            limit: limit + 1,
            after,
        };
        let mut events = self.store.events(query).await.map_err(internal)?;
        // The answer must fit in one message: cut it where it would not, and say where to
        // go on.
        let budget = self.max_message_bytes.saturating_sub(64 * 1024);
        let mut size = 0;
        let mut fits = 0;
        for event in events.iter().take(limit as usize) {
            let len = event.encoded_len();
            let field = 1 + prost::length_delimiter_len(len) + len;
            if fits > 0 && size + field > budget {
                break;
            }
            size += field;
            fits += 1;
        }
        let more = events.len() > fits;
        events.truncate(fits);
        let next_page_token = match events.last() {
            Some(last) if more => page_token(last.timestamp_unix_nano, &last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::GetEventsResponse {
            events,
            next_page_token,
        }))
    }

    async fn get_semantic_groups(
        &self,
        request: Request<pb::GetSemanticGroupsRequest>,
    ) -> Result<Response<pb::GetSemanticGroupsResponse>, Status> {
        let r = request.into_inner();
        let groups = self
            .store
            .groups(r.start_unix_nano, r.end_unix_nano, r.min_impact, r.limit)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::GetSemanticGroupsResponse { groups }))
    }

    async fn subscribe_to_events(
        &self,
        request: Request<pb::SubscribeToEventsRequest>,
    ) -> Result<Response<Self::SubscribeToEventsStream>, Status> {
        let filter = request.into_inner();
        let mut committed = self.store.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let closing = self.closing.clone();
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    received = committed.recv() => received,
                    // The server is stopping: the tail ends cleanly.
                    () = closing.cancelled() => return,
                };
                let events = match received {
                    Ok(events) => events,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "subscriber fell behind by {missed} commits; resubscribe and query GetEvents for the gap"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for event in events.iter() {
                    let type_ok = filter.types.is_empty() || filter.types.contains(&event.r#type);
                    let namespace_ok = filter.pod_namespace.is_empty()
                        || event
                            .entities
                            .as_ref()
                            .is_some_and(|e| e.pod_namespace == filter.pod_namespace);
                    if type_ok && namespace_ok && tx.send(Ok(event.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn health_check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let totals = self.store.stats().await;
        let (status, events_total) = match totals {
            Ok(stats) => (
                pb::health_check_response::Status::Serving,
                stats.events_total,
            ),
            Err(_) => (pb::health_check_response::Status::NotServing, 0),
        };
        Ok(Response::new(pb::HealthCheckResponse {
            status: status.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            events_total,
        }))
    }
}

/// A page token: where a page ended, as the timestamp and id of its last event in hex.
fn page_token(timestamp: u64, id: &[u8]) -> String {
    format!("{timestamp:016x}{}", crate::event::to_hex(id))
}

fn parse_page_token(token: &str) -> Option<(u64, [u8; 16])> {
    if token.len() != 48 || !token.is_ascii() {
        return None;
    }
    let timestamp = u64::from_str_radix(&token[..16], 16).ok()?;
    let mut id = [0u8; 16];
    for (byte, at) in id.iter_mut().zip((16..48).step_by(2)) {
        *byte = u8::from_str_radix(&token[at..at + 2], 16).ok()?;
    }
    Some((timestamp, id))
}

/// A store error as an `INTERNAL` status.
#[allow(clippy::needless_pass_by_value, reason = "used as map_err(internal)")]
fn internal(error: store::Error) -> Status {
    Status::internal(error.to_string())
}

/// Checks the bearer token of every call.
#[derive(Clone)]
struct Auth {
    token: Option<Arc<str>>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let Some(given) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing bearer token: this server requires `authorization: Bearer <token>` (collector flag --token-file)",
            ));
        };
        let given = given.to_str().unwrap_or("");
        let given = given.strip_prefix("Bearer ").unwrap_or("");
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The TLS acceptor for `--tls-cert`/`--tls-key` (and `--tls-client-ca`), built up front
/// so that an unusable certificate, key or CA is an error at start that names the file.
fn server_tls(args: &ServeArgs) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = crate::tls::certificates(cert, "certificate")?;
    let private = crate::tls::private_key(key, "key")?;
    let provider = crate::tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(crate::tls::Error::Config)?;
    let builder = match &args.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = crate::tls::roots(ca, "client CA")?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| crate::tls::Error::Parse {
                        what: "client CA",
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(chain, private)
            .map_err(|source| crate::tls::Error::Identity {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Raises the open-file limit to its hard maximum (as Go and systemd services do) and
/// lowers `wanted` connections to what fits under it, leaving room for the store.
fn connections_that_fit(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
        limit = getrlimit(Resource::Nofile);
    }
    let Some(files) = limit.current else {
        return wanted;
    };
    let fit = usize::try_from(files.saturating_sub(64))
        .unwrap_or(usize::MAX)
        .max(1);
    if fit < wanted {
        tracing::warn!(
            max_connections = fit,
            asked = wanted,
            open_files = files,
            "Lowering --max-connections to fit the open file limit."
        );
    }
    wanted.min(fit)
}

/// A bound, not yet serving server.
pub struct Server {
    listener: tokio::net::TcpListener,
    service: Service,
    token: Option<String>,
    max_message_bytes: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: listen::Limits,
    location: store::Location,
    queue: Option<queue::Queue>,
    metrics_listen: Option<SocketAddr>,
    retention: (store::Retention, Duration),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Checks the flags, reads the TLS files, opens the store and binds the listen
    /// address, so every one of those errors surfaces before serving.
    pub async fn bind(args: &ServeArgs) -> Result<Self> {
        args.validate()?;
        let token = args
            .token_file
            .as_deref()
            .map(crate::tls::read_token)
            .transpose()
            .map_err(Error::Token)?;
        let tls = server_tls(args)?;
        let location = store::Location::from_flags(args.store.as_deref(), &args.data_dir)?;
        let name = args.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or_else(|_| "tapio-server".into(), |h| h.trim().to_owned())
        });
        let store = Store::open(&location, args.sync, args.store_connections, &name).await?;
        let queue = match &args.nats.nats_url {
            Some(url) => Some(queue::Queue::connect(&args.nats, url, args.max_batch_events).await?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: args.listen.clone(),
                source,
            })?;
        Ok(Self {
            listener,
            service: Service::new(store, args),
            token,
            max_message_bytes: args.max_message_bytes,
            tls,
            limits: listen::Limits {
                max_connections: connections_that_fit(args.max_connections),
                handshake_timeout: args.handshake_timeout,
                idle_timeout: args.idle_timeout,
                shutdown_timeout: args.shutdown_timeout,
            },
            location,
            queue,
            metrics_listen: args.metrics_listen,
            retention: (
                store::Retention {
                    age: args.retention_age,
                    max_bytes: args.retention_bytes,
                },
                args.retention_interval,
            ),
        })
    }

    /// Where the store is, for logs: the directory, or the URL without its password.
    #[must_use]
    pub fn store_location(&self) -> String {
        self.location.display()
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets open streams ack what they sent
    /// (up to `--shutdown-timeout`) and closes every connection.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let auth = Auth {
            token: self.token.map(Arc::from),
        };
        let closing = self.service.closing.clone();
        let scraping = match self.metrics_listen {
            Some(addr) => Some(
                metrics::serve(
                    addr,
                    Arc::clone(&self.service.metrics),
                    self.service.store.clone(),
                    shutdown.clone(),
                )
                .await
                .map_err(|source| Error::Bind {
                    addr: addr.to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let (policy, every) = self.retention;
        let retaining = (!policy.is_off()).then(|| {
            tokio::spawn(metrics::retain_every(
                self.service.store.clone(),
                policy,
                every,
                Arc::clone(&self.service.metrics),
                shutdown.clone(),
            ))
        });
        let reading = self.queue.map(|queue| {
            tokio::spawn(queue.run(
                self.service.store.clone(),
                Arc::clone(&self.service.metrics),
                shutdown.clone(),
                self.limits.shutdown_timeout,
            ))
        });
        let routes = Routes {
            generated: TapioServiceServer::new(self.service.clone())
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes),
            service: Arc::new(self.service),
            max_message_bytes: self.max_message_bytes,
        };
        let (health, probes) = tonic_health::server::health_reporter();
        health.set_serving::<TapioServiceServer<Service>>().await;
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            health
                .set_not_serving::<TapioServiceServer<Service>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        });
        let service = WithHealth {
            health: probes,
            inner: tonic::service::interceptor::InterceptedService::new(routes, auth),
        };
        listen::serve(
            self.listener,
            self.tls,
            service,
            self.limits,
            shutdown,
            closing,
        )
        .await;
        if let Some(reading) = reading {
            let _ = reading.await;
        }
        if let Some(scraping) = scraping {
            let _ = scraping.await;
        }
        if let Some(retaining) = retaining {
            let _ = retaining.await;
        }
        Ok(())
    }
}
