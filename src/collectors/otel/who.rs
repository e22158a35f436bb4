//! Who sent a span: the process, cgroup, container and pod an OTLP request came from, so
//! that its spans carry the same entities as the kernel's and Kubernetes' events.
//!
//! The request's resource attributes come first (`process.pid`, `container.id`,
//! `k8s.pod.uid`, `k8s.pod.name`, `k8s.namespace.name`), as the SDKs' resource detectors
//! and the Kubernetes attributes processors set them. What they leave out comes from the
//! connection: a pod IP the pod watch knows, or, for a connection from this host, the
//! process that owns the client socket (`/proc/net/tcp*`, then the process whose file
//! descriptors hold that socket). A process's cgroup id (the inode of its cgroup v2
//! directory, as the kernel collectors stamp it) and its container, pod or unit come from
//! `/proc/PID/cgroup`. Answers are cached, a bounded number of them.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};

use crate::bounded::Bounded;
use crate::collectors::ebpf::containers::{cgroup2_root, from_proc_cgroup};
use crate::event::Entities;
use crate::metadata::PodDirectory;

/// Answers cached of each kind.
const CACHED: usize = 4096;

/// The connection a request came over: the client's address and the address it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The client's end.
    pub peer: SocketAddr,
    /// This receiver's end.
    pub local: SocketAddr,
}

/// What one process is: its command, cgroup and container, pod or unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Process {
    comm: Arc<str>,
    cgroup_id: u64,
    container_id: Arc<str>,
    pod_uid: Arc<str>,
    unit: Arc<str>,
}

/// The resolver, with its caches.
#[derive(Debug)]
pub struct Who {
    directory: Arc<PodDirectory>,
    proc_root: PathBuf,
    cgroup2: Option<PathBuf>,
    processes: Bounded<u32, Process>,
    sockets: Bounded<(SocketAddr, u16), u32>,
}

impl Who {
    /// A resolver reading this host's `/proc` and the pods in `directory`.
    #[must_use]
    pub fn new(directory: Arc<PodDirectory>) -> Self {
        Self {
            directory,
            proc_root: "/proc".into(),
            cgroup2: cgroup2_root(),
            processes: Bounded::new(CACHED),
            sockets: Bounded::new(CACHED),
        }
    }

    /// The entities of a resource (its attributes) sent over `connection`; `node` is
    /// stamped when the resource names none.
    pub fn entities(
        &mut self,
        resource: &[KeyValue],
        connection: Option<Connection>,
        node: &Arc<str>,
    ) -> Entities {
        let mut e = Entities {
            node: Arc::clone(node),
            ..Entities::default()
        };
        for kv in resource {
            let Some(value) = kv.value.as_ref().and_then(|v| v.value.as_ref()) else {
                continue;
            };
            match (kv.key.as_str(), value) {
                ("process.pid", any_value::Value::IntValue(pid)) => {
                    e.pid = u32::try_from(*pid).unwrap_or(0);
                }
                ("process.pid", any_value::Value::StringValue(pid)) => {
                    e.pid = pid.parse().unwrap_or(0);
                }
                ("process.executable.name", any_value::Value::StringValue(name)) => {
                    e.comm = name.as_str().into();
                }
                ("container.id", any_value::Value::StringValue(id)) => {
                    e.container_id = id.as_str().into();
                }
                ("k8s.pod.uid", any_value::Value::StringValue(uid)) => {
                    e.pod_uid = uid.as_str().into();
                }
                ("k8s.pod.name", any_value::Value::StringValue(name)) => {
                    e.pod_name = name.as_str().into();
                }
                ("k8s.namespace.name", any_value::Value::StringValue(ns)) => {
                    e.pod_namespace = ns.as_str().into();
                }
                ("k8s.node.name", any_value::Value::StringValue(name)) if !name.is_empty() => {
                    e.node = name.as_str().into();
                }
                _ => {}
            }
        }
        let named = e.pid != 0 || !e.container_id.is_empty() || !e.pod_uid.is_empty();
        if !named && let Some(connection) = connection {
            self.by_connection(connection, &mut e);
        }
        if e.pid != 0 {
            let process = self.process(e.pid);
            if e.comm.is_empty() {
                e.comm = process.comm;
            }
            e.cgroup_id = process.cgroup_id;
            if e.container_id.is_empty() {
                e.container_id = process.container_id;
            }
            if e.pod_uid.is_empty() {
                e.pod_uid = process.pod_uid;
            }
            if e.container_id.is_empty() && e.pod_uid.is_empty() {
                e.unit = process.unit;
            }
        }
        e
    }

    /// Fills `e` from the connection: a pod's IP, or this host's client process.
    fn by_connection(&mut self, connection: Connection, e: &mut Entities) {
        let ip = connection.peer.ip();
        let local = ip.is_loopback() || ip == connection.local.ip();
        if !local {
            if let Some(pod) = self.directory.pod_by_ip(&ip.to_string()) {
                e.pod_uid = Arc::clone(&pod.uid);
                e.pod_name = Arc::clone(&pod.name);
                e.pod_namespace = Arc::clone(&pod.namespace);
            }
            return;
        }
        let key = (connection.peer, connection.local.port());
        if let Some(pid) = self.sockets.get(&key) {
            e.pid = *pid;
            return;
        }
        if let Some(pid) = self.socket_owner(connection) {
            self.sockets.insert(key, pid);
            e.pid = pid;
        }
    }

