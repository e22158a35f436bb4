//! The server's zero-copy view of incoming batches: each event stays the bytes it arrived
//! as, is checked by walking its fields (the same rules as [`crate::event::check`], which
//! a property test holds it to), and yields only the columns the store indexes. No event
//! is decoded into structs and encoded again on its way to disk.

use std::ops::Range;

use bytes::{Buf, Bytes};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::event::ProtoError;
use crate::pb;

/// Why an event's bytes were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not valid protobuf for the field it claims to be.
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    /// Valid protobuf, invalid event.
    #[error(transparent)]
    Invalid(#[from] ProtoError),
}

/// One event as received, with the columns the store keeps beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The encoded `Event`, exactly as received.
    pub bytes: Bytes,
    /// Its id.
    pub id: [u8; 16],
    /// Its timestamp, Unix nanoseconds.
    pub timestamp: u64,
    kind: Range<usize>,
    pod_namespace: Range<usize>,
    pod_name: Range<usize>,
    /// Its correlation group, if any.
    pub group_id: Option<[u8; 16]>,
}

impl RawEvent {
    /// Checks `bytes` as an `Event` and picks out the indexed columns.
    pub fn parse(bytes: Bytes) -> Result<Self, WireError> {
        parse_event(bytes)
    }

    /// Encodes a message and parses it back: for callers that hold structs (tests, benches).
    pub fn from_message(event: &pb::Event) -> Result<Self, WireError> {
        Self::parse(Bytes::from(event.encode_to_vec()))
    }

    /// The event's type.
    #[must_use]
    pub fn kind(&self) -> &str {
        self.text(&self.kind)
    }

    /// The pod namespace, or empty.
    #[must_use]
    pub fn pod_namespace(&self) -> &str {
        self.text(&self.pod_namespace)
    }

    /// The pod name, or empty.
    #[must_use]
    pub fn pod_name(&self) -> &str {
        self.text(&self.pod_name)
    }

    fn text(&self, range: &Range<usize>) -> &str {
        // Checked as UTF-8 when parsed.
        std::str::from_utf8(&self.bytes[range.clone()]).unwrap_or_default()
    }

    /// The event decoded, for consumers that want structs (the live tail).
    pub fn decode(&self) -> Result<pb::Event, prost::DecodeError> {
        pb::Event::decode(self.bytes.clone())
    }
}

/// A `StreamEvents` request with its events still as bytes.
#[derive(Debug)]
pub enum RawRequest {
    /// A batch.
    Batch(RawBatch),
    /// A control message.
    Control(pb::StreamControl),
    /// Neither: refused by the service.
    Empty,
}

impl RawRequest {
    /// Parses a `TapioStreamEventsRequest` (as a JetStream message carries it), keeping
    /// the events as bytes.
    pub fn parse(bytes: &Bytes) -> Result<Self, WireError> {
        parse_request(bytes)
    }
}

impl From<pb::TapioStreamEventsRequest> for RawRequest {
    /// For requests that arrived decoded: the events are encoded again.
    fn from(request: pb::TapioStreamEventsRequest) -> Self {
        use pb::tapio_stream_events_request::Payload;
        match request.payload {
            Some(Payload::Batch(batch)) => Self::Batch(RawBatch {
                batch_id: batch.batch_id,
                collector_id: batch.collector_id,
                sequence: batch.sequence,
                events: batch
                    .events
                    .iter()
                    .map(|e| Bytes::from(e.encode_to_vec()))
                    .collect(),
                groups: batch.groups,
            }),
            Some(Payload::Control(control)) => Self::Control(control),
            None => Self::Empty,
        }
    }
}

/// A batch whose events are undecoded.
#[derive(Debug)]
pub struct RawBatch {
    /// Its id.
    pub batch_id: u64,
    /// The sending collector.
    pub collector_id: String,
    /// Its sequence number.
    pub sequence: u64,
    /// Each event's bytes.
    pub events: Vec<Bytes>,
    /// Incident groups the collector closed (rare: decoded).
    pub groups: Vec<pb::SemanticGroup>,
}

