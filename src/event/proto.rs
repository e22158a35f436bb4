//! Conversions between the domain [`Event`] and the wire message.

use crate::pb;

use super::{
    AttrValue, Attribute, Attributes, CausalLink, Correlation, Entities, Event, EventId, GroupId,
    Incident, Severity, SpanId, TraceId,
};

/// Why a wire event could not become a domain event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// A byte field has the wrong length.
    #[error("field `{field}` must be {expected} bytes, got {actual}")]
    Length {
        /// The proto field name.
        field: &'static str,
        /// The required length.
        expected: usize,
        /// What arrived.
        actual: usize,
    },
    /// A required field is empty.
    #[error("field `{0}` is required")]
    Missing(&'static str),
    /// The severity number is not in the enum.
    #[error("unknown severity {0}")]
    Severity(i32),
    /// An attribute carries no value.
    #[error("attribute `{0}` has no value")]
    AttributeValue(String),
    /// The timestamp is past what the store keeps (signed 64-bit nanoseconds).
    #[error("timestamp_unix_nano {0} is past the year 2262 (at most 9223372036854775807)")]
    Timestamp(u64),
}

impl From<Severity> for pb::Severity {
    fn from(severity: Severity) -> Self {
        match severity {
            Severity::Debug => Self::Debug,
            Severity::Info => Self::Info,
            Severity::Warning => Self::Warning,
            Severity::Error => Self::Error,
            Severity::Critical => Self::Critical,
        }
    }
}

impl From<pb::Severity> for Severity {
    fn from(severity: pb::Severity) -> Self {
        match severity {
            pb::Severity::Unspecified | pb::Severity::Info => Self::Info,
            pb::Severity::Debug => Self::Debug,
            pb::Severity::Warning => Self::Warning,
            pb::Severity::Error => Self::Error,
            pb::Severity::Critical => Self::Critical,
        }
    }
}

impl From<Event> for pb::Event {
    fn from(event: Event) -> Self {
        Self {
            id: event.id.to_bytes().to_vec(),
            timestamp_unix_nano: event.timestamp,
            r#type: event.kind.into_owned(),
            source: event.source.into_owned(),
            severity: pb::Severity::from(event.severity).into(),
            message: event.message,
            entities: (!event.entities.is_empty()).then(|| event.entities.into()),
            attributes: event.attributes.0.into_iter().map(Into::into).collect(),
            trace_id: event.trace_id.map_or_else(Vec::new, |t| t.0.to_vec()),
            span_id: event.span_id.map_or_else(Vec::new, |s| s.0.to_vec()),
            parent_span_id: event.parent_span_id.map_or_else(Vec::new, |s| s.0.to_vec()),
            correlation: event.correlation.map(Into::into),
        }
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = ProtoError;

    fn try_from(event: pb::Event) -> Result<Self, Self::Error> {
        let id = EventId::from_slice(&event.id).ok_or(ProtoError::Length {
            field: "id",
            expected: 16,
            actual: event.id.len(),
        })?;
        if event.r#type.is_empty() {
            return Err(ProtoError::Missing("type"));
        }
        let severity = pb::Severity::try_from(event.severity)
            .map_err(|_| ProtoError::Severity(event.severity))?;
        let converted = Self {
            id,
            timestamp: event.timestamp_unix_nano,
            kind: event.r#type.into(),
            source: event.source.into(),
            severity: severity.into(),
            message: event.message,
            entities: event.entities.map(Into::into).unwrap_or_default(),
            attributes: Attributes(
                event
                    .attributes
                    .into_iter()
                    .map(Attribute::try_from)
                    .collect::<Result<_, _>>()?,
            ),
            trace_id: optional_bytes::<16>("trace_id", &event.trace_id)?.and_then(TraceId::new),
            span_id: optional_bytes::<8>("span_id", &event.span_id)?.and_then(SpanId::new),
            parent_span_id: optional_bytes::<8>("parent_span_id", &event.parent_span_id)?
                .and_then(SpanId::new),
            correlation: event.correlation.map(Correlation::try_from).transpose()?,
            receipt: None,
        };
        if i64::try_from(converted.timestamp).is_err() {
            return Err(ProtoError::Timestamp(converted.timestamp));
        }
        Ok(converted)
    }
}

