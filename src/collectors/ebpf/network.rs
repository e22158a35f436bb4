//! `network`: TCP connect, accept, close and failed connects from
//! `sock:inet_sock_set_state` (`ebpf/network.bpf.c`).
//!
//! An accepted connection belongs to the process that called `listen()` on its port, seen
//! by the same tracepoint; for a listener older than the probe, this side finds the owner
//! of the listening socket in /proc once per port. With `accept_syscalls` the exits of
//! `accept`/`accept4` name the exact accepting process instead, at the price of a syscall
//! tracepoint, which slows every syscall on the host (docs/benchmarks.md).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::names::errno_name;
use super::{Header, Reader, Ring, RingOptions, Stamp, attach_tracepoint, load};
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "network";

/// Options of the `network` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Bytes of the probe's ring buffer: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Name the accepting process from the exits of `accept`/`accept4` rather than the
    /// listening one; costs a syscall tracepoint.
    pub accept_syscalls: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: super::DEFAULT_RING_BUFFER_BYTES,
            accept_syscalls: false,
        }
    }
}

impl NetworkConfig {
    /// Appends problems to `problems`, each prefixed with `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        RingOptions {
            ring_buffer_bytes: self.ring_buffer_bytes,
        }
        .validate(prefix, problems);
    }
}

pub(super) const KIND_TCP_CONNECT: u32 = 10;
pub(super) const KIND_TCP_ACCEPT: u32 = 11;
pub(super) const KIND_TCP_CLOSE: u32 = 12;
pub(super) const KIND_TCP_FAILED: u32 = 13;
const AF_INET: u16 = 2;

impl CollectorConfig for NetworkConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Ebpf);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let exact = self.accept_syscalls;
            let flags = [("accept_from_syscalls", u8::from(exact))];
            let mut ebpf = load(object!("network"), self.ring_buffer_bytes, &flags)?;
            attach_tracepoint(&mut ebpf, "tapio_tcp_state", "sock", "inet_sock_set_state")?;
            if exact {
                attach_tracepoint(&mut ebpf, "tapio_accept4", "syscalls", "sys_exit_accept4")?;
                attach_tracepoint(&mut ebpf, "tapio_accept", "syscalls", "sys_exit_accept")?;
            }
            let ring = Ring::new(NAME, ebpf)?;
            let mut stamp = Stamp::new(NAME, &cx.node_name);
            let mut owners = ListenerOwners::default();
            Ok::<Running, Error>(Box::pin(ring.pump(context, move |record| {
                decode(&mut stamp, &mut owners, record)
            })))
        })
    }
}

/// `struct conn` of ebpf/network.bpf.c.
struct Conn {
    cgroup_id: u64,
    pid: u32,
    server: bool,
    family: u16,
    sport: u16,
    dport: u16,
    comm: String,
    saddr: IpAddr,
    daddr: IpAddr,
}

fn address(family: u16, bytes: &[u8]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        let mut octets = [0; 16];
        octets.copy_from_slice(&bytes[..16]);
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

fn read_conn(reader: &mut Reader<'_>) -> Option<Conn> {
    let _start = reader.u64()?;
    let cgroup_id = reader.u64()?;
    let pid = reader.u32()?;
    let family = reader.u16()?;
    let sport = reader.u16()?;
    let dport = reader.u16()?;
    let server = reader.take(2)?[0] != 0;
    let comm = reader.c_str(16)?;
    let saddr = reader.take(16)?;
    let daddr = reader.take(16)?;
    let _pad = reader.u32()?;
    Some(Conn {
        cgroup_id,
        pid,
        server,
        family,
        sport,
        dport,
        comm,
        saddr: address(family, saddr),
        daddr: address(family, daddr),
    })
}

/// Owners of listening ports older than the probe, found in /proc and kept a while.
#[derive(Debug, Default)]
pub(super) struct ListenerOwners {
    known: HashMap<u16, (Instant, Option<(u32, String)>)>,
}

/// How long a port's owner is trusted before /proc is read again.
const OWNER_TTL: Duration = Duration::from_secs(30);

impl ListenerOwners {
    fn owner(&mut self, port: u16) -> Option<(u32, String)> {
        if let Some((at, owner)) = self.known.get(&port)
            && at.elapsed() < OWNER_TTL
        {
            return owner.clone();
        }
        if self.known.len() > 4096 {
            self.known.retain(|_, (at, _)| at.elapsed() < OWNER_TTL);
        }
        let owner = listening_inode(port).and_then(owner_of_socket);
        self.known.insert(port, (Instant::now(), owner.clone()));
        owner
    }
}

/// The inode of the socket listening on TCP `port`, from /proc/net/tcp and tcp6.
fn listening_inode(port: u16) -> Option<u64> {
    let wanted = format!("{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "0A" && local.rsplit(':').next() == Some(wanted.as_str()) {
                return inode.parse().ok();
            }
        }
    }
    None
}