    /// The process that owns the client end of `connection`, when it runs on this host.
    fn socket_owner(&self, connection: Connection) -> Option<u32> {
        let inode = ["net/tcp", "net/tcp6"].iter().find_map(|table| {
            let text = std::fs::read_to_string(self.proc_root.join(table)).ok()?;
            socket_inode(&text, connection.peer, connection.local.port())
        })?;
        let wanted = format!("socket:[{inode}]");
        for entry in std::fs::read_dir(&self.proc_root).ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// What process `pid` is, cached; empty when it is gone.
    fn process(&mut self, pid: u32) -> Process {
        if let Some(known) = self.processes.get(&pid) {
            return known.clone();
        }
        let dir = self.proc_root.join(pid.to_string());
        let Ok(text) = std::fs::read_to_string(dir.join("cgroup")) else {
            return Process::default();
        };
        let identity = from_proc_cgroup(&text);
        // The v2 line (`0::/path`) names the directory whose inode the kernel's cgroup id is.
        let cgroup_id = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .zip(self.cgroup2.as_ref())
            .and_then(|(path, root)| {
                std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()
            })
            .map_or(0, |m| m.ino());
        let process = Process {
            comm: std::fs::read_to_string(dir.join("comm"))
                .map(|c| Arc::from(c.trim_end()))
                .unwrap_or_default(),
            cgroup_id,
            container_id: identity.container_id,
            pod_uid: identity.pod_uid,
            unit: identity.unit,
        };
        self.processes.insert(pid, process.clone());
        process
    }
}

/// The inode of the socket in a `/proc/net/tcp` table whose local end is `client` and whose
/// remote port is `server_port`.
fn socket_inode(table: &str, client: SocketAddr, server_port: u16) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (fields.get(1)?, fields.get(2)?, fields.get(9)?);
        let (address, port) = local.split_once(':')?;
        let (_, remote_port) = remote.split_once(':')?;
        let same = u16::from_str_radix(port, 16).ok()? == client.port()
            && u16::from_str_radix(remote_port, 16).ok()? == server_port
            && hex_address(address).is_some_and(|a| same_host(a, client.ip()));
        same.then(|| inode.parse().ok()).flatten()
    })
}

/// An address as `/proc/net/tcp*` writes it: the bytes of each 32-bit word little-endian.
fn hex_address(text: &str) -> Option<IpAddr> {
    let words: Vec<u32> = (0..text.len() / 8)
        .map(|i| u32::from_str_radix(&text[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    match words.as_slice() {
        [v4] => Some(IpAddr::from(v4.to_le_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (chunk, word) in bytes.chunks_mut(4).zip([a, b, c, d]) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            Some(IpAddr::from(bytes))
        }
        _ => None,
    }
}

/// Whether two addresses are one host's, counting an IPv4-mapped IPv6 address as its IPv4.
fn same_host(a: IpAddr, b: IpAddr) -> bool {
    let plain = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    plain(a) == plain(b)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    #[test]
    fn a_proc_net_tcp_line_names_the_client_socket() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:D431 0100007F:10E1 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n";
        let client: SocketAddr = "127.0.0.1:54321".parse().expect("address");
        assert_eq!(socket_inode(table, client, 4321), Some(4242));
        assert_eq!(
            socket_inode(table, client, 4317),
            None,
            "another server port"
        );
        let v6 = "sl local rem\n 0: 0000000000000000FFFF00000100007F:D431 0000000000000000FFFF00000100007F:10E1 01 0:0 0:0 0 0 0 77 1\n";
        assert_eq!(
            socket_inode(v6, client, 4321),
            Some(77),
            "a v4-mapped v6 socket"
        );
    }

    #[test]
    fn resource_attributes_come_before_the_connection() {
        let mut who = Who::new(PodDirectory::new());
        let node: Arc<str> = "node-a".into();
        let resource = [
            kv("service.name", any_value::Value::StringValue("cart".into())),
            kv(
                "container.id",
                any_value::Value::StringValue("c".repeat(64)),
            ),
            kv("k8s.pod.uid", any_value::Value::StringValue("u-1".into())),
            kv(
                "k8s.namespace.name",
                any_value::Value::StringValue("shop".into()),
            ),
        ];
        let connection = Connection {
            peer: "127.0.0.1:1".parse().expect("address"),
            local: "127.0.0.1:4317".parse().expect("address"),
        };
        let e = who.entities(&resource, Some(connection), &node);
        assert_eq!(&*e.container_id, "c".repeat(64));
        assert_eq!((&*e.pod_uid, &*e.pod_namespace), ("u-1", "shop"));
        assert_eq!(
            e.pid, 0,
            "named by its resource, the connection is not looked at"
        );
        assert_eq!(&*e.node, "node-a");
    }

    #[test]
    fn a_pid_brings_its_cgroup_and_command() {
        let mut who = Who::new(PodDirectory::new());
        let me = std::process::id();
        let resource = [kv("process.pid", any_value::Value::IntValue(i64::from(me)))];
        let e = who.entities(&resource, None, &"n".into());
        assert_eq!(e.pid, me);
        assert!(!e.comm.is_empty(), "the command is read from /proc");
        if cgroup2_root().is_some() {
            assert_ne!(
                e.cgroup_id, 0,
                "the cgroup v2 id is read from /proc and cgroupfs"
            );
        }
    }

    #[test]
    fn a_local_connection_is_traced_to_its_process() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(server.local_addr().expect("addr")).expect("connect");
        let (accepted, peer) = server.accept().expect("accept");
        let mut who = Who::new(PodDirectory::new());
        let connection = Connection {
            peer,
            local: accepted.local_addr().expect("addr"),
        };
        let e = who.entities(&[], Some(connection), &"n".into());
        assert_eq!(
            e.pid,
            std::process::id(),
            "this test process owns the client socket"
        );
        drop(client);
    }
}
