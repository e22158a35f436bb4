//! The one source of truth for event shapes: for every event type, the collectors that emit
//! it, its severities, and its attributes with their value types.
//!
//! docs/event-types.md is rendered from this table (a test keeps the two equal), the
//! collectors' senders check every event against it in debug builds, and the synthetic
//! scenarios, the golden files and the incident corpus are validated with [`check`].

use std::fmt;

use super::{AttrValue, Event, Severity, keys};

/// The shape of one event type.
#[derive(Debug)]
pub struct Shape {
    /// The dotted type.
    pub kind: &'static str,
    /// The collectors that emit it (`source`).
    pub sources: &'static [&'static str],
    /// Every severity it can have.
    pub severities: &'static [Severity],
    /// When it has which severity, for humans.
    pub severity_rule: &'static str,
    /// Its attributes.
    pub attributes: &'static [Attr],
    /// Attributes beyond the listed ones that it may carry.
    pub more: More,
    /// The entities it names, for humans.
    pub entities: &'static str,
}

/// One attribute of a shape.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// The key.
    pub key: &'static str,
    /// Its value type.
    pub kind: Kind,
    /// `None`: always present; else when it is.
    pub when: Option<&'static str>,
    /// What it means.
    pub meaning: &'static str,
}

/// An attribute's value type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Str,
    /// A 64-bit integer.
    Int,
    /// A float.
    Float,
    /// A boolean.
    Bool,
}

/// Attributes a shape allows beyond its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum More {
    /// None.
    Nothing,
    /// Text attributes whose keys start with the prefix.
    Prefixed(&'static str),
    /// Any text attribute (the journal's fields).
    AnyText,
    /// Any attribute of any type (an application's own span and log attributes).
    Any,
}

/// How an event differs from its type's shape.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// No shape has this type.
    UnknownType(String),
    /// The type's shape does not list this source.
    Source {
        /// The type.
        kind: String,
        /// The event's source.
        source: String,
    },
    /// The type never has this severity.
    Severity {
        /// The type.
        kind: String,
        /// The event's severity.
        severity: Severity,
    },
    /// An attribute that is always there is missing.
    Missing {
        /// The type.
        kind: String,
        /// The attribute.
        key: &'static str,
    },
    /// An attribute the shape does not have.
    Unknown {
        /// The type.
        kind: String,
        /// The attribute.
        key: String,
    },
    /// An attribute of the wrong value type.
    WrongKind {
        /// The type.
        kind: String,
        /// The attribute.
        key: String,
        /// What the shape says.
        expected: Kind,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType(kind) => write!(f, "`{kind}` is not a documented event type"),
            Self::Source { kind, source } => {
                write!(f, "`{kind}` is not emitted by the `{source}` collector")
            }
            Self::Severity { kind, severity } => {
                write!(f, "`{kind}` is never {}", severity.as_str())
            }
            Self::Missing { kind, key } => write!(f, "`{kind}` lacks its attribute `{key}`"),
            Self::Unknown { kind, key } => write!(f, "`{kind}` has no attribute `{key}`"),
            Self::WrongKind {
                kind,
                key,
                expected,
            } => write!(f, "`{kind}`'s attribute `{key}` must be {expected:?}"),
        }
    }
}

impl std::error::Error for Mismatch {}

/// The shape of `kind`.
#[must_use]
pub fn shape(kind: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.kind == kind)
}

/// Checks `event` against its type's shape: source, severity, and every attribute's
/// presence and value type.
///
/// # Errors
/// The first difference found.
pub fn check(event: &Event) -> Result<(), Mismatch> {
    let kind = event.kind.as_ref();
    let shape = shape(kind).ok_or_else(|| Mismatch::UnknownType(kind.to_owned()))?;
    if !shape.sources.contains(&event.source.as_ref()) {
        return Err(Mismatch::Source {
            kind: kind.to_owned(),
            source: event.source.to_string(),
        });
    }
    if !shape.severities.contains(&event.severity) {
        return Err(Mismatch::Severity {
            kind: kind.to_owned(),
            severity: event.severity,
        });
    }
    for attr in shape.attributes.iter().filter(|a| a.when.is_none()) {
        if event.attributes.get(attr.key).is_none() {
            return Err(Mismatch::Missing {
                kind: kind.to_owned(),
                key: attr.key,
            });
        }
    }
    for attribute in &event.attributes {
        let (key, value) = (attribute.key.as_ref(), &attribute.value);
        let expected = match shape.attributes.iter().find(|a| a.key == key) {
            Some(attr) => attr.kind,
            None if shape.more == More::Any => continue,
            None => match shape.more {
                More::Prefixed(prefix) if key.starts_with(prefix) => Kind::Str,
                More::AnyText => Kind::Str,
                _ => {
                    return Err(Mismatch::Unknown {
                        kind: kind.to_owned(),
                        key: key.to_owned(),
                    });
                }
            },
        };
        let actual = match value {
            AttrValue::Str(_) => Kind::Str,
            AttrValue::Int(_) => Kind::Int,
            AttrValue::Float(_) => Kind::Float,
            AttrValue::Bool(_) => Kind::Bool,
        };
        if actual != expected {
            return Err(Mismatch::WrongKind {
                kind: kind.to_owned(),
                key: key.to_owned(),
                expected,
            });
        }
    }
    Ok(())
}

