//! The handle every collector sends its events through: a bounded queue into the pipeline
//! with an explicit policy for when it is full, whose drops are counted. A leaf of its own
//! (Vector's `source_sender`), so collectors and the manager do not import each other.

use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::event::Event;
use crate::internal_events::EventsDropped;
use crate::telemetry::{CollectorStats, DropCause};

/// What a collector's sender does when its queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: back-pressure reaches the producer, nothing is dropped.
    #[default]
    Block,
    /// Drop the event being sent and count it as `queue_full`.
    DropNewest,
}

/// How often a collector held back by the `block` memory policy looks again.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The pipeline is gone; the collector should stop.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the pipeline is closed")]
pub struct Closed;

/// A collector's handle into the pipeline.
#[derive(Debug)]
pub struct EventSender {
    tx: mpsc::Sender<Event>,
    when_full: WhenFull,
    stats: Arc<CollectorStats>,
    check_shapes: bool,
}

impl EventSender {
    /// Checks every event against docs/event-types.md (`event::schema`) in debug builds,
    /// so a collector that drifts from its documented shapes fails the test suite.
    #[must_use]
    pub fn checking_shapes(mut self) -> Self {
        self.check_shapes = true;
        self
    }

    /// Sends one event under this collector's full-queue policy.
    ///
    /// # Panics
    /// In debug builds, when shapes are checked and `event` is unlike its documented shape.
    pub async fn send(&self, event: Event) -> Result<(), Closed> {
        #[cfg(debug_assertions)]
        if self.check_shapes
            && let Err(mismatch) = crate::event::schema::check(&event)
        {
            panic!(
                "the {} collector sent an event unlike docs/event-types.md: {mismatch}",
                self.stats.name()
            );
        }
        let memory = self.stats.memory();
        while memory.shedding() {
            if !memory.blocks() {
                EventsDropped {
                    component: self.stats.name(),
                    counters: self.stats.drop_counters(),
                    cause: DropCause::MemoryLimit,
                    count: 1,
                }
                .emit();
                return Ok(());
            }
            // The `block` memory policy: hold the collector until memory is back under.
            if self.tx.is_closed() {
                return Err(Closed);
            }
            tokio::time::sleep(MEMORY_WAIT).await;
        }
        match self.when_full {
            WhenFull::Block => self.tx.send(event).await.map_err(|_| Closed)?,
            WhenFull::DropNewest => match self.tx.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    EventsDropped {
                        component: self.stats.name(),
                        counters: self.stats.drop_counters(),
                        cause: DropCause::QueueFull,
                        count: 1,
                    }
                    .emit();
                    return Ok(());
                }
                Err(TrySendError::Closed(_)) => return Err(Closed),
            },
        }
        self.stats.add_accepted(1);
        Ok(())
    }
}

