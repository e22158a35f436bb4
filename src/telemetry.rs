//! The agent's own accounting: per-collector health and counts, drops by cause, and the
//! status line. Every drop anywhere goes through [`crate::internal_events`] into here.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::prom::{Exposition, Histogram, Kind, LATENCY_BUCKETS};

/// Why events were dropped. Each cause is counted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// A collector's queue into the pipeline was full and its policy is drop-newest.
    QueueFull,
    /// The server refused a batch as invalid; resending it would not help.
    Rejected,
    /// Still unacknowledged when the drain timeout ran out, with nowhere to keep them.
    Undelivered,
    /// The spool was at its cap and its policy is drop-newest (or the agent was stopping).
    SpoolFull,
    /// Writing to the spool failed (disk error).
    SpoolError,
    /// A kernel probe's ring buffer was full: the record was lost in the kernel.
    RingBufferFull,
    /// Input that could not be read (a corrupt or truncated journal file, a replayed line
    /// that is not an event).
    Unreadable,
    /// Spooled batches found damaged on disk (flipped bytes, a truncated or missing
    /// segment): counted in events, from the spool's own numbering.
    SpoolCorrupt,
    /// An event larger than any batch the server or the spool takes.
    TooLarge,
    /// A task of the agent failed (a bug): what it held when it did.
    Internal,
    /// A container's creation or exit that another collector had already reported
    /// (`cri-ebpf`, `cri`, `kubeapi`): one exit is one event.
    Duplicate,
    /// A span or log record the `otel` collector's keep policy passed over: a span that
    /// is neither an error nor slow and fell outside `sample_ratio`, a log record under
    /// `min_severity`.
    SampledOut,
    /// New events shed while the agent's memory was over `--memory-limit`'s high
    /// watermark, under the `drop_newest` memory policy.
    MemoryLimit,
}

impl DropCause {
    /// Every cause, in reporting order.
    pub const ALL: [Self; 13] = [
        Self::QueueFull,
        Self::Rejected,
        Self::Undelivered,
        Self::SpoolFull,
        Self::SpoolError,
        Self::RingBufferFull,
        Self::Unreadable,
        Self::SpoolCorrupt,
        Self::TooLarge,
        Self::Internal,
        Self::Duplicate,
        Self::SampledOut,
        Self::MemoryLimit,
    ];

    /// The label used in logs, the status line and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Rejected => "rejected",
            Self::Undelivered => "undelivered",
            Self::SpoolFull => "spool_full",
            Self::SpoolError => "spool_error",
            Self::RingBufferFull => "ring_buffer_full",
            Self::Unreadable => "unreadable",
            Self::SpoolCorrupt => "spool_corrupt",
            Self::TooLarge => "too_large",
            Self::Internal => "internal_error",
            Self::Duplicate => "duplicate",
            Self::SampledOut => "sampled_out",
            Self::MemoryLimit => "memory_limit",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::QueueFull => 0,
            Self::Rejected => 1,
            Self::Undelivered => 2,
            Self::SpoolFull => 3,
            Self::SpoolError => 4,
            Self::RingBufferFull => 5,
            Self::Unreadable => 6,
            Self::SpoolCorrupt => 7,
            Self::TooLarge => 8,
            Self::Internal => 9,
            Self::Duplicate => 10,
            Self::SampledOut => 11,
            Self::MemoryLimit => 12,
        }
    }
}

/// Drop counters of one component, by cause.
#[derive(Debug, Default)]
pub struct DropCounters([AtomicU64; DropCause::ALL.len()]);

impl DropCounters {
    /// Events dropped for `cause`.
    #[must_use]
    pub fn get(&self, cause: DropCause) -> u64 {
        self.0[cause.index()].load(Ordering::Relaxed)
    }

    /// Adds to a counter and returns the new total.
    pub(crate) fn add(&self, cause: DropCause, count: u64) -> u64 {
        self.0[cause.index()].fetch_add(count, Ordering::Relaxed) + count
    }

    fn total(&self) -> u64 {
        DropCause::ALL.iter().map(|&c| self.get(c)).sum()
    }

    fn describe(&self, component: &str, out: &mut String) {
        for cause in DropCause::ALL {
            let n = self.get(cause);
            if n > 0 {
                let _ = write!(out, " {component}/{}={n}", cause.as_str());
            }
        }
    }
}

