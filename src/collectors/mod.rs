//! The collector contract and the registry that maps YAML names to collectors.
//!
//! Adding a collector is one module, one field in [`CollectorsConfig`] and one line in
//! [`CollectorsConfig::build`]; serde rejects an unknown name with its line number.

pub mod cri;
pub mod ebpf;
pub mod etcd;
pub mod journald;
pub mod kubeapi;
pub mod kubelet;
pub mod replay;
pub mod synthetic;
pub mod systemd;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::source_sender::{Closed, EventSender, WhenFull};
use crate::telemetry::{CollectorStats, Health};

/// Why a collector could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The platform, a privilege or a peer it needs is missing here.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The pipeline closed under it.
    #[error(transparent)]
    Closed(#[from] Closed),
}

/// A collector's running half: the future that produces events until its input ends or
/// shutdown is requested.
pub type Running = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// A source of events.
pub trait Collector: Send {
    /// The registry name.
    fn name(&self) -> &'static str;

    /// Does the work that can fail up front (check the platform, open, attach) and returns
    /// the future that only runs, so configuration and privilege errors surface at start.
    fn start(self: Box<Self>, context: Context) -> Result<Running, Error>;
}

/// What a running collector is handed.
#[derive(Debug)]
pub struct Context {
    /// Where its events go, under its full-queue policy.
    pub out: EventSender,
    /// Cancelled when the agent stops; the collector returns soon after.
    pub shutdown: CancellationToken,
    /// Its health and counters; a collector reports degradation through it.
    pub stats: Arc<CollectorStats>,
}

impl Context {
    /// Reports a problem the collector keeps running through.
    pub fn degraded(&self, reason: impl Into<String>) {
        self.stats.set_health(Health::Degraded(reason.into()));
    }

    /// Counts and logs `count` events this collector lost to `cause`.
    pub fn dropped(&self, cause: crate::telemetry::DropCause, count: u64) {
        crate::internal_events::EventsDropped {
            component: self.stats.name(),
            counters: self.stats.drop_counters(),
            cause,
            count,
        }
        .emit();
    }
}

/// What every agent-wide input to building collectors is.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// This node's name, stamped on events.
    pub node_name: String,
    /// The node's pod metadata, which `kubeapi` fills and the correlation engine reads.
    pub directory: Arc<crate::metadata::PodDirectory>,
}

/// One collector's YAML entry: `{ enabled, when_full, config }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorEntry<T> {
    /// Whether it runs.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// What happens when its queue into the pipeline is full: `block` or `drop_newest`.
    #[serde(default)]
    pub when_full: WhenFull,
    /// Its own options.
    #[serde(default)]
    pub config: T,
}

fn enabled_by_default() -> bool {
    true
}

impl<T: Default> Default for CollectorEntry<T> {
    fn default() -> Self {
        Self {
            enabled: true,
            when_full: WhenFull::default(),
            config: T::default(),
        }
    }
}

/// Groups of collectors the `--enable-*` flags turn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// `--enable-ebpf`: kernel probes.
    Ebpf,
    /// `--enable-k8s`: API server, kubelet, runtime.
    Kubernetes,
    /// `--enable-systemd`.
    Systemd,
    /// `--enable-journald`.
    Journald,
}

