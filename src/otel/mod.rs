//! Incidents as traces over OTLP/gRPC: every closed semantic group becomes one trace, one
//! span per event, each span's parent its causal predecessor.
//!
//! Export never blocks the event path: groups are offered to a bounded queue and a task
//! exports them in batches, retrying a failed batch with backoff; a batch that still fails,
//! or a group the full queue cannot take, is dropped and counted (`spans_dropped` in the
//! status line), never lost silently.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    Link, SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::{Incident, Member};
use crate::event::{Severity, to_hex};
use crate::telemetry::ExportStats;

mod events;
pub use events::EventExporter;

/// Offers (a group's spans, a batch of events) waiting for export at most; beyond it
/// they are dropped and counted.
const QUEUE: usize = 1024;
/// Records per export call at most.
const BATCH_ITEMS: usize = 512;
/// Records waiting for export (queued, batched or in retry) at most: an offer past it is
/// dropped and counted, so an endpoint that is down costs bounded memory however large
/// the groups offered (the queue itself counts offers, not records).
const MAX_PENDING: u64 = 4 * BATCH_ITEMS as u64;
/// Longest a record waits for its batch to fill.
const BATCH_AGE: Duration = Duration::from_secs(1);
/// Attempts per batch before it is dropped.
const ATTEMPTS: u32 = 3;

/// Where batches of one kind of OTLP record go: spans, or log records.
trait Sink: Send + Sync + 'static {
    /// One record.
    type Item: Clone + Send + 'static;
    /// What a drop is logged as.
    const DROPPED: &'static str;
    /// Sends one batch: how many of it the endpoint rejected, or why it failed.
    fn send(
        &self,
        batch: Vec<Self::Item>,
    ) -> impl std::future::Future<Output = Result<u64, String>> + Send;
}

/// Spans, through the OpenTelemetry SDK's OTLP exporter.
struct Spans(opentelemetry_otlp::SpanExporter);

impl Sink for Spans {
    type Item = SpanData;
    const DROPPED: &'static str = "Trace spans dropped.";

    async fn send(&self, batch: Vec<SpanData>) -> Result<u64, String> {
        self.0
            .export(batch)
            .await
            .map(|()| 0)
            .map_err(|e| e.to_string())
    }
}

/// A bounded queue in front of a sink, drained by a task that batches and retries; what
/// it cannot take or deliver is dropped and counted in `stats`, never lost silently.
#[derive(Debug)]
struct Queue<T> {
    items: mpsc::Sender<Vec<T>>,
    closing: CancellationToken,
    task: JoinHandle<()>,
    stats: Arc<ExportStats>,
    dropped: &'static str,
}

impl<T: Clone + Send + 'static> Queue<T> {
    fn start<S: Sink<Item = T>>(sink: S, stats: Arc<ExportStats>) -> Self {
        let (items, queue) = mpsc::channel(QUEUE);
        let closing = CancellationToken::new();
        let task = tokio::spawn(run(sink, queue, closing.clone(), Arc::clone(&stats)));
        Self {
            items,
            closing,
            task,
            stats,
            dropped: S::DROPPED,
        }
    }

    /// Queues records for export; when the queue is full they are dropped and counted.
    fn offer(&self, items: Vec<T>) {
        let count = items.len() as u64;
        // Counted before the send: the task may export them before this returns.
        let before = self.stats.pending.fetch_add(count, Ordering::Relaxed);
        // An offer larger than the bound still goes when nothing else waits.
        let over = before > 0 && before + count > MAX_PENDING;
        if over || self.items.try_send(items).is_err() {
            self.stats.pending.fetch_sub(count, Ordering::Relaxed);
            count_dropped(&self.stats, count, "the export queue is full", self.dropped);
        }
    }

    /// Exports what is queued (one attempt each, no more retries) and stops, within
    /// `limit`; what is still unexported then is dropped and counted.
    async fn finish(self, limit: Duration) {
        drop(self.items);
        self.closing.cancel();
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
            let lost = self.stats.pending.swap(0, Ordering::Relaxed);
            count_dropped(
                &self.stats,
                lost,
                "the OTLP endpoint did not answer within otel.shutdown_timeout",
                self.dropped,
            );
        }
    }
}