/// What [`EventSender::send_all`] could not do.
#[derive(Debug, thiserror::Error)]
pub enum SendAllError {
    /// The queue had no room for the first of them within the wait: none was accepted,
    /// and the producer gets them back to answer with back-pressure.
    #[error("the queue is full")]
    Full(Vec<Event>),
    /// The pipeline is gone.
    #[error(transparent)]
    Closed(#[from] Closed),
}

impl EventSender {
    /// Sends `events` as one unit for a producer that can answer back-pressure (an OTLP
    /// request): under `block`, room for the first queue's worth is waited for at most
    /// `wait`, and when it does not come none is accepted ([`SendAllError::Full`]); once
    /// some are in, the rest wait for room, so a request is never half accepted. Under
    /// `drop_newest`, what does not fit is dropped and counted as `queue_full`; returns how
    /// many were dropped. While memory is over `--memory-limit`'s high watermark nothing
    /// is accepted ([`SendAllError::Full`]).
    ///
    /// # Panics
    /// In debug builds, when shapes are checked and an event is unlike its documented shape.
    pub async fn send_all(
        &self,
        mut events: Vec<Event>,
        wait: std::time::Duration,
    ) -> Result<u64, SendAllError> {
        #[cfg(debug_assertions)]
        if self.check_shapes {
            for event in &events {
                if let Err(mismatch) = crate::event::schema::check(event) {
                    panic!(
                        "the {} collector sent an event unlike docs/event-types.md: {mismatch}",
                        self.stats.name()
                    );
                }
            }
        }
        let total = events.len();
        if total == 0 {
            return Ok(0);
        }
        if self.stats.memory().shedding() {
            // Over the memory ceiling a request is refused whole, under either policy, as
            // the OpenTelemetry Collector's memory limiter does: its sender is told to retry
            // later, and nothing of it was taken.
            return Err(SendAllError::Full(events));
        }
        if self.when_full == WhenFull::DropNewest {
            // As many as fit, in order; the rest are dropped and counted.
            let mut sent = 0;
            for event in events {
                match self.tx.try_send(event) {
                    Ok(()) => sent += 1,
                    Err(TrySendError::Full(_)) => break,
                    Err(TrySendError::Closed(_)) => return Err(Closed.into()),
                }
            }
            self.stats.add_accepted(sent as u64);
            let dropped = (total - sent) as u64;
            EventsDropped {
                component: self.stats.name(),
                counters: self.stats.drop_counters(),
                cause: DropCause::QueueFull,
                count: dropped,
            }
            .emit();
            return Ok(dropped);
        }
        let chunk = self.tx.max_capacity().min(total);
        let first = match tokio::time::timeout(wait, self.tx.reserve_many(chunk)).await {
            Ok(Ok(permits)) => permits,
            Ok(Err(_)) => return Err(Closed.into()),
            Err(_) => return Err(SendAllError::Full(events)),
        };
        let mut rest = events.split_off(chunk);
        for (permit, event) in first.zip(events) {
            permit.send(event);
        }
        self.stats.add_accepted(chunk as u64);
        while !rest.is_empty() {
            let next = rest.split_off(self.tx.max_capacity().min(rest.len()));
            let n = rest.len();
            let permits = self.tx.reserve_many(n).await.map_err(|_| Closed)?;
            for (permit, event) in permits.zip(rest) {
                permit.send(event);
            }
            self.stats.add_accepted(n as u64);
            rest = next;
        }
        Ok(0)
    }
}

/// Creates a queue of `capacity` events for one collector.
#[must_use]
pub fn queue(
    capacity: usize,
    when_full: WhenFull,
    stats: Arc<CollectorStats>,
) -> (EventSender, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(capacity);
    // A weak handle, so the probe never keeps the queue open once the collector is done.
    let weak = tx.downgrade();
    stats.set_queue_depth(move || {
        weak.upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    });
    (
        EventSender {
            tx,
            when_full,
            stats,
            check_shapes: false,
        },
        rx,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::EventId;

    fn event(n: u128) -> Event {
        Event::new(EventId::from_u128(n), 1, "process.exec", "t")
    }

    fn shedding(when_full: WhenFull, block: bool) -> (EventSender, mpsc::Receiver<Event>) {
        let stats = Arc::new(CollectorStats::new("t"));
        stats.memory().set_blocking(block);
        stats.memory().set_shedding(true);
        queue(8, when_full, stats)
    }

    #[tokio::test]
    async fn over_the_memory_ceiling_a_new_event_is_dropped_and_counted_as_memory_limit() {
        let (sender, mut rx) = shedding(WhenFull::Block, false);
        sender.send(event(1)).await.expect("sent");
        assert!(rx.try_recv().is_err(), "nothing queued");
        assert_eq!(sender.stats.dropped(DropCause::MemoryLimit), 1);
        sender.stats.memory().set_shedding(false);
        sender.send(event(2)).await.expect("sent");
        assert_eq!(rx.try_recv().map(|e| e.id), Ok(EventId::from_u128(2)));
        assert_eq!(sender.stats.dropped(DropCause::MemoryLimit), 1);
    }

    #[tokio::test]
    async fn under_the_block_memory_policy_a_new_event_waits_for_memory_and_is_kept() {
        let (sender, mut rx) = shedding(WhenFull::DropNewest, true);
        let stats = Arc::clone(&sender.stats);
        let send = tokio::spawn(async move { sender.send(event(1)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!send.is_finished(), "held while memory is over");
        stats.memory().set_shedding(false);
        send.await.expect("joins").expect("sent");
        assert_eq!(rx.recv().await.map(|e| e.id), Some(EventId::from_u128(1)));
        assert_eq!(stats.dropped(DropCause::MemoryLimit), 0);
    }

    #[tokio::test]
    async fn over_the_memory_ceiling_a_whole_request_is_refused_and_handed_back() {
        let (sender, mut rx) = shedding(WhenFull::DropNewest, false);
        let Err(SendAllError::Full(back)) = sender
            .send_all(vec![event(1), event(2)], Duration::ZERO)
            .await
        else {
            panic!("refused");
        };
        assert_eq!(back.len(), 2);
        assert!(rx.try_recv().is_err(), "nothing queued");
    }
}
