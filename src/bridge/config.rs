//! The `server:` section of the YAML file: where events go and how they wait on the way.
//! It deserialises straight into these settings; [`super::Bridge::spawn`] takes them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{check_host_port, deserialize_bytes, deserialize_duration};

/// Delivery to the Tapio server.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` of the Tapio server; `embedded` to run one in-process (store in
    /// `data_dir`); `none` to turn delivery off.
    pub address: String,
    /// Events per batch sent to the server.
    pub buffer_size: usize,
    /// Longest time an event waits in a partial batch.
    #[serde(deserialize_with = "deserialize_duration")]
    pub flush_interval: Duration,
    /// Plain-text gRPC; `false` asks for TLS.
    pub insecure: bool,
    /// Store of the embedded server (`address: embedded`).
    pub data_dir: PathBuf,
    /// How long to keep delivering after the input ends (finite run or SIGTERM).
    #[serde(deserialize_with = "deserialize_duration")]
    pub drain_timeout: Duration,
    /// Unacked batches on the stream at most.
    pub window: usize,
    /// Sealed batches held in memory while the server is slow or away.
    pub max_pending_batches: usize,
    /// File holding the bearer token sent to the server.
    pub token_file: Option<PathBuf>,
    /// Directory of the on-disk spool: every batch is written here before it is sent and
    /// kept until acked, so nothing unacked is lost to a restart. Without it batches wait
    /// in memory only.
    pub spool_dir: Option<PathBuf>,
    /// Cap on the spool's size, e.g. `512MiB`, `1GiB`.
    #[serde(deserialize_with = "deserialize_bytes")]
    pub spool_max_bytes: u64,
    /// At the cap: `block` holds the pipeline back; `drop_newest` drops and counts.
    pub spool_when_full: crate::source_sender::WhenFull,
    /// PEM CA that signed the server's certificate (TLS); the system's roots when absent.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// How batches travel: `grpc`, a stream to `address`; `nats`, through the JetStream
    /// stream of the `nats:` section, which tapio-servers (`--nats`) read.
    pub transport: Transport,
}

/// How batches travel to the servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A bidirectional gRPC stream to one server.
    #[default]
    Grpc,
    /// NATS JetStream, shared by every server.
    Nats,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: "localhost:9090".into(),
            buffer_size: 1000,
            flush_interval: Duration::from_secs(1),
            insecure: true,
            data_dir: PathBuf::from("tapio-data"),
            drain_timeout: Duration::from_secs(30),
            window: 16,
            max_pending_batches: 16,
            token_file: None,
            spool_dir: None,
            spool_max_bytes: 1 << 30,
            spool_when_full: crate::source_sender::WhenFull::Block,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            transport: Transport::Grpc,
        }
    }
}

impl ServerConfig {
    /// True when `address` is `none`: events are not delivered anywhere but local outputs.
    #[must_use]
    pub fn delivery_disabled(&self) -> bool {
        self.address.eq_ignore_ascii_case("none")
    }

    /// Appends every problem of the delivery settings to `problems`; `stdout` says whether
    /// events also go to stdout (so delivery may be off).
    pub fn validate(&self, stdout: bool, problems: &mut Vec<String>) {
        let s = self;
        if s.transport == Transport::Nats && (s.embedded() || s.delivery_disabled()) {
            problems.push(format!(
                "server.transport: nats delivers to the JetStream stream of the nats: section; \
                 server.address {:?} asks for no remote server",
                s.address
            ));
        }
        if let (Transport::Grpc, false, false, Err(e)) = (
            s.transport,
            s.delivery_disabled(),
            s.embedded(),
            check_host_port(&s.address),
        ) {
            problems.push(format!("server.address: {e}"));
        }
        let tls_files = [
            ("tls_ca", &s.tls_ca),
            ("tls_cert", &s.tls_cert),
            ("tls_key", &s.tls_key),
        ];
        if s.insecure {
            for (field, value) in tls_files {
                if value.is_some() {
                    problems.push(format!(
                        "server.{field}: given, but server.insecure is true; pass \
                         --grpc-insecure=false to use TLS"
                    ));
                }
            }
        } else if s.embedded() {
            problems.push(
                "server.insecure: the embedded server listens on loopback without TLS; \
                 leave --grpc-insecure at true"
                    .into(),
            );
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            problems.push(
                "server.tls_cert: a client certificate and its key (server.tls_key) go together"
                    .into(),
            );
        }
        if !(1..=1024).contains(&s.window) {
            problems.push(format!("server.window: must be 1..=1024, got {}", s.window));
        }
        if s.spool_max_bytes < 1 << 20 {
            problems.push(format!(
                "server.spool_max_bytes: must be at least 1MiB, got {}",
                s.spool_max_bytes
            ));
        }
        if s.max_pending_batches == 0 {
            problems.push("server.max_pending_batches: must be at least 1".into());
        }
        if s.delivery_disabled() && !stdout {
            problems.push(
                "server.address: is none and output.stdout is off, so events would go nowhere; \
                 pass --stdout or a --server"
                    .into(),
            );
        }
        if !(1..=100_000).contains(&s.buffer_size) {
            problems.push(format!(
                "server.buffer_size: must be 1..=100000, got {}",
                s.buffer_size
            ));
        }
        if s.flush_interval.is_zero() {
            problems.push("server.flush_interval: must be greater than zero".into());
        }
    }

    /// True when `address` is `embedded`: a server runs in-process.
    #[must_use]
    pub fn embedded(&self) -> bool {
        self.address.eq_ignore_ascii_case("embedded")
    }
}
