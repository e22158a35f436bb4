//! Collector manager: starts collectors, gives each its own bounded queue with an explicit
//! policy for when it is full, and fans the queues into one stream for correlation. On a
//! config reload it stops the collectors whose section changed and starts their new
//! versions, while the old queues drain into the pipeline.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::collectors::{self, Context};
use crate::event::Event;
use crate::source_sender::queue;

use crate::telemetry::{CollectorStats, Health, Telemetry};

/// Longest a collector's setup may take before it counts as unable to start.
const BUILD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest a collector asked to stop for a reload may take to return.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One started collector: the token that stops it, and the one cancelled once it ended.
#[derive(Debug)]
struct Slot {
    name: &'static str,
    stop: CancellationToken,
    done: CancellationToken,
}

/// Starts collectors and owns their queues until the pipeline takes them.
#[derive(Debug)]
pub struct Manager {
    telemetry: Arc<Telemetry>,
    capacity: usize,
    shutdown: CancellationToken,
    receivers: Vec<mpsc::Receiver<Event>>,
    slots: Vec<Slot>,
    ended: mpsc::UnboundedSender<&'static str>,
    ended_rx: mpsc::UnboundedReceiver<&'static str>,
}

/// A reload's change to the running collectors.
pub struct Swap {
    /// Collectors to stop: changed or removed. Their queued events still reach the
    /// pipeline.
    pub stop: Vec<&'static str>,
    /// Collectors to start: the new versions of the changed ones, and the added ones.
    pub start: Vec<collectors::Built>,
    /// Queue capacity of the collectors started from now on.
    pub capacity: usize,
    /// Gets, once the swap is done, each collector that could not start, with why.
    pub done: oneshot::Sender<Vec<String>>,
}

