//! The agent: wires collectors -> manager -> correlation -> outputs, runs until every
//! collector is done or shutdown is asked for, then drains what is in flight.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bridge::{self, Bridge, BridgeConfig};
use crate::collectors::BuildContext;
use crate::config::Config;
use crate::event::Incident;
use crate::manager::Manager;
use crate::otel::{EventExporter, Exporter};
use crate::output::JsonLines;
use crate::server::{self, ServeArgs, Server};
use crate::telemetry::Telemetry;
use crate::{config, correlation};

mod memory;
mod reload;

pub use reload::{Loader, Reload};

/// Events taken from the fan-in per pipeline step.
const BATCH: usize = 1024;

/// Why the agent could not run or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The bridge could not start.
    #[error(transparent)]
    Bridge(#[from] bridge::Error),
    /// The embedded server could not start.
    #[error("embedded server: {0}")]
    Server(#[from] server::Error),
    /// The bridge task ended while the pipeline still had events for it.
    #[error("the bridge stopped unexpectedly")]
    BridgeClosed,
    /// Events were still unacknowledged when the drain timeout ran out.
    #[error("{0} events were not acknowledged by the server before the drain timeout")]
    Undelivered(u64),
    /// Every enabled collector failed to start.
    #[error("no collector could start; see the warnings above")]
    NoCollectorStarted,
    /// Writing to stdout failed (for instance, the reader went away).
    #[error("writing events to stdout failed: {0}")]
    Output(#[source] std::io::Error),
    /// The `/healthz` and `/metrics` address could not be bound.
    #[error("orchestrator.metrics_listen {addr}: {source}")]
    MetricsListen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why it could not be bound.
        source: std::io::Error,
    },
}

/// Builds and starts every enabled collector: the manager, the pod directory they share
/// with the correlation engine, and how many started.
async fn start_collectors(
    config: &Config,
    node_name: &str,
    telemetry: &Arc<Telemetry>,
    shutdown: &CancellationToken,
) -> Result<(Manager, Arc<crate::metadata::PodDirectory>, usize), Error> {
    let mut manager = Manager::new(
        Arc::clone(telemetry),
        config.orchestrator.buffer_size,
        shutdown.clone(),
    );
    let directory = crate::metadata::PodDirectory::new();
    let mut started = 0;
    for built in config.collectors.build(&BuildContext {
        node_name: node_name.to_owned(),
        directory: Arc::clone(&directory),
    }) {
        if manager.start(built).await {
            started += 1;
        }
    }
    if started == 0 {
        return Err(Error::NoCollectorStarted);
    }
    Ok((manager, directory, started))
}

/// Replaces the log filter of [`init_logging_traced`] (a reload's `log_level`).
type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

/// Sets up logging on stderr with `filter` (a level or tracing directives).
pub fn init_logging(filter: &str) {
    init_logging_traced(filter, None);
}

/// Logging on stderr, and with `self_tracing` = (endpoint, node) the agent's own spans over
/// OTLP too. Call inside the runtime.
pub fn init_logging_traced(filter: &str, self_tracing: Option<(&str, &str)>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(Box::new(move |directives: &str| {
        let filter = tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let traced = self_tracing.and_then(|(endpoint, node)| {
        crate::otel::self_tracing_layer(endpoint, node)
            .inspect_err(|e| eprintln!("warning: the agent's own tracing is off: {e}"))
            .ok()
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(traced)
        .init();
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once.
pub fn cancel_on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        for n in 0..2 {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            if n == 0 {
                tracing::info!(
                    signal = name,
                    "Stopping collectors and draining the pipeline."
                );
                shutdown.cancel();
            } else {
                tracing::warn!(signal = name, "Second signal; exiting without draining.");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// Runs the agent until every collector has finished, or until `shutdown` is cancelled and
/// the pipeline has drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Arc<Telemetry>, Error> {
    run_reloadable(config, shutdown, None).await
}

/// [`run`], and with `reload` the configuration is read again on SIGHUP (and, with
/// `--watch-config`, when the file changes) and applied without losing an event.
pub async fn run_reloadable(
    config: Config,
    shutdown: CancellationToken,
    reload: Option<Reload>,
) -> Result<Arc<Telemetry>, Error> {
    config.validate()?;
    let node_name = config.node_name();
    let telemetry = Arc::new(Telemetry::default());
    let (manager, directory, started) =
        start_collectors(&config, &node_name, &telemetry, &shutdown).await?;
    tracing::info!(
        collectors = started,
        node = %node_name,
        correlation = %config.correlation.mode,
        ebpf_probes = env!("TAPIO_PROBES"),
        reload = reload.as_ref().map_or("off", |r| if r.watch.is_some() { "SIGHUP and file changes" } else { "SIGHUP" }),
        "Agent started."
    );

    let (stop_status, status, health) = start_reporting(&config, &telemetry).await?;
    tokio::spawn(memory::give_back(stop_status.clone()));
    if let Some(limit) = config.orchestrator.memory_limit {
        telemetry.memory().set_blocking(
            config.orchestrator.memory_policy == crate::source_sender::WhenFull::Block,
        );
        tokio::spawn(memory::watch(
            limit,
            Arc::clone(&telemetry),
            stop_status.clone(),
        ));
    }
    let (mut fan_in, swaps, finished) = manager.into_reloadable();
    let input_ending = input_ending(&shutdown, finished);
    let (bridge, embedded) = start_delivery(&config, &node_name, &telemetry, &input_ending).await?;
    let (retune_tx, mut retune_rx) = tokio::sync::mpsc::channel(4);
    if let Some(reload) = reload {
        tokio::spawn(
            reload::Reloader {
                reload,
                current: config.clone(),
                telemetry: Arc::clone(&telemetry),
                swaps,
                retunes: retune_tx,
                build: BuildContext {
                    node_name: node_name.clone(),
                    directory: Arc::clone(&directory),
                },
                shutdown: shutdown.clone(),
            }
            .run(),
        );
    }
    let mut pipeline = Pipeline {
        correlator: correlation::build_with(
            &correlation_settings(&config),
            &node_name,
            Some(directory),
        ),
        exporter: start_export(&config, &node_name, &telemetry),
        event_exporter: start_event_export(&config, &node_name, &telemetry),
        stdout: config
            .output
            .stdout
            .then(|| JsonLines::new(std::io::stdout().lock())),
        bridge,
        telemetry: Arc::clone(&telemetry),
        shutdown: shutdown.clone(),
    };
    let mut batch = Vec::with_capacity(BATCH);
    let result = loop {
        // Ends when every collector has finished (or stopped on shutdown) and its queue is
        // drained, so nothing accepted is left behind.
        let n = tokio::select! {
            n = fan_in.recv_many(&mut batch, BATCH) => n,
            Some(retune) = retune_rx.recv() => {
                pipeline.retune(&retune).await;
                continue;
            }
        };
        if n == 0 {
            break Ok(());
        }
        gather(&mut fan_in, &mut batch).await;
        if let Err(e) = pipeline.step(&mut batch, &mut fan_in).await {
            break Err(e);
        }
    };
    let report = pipeline.finish(config.otel.shutdown_timeout).await;
    stop_embedded(embedded).await;
    stop_status.cancel();
    let _ = status.await;
    if let Some(health) = health {
        let _ = health.await;
    }
    eprintln!("{}", telemetry.status_line());
    result?;
    match report {
        Some(report) if report.undelivered > 0 => Err(Error::Undelivered(report.undelivered)),
        _ => Ok(telemetry),
    }
}

/// How long a small batch waits for more events before it goes through the pipeline.
const LINGER: Duration = Duration::from_millis(5);

/// At a node's rates events come a few at a time, and taking each few through the pipeline
/// wakes it and the bridge for them: a batch still small once every queue is emptied waits
/// [`LINGER`] and takes what came meanwhile. A few milliseconds of latency, where the
/// bridge seals a batch every second at these rates anyway; at full speed batches fill
/// from the queues at once and never wait.
async fn gather(fan_in: &mut crate::manager::FanIn, batch: &mut Vec<crate::event::Event>) {
    fan_in.try_recv_many(batch, BATCH.saturating_sub(batch.len()));
    if batch.len() >= BATCH / 2 {
        return;
    }
    tokio::time::sleep(LINGER).await;
    fan_in.try_recv_many(batch, BATCH.saturating_sub(batch.len()));
}

/// The stages every batch of events goes through after the fan-in.
struct Pipeline {
    correlator: Box<dyn correlation::Correlator>,
    exporter: Option<Exporter>,
    event_exporter: Option<EventExporter>,
    stdout: Option<JsonLines<std::io::StdoutLock<'static>>>,
    bridge: Option<Bridge>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
}

impl Pipeline {
    /// Correlates `batch` and hands it to every output; the batch is left empty.
    async fn step(
        &mut self,
        batch: &mut Vec<crate::event::Event>,
        fan_in: &mut crate::manager::FanIn,
    ) -> Result<(), Error> {
        let n = batch.len();
        {
            // The agent's own trace (`otel.self_tracing`): one span per pipeline batch.
            let _span = tracing::info_span!("correlate", events = n).entered();
            for event in batch.iter_mut() {
                self.correlator.process(event);
            }
        }
        if let Some(Err(e)) = self.stdout.as_mut().map(|out| out.write_batch(batch)) {
            // Stop producing: the events already taken could not be written.
            self.shutdown.cancel();
            return Err(Error::Output(e));
        }
        if let Some(events) = &self.event_exporter {
            events.offer(batch);
        }
        self.telemetry.add_processed(n as u64);
        self.telemetry.set_correlation(
            self.correlator.open_groups() as u64,
            self.correlator.index_entries() as u64,
        );
        let closed = take_closed(self.correlator.as_mut(), self.exporter.as_ref());
        if let Some(bridge) = &self.bridge {
            let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
            if bridge.send(full).await.is_err() || bridge.send_groups(&closed).await.is_err() {
                self.shutdown.cancel();
                count_stranded(fan_in, bridge).await;
                return Err(Error::BridgeClosed);
            }
        } else {
            // Written to the only output there is (or to none): nothing more to wait for.
            crate::delivery::confirm_all(batch.drain(..).filter_map(|mut e| e.receipt.take()));
        }
        Ok(())
    }

    /// The input has ended: closes the open groups, drains delivery and both exports;
    /// returns delivery's report.
    async fn finish(self, export_timeout: Duration) -> Option<bridge::Report> {
        let Self {
            mut correlator,
            exporter,
            event_exporter,
            bridge,
            telemetry,
            ..
        } = self;
        let export_done = close_groups(
            correlator.as_mut(),
            (exporter, event_exporter),
            bridge.as_ref(),
            &telemetry,
            export_timeout,
        )
        .await;
        let report = match bridge {
            Some(bridge) => Some(bridge.finish().await),
            None => None,
        };
        for done in export_done {
            let _ = done.await;
        }
        crate::otel::finish_self_tracing(export_timeout).await;
        report
    }

    /// Takes a reload's live correlation and delivery settings.
    async fn retune(&mut self, retune: &reload::Retune) {
        self.correlator.reconfigure(&retune.correlation);
        if let Some(bridge) = &self.bridge {
            let _ = bridge.tune(retune.tuning).await;
        }
    }
}

type Task = tokio::task::JoinHandle<()>;

/// Starts the status line and, when asked for, `/healthz`, `/readyz` and `/metrics`; both
/// run until the returned token is cancelled.
async fn start_reporting(
    config: &Config,
    telemetry: &Arc<Telemetry>,
) -> Result<(CancellationToken, Task, Option<Task>), Error> {
    let stop = CancellationToken::new();
    let health = match config.orchestrator.metrics_listen {
        Some(addr) => Some(
            crate::health::serve(addr, Arc::clone(telemetry), stop.clone())
                .await
                .map_err(|source| Error::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    let status = tokio::spawn(
        Arc::clone(telemetry).report_every(config.orchestrator.status_interval, stop.clone()),
    );
    Ok((stop, status, health))
}

/// The bridge task is gone (a bug): with the collectors stopping, counts what is still on
/// its way through the pipeline rather than leave it uncounted.
async fn count_stranded(fan_in: &mut crate::manager::FanIn, bridge: &Bridge) {
    let mut batch = Vec::with_capacity(BATCH);
    while fan_in.recv_many(&mut batch, BATCH).await > 0 {
        bridge.count_lost(batch.len() as u64);
        batch.clear();
    }
}

/// The OTLP exporter, unless `otel.endpoint` is `none`; one that cannot be built is logged
/// and the agent runs without it.
fn start_export(config: &Config, node: &str, telemetry: &Telemetry) -> Option<Exporter> {
    if config.otel.endpoint.eq_ignore_ascii_case("none") {
        return None;
    }
    match Exporter::start(
        &config.otel.endpoint,
        node,
        "tapio-collector",
        telemetry.register_exporter(),
    ) {
        Ok(exporter) => Some(exporter),
        Err(error) => {
            tracing::error!(error = %error, "Incident traces will not be exported.");
            None
        }
    }
}

/// The export of events as OTLP log records, when `otel.export_events` asks for it and
/// there is an endpoint.
fn start_event_export(config: &Config, node: &str, telemetry: &Telemetry) -> Option<EventExporter> {
    if !config.otel.export_events || config.otel.endpoint.eq_ignore_ascii_case("none") {
        return None;
    }
    match EventExporter::start(
        &config.otel.endpoint,
        node,
        telemetry.register_event_exporter(),
    ) {
        Ok(exporter) => Some(exporter),
        Err(error) => {
            tracing::error!(error = %error, "Events will not be exported as OTLP logs.");
            None
        }
    }
}

/// The input has ended: closes every open group, sends them to the server and the trace
/// exporter, and starts both exporters' last flush.
async fn close_groups(
    correlator: &mut dyn correlation::Correlator,
    (exporter, events): (Option<Exporter>, Option<EventExporter>),
    bridge: Option<&Bridge>,
    telemetry: &Telemetry,
    export_timeout: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    correlator.close_all();
    let closed = take_closed(correlator, exporter.as_ref());
    if let Some(bridge) = bridge
        && bridge.send_groups(&closed).await.is_err()
    {
        tracing::warn!("The bridge closed before the last incident groups could be sent.");
    }
    telemetry.set_correlation(0, correlator.index_entries() as u64);
    let traces = exporter.map(|e| tokio::spawn(e.finish(export_timeout)));
    let logs = events.map(|e| tokio::spawn(e.finish(export_timeout)));
    traces.into_iter().chain(logs).collect()
}

/// Stops the embedded server, if there is one, and logs how it ended.
async fn stop_embedded(
    embedded: Option<(
        CancellationToken,
        tokio::task::JoinHandle<Result<(), crate::server::Error>>,
    )>,
) {
    if let Some((stop, task)) = embedded {
        stop.cancel();
        if let Ok(Err(e)) = task.await {
            tracing::error!(error = %e, "Embedded server failed.");
        }
    }
}

/// Takes the incidents closed since the last call and hands each to the exporter, if any.
fn take_closed(
    correlator: &mut dyn correlation::Correlator,
    exporter: Option<&Exporter>,
) -> Vec<Incident> {
    let closed = correlator.take_closed();
    if let Some(exporter) = exporter {
        for incident in &closed {
            exporter.offer(incident);
        }
    }
    closed
}

/// The `correlation:` settings with the defaults that depend on the collectors filled in.
fn correlation_settings(config: &Config) -> correlation::CorrelationConfig {
    let mut correlation = config.correlation.clone();
    correlation.app_spans = config.collectors.otel.as_ref().is_some_and(|e| e.enabled);
    // A report can arrive up to an interval after what it saw, and be compared with an
    // effect seen up to another interval early: twice the longest, at least the default.
    correlation.late_window.get_or_insert_with(|| {
        (config.collectors.longest_interval() * 2).max(correlation::late_window_default())
    });
    correlation
}

/// Cancelled once no new input can come: on shutdown, or when every collector has ended (a
/// finite run). The bridge then stops holding the pipeline back and its drain timeout
/// applies.
fn input_ending(shutdown: &CancellationToken, finished: CancellationToken) -> CancellationToken {
    let ending = CancellationToken::new();
    let (done, shutdown) = (ending.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = finished.cancelled() => {},
        }
        done.cancel();
    });
    ending
}

type Embedded = (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), server::Error>>,
);

/// Starts the bridge (and the embedded server it talks to, if asked for).
async fn start_delivery(
    config: &Config,
    node_name: &str,
    telemetry: &Telemetry,
    input_ending: &CancellationToken,
) -> Result<(Option<Bridge>, Option<Embedded>), Error> {
    let s = &config.server;
    if s.delivery_disabled() {
        return Ok((None, None));
    }
    let mut embedded = None;
    let nats = (s.transport == crate::bridge::Transport::Nats).then(|| config.nats.clone());
    let address = if let Some(nats) = &nats {
        nats.url.clone()
    } else if s.embedded() {
        let args = ServeArgs {
            listen: "127.0.0.1:0".into(),
            data_dir: s.data_dir.clone(),
            ..ServeArgs::default()
        };
        let server = Server::bind(&args).await?;
        let addr = server.local_addr().map_err(|source| server::Error::Bind {
            addr: args.listen.clone(),
            source,
        })?;
        tracing::info!(%addr, data_dir = %s.data_dir.display(), "Embedded server started.");
        let stop = CancellationToken::new();
        embedded = Some((stop.clone(), tokio::spawn(server.serve(stop))));
        addr.to_string()
    } else {
        s.address.clone()
    };
    let bridge = Bridge::spawn(
        BridgeConfig::from_settings(s, address, node_name.to_owned(), nats)?,
        telemetry.register_bridge(),
        input_ending.clone(),
    )
    .await?;
    Ok((Some(bridge), embedded))
}