/// The `collectors:` map of the YAML file: one optional entry per collector.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorsConfig {
    /// Generated load and scripted incidents, for tests, benchmarks and demos.
    pub synthetic: Option<CollectorEntry<synthetic::SyntheticConfig>>,
    /// Recorded events read back from a JSON-lines file or stdin.
    pub replay: Option<CollectorEntry<replay::ReplayConfig>>,
    /// Process exec and exit from the kernel (`--enable-ebpf`).
    pub kernel: Option<CollectorEntry<ebpf::kernel::KernelConfig>>,
    /// TCP connects, accepts, closes and failures from the kernel (`--enable-ebpf`).
    pub network: Option<CollectorEntry<ebpf::network::NetworkConfig>>,
    /// DNS queries and responses seen by a socket filter (`--enable-ebpf`).
    pub dns: Option<CollectorEntry<ebpf::dns::DnsConfig>>,
    /// OOM kills from the kernel (`--enable-ebpf`).
    pub memory: Option<CollectorEntry<ebpf::memory::MemoryConfig>>,
    /// Failing syscalls, counted in the kernel (YAML only: not in `--enable-ebpf`'s set).
    #[serde(rename = "syscall-errors")]
    pub syscall_errors: Option<CollectorEntry<ebpf::syscalls::SyscallErrorsConfig>>,
    /// Pods, the node and Warning events from the Kubernetes API (`--enable-k8s`).
    pub kubeapi: Option<CollectorEntry<kubeapi::KubeApiConfig>>,
    /// The node's kubelet: pressure, pod memory near limits, restarts (`--enable-k8s`).
    pub kubelet: Option<CollectorEntry<kubelet::KubeletConfig>>,
    /// Container lifecycle from the runtime's CRI socket (YAML only).
    pub cri: Option<CollectorEntry<cri::CriConfig>>,
    /// An etcd member's health and metrics (YAML only).
    #[serde(rename = "etcd-metrics")]
    pub etcd_metrics: Option<CollectorEntry<etcd::EtcdConfig>>,
    /// Unit lifecycle from the systemd manager over D-Bus (`--enable-systemd`).
    pub systemd: Option<CollectorEntry<systemd::SystemdConfig>>,
    /// Entries of the systemd journal (`--enable-journald`).
    pub journald: Option<CollectorEntry<journald::JournaldConfig>>,
}

/// A collector built from its entry, or the reason it could not be.
pub struct Built {
    /// Registry name.
    pub name: &'static str,
    /// Its queue policy.
    pub when_full: WhenFull,
    /// The collector.
    pub collector: Result<Box<dyn Collector>, Error>,
}

impl CollectorsConfig {
    /// Turns on every collector of `group` that this build has (configured ones keep their
    /// options).
    pub fn enable_group(&mut self, group: Group) {
        if group == Group::Ebpf {
            self.kernel
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
            self.network
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
            self.dns.get_or_insert_with(CollectorEntry::default).enabled = true;
            self.memory
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
            // Not `syscall-errors`: its tracepoint slows every syscall on the host (+40% on
            // `dd bs=1`, docs/benchmarks.md), so it runs only where the YAML asks for it.
        }
        if group == Group::Kubernetes {
            self.kubeapi
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
            self.kubelet
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
        }
        if group == Group::Systemd {
            self.systemd
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
        }
        if group == Group::Journald {
            self.journald
                .get_or_insert_with(CollectorEntry::default)
                .enabled = true;
        }
    }

