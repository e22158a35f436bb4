//! Batching: events gather until the batch is full (by count or bytes) or old enough, then
//! the batch is sealed into its wire bytes with an id and a sequence number.
//!
//! Each event is encoded as it arrives, straight into the bytes of the `events` field, so
//! an event is encoded once and the batch holds bytes, not message structs.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tokio::time::Instant;

use crate::event::Event;
use crate::pb;

/// A batch in its final wire form.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// Unique per collector instance; the server acks by it.
    pub batch_id: u64,
    /// Events inside.
    pub events: u32,
    /// The encoded `TapioStreamEventsRequest`.
    pub bytes: Bytes,
    /// The spool segment holding it, when it is spooled.
    pub segment: Option<u64>,
    /// Receipts of the events inside, confirmed once the batch is durable.
    pub receipts: Vec<crate::delivery::Receipt>,
}

/// `TapioStreamEventsRequest.batch`.
const BATCH_FIELD: u32 = 1;
/// `EventBatch.events`.
const EVENTS_FIELD: u32 = 4;
/// `EventBatch.groups`.
const GROUPS_FIELD: u32 = 5;

/// Largest encoded batch; stays well under the server's default message limit (16 MiB).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Gathers events into batches.
#[derive(Debug)]
pub struct Batcher {
    collector_id: String,
    max_events: usize,
    max_age: Duration,
    next_id: u64,
    sequence: u64,
    /// Room for the request and batch headers, then the encoded `events` fields of the
    /// open batch: the headers are written into the room at seal time, so the events are
    /// never copied again.
    current: BytesMut,
    head_room: usize,
    current_events: u32,
    current_groups: u32,
    current_receipts: Vec<crate::delivery::Receipt>,
    opened_at: Option<Instant>,
}

impl Batcher {
    /// Batches of at most `max_events` events or `max_age` age; ids start at `first_id`.
    #[must_use]
    pub fn new(collector_id: String, max_events: usize, max_age: Duration, first_id: u64) -> Self {
        // Request key and length, then the batch id, collector id and sequence fields.
        let head_room = 1 + 10 + (1 + 10) + (1 + 10 + collector_id.len()) + (1 + 10);
        let mut batcher = Self {
            collector_id,
            max_events,
            max_age,
            next_id: first_id,
            sequence: 0,
            current: BytesMut::new(),
            head_room: 0,
            current_events: 0,
            current_groups: 0,
            current_receipts: Vec::new(),
            opened_at: None,
        };
        batcher.head_room = head_room;
        batcher.fresh_buffer(0);
        batcher
    }

    /// Starts an empty buffer with the head room, sized for a batch like the last one.
    fn fresh_buffer(&mut self, expected: usize) {
        self.current = BytesMut::with_capacity(self.head_room + expected);
        self.current.resize(self.head_room, 0);
    }

