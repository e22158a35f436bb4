//! Configuration: the YAML file and validation of the result; the command line over it is
//! in [`cli`].
//!
//! The YAML file and the flags describe one [`Config`]; a flag that is given wins over the
//! file, a flag that is not given leaves the file's value (or the default) alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cli;
pub mod reload;

pub use cli::{Cli, Command, RunArgs};

pub use crate::bridge::ServerConfig;
use crate::collectors::CollectorsConfig;
pub use crate::correlation::{CorrelationConfig, CorrelationMode};
use crate::units::deserialize_duration;

/// A configuration problem, naming the file, the field and where it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown field, or a value of the wrong type.
    #[error("{origin}: {field}: {message}")]
    Parse {
        /// The file, or `<flags>`.
        origin: String,
        /// Dotted path of the offending field, e.g. `collectors.synthetic.config.rate`.
        field: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// The values parse but do not make sense together; every problem is listed.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// Result of loading or validating configuration.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the agent needs to run.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Pipeline sizing, logging and status reporting.
    pub orchestrator: OrchestratorConfig,
    /// Which collectors run, each with its own options.
    pub collectors: CollectorsConfig,
    /// Delivery to the Tapio server.
    pub server: ServerConfig,
    /// How events are correlated.
    pub correlation: CorrelationConfig,
    /// OpenTelemetry export of incidents as traces.
    pub otel: OtelConfig,
    /// Local output.
    pub output: OutputConfig,
    /// NATS JetStream, used when `server.transport` is `nats`.
    pub nats: crate::nats::NatsConfig,
}

/// Pipeline sizing, logging and status reporting.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorConfig {
    /// Runtime worker threads.
    pub workers: usize,
    /// Capacity, in events, of each collector's queue into the pipeline.
    pub buffer_size: usize,
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or tracing directives.
    pub log_level: String,
    /// How often the status line is printed on stderr.
    #[serde(deserialize_with = "deserialize_duration")]
    pub status_interval: Duration,
    /// This node's name; default: `$NODE_NAME`, else the kernel's hostname.
    pub node_name: Option<String>,
    /// Where `/healthz` and `/metrics` (Prometheus text) are served; unset: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The agent's memory ceiling: past 75% of it new events are shed by
    /// `memory_policy` until memory is back under 60%; unset: no ceiling.
    #[serde(deserialize_with = "crate::units::deserialize_optional_bytes")]
    pub memory_limit: Option<u64>,
    /// Over the memory ceiling: `drop_newest` drops new events (counted as
    /// `memory_limit`); `block` holds the collectors back (a kernel collector's ring
    /// buffer then fills, and what it loses is counted there).
    pub memory_policy: crate::source_sender::WhenFull,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            buffer_size: 10_000,
            log_level: "info".into(),
            status_interval: Duration::from_secs(10),
            node_name: None,
            metrics_listen: None,
            memory_limit: None,
            memory_policy: crate::source_sender::WhenFull::DropNewest,
        }
    }
}

/// OpenTelemetry export.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP/gRPC endpoint (`host:port` or `http://host:port`), or `none`.
    pub endpoint: String,
    /// Also export the agent's own spans (service `tapio-collector-agent`); off by default.
    pub self_tracing: bool,
    /// Also export every enriched event as an OTLP log record (its trace context,
    /// severity, entities under the semantic conventions), so an OpenTelemetry Collector,
    /// Loki or Elastic pipeline takes the events without a Tapio server; off by default.
    pub export_events: bool,
    /// At shutdown, how long the last spans may take to reach the endpoint; what is still
    /// unsent then is dropped and counted (`spans_dropped`).
    #[serde(deserialize_with = "deserialize_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for OtelConfig {
    fn default() -> Self {
        Self {
            endpoint: "localhost:4317".into(),
            self_tracing: false,
            export_events: false,
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

/// Local output.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Print each enriched event as one JSON line on stdout.
    pub stdout: bool,
}

impl Config {
    /// Parses YAML text; `origin` names the source in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            Error::Parse {
                origin: origin.to_owned(),
                message: tidy_parse_message(&field, message),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
            }
        })
    }

    /// Reads and parses a YAML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Checks the values together; returns every problem at once, each naming its field.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let o = &self.orchestrator;
        if !(1..=1024).contains(&o.workers) {
            problems.push(format!(
                "orchestrator.workers: must be 1..=1024, got {}",
                o.workers
            ));
        }
        if !(1..=10_000_000).contains(&o.buffer_size) {
            problems.push(format!(
                "orchestrator.buffer_size: must be 1..=10000000, got {}",
                o.buffer_size
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&o.log_level) {
            problems.push(format!(
                "orchestrator.log_level: {:?} is not a level or filter: {e}",
                o.log_level
            ));
        }
        if o.status_interval < Duration::from_millis(100) {
            problems.push(format!(
                "orchestrator.status_interval: must be at least 100ms, got {:?}",
                o.status_interval
            ));
        }
        if let Some(limit) = o.memory_limit
            && limit < 32 << 20
        {
            problems.push(format!(
                "orchestrator.memory_limit: must be at least 32MiB (the agent's own footprint), got {limit}"
            ));
        }
        if o.node_name.as_deref() == Some("") {
            problems.push("orchestrator.node_name: must not be empty".into());
        }
        self.server.validate(self.output.stdout, &mut problems);
        if self.server.transport == crate::bridge::Transport::Nats {
            self.nats.validate(&mut problems);
        }
        if !self.otel.endpoint.eq_ignore_ascii_case("none") {
            let endpoint = self
                .otel
                .endpoint
                .strip_prefix("http://")
                .or_else(|| self.otel.endpoint.strip_prefix("https://"))
                .unwrap_or(&self.otel.endpoint);
            if let Err(e) = crate::units::check_host_port(endpoint) {
                problems.push(format!("otel.endpoint: {e}"));
            }
        }
        self.correlation.validate(&mut problems);
        self.collectors.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// The node name events are stamped with.
    #[must_use]
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.orchestrator.node_name {
            return name.clone();
        }
        if let Some(name) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
            return name;
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into())
    }
}