/// Delivery counters of the bridge to the Tapio server.
#[derive(Debug)]
pub struct BridgeStats {
    /// Events the server acknowledged as stored (new or already known).
    pub delivered: AtomicU64,
    /// Batches acknowledged.
    pub batches: AtomicU64,
    /// Events accepted by the bridge and not yet acknowledged.
    pub pending: AtomicU64,
    /// Events in the spool not yet acked; `u64::MAX` when there is no spool.
    pub spooled: AtomicU64,
    /// Events dropped by cause.
    pub dropped: DropCounters,
    /// A stream to the server (or a session with JetStream) is open.
    pub connected: AtomicBool,
    /// Sealed batches wait for room in the spool: it is at its cap or its disk is full.
    pub spool_full: AtomicBool,
    /// Bytes the spool holds on disk (0 without a spool).
    pub spool_bytes: AtomicU64,
    /// Segment files of the spool.
    pub spool_segments: AtomicU64,
    /// Streams (or sessions) opened after the first: each one follows a lost connection.
    pub reconnects: AtomicU64,
    /// From a batch's send to its acknowledgement.
    pub ack_latency: Histogram,
}

impl BridgeStats {
    /// Whether delivery can go on: connected, or spooling within its cap; else why not.
    pub fn ready(&self) -> Result<&'static str, &'static str> {
        let spooling = self.spooled.load(Ordering::Relaxed) != u64::MAX;
        if self.connected.load(Ordering::Relaxed) {
            Ok("connected to the server")
        } else if !spooling {
            Err("not connected to the server, and there is no spool to keep batches")
        } else if self.spool_full.load(Ordering::Relaxed) {
            Err("not connected to the server, and the spool is full")
        } else {
            Ok("not connected to the server; spooling within the cap")
        }
    }
}

/// What the exporter did.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the endpoint accepted.
    pub exported: AtomicU64,
    /// Spans dropped: the queue was full, the endpoint kept failing, or it was still
    /// being waited for when the shutdown timeout ran out.
    pub dropped: AtomicU64,
    /// Spans queued and not yet exported or dropped.
    pub pending: AtomicU64,
}

/// A collector's health as the manager and the collector itself see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Built, not yet running.
    Starting,
    /// Producing events.
    Running,
    /// Running, with a problem it reports.
    Degraded(String),
    /// Finished its finite input.
    Finished,
    /// Stopped with an error.
    Failed(String),
    /// Could not start here (platform, privileges, missing peer).
    Unavailable(String),
}

impl Health {
    /// Running or degraded: still producing.
    #[must_use]
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Running | Self::Degraded(_))
    }
}

impl Default for BridgeStats {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            spooled: AtomicU64::new(u64::MAX),
            dropped: DropCounters::default(),
            connected: AtomicBool::new(false),
            spool_full: AtomicBool::new(false),
            spool_bytes: AtomicU64::new(0),
            spool_segments: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            ack_latency: Histogram::new(LATENCY_BUCKETS),
        }
    }
}

/// Whether new events are being shed because memory is over its limit, and how.
#[derive(Debug, Default)]
pub struct MemoryGate {
    shedding: AtomicBool,
    block: AtomicBool,
}

impl MemoryGate {
    /// Memory is over the high watermark: new events are shed (or held back).
    #[must_use]
    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Starts or stops shedding.
    pub fn set_shedding(&self, on: bool) {
        self.shedding.store(on, Ordering::Relaxed);
    }

    /// Under the `block` memory policy collectors wait instead of dropping.
    #[must_use]
    pub fn blocks(&self) -> bool {
        self.block.load(Ordering::Relaxed)
    }

    /// Sets the memory policy: `true` for `block`, `false` for `drop_newest`.
    pub fn set_blocking(&self, block: bool) {
        self.block.store(block, Ordering::Relaxed);
    }
}

/// Reads how many events wait in a collector's queue.
type DepthProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// Counters and health of one collector.
pub struct CollectorStats {
    name: &'static str,
    health: Mutex<Health>,
    accepted: AtomicU64,
    dropped: DropCounters,
    queue_depth: Mutex<Option<DepthProbe>>,
    memory: Arc<MemoryGate>,
}

