//! The command line of `tapio-collector`: subcommands, and flags that override the YAML
//! file (a flag that is given wins; one that is not leaves the file's value alone).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::{Config, CorrelationMode, Result};
use crate::units::{parse_bytes, parse_duration};

/// tapio-collector: watches this node (kernel, Kubernetes, systemd, journal), correlates what
/// it sees into incidents, and streams events to a Tapio server.
#[derive(Debug, Parser)]
#[command(
    name = "tapio-collector",
    version = concat!(env!("CARGO_PKG_VERSION"), " (eBPF probes: ", env!("TAPIO_PROBES"), ")"),
    about,
    long_about = None
)]
pub struct Cli {
    /// What to do; without a subcommand the agent runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the agent run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a configuration file: exit 0 when valid, else print every error and exit 1.
    Validate {
        /// The YAML configuration file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Ask a running agent's `/healthz` (see `--metrics-listen`): exit 0 on 200, else 1.
    /// For Docker's HEALTHCHECK, in images without curl.
    Health {
        /// The URL, e.g. `http://127.0.0.1:9464/healthz`.
        #[arg(value_name = "URL", default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
    },
}

/// Flags of the agent run; each one given overrides the YAML file.
#[derive(Clone, Debug, Default, Args)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each bool is an on/off command-line flag"
)]
pub struct RunArgs {
    /// YAML configuration file (collectors and their options; see README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also reload when the --config file changes (checked every second); SIGHUP always
    /// reloads.
    #[arg(long, requires = "config")]
    pub watch_config: bool,
    /// Tapio server `host:port`; `embedded` runs one in-process; `none` turns delivery off
    /// [default: localhost:9090].
    #[arg(long, value_name = "ADDR")]
    pub server: Option<String>,
    /// How batches travel: `grpc` to --server, or `nats` through JetStream to the servers
    /// reading it (see --nats-url) [default: grpc].
    #[arg(long, value_name = "KIND")]
    pub transport: Option<crate::bridge::Transport>,
    /// NATS URL, with `--transport nats` [default: `nats://127.0.0.1:4222`].
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Subject batches are published on, with `--transport nats` [default: tapio.events].
    #[arg(long, value_name = "SUBJECT")]
    pub nats_subject: Option<String>,
    /// OTLP/gRPC endpoint for incident traces, or `none` [default: localhost:4317].
    #[arg(long, value_name = "ADDR")]
    pub otel_endpoint: Option<String>,
    /// Also export the agent's own spans to the OTLP endpoint (off by default).
    #[arg(long)]
    pub otel_self_tracing: bool,
    /// Also export every enriched event as an OTLP log record to the OTLP endpoint (off by
    /// default).
    #[arg(long)]
    pub otel_export_events: bool,
    /// At shutdown, how long the last spans may take to reach the OTLP endpoint; the rest
    /// are counted as dropped [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub otel_shutdown_timeout: Option<Duration>,
    /// Turn on the eBPF kernel collectors.
    #[arg(long)]
    pub enable_ebpf: bool,
    /// Turn on the Kubernetes collectors.
    #[arg(long)]
    pub enable_k8s: bool,
    /// Turn on the systemd collector.
    #[arg(long)]
    pub enable_systemd: bool,
    /// Turn on the journald collector.
    #[arg(long)]
    pub enable_journald: bool,
    /// Events per batch sent to the server [default: 1000].
    #[arg(long, value_name = "N")]
    pub buffer_size: Option<usize>,
    /// Longest time an event waits in a partial batch, e.g. 500ms, 1s [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub flush_interval: Option<Duration>,
    /// Correlation mode [default: semantic].
    #[arg(long, value_name = "MODE")]
    pub correlation: Option<CorrelationMode>,
    /// Plain-text gRPC to the server; `--grpc-insecure=false` asks for TLS [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub grpc_insecure: Option<bool>,
    /// Log filter: error, warn, info, debug, trace, or tracing directives [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Print each enriched event as one JSON line on stdout (logs stay on stderr).
    #[arg(long)]
    pub stdout: bool,
    /// How often the status line is printed on stderr [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub status_interval: Option<Duration>,
    /// Serve `/healthz` and `/metrics` (Prometheus text) on this address, e.g. 0.0.0.0:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Shed new events (`memory_limit` drops) before the agent's memory reaches this,
    /// e.g. `460MiB`: a little under the container's memory limit.
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Store of the embedded server (`--server embedded`) [default: tapio-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long to keep delivering after the input ends or SIGTERM [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// File holding the bearer token sent to the server.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Directory of the on-disk spool (batches kept there until acked; survives restarts).
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Cap on the spool's size, e.g. 512MiB [default: 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    pub spool_max_bytes: Option<u64>,
    /// PEM CA of the server's certificate, with --grpc-insecure=false [default: system roots].
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS, with --tls-key.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl RunArgs {
    /// The YAML file (or defaults) with every given flag applied over it.
    pub fn load(&self) -> Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut config);
        Ok(config)
    }

    /// Applies the given flags over `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.server {
            config.server.address.clone_from(v);
        }
        if let Some(v) = self.transport {
            config.server.transport = v;
        }
        if let Some(v) = &self.nats_url {
            config.nats.url.clone_from(v);
        }
        if let Some(v) = &self.nats_subject {
            config.nats.subject.clone_from(v);
        }
        if let Some(v) = &self.otel_endpoint {
            config.otel.endpoint.clone_from(v);
        }
        if self.otel_self_tracing {
            config.otel.self_tracing = true;
        }
        if self.otel_export_events {
            config.otel.export_events = true;
        }
        if let Some(v) = self.otel_shutdown_timeout {
            config.otel.shutdown_timeout = v;
        }
        if let Some(v) = self.buffer_size {
            config.server.buffer_size = v;
        }
        if let Some(v) = self.flush_interval {
            config.server.flush_interval = v;
        }
        if let Some(v) = self.correlation {
            config.correlation.mode = v;
        }
        if let Some(v) = self.grpc_insecure {
            config.server.insecure = v;
        }
        if let Some(v) = &self.log_level {
            config.orchestrator.log_level.clone_from(v);
        }
        if let Some(v) = self.status_interval {
            config.orchestrator.status_interval = v;
        }
        if let Some(v) = self.memory_limit {
            config.orchestrator.memory_limit = Some(v);
        }
        if let Some(v) = self.metrics_listen {
            config.orchestrator.metrics_listen = Some(v);
        }
        if self.stdout {
            config.output.stdout = true;
        }
        if let Some(v) = &self.data_dir {
            config.server.data_dir.clone_from(v);
        }
        if let Some(v) = self.drain_timeout {
            config.server.drain_timeout = v;
        }
        if let Some(v) = &self.token_file {
            config.server.token_file = Some(v.clone());
        }
        if let Some(v) = &self.spool_dir {
            config.server.spool_dir = Some(v.clone());
        }
        if let Some(v) = self.spool_max_bytes {
            config.server.spool_max_bytes = v;
        }
        for (flag, field) in [
            (&self.tls_ca, &mut config.server.tls_ca),
            (&self.tls_cert, &mut config.server.tls_cert),
            (&self.tls_key, &mut config.server.tls_key),
        ] {
            if let Some(v) = flag {
                *field = Some(v.clone());
            }
        }
        let groups = [
            (self.enable_ebpf, crate::collectors::Group::Ebpf),
            (self.enable_k8s, crate::collectors::Group::Kubernetes),
            (self.enable_systemd, crate::collectors::Group::Systemd),
            (self.enable_journald, crate::collectors::Group::Journald),
        ];
        for (on, group) in groups {
            if on {
                config.collectors.enable_group(group);
            }
        }
    }
}
