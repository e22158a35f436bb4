//! Local outputs: enriched events as JSON lines.

use std::io::{self, BufWriter, Write};

use crate::event::Event;

/// Writes each event as one JSON object per line, flushing after every batch so a reader
/// of a pipe sees events as they are processed.
#[derive(Debug)]
pub struct JsonLines<W: Write> {
    writer: BufWriter<W>,
}

impl<W: Write> JsonLines<W> {
    /// Wraps `writer`.
    pub fn new(writer: W) -> Self {
        Self {
            writer: BufWriter::with_capacity(256 * 1024, writer),
        }
    }

    /// Writes a batch and flushes it.
    pub fn write_batch(&mut self, events: &[Event]) -> io::Result<()> {
        for event in events {
            serde_json::to_writer(&mut self.writer, event)?;
            self.writer.write_all(b"\n")?;
        }
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    #[test]
    fn one_line_per_event_that_parses_back() {
        let events: Vec<Event> = (1..=3)
            .map(|n| Event::new(EventId::from_u128(n << 80), n as u64, "a.b", "t"))
            .collect();
        let mut out = JsonLines::new(Vec::new());
        out.write_batch(&events).expect("writes");
        let text = String::from_utf8(out.writer.into_inner().expect("flushed")).expect("utf-8");
        let back: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("parses"))
            .collect();
        assert_eq!(back, events);
    }
}
