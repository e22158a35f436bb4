//! The domain event written straight to its wire bytes: exactly what prost writes for
//! `pb::Event::from(event)` (a property test holds it to that), without building the
//! message struct first, so the bridge encodes an event without copying its strings.

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::{AttrValue, Attribute, CausalLink, Correlation, Entities, Event, Severity};
use crate::pb;

fn len_delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn bytes_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        len_delimited_len(tag, value.len())
    }
}

fn put_bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value);
    }
}

fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn double_len(tag: u32, value: f64) -> usize {
    if value == 0.0 { 0 } else { key_len(tag) + 8 }
}

fn put_double(tag: u32, value: f64, buf: &mut impl BufMut) {
    if value != 0.0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.put_f64_le(value);
    }
}

fn put_message(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn severity(severity: Severity) -> u64 {
    // Enum values are non-negative, so the varint is the plain number.
    i32::from(pb::Severity::from(severity))
        .unsigned_abs()
        .into()
}

impl Entities {
    fn body_len(&self) -> usize {
        bytes_len(1, self.node.as_bytes())
            + varint_len(2, self.pid.into())
            + bytes_len(3, self.comm.as_bytes())
            + varint_len(4, self.cgroup_id)
            + bytes_len(5, self.container_id.as_bytes())
            + bytes_len(6, self.pod_uid.as_bytes())
            + bytes_len(7, self.pod_namespace.as_bytes())
            + bytes_len(8, self.pod_name.as_bytes())
            + bytes_len(9, self.workload_kind.as_bytes())
            + bytes_len(10, self.workload_name.as_bytes())
            + bytes_len(11, self.unit.as_bytes())
    }

    fn put_body(&self, buf: &mut impl BufMut) {
        put_bytes(1, self.node.as_bytes(), buf);
        put_varint(2, self.pid.into(), buf);
        put_bytes(3, self.comm.as_bytes(), buf);
        put_varint(4, self.cgroup_id, buf);
        put_bytes(5, self.container_id.as_bytes(), buf);
        put_bytes(6, self.pod_uid.as_bytes(), buf);
        put_bytes(7, self.pod_namespace.as_bytes(), buf);
        put_bytes(8, self.pod_name.as_bytes(), buf);
        put_bytes(9, self.workload_kind.as_bytes(), buf);
        put_bytes(10, self.workload_name.as_bytes(), buf);
        put_bytes(11, self.unit.as_bytes(), buf);
    }
}

impl Attribute {
    fn body_len(&self) -> usize {
        // A oneof member is written even when it holds its type's default.
        bytes_len(1, self.key.as_bytes())
            + match &self.value {
                AttrValue::Str(v) => len_delimited_len(2, v.len()),
                AttrValue::Int(v) => key_len(3) + encoded_len_varint(v.cast_unsigned()),
                AttrValue::Float(_) => key_len(4) + 8,
                AttrValue::Bool(_) => key_len(5) + 1,
            }
    }

    fn put_body(&self, buf: &mut impl BufMut) {
        put_bytes(1, self.key.as_bytes(), buf);
        match &self.value {
            AttrValue::Str(v) => {
                put_message(2, v.len(), buf);
                buf.put_slice(v.as_bytes());
            }
            AttrValue::Int(v) => {
                encode_key(3, WireType::Varint, buf);
                encode_varint(v.cast_unsigned(), buf);
            }
            AttrValue::Float(v) => {
                encode_key(4, WireType::SixtyFourBit, buf);
                buf.put_f64_le(*v);
            }
            AttrValue::Bool(v) => {
                encode_key(5, WireType::Varint, buf);
                encode_varint(u64::from(*v), buf);
            }
        }
    }
}

impl CausalLink {
    fn body_len(&self) -> usize {
        len_delimited_len(1, 16)
            + bytes_len(2, self.rule.as_bytes())
            + double_len(3, self.confidence)
    }

    fn put_body(&self, buf: &mut impl BufMut) {
        put_bytes(1, &self.cause_event_id.to_bytes(), buf);
        put_bytes(2, self.rule.as_bytes(), buf);
        put_double(3, self.confidence, buf);
    }
}

impl Correlation {
    fn body_len(&self) -> usize {
        len_delimited_len(1, 16)
            + double_len(2, self.impact)
            + self
                .causal_links
                .iter()
                .map(|l| len_delimited_len(3, l.body_len()))
                .sum::<usize>()
    }

    fn put_body(&self, buf: &mut impl BufMut) {
        put_bytes(1, &self.group_id.to_bytes(), buf);
        put_double(2, self.impact, buf);
        for link in &self.causal_links {
            put_message(3, link.body_len(), buf);
            link.put_body(buf);
        }
    }
}

impl Event {
    /// Length of the encoded `Event` message.
    #[must_use]
    pub fn wire_len(&self) -> usize {
        let entities = if self.entities.is_empty() {
            0
        } else {
            len_delimited_len(7, self.entities.body_len())
        };
        len_delimited_len(1, 16)
            + varint_len(2, self.timestamp)
            + bytes_len(3, self.kind.as_bytes())
            + bytes_len(4, self.source.as_bytes())
            + varint_len(5, severity(self.severity))
            + bytes_len(6, self.message.as_bytes())
            + entities
            + self
                .attributes
                .iter()
                .map(|a| len_delimited_len(8, a.body_len()))
                .sum::<usize>()
            + self.trace_id.map_or(0, |_| len_delimited_len(9, 16))
            + self.span_id.map_or(0, |_| len_delimited_len(10, 8))
            + self.parent_span_id.map_or(0, |_| len_delimited_len(11, 8))
            + self
                .correlation
                .as_ref()
                .map_or(0, |c| len_delimited_len(12, c.body_len()))
    }

    /// Writes the encoded `Event` message (without a length prefix).
    pub fn encode_wire(&self, buf: &mut impl BufMut) {
        put_bytes(1, &self.id.to_bytes(), buf);
        put_varint(2, self.timestamp, buf);
        put_bytes(3, self.kind.as_bytes(), buf);
        put_bytes(4, self.source.as_bytes(), buf);
        put_varint(5, severity(self.severity), buf);
        put_bytes(6, self.message.as_bytes(), buf);
        if !self.entities.is_empty() {
            put_message(7, self.entities.body_len(), buf);
            self.entities.put_body(buf);
        }
        for attribute in &self.attributes {
            put_message(8, attribute.body_len(), buf);
            attribute.put_body(buf);
        }
        if let Some(trace) = self.trace_id {
            put_bytes(9, &trace.to_bytes(), buf);
        }
        if let Some(span) = self.span_id {
            put_bytes(10, &span.to_bytes(), buf);
        }
        if let Some(parent) = self.parent_span_id {
            put_bytes(11, &parent.to_bytes(), buf);
        }
        if let Some(correlation) = &self.correlation {
            put_message(12, correlation.body_len(), buf);
            correlation.put_body(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::event::proto::strategies::event;

    proptest! {
        #[test]
        fn writes_exactly_what_prost_writes(event in event()) {
            let expected = pb::Event::from(event.clone()).encode_to_vec();
            let mut written = Vec::new();
            event.encode_wire(&mut written);
            prop_assert_eq!(event.wire_len(), expected.len());
            prop_assert_eq!(written, expected);
        }
    }
}
