//! The domain event: what collectors produce and everything downstream consumes.
//!
//! Its JSON form (serde) uses the proto's field names in snake case, so a line written
//! by `--stdout` reads like the wire message; ids are ULID text and trace ids hex.

mod id;
mod incident;
pub mod keys;
pub(crate) mod proto;
pub mod schema;
mod serde_impls;

pub(crate) use serde_impls::to_hex;
mod wire;

use std::borrow::Cow;
use std::sync::Arc;

pub use id::{EventId, IdGenerator, ParseIdError, hash_parts, unix_nanos_now};
pub use incident::{Incident, Member, Prediction};
pub use proto::{ProtoError, check};
use serde::{Deserialize, Serialize};

/// One observation from one collector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique, time-ordered id.
    pub id: EventId,
    /// When the observed thing happened, in nanoseconds since the Unix epoch.
    #[serde(rename = "timestamp_unix_nano")]
    pub timestamp: u64,
    /// Dotted type, e.g. `process.exec`.
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    /// The collector that produced it.
    pub source: Cow<'static, str>,
    /// How bad it is.
    #[serde(default)]
    pub severity: Severity,
    /// One-line human summary.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// What it touches.
    #[serde(default, skip_serializing_if = "Entities::is_empty")]
    pub entities: Entities,
    /// Typed details.
    #[serde(default, skip_serializing_if = "Attributes::is_empty")]
    pub attributes: Attributes,
    /// W3C trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// W3C span id of this event's span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<SpanId>,
    /// Span id of the causal predecessor, or of the application span it joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<SpanId>,
    /// Set by the correlation engine when the event belongs to a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Correlation>,
    /// Confirmed once the event is durable, for collectors that keep a read position
    /// (`crate::delivery`); never on the wire.
    #[serde(skip)]
    pub receipt: Option<crate::delivery::Receipt>,
}

impl Event {
    /// A bare event; the rest is filled in by the producer.
    #[must_use]
    pub fn new(
        id: EventId,
        timestamp: u64,
        kind: impl Into<Cow<'static, str>>,
        source: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            id,
            timestamp,
            kind: kind.into(),
            source: source.into(),
            severity: Severity::Info,
            message: String::new(),
            entities: Entities::default(),
            attributes: Attributes::default(),
            trace_id: None,
            span_id: None,
            parent_span_id: None,
            correlation: None,
            receipt: None,
        }
    }
}

/// How bad an event is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Something that may need attention (NXDOMAIN, a restart).
    Warning,
    /// Something failed (exit 137, a unit failed).
    Error,
    /// Something failed with a wide blast radius (an OOM kill, a node `NotReady`).
    Critical,
}

impl Severity {
    /// Its name as the JSON form writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }
}

/// The entities an event touches; empty strings and zeros mean unknown, as on the wire.
///
/// Strings are shared (`Arc<str>`): a collector stamps the same node, pod and container on
/// many events, and a clone is a reference count, not an allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Entities {
    /// Node (host) name.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub node: Arc<str>,
    /// Process id.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub pid: u32,
    /// Process command name.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub comm: Arc<str>,
    /// cgroup v2 inode id.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub cgroup_id: u64,
    /// Container id (64 hex characters for containerd and CRI-O).
    #[serde(skip_serializing_if = "str_is_empty")]
    pub container_id: Arc<str>,
    /// Pod UID.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub pod_uid: Arc<str>,
    /// Pod namespace.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub pod_namespace: Arc<str>,
    /// Pod name.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub pod_name: Arc<str>,
    /// Owner workload kind, e.g. `Deployment`.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub workload_kind: Arc<str>,
    /// Owner workload name.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub workload_name: Arc<str>,
    /// systemd unit.
    #[serde(skip_serializing_if = "str_is_empty")]
    pub unit: Arc<str>,
}

fn str_is_empty(value: &Arc<str>) -> bool {
    value.is_empty()
}

// serde's skip_serializing_if takes a path to a fn over a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

impl Entities {
    /// True when nothing is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        // Field by field: building a default to compare with costs more than the check.
        self.pid == 0
            && self.cgroup_id == 0
            && [
                &self.node,
                &self.comm,
                &self.container_id,
                &self.pod_uid,
                &self.pod_namespace,
                &self.pod_name,
                &self.workload_kind,
                &self.workload_name,
                &self.unit,
            ]
            .iter()
            .all(|s| s.is_empty())
    }
}

/// Typed details of an event, in the order the producer added them; keys are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(Vec<Attribute>);

/// One typed detail.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Key, e.g. `exit_code`.
    pub key: Cow<'static, str>,
    /// Value.
    pub value: AttrValue,
}

/// A typed attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// Text.
    Str(String),
    /// Signed integer.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// Flag.
    Bool(bool),
}

impl Attributes {
    /// Room for `n` attributes without growing.
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|a| a.key == key) {
            Some(existing) => existing.value = value,
            None => self.0.push(Attribute { key, value }),
        }
    }

    /// Appends `key`, which the caller knows is not there yet (no search, unlike `set`).
    pub fn push(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) {
        self.0.push(Attribute {
            key: key.into(),
            value: value.into(),
        });
    }

    /// The value of `key`, if present.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.0.iter().find(|a| a.key == key).map(|a| &a.value)
    }

    /// The text value of `key`, if present and text.
    #[must_use]
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The integer value of `key`, if present and an integer.
    #[must_use]
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(AttrValue::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// Iterates in insertion order.
    pub fn iter(&self) -> std::slice::Iter<'_, Attribute> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Attributes {
    type Item = &'a Attribute;
    type IntoIter = std::slice::Iter<'a, Attribute>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<String> for AttrValue {
    fn from(value: String) -> Self {
        Self::Str(value)
    }
}

impl From<&str> for AttrValue {
    fn from(value: &str) -> Self {
        Self::Str(value.to_owned())
    }
}

impl From<Cow<'_, str>> for AttrValue {
    fn from(value: Cow<'_, str>) -> Self {
        Self::Str(value.into_owned())
    }
}

impl From<i64> for AttrValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u32> for AttrValue {
    fn from(value: u32) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<i32> for AttrValue {
    fn from(value: i32) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<f64> for AttrValue {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl From<bool> for AttrValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

/// A W3C trace id; never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// A W3C span id; never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// A semantic group's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId([u8; 16]);

impl TraceId {
    /// `None` for the all-zero id, which W3C reserves for "no trace".
    #[must_use]
    pub fn new(bytes: [u8; 16]) -> Option<Self> {
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    /// The 16 bytes.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// `None` for the all-zero id, which W3C reserves for "no span".
    #[must_use]
    pub fn new(bytes: [u8; 8]) -> Option<Self> {
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    /// The 8 bytes.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

impl GroupId {
    /// Wraps 16 bytes.
    #[must_use]
    pub const fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes.
    #[must_use]
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

/// Where an event sits in a semantic group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correlation {
    /// The group.
    pub group_id: GroupId,
    /// 0..1.
    #[serde(default)]
    pub impact: f64,
    /// The events this one was caused by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causal_links: Vec<CausalLink>,
}

/// One edge of a causal chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CausalLink {
    /// The cause.
    pub cause_event_id: EventId,
    /// The rule that matched.
    pub rule: Cow<'static, str>,
    /// 0..1.
    pub confidence: f64,
}
