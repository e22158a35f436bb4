//! OTLP requests into `app.span` and `app.log` events, under the keep policy.
//!
//! A span keeps its W3C ids in the event's own trace fields, its name, kind, status and
//! duration under `span.*` and `otel.*` keys, its service as `service.name`, and its own
//! attributes under their own names. The event's time is the span's end, when a failed
//! request fails: an OOM kill during the request comes before it, as a cause must.
//!
//! Event ids are derived from what identifies the record (a span's trace and span ids), so
//! a client that resends a request after a timeout sends the same events again and the
//! server's dedup keeps one of each.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};

use super::who::{Connection, Who};
use crate::event::{
    AttrValue, Attributes, Entities, Event, EventId, Severity, SpanId, TraceId, hash_parts,
    unix_nanos_now,
};

/// The collector's registry name: the `source` of its events.
const SOURCE: &str = "otel";

/// Longest text attribute value kept, in bytes; longer ones are cut at a character.
const MAX_TEXT: usize = 4096;

/// Which spans and log records become events.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// A span at least this long (nanoseconds) is kept as slow.
    pub slow_ns: u64,
    /// A routine span is kept when its trace id's low 64 bits are below this (the
    /// `sample_ratio` of 2^64), so a trace is kept or passed over whole.
    pub ratio_bound: u64,
    /// Log records under this are passed over.
    pub min_severity: Severity,
    /// Attributes kept per span or record at most; the rest are counted on the event.
    pub max_attributes: usize,
}

impl Policy {
    /// The bound for a sample ratio from 0 to 1.
    #[must_use]
    pub fn ratio_bound(ratio: f64) -> u64 {
        if ratio >= 1.0 {
            u64::MAX
        } else {
            // Exact for the ratios people write; the cast saturates at the ends.
            #[allow(clippy::cast_sign_loss, clippy::cast_precision_loss)]
            let bound = (ratio.max(0.0) * u64::MAX as f64) as u64;
            bound
        }
    }
}

/// What a request became.
#[derive(Debug, Default)]
pub struct Converted {
    /// The events to send.
    pub events: Vec<Event>,
    /// Records the keep policy passed over.
    pub sampled_out: u64,
    /// Records that could not be read (bad ids), with the first reason.
    pub rejected: u64,
    /// Why the first rejected record was.
    pub reason: String,
}

impl Converted {
    fn reject(&mut self, why: impl FnOnce() -> String) {
        if self.rejected == 0 {
            self.reason = why();
        }
        self.rejected += 1;
    }
}

/// One resource's sender: its service, and its entities, resolved when a record of it
/// is first kept.
struct Sender {
    resource: Vec<KeyValue>,
    service: String,
    entities: Option<Entities>,
}

impl Sender {
    fn new(resource: Option<opentelemetry_proto::tonic::resource::v1::Resource>) -> Self {
        let resource = resource.map(|r| r.attributes).unwrap_or_default();
        Self {
            service: service_name(&resource),
            resource,
            entities: None,
        }
    }

    fn entities(
        &mut self,
        who: &mut Who,
        connection: Option<Connection>,
        node: &Arc<str>,
    ) -> Entities {
        let resource = &self.resource;
        self.entities
            .get_or_insert_with(|| who.entities(resource, connection, node))
            .clone()
    }
}

/// The spans of `request` as `app.span` events, resolved to their senders by `who`.
pub fn spans(
    request: ExportTraceServiceRequest,
    policy: &Policy,
    who: &mut Who,
    connection: Option<Connection>,
    node: &Arc<str>,
) -> Converted {
    let mut out = Converted::default();
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    out.events.reserve_exact(spans);
    for resource_spans in request.resource_spans {
        let mut sender = Sender::new(resource_spans.resource);
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let (Some(trace), Some(id)) = (trace_id(&span.trace_id), span_id(&span.span_id))
                else {
                    out.reject(|| {
                        format!(
                            "span {:?}: a trace id is 16 bytes and a span id 8, neither all zero",
                            span.name
                        )
                    });
                    continue;
                };
                let Some(kept) = keep_span(&span, trace, policy) else {
                    out.sampled_out += 1;
                    continue;
                };
                let entities = sender.entities(who, connection, node);
                out.events.push(span_event(
                    span,
                    trace,
                    id,
                    kept,
                    &sender.service,
                    entities,
                    policy,
                ));
            }
        }
    }
    out
}