    /// Appends every problem of every enabled collector's options to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) {
        let mut enabled = 0;
        if let Some(entry) = self.synthetic.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry
                .config
                .validate("collectors.synthetic.config", problems);
        }
        if let Some(entry) = self.replay.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.replay.config", problems);
        }
        if let Some(entry) = self.kernel.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.kernel.config", problems);
        }
        if let Some(entry) = self.network.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.network.config", problems);
        }
        if let Some(entry) = self.dns.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.dns.config", problems);
        }
        if let Some(entry) = self.memory.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.memory.config", problems);
        }
        if let Some(entry) = self.syscall_errors.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry
                .config
                .validate("collectors.syscall-errors.config", problems);
        }
        if let Some(entry) = self.kubeapi.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.kubeapi.config", problems);
        }
        if let Some(entry) = self.kubelet.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.kubelet.config", problems);
        }
        if let Some(entry) = self.cri.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.cri.config", problems);
        }
        if let Some(entry) = self.etcd_metrics.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry
                .config
                .validate("collectors.etcd-metrics.config", problems);
        }
        if let Some(entry) = self.systemd.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry.config.validate("collectors.systemd.config", problems);
        }
        if let Some(entry) = self.journald.as_ref().filter(|e| e.enabled) {
            enabled += 1;
            entry
                .config
                .validate("collectors.journald.config", problems);
        }
        if enabled == 0 {
            problems.push(
                "collectors: no collector is enabled; configure one (e.g. `synthetic`) in the \
                 YAML file, or turn a group on with an --enable-* flag"
                    .into(),
            );
        }
    }

    /// Builds every enabled collector.
    #[must_use]
    pub fn build(&self, context: &BuildContext) -> Vec<Built> {
        let node = &context.node_name;
        let mut built = Vec::new();
        add(&mut built, self.synthetic.as_ref(), synthetic::NAME, |c| {
            Box::new(synthetic::Synthetic::new(c, node.clone()))
        });
        add(&mut built, self.replay.as_ref(), replay::NAME, |c| {
            Box::new(replay::Replay::new(c))
        });
        add(&mut built, self.kernel.as_ref(), ebpf::kernel::NAME, |c| {
            Box::new(ebpf::kernel::Kernel::new(c, node.clone()))
        });
        add(
            &mut built,
            self.network.as_ref(),
            ebpf::network::NAME,
            |c| Box::new(ebpf::network::Network::new(c, node.clone())),
        );
        add(&mut built, self.dns.as_ref(), ebpf::dns::NAME, |c| {
            Box::new(ebpf::dns::Dns::new(c, node.clone()))
        });
        add(&mut built, self.memory.as_ref(), ebpf::memory::NAME, |c| {
            Box::new(ebpf::memory::Memory::new(c, node.clone()))
        });
        add(
            &mut built,
            self.syscall_errors.as_ref(),
            ebpf::syscalls::NAME,
            |c| Box::new(ebpf::syscalls::SyscallErrors::new(c, node.clone())),
        );
        add(&mut built, self.kubeapi.as_ref(), kubeapi::NAME, |c| {
            Box::new(kubeapi::KubeApi::new(
                c,
                node.clone(),
                Arc::clone(&context.directory),
            ))
        });
        add(&mut built, self.kubelet.as_ref(), kubelet::NAME, |c| {
            Box::new(kubelet::Kubelet::new(c, node.clone()))
        });
        add(&mut built, self.cri.as_ref(), cri::NAME, |c| {
            Box::new(cri::Cri::new(c, node.clone()))
        });
        add(&mut built, self.etcd_metrics.as_ref(), etcd::NAME, |c| {
            Box::new(etcd::Etcd::new(c, node.clone()))
        });
        add(&mut built, self.systemd.as_ref(), systemd::NAME, |c| {
            Box::new(systemd::Systemd::new(c, node.clone()))
        });
        add(&mut built, self.journald.as_ref(), journald::NAME, |c| {
            Box::new(journald::Journald::new(c, node.clone()))
        });
        built
    }
}

/// Appends a problem for each of `files` (field name, path) that is set and not a file.
pub(crate) fn check_files(
    prefix: &str,
    files: &[(&str, Option<&std::path::Path>)],
    problems: &mut Vec<String>,
) {
    for (field, path) in files {
        if let Some(path) = path
            && !path.is_file()
        {
            problems.push(format!(
                "{prefix}.{field}: `{}` is not a file",
                path.display()
            ));
        }
    }
}

/// Builds `entry`'s collector with `make` when it is enabled.
fn add<T: Clone>(
    built: &mut Vec<Built>,
    entry: Option<&CollectorEntry<T>>,
    name: &'static str,
    make: impl FnOnce(T) -> Box<dyn Collector>,
) {
    if let Some(entry) = entry.filter(|e| e.enabled) {
        built.push(Built {
            name,
            when_full: entry.when_full,
            collector: Ok(make(entry.config.clone())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_ebpf_turns_on_the_default_kernel_set_and_keeps_their_options() {
        let mut config = CollectorsConfig {
            dns: Some(CollectorEntry {
                enabled: false,
                when_full: WhenFull::DropNewest,
                config: ebpf::dns::DnsConfig {
                    max_pending: 7,
                    ..ebpf::dns::DnsConfig::default()
                },
            }),
            ..CollectorsConfig::default()
        };
        config.enable_group(Group::Ebpf);
        let names: Vec<_> = config
            .build(&BuildContext {
                node_name: "n".into(),
                directory: crate::metadata::PodDirectory::new(),
            })
            .iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["kernel", "network", "dns", "memory"]);
        let dns = config.dns.expect("dns entry");
        assert_eq!(dns.config.max_pending, 7, "configured options are kept");
        assert_eq!(dns.when_full, WhenFull::DropNewest);
    }
}
