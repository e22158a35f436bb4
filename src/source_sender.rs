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

/// Creates a queue of `capacity` events for one collector.
#[must_use]
pub fn queue(
    capacity: usize,
    when_full: WhenFull,
    stats: Arc<CollectorStats>,
) -> (EventSender, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(capacity);
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