/// docs/event-types.md's generated part: one section per collector, one table per type.
#[must_use]
pub fn render() -> String {
    use std::fmt::Write as _;
    let mut sources: Vec<&str> = Vec::new();
    for shape in SHAPES {
        for source in shape.sources {
            if !sources.contains(source) {
                sources.push(source);
            }
        }
    }
    let mut out = String::new();
    for source in sources {
        let _ = writeln!(out, "### `{source}`\n");
        for shape in SHAPES.iter().filter(|s| s.sources[0] == source) {
            let also = &shape.sources[1..];
            let _ = writeln!(out, "#### `{}`\n", shape.kind);
            if !also.is_empty() {
                let names: Vec<String> = also.iter().map(|s| format!("`{s}`")).collect();
                let _ = writeln!(out, "Also emitted by {}.\n", names.join(", "));
            }
            let severities: Vec<&str> = shape.severities.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(
                out,
                "- severity: {} ({})",
                severities.join(" or "),
                shape.severity_rule
            );
            let _ = writeln!(out, "- entities: {}", shape.entities);
            match shape.more {
                More::Nothing => {}
                More::Prefixed(prefix) => {
                    let _ = writeln!(out, "- also text attributes `{prefix}*`");
                }
                More::AnyText => {
                    let _ = writeln!(out, "- also any text attribute");
                }
                More::Any => {
                    let _ = writeln!(
                        out,
                        "- also the application's own attributes, under their own names and types"
                    );
                }
            }
            if shape.attributes.is_empty() {
                out.push('\n');
                continue;
            }
            let _ = writeln!(out, "\n| attribute | type | present | meaning |");
            let _ = writeln!(out, "|---|---|---|---|");
            for attr in shape.attributes {
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} |",
                    attr.key,
                    match attr.kind {
                        Kind::Str => "string",
                        Kind::Int => "integer",
                        Kind::Float => "float",
                        Kind::Bool => "boolean",
                    },
                    attr.when.unwrap_or("always"),
                    attr.meaning
                );
            }
            out.push('\n');
        }
    }
    out
}

const fn a(key: &'static str, kind: Kind, meaning: &'static str) -> Attr {
    Attr {
        key,
        kind,
        when: None,
        meaning,
    }
}

const fn opt(key: &'static str, kind: Kind, when: &'static str, meaning: &'static str) -> Attr {
    Attr {
        key,
        kind,
        when: Some(when),
        meaning,
    }
}

use Kind::{Bool, Float, Int, Str};
use Severity::{Critical, Debug, Error, Info, Warning};

const TCP: [Attr; 6] = [
    a("family", Str, "`ipv4` or `ipv6`"),
    a("saddr", Str, "local address"),
    a("sport", Int, "local port"),
    a("daddr", Str, "remote address"),
    a("dport", Int, "remote port"),
    a(
        "duration_us",
        Int,
        "connect: the handshake; close and connect_failed: since established or since the SYN; accept: 0, or until accept() returned with `accept_syscalls`",
    ),
];

/// The TCP attributes with the state change, of connects and closes.
const TCP_STATE: [Attr; 8] = [
    TCP[0],
    TCP[1],
    TCP[2],
    TCP[3],
    TCP[4],
    TCP[5],
    a("old_state", Str, "TCP state before"),
    a("new_state", Str, "TCP state after"),
];

const BLOCK_LATENCY: [Attr; 11] = [
    a("device", Str, "the block device, e.g. `vda`"),
    a("op", Str, "`read`, `write`, `flush`, `discard` or `other`"),
    a(
        "p50_us",
        Int,
        "the interval's median request latency (lower edge of its log2 bucket: the true value is under twice it)",
    ),
    a("p99_us", Int, "its 99th percentile, likewise"),
    a("p999_us", Int, "its 99.9th percentile, likewise"),
    a("max_us", Int, "its slowest request's bucket, likewise"),
    a("requests", Int, "requests completed in the interval"),
    a("bytes", Int, "their bytes"),
    a("threshold_us", Int, "`latency_threshold`"),
    opt(
        "top_cgroup_id",
        Int,
        "a spike whose slow requests came from a known cgroup",
        "the cgroup that issued most of them",
    ),
    opt(
        "top_container_id",
        Str,
        "that cgroup is a container's",
        "its container",
    ),
];

const CGROUP_ENTITIES: &str =
    "node; container_id and pod_uid, or unit, from the cgroup's path (no process)";
