//! One struct per thing that goes wrong or is dropped; `emit` both logs and counts, so no
//! drop can be counted without a log line or logged without a count.

use crate::telemetry::{DropCause, DropCounters};

/// Events that were accepted somewhere and will never reach the server.
#[derive(Debug)]
pub struct EventsDropped<'a> {
    /// The component that dropped them: a collector's name, or `bridge`.
    pub component: &'a str,
    /// Its drop counters.
    pub counters: &'a DropCounters,
    /// Why.
    pub cause: DropCause,
    /// How many.
    pub count: u64,
}

impl EventsDropped<'_> {
    /// Counts the drop; logs the first one and then at each power of two, so a sustained
    /// overload is visible without flooding the log.
    pub fn emit(self) {
        if self.count == 0 {
            return;
        }
        let total = self.counters.add(self.cause, self.count);
        let before = total - self.count;
        if before == 0 || (before.leading_zeros() != total.leading_zeros()) {
            tracing::warn!(
                component = self.component,
                cause = self.cause.as_str(),
                total,
                "Events dropped."
            );
        }
    }
}