/// The YAML error repeats the parent's path, which the error already names in full; and an
/// unknown key under `collectors` is an unknown collector, which is what the user needs to
/// read.
fn tidy_parse_message(field: &str, message: String) -> String {
    let message = match message.split_once(": ") {
        Some((head, rest)) if field.starts_with(head) => rest.to_owned(),
        _ => message,
    };
    let is_collector_key = field
        .strip_prefix("collectors.")
        .is_some_and(|name| !name.contains('.'));
    match message.strip_prefix("unknown field") {
        Some(rest) if is_collector_key => format!("unknown collector{rest}"),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[test]
    fn seed_shaped_yaml_parses() {
        let config = Config::from_yaml(
            "orchestrator: { workers: 4, buffer_size: 10000, log_level: info }\n\
             collectors:\n  synthetic: { enabled: true, config: { events: 100000, rate: 0, scenario: uniform } }\n",
            "seed.yaml",
        )
        .expect("parses");
        assert_eq!(config.orchestrator.workers, 4);
        assert_eq!(config.orchestrator.memory_limit, None);
        let limited = Config::from_yaml(
            "orchestrator: { memory_limit: 460MiB, memory_policy: block }\n",
            "limit.yaml",
        )
        .expect("parses");
        assert_eq!(limited.orchestrator.memory_limit, Some(460 << 20));
        assert_eq!(
            limited.orchestrator.memory_policy,
            crate::source_sender::WhenFull::Block
        );
        let synthetic = config
            .collectors
            .synthetic
            .expect("synthetic is configured");
        assert!(synthetic.enabled);
        assert_eq!(synthetic.config.events, 100_000);
    }

    #[rstest]
    #[case::unknown_collector(
        "collectors:\n  synthetic: {}\n  bogus: {}\n",
        "collectors.bogus",
        "unknown collector `bogus`, expected one of `synthetic`, `replay`, `kernel`"
    )]
    #[case::unknown_field(
        "orchestrator:\n  workers: 2\n  wrokers: 3\n",
        "orchestrator.wrokers",
        "line 3"
    )]
    #[case::wrong_type(
        "collectors:\n  synthetic:\n    config:\n      rate: fast\n",
        "collectors.synthetic.config.rate",
        "line 4"
    )]
    #[case::bad_duration("server:\n  flush_interval: soon\n", "server.flush_interval", "line 2")]
    #[case::bad_size(
        "orchestrator:\n  memory_limit: lots\n",
        "orchestrator.memory_limit",
        "line 2"
    )]
    fn parse_errors_name_the_field_and_line(
        #[case] yaml: &str,
        #[case] field: &str,
        #[case] line: &str,
    ) {
        let error = Config::from_yaml(yaml, "bad.yaml").unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("bad.yaml: {field}: ")),
            "{error}"
        );
        assert_eq!(error.matches(field).count(), 1, "field named once: {error}");
        assert!(error.contains(line), "{error}");
        assert!(error.contains(" at line "), "{error}");
    }

    #[test]
    fn validation_lists_every_problem() {
        let mut config = Config::default();
        config.orchestrator.workers = 0;
        config.server.address = "nohostport".into();
        config.server.buffer_size = 0;
        config.otel.endpoint = "http://collector:99999".into();
        config.orchestrator.memory_limit = Some(16 << 20);
        config.correlation.max_entities = 8;
        let Err(Error::Invalid(problems)) = config.validate() else {
            panic!("expected validation errors");
        };
        for field in [
            "orchestrator.workers",
            "orchestrator.memory_limit",
            "correlation.max_entities",
            "server.address",
            "server.buffer_size",
            "otel.endpoint",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} missing from {problems:?}"
            );
        }
    }

    #[test]
    fn flags_override_the_file_and_absent_flags_do_not() {
        let mut config = Config::from_yaml(
            "server: { address: 'a:1', buffer_size: 5 }\ncorrelation: { mode: basic }\n",
            "t",
        )
        .expect("parses");
        let args = RunArgs {
            server: Some("b:2".into()),
            flush_interval: Some(Duration::from_millis(20)),
            ..RunArgs::default()
        };
        args.apply(&mut config);
        assert_eq!(config.server.address, "b:2");
        assert_eq!(config.server.buffer_size, 5);
        assert_eq!(config.server.flush_interval, Duration::from_millis(20));
        assert_eq!(config.correlation.mode, CorrelationMode::Basic);
    }
}