/// A cursor over one message inside the event's bytes; every range it returns indexes
/// the whole buffer.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            if self.pos >= self.end {
                return Err(WireError::Malformed("truncated varint"));
            }
            let byte = self.buf[self.pos];
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift.min(63);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed("varint longer than 10 bytes"))
    }

    fn key(&mut self) -> Result<(u64, u8), WireError> {
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(WireError::Malformed("field number 0"));
        }
        Ok((field, (key & 7) as u8))
    }

    /// The byte range of a length-delimited field's contents.
    fn delimited(&mut self) -> Result<Range<usize>, WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError::Malformed("length"))?;
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.end)
            .ok_or(WireError::Malformed("length past the end"))?;
        self.pos = end;
        Ok(start..end)
    }

    fn skip(&mut self, wire: u8) -> Result<(), WireError> {
        let width = match wire {
            VARINT => return self.varint().map(drop),
            FIXED64 => 8,
            LEN => return self.delimited().map(drop),
            FIXED32 => 4,
            _ => return Err(WireError::Malformed("unsupported wire type")),
        };
        if self.pos + width > self.end {
            return Err(WireError::Malformed("truncated fixed-width field"));
        }
        self.pos += width;
        Ok(())
    }

    fn expect(wire: u8, want: u8) -> Result<(), WireError> {
        if wire == want {
            Ok(())
        } else {
            Err(WireError::Malformed("wrong wire type for field"))
        }
    }

    fn string(&mut self, wire: u8) -> Result<Range<usize>, WireError> {
        Self::expect(wire, LEN)?;
        let range = self.delimited()?;
        std::str::from_utf8(&self.buf[range.clone()])
            .map_err(|_| WireError::Malformed("string is not UTF-8"))?;
        Ok(range)
    }

    fn bytes(&mut self, wire: u8) -> Result<Range<usize>, WireError> {
        Self::expect(wire, LEN)?;
        self.delimited()
    }

    fn message(&mut self, wire: u8) -> Result<Reader<'a>, WireError> {
        Self::expect(wire, LEN)?;
        let range = self.delimited()?;
        Ok(Reader {
            buf: self.buf,
            pos: range.start,
            end: range.end,
        })
    }

    fn fixed(&mut self, wire: u8, want: u8) -> Result<(), WireError> {
        Self::expect(wire, want)?;
        self.skip(wire)
    }
}

fn length_error(field: &'static str, expected: usize, actual: usize) -> WireError {
    ProtoError::Length {
        field,
        expected,
        actual,
    }
    .into()
}

fn optional_len(field: &'static str, len: usize, expected: usize) -> Result<(), WireError> {
    if len == 0 || len == expected {
        Ok(())
    } else {
        Err(length_error(field, expected, len))
    }
}

fn parse_event(bytes: Bytes) -> Result<RawEvent, WireError> {
    let mut r = Reader::new(&bytes);
    let mut id = 0..0;
    let mut timestamp = 0;
    let mut kind = 0..0;
    let mut severity = 0;
    let mut trace = (0usize, 0usize, 0usize);
    let mut entities = (0..0, 0..0);
    let mut group_id = None;
    let mut attributes = Vec::new();
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => id = r.bytes(wire)?,
            2 => {
                Reader::expect(wire, VARINT)?;
                timestamp = r.varint()?;
            }
            3 => kind = r.string(wire)?,
            4 | 6 => {
                r.string(wire)?;
            }
            5 => {
                Reader::expect(wire, VARINT)?;
                // Enums are int32 on the wire; the high bits of a negative one are dropped.
                severity = r.varint()? as i32;
            }
            7 => entities = parse_entities(r.message(wire)?)?,
            8 => attributes.push(parse_attribute(r.message(wire)?)?),
            9 => trace.0 = r.bytes(wire)?.len(),
            10 => trace.1 = r.bytes(wire)?.len(),
            11 => trace.2 = r.bytes(wire)?.len(),
            12 => group_id = Some(parse_correlation(r.message(wire)?)?),
            _ => r.skip(wire)?,
        }
    }
    // The same order of checks as `event::check`, so both name the same first problem.
    if id.len() != 16 {
        return Err(length_error("id", 16, id.len()));
    }
    if kind.is_empty() {
        return Err(ProtoError::Missing("type").into());
    }
    pb::Severity::try_from(severity).map_err(|_| ProtoError::Severity(severity))?;
    optional_len("trace_id", trace.0, 16)?;
    optional_len("span_id", trace.1, 8)?;
    optional_len("parent_span_id", trace.2, 8)?;
    if let Some(Err(key)) = attributes.into_iter().find(Result::is_err) {
        return Err(ProtoError::AttributeValue(key).into());
    }
    let group_id = match group_id {
        Some(Err(error)) => return Err(error),
        Some(Ok(group)) => Some(group),
        None => None,
    };
    if i64::try_from(timestamp).is_err() {
        return Err(ProtoError::Timestamp(timestamp).into());
    }
    let mut id_bytes = [0u8; 16];
    id_bytes.copy_from_slice(&bytes[id]);
    Ok(RawEvent {
        id: id_bytes,
        timestamp,
        kind,
        pod_namespace: entities.0,
        pod_name: entities.1,
        group_id,
        bytes,
    })
}

