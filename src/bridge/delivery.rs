//! The delivery state machine: sealed batches pending (in memory or in the spool), held
//! while the spool has no room, in flight on the stream, acked, split or refused; and the
//! server's flow control. One task owns it (see `run` in the module above), so it needs
//! no locks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::connection::Outgoing;
use super::{Batcher, BridgeConfig, Origin, Sealed, Spool};
use crate::event::Event;
use crate::internal_events::EventsDropped;
use crate::pb;
use crate::source_sender::WhenFull;
use crate::telemetry::{BridgeStats, DropCause};

/// Sealed batches not on the stream yet, in send order.
#[derive(Debug)]
pub(super) enum Queue {
    /// In memory, up to `max_pending_batches`.
    Memory(VecDeque<Sealed>),
    /// Written ahead to disk (and the oldest cached in memory), with its policy at the cap.
    Spool(Spool, WhenFull),
}

/// Delivery state owned by the bridge task.
pub(super) struct Delivery {
    pub(super) config: BridgeConfig,
    pub(super) stats: Arc<BridgeStats>,
    pub(super) batcher: Batcher,
    pub(super) pending: Queue,
    /// Sealed batches the spool has no room for yet, in order; while any wait here, a
    /// `block` spool takes no more input.
    pub(super) held: VecDeque<Sealed>,
    /// When to try the spool again after a failed write.
    pub(super) spool_retry_at: Option<Instant>,
    /// Stopping: take every remaining input, even past the memory or spool cap (what is
    /// still held past the spool's at the end is dropped and counted), so the pipeline can
    /// drain and the drain timeout can start.
    pub(super) stopping: bool,
    /// On the stream, not acked yet, in send order.
    pub(super) inflight: VecDeque<Sealed>,
    /// Server flow control: paused, events per second (0 = no limit).
    pub(super) paused: bool,
    pub(super) limit_per_second: u64,
    /// No batch goes before this (rate limit, or a server's request to retry later).
    pub(super) next_send_at: Instant,
    /// Spool write failures in a row, for a log that is visible but not a flood.
    pub(super) spool_failures: u64,
}

/// How long a batch the spool could not take waits before the next try.
const SPOOL_RETRY: Duration = Duration::from_secs(1);

impl Delivery {
    pub(super) fn new(
        config: BridgeConfig,
        stats: Arc<BridgeStats>,
        pending: Queue,
        first_id: u64,
    ) -> Self {
        let mut batcher = Batcher::new(
            config.collector_id.clone(),
            config.batch_events,
            config.flush_interval,
            first_id,
        );
        if let Some(spool) = &config.spool {
            // A sealed batch always fits in an empty spool, so `block` never waits for
            // room that cannot come.
            batcher.limit_bytes(Spool::largest_batch(spool.max_bytes));
        }
        Self {
            batcher,
            config,
            stats,
            pending,
            held: VecDeque::new(),
            spool_retry_at: None,
            stopping: false,
            inflight: VecDeque::new(),
            paused: false,
            limit_per_second: 0,
            next_send_at: Instant::now(),
            spool_failures: 0,
        }
    }

    pub(super) fn has_room(&self) -> bool {
        match &self.pending {
            Queue::Memory(batches) => {
                self.stopping || batches.len() < self.config.max_pending_batches
            }
            Queue::Spool(_, WhenFull::Block) => self.stopping || self.held.is_empty(),
            Queue::Spool(_, WhenFull::DropNewest) => true,
        }
    }