impl std::fmt::Debug for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swap")
            .field("stop", &self.stop)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager whose queues hold `capacity` events each.
    #[must_use]
    pub fn new(telemetry: Arc<Telemetry>, capacity: usize, shutdown: CancellationToken) -> Self {
        let (ended, ended_rx) = mpsc::unbounded_channel();
        Self {
            telemetry,
            capacity,
            shutdown,
            receivers: Vec::new(),
            slots: Vec::new(),
            ended,
            ended_rx,
        }
    }

    /// Builds and starts one collector: its failing setup (probes, bus, kubeconfig) runs
    /// here, so a collector that cannot start is logged, recorded as unavailable and not
    /// counted, and the others run. Returns whether it started.
    pub async fn start(&mut self, built: collectors::Built) -> bool {
        self.try_start(built).await.is_ok()
    }

    /// [`Self::start`], with why it could not.
    async fn try_start(&mut self, built: collectors::Built) -> Result<(), String> {
        let stats = self.telemetry.register(built.name);
        let (mut sender, receiver) = queue(self.capacity, built.when_full, Arc::clone(&stats));
        if built.documented {
            sender = sender.checking_shapes();
        }
        let stop = self.shutdown.child_token();
        let context = Context {
            out: sender,
            shutdown: stop.clone(),
            stats: Arc::clone(&stats),
        };
        let building = tokio::time::timeout(BUILD_TIMEOUT, (built.start)(context)).await;
        let error = match building {
            Ok(Ok(running)) => {
                stats.set_health(Health::Running);
                self.receivers.push(receiver);
                let done = CancellationToken::new();
                self.slots.push(Slot {
                    name: built.name,
                    stop,
                    done: done.clone(),
                });
                let ended = self.ended.clone();
                tokio::spawn(async move {
                    supervise(built.name, running, stats).await;
                    done.cancel();
                    let _ = ended.send(built.name);
                });
                return Ok(());
            }
            Ok(Err(error)) => crate::tls::error_chain(&error),
            Err(_) => format!("unavailable: did not start within {BUILD_TIMEOUT:?}"),
        };
        tracing::warn!(collector = built.name, %error, "Collector could not start; the others run.");
        stats.set_health(Health::Unavailable(error.clone()));
        Err(format!("{}: {error}", built.name))
    }

    /// A token cancelled once every started collector has ended (finished, failed or
    /// stopped): from then on no new event will enter the pipeline.
    pub fn all_finished(&mut self) -> CancellationToken {
        let token = CancellationToken::new();
        let done: Vec<CancellationToken> = self.slots.iter().map(|s| s.done.clone()).collect();
        let finished = token.clone();
        tokio::spawn(async move {
            for slot in done {
                slot.cancelled().await;
            }
            finished.cancel();
        });
        token
    }

    /// Hands the queues to the pipeline.
    #[must_use]
    pub fn into_fan_in(self) -> FanIn {
        FanIn {
            receivers: self.receivers,
            incoming: None,
            next: 0,
        }
    }

    /// Hands the queues to the pipeline and keeps supervising: each [`Swap`] sent on the
    /// returned channel stops and starts collectors, whose new queues join the fan-in.
    /// The returned token is cancelled once no collector runs any more (and none is being
    /// swapped): the input has ended.
    #[must_use]
    pub fn into_reloadable(mut self) -> (FanIn, mpsc::Sender<Swap>, CancellationToken) {
        let (queues, incoming) = mpsc::unbounded_channel();
        let fan_in = FanIn {
            receivers: std::mem::take(&mut self.receivers),
            incoming: Some(incoming),
            next: 0,
        };
        let (swaps, mut swaps_rx) = mpsc::channel::<Swap>(4);
        let finished = CancellationToken::new();
        let ended = finished.clone();
        tokio::spawn(async move {
            while self.slots.iter().any(|s| !s.done.is_cancelled()) {
                tokio::select! {
                    Some(swap) = swaps_rx.recv() => {
                        let failed = self.swap(swap.stop, swap.start, swap.capacity).await;
                        for receiver in self.receivers.drain(..) {
                            let _ = queues.send(receiver);
                        }
                        let _ = swap.done.send(failed);
                    }
                    _ = self.ended_rx.recv() => {}
                }
            }
            // Dropping `queues` tells the fan-in that no queue will join any more.
            ended.cancel();
        });
        (fan_in, swaps, finished)
    }

    /// Stops `stop` (waiting for each to return, while its queue drains into the
    /// pipeline), then starts `start`; returns the collectors that could not start.
    async fn swap(
        &mut self,
        stop: Vec<&'static str>,
        start: Vec<collectors::Built>,
        capacity: usize,
    ) -> Vec<String> {
        for name in stop {
            for slot in self.slots.iter().filter(|s| s.name == name) {
                slot.stop.cancel();
                if tokio::time::timeout(STOP_TIMEOUT, slot.done.cancelled())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        collector = name,
                        "Collector did not stop within {STOP_TIMEOUT:?} for the reload; starting its new version anyway."
                    );
                }
            }
        }
        self.slots.retain(|s| !s.done.is_cancelled());
        self.capacity = capacity;
        let mut failed = Vec::new();
        for built in start {
            if self.shutdown.is_cancelled() {
                break;
            }
            if let Err(why) = self.try_start(built).await {
                failed.push(why);
            }
        }
        failed
    }
}

/// Runs a collector to completion and records how it ended, including a panic.
async fn supervise(name: &'static str, running: collectors::Running, stats: Arc<CollectorStats>) {
    match tokio::spawn(running).await {
        Ok(Ok(())) => {
            tracing::info!(
                collector = name,
                events = stats.accepted(),
                "Collector finished."
            );
            stats.set_health(Health::Finished);
        }
        Ok(Err(error)) => {
            let error = crate::tls::error_chain(&error);
            tracing::error!(collector = name, %error, "Collector failed.");
            stats.set_health(Health::Failed(error));
        }
        Err(join_error) => {
            tracing::error!(collector = name, error = %join_error, "Collector panicked.");
            stats.set_health(Health::Failed(join_error.to_string()));
        }
    }
}

/// Merges every collector's queue, taking from each in turn so one busy collector cannot
/// starve the others.
#[derive(Debug)]
pub struct FanIn {
    receivers: Vec<mpsc::Receiver<Event>>,
    /// Queues of collectors started later (a reload); `None` once none can come.
    incoming: Option<mpsc::UnboundedReceiver<mpsc::Receiver<Event>>>,
    next: usize,
}