/// Checks a wire event the way [`Event::try_from`] would, without converting it. This is the
/// readable statement of the rules; the server applies them by walking each event's bytes
/// (`server::wire`), and a property test holds the two to the same answers.
pub fn check(event: &pb::Event) -> Result<(), ProtoError> {
    if event.id.len() != 16 {
        return Err(ProtoError::Length {
            field: "id",
            expected: 16,
            actual: event.id.len(),
        });
    }
    if event.r#type.is_empty() {
        return Err(ProtoError::Missing("type"));
    }
    pb::Severity::try_from(event.severity).map_err(|_| ProtoError::Severity(event.severity))?;
    optional_bytes::<16>("trace_id", &event.trace_id)?;
    optional_bytes::<8>("span_id", &event.span_id)?;
    optional_bytes::<8>("parent_span_id", &event.parent_span_id)?;
    if let Some(attribute) = event.attributes.iter().find(|a| a.value.is_none()) {
        return Err(ProtoError::AttributeValue(attribute.key.clone()));
    }
    if let Some(correlation) = &event.correlation {
        exact_bytes::<16>("correlation.group_id", &correlation.group_id)?;
        for link in &correlation.causal_links {
            exact_bytes::<16>("causal_links.cause_event_id", &link.cause_event_id)?;
        }
    }
    if i64::try_from(event.timestamp_unix_nano).is_err() {
        return Err(ProtoError::Timestamp(event.timestamp_unix_nano));
    }
    Ok(())
}

/// Empty means absent; any other length than `N` is an error.
fn optional_bytes<const N: usize>(
    field: &'static str,
    bytes: &[u8],
) -> Result<Option<[u8; N]>, ProtoError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    exact_bytes(field, bytes).map(Some)
}

fn exact_bytes<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], ProtoError> {
    bytes.try_into().map_err(|_| ProtoError::Length {
        field,
        expected: N,
        actual: bytes.len(),
    })
}

impl From<Entities> for pb::Entities {
    fn from(e: Entities) -> Self {
        Self {
            node: e.node.to_string(),
            pid: e.pid,
            comm: e.comm.to_string(),
            cgroup_id: e.cgroup_id,
            container_id: e.container_id.to_string(),
            pod_uid: e.pod_uid.to_string(),
            pod_namespace: e.pod_namespace.to_string(),
            pod_name: e.pod_name.to_string(),
            workload_kind: e.workload_kind.to_string(),
            workload_name: e.workload_name.to_string(),
            unit: e.unit.to_string(),
        }
    }
}

impl From<pb::Entities> for Entities {
    fn from(e: pb::Entities) -> Self {
        Self {
            node: e.node.into(),
            pid: e.pid,
            comm: e.comm.into(),
            cgroup_id: e.cgroup_id,
            container_id: e.container_id.into(),
            pod_uid: e.pod_uid.into(),
            pod_namespace: e.pod_namespace.into(),
            pod_name: e.pod_name.into(),
            workload_kind: e.workload_kind.into(),
            workload_name: e.workload_name.into(),
            unit: e.unit.into(),
        }
    }
}

impl From<Attribute> for pb::Attribute {
    fn from(attribute: Attribute) -> Self {
        use pb::attribute::Value;
        Self {
            key: attribute.key.into_owned(),
            value: Some(match attribute.value {
                AttrValue::Str(v) => Value::StringValue(v),
                AttrValue::Int(v) => Value::IntValue(v),
                AttrValue::Float(v) => Value::DoubleValue(v),
                AttrValue::Bool(v) => Value::BoolValue(v),
            }),
        }
    }
}

impl TryFrom<pb::Attribute> for Attribute {
    type Error = ProtoError;

    fn try_from(attribute: pb::Attribute) -> Result<Self, Self::Error> {
        use pb::attribute::Value;
        let value = match attribute.value {
            Some(Value::StringValue(v)) => AttrValue::Str(v),
            Some(Value::IntValue(v)) => AttrValue::Int(v),
            Some(Value::DoubleValue(v)) => AttrValue::Float(v),
            Some(Value::BoolValue(v)) => AttrValue::Bool(v),
            None => return Err(ProtoError::AttributeValue(attribute.key)),
        };
        Ok(Self {
            key: attribute.key.into(),
            value,
        })
    }
}