    /// Adds an event; returns a sealed batch when this one filled it.
    pub fn push(&mut self, event: &Event) -> Option<Sealed> {
        let len = event.wire_len();
        let size = 1 + encoded_len_varint(len as u64) + len;
        let mut sealed = None;
        if self.current_events > 0 && self.current.len() - self.head_room + size > MAX_BATCH_BYTES {
            sealed = self.seal();
        }
        if self.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        // Field 4 of EventBatch, length-delimited: the same bytes prost would write.
        self.current.reserve(size);
        encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut self.current);
        encode_varint(len as u64, &mut self.current);
        event.encode_wire(&mut self.current);
        self.current_events += 1;
        if let Some(receipt) = &event.receipt {
            self.current_receipts.push(receipt.clone());
        }
        if self.current_events as usize >= self.max_events {
            // Only one of the two seals can happen per push: the size seal leaves one event.
            return self.seal().or(sealed);
        }
        sealed
    }

    /// Adds a closed incident group: it rides the open batch, acked and spooled with it.
    pub fn push_group(&mut self, group: &pb::SemanticGroup) {
        if self.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        let len = group.encoded_len();
        self.current
            .reserve(1 + encoded_len_varint(len as u64) + len);
        encode_key(GROUPS_FIELD, WireType::LengthDelimited, &mut self.current);
        encode_varint(len as u64, &mut self.current);
        group.encode_raw(&mut self.current);
        self.current_groups += 1;
    }

    /// Whether the open batch holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.current_events == 0 && self.current_groups == 0
    }

    /// When the open batch is due, if there is one.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.max_age)
    }

    /// Events in the open batch.
    #[must_use]
    pub fn open_events(&self) -> usize {
        self.current_events as usize
    }

    /// Seals the open batch, if it has events or groups.
    pub fn seal(&mut self) -> Option<Sealed> {
        if self.is_empty() {
            return None;
        }
        let count = self.current_events;
        let batch_id = self.next_id;
        self.next_id += 1;
        let sequence = self.sequence;
        self.sequence += 1;
        self.current_events = 0;
        self.current_groups = 0;
        self.opened_at = None;
        // The batch's own fields, then the events already encoded, wrapped as field 1
        // (`batch`) of the request.
        let head = pb::EventBatch {
            batch_id,
            collector_id: self.collector_id.clone(),
            sequence,
            events: Vec::new(),
            groups: Vec::new(),
        };
        let events_len = self.current.len() - self.head_room;
        let inner = head.encoded_len() + events_len;
        let mut header = Vec::with_capacity(self.head_room);
        encode_key(BATCH_FIELD, WireType::LengthDelimited, &mut header);
        encode_varint(inner as u64, &mut header);
        head.encode_raw(&mut header);
        let start = self.head_room - header.len();
        self.current[start..self.head_room].copy_from_slice(&header);
        let full = std::mem::take(&mut self.current).freeze();
        self.fresh_buffer(events_len);
        Some(Sealed {
            batch_id,
            events: count,
            bytes: full.slice(start..),
            segment: None,
            receipts: std::mem::take(&mut self.current_receipts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    fn event(n: u128) -> Event {
        Event::new(EventId::from_u128(n), 1, "a.b", "t")
    }

    #[tokio::test]
    async fn groups_ride_a_batch_and_a_batch_of_groups_alone_seals() {
        let group = |n: u8| pb::SemanticGroup {
            group_id: vec![n; 16],
            trace_id: vec![n; 16],
            summary: format!("group {n}"),
            ..pb::SemanticGroup::default()
        };
        let mut batcher = Batcher::new("node".into(), 10, Duration::from_secs(1), 1);
        batcher.push_group(&group(1));
        assert!(
            !batcher.is_empty() && batcher.deadline().is_some(),
            "a group opens a batch"
        );
        let alone = batcher.seal().expect("a batch of one group");
        assert_eq!(alone.events, 0, "groups are not counted as events");
        batcher.push(&event(1));
        batcher.push_group(&group(2));
        batcher.push(&event(2));
        let mixed = batcher.seal().expect("a mixed batch");
        let decode =
            |sealed: &Sealed| match pb::TapioStreamEventsRequest::decode(sealed.bytes.clone())
                .expect("prost decodes it")
                .payload
            {
                Some(pb::tapio_stream_events_request::Payload::Batch(batch)) => batch,
                other => panic!("not a batch: {other:?}"),
            };
        assert_eq!(decode(&alone).groups, vec![group(1)]);
        let mixed = decode(&mixed);
        assert_eq!(mixed.groups, vec![group(2)]);
        assert_eq!(mixed.events.len(), 2);
    }

    #[tokio::test]
    async fn seals_by_count_with_increasing_ids_and_sequences() {
        let mut batcher = Batcher::new("node".into(), 3, Duration::from_secs(1), 100);
        let sealed: Vec<Sealed> = (0..7).filter_map(|n| batcher.push(&event(n))).collect();
        assert_eq!(sealed.len(), 2);
        assert_eq!(batcher.open_events(), 1);
        let last = batcher.seal().expect("partial batch");
        let decoded: Vec<pb::EventBatch> = sealed
            .iter()
            .chain([&last])
            .map(|s| {
                match pb::TapioStreamEventsRequest::decode(s.bytes.clone())
                    .expect("decodes")
                    .payload
                {
                    Some(pb::tapio_stream_events_request::Payload::Batch(b)) => b,
                    other => panic!("not a batch: {other:?}"),
                }
            })
            .collect();
        let ids: Vec<u64> = decoded.iter().map(|b| b.batch_id).collect();
        let sequences: Vec<u64> = decoded.iter().map(|b| b.sequence).collect();
        let counts: Vec<usize> = decoded.iter().map(|b| b.events.len()).collect();
        assert_eq!(ids, [100, 101, 102]);
        assert_eq!(sequences, [0, 1, 2]);
        assert_eq!(counts, [3, 3, 1]);
        assert!(batcher.seal().is_none(), "nothing left");
    }

    #[tokio::test]
    async fn sealed_bytes_are_exactly_what_prost_encodes() {
        let mut ids = crate::event::IdGenerator::new();
        let events: Vec<Event> = (0..5)
            .map(|n| {
                let mut e = Event::new(ids.next_id(), n, "a.b", "t");
                e.message = "m".repeat(n as usize * 100);
                e.attributes.set("n", n.cast_signed());
                e
            })
            .collect();
        let mut batcher = Batcher::new("node-7".into(), 100, Duration::from_secs(1), 42);
        for e in events.clone() {
            assert!(batcher.push(&e).is_none());
        }
        let sealed = batcher.seal().expect("a batch");
        let expected = pb::TapioStreamEventsRequest {
            payload: Some(pb::tapio_stream_events_request::Payload::Batch(
                pb::EventBatch {
                    batch_id: 42,
                    collector_id: "node-7".into(),
                    sequence: 0,
                    events: events.into_iter().map(pb::Event::from).collect(),
                    groups: Vec::new(),
                },
            )),
        };
        assert_eq!(sealed.bytes.as_ref(), expected.encode_to_vec().as_slice());
    }

    #[tokio::test]
    async fn deadline_is_set_by_the_first_event() {
        let mut batcher = Batcher::new("node".into(), 10, Duration::from_millis(250), 1);
        assert!(batcher.deadline().is_none());
        let before = Instant::now();
        batcher.push(&event(1));
        let deadline = batcher.deadline().expect("open batch");
        assert!(deadline >= before + Duration::from_millis(250));
    }
}