impl std::fmt::Debug for CollectorStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorStats")
            .field("name", &self.name)
            .field("accepted", &self.accepted)
            .finish_non_exhaustive()
    }
}

impl CollectorStats {
    /// Fresh stats for a collector that is starting.
    #[must_use]
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            health: Mutex::new(Health::Starting),
            accepted: AtomicU64::new(0),
            dropped: DropCounters::default(),
            queue_depth: Mutex::new(None),
            memory: Arc::default(),
        }
    }

    /// The agent's memory gate, which the collector's sender looks at per event.
    #[must_use]
    pub fn memory(&self) -> &MemoryGate {
        &self.memory
    }

    /// Tells the stats how to read the collector's queue depth (by its queue; a collector
    /// restarted by a reload gets a new one).
    pub fn set_queue_depth(&self, probe: impl Fn() -> usize + Send + Sync + 'static) {
        *self
            .queue_depth
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(probe));
    }

    /// Events waiting in the collector's queue into the pipeline.
    #[must_use]
    pub fn queue_depth(&self) -> usize {
        self.queue_depth
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, |probe| probe())
    }

    /// The collector's registry name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Current health.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the health.
    pub fn set_health(&self, health: Health) {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }

    /// Events accepted into the pipeline from this collector.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn add_accepted(&self, count: u64) {
        self.accepted.fetch_add(count, Ordering::Relaxed);
    }

    /// Events dropped for `cause`.
    #[must_use]
    pub fn dropped(&self, cause: DropCause) -> u64 {
        self.dropped.get(cause)
    }

    /// The drop counters.
    #[must_use]
    pub fn drop_counters(&self) -> &DropCounters {
        &self.dropped
    }
}

/// How the last reload of the configuration went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new configuration is in force (its generation is the current one).
    Applied,
    /// The file says what is already running; nothing changed.
    Unchanged,
    /// The new configuration was invalid; the old one keeps running.
    Refused,
}

impl ReloadOutcome {
    /// Every outcome, in reporting order.
    pub const ALL: [Self; 3] = [Self::Applied, Self::Unchanged, Self::Refused];

    /// The label used in the status line and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Refused => "refused",
        }
    }
}

/// Reload counters: the generation in force and each outcome's count.
#[derive(Debug)]
struct Reloads {
    generation: AtomicU64,
    counts: [AtomicU64; ReloadOutcome::ALL.len()],
    last: Mutex<Option<(ReloadOutcome, std::time::SystemTime)>>,
    status_interval: tokio::sync::watch::Sender<Option<Duration>>,
}

impl Default for Reloads {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(1),
            counts: Default::default(),
            last: Mutex::new(None),
            status_interval: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// The whole agent's counters.
#[derive(Debug, Default)]
pub struct Telemetry {
    collectors: Mutex<Vec<Arc<CollectorStats>>>,
    processed: AtomicU64,
    open_groups: AtomicU64,
    index_entries: AtomicU64,
    reloads: Reloads,
    memory: Arc<MemoryGate>,
    memory_limit: AtomicU64,
    bridge: Mutex<Option<Arc<BridgeStats>>>,
    exporter: Mutex<Option<Arc<ExportStats>>>,
    event_exporter: Mutex<Option<Arc<ExportStats>>>,
}

impl Telemetry {
    /// Registers a collector and returns its stats; one started again (a reload) keeps
    /// its counters, so totals and drops by cause stay whole across restarts.
    pub fn register(&self, name: &'static str) -> Arc<CollectorStats> {
        let mut collectors = self
            .collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = collectors.iter().find(|c| c.name == name) {
            known.set_health(Health::Starting);
            return Arc::clone(known);
        }
        let mut stats = CollectorStats::new(name);
        stats.memory = Arc::clone(&self.memory);
        let stats = Arc::new(stats);
        collectors.push(Arc::clone(&stats));
        stats
    }

    /// The memory gate every collector's sender shares.
    #[must_use]
    pub fn memory(&self) -> &MemoryGate {
        &self.memory
    }

    /// Records `--memory-limit`, for `/metrics`.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
    }

