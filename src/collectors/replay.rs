//! `replay`: events read back from a JSON-lines file (or stdin) in the format `--stdout`
//! writes, fed through the pipeline again: to reproduce an incident, try a new causal rule
//! on recorded events, or load a server with a real traffic shape.
//!
//! By default each event gets a fresh id (a replay into the same store is not deduplicated
//! away) and loses its recorded correlation (trace, span, group), which the engine
//! recomputes. Bad lines are skipped, counted, and named by line number.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, BufReader};

use crate::collectors::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, IdGenerator};
use crate::telemetry::DropCause;

/// Registry name.
pub const NAME: &str = "replay";

/// Bad lines named one by one in the log; past this, only counted.
const NAMED: u64 = 20;

/// A line longer than this is not an event (the server takes at most 16 MiB per batch).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// How fast events are replayed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// As fast as the pipeline takes them.
    Max,
    /// The recorded gaps between events, divided by this factor (1: real time).
    Times(f64),
}

impl<'de> Deserialize<'de> for Speed {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(t) if t == "max" => Ok(Self::Max),
            Raw::Text(t) if t == "realtime" => Ok(Self::Times(1.0)),
            Raw::Number(n) => Ok(Self::Times(n)),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "`max`, `realtime` or a number (times real time), got `{t}`"
            ))),
        }
    }
}

/// Options of the `replay` collector.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// A JSON-lines file, or `-` for stdin.
    pub path: PathBuf,
    /// `max`, `realtime`, or a number: that many times real time.
    pub speed: Speed,
    /// Keep the recorded event ids (a replay into the same store is then deduplicated).
    pub keep_ids: bool,
    /// Keep the recorded trace, span and group fields instead of recomputing them.
    pub keep_correlation: bool,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("-"),
            speed: Speed::Max,
            keep_ids: false,
            keep_correlation: false,
        }
    }
}

impl ReplayConfig {
    /// Appends every problem to `problems`, each naming its field under `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if self.path.as_os_str() != "-" && !self.path.is_file() {
            problems.push(format!(
                "{prefix}.path: `{}` is not a file (`-` reads stdin)",
                self.path.display()
            ));
        }
        if let Speed::Times(n) = self.speed
            && !(n > 0.0 && n.is_finite())
        {
            problems.push(format!("{prefix}.speed: a number must be above 0, got {n}"));
        }
    }
}

impl CollectorConfig for ReplayConfig {
    const NAME: &'static str = NAME;
    // Replayed events are whatever the file holds; the corpus tests check theirs.
    const DOCUMENTED: bool = false;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, _: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let config = self;
            let input: Box<dyn AsyncRead + Send + Unpin> = if config.path.as_os_str() == "-" {
                Box::new(tokio::io::stdin())
            } else {
                let file = std::fs::File::open(&config.path)
                    .map_err(|e| Error::unavailable_by(config.path.display().to_string(), e))?;
                Box::new(tokio::fs::File::from_std(file))
            };
            Ok::<Running, Error>(Box::pin(run(config, input, context)))
        })
    }
}

/// Why a line is not an event, or `None` when it is one.
fn check(event: &Event) -> Option<String> {
    let kind = event.kind.as_ref();
    let well_formed = kind.contains('.')
        && !kind.starts_with('.')
        && !kind.ends_with('.')
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !well_formed {
        return Some(format!("unknown event type `{kind}`"));
    }
    // The store keeps times as signed 64-bit nanoseconds: up to the year 2262.
    (i64::try_from(event.timestamp).is_err()).then(|| {
        format!(
            "timestamp_unix_nano {} is past the year 2262 (at most {})",
            event.timestamp,
            i64::MAX
        )
    })
}

/// What reading one line found.
enum Line {
    /// A whole line (without its newline) is in the buffer.
    Read,
    /// The line was longer than [`MAX_LINE`]; it was skipped to its end.
    TooLong,
    /// The input ended.
    End,
}