/// The URL of an endpoint given as `host:port` or a URL.
fn url_of(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// A running exporter of incidents as traces.
#[derive(Debug)]
pub struct Exporter {
    queue: Queue<SpanData>,
    scope: InstrumentationScope,
}

/// Why an exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
pub struct StartError {
    endpoint: String,
    reason: String,
}

impl Exporter {
    /// Starts exporting to `endpoint` (`host:port` or a URL) as `service` on `node`.
    pub fn start(
        endpoint: &str,
        node: &str,
        service: &'static str,
        stats: Arc<ExportStats>,
    ) -> Result<Self, StartError> {
        let url = url_of(endpoint);
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| StartError {
                endpoint: url,
                reason: error.to_string(),
            })?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_attributes([
                    KeyValue::new("service.name", service),
                    KeyValue::new("host.name", node.to_owned()),
                    KeyValue::new("k8s.node.name", node.to_owned()),
                ])
                .build(),
        );
        Ok(Self {
            queue: Queue::start(Spans(exporter), stats),
            scope: InstrumentationScope::builder("tapio-collector")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Queues a closed group for export; when the queue is full it is dropped and counted.
    pub fn offer(&self, group: &Incident) {
        self.queue.offer(spans(group, &self.scope));
    }

    /// Queues finished spans for export; when the queue is full they are dropped and counted.
    pub fn offer_spans(&self, spans: Vec<SpanData>) {
        self.queue.offer(spans);
    }

    /// Exports what is queued (one attempt each, no more retries) and stops, within `limit`;
    /// what is still unexported then is dropped and counted.
    pub async fn finish(self, limit: Duration) {
        self.queue.finish(limit).await;
    }
}

fn count_dropped(stats: &ExportStats, count: u64, why: &str, what: &'static str) {
    if count == 0 {
        return;
    }
    let before = stats.dropped.fetch_add(count, Ordering::Relaxed);
    let total = before + count;
    // The first drop, then at each power of two: visible without flooding the log.
    if before == 0 || before.leading_zeros() != total.leading_zeros() {
        tracing::warn!(total, reason = why, "{what}");
    }
}

async fn run<S: Sink>(
    sink: S,
    mut queue: mpsc::Receiver<Vec<S::Item>>,
    closing: CancellationToken,
    stats: Arc<ExportStats>,
) {
    let mut pending: Vec<S::Item> = Vec::new();
    let mut ticker = tokio::time::interval(BATCH_AGE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            items = queue.recv() => {
                let Some(items) = items else {
                    // Closed and drained: the last batch, then stop.
                    export(&sink, std::mem::take(&mut pending), &closing, &stats).await;
                    return;
                };
                pending.extend(items);
                if pending.len() >= BATCH_ITEMS {
                    export(&sink, std::mem::take(&mut pending), &closing, &stats).await;
                }
            }
            _ = ticker.tick() => {
                export(&sink, std::mem::take(&mut pending), &closing, &stats).await;
            }
        }
    }
}

/// Exports `batch`, retrying with backoff unless the exporter is closing; counts the result.
async fn export<S: Sink>(
    sink: &S,
    batch: Vec<S::Item>,
    closing: &CancellationToken,
    stats: &ExportStats,
) {
    if batch.is_empty() {
        return;
    }
    let count = batch.len() as u64;
    // 1 s, then 2 s, ... between the attempts.
    let mut delays = {
        use backon::BackoffBuilder as _;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_times(ATTEMPTS as usize)
            .build()
    };
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        match sink.send(batch.clone()).await {
            Ok(rejected) => {
                let rejected = rejected.min(count);
                stats
                    .exported
                    .fetch_add(count - rejected, Ordering::Relaxed);
                stats.pending.fetch_sub(count, Ordering::Relaxed);
                count_dropped(
                    stats,
                    rejected,
                    "the OTLP endpoint rejected them",
                    S::DROPPED,
                );
                return;
            }
            Err(error) => {
                last_error = error;
                if attempt == ATTEMPTS || closing.is_cancelled() {
                    break;
                }
                tracing::debug!(error = %last_error, attempt, "OTLP export failed; retrying.");
                let delay = delays.next().unwrap_or(Duration::from_secs(1));
                tokio::select! {
                    () = closing.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    stats.pending.fetch_sub(count, Ordering::Relaxed);
    count_dropped(
        stats,
        count,
        &format!("the OTLP endpoint failed: {last_error}"),
        S::DROPPED,
    );
}

/// A link to a span of another trace.
fn link(trace: crate::event::TraceId, span: crate::event::SpanId, remote: bool) -> Link {
    Link::with_context(SpanContext::new(
        OtelTraceId::from_bytes(trace.to_bytes()),
        OtelSpanId::from_bytes(span.to_bytes()),
        TraceFlags::SAMPLED,
        remote,
        TraceState::default(),
    ))
}

/// The spans of one group: one per member, parent = causal predecessor; and for a member
/// that happened inside an application's span (or is one), a span in that application's
/// trace too, a child of the application span, each linked to the other.
fn spans(group: &Incident, scope: &InstrumentationScope) -> Vec<SpanData> {
    let trace = OtelTraceId::from_bytes(group.trace_id.to_bytes());
    let root = group.members.first().map(|m| m.id);
    let mut out = Vec::with_capacity(group.members.len());
    for member in &group.members {
        let Some(own) = member.span else {
            continue;
        };
        let span = OtelSpanId::from_bytes(own.to_bytes());
        let at = UNIX_EPOCH + Duration::from_nanos(member.timestamp);
        let mut links = SpanLinks::default();
        for (trace_id, span_id) in &member.cross_links {
            links.links.push(link(*trace_id, *span_id, false));
        }
        if let Some((trace_id, span_id)) = member.own_context {
            links.links.push(link(trace_id, span_id, true));
        }
        if let Some((trace_id, span_id)) = member.app {
            links.links.push(link(trace_id, span_id, true));
        }
        let attributes = attributes(group, member, root == Some(member.id));
        let status = if member.severity >= Severity::Error {
            Status::error(member.message.clone())
        } else {
            Status::Unset
        };
        if let Some((app_trace, app_span)) = member.app {
            // An application's own span is in its trace already: what goes there is the
            // incident it belongs to; anything else is what happened inside the request.
            let name = if member.kind == "app.span" {
                format!("tapio incident: {}", group.summary)
            } else {
                member.kind.to_string()
            };
            let mut back = SpanLinks::default();
            back.links.push(link(group.trace_id, own, false));
            let mut mirrored = attributes.clone();
            mirrored.push(KeyValue::new(
                "tapio.incident.trace_id",
                to_hex(&group.trace_id.to_bytes()),
            ));
            out.push(SpanData {
                span_context: SpanContext::new(
                    OtelTraceId::from_bytes(app_trace.to_bytes()),
                    mirror_id(own),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                ),
                parent_span_id: OtelSpanId::from_bytes(app_span.to_bytes()),
                parent_span_is_remote: true,
                span_kind: SpanKind::Internal,
                name: name.into(),
                start_time: at,
                end_time: at,
                attributes: mirrored,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: back,
                status: status.clone(),
                instrumentation_scope: scope.clone(),
            });
        }
        out.push(SpanData {
            span_context: SpanContext::new(
                trace,
                span,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: member.parent.map_or(OtelSpanId::INVALID, |p| {
                OtelSpanId::from_bytes(p.to_bytes())
            }),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: member.kind.clone(),
            start_time: at,
            end_time: at,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links,
            status,
            instrumentation_scope: scope.clone(),
        });
    }
    out
}

/// The id of a member's span in an application's trace: derived from its own, never zero.
fn mirror_id(own: crate::event::SpanId) -> OtelSpanId {
    let id = crate::event::hash_parts(&[b"tapio-app-join", &own.to_bytes()]);
    OtelSpanId::from_bytes(id.max(1).to_be_bytes())
}

/// One entity field's value.
enum Field<'a> {
    Text(&'a str),
    Int(i64),
}

/// The entities that are known, under the OpenTelemetry semantic conventions' names.
fn entity_fields(e: &crate::event::Entities) -> Vec<(&'static str, Field<'_>)> {
    let mut out = Vec::with_capacity(8);
    for (key, value) in [
        ("k8s.node.name", &e.node),
        ("k8s.namespace.name", &e.pod_namespace),
        ("k8s.pod.name", &e.pod_name),
        ("k8s.pod.uid", &e.pod_uid),
        ("container.id", &e.container_id),
        ("process.command", &e.comm),
        ("systemd.unit", &e.unit),
    ] {
        if !value.is_empty() {
            out.push((key, Field::Text(value)));
        }
    }
    if !e.workload_name.is_empty() {
        let key = match e.workload_kind.as_ref() {
            "Deployment" => "k8s.deployment.name",
            "StatefulSet" => "k8s.statefulset.name",
            "DaemonSet" => "k8s.daemonset.name",
            "Job" => "k8s.job.name",
            _ => "k8s.workload.name",
        };
        out.push((key, Field::Text(&e.workload_name)));
    }
    if e.pid != 0 {
        out.push(("process.pid", Field::Int(i64::from(e.pid))));
    }
    out
}

/// Span attributes: OpenTelemetry semantic conventions for the entities (`k8s.*`,
/// `container.*`, `process.*`), `tapio.*` for what the correlation found.
fn attributes(group: &Incident, member: &Member, is_root: bool) -> Vec<KeyValue> {
    let mut out = vec![
        KeyValue::new("tapio.event.id", member.id.to_string()),
        KeyValue::new(
            "tapio.severity",
            format!("{:?}", member.severity).to_lowercase(),
        ),
        KeyValue::new("tapio.group.id", to_hex(&group.id.to_bytes())),
        KeyValue::new("tapio.impact", group.impact),
        KeyValue::new("tapio.root_cause", is_root),
    ];
    if !member.message.is_empty() {
        out.push(KeyValue::new("tapio.message", member.message.clone()));
    }
    for (key, field) in entity_fields(&member.entities) {
        out.push(match field {
            Field::Text(text) => KeyValue::new(key, text.to_owned()),
            Field::Int(n) => KeyValue::new(key, n),
        });
    }
    if let Some(relation) = member.joined_on {
        out.push(KeyValue::new("tapio.related_on", relation));
    }
    if is_root {
        out.push(KeyValue::new("tapio.summary", group.summary.clone()));
        out.push(KeyValue::new("tapio.cascade_risk", group.cascade_risk));
        for (n, prediction) in group.predictions.iter().enumerate().take(3) {
            out.push(KeyValue::new(
                format!("tapio.prediction.{n}"),
                format!("{} p={:.2}", prediction.event_type, prediction.probability),
            ));
        }
        if let Some(action) = group.predictions.first().and_then(|p| p.prevention.first()) {
            out.push(KeyValue::new("tapio.prevention", action.clone()));
        }
    }
    out
}

/// The exporter of the agent's own spans, while self-tracing is on; process-wide like the
/// tracing subscriber that feeds it.
static SELF_EXPORT: std::sync::Mutex<Option<Exporter>> = std::sync::Mutex::new(None);

/// Sends the agent's own last spans and stops exporting them, within `limit`.
pub async fn finish_self_tracing(limit: Duration) {
    let exporter = SELF_EXPORT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(exporter) = exporter {
        exporter.finish(limit).await;
    }
}

/// The agent's own spans, handed to the self-tracing [`Exporter`] as they end.
#[derive(Debug)]
struct SelfSpans;

impl opentelemetry_sdk::trace::SpanProcessor for SelfSpans {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if let Some(exporter) = SELF_EXPORT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            exporter.offer_spans(vec![span]);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// A tracing layer that exports the agent's own spans (`otel.self_tracing`) to `endpoint`
/// as service `tapio-collector-agent`; only `tapio`'s own spans, not its libraries'. Must be
/// called inside the runtime; [`finish_self_tracing`] sends the last ones.
pub fn self_tracing_layer<S>(
    endpoint: &str,
    node: &str,
) -> Result<impl tracing_subscriber::Layer<S>, StartError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    let exporter = Exporter::start(endpoint, node, "tapio-collector-agent", Arc::default())?;
    *SELF_EXPORT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(exporter);
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(SelfSpans)
        .build();
    let tracer = provider.tracer("tapio-collector");
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target("tapio", tracing::Level::INFO),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint that takes a batch and never answers.
    struct Stalled;

    impl Sink for Stalled {
        type Item = u32;
        const DROPPED: &'static str = "Test records dropped.";

        async fn send(&self, _batch: Vec<u32>) -> Result<u64, String> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_stalled_endpoint_holds_a_bounded_number_of_records_and_counts_the_rest() {
        let stats = Arc::new(ExportStats::default());
        let queue = Queue::start(Stalled, Arc::clone(&stats));
        // Far fewer offers than the queue's slots, each a large group's worth of records.
        let offers = 64;
        let each = 300;
        for _ in 0..offers {
            queue.offer(vec![0; each]);
            tokio::task::yield_now().await;
        }
        let pending = stats.pending.load(Ordering::Relaxed);
        let dropped = stats.dropped.load(Ordering::Relaxed);
        assert!(pending <= MAX_PENDING, "{pending} records held");
        assert!(dropped > 0);
        assert_eq!(
            pending + dropped,
            offers * each as u64,
            "every record counted"
        );
        queue.finish(Duration::from_millis(10)).await;
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed),
            offers * each as u64,
            "none exported"
        );
    }

    #[tokio::test]
    async fn an_offer_larger_than_the_bound_still_goes_when_nothing_waits() {
        let stats = Arc::new(ExportStats::default());
        let queue = Queue::start(Stalled, Arc::clone(&stats));
        let big = usize::try_from(MAX_PENDING).expect("fits") + 1;
        queue.offer(vec![0; big]);
        assert_eq!(stats.pending.load(Ordering::Relaxed), big as u64);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        queue.finish(Duration::from_millis(10)).await;
    }
}
