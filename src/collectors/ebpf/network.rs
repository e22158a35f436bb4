//! `network`: TCP connect, accept, close and failed connects from
//! `sock:inet_sock_set_state` (`ebpf/network.bpf.c`); the accepting process comes from the
//! exit of `accept`/`accept4`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::names::errno_name;
use super::{Header, Reader, Ring, RingOptions, Stamp, attach_tracepoint, load, objects};
use crate::collectors::{Collector, Context, Error, Running};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "network";

/// Options of the `network` collector.
pub type NetworkConfig = RingOptions;

const KIND_TCP_CONNECT: u32 = 10;
const KIND_TCP_ACCEPT: u32 = 11;
const KIND_TCP_CLOSE: u32 = 12;
const KIND_TCP_FAILED: u32 = 13;
const AF_INET: u16 = 2;

/// The collector.
#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    node: String,
}

impl Network {
    /// A collector stamping `node` on its events.
    #[must_use]
    pub fn new(config: NetworkConfig, node: String) -> Self {
        Self { config, node }
    }
}

impl Collector for Network {
    fn name(&self) -> &'static str {
        NAME
    }

    fn start(self: Box<Self>, context: Context) -> Result<Running, Error> {
        let mut ebpf = load(objects::NETWORK, self.config.ring_buffer_bytes, &[])?;
        attach_tracepoint(&mut ebpf, "tapio_tcp_state", "sock", "inet_sock_set_state")?;
        attach_tracepoint(&mut ebpf, "tapio_accept4", "syscalls", "sys_exit_accept4")?;
        attach_tracepoint(&mut ebpf, "tapio_accept", "syscalls", "sys_exit_accept")?;
        let ring = Ring::new(NAME, ebpf)?;
        let mut stamp = Stamp::new(NAME, &self.node);
        Ok(Box::pin(
            ring.pump(context, move |record| decode(&mut stamp, record)),
        ))
    }
}

/// `struct conn` of ebpf/network.bpf.c.
struct Conn {
    cgroup_id: u64,
    pid: u32,
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
    let _server = reader.take(2)?;
    let comm = reader.c_str(16)?;
    let saddr = reader.take(16)?;
    let daddr = reader.take(16)?;
    let _pad = reader.u32()?;
    Some(Conn {
        cgroup_id,
        pid,
        family,
        sport,
        dport,
        comm,
        saddr: address(family, saddr),
        daddr: address(family, daddr),
    })
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

fn decode(stamp: &mut Stamp, record: &[u8]) -> Option<Event> {
    let mut reader = Reader::new(record);
    let header = Header::read(&mut reader)?;
    let conn = read_conn(&mut reader)?;
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
