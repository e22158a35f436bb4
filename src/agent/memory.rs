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

/// How often resident memory is read (a read of `/proc/self/status`) once it is past half
/// the limit, where a flood can reach the high watermark within a few tens of ms.
const NEAR: Duration = Duration::from_millis(10);

/// How often it is read below half the limit: an agent at rest wakes ten times a second,
/// not a hundred.
const FAR: Duration = Duration::from_millis(100);

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
    let mut wait = NEAR;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let Some(resident) = crate::prom::resident_bytes() else {
            continue;
        };
        wait = if resident < limit / 2 { FAR } else { NEAR };
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

/// How often freed memory is handed back to the kernel; first once the start is over.
const GIVE_BACK_FIRST: Duration = Duration::from_secs(10);
const GIVE_BACK_EVERY: Duration = Duration::from_secs(30);
/// The parsed kernel BTF (about 22 MiB) is dropped at a hand-back once no collector has
/// attached with it for this long.
const BTF_IDLE: Duration = Duration::from_secs(5);

/// Hands the allocator's freed memory back to the kernel now and then, until `stop`, and
/// first drops the kernel BTF the collectors parsed to attach once they are done with it.
/// mimalloc keeps what was freed for reuse, so the megabytes the start takes once (each
/// probe object's load parses the kernel's BTF) would otherwise stay resident for good.
pub(super) async fn give_back(stop: CancellationToken) {
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + GIVE_BACK_FIRST,
        GIVE_BACK_EVERY,
    );
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if crate::collectors::ebpf::release_idle_btf(BTF_IDLE) {
            tracing::debug!("Dropped the parsed kernel BTF: the collectors have attached.");
        }
        #[allow(unsafe_code, reason = "mimalloc's C interface")]
        // SAFETY: mi_collect takes no pointer; it only walks the allocator's own free lists,
        // and is a no-op for heaps the process does not use.
        unsafe {
            libmimalloc_sys::mi_collect(true);
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
