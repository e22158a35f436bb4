//! Batching: events gather until the batch is full (by count or bytes) or old enough, then
//! the batch is sealed into its wire bytes with an id and a sequence number.
//!
//! Each event is encoded as it arrives, straight into the bytes of the `events` field, so
//! an event is encoded once and the batch holds bytes, not message structs. A batch never
//! grows past the byte limit (the server's message limit, the spool's room); an event too
//! large for any batch is refused, and a sealed batch that turns out too large for the
//! server is split by [`Batcher::split`].

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{
    WireType, decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint,
};
use tokio::time::Instant;

use super::spool::SpoolRef;
use crate::delivery::Receipt;
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
    /// Where the spool holds it, when it is spooled.
    pub spooled: Option<SpoolRef>,
    /// For a piece of a split batch: what the pieces share.
    pub origin: Option<Arc<Origin>>,
    /// Receipts of the events inside, confirmed once the batch is durable.
    pub receipts: Vec<Receipt>,
    /// When it was last sent, for the ack latency.
    pub sent_at: Option<std::time::Instant>,
}

/// What the pieces of a split batch share: the original's place in the spool and its
/// receipts, both settled when the last piece is.
#[derive(Debug)]
pub struct Origin {
    left: AtomicUsize,
    failed: AtomicBool,
    /// Where the spool holds the original.
    pub spooled: Option<SpoolRef>,
    receipts: Mutex<Vec<Receipt>>,
}

/// The last piece of a split batch was settled.
#[derive(Debug)]
pub struct Settled {
    /// Where the spool holds the original.
    pub spooled: Option<SpoolRef>,
    /// Its receipts: to confirm if every piece was stored, to drop otherwise.
    pub receipts: Vec<Receipt>,
    /// Every piece was stored.
    pub stored: bool,
}

impl Origin {
    /// Shared by `pieces` pieces of a batch spooled at `spooled` with `receipts`; `failed`
    /// when part of it was already refused.
    #[must_use]
    pub fn new(
        pieces: usize,
        failed: bool,
        spooled: Option<SpoolRef>,
        receipts: Vec<Receipt>,
    ) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(pieces),
            failed: AtomicBool::new(failed),
            spooled,
            receipts: Mutex::new(receipts),
        })
    }

    /// One piece was split again into `pieces` (which stand in for it); `failed` when part
    /// of it was refused.
    pub fn replace_piece(&self, pieces: usize, failed: bool) {
        if failed {
            self.failed.store(true, Ordering::Relaxed);
        }
        self.left
            .fetch_add(pieces.saturating_sub(1), Ordering::AcqRel);
    }

    /// One piece is done (`stored`, or refused for good); the whole when it was the last.
    pub fn settle(&self, stored: bool) -> Option<Settled> {
        if !stored {
            self.failed.store(true, Ordering::Relaxed);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        Some(Settled {
            spooled: self.spooled,
            receipts: std::mem::take(
                &mut *self.receipts.lock().unwrap_or_else(PoisonError::into_inner),
            ),
            stored: !self.failed.load(Ordering::Relaxed),
        })
    }
}

/// An event larger than the largest batch allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an event of {bytes} bytes does not fit in a batch of at most {limit} bytes")]
pub struct TooLarge {
    /// The event's size in a batch.
    pub bytes: usize,
    /// The batch limit.
    pub limit: usize,
}

/// A batch whose bytes do not parse as a batch request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed batch: {0}")]
pub struct Malformed(String);

impl From<prost::DecodeError> for Malformed {
    fn from(e: prost::DecodeError) -> Self {
        Self(e.to_string())
    }
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
    /// Largest encoded request.
    max_bytes: usize,
    next_id: u64,
    sequence: u64,
    /// Room for the request and batch headers, then the encoded `events` fields of the
    /// open batch: the headers are written into the room at seal time, so the events are
    /// never copied again.
    current: BytesMut,
    head_room: usize,
    current_events: u32,
    current_groups: u32,
    current_receipts: Vec<Receipt>,
    opened_at: Option<Instant>,
}