/// Why a span is kept: `error`, `slow` or `sampled`; `None` when it is passed over.
fn keep_span(span: &Span, trace: TraceId, policy: &Policy) -> Option<&'static str> {
    let failed = span
        .status
        .as_ref()
        .is_some_and(|s| s.code == StatusCode::Error as i32);
    if failed {
        return Some("error");
    }
    let duration = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano);
    if duration >= policy.slow_ns {
        return Some("slow");
    }
    let low = u64::from_be_bytes(trace.to_bytes()[8..].try_into().expect("8 bytes"));
    (low < policy.ratio_bound || policy.ratio_bound == u64::MAX).then_some("sampled")
}

fn span_event(
    span: Span,
    trace: TraceId,
    id: SpanId,
    kept: &'static str,
    service: &str,
    entities: Entities,
    policy: &Policy,
) -> Event {
    let end = if span.end_time_unix_nano == 0 {
        unix_nanos_now()
    } else {
        span.end_time_unix_nano
    };
    let duration = end.saturating_sub(span.start_time_unix_nano);
    let event_id = span_event_id(end, trace, id);
    let mut event = Event::new(event_id, end, "app.span", SOURCE);
    let (code, message) = span.status.as_ref().map_or((StatusCode::Unset, ""), |s| {
        (
            StatusCode::try_from(s.code).unwrap_or(StatusCode::Unset),
            s.message.as_str(),
        )
    });
    event.severity = match kept {
        "error" => Severity::Error,
        "slow" => Severity::Warning,
        _ => Severity::Info,
    };
    let kind = match SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Internal | SpanKind::Unspecified => "internal",
    };
    let status = match code {
        StatusCode::Error => "error",
        StatusCode::Ok => "ok",
        StatusCode::Unset => "unset",
    };
    #[allow(clippy::cast_precision_loss)]
    let millis = duration as f64 / 1e6;
    // Built by hand: formatting a float and a quoted name costs more than the rest of the
    // conversion together.
    let tenths = duration / 100_000;
    let mut text = String::with_capacity(service.len() + span.name.len() + kind.len() + 48);
    for part in [
        service, " ", kind, " span \"", &span.name, "\" ", status, " after ",
    ] {
        text.push_str(part);
    }
    let _ = write!(text, "{}.{}ms", tenths / 10, tenths % 10);
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(&clip(message));
    }
    event.message = text;
    event.trace_id = Some(trace);
    event.span_id = Some(id);
    event.parent_span_id = span_id(&span.parent_span_id);
    event.entities = entities;
    event.attributes =
        Attributes::with_capacity(OWN + span.attributes.len().min(policy.max_attributes));
    let a = &mut event.attributes;
    a.push("span.name", clipped(span.name));
    a.push("span.kind", kind);
    a.push("otel.status_code", status);
    if !message.is_empty() {
        a.push("otel.status_description", clip(message));
    }
    a.push("service.name", service);
    a.push("duration_ms", millis);
    a.push("kept", kept);
    own_attributes(a, span.attributes, policy.max_attributes);
    event
}

/// The log records of `request` as `app.log` events.
pub fn logs(
    request: ExportLogsServiceRequest,
    policy: &Policy,
    who: &mut Who,
    connection: Option<Connection>,
    node: &Arc<str>,
) -> Converted {
    let mut out = Converted::default();
    for resource_logs in request.resource_logs {
        let mut sender = Sender::new(resource_logs.resource);
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                let trace = trace_id(&record.trace_id);
                let span = span_id(&record.span_id);
                if (!record.trace_id.is_empty() && trace.is_none())
                    || (!record.span_id.is_empty() && span.is_none())
                {
                    out.reject(|| {
                        "log record: a trace id is 16 bytes and a span id 8, neither all zero"
                            .to_owned()
                    });
                    continue;
                }
                let severity = severity_of(record.severity_number);
                if severity < policy.min_severity {
                    out.sampled_out += 1;
                    continue;
                }
                let entities = sender.entities(who, connection, node);
                out.events.push(log_event(
                    record,
                    trace,
                    span,
                    severity,
                    &sender.service,
                    entities,
                    policy,
                ));
            }
        }
    }
    out
}