    pub(super) fn nothing_pending(&self) -> bool {
        match &self.pending {
            Queue::Memory(batches) => batches.is_empty(),
            Queue::Spool(spool, _) => spool.is_drained(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.nothing_pending()
            && self.held.is_empty()
            && self.inflight.is_empty()
            && self.batcher.is_empty()
    }

    pub(super) fn push(&mut self, events: Vec<Event>) {
        self.stats
            .pending
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        for event in events {
            match self.batcher.push(&event) {
                Ok(Some(sealed)) => self.enqueue(sealed),
                Ok(None) => {}
                Err(too_large) => {
                    tracing::warn!(event_type = %event.kind, id = %event.id, error = %too_large, "Event refused: too large to deliver.");
                    self.drop_events(DropCause::TooLarge, 1);
                }
            }
        }
    }

    pub(super) fn push_groups(&mut self, groups: &[pb::SemanticGroup]) {
        for group in groups {
            match self.batcher.push_group(group) {
                Ok(Some(sealed)) => self.enqueue(sealed),
                Ok(None) => {}
                Err(too_large) => {
                    tracing::warn!(summary = %group.summary, error = %too_large, "Incident group not sent: too large for a batch.");
                }
            }
        }
    }

    pub(super) fn seal(&mut self) {
        if let Some(sealed) = self.batcher.seal() {
            self.enqueue(sealed);
        }
    }

    pub(super) fn enqueue(&mut self, sealed: Sealed) {
        match &mut self.pending {
            Queue::Memory(batches) => batches.push_back(sealed),
            Queue::Spool(..) if !self.held.is_empty() => self.held.push_back(sealed),
            Queue::Spool(..) => {
                if let Err(sealed) = self.spool(sealed) {
                    self.held.push_back(sealed);
                }
            }
        }
    }

    /// Writes a batch to the spool. Gives it back when it must wait (`block`: no room yet,
    /// or the write failed); under `drop_newest` such a batch is dropped and counted.
    pub(super) fn spool(&mut self, mut sealed: Sealed) -> Result<(), Sealed> {
        let Queue::Spool(spool, when_full) = &mut self.pending else {
            unreachable!("only called with a spool")
        };
        let when_full = *when_full;
        let outcome = if spool.has_room(sealed.bytes.len()) {
            spool.append(&mut sealed).map_err(|e| {
                self.spool_failures += 1;
                if self.spool_failures.is_power_of_two() {
                    tracing::error!(error = %e, failures = self.spool_failures, "Cannot write to the spool; holding the batch and retrying.");
                }
                if e.raw_os_error().is_some_and(is_disk_full) {
                    DropCause::SpoolFull
                } else {
                    DropCause::SpoolError
                }
            })
        } else {
            Err(DropCause::SpoolFull)
        };
        match outcome {
            Ok(()) => {
                self.spool_failures = 0;
                // On disk, it survives a restart: as good as delivered for the receipts.
                crate::delivery::confirm_all(std::mem::take(&mut sealed.receipts));
                self.update_spooled();
                Ok(())
            }
            Err(cause) if when_full == WhenFull::DropNewest => {
                self.drop_events(cause, u64::from(sealed.events));
                Ok(())
            }
            Err(cause) => {
                if cause != DropCause::SpoolFull || self.spool_failures > 0 {
                    self.spool_retry_at = Some(Instant::now() + SPOOL_RETRY);
                }
                Err(sealed)
            }
        }
    }

    /// Moves held batches into the spool while it takes them.
    pub(super) fn flush_held(&mut self) {
        self.spool_retry_at = None;
        while let Some(sealed) = self.held.pop_front() {
            if let Err(sealed) = self.spool(sealed) {
                self.held.push_front(sealed);
                break;
            }
        }
    }

    /// Periodic spool upkeep: files removed under the agent come back, held batches are
    /// retried.
    pub(super) fn tend_spool(&mut self) {
        if let Queue::Spool(spool, _) = &mut self.pending {
            match spool.check() {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        segments = n,
                        "The spool's files were removed while in use; recreated them from the open files."
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "The spool's files were removed while in use and cannot be recreated; unacked batches survive only in this process.");
                }
            }
        }
        if self.spool_retry_at.is_some_and(|at| at <= Instant::now()) {
            self.flush_held();
        }
    }

    pub(super) fn update_spooled(&self) {
        if let Queue::Spool(spool, _) = &self.pending {
            self.stats
                .spooled
                .store(spool.unacked_events(), Ordering::Relaxed);
            self.stats
                .spool_bytes
                .store(spool.bytes(), Ordering::Relaxed);
            self.stats
                .spool_segments
                .store(spool.segment_count() as u64, Ordering::Relaxed);
        }
    }

    /// The next batch to send, if any.
    pub(super) fn next_pending(&mut self) -> Option<Sealed> {
        match &mut self.pending {
            Queue::Memory(batches) => batches.pop_front(),
            Queue::Spool(spool, _) => {
                let next = spool.next_unsent().unwrap_or_else(|e| {
                    tracing::error!(error = %e, "Cannot read the spool; what is left in it waits for the next start.");
                    None
                });
                let lost = spool.take_lost();
                if lost > 0 {
                    self.drop_events(DropCause::SpoolCorrupt, lost);
                    self.update_spooled();
                }
                next
            }
        }
    }