impl From<Correlation> for pb::Correlation {
    fn from(c: Correlation) -> Self {
        Self {
            group_id: c.group_id.0.to_vec(),
            impact: c.impact,
            causal_links: c.causal_links.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Correlation> for Correlation {
    type Error = ProtoError;

    fn try_from(c: pb::Correlation) -> Result<Self, Self::Error> {
        Ok(Self {
            group_id: GroupId(exact_bytes("correlation.group_id", &c.group_id)?),
            impact: c.impact,
            causal_links: c
                .causal_links
                .into_iter()
                .map(CausalLink::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<&Incident> for pb::SemanticGroup {
    fn from(incident: &Incident) -> Self {
        Self {
            group_id: incident.id.to_bytes().to_vec(),
            trace_id: incident.trace_id.to_bytes().to_vec(),
            root_cause_event_id: incident.root.to_bytes().to_vec(),
            event_ids: incident
                .events
                .iter()
                .map(|id| id.to_bytes().to_vec())
                .collect(),
            impact: incident.impact,
            causal_chain: incident
                .chain
                .iter()
                .map(|(_, link)| link.clone().into())
                .collect(),
            predictions: incident
                .predictions
                .iter()
                .map(|p| pb::Prediction {
                    event_type: p.event_type.to_owned(),
                    probability: p.probability,
                    prevention_actions: p.prevention.clone(),
                })
                .collect(),
            first_seen_unix_nano: incident.first_seen,
            last_seen_unix_nano: incident.last_seen,
            summary: incident.summary.clone(),
            cascade_risk: incident.cascade_risk,
        }
    }
}

impl From<CausalLink> for pb::CausalLink {
    fn from(link: CausalLink) -> Self {
        Self {
            cause_event_id: link.cause_event_id.to_bytes().to_vec(),
            rule: link.rule.into_owned(),
            confidence: link.confidence,
        }
    }
}

impl TryFrom<pb::CausalLink> for CausalLink {
    type Error = ProtoError;

    fn try_from(link: pb::CausalLink) -> Result<Self, Self::Error> {
        Ok(Self {
            cause_event_id: EventId::from_slice(&link.cause_event_id).ok_or(
                ProtoError::Length {
                    field: "causal_links.cause_event_id",
                    expected: 16,
                    actual: link.cause_event_id.len(),
                },
            )?,
            rule: link.rule.into(),
            confidence: link.confidence,
        })
    }
}

/// proptest strategies for events, shared by the tests that check wire handling.
#[cfg(test)]
pub(crate) mod strategies {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use crate::event::{
        AttrValue, Attribute, Attributes, CausalLink, Correlation, Entities, Event, EventId,
        GroupId, Severity, SpanId, TraceId,
    };

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._/-]{0,12}"
    }

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        prop_oneof![
            text().prop_map(AttrValue::Str),
            any::<i64>().prop_map(AttrValue::Int),
            // JSON has no NaN or infinity; collectors never produce them.
            (proptest::num::f64::NORMAL | proptest::num::f64::ZERO).prop_map(AttrValue::Float),
            any::<bool>().prop_map(AttrValue::Bool),
        ]
    }

    fn entities() -> impl Strategy<Value = Entities> {
        (
            (text(), any::<u32>(), text(), any::<u64>(), text(), text()),
            (text(), text(), text(), text(), text()),
        )
            .prop_map(
                |(
                    (node, pid, comm, cgroup_id, container_id, pod_uid),
                    (pod_namespace, pod_name, workload_kind, workload_name, unit),
                )| Entities {
                    node: node.into(),
                    pid,
                    comm: comm.into(),
                    cgroup_id,
                    container_id: container_id.into(),
                    pod_uid: pod_uid.into(),
                    pod_namespace: pod_namespace.into(),
                    pod_name: pod_name.into(),
                    workload_kind: workload_kind.into(),
                    workload_name: workload_name.into(),
                    unit: unit.into(),
                },
            )
    }

    fn correlation() -> impl Strategy<Value = Correlation> {
        (
            any::<[u8; 16]>(),
            0.0..=1.0f64,
            proptest::collection::vec((any::<u128>(), text(), 0.0..=1.0f64), 0..3),
        )
            .prop_map(|(group, impact, links)| Correlation {
                group_id: GroupId(group),
                impact,
                causal_links: links
                    .into_iter()
                    .map(|(id, rule, confidence)| CausalLink {
                        cause_event_id: EventId::from_u128(id),
                        rule: rule.into(),
                        confidence,
                    })
                    .collect(),
            })
    }

    fn severity() -> impl Strategy<Value = Severity> {
        prop_oneof![
            Just(Severity::Debug),
            Just(Severity::Info),
            Just(Severity::Warning),
            Just(Severity::Error),
            Just(Severity::Critical),
        ]
    }

    prop_compose! {
        pub(crate) fn event()(
            id in any::<u128>(),
            timestamp in 0..=i64::MAX.unsigned_abs(),
            kind in "[a-z]{1,8}(\\.[a-z_]{1,8}){0,2}",
            source in text(),
            severity in severity(),
            message in ".{0,40}",
            entities in entities(),
            attributes in proptest::collection::btree_map("[a-z_]{1,10}", attr_value(), 0..6),
            trace in proptest::option::of(any::<[u8; 16]>()),
            span in proptest::option::of(any::<[u8; 8]>()),
            parent in proptest::option::of(any::<[u8; 8]>()),
            correlation in proptest::option::of(correlation()),
        ) -> Event {
            let attributes: BTreeMap<String, AttrValue> = attributes;
            Event {
                id: EventId::from_u128(id),
                timestamp,
                kind: kind.into(),
                source: source.into(),
                severity,
                message,
                entities,
                attributes: Attributes(
                    attributes
                        .into_iter()
                        .map(|(key, value)| Attribute { key: key.into(), value })
                        .collect(),
                ),
                trace_id: trace.and_then(TraceId::new),
                span_id: span.and_then(SpanId::new),
                parent_span_id: parent.and_then(SpanId::new),
                correlation,
                receipt: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use strategies::event;

    proptest! {
        #[test]
        fn proto_round_trip_is_lossless(event in event()) {
            let bytes = pb::Event::from(event.clone()).encode_to_vec();
            let decoded = pb::Event::decode(bytes.as_slice()).expect("decodes");
            prop_assert_eq!(Event::try_from(decoded).expect("converts"), event);
        }

        #[test]
        fn json_round_trip_is_lossless(event in event()) {
            let line = serde_json::to_string(&event).expect("serializes");
            prop_assert!(!line.contains('\n'), "one event is one line");
            let back: Event = serde_json::from_str(&line).expect("parses");
            prop_assert_eq!(back, event);
        }
    }

    proptest! {
        #[test]
        fn check_agrees_with_conversion(event in event(), corrupt in 0usize..7) {
            let mut wire = pb::Event::from(event);
            match corrupt {
                0 => wire.id.truncate(3),
                1 => wire.r#type.clear(),
                2 => wire.severity = 99,
                3 => wire.span_id = vec![1; 5],
                4 => wire.attributes.push(pb::Attribute { key: "k".into(), value: None }),
                5 => wire.timestamp_unix_nano = 1 << 63,
                _ => {}
            }
            prop_assert_eq!(check(&wire).err(), Event::try_from(wire).err());
        }
    }

    #[test]
    fn wrong_lengths_and_missing_fields_are_named() {
        let good = pb::Event::from(Event::new(EventId::from_u128(1), 1, "a.b", "test"));
        let mut bad = good.clone();
        bad.id = vec![1, 2, 3];
        assert_eq!(
            Event::try_from(bad).unwrap_err().to_string(),
            "field `id` must be 16 bytes, got 3"
        );
        let mut bad = good.clone();
        bad.r#type.clear();
        assert_eq!(Event::try_from(bad), Err(ProtoError::Missing("type")));
        let mut bad = good.clone();
        bad.span_id = vec![1; 7];
        assert!(
            Event::try_from(bad)
                .unwrap_err()
                .to_string()
                .contains("span_id")
        );
        let mut bad = good;
        bad.severity = 42;
        assert_eq!(Event::try_from(bad), Err(ProtoError::Severity(42)));
    }

    #[test]
    fn json_uses_the_proto_field_names() {
        let proto = include_str!("../../proto/tapio/v1/event.proto");
        let mut event = Event::new(EventId::from_u128(7 << 80), 5, "memory.oom_kill", "test");
        event.message = "m".into();
        event.entities.pod_name = "p".into();
        event.attributes.set("exit_code", 137);
        event.trace_id = TraceId::new([1; 16]);
        event.span_id = SpanId::new([2; 8]);
        event.parent_span_id = SpanId::new([3; 8]);
        event.correlation = Some(Correlation {
            group_id: GroupId([4; 16]),
            impact: 0.5,
            causal_links: vec![CausalLink {
                cause_event_id: EventId::from_u128(1),
                rule: "r".into(),
                confidence: 0.9,
            }],
        });
        let value = serde_json::to_value(&event).expect("serializes");
        let mut keys = Vec::new();
        collect_keys(&value, &mut keys, false);
        for key in keys {
            assert!(
                proto.contains(&format!(" {key} = ")),
                "JSON key `{key}` is not a field of event.proto"
            );
        }
        assert_eq!(value["trace_id"], "01010101010101010101010101010101");
        assert_eq!(value["attributes"]["exit_code"], 137);
    }

    fn collect_keys(value: &serde_json::Value, keys: &mut Vec<String>, in_attributes: bool) {
        if let serde_json::Value::Object(map) = value {
            for (key, child) in map {
                // Attribute keys are data, not field names.
                if !in_attributes {
                    keys.push(key.clone());
                }
                collect_keys(child, keys, key == "attributes");
            }
        } else if let serde_json::Value::Array(items) = value {
            for item in items {
                collect_keys(item, keys, false);
            }
        }
    }
}
