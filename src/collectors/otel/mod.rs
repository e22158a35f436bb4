//! `otel`: an OTLP receiver for applications' traces and logs, over gRPC and HTTP.
//!
//! Spans become `app.span` events and log records `app.log` events, each resolved to the
//! process, container and pod that sent it ([`who`]), so the correlation engine can put
//! the kernel's and Kubernetes' events inside the request they broke. Volume is bounded
//! by the keep policy: every error span and every span slower than `slow_threshold`, a
//! `sample_ratio` of the rest (by trace id, so a trace is kept whole), and log records at
//! `min_severity` and above; what the policy passes over is counted as `sampled_out`.
//!
//! The receiver answers as the OTLP specification asks: a partial success naming how many
//! records it could not read and why; back-pressure when the queue into the pipeline has
//! no room within `full_queue_wait` under `block` (gRPC `RESOURCE_EXHAUSTED` with a
//! `RetryInfo`, HTTP 429 with `Retry-After`), and nothing of that request accepted, so a
//! retry loses and doubles nothing; `INVALID_ARGUMENT` or 400 for a payload that is not
//! OTLP; a size limit on every request, compressed or not. A bad request is answered and
//! forgotten: it never stops the receiver or touches what was accepted before it.

mod convert;
mod grpc;
mod http;
pub mod who;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use serde::Deserialize;

pub use self::convert::{Converted, Policy, severity_of};
use super::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::Severity;
use crate::source_sender::{EventSender, SendAllError};
use crate::telemetry::{CollectorStats, DropCause};

/// Registry name.
pub const NAME: &str = "otel";

/// Options of the `otel` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelReceiverConfig {
    /// Where OTLP/gRPC is served (`host:port`), or `none`.
    pub grpc_listen: String,
    /// Where OTLP/HTTP is served (`host:port`; `/v1/traces` and `/v1/logs`), or `none`.
    pub http_listen: String,
    /// A span at least this long is kept whatever its status (and is a warning).
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub slow_threshold: Duration,
    /// The share (0 to 1) of the other spans kept, chosen by trace id.
    pub sample_ratio: f64,
    /// Log records under this severity are passed over: `debug`, `info`, `warning`,
    /// `error` or `critical`.
    pub min_severity: Severity,
    /// The largest request taken, after decompression; larger ones are refused.
    #[serde(deserialize_with = "crate::units::deserialize_bytes")]
    pub max_request_bytes: u64,
    /// How long a request waits for room in a full queue (under `block`) before it is
    /// answered with back-pressure.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub full_queue_wait: Duration,
    /// The delay a back-pressure answer asks the client to wait before it retries.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub retry_after: Duration,
    /// A span's or log record's own attributes kept at most.
    pub max_attributes: usize,
}

impl Default for OtelReceiverConfig {
    fn default() -> Self {
        Self {
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            slow_threshold: Duration::from_secs(1),
            sample_ratio: 0.01,
            min_severity: Severity::Warning,
            max_request_bytes: 4 << 20,
            full_queue_wait: Duration::from_millis(200),
            retry_after: Duration::from_secs(1),
            max_attributes: 64,
        }
    }
}

fn is_off(address: &str) -> bool {
    address.eq_ignore_ascii_case("none")
}

impl CollectorConfig for OtelReceiverConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        for (field, address) in [
            ("grpc_listen", &self.grpc_listen),
            ("http_listen", &self.http_listen),
        ] {
            if !is_off(address)
                && let Err(e) = address.parse::<SocketAddr>()
            {
                problems.push(format!(
                    "{path}.{field}: {address:?} is not an IP address and port, nor `none`: {e}"
                ));
            }
        }
        if is_off(&self.grpc_listen) && is_off(&self.http_listen) {
            problems.push(format!(
                "{path}: both grpc_listen and http_listen are `none`; serve at least one"
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(format!(
                "{path}.sample_ratio: must be from 0 to 1, got {}",
                self.sample_ratio
            ));
        }
        if self.max_request_bytes < 1024 {
            problems.push(format!(
                "{path}.max_request_bytes: must be at least 1KiB, got {}",
                self.max_request_bytes
            ));
        }
        if self.retry_after < Duration::from_millis(100) {
            problems.push(format!(
                "{path}.retry_after: must be at least 100ms, got {:?}",
                self.retry_after
            ));
        }
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let bind = |address: &str| {
                let address = address.to_owned();
                async move {
                    if is_off(&address) {
                        return Ok(None);
                    }
                    tokio::net::TcpListener::bind(&address)
                        .await
                        .map(Some)
                        .map_err(|e| {
                            Error::unavailable_by(format!("cannot listen on {address}"), e)
                        })
                }
            };
            let grpc = bind(&self.grpc_listen).await?;
            let http = bind(&self.http_listen).await?;
            let limit = usize::try_from(self.max_request_bytes).unwrap_or(usize::MAX);
            let Context {
                out,
                shutdown,
                stats,
            } = context;
            let receiver = Arc::new(Receiver {
                policy: Policy {
                    slow_ns: self.slow_threshold.as_nanos() as u64,
                    ratio_bound: Policy::ratio_bound(self.sample_ratio),
                    min_severity: self.min_severity,
                    max_attributes: self.max_attributes,
                },
                who: Mutex::new(who::Who::new(Arc::clone(&cx.directory))),
                node: cx.node_name.as_str().into(),
                out: tokio::sync::RwLock::new(Some(out)),
                stats,
                wait: self.full_queue_wait,
                retry_after: self.retry_after,
            });
            for (name, listener) in [("OTLP/gRPC", &grpc), ("OTLP/HTTP", &http)] {
                if let Some(address) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
                    tracing::info!(%address, protocol = name, "OTLP receiver listening.");
                }
            }
            Ok::<Running, Error>(Box::pin(run(receiver, grpc, http, limit, shutdown)))
        })
    }
}