    pub(super) fn push_front(&mut self, batch: Sealed) {
        match &mut self.pending {
            Queue::Memory(batches) => batches.push_front(batch),
            Queue::Spool(spool, _) => spool.requeue(batch),
        }
    }

    /// Puts what was on a lost stream back in front, in order, to be resent.
    pub(super) fn requeue(&mut self) {
        while let Some(batch) = self.inflight.pop_back() {
            self.push_front(batch);
        }
    }

    /// When the rate limit or a retry hold next lets a batch go, if that is what holds
    /// sending back.
    pub(super) fn rate_wait(&self) -> Option<Instant> {
        (!self.paused
            && !self.nothing_pending()
            && self.inflight.len() < self.config.window
            && Instant::now() < self.next_send_at)
            .then_some(self.next_send_at)
    }

    /// Sends pending batches while the window, flow control and rate limit allow. Returns
    /// false when the stream turned out to be closed.
    pub(super) fn pump(&mut self, outbound: &mpsc::Sender<Outgoing>) -> bool {
        while !self.paused && self.inflight.len() < self.config.window {
            let now = Instant::now();
            if now < self.next_send_at {
                break;
            }
            let Some(mut batch) = self.next_pending() else {
                break;
            };
            if batch.bytes.len() > self.batcher.max_bytes() {
                // Sealed before the server's limit was known: sent in pieces that fit.
                self.split(batch);
                continue;
            }
            let outgoing = Outgoing {
                batch_id: batch.batch_id,
                bytes: batch.bytes.clone(),
            };
            match outbound.try_send(outgoing) {
                Ok(()) => {
                    if self.limit_per_second > 0 {
                        let nanos = u128::from(batch.events) * 1_000_000_000
                            / u128::from(self.limit_per_second);
                        let cost = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
                        self.next_send_at = self.next_send_at.max(now) + cost;
                    }
                    batch.sent_at = Some(now.into_std());
                    self.inflight.push_back(batch);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.push_front(batch);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.push_front(batch);
                    return false;
                }
            }
        }
        true
    }

    /// Replaces a batch too large for the server by pieces within the limit, in its place
    /// at the front; events too large for any batch are dropped and counted.
    pub(super) fn split(&mut self, batch: Sealed) {
        let (mut pieces, too_large) = match self.batcher.split(&batch) {
            Ok(split) => split,
            Err(e) => {
                // Only bytes this collector encoded are split; this is a bug, not input.
                tracing::error!(batch_id = batch.batch_id, error = %e, "Cannot split a batch; dropping it.");
                self.drop_events(DropCause::Internal, u64::from(batch.events));
                self.settle(batch, false);
                return;
            }
        };
        tracing::info!(
            batch_id = batch.batch_id,
            bytes = batch.bytes.len(),
            limit = self.batcher.max_bytes(),
            pieces = pieces.len(),
            "Splitting a batch larger than the server takes."
        );
        if too_large > 0 {
            tracing::warn!(
                batch_id = batch.batch_id,
                events = too_large,
                limit = self.batcher.max_bytes(),
                "Events refused: each alone is larger than the server takes."
            );
            self.drop_events(DropCause::TooLarge, too_large);
        }
        if pieces.is_empty() {
            self.settle(batch, false);
            return;
        }
        let origin = match &batch.origin {
            Some(parent) => {
                parent.replace_piece(pieces.len(), too_large > 0);
                Arc::clone(parent)
            }
            None => Origin::new(pieces.len(), too_large > 0, batch.spooled, batch.receipts),
        };
        for piece in &mut pieces {
            piece.origin = Some(Arc::clone(&origin));
        }
        while let Some(piece) = pieces.pop() {
            self.push_front(piece);
        }
    }

    /// A lower message limit learnt from the server: later batches are sealed within it
    /// and larger ones already sealed are split before they go.
    pub(super) fn limit_message_bytes(&mut self, limit: usize) {
        let before = self.batcher.max_bytes();
        let now = self.batcher.limit_bytes(limit);
        if now < before {
            tracing::info!(
                limit = now,
                "Batches now stay within the server's message limit."
            );
        }
    }

    pub(super) fn on_response(&mut self, response: pb::TapioStreamEventsResponse) {
        use pb::tapio_stream_events_response::Payload;
        match response.payload {
            Some(Payload::Ack(ack)) => self.on_ack(&ack),
            Some(Payload::FlowControl(directive)) => self.on_flow_control(&directive),
            Some(Payload::Error(error)) => {
                tracing::warn!(code = error.code, batch_id = error.batch_id, message = %error.message, "Server reported an error.");
            }
            Some(Payload::SemanticGroup(_)) | None => {}
        }
    }

