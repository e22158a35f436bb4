//! tapio-server reading NATS JetStream (`--nats URL`): one durable pull consumer that
//! every server shares, so servers added split the load and a batch a dead server never
//! acked is redelivered to another after `--nats-ack-wait`.
//!
//! Each message is a sealed batch exactly as the gRPC path carries it. It is checked like a
//! gRPC batch, written to the store, and acked only after the store's commit; a write that
//! fails is negatively acked with a delay, so it comes back (to any server) once the store
//! does. A batch that can never be stored (malformed, too large) is terminated, logged and
//! counted, never redelivered forever. Redelivered batches are deduplicated by event id.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use clap::Args;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

use super::metrics::ServerMetrics;
use super::wire::RawRequest;
use super::{Refused, Store, check_batch};
use crate::nats;

/// Flags of the JetStream consumer.
#[derive(Clone, Debug, Args)]
pub struct NatsArgs {
    /// Read batches from NATS JetStream at this URL (`nats://host:4222`), beside the gRPC
    /// listener; every server given the same stream and consumer shares the load.
    #[arg(long = "nats", value_name = "URL")]
    pub nats_url: Option<String>,
    /// The stream collectors publish to (`nats.stream.name` in their YAML); created with
    /// the default settings when no collector has created it yet.
    #[arg(
        long = "nats-stream",
        value_name = "NAME",
        default_value = "TAPIO_EVENTS"
    )]
    pub nats_stream: String,
    /// The size cap of the stream when this server creates it (no collector has yet);
    /// NATS reserves it up front, so it must fit the NATS server's JetStream storage.
    #[arg(long = "nats-max-bytes", value_name = "SIZE", default_value = "10GiB", value_parser = crate::units::parse_bytes)]
    pub nats_max_bytes: u64,
    /// Batches older than this are removed, acked or not, when this server creates the
    /// stream (`nats.stream.max_age` in the collectors' YAML).
    #[arg(long = "nats-max-age", value_name = "DURATION", default_value = "24h", value_parser = crate::units::parse_duration)]
    pub nats_max_age: Duration,
    /// Copies of each batch in a JetStream cluster (1, 3 or 5) when this server creates the
    /// stream (`nats.stream.replicas` in the collectors' YAML).
    #[arg(long = "nats-replicas", value_name = "N", default_value_t = 1)]
    pub nats_replicas: usize,
    /// The durable consumer all servers share.
    #[arg(
        long = "nats-consumer",
        value_name = "NAME",
        default_value = "tapio-server"
    )]
    pub nats_consumer: String,
    /// A batch not acked this long after delivery (its server died) goes to another.
    #[arg(long = "nats-ack-wait", value_name = "DURATION", default_value = "30s", value_parser = crate::units::parse_duration)]
    pub nats_ack_wait: Duration,
    /// Batches this server stores at once.
    #[arg(long = "nats-inflight", value_name = "N", default_value_t = 32)]
    pub nats_inflight: usize,
    /// A `.creds` file (JWT and nkey seed).
    #[arg(long = "nats-creds", value_name = "FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// A file holding a NATS token.
    #[arg(long = "nats-token-file", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// A NATS user, with --nats-password-file.
    #[arg(
        long = "nats-user",
        value_name = "USER",
        requires = "nats_password_file"
    )]
    pub nats_user: Option<String>,
    /// A file holding --nats-user's password.
    #[arg(
        long = "nats-password-file",
        value_name = "FILE",
        requires = "nats_user"
    )]
    pub nats_password_file: Option<PathBuf>,
    /// PEM CA of the NATS server's certificate; requires TLS.
    #[arg(long = "nats-tls-ca", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
}

impl Default for NatsArgs {
    fn default() -> Self {
        Self {
            nats_url: None,
            nats_stream: "TAPIO_EVENTS".into(),
            nats_max_bytes: 10 << 30,
            nats_max_age: Duration::from_hours(24),
            nats_replicas: 1,
            nats_consumer: "tapio-server".into(),
            nats_ack_wait: Duration::from_secs(30),
            nats_inflight: 32,
            nats_creds_file: None,
            nats_token_file: None,
            nats_user: None,
            nats_password_file: None,
            nats_tls_ca: None,
        }
    }
}

impl NatsArgs {
    /// The stream this server creates when none exists; each bad value names its flag.
    fn stream_settings(&self) -> Result<nats::StreamSettings, nats::Error> {
        let settings = nats::StreamSettings {
            name: self.nats_stream.clone(),
            max_bytes: self.nats_max_bytes,
            max_age: self.nats_max_age,
            replicas: self.nats_replicas,
            ..nats::StreamSettings::default()
        };
        let mut problems = Vec::new();
        settings.validate("stream", &mut problems);
        let Some(problem) = problems.first() else {
            return Ok(settings);
        };
        let (field, reason) = problem.split_once(": ").unwrap_or(("", problem));
        let (flag, reason) = match field {
            "stream.name" => ("--nats-stream", reason.to_owned()),
            "stream.max_bytes" => ("--nats-max-bytes", reason.to_owned()),
            "stream.replicas" => ("--nats-replicas", reason.to_owned()),
            // The only other check: the age must cover the duplicate window.
            _ => (
                "--nats-max-age",
                format!(
                    "must be at least the stream's duplicate window ({:?}), got {:?}",
                    settings.duplicate_window, settings.max_age
                ),
            ),
        };
        Err(nats::Error::Setting {
            field: flag.into(),
            reason,
        })
    }

