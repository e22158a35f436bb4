//! Attribute keys that more than one part of the agent writes or reads, named once.

/// A pod's IP address, on the Kubernetes collector's pod events: the correlation engine
/// maps connections and DNS servers to pods by it.
pub const POD_IP: &str = "pod_ip";

/// The Kubernetes service an event concerns (the service a pod backs, on the Kubernetes
/// collector's pod events); the correlation engine counts it in an incident's blast radius.
pub const SERVICE_NAME: &str = "k8s.service.name";

/// The prefix of a pod's labels on events that carry them: `k8s.pod.label.<key>`.
pub const POD_LABEL_PREFIX: &str = "k8s.pod.label.";