    pub(super) fn on_ack(&mut self, ack: &pb::Ack) {
        // An ack for a batch no longer in flight belongs to a stream already given up on.
        let Some(position) = self
            .inflight
            .iter()
            .position(|b| b.batch_id == ack.batch_id)
        else {
            return;
        };
        match ack.status() {
            pb::ack::Status::Ok => {
                let batch = self.inflight.remove(position).expect("position is valid");
                if let Some(sent) = batch.sent_at {
                    self.stats.ack_latency.observe(sent.elapsed());
                }
                let events = u64::from(batch.events);
                self.stats.delivered.fetch_add(events, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.pending.fetch_sub(events, Ordering::Relaxed);
                self.settle(batch, true);
            }
            pb::ack::Status::Rejected => {
                let batch = self.inflight.remove(position).expect("position is valid");
                tracing::error!(batch_id = batch.batch_id, reason = %ack.message, "Server rejected a batch.");
                self.drop_events(DropCause::Rejected, u64::from(batch.events));
                self.settle(batch, false);
            }
            pb::ack::Status::Retry | pb::ack::Status::Unspecified => {
                let batch = self.inflight.remove(position).expect("position is valid");
                tracing::warn!(batch_id = batch.batch_id, reason = %ack.message, "Server asked to resend a batch later.");
                self.push_front(batch);
                self.next_send_at = Instant::now() + Duration::from_secs(1);
            }
        }
    }

    /// The server is done with `batch` (`stored`, or refused for good): its receipts are
    /// confirmed or dropped, and its spool record can go, once every piece of it is done.
    pub(super) fn settle(&mut self, mut batch: Sealed, stored: bool) {
        let (spooled, receipts, stored) = match batch.origin.take() {
            None => (batch.spooled, std::mem::take(&mut batch.receipts), stored),
            Some(origin) => match origin.settle(stored) {
                Some(whole) => (whole.spooled, whole.receipts, whole.stored),
                None => return,
            },
        };
        if stored {
            crate::delivery::confirm_all(receipts);
        }
        if let (Queue::Spool(spool, _), Some(at)) = (&mut self.pending, spooled)
            && let Err(e) = spool.ack(at)
        {
            tracing::error!(error = %e, "Cannot remove acked batches from the spool.");
        }
        self.update_spooled();
        if !self.held.is_empty() {
            self.flush_held();
        }
    }

    /// Takes a reload's delivery settings: batches sealed from now on, and the window.
    pub(super) fn tune(&mut self, tuning: super::Tuning) {
        self.batcher
            .retune(tuning.batch_events, tuning.flush_interval);
        self.config.batch_events = tuning.batch_events;
        self.config.flush_interval = tuning.flush_interval;
        self.config.window = tuning.window;
        self.config.drain_timeout = tuning.drain_timeout;
        tracing::info!(?tuning, "Delivery settings changed.");
    }

    pub(super) fn on_flow_control(&mut self, directive: &pb::FlowControl) {
        match directive.action() {
            pb::flow_control::Action::Limit => {
                self.limit_per_second = directive.max_events_per_second;
                tracing::info!(
                    max_events_per_second = directive.max_events_per_second,
                    "Server set a rate limit."
                );
            }
            pb::flow_control::Action::Pause => {
                self.paused = true;
                tracing::info!("Server paused delivery.");
            }
            pb::flow_control::Action::Resume => {
                self.paused = false;
                tracing::info!("Server resumed delivery.");
            }
            pb::flow_control::Action::Unspecified => {}
        }
    }

    pub(super) fn drop_events(&self, cause: DropCause, count: u64) {
        self.stats.pending.fetch_sub(count, Ordering::Relaxed);
        EventsDropped {
            component: "bridge",
            counters: &self.stats.dropped,
            cause,
            count,
        }
        .emit();
    }

    /// The run is over: batches the spool never had room for are dropped and counted.
    pub(super) fn drop_held(&mut self) {
        let events: u64 = self.held.drain(..).map(|b| u64::from(b.events)).sum();
        if events > 0 {
            tracing::error!(
                events,
                "The spool was full when the agent stopped; these events could not be kept."
            );
            self.drop_events(DropCause::SpoolFull, events);
        }
    }
}

/// ENOSPC and EDQUOT: the disk under the spool is full, which `block` waits out.
fn is_disk_full(errno: i32) -> bool {
    errno == rustix::io::Errno::NOSPC.raw_os_error()
        || errno == rustix::io::Errno::DQUOT.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::SpoolConfig;
    use crate::event::EventId;

    fn delivery(window: usize) -> Delivery {
        let config = BridgeConfig {
            address: "127.0.0.1:1".into(),
            collector_id: "node".into(),
            batch_events: 10,
            flush_interval: Duration::from_secs(1),
            window,
            max_pending_batches: 100,
            drain_timeout: Duration::from_secs(1),
            token: None,
            spool: None,
            tls: None,
            nats: None,
        };
        Delivery::new(
            config,
            Arc::new(BridgeStats::default()),
            Queue::Memory(VecDeque::new()),
            1,
        )
    }

    fn directive(action: pb::flow_control::Action, rate: u64) -> pb::TapioStreamEventsResponse {
        pb::TapioStreamEventsResponse {
            payload: Some(pb::tapio_stream_events_response::Payload::FlowControl(
                pb::FlowControl {
                    action: action.into(),
                    max_events_per_second: rate,
                },
            )),
        }
    }

    fn ack(batch_id: u64, status: pb::ack::Status) -> pb::TapioStreamEventsResponse {
        pb::TapioStreamEventsResponse {
            payload: Some(pb::tapio_stream_events_response::Payload::Ack(pb::Ack {
                batch_id,
                status: status.into(),
                ..pb::Ack::default()
            })),
        }
    }

    fn events(n: u128) -> Vec<Event> {
        (0..n)
            .map(|i| Event::new(EventId::from_u128((i + 1) << 80), 1, "a.b", "t"))
            .collect()
    }

    #[tokio::test]
    async fn pause_resume_and_the_window_govern_what_is_sent() {
        let mut d = delivery(2);
        let (tx, mut rx) = mpsc::channel(16);
        d.push(events(40)); // four batches of ten
        d.on_response(directive(pb::flow_control::Action::Pause, 0));
        assert!(d.pump(&tx));
        assert!(rx.try_recv().is_err(), "nothing goes while paused");
        d.on_response(directive(pb::flow_control::Action::Resume, 0));
        assert!(d.pump(&tx));
        assert_eq!(d.inflight.len(), 2, "the window caps what is in flight");
        d.on_response(ack(1, pb::ack::Status::Ok));
        assert!(d.pump(&tx));
        let ids: Vec<u64> = d.inflight.iter().map(|b| b.batch_id).collect();
        assert_eq!(ids, [2, 3]);
        assert_eq!(d.stats.delivered.load(Ordering::Relaxed), 10);
        // A lost stream puts what was in flight back in front, in order.
        d.requeue();
        let Queue::Memory(pending) = &d.pending else {
            panic!("memory queue")
        };
        let order: Vec<u64> = pending.iter().map(|b| b.batch_id).collect();
        assert_eq!(order, [2, 3, 4]);
    }

    #[tokio::test]
    async fn a_rate_limit_spaces_batches_and_a_rejection_is_counted() {
        let mut d = delivery(8);
        let (tx, _rx) = mpsc::channel(16);
        d.push(events(30));
        d.on_response(directive(pb::flow_control::Action::Limit, 10));
        assert!(d.pump(&tx));
        assert_eq!(
            d.inflight.len(),
            1,
            "ten events at ten per second: one batch now"
        );
        let wait = d.rate_wait().expect("held back by the limit");
        assert!(wait >= Instant::now() + Duration::from_millis(900));
        d.on_response(ack(1, pb::ack::Status::Rejected));
        assert_eq!(d.stats.dropped.get(DropCause::Rejected), 10);
        assert!(d.inflight.is_empty());
    }

    fn spooled(dir: &std::path::Path, max_bytes: u64, when_full: WhenFull) -> Delivery {
        let mut d = delivery(4);
        d.config.spool = Some(SpoolConfig {
            dir: dir.to_owned(),
            max_bytes,
            when_full,
        });
        let (spool, _) = Spool::open(dir, max_bytes, 16).expect("opens");
        d.pending = Queue::Spool(spool, when_full);
        d.batcher.limit_bytes(Spool::largest_batch(max_bytes));
        d
    }

    /// Events with a 1 KiB message each, so batches have a size worth measuring.
    fn big_events(from: u128, n: u128) -> Vec<Event> {
        (from..from + n)
            .map(|i| {
                let mut e = Event::new(EventId::from_u128((i + 1) << 80), 1, "a.b", "t");
                e.message = "x".repeat(1024);
                e
            })
            .collect()
    }

    fn spool_of(d: &Delivery) -> &Spool {
        let Queue::Spool(spool, _) = &d.pending else {
            panic!("a spool")
        };
        spool
    }

    #[tokio::test]
    async fn a_full_spool_under_block_holds_the_input_back_and_drops_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let mut d = spooled(dir.path(), 1 << 20, WhenFull::Block);
        let mut pushed = 0;
        while d.has_room() {
            d.push(big_events(pushed, 10));
            pushed += 10;
            assert!(pushed < 10_000, "the gate never closed");
        }
        assert_eq!(
            d.stats.dropped.get(DropCause::SpoolFull),
            0,
            "block drops nothing"
        );
        assert!(!d.held.is_empty(), "the batch that did not fit waits");
        assert!(spool_of(&d).bytes() <= 1 << 20, "the cap holds");
        // The server comes back and acks what it gets: the held batch moves into the spool
        // and the gate opens again.
        let (tx, mut rx) = mpsc::channel(64);
        let mut delivered = 0;
        while !d.is_empty() {
            assert!(d.pump(&tx));
            while rx.try_recv().is_ok() {}
            let acks: Vec<u64> = d.inflight.iter().map(|b| b.batch_id).collect();
            for id in acks {
                d.on_response(ack(id, pb::ack::Status::Ok));
            }
            d.seal();
            delivered += 1;
            assert!(delivered < 10_000, "delivery stalled");
        }
        assert!(d.has_room());
        assert_eq!(d.stats.delivered.load(Ordering::Relaxed), pushed as u64);
        assert_eq!(spool_of(&d).unacked_events(), 0);
    }

