//! End-to-end delivery receipts, for collectors that must not move their read position
//! past what the server has not stored yet (the journal's cursor).
//!
//! Such a collector opens a [`Ledger`] and puts a [`Receipt`] on each event it sends. The
//! receipt travels with the event through correlation into a batch. It is confirmed once
//! the batch is durable: acked by the server after its write, written to the on-disk
//! spool, or written by the only output there is (`--server none`). A receipt dropped
//! without confirmation (its event was lost, or still undelivered at exit) leaves a hole
//! that the ledger's watermark never passes for the rest of the run. So a position saved at the watermark is never ahead of delivery: a
//! restart re-reads from there, and the server drops what it already has by event id.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Told when the watermark moves, to save a read position.
pub trait Watcher: Send {
    /// Every receipt below `watermark` is confirmed; `issued` were handed out so far.
    /// Calls from two confirming threads can arrive out of order: keep the highest.
    fn advanced(&mut self, watermark: u64, issued: u64);

    /// The ledger is gone (every receipt confirmed or lost): the last chance to save.
    fn finish(&mut self, watermark: u64);
}

/// Sequence numbers issued and confirmed for one collector.
#[derive(Default)]
pub struct Ledger {
    state: Mutex<State>,
    watcher: Mutex<Option<Box<dyn Watcher>>>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    issued: u64,
    /// Every sequence number below this one is confirmed.
    watermark: u64,
    /// Confirmed ones above the watermark, waiting for the gap below them to close.
    ahead: BTreeSet<u64>,
    /// The lowest receipt dropped unconfirmed: the watermark stops there, and nothing
    /// above it is tracked any more (which keeps `ahead` bounded).
    hole: Option<u64>,
}

impl Ledger {
    /// A ledger with nothing issued.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A ledger that tells `watcher` whenever its watermark moves.
    #[must_use]
    pub fn watched(watcher: Box<dyn Watcher>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            watcher: Mutex::new(Some(watcher)),
        })
    }

    /// The next receipt; sequence numbers count up from 0.
    pub fn issue(self: &Arc<Self>) -> Receipt {
        let mut state = self.lock();
        let seq = state.issued;
        state.issued += 1;
        Receipt(Arc::new(Claim {
            ledger: Arc::clone(self),
            seq,
            done: AtomicBool::new(false),
        }))
    }

    /// Whether a receipt was lost: the watermark will not move again in this run.
    #[must_use]
    pub fn has_hole(&self) -> bool {
        self.lock().hole.is_some()
    }

    /// How many receipts from the first on are all confirmed.
    #[must_use]
    pub fn watermark(&self) -> u64 {
        self.lock().watermark
    }

    /// How many receipts were issued.
    #[must_use]
    pub fn issued(&self) -> u64 {
        self.lock().issued
    }

    fn confirm(&self, seq: u64) {
        let (watermark, issued) = {
            let mut state = self.lock();
            if state.hole.is_some_and(|hole| seq > hole) {
                return;
            }
            if seq != state.watermark {
                state.ahead.insert(seq);
                return;
            }
            state.watermark += 1;
            loop {
                let next = state.watermark;
                if !state.ahead.remove(&next) {
                    break;
                }
                state.watermark += 1;
            }
            (state.watermark, state.issued)
        };
        // Outside the state lock, so issuing never waits for a save.
        if let Some(watcher) = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            watcher.advanced(watermark, issued);
        }
    }

    fn lose(&self, seq: u64) {
        let mut state = self.lock();
        let hole = state.hole.map_or(seq, |hole| hole.min(seq));
        state.hole = Some(hole);
        state.ahead.retain(|&s| s < hole);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few integers updated in one step each: still whole after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let watermark = self.lock().watermark;
        if let Some(watcher) = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            watcher.finish(watermark);
        }
    }
}

/// One event's claim on its ledger. Clones (of a cloned event) share the claim: the first
/// confirmation counts, and the claim is lost only when the last clone goes unconfirmed.
#[derive(Clone)]
pub struct Receipt(Arc<Claim>);

struct Claim {
    ledger: Arc<Ledger>,
    seq: u64,
    done: AtomicBool,
}

impl Receipt {
    /// Its event is durable.
    pub fn confirm(self) {
        if !self.0.done.swap(true, Ordering::AcqRel) {
            self.0.ledger.confirm(self.0.seq);
        }
    }

    /// Its sequence number.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.0.seq
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !*self.done.get_mut() {
            self.ledger.lose(self.seq);
        }
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receipt({})", self.0.seq)
    }
}

impl PartialEq for Receipt {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Confirms every receipt in `receipts`.
pub fn confirm_all(receipts: impl IntoIterator<Item = Receipt>) {
    for receipt in receipts {
        receipt.confirm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_stops_at_the_first_unconfirmed_receipt() {
        let ledger = Ledger::new();
        let receipts: Vec<Receipt> = (0..5).map(|_| ledger.issue()).collect();
        let mut receipts = receipts.into_iter();
        let (r0, r1, r2, r3, r4) = (
            receipts.next().unwrap(),
            receipts.next().unwrap(),
            receipts.next().unwrap(),
            receipts.next().unwrap(),
            receipts.next().unwrap(),
        );
        r1.confirm();
        assert_eq!(ledger.watermark(), 0, "0 is still out");
        r0.confirm();
        assert_eq!(ledger.watermark(), 2);
        let copy = r2.clone();
        drop(r2);
        assert!(!ledger.has_hole(), "a clone still holds the claim");
        drop(copy); // lost: a hole
        assert!(ledger.has_hole());
        r3.confirm();
        r4.confirm();
        assert_eq!(ledger.watermark(), 2, "never past a lost event");
        assert_eq!(ledger.issued(), 5);
    }
}