    /// Every registered collector's stats.
    #[must_use]
    pub fn collectors(&self) -> Vec<Arc<CollectorStats>> {
        self.collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Registers the bridge and returns its stats.
    pub fn register_bridge(&self) -> Arc<BridgeStats> {
        let stats = Arc::new(BridgeStats::default());
        *self.bridge.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&stats));
        stats
    }

    /// Registers the export of events as OTLP log records and returns its stats.
    pub fn register_event_exporter(&self) -> Arc<ExportStats> {
        let stats = Arc::new(ExportStats::default());
        *self
            .event_exporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&stats));
        stats
    }

    /// Registers the OTLP exporter and returns its stats.
    pub fn register_exporter(&self) -> Arc<ExportStats> {
        let stats = Arc::new(ExportStats::default());
        *self.exporter.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&stats));
        stats
    }

    /// The bridge's stats, when delivery is on.
    #[must_use]
    pub fn bridge(&self) -> Option<Arc<BridgeStats>> {
        self.bridge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Counts events that went through correlation to the outputs.
    pub fn add_processed(&self, count: u64) {
        self.processed.fetch_add(count, Ordering::Relaxed);
    }

    /// Events that went through correlation to the outputs since start.
    #[must_use]
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Records a reload's outcome; an applied one starts the next config generation.
    pub fn record_reload(&self, outcome: ReloadOutcome) {
        if outcome == ReloadOutcome::Applied {
            self.reloads.generation.fetch_add(1, Ordering::Relaxed);
        }
        let i = ReloadOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.reloads.counts[i].fetch_add(1, Ordering::Relaxed);
        *self
            .reloads
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((outcome, std::time::SystemTime::now()));
    }

    /// The configuration generation in force: 1 at start, one more per applied reload.
    #[must_use]
    pub fn config_generation(&self) -> u64 {
        self.reloads.generation.load(Ordering::Relaxed)
    }

    /// The last reload's outcome, if there was one.
    #[must_use]
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.reloads
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|(o, _)| o)
    }

    /// Changes how often the status line is printed (a reload may).
    pub fn set_status_interval(&self, interval: Duration) {
        self.reloads.status_interval.send_replace(Some(interval));
    }

    /// Records how many correlation groups are open and how many entries the entity
    /// index holds.
    pub fn set_correlation(&self, open_groups: u64, index_entries: u64) {
        self.open_groups.store(open_groups, Ordering::Relaxed);
        self.index_entries.store(index_entries, Ordering::Relaxed);
    }

    /// The status line: `Status: events=N active_collectors=N correlation_groups=N dropped=N`,
    /// then, with delivery on, `delivered=N pending=N`, then the drops by component and cause
    /// when there are any.
    #[must_use]
    pub fn status_line(&self) -> String {
        let collectors = self.collectors();
        let bridge = self.bridge();
        let active = collectors.iter().filter(|c| c.health().is_active()).count();
        let mut by_cause = String::new();
        let mut dropped = 0;
        for stats in &collectors {
            dropped += stats.dropped.total();
            stats.dropped.describe(stats.name(), &mut by_cause);
        }
        if let Some(bridge) = &bridge {
            dropped += bridge.dropped.total();
            bridge.dropped.describe("bridge", &mut by_cause);
        }
        let mut line = format!(
            "Status: events={} active_collectors={active} correlation_groups={} dropped={dropped}",
            self.processed(),
            self.open_groups.load(Ordering::Relaxed),
        );
        if let Some(bridge) = &bridge {
            let _ = write!(
                line,
                " delivered={} pending={}",
                bridge.delivered.load(Ordering::Relaxed),
                bridge.pending.load(Ordering::Relaxed)
            );
            let spooled = bridge.spooled.load(Ordering::Relaxed);
            if spooled != u64::MAX {
                let _ = write!(line, " spooled={spooled}");
            }
        }
        if let Some(exporter) = self
            .exporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = write!(
                line,
                " spans_exported={} spans_dropped={}",
                exporter.exported.load(Ordering::Relaxed),
                exporter.dropped.load(Ordering::Relaxed)
            );
        }
        if let Some(exporter) = self
            .event_exporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            let _ = write!(
                line,
                " logs_exported={} logs_dropped={}",
                exporter.exported.load(Ordering::Relaxed),
                exporter.dropped.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            line,
            " config_generation={} last_reload={}",
            self.config_generation(),
            self.last_reload().map_or("none", ReloadOutcome::as_str)
        );
        if !by_cause.is_empty() {
            line.push_str(" dropped_by_cause:");
            line.push_str(&by_cause);
        }
        line
    }

    /// The counters in Prometheus text format, for `/metrics`.
    #[must_use]
    pub fn prometheus(&self) -> String {
        let mut page = Exposition::default();
        crate::prom::process(&mut page);
        page.single(
            "tapio_events_processed_total",
            Kind::Counter,
            "Events through the correlation engine.",
            self.processed(),
        );
        page.single(
            "tapio_correlation_open_groups",
            Kind::Gauge,
            "Incident groups open in the correlation engine.",
            self.open_groups.load(Ordering::Relaxed),
        );
        page.single(
            "tapio_correlation_index_entries",
            Kind::Gauge,
            "Containers, processes and pods the correlation engine's entity index holds.",
            self.index_entries.load(Ordering::Relaxed),
        );
        self.collector_metrics(&mut page);
        self.reload_metrics(&mut page);
        let limit = self.memory_limit.load(Ordering::Relaxed);
        if limit > 0 {
            page.single(
                "tapio_memory_limit_bytes",
                Kind::Gauge,
                "--memory-limit: past its high watermark new events are shed.",
                limit,
            );
            page.single(
                "tapio_memory_shedding",
                Kind::Gauge,
                "1 while memory is over the high watermark and new events are shed.",
                u64::from(self.memory.shedding()),
            );
        }
        let bridge = self.bridge();
        if let Some(bridge) = &bridge {
            bridge_metrics(bridge, &mut page);
        }
        let name = "tapio_events_dropped_total";
        page.family(
            name,
            Kind::Counter,
            "Events dropped, by component and cause.",
        );
        for c in self.collectors() {
            for cause in DropCause::ALL {
                let labels = [("component", c.name()), ("cause", cause.as_str())];
                page.sample(name, &labels, c.dropped(cause));
            }
        }
        if let Some(bridge) = &bridge {
            for cause in DropCause::ALL {
                let labels = [("component", "bridge"), ("cause", cause.as_str())];
                page.sample(name, &labels, bridge.dropped.get(cause));
            }
        }
        for (what, stats) in [
            ("spans", Self::registered(&self.exporter)),
            ("logs", Self::registered(&self.event_exporter)),
        ] {
            // Zero when that export is off, so dashboards and alerts see the series.
            export_metrics(what, &stats.unwrap_or_default(), &mut page);
        }
        page.finish()
    }

    fn reload_metrics(&self, page: &mut Exposition) {
        page.single(
            "tapio_config_generation",
            Kind::Gauge,
            "The configuration in force: 1 at start, one more per applied reload.",
            self.config_generation(),
        );
        let name = "tapio_config_reloads_total";
        page.family(
            name,
            Kind::Counter,
            "Reloads (SIGHUP or a changed file with --watch-config), by outcome.",
        );
        for (outcome, count) in ReloadOutcome::ALL.iter().zip(&self.reloads.counts) {
            page.sample(
                name,
                &[("outcome", outcome.as_str())],
                count.load(Ordering::Relaxed),
            );
        }
        let last = *self
            .reloads
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        page.single(
            "tapio_config_last_reload_successful",
            Kind::Gauge,
            "0 when the last reload was refused (the previous configuration runs), else 1.",
            u64::from(last.is_none_or(|(o, _)| o != ReloadOutcome::Refused)),
        );
        if let Some((_, at)) = last {
            page.single(
                "tapio_config_last_reload_timestamp_seconds",
                Kind::Gauge,
                "When the last reload was tried, in seconds since the Unix epoch.",
                at.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        }
    }

    fn registered(slot: &Mutex<Option<Arc<ExportStats>>>) -> Option<Arc<ExportStats>> {
        slot.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn collector_metrics(&self, page: &mut Exposition) {
        let collectors = self.collectors();
        let mut per = |name: &str, kind: Kind, help: &str, f: &dyn Fn(&CollectorStats) -> u64| {
            page.family(name, kind, help);
            for c in &collectors {
                page.sample(name, &[("collector", c.name())], f(c));
            }
        };
        per(
            "tapio_collector_events_accepted_total",
            Kind::Counter,
            "Events a collector handed to the pipeline.",
            &|c| c.accepted(),
        );
        per(
            "tapio_collector_up",
            Kind::Gauge,
            "1 while the collector runs (degraded included), else 0.",
            &|c| u64::from(c.health().is_active()),
        );
        per(
            "tapio_collector_queue_depth",
            Kind::Gauge,
            "Events waiting in the collector's queue into the pipeline.",
            &|c| c.queue_depth() as u64,
        );
        per(
            "tapio_ebpf_records_lost_total",
            Kind::Counter,
            "Records a kernel probe's ring buffer had no room for (0 for collectors without probes).",
            &|c| c.dropped(DropCause::RingBufferFull),
        );
    }
    /// Prints the status line on stderr every `interval` until `stop` is cancelled.
    pub async fn report_every(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut intervals = self.reloads.status_interval.subscribe();
        let mut ticker = status_ticker(interval).await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => eprintln!("{}", self.status_line()),
                Ok(()) = intervals.changed() => {
                    let new = *intervals.borrow_and_update();
                    if let Some(interval) = new {
                        ticker = status_ticker(interval).await;
                    }
                }
            }
        }
    }
}