    #[tokio::test]
    async fn a_full_spool_under_drop_newest_counts_what_it_drops() {
        let dir = tempfile::tempdir().expect("dir");
        let mut d = spooled(dir.path(), 1 << 20, WhenFull::DropNewest);
        d.push(big_events(0, 2000));
        d.seal();
        let dropped = d.stats.dropped.get(DropCause::SpoolFull);
        assert!(dropped > 0);
        assert_eq!(spool_of(&d).unacked_events() + dropped, 2000);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_server_takes_goes_in_pieces_and_settles_once() {
        let mut d = delivery(64);
        d.config.batch_events = 100;
        d.batcher = Batcher::new("node".into(), 100, Duration::from_secs(1), 1);
        let ledger = crate::delivery::Ledger::new();
        let mut events = big_events(0, 100);
        for e in &mut events {
            e.receipt = Some(ledger.issue());
        }
        d.push(events);
        // One batch of ~100 KiB was sealed before the server said it takes 20 KB.
        d.limit_message_bytes(20_000);
        let (tx, mut rx) = mpsc::channel(64);
        assert!(d.pump(&tx));
        let mut sizes = Vec::new();
        while let Ok(outgoing) = rx.try_recv() {
            sizes.push(outgoing.bytes.len());
        }
        assert!(sizes.len() >= 5, "{sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 20_000), "{sizes:?}");
        let pieces: Vec<u64> = d.inflight.iter().map(|b| b.batch_id).collect();
        for (n, id) in pieces.iter().enumerate() {
            assert_eq!(ledger.watermark(), 0, "receipts wait for the last piece");
            d.on_response(ack(*id, pb::ack::Status::Ok));
            assert_eq!(d.inflight.len(), pieces.len() - n - 1);
        }
        assert_eq!(
            ledger.watermark(),
            100,
            "every receipt confirmed once all pieces are"
        );
        assert_eq!(d.stats.delivered.load(Ordering::Relaxed), 100);
    }

    #[tokio::test]
    async fn an_event_larger_than_any_batch_is_refused_and_counted() {
        let mut d = delivery(4);
        d.limit_message_bytes(50_000);
        let mut events = big_events(0, 3);
        events[1].message = "y".repeat(200_000);
        d.push(events);
        d.seal();
        assert_eq!(d.stats.dropped.get(DropCause::TooLarge), 1);
        assert_eq!(d.stats.pending.load(Ordering::Relaxed), 2);
    }
}
