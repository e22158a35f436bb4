//! The agent: wires collectors -> manager -> correlation -> outputs, runs until every
//! collector is done or shutdown is asked for, then drains what is in flight.

use std::io::IsTerminal as _;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::collectors::BuildContext;
use crate::config::Config;
use crate::manager::Manager;
use crate::output::JsonLines;
use crate::telemetry::Telemetry;
use crate::{config, correlation};

/// Events taken from the fan-in per pipeline step.
const BATCH: usize = 1024;

/// Why the agent could not run or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// Delivery to a Tapio server is asked for but this build has no bridge yet.
    #[error(
        "server.address is {0:?}, but this build cannot deliver to a Tapio server yet; \
         run with --server none --stdout"
    )]
    DeliveryUnavailable(String),
    /// Every enabled collector failed to start.
    #[error("no collector could start; see the warnings above")]
    NoCollectorStarted,
    /// Writing to stdout failed (for instance, the reader went away).
    #[error("writing events to stdout failed: {0}")]
    Output(#[source] std::io::Error),
}

/// Sets up logging on stderr with `filter` (a level or tracing directives).
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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
    config.validate()?;
    if !config.server.delivery_disabled() {
        return Err(Error::DeliveryUnavailable(config.server.address.clone()));
    }
    for group in config.collectors.unserved_groups() {
        tracing::warn!(
            flag = group.flag(),
            "No collector of this group is in this build; the flag turns nothing on."
        );
    }
    let node_name = config.node_name();
    let telemetry = Arc::new(Telemetry::default());
    let mut manager = Manager::new(
        Arc::clone(&telemetry),
        config.orchestrator.buffer_size,
        shutdown.clone(),
    );
    let mut started = 0;
    for built in config.collectors.build(&BuildContext {
        node_name: node_name.clone(),
    }) {
        if manager.start(built) {
            started += 1;
        }
    }
    if started == 0 {
        return Err(Error::NoCollectorStarted);
    }
    tracing::info!(
        collectors = started,
        node = %node_name,
        correlation = %config.correlation.mode,
        "Agent started."
    );

    let stop_status = CancellationToken::new();
    let status = tokio::spawn(
        Arc::clone(&telemetry)
            .report_every(config.orchestrator.status_interval, stop_status.clone()),
    );

    let mut fan_in = manager.into_fan_in();
    let mut correlator = correlation::build(config.correlation.mode, &node_name);
    let mut stdout = config
        .output
        .stdout
        .then(|| JsonLines::new(std::io::stdout().lock()));
    let mut batch = Vec::with_capacity(BATCH);
    let result = loop {
        // Ends when every collector has finished (or stopped on shutdown) and its queue is
        // drained, so nothing accepted is left behind.
        let n = fan_in.recv_many(&mut batch, BATCH).await;
        if n == 0 {
            break Ok(());
        }
        for event in &mut batch {
            correlator.process(event);
        }
        if let Some(Err(e)) = stdout.as_mut().map(|out| out.write_batch(&batch)) {
            // Stop producing: the events already taken could not be written.
            shutdown.cancel();
            break Err(Error::Output(e));
        }
        telemetry.add_processed(n as u64);
        telemetry.set_open_groups(correlator.open_groups() as u64);
        batch.clear();
    };
    stop_status.cancel();
    let _ = status.await;
    eprintln!("{}", telemetry.status_line());
    result.map(|()| telemetry)
}
