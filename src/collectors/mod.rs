//! The collector contract and the registry that maps YAML names to collectors.
//!
//! A collector's options are the collector (Vector's `SourceConfig`): the type knows its
//! registry name and its `--enable-*` group, validates itself under the path it is given,
//! and `build` does the work that can fail (load and attach probes, connect to the bus,
//! read the kubeconfig) before it returns the future that only runs. Adding a collector is
//! its module plus one line in [`registry!`]'s list below; serde rejects an unknown name
//! with its line number.

pub mod cri;
pub mod ebpf;
pub mod etcd;
pub mod journald;
pub mod kubeapi;
pub mod kubelet;
pub mod leak;
pub mod otel;
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

/// The error underneath an [`Error`], kept as its source.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a collector could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The platform, a privilege or a peer it needs is missing here.
    #[error("unavailable: {what}")]
    Unavailable {
        /// What is missing or failed, in the collector's words.
        what: String,
        /// The error that says why, when there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The pipeline closed under it.
    #[error(transparent)]
    Closed(#[from] Closed),
}

impl Error {
    /// Unavailable for a reason no error stands behind.
    pub fn unavailable(what: impl Into<String>) -> Self {
        Self::Unavailable {
            what: what.into(),
            cause: None,
        }
    }

    /// Unavailable because of `cause`, which stays attached as the source.
    pub fn unavailable_by(what: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self::Unavailable {
            what: what.into(),
            cause: Some(cause.into()),
        }
    }
}

/// A collector's running half: the future that produces events until its input ends or
/// shutdown is requested.
pub type Running = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// What [`CollectorConfig::build`] returns: the failing setup, then the running half.
pub type BuildFuture = Pin<Box<dyn Future<Output = Result<Running, Error>> + Send>>;

/// A collector: its options, which know everything else about it.
pub trait CollectorConfig:
    Clone + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static
{
    /// Its registry name: the key under `collectors:` and the `source` of its events.
    const NAME: &'static str;

    /// The `--enable-*` group that turns it on; `None`: only the YAML file does.
    const GROUP: Option<Group> = None;

    /// Whether its events have the shapes of docs/event-types.md (`event::schema`), which
    /// debug builds check on every send; `false` only for a collector that passes on
    /// events made elsewhere (`replay`).
    const DOCUMENTED: bool = true;

    /// Appends every problem of its options to `problems`, each under `path`.
    fn validate(&self, path: &str, problems: &mut Vec<String>);

    /// How often it reports what it saw, for a collector that reports on an interval (so
    /// its events can arrive that much after they happened); `None` for one that reports
    /// at once.
    fn reporting_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Does the work that can fail up front (check the platform, open, connect, attach)
    /// and returns the future that only runs, so every such error surfaces at start.
    fn build(self, cx: BuildContext, context: Context) -> BuildFuture;
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

/// Whether `event` goes out: a container's creation or exit that another collector
/// (`cri-ebpf`, `cri`, `kubeapi`) already reported is counted as a `duplicate` drop
/// instead, so that one exit is one event.
pub(crate) fn first_report(
    directory: &crate::metadata::PodDirectory,
    stats: &CollectorStats,
    event: &crate::event::Event,
) -> bool {
    if !matches!(&*event.kind, "container.created" | "container.exit")
        || event.entities.container_id.is_empty()
        || directory.first_report(&event.kind, &event.entities.container_id)
    {
        return true;
    }
    crate::internal_events::EventsDropped {
        component: stats.name(),
        counters: stats.drop_counters(),
        cause: crate::telemetry::DropCause::Duplicate,
        count: 1,
    }
    .emit();
    false
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

/// A collector ready to start: the manager hands it its [`Context`].
pub struct Built {
    /// Registry name.
    pub name: &'static str,
    /// Its queue policy.
    pub when_full: WhenFull,
    /// Whether its events have documented shapes ([`CollectorConfig::DOCUMENTED`]).
    pub documented: bool,
    /// Builds it with its context: the failing setup, then the running half.
    pub start: Box<dyn FnOnce(Context) -> BuildFuture + Send>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("name", &self.name)
            .field("when_full", &self.when_full)
            .finish_non_exhaustive()
    }
}

impl Built {
    /// `config`'s collector, to start with `cx`.
    pub fn new<T: CollectorConfig>(config: T, when_full: WhenFull, cx: BuildContext) -> Self {
        Self {
            name: T::NAME,
            when_full,
            documented: T::DOCUMENTED,
            start: Box::new(move |context| config.build(cx, context)),
        }
    }
}

/// Whether two names are the same, at compile time: each registry line's YAML key must be
/// its type's `NAME`.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Generates, from one line per collector, the `collectors:` map of the YAML file, its
/// validation, the `--enable-*` groups, the list of names and the builds.
macro_rules! registry {
    ($($(#[$doc:meta])* $name:literal => $field:ident: $config:ty,)*) => {
        /// The `collectors:` map of the YAML file: one optional entry per collector.
        #[derive(Clone, Debug, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct CollectorsConfig {
            $(
                $(#[$doc])*
                #[serde(rename = $name)]
                pub $field: Option<CollectorEntry<$config>>,
            )*
        }

        /// Every collector's registry name, in registry order.
        pub const NAMES: &[&str] = &[$($name),*];

        const _: () = {
            $(assert!(same(<$config as CollectorConfig>::NAME, $name), "a registry key differs from its type's NAME");)*
        };

        impl CollectorsConfig {
            /// Turns on every collector of `group` (configured ones keep their options).
            pub fn enable_group(&mut self, group: Group) {
                $(
                    if <$config as CollectorConfig>::GROUP == Some(group) {
                        self.$field.get_or_insert_with(CollectorEntry::default).enabled = true;
                    }
                )*
            }

            /// Appends every problem of every enabled collector's options to `problems`.
            pub fn validate(&self, problems: &mut Vec<String>) {
                let mut enabled = 0;
                $(
                    if let Some(entry) = self.$field.as_ref().filter(|e| e.enabled) {
                        enabled += 1;
                        CollectorConfig::validate(
                            &entry.config,
                            concat!("collectors.", $name, ".config"),
                            problems,
                        );
                    }
                )*
                if enabled == 0 {
                    problems.push(
                        "collectors: no collector is enabled; configure one (e.g. `synthetic`) in \
                         the YAML file, or turn a group on with an --enable-* flag"
                            .into(),
                    );
                }
            }

            /// The longest reporting interval of the enabled collectors: how late their
            /// events can arrive ([`CollectorConfig::reporting_interval`]).
            #[must_use]
            pub fn longest_interval(&self) -> std::time::Duration {
                let mut longest = std::time::Duration::ZERO;
                $(
                    if let Some(entry) = self.$field.as_ref().filter(|e| e.enabled) {
                        if let Some(interval) = CollectorConfig::reporting_interval(&entry.config) {
                            longest = longest.max(interval);
                        }
                    }
                )*
                longest
            }

            /// The collectors whose entry differs between `self` (running) and `new`: each
            /// is (name, running before, running after), for a reload to stop and start.
            #[must_use]
            pub fn differences(&self, new: &Self) -> Vec<(&'static str, bool, bool)> {
                let mut changed = Vec::new();
                $(
                    let (before, after) = (
                        self.$field.as_ref().filter(|e| e.enabled),
                        new.$field.as_ref().filter(|e| e.enabled),
                    );
                    if before != after {
                        changed.push(($name, before.is_some(), after.is_some()));
                    }
                )*
                changed
            }

            /// The enabled collectors among `names`, ready to start with `cx`.
            #[must_use]
            pub fn build_only(&self, cx: &BuildContext, names: &[&str]) -> Vec<Built> {
                self.build(cx)
                    .into_iter()
                    .filter(|b| names.contains(&b.name))
                    .collect()
            }

            /// Every enabled collector, ready to start with `cx`.
            #[must_use]
            pub fn build(&self, cx: &BuildContext) -> Vec<Built> {
                let mut built = Vec::new();
                $(
                    if let Some(entry) = self.$field.as_ref().filter(|e| e.enabled) {
                        built.push(Built::new(entry.config.clone(), entry.when_full, cx.clone()));
                    }
                )*
                built
            }
        }
    };
}

registry! {
    /// Generated load and scripted incidents, for tests, benchmarks and demos.
    "synthetic" => synthetic: synthetic::SyntheticConfig,
    /// Recorded events read back from a JSON-lines file or stdin.
    "replay" => replay: replay::ReplayConfig,
    /// Process exec and exit from the kernel (`--enable-ebpf`).
    "kernel" => kernel: ebpf::kernel::KernelConfig,
    /// TCP connects, accepts, closes and failures from the kernel (`--enable-ebpf`).
    "network" => network: ebpf::network::NetworkConfig,
    /// DNS queries and responses seen by a socket filter (`--enable-ebpf`).
    "dns" => dns: ebpf::dns::DnsConfig,
    /// OOM kills from the kernel (`--enable-ebpf`).
    "memory" => memory: ebpf::memory::MemoryConfig,
    /// Fatal signals with their sender, and core dumps, from the kernel (`--enable-ebpf`).
    "runtime-signals" => runtime_signals: ebpf::signals::RuntimeSignalsConfig,
    /// Block I/O latency spikes and errors, slow fsyncs, from the kernel (YAML only).
    "storage-io" => storage_io: ebpf::storage::StorageIoConfig,
    /// Run-queue waits from the kernel, CFS throttling and PSI (YAML only).
    "resource-starvation" => resource_starvation: ebpf::starvation::ResourceStarvationConfig,
    /// Steady memory growth and major-fault storms per cgroup, sampled (YAML only).
    "memory-leak-hunter" => memory_leak_hunter: leak::MemoryLeakHunterConfig,
    /// Failing syscalls, counted in the kernel (YAML only: not in `--enable-ebpf`'s set).
    "syscall-errors" => syscall_errors: ebpf::syscalls::SyscallErrorsConfig,
    /// Pods, the node and Warning events from the Kubernetes API (`--enable-k8s`).
    "kubeapi" => kubeapi: kubeapi::KubeApiConfig,
    /// The node's kubelet: pressure, pod memory near limits, restarts (`--enable-k8s`).
    "kubelet" => kubelet: kubelet::KubeletConfig,
    /// Container lifecycle from the kernel's cgroups, no CRI socket (YAML only).
    "cri-ebpf" => cri_ebpf: ebpf::lifecycle::CriEbpfConfig,
    /// Container lifecycle from the runtime's CRI socket (YAML only).
    "cri" => cri: cri::CriConfig,
    /// Applications' spans and logs over OTLP/gRPC and OTLP/HTTP (YAML only).
    "otel" => otel: otel::OtelReceiverConfig,
    /// An etcd member's health and metrics (YAML only).
    "etcd-metrics" => etcd_metrics: etcd::EtcdConfig,
    /// Unit lifecycle from the systemd manager over D-Bus (`--enable-systemd`).
    "systemd" => systemd: systemd::SystemdConfig,
    /// Entries of the systemd journal (`--enable-journald`).
    "journald" => journald: journald::JournaldConfig,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_collector_keeps_the_error_that_says_why() {
        let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "no such socket");
        let error = Error::unavailable_by("CRI socket /run/x.sock: connect", cause);
        let source = std::error::Error::source(&error).expect("the cause is the source");
        assert_eq!(source.to_string(), "no such socket");
        assert_eq!(
            crate::tls::error_chain(&error),
            "unavailable: CRI socket /run/x.sock: connect: no such socket"
        );
        assert!(std::error::Error::source(&Error::unavailable("no probes")).is_none());
    }

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
        assert_eq!(
            names,
            ["kernel", "network", "dns", "memory", "runtime-signals"]
        );
        let dns = config.dns.expect("dns entry");
        assert_eq!(dns.config.max_pending, 7, "configured options are kept");
        assert_eq!(dns.when_full, WhenFull::DropNewest);
    }
}
