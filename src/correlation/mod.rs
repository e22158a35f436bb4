//! Correlation: resolves each event to its entities and gives it trace context; in
//! semantic mode it also joins related events into groups.

mod basic;
pub mod rules;
pub mod semantic;

pub use basic::Basic;
pub use semantic::Semantic;

use crate::config::CorrelationMode;
use crate::event::Event;

/// A correlation engine. It sees every event once, in pipeline order, and may enrich it.
pub trait Correlator: Send {
    /// Enriches `event` in place.
    fn process(&mut self, event: &mut Event);

    /// Semantic groups currently open.
    fn open_groups(&self) -> usize;

    /// Groups that closed since the last call, for export.
    fn take_closed(&mut self) -> Vec<semantic::Group> {
        Vec::new()
    }

    /// Closes every open group (the input has ended).
    fn close_all(&mut self) {}
}

/// Builds the engine for `mode`: `semantic` with the built-in rules and default limits.
#[must_use]
pub fn build(mode: CorrelationMode, node_name: &str) -> Box<dyn Correlator> {
    match mode {
        CorrelationMode::Semantic => Box::new(Semantic::new(
            node_name,
            rules::builtin(),
            semantic::Limits::default(),
        )),
        CorrelationMode::Basic => Box::new(Basic::new(node_name)),
    }
}