impl Batcher {
    /// Batches of at most `max_events` events, [`MAX_BATCH_BYTES`] bytes or `max_age` age;
    /// ids start at `first_id`.
    #[must_use]
    pub fn new(collector_id: String, max_events: usize, max_age: Duration, first_id: u64) -> Self {
        // Request key and length, then the batch id, collector id and sequence fields.
        let head_room = 1 + 10 + (1 + 10) + (1 + 10 + collector_id.len()) + (1 + 10);
        let mut batcher = Self {
            collector_id,
            max_events,
            max_age,
            max_bytes: MAX_BATCH_BYTES,
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

    /// New event count and age limits, for the open batch and later ones.
    pub fn retune(&mut self, max_events: usize, max_age: Duration) {
        self.max_events = max_events;
        self.max_age = max_age;
    }

    /// Lowers the byte limit of later batches (never below what one small event needs);
    /// returns the limit now in force.
    pub fn limit_bytes(&mut self, max_bytes: usize) -> usize {
        self.max_bytes = self.max_bytes.min(max_bytes.max(self.head_room + 1024));
        self.max_bytes
    }

    /// The byte limit of a batch.
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Starts an empty buffer with the head room, sized for a batch like the last one.
    fn fresh_buffer(&mut self, expected: usize) {
        self.current = BytesMut::with_capacity(self.head_room + expected);
        self.current.resize(self.head_room, 0);
    }

    /// Room left for fields before the open batch reaches the byte limit.
    fn room(&self) -> usize {
        self.max_bytes.saturating_sub(self.current.len())
    }

    /// Adds an event; returns a sealed batch when this one filled it, or refuses an event
    /// that no batch can hold.
    pub fn push(&mut self, event: &Event) -> Result<Option<Sealed>, TooLarge> {
        let len = event.wire_len();
        let size = 1 + encoded_len_varint(len as u64) + len;
        if self.head_room + size > self.max_bytes {
            return Err(TooLarge {
                bytes: size,
                limit: self.max_bytes,
            });
        }
        let mut sealed = None;
        if size > self.room() {
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
            return Ok(self.seal().or(sealed));
        }
        Ok(sealed)
    }

    /// Adds a closed incident group: it rides the open batch, acked and spooled with it.
    /// Returns a sealed batch when the group did not fit in the open one; refuses a group
    /// that no batch can hold.
    pub fn push_group(&mut self, group: &pb::SemanticGroup) -> Result<Option<Sealed>, TooLarge> {
        let len = group.encoded_len();
        let size = 1 + encoded_len_varint(len as u64) + len;
        if self.head_room + size > self.max_bytes {
            return Err(TooLarge {
                bytes: size,
                limit: self.max_bytes,
            });
        }
        let sealed = if size > self.room() {
            self.seal()
        } else {
            None
        };
        if self.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        self.current.reserve(size);
        encode_key(GROUPS_FIELD, WireType::LengthDelimited, &mut self.current);
        encode_varint(len as u64, &mut self.current);
        group.encode_raw(&mut self.current);
        self.current_groups += 1;
        Ok(sealed)
    }

    /// Adds an already encoded event or group field (`field` 4 or 5) of a batch being
    /// split.
    fn push_raw(&mut self, field: u32, value: &[u8]) -> Option<Sealed> {
        let size = 1 + encoded_len_varint(value.len() as u64) + value.len();
        let sealed = if size > self.room() {
            self.seal()
        } else {
            None
        };
        self.current.reserve(size);
        encode_key(field, WireType::LengthDelimited, &mut self.current);
        encode_varint(value.len() as u64, &mut self.current);
        self.current.extend_from_slice(value);
        if field == EVENTS_FIELD {
            self.current_events += 1;
        } else {
            self.current_groups += 1;
        }
        sealed
    }

    /// Splits a sealed batch into batches within the current byte limit, with fresh ids;
    /// the events and groups inside keep their bytes (and so their ids: the server dedups
    /// a resend). Returns the pieces and how many events were too large for any batch.
    pub fn split(&mut self, sealed: &Sealed) -> Result<(Vec<Sealed>, u64), Malformed> {
        let fields = batch_fields(&sealed.bytes)?;
        let mut pieces_of = Self::new(
            self.collector_id.clone(),
            usize::MAX,
            self.max_age,
            self.next_id,
        );
        pieces_of.max_bytes = self.max_bytes;
        pieces_of.sequence = self.sequence;
        let mut pieces = Vec::new();
        let mut too_large = 0;
        for (field, value) in fields {
            let size = 1 + encoded_len_varint(value.len() as u64) + value.len();
            if pieces_of.head_room + size > pieces_of.max_bytes {
                if field == EVENTS_FIELD {
                    too_large += 1;
                }
                continue;
            }
            pieces.extend(pieces_of.push_raw(field, &value));
        }
        pieces.extend(pieces_of.seal());
        self.next_id = pieces_of.next_id;
        self.sequence = pieces_of.sequence;
        Ok((pieces, too_large))
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
            spooled: None,
            origin: None,
            receipts: std::mem::take(&mut self.current_receipts),
            sent_at: None,
        })
    }
}

/// The event and group fields of an encoded `TapioStreamEventsRequest` batch, in order.
fn batch_fields(request: &Bytes) -> Result<Vec<(u32, Bytes)>, Malformed> {
    let mut outer = request.clone();
    let mut fields = Vec::new();
    while outer.has_remaining() {
        let (tag, wire_type) = decode_key(&mut outer)?;
        let value = length_delimited(&mut outer, wire_type)?;
        if tag != BATCH_FIELD {
            continue;
        }
        let mut inner = value;
        while inner.has_remaining() {
            let (tag, wire_type) = decode_key(&mut inner)?;
            if wire_type != WireType::LengthDelimited {
                prost::encoding::skip_field(
                    wire_type,
                    tag,
                    &mut inner,
                    prost::encoding::DecodeContext::default(),
                )?;
                continue;
            }
            let value = length_delimited(&mut inner, wire_type)?;
            if tag == EVENTS_FIELD || tag == GROUPS_FIELD {
                fields.push((tag, value));
            }
        }
    }
    Ok(fields)
}

fn length_delimited(buf: &mut Bytes, wire_type: WireType) -> Result<Bytes, Malformed> {
    if wire_type != WireType::LengthDelimited {
        return Err(Malformed("a batch request holds only messages".into()));
    }
    let len = usize::try_from(decode_varint(buf)?).unwrap_or(usize::MAX);
    if len > buf.remaining() {
        return Err(Malformed("a field runs past the end of the batch".into()));
    }
    Ok(buf.split_to(len))
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
        assert!(batcher.push_group(&group(1)).expect("fits").is_none());
        assert!(
            !batcher.is_empty() && batcher.deadline().is_some(),
            "a group opens a batch"
        );
        let alone = batcher.seal().expect("a batch of one group");
        assert_eq!(alone.events, 0, "groups are not counted as events");
        batcher.push(&event(1)).expect("fits");
        batcher.push_group(&group(2)).expect("fits");
        batcher.push(&event(2)).expect("fits");
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
        let sealed: Vec<Sealed> = (0..7)
            .filter_map(|n| batcher.push(&event(n)).expect("fits"))
            .collect();
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
            assert!(batcher.push(&e).expect("fits").is_none());
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
        batcher.push(&event(1)).expect("fits");
        let deadline = batcher.deadline().expect("open batch");
        assert!(deadline >= before + Duration::from_millis(250));
    }
}