/// A ticker whose first tick is due one `interval` from now.
async fn status_ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate.
    ticker.tick().await;
    ticker
}

fn bridge_metrics(bridge: &BridgeStats, page: &mut Exposition) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    page.single(
        "tapio_events_delivered_total",
        Kind::Counter,
        "Events the server acknowledged.",
        load(&bridge.delivered),
    );
    page.single(
        "tapio_batches_delivered_total",
        Kind::Counter,
        "Batches the server acknowledged.",
        load(&bridge.batches),
    );
    page.single(
        "tapio_events_pending",
        Kind::Gauge,
        "Events accepted and not yet acknowledged.",
        load(&bridge.pending),
    );
    page.single(
        "tapio_bridge_connected",
        Kind::Gauge,
        "1 while a stream to the server (or a JetStream session) is open.",
        u64::from(bridge.connected.load(Ordering::Relaxed)),
    );
    page.single(
        "tapio_bridge_reconnects_total",
        Kind::Counter,
        "Streams to the server opened again after one was lost.",
        load(&bridge.reconnects),
    );
    let name = "tapio_batch_ack_latency_seconds";
    page.family(
        name,
        Kind::Histogram,
        "From sending a batch to the server's acknowledgement of it.",
    )
    .histogram(name, &[], &bridge.ack_latency);
    let spooled = load(&bridge.spooled);
    if spooled != u64::MAX {
        page.single(
            "tapio_spool_events",
            Kind::Gauge,
            "Events in the spool not yet acknowledged.",
            spooled,
        );
        page.single(
            "tapio_spool_bytes",
            Kind::Gauge,
            "Bytes the spool holds on disk.",
            load(&bridge.spool_bytes),
        );
        page.single(
            "tapio_spool_segments",
            Kind::Gauge,
            "Segment files of the spool.",
            load(&bridge.spool_segments),
        );
    }
}