fn parse_entities(mut r: Reader<'_>) -> Result<(Range<usize>, Range<usize>), WireError> {
    let mut namespace = 0..0;
    let mut name = 0..0;
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            2 | 4 => {
                Reader::expect(wire, VARINT)?;
                r.varint()?;
            }
            7 => namespace = r.string(wire)?,
            8 => name = r.string(wire)?,
            1 | 3 | 5 | 6 | 9 | 10 | 11 => {
                r.string(wire)?;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok((namespace, name))
}

/// `Err(key)` when the attribute has no value.
fn parse_attribute(mut r: Reader<'_>) -> Result<Result<(), String>, WireError> {
    let mut key = 0..0;
    let mut has_value = false;
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => key = r.string(wire)?,
            2 => {
                r.string(wire)?;
                has_value = true;
            }
            3 | 5 => {
                Reader::expect(wire, VARINT)?;
                r.varint()?;
                has_value = true;
            }
            4 => {
                r.fixed(wire, FIXED64)?;
                has_value = true;
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(if has_value {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&r.buf[key]).into_owned())
    })
}

/// The group id, or the first problem of the correlation, reported after the event's own.
fn parse_correlation(mut r: Reader<'_>) -> Result<Result<[u8; 16], WireError>, WireError> {
    let mut group = 0..0;
    let mut problem = None;
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => group = r.bytes(wire)?,
            2 => r.fixed(wire, FIXED64)?,
            3 => {
                let mut link = r.message(wire)?;
                while !link.done() {
                    let (field, wire) = link.key()?;
                    match field {
                        1 => {
                            let id = link.bytes(wire)?;
                            if id.len() != 16 && problem.is_none() {
                                problem =
                                    Some(length_error("causal_links.cause_event_id", 16, id.len()));
                            }
                        }
                        2 => {
                            link.string(wire)?;
                        }
                        3 => link.fixed(wire, FIXED64)?,
                        _ => link.skip(wire)?,
                    }
                }
            }
            _ => r.skip(wire)?,
        }
    }
    if group.len() != 16 {
        return Ok(Err(length_error("correlation.group_id", 16, group.len())));
    }
    if let Some(problem) = problem {
        return Ok(Err(problem));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&r.buf[group]);
    Ok(Ok(id))
}

/// Splits a `TapioStreamEventsRequest` into its batch header and each event's bytes.
fn parse_request(bytes: &Bytes) -> Result<RawRequest, WireError> {
    let mut r = Reader::new(bytes);
    let mut request = RawRequest::Empty;
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                let mut b = r.message(wire)?;
                let mut batch = RawBatch {
                    batch_id: 0,
                    collector_id: String::new(),
                    sequence: 0,
                    events: Vec::new(),
                    groups: Vec::new(),
                };
                while !b.done() {
                    let (field, wire) = b.key()?;
                    match field {
                        1 => {
                            Reader::expect(wire, VARINT)?;
                            batch.batch_id = b.varint()?;
                        }
                        2 => {
                            let range = b.string(wire)?;
                            batch.collector_id =
                                String::from_utf8_lossy(&bytes[range]).into_owned();
                        }
                        3 => {
                            Reader::expect(wire, VARINT)?;
                            batch.sequence = b.varint()?;
                        }
                        4 => batch.events.push(bytes.slice(b.bytes(wire)?)),
                        5 => {
                            let range = b.bytes(wire)?;
                            let group = pb::SemanticGroup::decode(&bytes[range]).map_err(|_| {
                                WireError::Malformed("semantic group does not decode")
                            })?;
                            batch.groups.push(group);
                        }
                        _ => b.skip(wire)?,
                    }
                }
                request = RawRequest::Batch(batch);
            }
            2 => {
                let range = r.bytes(wire)?;
                let control = pb::StreamControl::decode(bytes.slice(range))
                    .map_err(|_| WireError::Malformed("undecodable control message"))?;
                request = RawRequest::Control(control);
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(request)
}