/// How long open connections may finish their requests after shutdown is asked for: a
/// client that keeps an idle connection (or stops answering on it) cannot hold the agent.
const GRACE: Duration = Duration::from_secs(5);

async fn run(
    receiver: Arc<Receiver>,
    grpc: Option<tokio::net::TcpListener>,
    http: Option<tokio::net::TcpListener>,
    limit: usize,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    let grpc = grpc.map(|l| grpc::serve(l, Arc::clone(&receiver), limit, shutdown.clone()));
    let http = http.map(|l| http::serve(l, Arc::clone(&receiver), limit, shutdown.clone()));
    let servers = async move {
        let (a, b) = tokio::join!(
            async move {
                match grpc {
                    Some(g) => g.await,
                    None => Ok(()),
                }
            },
            async move {
                match http {
                    Some(h) => h.await,
                    None => Ok(()),
                }
            }
        );
        a.and(b)
    };
    let result = tokio::select! {
        result = servers => result,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(GRACE).await;
        } => {
            tracing::info!(grace = ?GRACE, "OTLP connections still open at shutdown are refused from now on.");
            Ok(())
        }
    };
    // Requests still being taken finish; later ones on lingering connections are refused,
    // so nothing enters the pipeline after the collector has ended.
    receiver.out.write().await.take();
    result
}

/// What both transports share: the keep policy, the sender resolver and the way in.
#[derive(Debug)]
struct Receiver {
    policy: Policy,
    // Held only while a request is converted: `/proc` is read on a cache miss.
    who: Mutex<who::Who>,
    node: Arc<str>,
    // The way in, until the collector ends; a request holds it for reading while it
    // sends. Taken out at the end, so a connection that lingers cannot keep the
    // pipeline's queue open.
    out: tokio::sync::RwLock<Option<EventSender>>,
    stats: Arc<CollectorStats>,
    wait: Duration,
    retry_after: Duration,
}

/// Why records of an accepted request were dropped under `drop_newest`.
const FULL: &str = "the agent's queue is full (when_full: drop_newest)";

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Taken; this many records were not (unreadable, or dropped under `drop_newest`).
    Accepted { rejected: u64, message: String },
    /// Nothing taken: the queue stayed full.
    Busy,
    /// Nothing taken: the agent is stopping.
    Closed,
}

/// How a request of type `R` becomes events.
type Convert<R> = fn(R, &Policy, &mut who::Who, Option<who::Connection>, &Arc<str>) -> Converted;

/// One OTLP signal the receiver takes: its request, how it becomes events, its answer.
trait Signal {
    /// The export request.
    type Request: prost::Message + Default + serde::de::DeserializeOwned;
    /// The export response.
    type Response: prost::Message + serde::Serialize;
    /// The request as events.
    const CONVERT: Convert<Self::Request>;
    /// The answer to a request taken with `rejected` records refused for `message`.
    fn response(rejected: u64, message: String) -> Self::Response;
}

/// Traces: spans become `app.span` events.
struct Traces;

impl Signal for Traces {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const CONVERT: Convert<Self::Request> = convert::spans;

    fn response(rejected: u64, message: String) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
                error_message: message,
            }),
        }
    }
}

/// Logs: records become `app.log` events.
struct Logs;

impl Signal for Logs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const CONVERT: Convert<Self::Request> = convert::logs;

    fn response(rejected: u64, message: String) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: i64::try_from(rejected).unwrap_or(i64::MAX),
                error_message: message,
            }),
        }
    }
}

impl Receiver {
    /// Takes one export request of signal `S`: its answer, or why it was refused whole.
    async fn export<S: Signal>(
        &self,
        request: S::Request,
        connection: Option<who::Connection>,
    ) -> Result<S::Response, Outcome> {
        let converted = {
            let mut who = self.who.lock().unwrap_or_else(PoisonError::into_inner);
            S::CONVERT(request, &self.policy, &mut who, connection, &self.node)
        };
        match self.take(converted).await {
            Outcome::Accepted { rejected, message } => Ok(S::response(rejected, message)),
            refused => Err(refused),
        }
    }

    /// Sends what a request became, counting what it could not take. A request refused
    /// whole is not counted: its client still holds it and sends it again.
    async fn take(&self, converted: Converted) -> Outcome {
        let Converted {
            events,
            sampled_out,
            rejected,
            reason,
        } = converted;
        let out = self.out.read().await;
        let Some(out) = out.as_ref() else {
            return Outcome::Closed;
        };
        match out.send_all(events, self.wait).await {
            Ok(dropped) => {
                if sampled_out > 0 {
                    // The policy at work, not a fault: counted, logged only at debug.
                    self.stats
                        .drop_counters()
                        .add(DropCause::SampledOut, sampled_out);
                    tracing::debug!(
                        count = sampled_out,
                        "OTLP records passed over by the keep policy."
                    );
                }
                crate::internal_events::EventsDropped {
                    component: self.stats.name(),
                    counters: self.stats.drop_counters(),
                    cause: DropCause::Unreadable,
                    count: rejected,
                }
                .emit();
                let message = match (dropped > 0, reason.is_empty()) {
                    (false, _) => reason,
                    (true, true) => FULL.to_owned(),
                    (true, false) => format!("{reason}; {FULL}"),
                };
                Outcome::Accepted {
                    rejected: rejected + dropped,
                    message,
                }
            }
            Err(SendAllError::Full(_)) => Outcome::Busy,
            Err(SendAllError::Closed(_)) => Outcome::Closed,
        }
    }
}