impl FanIn {
    /// Merges the given queues.
    #[must_use]
    pub fn new(receivers: Vec<mpsc::Receiver<Event>>) -> Self {
        Self {
            receivers,
            incoming: None,
            next: 0,
        }
    }

    /// Waits for events and appends up to `limit` of them to `buffer`; returns 0 only when
    /// every queue is closed and empty, and no new one can join.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Event>, limit: usize) -> usize {
        poll_fn(|cx| {
            while let Some(incoming) = &mut self.incoming {
                match incoming.poll_recv(cx) {
                    Poll::Ready(Some(receiver)) => self.receivers.push(receiver),
                    Poll::Ready(None) => self.incoming = None,
                    Poll::Pending => break,
                }
            }
            let mut i = 0;
            while i < self.receivers.len() {
                let index = (self.next + i) % self.receivers.len();
                match self.receivers[index].poll_recv_many(cx, buffer, limit) {
                    Poll::Ready(0) => {
                        // Closed and drained: this collector is done.
                        self.receivers.swap_remove(index);
                    }
                    Poll::Ready(n) => {
                        self.next = index + 1;
                        return Poll::Ready(n);
                    }
                    Poll::Pending => i += 1,
                }
            }
            if self.receivers.is_empty() && self.incoming.is_none() {
                Poll::Ready(0)
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Appends what the queues hold right now, up to `limit` events in all, starting where
    /// [`FanIn::recv_many`] would; never waits. Queues that joined or closed meanwhile are
    /// seen by the next `recv_many`.
    pub fn try_recv_many(&mut self, buffer: &mut Vec<Event>, limit: usize) -> usize {
        let start = buffer.len();
        let queues = self.receivers.len();
        for i in 0..queues {
            let receiver = &mut self.receivers[(self.next + i) % queues];
            while buffer.len() - start < limit {
                let Ok(event) = receiver.try_recv() else {
                    break;
                };
                buffer.push(event);
            }
        }
        buffer.len() - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::{BuildContext, BuildFuture, Built, CollectorConfig};
    use crate::event::EventId;
    use crate::source_sender::WhenFull;
    use crate::telemetry::DropCause;

    fn event(n: u128) -> Event {
        Event::new(EventId::from_u128(n), 0, "test.event", "test")
    }

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Unavailable;

    impl CollectorConfig for Unavailable {
        const NAME: &'static str = "unavailable";

        fn validate(&self, _: &str, _: &mut Vec<String>) {}

        fn build(self, _: BuildContext, _: Context) -> BuildFuture {
            Box::pin(async { Err(collectors::Error::unavailable("needs CAP_BPF")) })
        }
    }

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Emits(u128);

    impl CollectorConfig for Emits {
        const NAME: &'static str = "emits";
        // Its events are test fixtures, not a real collector's shapes.
        const DOCUMENTED: bool = false;

        fn validate(&self, _: &str, _: &mut Vec<String>) {}

        fn build(self, _: BuildContext, context: Context) -> BuildFuture {
            Box::pin(async move {
                Ok::<collectors::Running, collectors::Error>(Box::pin(async move {
                    for n in 0..self.0 {
                        context.out.send(event(n)).await?;
                    }
                    Ok(())
                }))
            })
        }
    }

    #[tokio::test]
    async fn a_collector_that_cannot_start_is_recorded_and_the_others_run() {
        let telemetry = Arc::new(Telemetry::default());
        let mut manager = Manager::new(Arc::clone(&telemetry), 8, CancellationToken::new());
        let cx = BuildContext {
            node_name: "n".into(),
            directory: crate::metadata::PodDirectory::new(),
        };
        let started_bad = manager
            .start(Built::new(Unavailable, WhenFull::Block, cx.clone()))
            .await;
        let started_good = manager
            .start(Built::new(Emits(30), WhenFull::Block, cx))
            .await;
        assert!(!started_bad && started_good);
        let mut fan_in = manager.into_fan_in();
        let mut got = Vec::new();
        while fan_in.recv_many(&mut got, 100).await > 0 {}
        assert_eq!(got.len(), 30);
        let stats = telemetry.collectors();
        assert_eq!(
            stats[0].health(),
            Health::Unavailable("unavailable: needs CAP_BPF".into())
        );
        // The supervisor records the end right after the queue closes.
        for _ in 0..1000 {
            if stats[1].health() == Health::Finished {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(stats[1].health(), Health::Finished);
        assert_eq!(stats[1].accepted(), 30);
    }

    #[tokio::test]
    async fn drop_newest_counts_what_does_not_fit() {
        let stats = Arc::new(CollectorStats::new("t"));
        let (sender, mut rx) = queue(2, WhenFull::DropNewest, Arc::clone(&stats));
        for n in 0..5 {
            sender.send(event(n)).await.expect("pipeline open");
        }
        assert_eq!(stats.accepted(), 2);
        assert_eq!(stats.dropped(DropCause::QueueFull), 3);
        let mut got = Vec::new();
        rx.recv_many(&mut got, 10).await;
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn try_recv_many_takes_what_every_queue_holds_up_to_the_limit_and_never_waits() {
        let stats = Arc::new(CollectorStats::new("t"));
        let (first, a) = queue(8, WhenFull::Block, Arc::clone(&stats));
        let (second, b) = queue(8, WhenFull::Block, Arc::clone(&stats));
        let mut fan_in = FanIn::new(vec![a, b]);
        let mut got = Vec::new();
        assert_eq!(fan_in.try_recv_many(&mut got, 10), 0, "nothing there yet");
        for n in 0..3 {
            first.send(event(n)).await.expect("pipeline open");
            second.send(event(10 + n)).await.expect("pipeline open");
        }
        assert_eq!(fan_in.try_recv_many(&mut got, 4), 4);
        assert_eq!(fan_in.try_recv_many(&mut got, 10), 2, "the rest of both");
        let mut ids: Vec<_> = got.iter().map(|e| e.id).collect();
        ids.sort();
        let mut sent: Vec<_> = (0..3).chain(10..13).map(|n| event(n).id).collect();
        sent.sort();
        assert_eq!(ids, sent);
    }

    #[tokio::test]
    async fn block_waits_for_room_and_loses_nothing() {
        let stats = Arc::new(CollectorStats::new("t"));
        let (sender, rx) = queue(1, WhenFull::Block, Arc::clone(&stats));
        let producer = tokio::spawn(async move {
            for n in 0..100 {
                sender.send(event(n)).await.expect("pipeline open");
            }
        });
        let mut fan_in = FanIn::new(vec![rx]);
        let mut got = Vec::new();
        while fan_in.recv_many(&mut got, 7).await > 0 {}
        producer.await.expect("producer finished");
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].id < w[1].id), "order kept");
        assert_eq!(stats.dropped(DropCause::QueueFull), 0);
    }

    #[tokio::test]
    async fn fan_in_takes_from_every_queue_and_ends_when_all_close() {
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = queue(64, WhenFull::Block, Arc::new(CollectorStats::new("t")));
            senders.push(tx);
            receivers.push(rx);
        }
        for (i, sender) in senders.iter().enumerate() {
            for n in 0..10 {
                sender
                    .send(event((i as u128) << 64 | n))
                    .await
                    .expect("open");
            }
        }
        let mut fan_in = FanIn::new(receivers);
        let mut first = Vec::new();
        // Each call takes from the next queue in turn.
        for _ in 0..3 {
            fan_in.recv_many(&mut first, 4).await;
        }
        let sources: std::collections::BTreeSet<u128> =
            first.iter().map(|e| e.id.as_u128() >> 64).collect();
        assert_eq!(sources.len(), 3, "all three queues served first");
        drop(senders);
        let mut rest = Vec::new();
        while fan_in.recv_many(&mut rest, 100).await > 0 {}
        assert_eq!(first.len() + rest.len(), 30);
    }
}
