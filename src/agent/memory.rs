//! `--memory-limit`: the agent watches its own resident memory and, past a high
//! watermark, sheds new events by the memory policy until it is back under a low one, so
//! the kernel's OOM killer (or the container's limit) never has to step in.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::telemetry::{DropCause, Telemetry};

/// Shedding starts past this share of the limit, leaving room for what is in flight.
const HIGH: f64 = 0.75;

/// Shedding stops under this share, so it does not flap at the line.
const LOW: f64 = 0.60;

/// How often resident memory is read (a read of `/proc/self/status`).
const EVERY: Duration = Duration::from_millis(10);

/// Watches resident memory against `limit` bytes until `stop`.
pub(super) async fn watch(limit: u64, telemetry: Arc<Telemetry>, stop: CancellationToken) {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a share of a byte count"
    )]
    let (high, low) = ((limit as f64 * HIGH) as u64, (limit as f64 * LOW) as u64);
    telemetry.set_memory_limit(limit);
    let gate = telemetry.memory();
    let mut ticker = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(resident) = crate::prom::resident_bytes() else {
            continue;
        };
        if gate.shedding() {
            if resident < low {
                gate.set_shedding(false);
                tracing::info!(
                    resident_mib = resident >> 20,
                    shed = shed(&telemetry),
                    "Memory is back under the low watermark; taking new events again."
                );
            }
        } else if resident > high {
            gate.set_shedding(true);
            tracing::warn!(
                resident_mib = resident >> 20,
                limit_mib = limit >> 20,
                until_mib = low >> 20,
                policy = if gate.blocks() {
                    "block"
                } else {
                    "drop_newest"
                },
                "Memory is over the high watermark of --memory-limit; shedding new events."
            );
        }
    }
}

/// Events shed so far, over every collector.
fn shed(telemetry: &Telemetry) -> u64 {
    telemetry
        .collectors()
        .iter()
        .map(|c| c.dropped(DropCause::MemoryLimit))
        .sum()
}
