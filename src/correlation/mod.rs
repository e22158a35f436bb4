//! Correlation: resolves each event to its entities and gives it trace context; in
//! semantic mode it also joins related events into groups.

mod basic;

pub use basic::Basic;

use crate::config::CorrelationMode;
use crate::event::Event;

/// A correlation engine. It sees every event once, in pipeline order, and may enrich it.
pub trait Correlator: Send {
    /// Enriches `event` in place.
    fn process(&mut self, event: &mut Event);

    /// Semantic groups currently open.
    fn open_groups(&self) -> usize;
}

/// Builds the engine for `mode`.
///
/// Semantic grouping is not in this build yet: `semantic` runs the basic engine and says
/// so once at start, so a default run still enriches every event.
#[must_use]
pub fn build(mode: CorrelationMode, node_name: &str) -> Box<dyn Correlator> {
    if mode == CorrelationMode::Semantic {
        tracing::warn!(
            "Semantic grouping is not in this build; correlating in basic mode (entities and trace ids)."
        );
    }
    Box::new(Basic::new(node_name))
}
