//! Batching: events gather until the batch is full (by count or bytes) or old enough, then
//! the batch is sealed into its wire bytes with an id and a sequence number.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
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
}

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
    current: Vec<pb::Event>,
    current_bytes: usize,
    opened_at: Option<Instant>,
}

impl Batcher {
    /// Batches of at most `max_events` events or `max_age` age; ids start at `first_id`.
    #[must_use]
    pub fn new(collector_id: String, max_events: usize, max_age: Duration, first_id: u64) -> Self {
        Self {
            collector_id,
            max_events,
            max_age,
            next_id: first_id,
            sequence: 0,
            current: Vec::with_capacity(max_events),
            current_bytes: 0,
            opened_at: None,
        }
    }

    /// Adds an event; returns a sealed batch when this one filled it.
    pub fn push(&mut self, event: Event) -> Option<Sealed> {
        let event = pb::Event::from(event);
        let size = event.encoded_len() + 8;
        let mut sealed = None;
        if !self.current.is_empty() && self.current_bytes + size > MAX_BATCH_BYTES {
            sealed = self.seal();
        }
        if self.current.is_empty() {
            self.opened_at = Some(Instant::now());
        }
        self.current_bytes += size;
        self.current.push(event);
        if self.current.len() >= self.max_events {
            // Only one of the two seals can happen per push: the size seal leaves one event.
            return self.seal().or(sealed);
        }
        sealed
    }

    /// When the open batch is due, if there is one.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|at| at + self.max_age)
    }

    /// Events in the open batch.
    #[must_use]
    pub fn open_events(&self) -> usize {
        self.current.len()
    }

    /// Seals the open batch, if it has events.
    pub fn seal(&mut self) -> Option<Sealed> {
        if self.current.is_empty() {
            return None;
        }
        let events = std::mem::replace(&mut self.current, Vec::with_capacity(self.max_events));
        let count = events.len() as u32;
        let batch_id = self.next_id;
        self.next_id += 1;
        let sequence = self.sequence;
        self.sequence += 1;
        self.current_bytes = 0;
        self.opened_at = None;
        let request = pb::TapioStreamEventsRequest {
            payload: Some(pb::tapio_stream_events_request::Payload::Batch(
                pb::EventBatch {
                    batch_id,
                    collector_id: self.collector_id.clone(),
                    sequence,
                    events,
                },
            )),
        };
        Some(Sealed {
            batch_id,
            events: count,
            bytes: Bytes::from(request.encode_to_vec()),
            segment: None,
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
    async fn seals_by_count_with_increasing_ids_and_sequences() {
        let mut batcher = Batcher::new("node".into(), 3, Duration::from_secs(1), 100);
        let sealed: Vec<Sealed> = (0..7).filter_map(|n| batcher.push(event(n))).collect();
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
    async fn deadline_is_set_by_the_first_event() {
        let mut batcher = Batcher::new("node".into(), 10, Duration::from_millis(250), 1);
        assert!(batcher.deadline().is_none());
        let before = Instant::now();
        batcher.push(event(1));
        let deadline = batcher.deadline().expect("open batch");
        assert!(deadline >= before + Duration::from_millis(250));
    }
}
