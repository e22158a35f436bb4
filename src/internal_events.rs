//! One struct per thing that goes wrong or is dropped; `emit` both logs and counts, so no
//! drop can be counted without a log line or logged without a count.

use crate::telemetry::{CollectorStats, DropCause};

/// Events a collector produced that never entered the pipeline.
#[derive(Debug)]
pub struct EventsDropped<'a> {
    /// The collector they came from.
    pub stats: &'a CollectorStats,
    /// Why.
    pub cause: DropCause,
    /// How many.
    pub count: u64,
}

impl EventsDropped<'_> {
    /// Counts the drop; logs the first one and then at each power of two, so a sustained
    /// overload is visible without flooding the log.
    pub fn emit(self) {
        let total = self.stats.add_dropped(self.cause, self.count);
        let before = total - self.count;
        if before == 0 || (before.leading_zeros() != total.leading_zeros()) {
            tracing::warn!(
                collector = self.stats.name(),
                cause = self.cause.as_str(),
                total,
                "Events dropped."
            );
        }
    }
}
