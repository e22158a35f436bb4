//! Attribute keys that more than one part of the agent writes or reads, named once.

/// The Kubernetes service an event concerns (e.g. a connect failure's destination); the
/// correlation engine counts it in an incident's blast radius.
pub const SERVICE_NAME: &str = "k8s.service.name";

/// The prefix of a pod's labels on events that carry them: `k8s.pod.label.<key>`.
pub const POD_LABEL_PREFIX: &str = "k8s.pod.label.";