const MEMORY_GROWTH: [Attr; 8] = [
    a("cgroup", Str, "the cgroup's path in the memory hierarchy"),
    a(
        "growth_bytes_per_minute",
        Int,
        "the slope of the line fitted through the window's anonymous memory",
    ),
    a("r_squared", Float, "how well the line fits, 0 to 1"),
    a("anon_bytes", Int, "anonymous memory now"),
    a("usage_bytes", Int, "all memory charged to the cgroup now"),
    a("window_seconds", Int, "how far back the line is fitted"),
    opt(
        "limit_bytes",
        Int,
        "the cgroup has a memory limit",
        "the limit",
    ),
    opt(
        "seconds_to_limit",
        Int,
        "it has a limit and grows",
        "when usage reaches the limit at this slope",
    ),
];
const PAGE_FAULTS: [Attr; 3] = [
    a("cgroup", Str, "the cgroup's path in the memory hierarchy"),
    a(
        "major_faults_per_second",
        Int,
        "major page faults per second over the last interval",
    ),
    a("threshold", Int, "`major_faults_per_second` of the options"),
];

const RUNQUEUE_ENTITIES: &str =
    "node and cgroup_id (cgroup v2), with container_id when the cgroup is a container's";
const RUNQUEUE: [Attr; 5] = [
    a(
        "p50_us",
        Int,
        "the interval's median wait on a run queue (lower edge of its log2 bucket: the true value is under twice it)",
    ),
    a("p99_us", Int, "its 99th percentile, likewise"),
    a("max_us", Int, "its longest wait's bucket, likewise"),
    a("waits", Int, "waits measured in the interval"),
    a("threshold_us", Int, "`runqueue_threshold`"),
];
const THROTTLING: [Attr; 7] = [
    a("cgroup", Str, "the cgroup's path in the cpu hierarchy"),
    a(
        "throttled_ratio",
        Float,
        "share of the interval's CFS periods in which it was throttled",
    ),
    a(
        "throttled_periods",
        Int,
        "periods throttled in the interval",
    ),
    a("periods", Int, "periods in the interval"),
    a("throttled_ms", Int, "time it was held back in the interval"),
    a("quota_us", Int, "its CPU limit per period"),
    a("period_us", Int, "the period"),
];
const PRESSURE: [Attr; 6] = [
    a("resource", Str, "`cpu`, `memory` or `io`"),
    opt(
        "cgroup",
        Str,
        "a cgroup's pressure, not the node's",
        "the cgroup's path in the cgroup v2 hierarchy",
    ),
    a(
        "some_avg10",
        Float,
        "percent of the last 10 s in which some task stalled on it",
    ),
    a("some_avg60", Float, "the same over 60 s"),
    a(
        "full_avg10",
        Float,
        "percent of the last 10 s in which all tasks stalled on it",
    ),
    a("threshold", Float, "`pressure_threshold`"),
];

const KERNEL_ENTITIES: &str =
    "node, pid, comm, cgroup_id; container_id and pod_uid (or unit) from the process's cgroup";
const POD_ENTITIES: &str = "node, pod_uid, pod_namespace, pod_name, workload_kind, workload_name";
const POD_SERVICE: Attr = opt(
    keys::SERVICE_NAME,
    Str,
    "the pod backs a service (EndpointSlices)",
    "the service",
);
const POD_IP: Attr = opt(
    keys::POD_IP,
    Str,
    "the pod has an IP",
    "the pod's IP address",
);
const DNS: [Attr; 5] = [
    a("query_name", Str, "the name asked"),
    a("query_type", Str, "`A`, `AAAA`, `SRV`, ... or `TYPE<n>`"),
    a("transaction_id", Int, "the DNS id"),
    a("server", Str, "the server's address"),
    a("client", Str, "the client's address and port, `ip:port`"),
];
const NODE_CONDITION: [Attr; 3] = [
    a(
        "condition",
        Str,
        "`Ready`, `MemoryPressure`, `DiskPressure` or `PIDPressure`",
    ),
    a("status", Str, "`True`, `False` or `Unknown`"),
    a("previous_status", Str, "before the change"),
];
const UNIT_STATE: [Attr; 4] = [
    a("unit_type", Str, "`service`, `socket`, `timer`, ..."),
    a("active_state", Str, "systemd's ActiveState"),
    a("sub_state", Str, "systemd's SubState"),
    opt(
        "previous_state",
        Str,
        "not on a snapshot",
        "the ActiveState before",
    ),
];
const SERVICE_FAILURE: [Attr; 4] = [
    opt(
        "result",
        Str,
        "a service",
        "systemd's Result, e.g. `exit-code`, `signal`, `watchdog`",
    ),
    opt("n_restarts", Int, "a service", "restarts so far"),
    opt(
        "exit_code",
        Str,
        "the main process ended",
        "`exited`, `killed` or `dumped`",
    ),
    opt(
        "exit_status",
        Int,
        "the main process ended",
        "its exit status or signal",
    ),
];

/// A service's state change with how its main process ended (stopped, reloading).
const UNIT_CHANGE: [Attr; 8] = [
    UNIT_STATE[0],
    UNIT_STATE[1],
    UNIT_STATE[2],
    UNIT_STATE[3],
    SERVICE_FAILURE[0],
    SERVICE_FAILURE[1],
    SERVICE_FAILURE[2],
    SERVICE_FAILURE[3],
];