/// The server side of `StreamEvents`: requests stay bytes, responses are prost messages.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = pb::TapioStreamEventsResponse;
    type Decode = RawRequest;
    type Encoder = ResponseEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

/// Encodes responses with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = pb::TapioStreamEventsResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode response: {e}")))
    }
}

/// Takes each request's bytes (one copy out of the HTTP/2 buffer) and splits them.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = RawRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        parse_request(&bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("undecodable request: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{Event, EventId, check};

    fn wire_event() -> impl Strategy<Value = pb::Event> {
        crate::event::proto::strategies::event().prop_map(pb::Event::from)
    }

    proptest! {
        #[test]
        fn parsing_agrees_with_decoding_and_checking(event in wire_event(), corrupt in 0usize..9) {
            let mut event = event;
            match corrupt {
                0 => event.id.truncate(3),
                1 => event.r#type.clear(),
                2 => event.severity = 99,
                3 => event.span_id = vec![1; 5],
                4 => event.attributes.push(pb::Attribute { key: "k".into(), value: None }),
                5 => event.trace_id = vec![2; 15],
                6 => event.timestamp_unix_nano = u64::MAX,
                _ => {}
            }
            let parsed = RawEvent::from_message(&event);
            match check(&event) {
                Ok(()) => {
                    let raw = parsed.expect("a valid event parses");
                    prop_assert_eq!(&raw.id[..], &event.id[..]);
                    prop_assert_eq!(raw.timestamp, event.timestamp_unix_nano);
                    prop_assert_eq!(raw.kind(), event.r#type.as_str());
                    let entities = event.entities.clone().unwrap_or_default();
                    prop_assert_eq!(raw.pod_namespace(), entities.pod_namespace.as_str());
                    prop_assert_eq!(raw.pod_name(), entities.pod_name.as_str());
                    prop_assert_eq!(
                        raw.group_id.map(|g| g.to_vec()),
                        event.correlation.as_ref().map(|c| c.group_id.clone())
                    );
                    prop_assert_eq!(raw.decode().expect("decodes"), event);
                }
                Err(expected) => prop_assert_eq!(parsed, Err(WireError::Invalid(expected))),
            }
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let parsed = RawEvent::parse(Bytes::from(bytes.clone()));
            // Whatever prost cannot decode, or decodes into an invalid event, is refused;
            // what it decodes into a valid one is taken, with the same id and time.
            let decoded = pb::Event::decode(bytes.as_slice());
            if let Ok(event) = decoded {
                if let Err(expected) = check(&event) {
                    prop_assert_eq!(parsed, Err(WireError::Invalid(expected)));
                } else {
                    let raw = parsed.expect("a valid event is taken");
                    prop_assert_eq!(&raw.id[..], &event.id[..]);
                    prop_assert_eq!(raw.timestamp, event.timestamp_unix_nano);
                }
            } else {
                prop_assert!(parsed.is_err(), "undecodable bytes were taken: {parsed:?}");
            }
            let _ = parse_request(&Bytes::from(bytes));
        }
    }

    #[test]
    fn a_request_splits_into_its_events() {
        let events: Vec<pb::Event> = (1..=3)
            .map(|n| Event::new(EventId::from_u128(n << 80), n as u64, "a.b", "t").into())
            .collect();
        let request = pb::TapioStreamEventsRequest {
            payload: Some(pb::tapio_stream_events_request::Payload::Batch(
                pb::EventBatch {
                    batch_id: 9,
                    collector_id: "node".into(),
                    sequence: 4,
                    events: events.clone(),
                    groups: Vec::new(),
                },
            )),
        };
        let RawRequest::Batch(batch) =
            parse_request(&Bytes::from(request.encode_to_vec())).expect("parses")
        else {
            panic!("not a batch");
        };
        assert_eq!(
            (batch.batch_id, batch.sequence, batch.collector_id.as_str()),
            (9, 4, "node")
        );
        let back: Vec<pb::Event> = batch
            .events
            .into_iter()
            .map(|b| pb::Event::decode(b).expect("decodes"))
            .collect();
        assert_eq!(back, events);
    }

    #[test]
    fn malformed_bytes_are_named() {
        assert_eq!(
            RawEvent::parse(Bytes::from_static(&[0x0a, 0x10, 1, 2])),
            Err(WireError::Malformed("length past the end"))
        );
        assert_eq!(
            RawEvent::parse(Bytes::from_static(&[0x1a, 0x02, 0xff, 0xfe])),
            Err(WireError::Malformed("string is not UTF-8"))
        );
    }
}