/// The process holding socket `inode` open, and its comm.
fn owner_of_socket(inode: u64) -> Option<(u32, String)> {
    let needle = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == needle.as_str())
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, comm.trim_end().to_owned()));
        }
    }
    None
}

/// Names of the states in `include/net/tcp_states.h`.
fn state_name(state: i32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

pub(super) fn decode(
    stamp: &mut Stamp,
    owners: &mut ListenerOwners,
    record: &[u8],
) -> Option<Event> {
    let mut reader = Reader::new(record);
    let header = Header::read(&mut reader)?;
    let mut conn = read_conn(&mut reader)?;
    if conn.pid == 0
        && conn.server
        && let Some((pid, comm)) = owners.owner(conn.sport)
    {
        conn.pid = pid;
        conn.comm = comm;
    }
    let duration_ns = reader.u64()?;
    let oldstate = reader.i32()?;
    let newstate = reader.i32()?;
    let err = reader.i32()?;
    let kind = match header.kind {
        KIND_TCP_CONNECT => "net.tcp.connect",
        KIND_TCP_ACCEPT => "net.tcp.accept",
        KIND_TCP_CLOSE => "net.tcp.close",
        KIND_TCP_FAILED => "net.tcp.connect_failed",
        _ => return None,
    };
    let mut event = stamp.event_at(header.ktime, kind, conn.pid, &conn.comm, conn.cgroup_id);
    let local = format!("{}:{}", conn.saddr, conn.sport);
    let remote = format!("{}:{}", conn.daddr, conn.dport);
    event.message = match header.kind {
        KIND_TCP_CONNECT => format!("{} connected {local} -> {remote}", conn.comm),
        KIND_TCP_ACCEPT => format!("{} accepted {remote} on {local}", conn.comm),
        KIND_TCP_CLOSE => format!("{} closed {local} <-> {remote}", conn.comm),
        _ => {
            event.severity = Severity::Warning;
            format!(
                "{} could not connect {local} -> {remote}: {}",
                conn.comm,
                errno_name(err.unsigned_abs())
            )
        }
    };
    let attributes = &mut event.attributes;
    attributes.set(
        "family",
        if conn.family == AF_INET {
            "ipv4"
        } else {
            "ipv6"
        },
    );
    attributes.set("saddr", conn.saddr.to_string());
    attributes.set("sport", u32::from(conn.sport));
    attributes.set("daddr", conn.daddr.to_string());
    attributes.set("dport", u32::from(conn.dport));
    attributes.set(
        "duration_us",
        i64::try_from(duration_ns / 1000).unwrap_or(i64::MAX),
    );
    if header.kind != KIND_TCP_ACCEPT {
        attributes.set("old_state", state_name(oldstate));
        attributes.set("new_state", state_name(newstate));
    }
    if header.kind == KIND_TCP_FAILED {
        attributes.set("error", errno_name(err.unsigned_abs()));
    }
    Some(event)
}