fn log_event(
    record: LogRecord,
    trace: Option<TraceId>,
    span: Option<SpanId>,
    severity: Severity,
    service: &str,
    entities: Entities,
    policy: &Policy,
) -> Event {
    let at = [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|t| *t != 0)
        .unwrap_or_else(unix_nanos_now);
    let body = record.body.as_ref().map(text_of).unwrap_or_default();
    let id = derived_id(
        at,
        &[
            service.as_bytes(),
            &record.time_unix_nano.to_le_bytes(),
            &record.observed_time_unix_nano.to_le_bytes(),
            &record.trace_id,
            &record.span_id,
            &record.severity_number.to_le_bytes(),
            body.as_bytes(),
        ],
    );
    let mut event = Event::new(id, at, "app.log", SOURCE);
    event.severity = severity;
    event.message = clip(&body).into_owned();
    event.trace_id = trace;
    event.parent_span_id = span;
    event.entities = entities;
    let a = &mut event.attributes;
    a.push("service.name", service);
    a.push("severity_number", i64::from(record.severity_number));
    if !record.severity_text.is_empty() {
        a.push("severity_text", clipped(record.severity_text));
    }
    if !record.event_name.is_empty() {
        a.push("event.name", clipped(record.event_name));
    }
    own_attributes(a, record.attributes, policy.max_attributes);
    event
}

/// OpenTelemetry's severity number (1-24) as an event severity: TRACE and DEBUG debug,
/// INFO info, WARN warning, ERROR error, FATAL critical; unspecified is info.
#[must_use]
pub fn severity_of(number: i32) -> Severity {
    match number {
        1..=8 => Severity::Debug,
        13..=16 => Severity::Warning,
        17..=20 => Severity::Error,
        21.. => Severity::Critical,
        _ => Severity::Info,
    }
}

/// An id in the event id layout (milliseconds, then 80 bits) from the record's own
/// identity, so the same record sent twice is the same event.
fn derived_id(at: u64, parts: &[&[u8]]) -> EventId {
    let high = hash_parts(parts);
    let low = hash_parts(&[b"tapio-otel", &high.to_le_bytes()]);
    id_at(at, high, low)
}