/// Reads one line as bytes, whatever they are: a line that is not UTF-8 is the caller's
/// to refuse, not a reason to stop reading.
async fn next_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> std::io::Result<Line> {
    line.clear();
    let mut any = false;
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Line::End,
                (true, true) => Line::TooLong,
                (true, false) => Line::Read,
            });
        }
        any = true;
        let (chunk, used, ended) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], at + 1, true),
            None => (available, available.len(), false),
        };
        if line.len() + chunk.len() > MAX_LINE {
            too_long = true;
            line.clear();
        } else if !too_long {
            line.extend_from_slice(chunk);
        }
        reader.consume(used);
        if ended {
            return Ok(if too_long { Line::TooLong } else { Line::Read });
        }
    }
}

async fn run(
    config: ReplayConfig,
    input: Box<dyn AsyncRead + Send + Unpin>,
    context: Context,
) -> Result<(), Error> {
    let mut reader = BufReader::with_capacity(256 * 1024, input);
    let mut line = Vec::new();
    let mut ids = IdGenerator::new();
    let mut number = 0u64;
    let mut bad: Vec<u64> = Vec::new();
    // (recorded time of the first event, when it was sent) for paced replays.
    let mut origin: Option<(u64, tokio::time::Instant)> = None;
    loop {
        let read = tokio::select! {
            () = context.shutdown.cancelled() => break,
            read = next_line(&mut reader, &mut line) => read,
        };
        let parsed = match read {
            Ok(Line::End) => break,
            Ok(Line::TooLong) => Err(format!("longer than {MAX_LINE} bytes")),
            Ok(Line::Read) => Ok(&line),
            Err(e) => {
                // The input itself failed (not a bad line): say where, and stop as failed.
                tracing::error!(line = number + 1, error = %e, "replay: cannot read the input; stopping here.");
                return Err(Error::unavailable_by(
                    format!("{}: read failed after line {number}", config.path.display()),
                    e,
                ));
            }
        };
        number += 1;
        if parsed
            .as_ref()
            .is_ok_and(|l| l.iter().all(u8::is_ascii_whitespace))
        {
            continue;
        }
        let parsed = parsed
            .and_then(|l| std::str::from_utf8(l).map_err(|e| format!("not UTF-8: {e}")))
            .and_then(|l| serde_json::from_str::<Event>(l).map_err(|e| e.to_string()))
            .and_then(|event| match check(&event) {
                Some(problem) => Err(problem),
                None => Ok(event),
            });
        let mut event = match parsed {
            Ok(event) => event,
            Err(problem) => {
                if (bad.len() as u64) < NAMED {
                    tracing::warn!(line = number, %problem, "replay: skipping a line that is not an event.");
                }
                bad.push(number);
                context.dropped(DropCause::Unreadable, 1);
                continue;
            }
        };
        if let Speed::Times(factor) = config.speed {
            let (first, started) =
                *origin.get_or_insert((event.timestamp, tokio::time::Instant::now()));
            let offset = event.timestamp.saturating_sub(first);
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "gaps in nanoseconds, far below 2^52, scaled by a positive factor"
            )]
            let due = started + Duration::from_nanos((offset as f64 / factor) as u64);
            tokio::select! {
                () = context.shutdown.cancelled() => break,
                () = tokio::time::sleep_until(due) => {}
            }
        }
        if !config.keep_ids {
            event.id = ids.next_id();
        }
        if !config.keep_correlation {
            event.trace_id = None;
            event.span_id = None;
            event.parent_span_id = None;
            event.correlation = None;
        }
        context.out.send(event).await?;
    }
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(100).map(u64::to_string).collect();
        tracing::warn!(
            bad_lines = bad.len(),
            lines = %shown.join(","),
            "replay: finished; these lines were not events and were skipped."
        );
        context.degraded(format!("{} bad lines", bad.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse_by_name_and_number() {
        let parse = |yaml: &str| serde_norway::from_str::<ReplayConfig>(yaml);
        assert_eq!(parse("speed: max").expect("valid").speed, Speed::Max);
        assert_eq!(
            parse("speed: realtime").expect("valid").speed,
            Speed::Times(1.0)
        );
        assert_eq!(parse("speed: 4").expect("valid").speed, Speed::Times(4.0));
        assert!(parse("speed: warp").is_err());
    }
}