    fn auth(&self) -> nats::Auth {
        nats::Auth {
            creds_file: self.nats_creds_file.clone(),
            token_file: self.nats_token_file.clone(),
            user: self.nats_user.clone(),
            password_file: self.nats_password_file.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// A connected consumer, ready to run.
pub struct Queue {
    consumer: consumer::PullConsumer,
    args: NatsArgs,
    max_batch_events: usize,
    url: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.url)
            .field("stream", &self.args.nats_stream)
            .field("consumer", &self.args.nats_consumer)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects, opens the stream and the shared durable consumer. Every failure here is
    /// an error at start: a server without its queue has nothing to do.
    pub async fn connect(
        args: &NatsArgs,
        url: &str,
        max_batch_events: usize,
    ) -> Result<Self, nats::Error> {
        if !(1..=1024).contains(&args.nats_inflight) {
            return Err(nats::Error::Setting {
                field: "--nats-inflight".into(),
                reason: format!("must be 1..=1024, got {}", args.nats_inflight),
            });
        }
        if args.nats_ack_wait < Duration::from_secs(1) {
            return Err(nats::Error::Setting {
                field: "--nats-ack-wait".into(),
                reason: format!("must be at least 1s, got {:?}", args.nats_ack_wait),
            });
        }
        let settings = args.stream_settings()?;
        let client = nats::connect(url, &args.auth(), "tapio-server").await?;
        let js = jetstream::new(client);
        let stream = nats::open_stream(&js, &settings).await?;
        let consumer = stream
            .get_or_create_consumer(
                &args.nats_consumer,
                consumer::pull::Config {
                    durable_name: Some(args.nats_consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: args.nats_ack_wait,
                    // Shared by every server: room for many servers' batches in flight.
                    max_ack_pending: 10_000,
                    ..consumer::pull::Config::default()
                },
            )
            .await
            .map_err(|e| nats::Error::Stream {
                stream: args.nats_stream.clone(),
                reason: format!(
                    "cannot open the consumer {:?}: {}",
                    args.nats_consumer,
                    crate::tls::error_chain(&e)
                ),
            })?;
        tracing::info!(%url, stream = %args.nats_stream, consumer = %args.nats_consumer, "Reading batches from JetStream.");
        Ok(Self {
            consumer,
            args: args.clone(),
            max_batch_events,
            url: url.to_owned(),
        })
    }

    /// Reads, stores and acks batches until `shutdown`; then lets the writes under way
    /// finish and ack (up to `grace`). Batches fetched but not started are left unacked:
    /// JetStream gives them to another server.
    pub async fn run(
        self,
        store: Store,
        metrics: Arc<ServerMetrics>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let permits = Arc::new(Semaphore::new(self.args.nats_inflight));
        let mut failures = 0u64;
        'outer: while !shutdown.is_cancelled() {
            let messages = self
                .consumer
                .stream()
                .max_messages_per_batch(self.args.nats_inflight)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(error = %crate::tls::error_chain(&e), failures, "Cannot pull from JetStream; retrying.");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    () = shutdown.cancelled() => break 'outer,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        failures += 1;
                        if failures.is_power_of_two() {
                            tracing::warn!(error = %crate::tls::error_chain(&e), failures, "JetStream pull failed; going on.");
                        }
                        continue;
                    }
                    None => continue 'outer,
                };
                failures = 0;
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break 'outer;
                };
                let store = store.clone();
                let metrics = Arc::clone(&metrics);
                let max = self.max_batch_events;
                tokio::spawn(async move {
                    handle(&store, &metrics, message, max).await;
                    drop(permit);
                });
            }
        }
        // The writes under way finish and ack; what was fetched and not started is left to
        // another server.
        let all = u32::try_from(self.args.nats_inflight).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "Stopped before every batch under way was stored; JetStream redelivers them."
            );
        }
        let (stored, retried, refused) = metrics.batch_outcomes();
        tracing::info!(stored, retried, refused, "Stopped reading JetStream.");
    }
}

async fn handle(store: &Store, metrics: &ServerMetrics, message: jetstream::Message, max: usize) {
    let checked = match RawRequest::parse(&message.payload) {
        Ok(RawRequest::Batch(batch)) => check_batch(batch, max),
        Ok(RawRequest::Control(control)) => Err(Refused::NotABatch(format!(
            "a control message from {}",
            control.collector_id
        ))),
        Ok(RawRequest::Empty) => Err(Refused::NotABatch("an empty request".into())),
        Err(e) => Err(Refused::NotABatch(format!("undecodable: {e}"))),
    };
    let write = match checked {
        Ok(write) => write,
        Err(refused) => {
            tracing::error!(subject = %message.subject, error = %refused, "Batch refused for good; terminating it on the stream.");
            metrics.refused(&refused);
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "Cannot terminate a refused batch; it comes back and is refused again.");
            }
            return;
        }
    };
    let batch_id = write.batch_id;
    match metrics.commit(store, write).await {
        Ok(_) => {
            // A lost ack means a redelivery, which the store's dedup absorbs.
            if let Err(e) = message.ack().await {
                tracing::warn!(batch_id, error = %e, "Cannot ack a stored batch; it will be redelivered and deduplicated.");
            }
        }
        Err(error) => {
            let delivered = message.info().map_or(1, |i| i.delivered).max(1);
            // Backs off with each redelivery of the same batch, up to 10 s.
            let delay = Duration::from_millis(500 * u64::try_from(delivered.min(20)).unwrap_or(20));
            tracing::warn!(batch_id, delivered, error = %error, "Batch not stored; JetStream redelivers it.");
            if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(batch_id, error = %e, "Cannot hand the batch back; it is redelivered after the ack wait.");
            }
        }
    }
}