/// `what` is `spans` (incident traces) or `logs` (events as OTLP log records).
fn export_metrics(what: &str, stats: &ExportStats, page: &mut Exposition) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (suffix, kind, help, value) in [
        (
            "exported_total",
            Kind::Counter,
            "accepted by the OTLP endpoint.",
            load(&stats.exported),
        ),
        (
            "export_dropped_total",
            Kind::Counter,
            "dropped: the export queue was full, the endpoint kept failing, or the shutdown timeout ran out.",
            load(&stats.dropped),
        ),
        (
            "export_pending",
            Kind::Gauge,
            "queued for export.",
            load(&stats.pending),
        ),
    ] {
        let name = format!("tapio_otel_{what}_{suffix}");
        let noun = if what == "spans" {
            "Incident spans"
        } else {
            "Event log records"
        };
        page.single(&name, kind, &format!("{noun} {help}"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_active_collectors_and_drops_by_cause() {
        let telemetry = Telemetry::default();
        let a = telemetry.register("a");
        let b = telemetry.register("b");
        a.set_health(Health::Running);
        b.set_health(Health::Finished);
        telemetry.add_processed(42);
        a.dropped.add(DropCause::QueueFull, 3);
        assert_eq!(
            telemetry.status_line(),
            "Status: events=42 active_collectors=1 correlation_groups=0 dropped=3 \
             config_generation=1 last_reload=none dropped_by_cause: a/queue_full=3"
        );
    }
}