/// Every event type a collector emits.
pub static SHAPES: &[Shape] = &[
    Shape {
        kind: "process.exec",
        sources: &["kernel"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[
            a("ppid", Int, "parent pid"),
            a("uid", Int, "user id"),
            a("filename", Str, "the executed file"),
            a("args", Str, "arguments, space-separated, at most 255 bytes"),
        ],
        more: More::Nothing,
        entities: KERNEL_ENTITIES,
    },
    Shape {
        kind: "process.exit",
        sources: &["kernel"],
        severities: &[Info, Warning],
        severity_rule: "warning when killed by a signal",
        attributes: &[
            a("ppid", Int, "parent pid"),
            a("exit_code", Int, "exit status"),
            a("signal", Int, "the killing signal, 0 if none"),
        ],
        more: More::Nothing,
        entities: KERNEL_ENTITIES,
    },
    Shape {
        kind: "net.tcp.connect",
        sources: &["network"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &TCP_STATE,
        more: More::Nothing,
        entities: "as the kernel collector's; the process that called connect()",
    },
    Shape {
        kind: "net.tcp.accept",
        sources: &["network"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &TCP,
        more: More::Nothing,
        entities: "as the kernel collector's; the process that listens on the port (saddr:sport)",
    },
    Shape {
        kind: "net.tcp.close",
        sources: &["network"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &TCP_STATE,
        more: More::Nothing,
        entities: "as the kernel collector's",
    },
    Shape {
        kind: "net.tcp.connect_failed",
        sources: &["network"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            TCP[0],
            TCP[1],
            TCP[2],
            TCP[3],
            TCP[4],
            TCP[5],
            a("old_state", Str, "TCP state before"),
            a("new_state", Str, "TCP state after"),
            a(
                "error",
                Str,
                "`ECONNREFUSED`, `ETIMEDOUT`, `EHOSTUNREACH`, ...",
            ),
        ],
        more: More::Nothing,
        entities: "as the kernel collector's; the process that called connect()",
    },
    Shape {
        kind: "dns.query",
        sources: &["dns"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &DNS,
        more: More::Nothing,
        entities: "as the kernel collector's for queries sent from this host; else node only",
    },
    Shape {
        kind: "dns.response",
        sources: &["dns"],
        severities: &[Info, Warning],
        severity_rule: "warning on `SERVFAIL` and `NXDOMAIN`",
        attributes: &[
            DNS[0],
            DNS[1],
            DNS[2],
            DNS[3],
            DNS[4],
            a(
                "rcode",
                Str,
                "`NOERROR`, `SERVFAIL`, `NXDOMAIN`, `REFUSED`, ...",
            ),
            a("answers", Int, "answer records"),
            opt(
                "latency_us",
                Int,
                "its query was seen",
                "time since the query",
            ),
        ],
        more: More::Nothing,
        entities: "the querying process's, when its query was seen; else node only",
    },
    Shape {
        kind: "memory.oom_kill",
        sources: &["memory"],
        severities: &[Critical],
        severity_rule: "always critical",
        attributes: &[
            a("victim_pid", Int, "the killed process"),
            a("uid", Int, "its user id"),
            a("total_vm_bytes", Int, "its virtual memory"),
            a("anon_rss_bytes", Int, "its anonymous resident memory"),
            a("file_rss_bytes", Int, "its file-backed resident memory"),
            a("shmem_rss_bytes", Int, "its shared resident memory"),
            a("oom_score_adj", Int, "its OOM score adjustment"),
            a("killer_pid", Int, "the process that ran the OOM killer"),
            a("killer_comm", Str, "its command"),
        ],
        more: More::Nothing,
        entities: "the victim's, as the kernel collector's",
    },
    Shape {
        kind: "process.signal",
        sources: &["runtime-signals"],
        severities: &[Info, Warning],
        severity_rule: "info for SIGTERM (how a stop begins), warning for the other watched signals",
        attributes: &[
            a("signal", Int, "the signal's number"),
            a("signal_name", Str, "its name, e.g. `SIGKILL`"),
            a(
                "code",
                Int,
                "`si_code`: 0 or below sent by a process (kill, tgkill, sigqueue), above 0 by the kernel",
            ),
            a(
                "from_kernel",
                Bool,
                "the kernel sent it (a fault, the OOM killer), not a process",
            ),
            a(
                "sender_pid",
                Int,
                "the process running when the signal was sent",
            ),
            a("sender_comm", Str, "its command"),
            a("sender_cgroup_id", Int, "its cgroup v2 id"),
            opt(
                "sender_container_id",
                Str,
                "it runs in a container",
                "its container",
            ),
        ],
        more: More::Nothing,
        entities: "the target's (pid, comm, cgroup, container), as the kernel collector's",
    },
    Shape {
        kind: "process.core_dump",
        sources: &["runtime-signals"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("signal", Int, "the signal that dumped core"),
            a("signal_name", Str, "its name"),
        ],
        more: More::Nothing,
        entities: KERNEL_ENTITIES,
    },
    Shape {
        kind: "block.latency_spike",
        sources: &["storage-io"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &BLOCK_LATENCY,
        more: More::Nothing,
        entities: "node (a device's)",
    },
    Shape {
        kind: "block.latency_recovered",
        sources: &["storage-io"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &BLOCK_LATENCY,
        more: More::Nothing,
        entities: "node (a device's)",
    },
    Shape {
        kind: "block.io_error",
        sources: &["storage-io"],
        severities: &[Error],
        severity_rule: "always error",
        attributes: &[
            a("device", Str, "the block device, e.g. `vda`"),
            a("op", Str, "`read`, `write`, `flush`, `discard` or `other`"),
            a("sector", Int, "the request's first sector"),
            a("bytes", Int, "the request's size"),
            a(
                "error",
                Str,
                "the errno the block layer returned, e.g. `EIO`",
            ),
            a(
                "issuer_cgroup_id",
                Int,
                "the cgroup of the task that issued the request (0 when unknown)",
            ),
        ],
        more: More::Nothing,
        entities: "node (a device's)",
    },
    Shape {
        kind: "fs.slow_fsync",
        sources: &["storage-io"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("device", Str, "the file system's device"),
            a("inode", Int, "the file's inode"),
            a("datasync", Bool, "fdatasync (data only) rather than fsync"),
            a("duration_us", Int, "how long it took"),
            a("result", Int, "its return value (0 or a negative errno)"),
        ],
        more: More::Nothing,
        entities: KERNEL_ENTITIES,
    },
    Shape {
        kind: "memory.growth",
        sources: &["memory-leak-hunter"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &MEMORY_GROWTH,
        more: More::Nothing,
        entities: CGROUP_ENTITIES,
    },
    Shape {
        kind: "memory.growth_stopped",
        sources: &["memory-leak-hunter"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &MEMORY_GROWTH,
        more: More::Nothing,
        entities: CGROUP_ENTITIES,
    },
    Shape {
        kind: "memory.page_fault_storm",
        sources: &["memory-leak-hunter"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &PAGE_FAULTS,
        more: More::Nothing,
        entities: CGROUP_ENTITIES,
    },
    Shape {
        kind: "memory.page_fault_storm_ended",
        sources: &["memory-leak-hunter"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &PAGE_FAULTS,
        more: More::Nothing,
        entities: CGROUP_ENTITIES,
    },
    Shape {
        kind: "cpu.runqueue_latency",
        sources: &["resource-starvation"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &RUNQUEUE,
        more: More::Nothing,
        entities: RUNQUEUE_ENTITIES,
    },
    Shape {
        kind: "cpu.runqueue_latency_recovered",
        sources: &["resource-starvation"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &RUNQUEUE,
        more: More::Nothing,
        entities: RUNQUEUE_ENTITIES,
    },
    Shape {
        kind: "cpu.throttled",
        sources: &["resource-starvation"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &THROTTLING,
        more: More::Nothing,
        entities: CGROUP_ENTITIES,
    },
    Shape {
        kind: "cpu.throttled_ended",
        sources: &["resource-starvation"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &THROTTLING,
        more: More::Nothing,
        entities: CGROUP_ENTITIES,
    },
    Shape {
        kind: "pressure.high",
        sources: &["resource-starvation"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &PRESSURE,
        more: More::Nothing,
        entities: "node; for a cgroup's pressure, its container_id and pod_uid, or unit, from its path",
    },
    Shape {
        kind: "pressure.relieved",
        sources: &["resource-starvation"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &PRESSURE,
        more: More::Nothing,
        entities: "node; for a cgroup's pressure, its container_id and pod_uid, or unit, from its path",
    },
    Shape {
        kind: "syscall.error",
        sources: &["syscall-errors"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[
            a("syscall", Str, "its name, e.g. `openat`"),
            a("errno", Str, "the error, e.g. `ENOENT`"),
            a("count", Int, "failures since the last report"),
            a("first_seen_unix_nano", Int, "the first failure of this key"),
        ],
        more: More::Nothing,
        entities: "as the kernel collector's; the event time is the last failure",
    },
    Shape {
        kind: "container.exit",
        sources: &["kubeapi", "cri", "cri-ebpf"],
        severities: &[Info, Error],
        severity_rule: "error when the exit code is not 0",
        attributes: &[
            opt(
                "container",
                Str,
                "from `kubeapi` and `cri`",
                "the container's name in the pod",
            ),
            opt(
                "exit_code",
                Int,
                "always, except from `cri-ebpf` when it did not see the last process exit",
                "its exit code (128 + the signal for a killed one)",
            ),
            a(
                "reason",
                Str,
                "e.g. `Error`, `OOMKilled`, `Completed` (`Unknown` when the exit was not seen)",
            ),
            opt(
                "cgroup",
                Str,
                "from `cri-ebpf`",
                "the container's cgroup v2 path",
            ),
            opt(
                "runtime_comm",
                Str,
                "from `cri-ebpf`",
                "the process that removed the cgroup",
            ),
            opt(
                "exit_pid",
                Int,
                "from `cri-ebpf`, when the exit was seen",
                "the container's last process",
            ),
            opt(
                "attempt",
                Int,
                "from `cri`",
                "the runtime's restart attempt",
            ),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: "the pod's (kubeapi: with its workload), and the dead container's container_id; the event time is when it finished",
    },
    Shape {
        kind: "k8s.pod.restart",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("container", Str, "the container's name"),
            a("restart_count", Int, "restarts so far"),
            a(
                "reason",
                Str,
                "why it last ended, e.g. `OOMKilled`; empty if unknown",
            ),
            a("exit_code", Int, "how it last ended; 0 if unknown"),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: "the pod's, and the new container's container_id",
    },
    Shape {
        kind: "k8s.pod.backoff",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("container", Str, "the container's name"),
            a("reason", Str, "`CrashLoopBackOff`"),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.pod.image_pull_backoff",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("container", Str, "the container's name"),
            a("reason", Str, "`ImagePullBackOff` or `ErrImagePull`"),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.container.waiting",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("container", Str, "the container's name"),
            a(
                "reason",
                Str,
                "the waiting reason, e.g. `CreateContainerConfigError`",
            ),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.pod.evicted",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[a("reason", Str, "`Evicted`"), POD_SERVICE, POD_IP],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.pod.phase",
        sources: &["kubeapi"],
        severities: &[Info, Warning],
        severity_rule: "warning when the new phase is `Failed`",
        attributes: &[
            a(
                "phase",
                Str,
                "`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`",
            ),
            a("previous_phase", Str, "before the change"),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.pod.not_ready",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[POD_SERVICE, POD_IP],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.pod.ready",
        sources: &["kubeapi"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[POD_SERVICE, POD_IP],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: POD_ENTITIES,
    },
    Shape {
        kind: "k8s.node.ready",
        sources: &["kubeapi"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &NODE_CONDITION,
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "k8s.node.not_ready",
        sources: &["kubeapi"],
        severities: &[Critical],
        severity_rule: "always critical",
        attributes: &NODE_CONDITION,
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "k8s.node.pressure",
        sources: &["kubeapi"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &NODE_CONDITION,
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "k8s.node.pressure_relieved",
        sources: &["kubeapi"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &NODE_CONDITION,
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "k8s.event",
        sources: &["kubeapi"],
        severities: &[Info, Warning],
        severity_rule: "warning for a Warning Event object",
        attributes: &[
            a("reason", Str, "the Event's reason, e.g. `FailedScheduling`"),
            a("count", Int, "how often it happened"),
            a("involved_kind", Str, "the object it is about, e.g. `Pod`"),
            opt(
                "source",
                Str,
                "the Event names its component",
                "the reporting component",
            ),
            POD_SERVICE,
            POD_IP,
        ],
        more: More::Prefixed(keys::POD_LABEL_PREFIX),
        entities: "the pod's when it is about a known pod; else node",
    },
    Shape {
        kind: "kubelet.node.pressure",
        sources: &["kubelet"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("resource", Str, "`memory`, `fs` or `cpu`"),
            a("ratio", Float, "share in use, 0..1"),
            a("limit_ratio", Float, "the configured line"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "kubelet.node.pressure_relieved",
        sources: &["kubelet"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[
            a("resource", Str, "`memory`, `fs` or `cpu`"),
            a("ratio", Float, "share in use, 0..1"),
            a("limit_ratio", Float, "the configured line"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "kubelet.pod.memory_near_limit",
        sources: &["kubelet"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("memory_working_set_bytes", Float, "the pod's working set"),
            a(
                "memory_limit_bytes",
                Float,
                "the sum of its containers' limits",
            ),
            a("ratio", Float, "working set / limit"),
        ],
        more: More::Nothing,
        entities: "node, pod_uid, pod_namespace, pod_name",
    },
    Shape {
        kind: "kubelet.container.restart",
        sources: &["kubelet"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("container", Str, "the container's name"),
            a("restart_count", Int, "restarts so far"),
            a("reason", Str, "why it last ended; empty if unknown"),
            a("exit_code", Int, "how it last ended; 0 if unknown"),
        ],
        more: More::Nothing,
        entities: "node, pod_uid, pod_namespace, pod_name",
    },
    Shape {
        kind: "container.created",
        sources: &["cri", "cri-ebpf"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[
            opt("container", Str, "from `cri`", "the container's name"),
            opt(
                "attempt",
                Int,
                "from `cri`",
                "the runtime's restart attempt",
            ),
            opt(
                "cgroup",
                Str,
                "from `cri-ebpf`",
                "the container's cgroup v2 path",
            ),
            opt(
                "runtime_comm",
                Str,
                "from `cri-ebpf`",
                "the process that made the cgroup, e.g. `runc`",
            ),
        ],
        more: More::Nothing,
        entities: "node, container_id, pod_uid; pod_namespace, pod_name from `cri`; cgroup_id from `cri-ebpf`",
    },
    Shape {
        kind: "container.started",
        sources: &["cri"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[
            a("container", Str, "the container's name"),
            a("attempt", Int, "the runtime's restart attempt"),
        ],
        more: More::Nothing,
        entities: "node, container_id, pod_uid, pod_namespace, pod_name",
    },
    Shape {
        kind: "etcd.healthy",
        sources: &["etcd-metrics"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &[a("endpoint", Str, "the member scraped")],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.unhealthy",
        sources: &["etcd-metrics"],
        severities: &[Critical],
        severity_rule: "always critical",
        attributes: &[a("endpoint", Str, "the member scraped")],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.unreachable",
        sources: &["etcd-metrics"],
        severities: &[Critical],
        severity_rule: "always critical",
        attributes: &[a("endpoint", Str, "the member scraped")],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.no_leader",
        sources: &["etcd-metrics"],
        severities: &[Critical],
        severity_rule: "always critical",
        attributes: &[a("endpoint", Str, "the member scraped")],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.leader_changed",
        sources: &["etcd-metrics"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("endpoint", Str, "the member scraped"),
            a("leader_changes", Float, "changes since the last scrape"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.proposals_failed",
        sources: &["etcd-metrics"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("endpoint", Str, "the member scraped"),
            a("proposals_failed", Float, "failures since the last scrape"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.slow_fsync",
        sources: &["etcd-metrics"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("endpoint", Str, "the member scraped"),
            a("p99_seconds", Float, "WAL fsync p99 over the interval"),
            a("limit_seconds", Float, "the configured line"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.slow_commit",
        sources: &["etcd-metrics"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("endpoint", Str, "the member scraped"),
            a("p99_seconds", Float, "backend commit p99 over the interval"),
            a("limit_seconds", Float, "the configured line"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "etcd.db_size_near_quota",
        sources: &["etcd-metrics"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            a("endpoint", Str, "the member scraped"),
            a("db_size_bytes", Float, "the database's size"),
            a("quota_bytes", Float, "its quota"),
            a("ratio", Float, "size / quota"),
        ],
        more: More::Nothing,
        entities: "node",
    },
    Shape {
        kind: "systemd.unit.failed",
        sources: &["systemd"],
        severities: &[Error],
        severity_rule: "always error",
        attributes: &[
            UNIT_STATE[0],
            UNIT_STATE[1],
            UNIT_STATE[2],
            UNIT_STATE[3],
            opt(
                "snapshot",
                Bool,
                "already failed when the collector started",
                "`true`",
            ),
            SERVICE_FAILURE[0],
            SERVICE_FAILURE[1],
            SERVICE_FAILURE[2],
            SERVICE_FAILURE[3],
        ],
        more: More::Nothing,
        entities: "node, unit; pid: the main process, when there is one",
    },
    Shape {
        kind: "systemd.unit.started",
        sources: &["systemd"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &UNIT_STATE,
        more: More::Nothing,
        entities: "node, unit; pid: the main process, when there is one",
    },
    Shape {
        kind: "systemd.unit.stopped",
        sources: &["systemd"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &UNIT_CHANGE,
        more: More::Nothing,
        entities: "node, unit; pid: the main process, when there is one",
    },
    Shape {
        kind: "systemd.unit.reloading",
        sources: &["systemd"],
        severities: &[Info],
        severity_rule: "always info",
        attributes: &UNIT_CHANGE,
        more: More::Nothing,
        entities: "node, unit; pid: the main process, when there is one",
    },
    Shape {
        kind: "systemd.unit.restarted",
        sources: &["systemd"],
        severities: &[Warning],
        severity_rule: "always warning",
        attributes: &[
            UNIT_STATE[0],
            UNIT_STATE[1],
            UNIT_STATE[2],
            a("n_restarts", Int, "restarts so far"),
        ],
        more: More::Nothing,
        entities: "node, unit",
    },
    Shape {
        kind: "systemd.job.finished",
        sources: &["systemd"],
        severities: &[Info, Warning],
        severity_rule: "info for `canceled` and `skipped`, else warning",
        attributes: &[
            UNIT_STATE[0],
            UNIT_STATE[1],
            UNIT_STATE[2],
            a("job_id", Int, "systemd's job id"),
            a(
                "result",
                Str,
                "`failed`, `timeout`, `dependency`, `canceled`, `skipped`",
            ),
        ],
        more: More::Nothing,
        entities: "node, unit",
    },
    Shape {
        kind: "journal.entry",
        sources: &["journald"],
        severities: &[Debug, Info, Warning, Error, Critical],
        severity_rule: "from PRIORITY: 0-2 critical, 3 error, 4 warning, 5-6 info, 7 debug",
        attributes: &[],
        more: More::AnyText,
        entities: "node, pid, comm, unit, container_id; the pod from a kubelet-made CONTAINER_NAME",
    },
    Shape {
        kind: "journal.unit_error",
        sources: &["journald"],
        severities: &[Error, Critical],
        severity_rule: "an entry of priority 3 or worse with a unit: 0-2 critical, 3 error",
        attributes: &[],
        more: More::AnyText,
        entities: "as `journal.entry`'s; always a unit",
    },
    Shape {
        kind: "app.span",
        sources: &["otel"],
        severities: &[Info, Warning, Error],
        severity_rule: "error for a span whose status is an error, warning for one kept as slow (`slow_threshold`), info for one kept by `sample_ratio`",
        attributes: &[
            a("span.name", Str, "the span's name, e.g. `GET /cart`"),
            a(
                "span.kind",
                Str,
                "`server`, `client`, `producer`, `consumer` or `internal`",
            ),
            a("otel.status_code", Str, "`error`, `ok` or `unset`"),
            opt(
                "otel.status_description",
                Str,
                "the status has a message",
                "the status message",
            ),
            a(
                "service.name",
                Str,
                "the resource's `service.name` (`unknown_service` when it has none)",
            ),
            a(
                "duration_ms",
                Float,
                "from start to end; the event's time is the end",
            ),
            a(
                "kept",
                Str,
                "why it became an event: `error`, `slow` or `sampled`",
            ),
            opt(
                "attributes_dropped",
                Int,
                "some were not kept",
                "the span's own attributes not kept: past `max_attributes`, or named like one above",
            ),
        ],
        more: More::Any,
        entities: "the sender's: node, pid, comm and cgroup id from `process.pid` or the client socket's process, container and pod from the resource (`container.id`, `k8s.pod.uid`, `k8s.pod.name`, `k8s.namespace.name`), the process's cgroup or the pod IP; the trace id, span id and parent span id are the span's own",
    },
    Shape {
        kind: "app.log",
        sources: &["otel"],
        severities: &[Debug, Info, Warning, Error, Critical],
        severity_rule: "from the severity number: TRACE and DEBUG debug, INFO (or none) info, WARN warning, ERROR error, FATAL critical; records under `min_severity` are not kept",
        attributes: &[
            a(
                "service.name",
                Str,
                "the resource's `service.name` (`unknown_service` when it has none)",
            ),
            a("severity_number", Int, "OpenTelemetry's 0-24"),
            opt(
                "severity_text",
                Str,
                "the record has one",
                "as the application wrote it, e.g. `ERROR`",
            ),
            opt("event.name", Str, "the record is a named event", "its name"),
            opt(
                "attributes_dropped",
                Int,
                "some were not kept",
                "the record's own attributes not kept",
            ),
        ],
        more: More::Any,
        entities: "as `app.span`'s; the message is the body, and the trace id and parent span id are the record's trace context when it has one",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_described_once_and_completely() {
        let mut seen = std::collections::HashSet::new();
        for shape in SHAPES {
            assert!(seen.insert(shape.kind), "{} twice", shape.kind);
            assert!(!shape.sources.is_empty() && !shape.severities.is_empty());
            let mut keys = std::collections::HashSet::new();
            for attr in shape.attributes {
                assert!(keys.insert(attr.key), "{}: {} twice", shape.kind, attr.key);
            }
        }
    }

    #[test]
    fn docs_event_types_md_is_rendered_from_the_table() {
        const MARK: &str = "<!-- generated from src/event/schema.rs -->\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/event-types.md");
        let doc = std::fs::read_to_string(path).expect("docs/event-types.md");
        let at = doc.find(MARK).expect("the generated part's marker") + MARK.len();
        let rendered = render();
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, format!("{}{rendered}", &doc[..at])).expect("rewrite");
            return;
        }
        assert!(
            doc[at..] == rendered,
            "docs/event-types.md differs from src/event/schema.rs (UPDATE_GOLDEN=1 rewrites it)"
        );
    }

    #[test]
    fn check_names_each_kind_of_difference() {
        let mut event = Event::new(
            crate::event::EventId::from_u128(1),
            1,
            "dns.response",
            "dns",
        );
        for (key, value) in [
            ("query_name", "a.b"),
            ("query_type", "A"),
            ("server", "10.96.0.10"),
            ("client", "10.0.0.2:4000"),
            ("rcode", "SERVFAIL"),
        ] {
            event.attributes.push(key, value);
        }
        event.attributes.push("transaction_id", 7i64);
        event.attributes.push("answers", 0i64);
        event.severity = Severity::Warning;
        assert_eq!(check(&event), Ok(()));
        let mut bad = event.clone();
        bad.source = "kernel".into();
        assert!(matches!(check(&bad), Err(Mismatch::Source { .. })));
        let mut bad = event.clone();
        bad.severity = Severity::Critical;
        assert!(matches!(check(&bad), Err(Mismatch::Severity { .. })));
        let mut bad = event.clone();
        bad.attributes.push("latency_us", "slow");
        assert!(matches!(check(&bad), Err(Mismatch::WrongKind { .. })));
        let mut bad = event.clone();
        bad.attributes.push("memory_limit_bytes", 1i64);
        assert!(matches!(check(&bad), Err(Mismatch::Unknown { .. })));
        let mut bad = event;
        bad.kind = "dns.query".into();
        assert!(matches!(
            check(&bad),
            Err(Mismatch::Missing { .. } | Mismatch::Severity { .. } | Mismatch::Unknown { .. })
        ));
    }
}
