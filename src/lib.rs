//! tapio-collector: a node agent that watches Linux and Kubernetes, correlates what it
//! sees into incidents and streams them to a Tapio server.
//!
//! Data flows one way: [`collectors`] -> [`manager`] -> [`correlation`] -> [`output`].

pub mod agent;
pub mod bounded;
pub mod bridge;
pub mod collectors;
pub mod config;
pub mod correlation;
pub mod delivery;
pub mod event;
pub mod health;
pub mod http;
pub mod internal_events;
pub mod manager;
pub mod metadata;
pub mod nats;
pub mod otel;
pub mod output;
pub mod panics;
pub mod prom;
pub mod server;
pub mod source_sender;
pub mod telemetry;
pub mod tls;
pub mod units;

/// The wire contract compiled from proto/tapio/v1.
pub mod pb {
    #![allow(missing_docs, clippy::pedantic)]
    tonic::include_proto!("tapio.v1");

    /// Response header of `StreamEvents` carrying the server's events-per-second limit.
    pub const RATE_LIMIT_HEADER: &str = "tapio-max-events-per-second";

    /// Response header of `StreamEvents` carrying the largest message the server takes, so
    /// a collector seals its batches within it.
    pub const MESSAGE_LIMIT_HEADER: &str = "tapio-max-message-bytes";
}

/// The part of the Kubernetes CRI (`runtime.v1`) the `cri` collector speaks, from
/// proto/cri: the client, and the server that the tests' stand-in runtime implements.
pub mod cri_pb {
    #![allow(missing_docs, clippy::pedantic)]
    tonic::include_proto!("runtime.v1");
}
