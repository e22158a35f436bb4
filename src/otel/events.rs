//! Enriched events as OTLP log records (`otel.export_events`): an OpenTelemetry Collector,
//! Loki or Elastic pipeline takes the agent's events without a Tapio server.
//!
//! One record per event: its time, severity (number and text), the message as the body,
//! the type as the record's event name, the trace context the event carries, the
//! entities under the semantic conventions (`k8s.*`, `container.id`, `process.*`), the
//! correlation (`tapio.group.id`, `tapio.impact`) and the event's own attributes under
//! their own names. Bounded and counted like the trace export: a full queue or an endpoint
//! that keeps failing drops records and counts them (`logs_dropped`).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{Queue, Sink, StartError, entity_fields, url_of};
use crate::event::{AttrValue, Event, Severity, to_hex, unix_nanos_now};
use crate::telemetry::ExportStats;

/// Longest one export call may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A running export of events as log records.
#[derive(Debug)]
pub struct EventExporter {
    queue: Queue<LogRecord>,
}

impl EventExporter {
    /// Starts exporting to `endpoint` (`host:port` or a URL) as the agent on `node`.
    pub fn start(endpoint: &str, node: &str, stats: Arc<ExportStats>) -> Result<Self, StartError> {
        let url = url_of(endpoint);
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| StartError {
                endpoint: url,
                reason: e.to_string(),
            })?
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .connect_lazy();
        let text = |key: &str, value: &str| string(key, value.to_owned());
        let sink = Logs {
            client: LogsServiceClient::new(channel),
            resource: Resource {
                attributes: vec![
                    text("service.name", "tapio-collector"),
                    text("host.name", node),
                    text("k8s.node.name", node),
                ],
                ..Resource::default()
            },
        };
        Ok(Self {
            queue: Queue::start(sink, stats),
        })
    }

    /// Queues `events` for export; when the queue is full they are dropped and counted.
    pub fn offer(&self, events: &[Event]) {
        if !events.is_empty() {
            self.queue.offer(events.iter().map(record).collect());
        }
    }

    /// Exports what is queued and stops, within `limit`; the rest is dropped and counted.
    pub async fn finish(self, limit: Duration) {
        self.queue.finish(limit).await;
    }
}

/// The OTLP logs service of the endpoint.
struct Logs {
    client: LogsServiceClient<tonic::transport::Channel>,
    resource: Resource,
}

impl Sink for Logs {
    type Item = LogRecord;
    const DROPPED: &'static str = "Event log records dropped.";

    async fn send(&self, batch: Vec<LogRecord>) -> Result<u64, String> {
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "tapio-collector".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    log_records: batch,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let answer = self
            .client
            .clone()
            .export(request)
            .await
            .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
        Ok(answer
            .into_inner()
            .partial_success
            .map_or(0, |p| u64::try_from(p.rejected_log_records).unwrap_or(0)))
    }
}

fn string(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..KeyValue::default()
    }
}

fn value(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// OpenTelemetry's severity number and text for a severity.
fn severity(severity: Severity) -> (i32, &'static str) {
    match severity {
        Severity::Debug => (5, "DEBUG"),
        Severity::Info => (9, "INFO"),
        Severity::Warning => (13, "WARN"),
        Severity::Error => (17, "ERROR"),
        Severity::Critical => (21, "FATAL"),
    }
}

/// `event` as one log record.
fn record(event: &Event) -> LogRecord {
    let (number, text) = severity(event.severity);
    let mut attributes = vec![
        string("tapio.event.id", event.id.to_string()),
        string("tapio.source", event.source.to_string()),
    ];
    for (key, field) in entity_fields(&event.entities) {
        attributes.push(match field {
            super::Field::Text(s) => string(key, s.to_owned()),
            super::Field::Int(n) => value(key, any_value::Value::IntValue(n)),
        });
    }
    if let Some(correlation) = &event.correlation {
        attributes.push(string(
            "tapio.group.id",
            to_hex(&correlation.group_id.to_bytes()),
        ));
        attributes.push(value(
            "tapio.impact",
            any_value::Value::DoubleValue(correlation.impact),
        ));
    }
    for attribute in &event.attributes {
        let v = match &attribute.value {
            AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
            AttrValue::Int(n) => any_value::Value::IntValue(*n),
            AttrValue::Float(f) => any_value::Value::DoubleValue(*f),
            AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        };
        attributes.push(value(&attribute.key, v));
    }
    LogRecord {
        time_unix_nano: event.timestamp,
        observed_time_unix_nano: unix_nanos_now(),
        severity_number: number,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(event.message.clone())),
        }),
        attributes,
        trace_id: event
            .trace_id
            .map(|t| t.to_bytes().to_vec())
            .unwrap_or_default(),
        span_id: event
            .span_id
            .map(|s| s.to_bytes().to_vec())
            .unwrap_or_default(),
        flags: u32::from(event.trace_id.is_some()),
        event_name: event.kind.to_string(),
        ..LogRecord::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, SpanId, TraceId};

    #[test]
    fn an_event_becomes_a_log_record_with_its_context_and_entities() {
        let mut event = Event::new(
            EventId::from_u128(7),
            1_790_000_000_000_000_000,
            "memory.oom_kill",
            "memory",
        );
        event.severity = Severity::Critical;
        event.message = "java was OOM-killed".into();
        event.entities.pod_name = "cart-1".into();
        event.entities.pod_namespace = "shop".into();
        event.entities.pid = 42;
        event.trace_id = TraceId::new([1; 16]);
        event.span_id = SpanId::new([2; 8]);
        event.attributes.push("anon_rss_bytes", 1i64 << 20);
        let r = record(&event);
        assert_eq!((r.severity_number, r.severity_text.as_str()), (21, "FATAL"));
        assert_eq!(r.event_name, "memory.oom_kill");
        assert_eq!(r.trace_id, vec![1; 16]);
        assert_eq!(r.span_id, vec![2; 8]);
        assert_eq!(r.time_unix_nano, event.timestamp);
        let get = |key: &str| {
            r.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            get("k8s.pod.name"),
            Some(any_value::Value::StringValue("cart-1".into()))
        );
        assert_eq!(
            get("k8s.namespace.name"),
            Some(any_value::Value::StringValue("shop".into()))
        );
        assert_eq!(get("process.pid"), Some(any_value::Value::IntValue(42)));
        assert_eq!(
            get("anon_rss_bytes"),
            Some(any_value::Value::IntValue(1 << 20))
        );
        assert!(matches!(
            r.body.and_then(|b| b.value),
            Some(any_value::Value::StringValue(body)) if body == "java was OOM-killed"
        ));
    }
}
