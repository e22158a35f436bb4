//! An incident: a closed semantic group as everything downstream of correlation reads it
//! (the bridge sends it, the trace exporter draws it). The engine's working state stays in
//! the correlation module.

use super::{CausalLink, Entities, EventId, GroupId, Severity, SpanId, TraceId};

/// A closed group of related events with its root cause, chain, impact and predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct Incident {
    /// Its id (derived from the root cause's event id).
    pub id: GroupId,
    /// Its trace id (derived from the group id).
    pub trace_id: TraceId,
    /// The earliest cause in the rule graph.
    pub root: EventId,
    /// Member events, in arrival order.
    pub events: Vec<EventId>,
    /// The same members with what their spans need. Boxed: a group grows one member at a
    /// time up to a thousand, and moving whole members on each growth of the list (and
    /// touching fresh memory for it) was a large share of the engine's time.
    #[allow(clippy::vec_box, reason = "see above")]
    pub members: Vec<Box<Member>>,
    /// Every causal link: (effect, link).
    pub chain: Vec<(EventId, CausalLink)>,
    /// 0..1.
    pub impact: f64,
    /// Likely next effects.
    pub predictions: Vec<Prediction>,
    /// 0..1: how likely at least one more effect follows, 1 - prod(1 - p) over predictions.
    pub cascade_risk: f64,
    /// Event time of the first and the last member.
    pub first_seen: u64,
    /// See `first_seen`.
    pub last_seen: u64,
    /// One line for humans.
    pub summary: String,
}

/// One event of an incident, as its span: what the trace exporter needs once the event
/// itself has left.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The event's id.
    pub id: EventId,
    /// Its type: the span's name.
    pub kind: std::borrow::Cow<'static, str>,
    /// Event time, Unix nanoseconds.
    pub timestamp: u64,
    /// Its span in the incident's trace.
    pub span: Option<SpanId>,
    /// Its causal predecessor's span; `None` for the root cause.
    pub parent: Option<SpanId>,
    /// The trace context the event arrived with (an application's), linked from its span.
    pub own_context: Option<(TraceId, SpanId)>,
    /// Causes that matched in other incidents: span links across traces.
    pub cross_links: Vec<(TraceId, SpanId)>,
    /// The application span it happened in (the `otel` collector's), or that it is: the
    /// trace export also puts it in that trace, as a child of that span, linked both ways.
    pub app: Option<(TraceId, SpanId)>,
    /// For a related (not causally linked) member, the entity it shares with the
    /// incident, by name (`pod`, `workload`, ...).
    pub joined_on: Option<&'static str>,
    /// Severity.
    pub severity: Severity,
    /// Human text.
    pub message: String,
    /// What it touched.
    pub entities: Entities,
}

/// A likely next effect of an incident.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The event type expected next.
    pub event_type: &'static str,
    /// 0..1.
    pub probability: f64,
    /// What would prevent it, from the incident's evidence.
    pub prevention: Vec<String>,
}