/// A span's event id from its trace and span ids: word-wise mixing (multiply and
/// xor-shift), since those ids are random already and byte-wise hashing is most of what
/// building the event would cost.
fn span_event_id(at: u64, trace: TraceId, span: SpanId) -> EventId {
    let mix = |x: u64| {
        let x = (x ^ (x >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
        x ^ (x >> 32)
    };
    let t = trace.to_bytes();
    let (hi, lo) = (
        u64::from_le_bytes(t[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(t[8..].try_into().expect("8 bytes")),
    );
    let s = u64::from_le_bytes(span.to_bytes());
    let high = mix(s ^ mix(lo ^ mix(hi)));
    id_at(at, high, mix(high ^ 0x9e37_79b9_7f4a_7c15))
}

/// The id of something at `at` (Unix nanoseconds) with 80 bits from `high` and `low`.
fn id_at(at: u64, high: u64, low: u64) -> EventId {
    let millis = u128::from(at / 1_000_000) & ((1 << 48) - 1);
    EventId::from_u128((millis << 80) | (u128::from(high) << 16) | u128::from(low & 0xffff))
}

fn trace_id(bytes: &[u8]) -> Option<TraceId> {
    TraceId::new(bytes.try_into().ok()?)
}

fn span_id(bytes: &[u8]) -> Option<SpanId> {
    SpanId::new(bytes.try_into().ok()?)
}

/// The resource's `service.name`, or the specification's `unknown_service`.
fn service_name(resource: &[KeyValue]) -> String {
    resource
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref())
        .map(text_of)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown_service".to_owned())
}

/// Whether `key` is one the event's own attributes use: an application attribute of the
/// same name is not copied over it.
fn is_own_key(key: &str) -> bool {
    matches!(
        key,
        "span.name"
            | "span.kind"
            | "otel.status_code"
            | "otel.status_description"
            | "service.name"
            | "duration_ms"
            | "kept"
            | "severity_number"
            | "severity_text"
            | "event.name"
            | "attributes_dropped"
    )
}

/// Attributes of its own an event has at most.
const OWN: usize = 8;

/// Appends the application's own attributes, at most `max`; counts the rest.
fn own_attributes(a: &mut Attributes, attributes: Vec<KeyValue>, max: usize) {
    let mut dropped = 0i64;
    let mut kept = 0;
    let own = a.len();
    for kv in attributes {
        // OTLP requires unique keys; a client that repeats one keeps its first.
        if is_own_key(&kv.key) || a.iter().skip(own).any(|x| x.key == kv.key) {
            dropped += 1;
            continue;
        }
        if kept == max {
            dropped += 1;
            continue;
        }
        let Some(value) = kv.value.and_then(|v| v.value) else {
            continue;
        };
        let value = match value {
            any_value::Value::StringValue(s) => AttrValue::Str(clipped(s)),
            any_value::Value::BoolValue(b) => AttrValue::Bool(b),
            any_value::Value::IntValue(n) => AttrValue::Int(n),
            any_value::Value::DoubleValue(f) => AttrValue::Float(f),
            other => AttrValue::Str(clipped(text_of(&AnyValue { value: Some(other) }))),
        };
        a.push(kv.key, value);
        kept += 1;
    }
    if dropped > 0 {
        a.push("attributes_dropped", dropped);
    }
}

/// A value as text: strings as they are, the rest as JSON-like text.
fn text_of(value: &AnyValue) -> String {
    let mut out = String::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &AnyValue, out: &mut String) {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => out.push_str(s),
        Some(any_value::Value::BoolValue(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(any_value::Value::IntValue(n)) => {
            let _ = write!(out, "{n}");
        }
        Some(any_value::Value::DoubleValue(f)) => {
            let _ = write!(out, "{f}");
        }
        Some(any_value::Value::BytesValue(bytes)) => {
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
        }
        Some(any_value::Value::ArrayValue(array)) => {
            out.push('[');
            for (i, v) in array.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(v, out);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(list)) => {
            out.push('{');
            for (i, kv) in list.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}=", kv.key);
                if let Some(v) = &kv.value {
                    write_value(v, out);
                }
            }
            out.push('}');
        }
        // A string-table index only profiles use: no text of its own.
        Some(any_value::Value::StringValueStrindex(_)) | None => {}
    }
}

/// `text`, owned, cut to [`MAX_TEXT`] bytes at a character boundary.
fn clipped(mut text: String) -> String {
    text.truncate(clip_end(&text));
    text
}

/// `text` cut to [`MAX_TEXT`] bytes at a character boundary.
fn clip(text: &str) -> Cow<'_, str> {
    match clip_end(text) {
        end if end == text.len() => Cow::Borrowed(text),
        end => Cow::Owned(text[..end].to_owned()),
    }
}

/// Where `text` is cut: its length, or the last character boundary at [`MAX_TEXT`].
fn clip_end(text: &str) -> usize {
    if text.len() <= MAX_TEXT {
        return text.len();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    use super::*;
    use crate::metadata::PodDirectory;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn text(key: &str, value: &str) -> KeyValue {
        kv(key, any_value::Value::StringValue(value.into()))
    }

    fn span(n: u8, millis: u64, error: bool) -> Span {
        Span {
            trace_id: vec![n; 16],
            span_id: vec![n; 8],
            parent_span_id: vec![9; 8],
            name: format!("GET /item/{n}"),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: 1_790_000_000_000_000_000,
            end_time_unix_nano: 1_790_000_000_000_000_000 + millis * 1_000_000,
            attributes: vec![
                kv(
                    "http.response.status_code",
                    any_value::Value::IntValue(if error { 503 } else { 200 }),
                ),
                text("span.kind", "an application's own key that clashes"),
            ],
            status: Some(Status {
                message: if error {
                    "upstream died".into()
                } else {
                    String::new()
                },
                code: if error {
                    StatusCode::Error
                } else {
                    StatusCode::Unset
                } as i32,
            }),
            ..Span::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "checkout"), text("k8s.pod.uid", "u-1")],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::default()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn policy(ratio: f64) -> Policy {
        Policy {
            slow_ns: 1_000_000_000,
            ratio_bound: Policy::ratio_bound(ratio),
            min_severity: Severity::Warning,
            max_attributes: 64,
        }
    }

    fn convert(spans_in: Vec<Span>, ratio: f64) -> Converted {
        spans(
            request(spans_in),
            &policy(ratio),
            &mut Who::new(PodDirectory::new()),
            None,
            &"node-a".into(),
        )
    }

    #[test]
    fn errors_and_slow_spans_are_kept_and_the_rest_are_sampled_by_trace() {
        let out = convert(
            vec![span(1, 5, true), span(2, 1500, false), span(3, 5, false)],
            0.0,
        );
        let kept: Vec<(&str, Severity)> = out
            .events
            .iter()
            .map(|e| (e.attributes.text("kept").expect("kept"), e.severity))
            .collect();
        assert_eq!(
            kept,
            [("error", Severity::Error), ("slow", Severity::Warning)]
        );
        assert_eq!(
            out.sampled_out, 1,
            "the routine span is counted, not lost silently"
        );
        let all = convert(vec![span(3, 5, false)], 1.0);
        assert_eq!(all.events.len(), 1);
        assert_eq!(all.events[0].attributes.text("kept"), Some("sampled"));
    }

    #[test]
    fn a_span_keeps_its_ids_times_and_attributes_and_has_its_documented_shape() {
        let out = convert(vec![span(1, 250, true)], 0.0);
        let e = &out.events[0];
        crate::event::schema::check(e).expect("app.span as documented");
        assert_eq!(e.trace_id.map(TraceId::to_bytes), Some([1; 16]));
        assert_eq!(e.span_id.map(SpanId::to_bytes), Some([1; 8]));
        assert_eq!(e.parent_span_id.map(SpanId::to_bytes), Some([9; 8]));
        assert_eq!(e.timestamp, 1_790_000_000_250_000_000, "the span's end");
        assert_eq!(
            e.attributes.text("span.kind"),
            Some("server"),
            "ours win a clash"
        );
        assert_eq!(e.attributes.int("attributes_dropped"), Some(1));
        assert_eq!(e.attributes.int("http.response.status_code"), Some(503));
        assert_eq!(e.attributes.text("service.name"), Some("checkout"));
        assert_eq!(
            e.attributes.text("otel.status_description"),
            Some("upstream died")
        );
        assert_eq!(&*e.entities.pod_uid, "u-1");
        assert_eq!(e.source, "otel");
        // Sent again after a timeout: the same event, which the server keeps once.
        assert_eq!(convert(vec![span(1, 250, true)], 0.0).events[0].id, e.id);
        assert_eq!(e.id.unix_millis(), e.timestamp / 1_000_000);
    }

    #[test]
    fn a_span_with_bad_ids_is_rejected_and_the_rest_are_kept() {
        let mut bad = span(1, 5, true);
        bad.trace_id = vec![1; 3];
        let out = convert(vec![bad, span(2, 5, true)], 0.0);
        assert_eq!((out.events.len(), out.rejected), (1, 1));
        assert!(out.reason.contains("16 bytes"), "{}", out.reason);
    }

    #[test]
    fn logs_under_the_minimum_severity_are_counted_and_the_rest_kept() {
        let record = |severity: i32, body: &str| LogRecord {
            time_unix_nano: 1_790_000_000_000_000_000,
            severity_number: severity,
            severity_text: "ERROR".into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body.into())),
            }),
            trace_id: vec![4; 16],
            span_id: vec![5; 8],
            ..LogRecord::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "checkout")],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record(9, "started"), record(17, "payment failed")],
                    ..ScopeLogs::default()
                }],
                schema_url: String::new(),
            }],
        };
        let out = logs(
            request,
            &policy(0.0),
            &mut Who::new(PodDirectory::new()),
            None,
            &"n".into(),
        );
        assert_eq!((out.events.len(), out.sampled_out), (1, 1));
        let e = &out.events[0];
        crate::event::schema::check(e).expect("app.log as documented");
        assert_eq!(
            (e.severity, e.message.as_str()),
            (Severity::Error, "payment failed")
        );
        assert_eq!(e.trace_id.map(TraceId::to_bytes), Some([4; 16]));
        assert_eq!(e.parent_span_id.map(SpanId::to_bytes), Some([5; 8]));
    }

    #[test]
    fn severity_numbers_map_to_severities() {
        let mapped: Vec<Severity> = [0, 1, 5, 9, 13, 17, 21, 24].map(severity_of).to_vec();
        assert_eq!(
            mapped,
            [
                Severity::Info,
                Severity::Debug,
                Severity::Debug,
                Severity::Info,
                Severity::Warning,
                Severity::Error,
                Severity::Critical,
                Severity::Critical
            ]
        );
    }

    #[test]
    fn long_text_is_clipped_at_a_character() {
        let long = "é".repeat(MAX_TEXT);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_TEXT && clipped.len() >= MAX_TEXT - 1);
    }
}
