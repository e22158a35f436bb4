//! Config reload: SIGHUP, and with `--watch-config` a change of the file, re-read the
//! configuration. A valid one is applied without losing an event: the collectors whose
//! section changed restart while their old queues drain, the rest keep running, live
//! settings change in place and the others are named as needing a restart. An invalid one
//! is refused with every problem named, and the running configuration stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::bridge::Tuning;
use crate::collectors::BuildContext;
use crate::config::{self, Config, reload::Plan};
use crate::correlation::CorrelationConfig;
use crate::manager::Swap;
use crate::telemetry::{ReloadOutcome, Telemetry};

/// Reads the configuration again: the file, with the command line's flags over it.
pub type Loader = Box<dyn Fn() -> config::Result<Config> + Send + Sync>;

/// How a running agent takes a new configuration.
pub struct Reload {
    /// Reads the new configuration.
    pub load: Loader,
    /// With `--watch-config`: the file whose change triggers a reload.
    pub watch: Option<PathBuf>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

/// How often `--watch-config` looks at the file. Polling, not inotify: Kubernetes swaps a
/// mounted `ConfigMap` through a symlink, which a watch on the file itself misses.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What the pipeline changes in place on a reload.
#[derive(Debug)]
pub(super) struct Retune {
    /// The correlation settings (with the agent's defaults filled in).
    pub correlation: CorrelationConfig,
    /// Delivery's batching and window.
    pub tuning: Tuning,
}

/// What the reloader works with.
pub(super) struct Reloader {
    pub reload: Reload,
    pub current: Config,
    pub telemetry: Arc<Telemetry>,
    pub swaps: mpsc::Sender<Swap>,
    pub retunes: mpsc::Sender<Retune>,
    pub build: BuildContext,
    pub shutdown: CancellationToken,
}

impl Reloader {
    /// Waits for SIGHUP (or a changed file) and reloads, until shutdown.
    pub async fn run(mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGHUP; the configuration cannot be reloaded.");
                return;
            }
        };
        let watch = self.reload.watch.clone();
        let mut seen = watch.as_ref().and_then(|p| std::fs::read(p).ok());
        let mut ticker = tokio::time::interval(WATCH_EVERY);
        loop {
            let trigger = tokio::select! {
                () = self.shutdown.cancelled() => return,
                Some(()) = hangup.recv() => "SIGHUP",
                _ = ticker.tick(), if watch.is_some() => {
                    let now = watch.as_ref().and_then(|p| std::fs::read(p).ok());
                    // A file being replaced can be missing for a moment: wait for it.
                    if now.is_none() || now == seen {
                        continue;
                    }
                    seen = now;
                    "the file changed"
                }
            };
            self.reload_once(trigger).await;
        }
    }

    async fn reload_once(&mut self, trigger: &str) {
        let new = match (self.reload.load)().and_then(|c| c.validate().map(|()| c)) {
            Ok(new) => new,
            Err(error) => {
                let problems = match error {
                    config::Error::Invalid(problems) => problems,
                    other => vec![other.to_string()],
                };
                for problem in &problems {
                    tracing::error!(%problem, "Reload refused.");
                }
                self.telemetry.record_reload(ReloadOutcome::Refused);
                tracing::error!(
                    trigger,
                    problems = problems.len(),
                    generation = self.telemetry.config_generation(),
                    "Reload refused: the new configuration is invalid; the running one stays."
                );
                return;
            }
        };
        let plan = config::reload::plan(&self.current, &new);
        if plan.is_empty() {
            self.telemetry.record_reload(ReloadOutcome::Unchanged);
            tracing::info!(
                trigger,
                generation = self.telemetry.config_generation(),
                "Reload: nothing changed."
            );
            return;
        }
        let failed = self.swap_collectors(&plan, &new).await;
        self.apply_live(&plan, &new).await;
        self.telemetry.record_reload(ReloadOutcome::Applied);
        tracing::info!(
            trigger,
            generation = self.telemetry.config_generation(),
            stopped = ?plan.stop,
            started = ?plan.start,
            live = ?plan.live,
            "Reload applied."
        );
        if !plan.need_restart.is_empty() {
            tracing::warn!(settings = ?plan.need_restart, "These changed settings take effect only when the agent restarts.");
        }
        for failure in failed {
            tracing::error!(collector = %failure, "A collector of the new configuration could not start.");
        }
        self.current = new;
    }

    /// Stops and starts the collectors the plan names; returns those that could not start.
    async fn swap_collectors(&self, plan: &Plan, new: &Config) -> Vec<String> {
        if plan.stop.is_empty() && plan.start.is_empty() {
            return Vec::new();
        }
        let (done, finished) = oneshot::channel();
        let swap = Swap {
            stop: plan.stop.clone(),
            start: new.collectors.build_only(&self.build, &plan.start),
            capacity: new.orchestrator.buffer_size,
            done,
        };
        if self.swaps.send(swap).await.is_err() {
            return vec!["every collector has ended; none is started again".into()];
        }
        finished.await.unwrap_or_default()
    }

    async fn apply_live(&self, plan: &Plan, new: &Config) {
        if plan.live.contains(&"orchestrator.log_level")
            && let Some(set) = super::LOG_FILTER.get()
            && let Err(e) = set(&new.orchestrator.log_level)
        {
            tracing::error!(error = %e, "Cannot change the log level.");
        }
        if plan.live.contains(&"orchestrator.status_interval") {
            self.telemetry
                .set_status_interval(new.orchestrator.status_interval);
        }
        let retune = Retune {
            correlation: super::correlation_settings(new),
            tuning: Tuning::from_settings(&new.server),
        };
        // The pipeline is gone only when the agent is stopping.
        let _ = self.retunes.send(retune).await;
    }
}
