//! Basic correlation: the node entity and W3C trace context on every event, no groups.

use std::sync::Arc;

use super::Correlator;
use crate::event::{Event, SpanId, TraceId};

/// Fills the node name and trace context; keeps any context the event already carries, so
/// an event from an instrumented application stays in that application's trace.
#[derive(Debug)]
pub struct Basic {
    node: Arc<str>,
}

impl Basic {
    /// An engine that stamps `node` on events that lack one.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self { node: node.into() }
    }
}

impl Correlator for Basic {
    fn process(&mut self, event: &mut Event) {
        if event.entities.node.is_empty() {
            event.entities.node = Arc::clone(&self.node);
        }
        let id = event.id.as_u128();
        if event.trace_id.is_none() {
            // Without a group each event is its own trace; its id is already unique and
            // non-zero (the millisecond part is), so it serves as the trace id.
            event.trace_id = TraceId::new(id.to_be_bytes());
        }
        if event.span_id.is_none() {
            event.span_id = SpanId::new(span_bits(id).to_be_bytes());
        }
    }

    fn open_groups(&self) -> usize {
        0
    }
}

/// A well-mixed, non-zero 64-bit span id derived from the event id (`SplitMix64` finaliser).
pub(crate) fn span_bits(id: u128) -> u64 {
    let mut z = (id as u64) ^ ((id >> 64) as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, IdGenerator};

    #[test]
    fn fills_node_and_trace_context() {
        let mut engine = Basic::new("node-a");
        let mut ids = IdGenerator::new();
        let mut a = Event::new(ids.next_id(), 1, "x.y", "t");
        let mut b = Event::new(ids.next_id(), 1, "x.y", "t");
        engine.process(&mut a);
        engine.process(&mut b);
        assert_eq!(&*a.entities.node, "node-a");
        assert!(a.trace_id.is_some() && a.span_id.is_some());
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
        assert_eq!(engine.open_groups(), 0);
    }

    #[test]
    fn keeps_what_the_event_already_has() {
        let mut engine = Basic::new("node-a");
        let mut event = Event::new(EventId::from_u128(9 << 80), 1, "x.y", "t");
        event.entities.node = "other".into();
        event.trace_id = TraceId::new([7; 16]);
        event.parent_span_id = SpanId::new([5; 8]);
        engine.process(&mut event);
        assert_eq!(&*event.entities.node, "other");
        assert_eq!(event.trace_id, TraceId::new([7; 16]));
        assert_eq!(event.parent_span_id, SpanId::new([5; 8]));
        assert!(event.span_id.is_some(), "its own span is added");
    }
}
