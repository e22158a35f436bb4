//! `dns`: DNS queries and responses over UDP port 53, from a socket filter on a packet
//! socket (`ebpf/dns.bpf.c`). The filter copies each DNS packet into the ring buffer with
//! the sending process when the packet leaves this host; this side parses it and matches a
//! response to its query by (client address, client port, transaction id) for the latency.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

use serde::Deserialize;

use super::{Reader, Ring, RingOptions, Stamp, c_string, load};
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "dns";

/// Options of the `dns` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Bytes of the probe's ring buffer: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Queries awaiting a response that are remembered; beyond it the oldest are forgotten
    /// (their responses then carry no latency).
    pub max_pending: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: super::DEFAULT_RING_BUFFER_BYTES,
            max_pending: 65_536,
        }
    }
}

impl DnsConfig {
    /// Appends problems to `problems`, each prefixed with `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        RingOptions {
            ring_buffer_bytes: self.ring_buffer_bytes,
        }
        .validate(prefix, problems);
        if !(1..=10_000_000).contains(&self.max_pending) {
            problems.push(format!(
                "{prefix}.max_pending: must be from 1 to 10000000, got {}",
                self.max_pending
            ));
        }
    }
}

pub(super) const KIND_DNS_PACKET: u32 = 20;
pub(super) const ETH_P_IP: u16 = 0x0800;
pub(super) const PACKET_MAX: usize = 512;

impl CollectorConfig for DnsConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Ebpf);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mut ebpf = load(object!("dns"), self.ring_buffer_bytes, &[])?;
            let socket = packet_socket()?;
            let filter: &mut aya::programs::SocketFilter = ebpf
                .program_mut("tapio_dns")
                .ok_or_else(|| Error::unavailable("program tapio_dns is missing from the object"))?
                .try_into()
                .map_err(|error| Error::unavailable_by("socket filter", error))?;
            filter.load().map_err(|error| {
                Error::unavailable_by("socket filter: the verifier refused the program", error)
            })?;
            filter
                .attach(&socket)
                .map_err(|error| Error::unavailable_by("socket filter: cannot attach", error))?;
            let ring = Ring::new(NAME, ebpf)?;
            let mut tracker = Tracker {
                stamp: Stamp::new(NAME, &cx.node_name),
                pending: HashMap::new(),
                max_pending: self.max_pending,
                _socket: socket,
            };
            Ok::<Running, Error>(Box::pin(
                ring.pump(context, move |record| tracker.decode(record)),
            ))
        })
    }
}

/// A packet socket that sees every packet of every interface, in every direction, from the
/// network header on; the filter decides what is copied and keeps nothing on the socket.
fn packet_socket() -> Result<OwnedFd, Error> {
    rustix::net::socket(
        rustix::net::AddressFamily::PACKET,
        rustix::net::SocketType::DGRAM,
        Some(rustix::net::eth::ALL),
    )
    .map_err(|error| {
        Error::unavailable_by("cannot open a packet socket (needs CAP_NET_RAW)", error)
    })
}

/// A query seen and not yet answered.
struct Pending {
    ktime: u64,
    pid: u32,
    comm: String,
    cgroup_id: u64,
}

/// Where a query came from: the client's address and port, and the transaction id.
type QueryKey = (IpAddr, u16, u16);

struct Tracker {
    stamp: Stamp,
    pending: HashMap<QueryKey, Pending>,
    max_pending: usize,
    // Closing it detaches the filter.
    _socket: OwnedFd,
}

/// A `struct dns_record` from `dns.bpf.c`, read: the packet and who sent it.
#[derive(Debug, PartialEq)]
pub(super) struct Record<'a> {
    pub(super) pid: u32,
    pub(super) ktime: u64,
    pub(super) cgroup_id: u64,
    pub(super) protocol: u16,
    pub(super) comm: String,
    /// The filled part of the packet, from the IP header on.
    pub(super) packet: &'a [u8],
}

impl<'a> Record<'a> {
    /// Reads a record laid out as `struct dns_record`; `None` for another kind or a short one.
    pub(super) fn read(record: &'a [u8]) -> Option<Self> {
        let mut reader = Reader::new(record);
        if reader.u32()? != KIND_DNS_PACKET {
            return None;
        }
        let pid = reader.u32()?;
        let ktime = reader.u64()?;
        let cgroup_id = reader.u64()?;
        let _ifindex = reader.u32()?;
        let _pkt_type = reader.u32()?;
        let protocol = reader.u16()?;
        let len = usize::from(reader.u16()?).min(PACKET_MAX);
        let _pad = reader.u32()?;
        let comm = c_string(reader.take(16)?);
        let packet = &reader.take(PACKET_MAX)?[..len];
        Some(Self {
            pid,
            ktime,
            cgroup_id,
            protocol,
            comm,
            packet,
        })
    }
}

impl Tracker {
    fn decode(&mut self, record: &[u8]) -> Option<Event> {
        let Record {
            pid,
            ktime,
            cgroup_id,
            protocol,
            comm,
            packet,
        } = Record::read(record)?;
        let message = Message::parse(protocol, packet)?;
        if message.response {
            Some(self.response(&message, ktime))
        } else {
            Some(self.query(&message, ktime, pid, comm, cgroup_id))
        }
    }

    fn query(
        &mut self,
        message: &Message,
        ktime: u64,
        pid: u32,
        comm: String,
        cgroup_id: u64,
    ) -> Event {
        let mut event = self
            .stamp
            .event_at(ktime, "dns.query", pid, &comm, cgroup_id);
        event.message = format!(
            "{} {} asked {}:{}",
            type_name(message.qtype),
            message.name,
            message.server,
            message.server_port
        );
        message.describe(&mut event);
        if self.pending.len() >= self.max_pending {
            // Forget the oldest half at once rather than one per query.
            let mut ages: Vec<u64> = self.pending.values().map(|p| p.ktime).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            self.pending.retain(|_, p| p.ktime > cutoff);
        }
        self.pending.insert(
            (message.client, message.client_port, message.id),
            Pending {
                ktime,
                pid,
                comm,
                cgroup_id,
            },
        );
        event
    }

    fn response(&mut self, message: &Message, ktime: u64) -> Event {
        let query = self
            .pending
            .remove(&(message.client, message.client_port, message.id));
        // The asking process, whose query this answers; unknown if the query went unseen.
        let (pid, comm, cgroup_id) = query
            .as_ref()
            .map_or((0, "", 0), |q| (q.pid, q.comm.as_str(), q.cgroup_id));
        let mut event = self
            .stamp
            .event_at(ktime, "dns.response", pid, comm, cgroup_id);
        let rcode = rcode_name(message.rcode);
        event.message = format!("{} {} -> {rcode}", type_name(message.qtype), message.name);
        if matches!(message.rcode, 2 | 3) {
            event.severity = Severity::Warning;
        }
        message.describe(&mut event);
        event.attributes.set("rcode", rcode);
        event.attributes.set("answers", u32::from(message.answers));
        if let Some(query) = query {
            let micros = ktime.saturating_sub(query.ktime) / 1000;
            event
                .attributes
                .set("latency_us", i64::try_from(micros).unwrap_or(i64::MAX));
        }
        event
    }
}

/// The parts of a DNS message over UDP that events carry.
#[derive(Debug, PartialEq, Eq)]
struct Message {
    client: IpAddr,
    client_port: u16,
    server: IpAddr,
    server_port: u16,
    id: u16,
    response: bool,
    rcode: u8,
    answers: u16,
    name: String,
    qtype: u16,
}

impl Message {
    /// Parses an IPv4 or IPv6 packet holding a UDP datagram to or from port 53.
    fn parse(protocol: u16, packet: &[u8]) -> Option<Self> {
        let (source, destination, udp) = if protocol == ETH_P_IP {
            let header = usize::from(packet.first()? & 0x0f) * 4;
            let address = |at: usize| -> Option<IpAddr> {
                let b = packet.get(at..at + 4)?;
                Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            };
            (address(12)?, address(16)?, packet.get(header..)?)
        } else {
            let address = |at: usize| -> Option<IpAddr> {
                let octets: [u8; 16] = packet.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            };
            (address(8)?, address(24)?, packet.get(40..)?)
        };
        let port = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(udp.get(at..at + 2)?.try_into().ok()?))
        };
        let (sport, dport) = (port(0)?, port(2)?);
        let dns = udp.get(8..)?;
        let word = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(dns.get(at..at + 2)?.try_into().ok()?))
        };
        let id = word(0)?;
        let flags = word(2)?;
        let response = flags & 0x8000 != 0;
        if word(4)? == 0 {
            return None;
        }
        let (name, end) = read_name(dns, 12)?;
        let qtype = word(end)?;
        let _qclass = word(end + 2)?;
        let (client, client_port, server, server_port) = if response {
            (destination, dport, source, sport)
        } else {
            (source, sport, destination, dport)
        };
        Some(Self {
            client,
            client_port,
            server,
            server_port,
            id,
            response,
            rcode: (flags & 0x000f) as u8,
            answers: word(6)?,
            name,
            qtype,
        })
    }

    fn describe(&self, event: &mut Event) {
        let attributes = &mut event.attributes;
        attributes.set("query_name", self.name.clone());
        attributes.set("query_type", type_name(self.qtype));
        attributes.set("transaction_id", u32::from(self.id));
        attributes.set("server", self.server.to_string());
        attributes.set("client", format!("{}:{}", self.client, self.client_port));
    }
}

/// The dotted name at `at`, following compression pointers; and where the question's
/// type begins (after the name as written at `at`).
fn read_name(dns: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    // A name has at most 127 labels; more jumps than that is a pointer loop.
    for _ in 0..128 {
        let len = *dns.get(at)?;
        if len == 0 {
            return Some((name, end.unwrap_or(at + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let target = usize::from(u16::from_be_bytes([len & 0x3f, *dns.get(at + 1)?]));
            end.get_or_insert(at + 2);
            at = target;
            continue;
        }
        let label = dns.get(at + 1..at + 1 + usize::from(len))?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label));
        at += 1 + usize::from(len);
    }
    None
}

fn type_name(qtype: u16) -> String {
    match qtype {
        1 => "A".into(),
        2 => "NS".into(),
        5 => "CNAME".into(),
        6 => "SOA".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        255 => "ANY".into(),
        other => format!("TYPE{other}"),
    }
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP packet from 10.0.0.2:40000 to 10.0.0.53:53 carrying `dns`.
    fn ipv4_udp(dns: &[u8], reply: bool) -> Vec<u8> {
        let (src, dst, sport, dport) = if reply {
            ([10, 0, 0, 53], [10, 0, 0, 2], 53u16, 40000u16)
        } else {
            ([10, 0, 0, 2], [10, 0, 0, 53], 40000, 53)
        };
        let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        packet.extend(src);
        packet.extend(dst);
        packet.extend(sport.to_be_bytes());
        packet.extend(dport.to_be_bytes());
        packet.extend(u16::try_from(8 + dns.len()).expect("small").to_be_bytes());
        packet.extend([0, 0]);
        packet.extend(dns);
        packet
    }

    fn question(id: u16, flags: u16, answers: u16, name_bytes: &[u8]) -> Vec<u8> {
        let mut dns = Vec::new();
        dns.extend(id.to_be_bytes());
        dns.extend(flags.to_be_bytes());
        dns.extend(1u16.to_be_bytes());
        dns.extend(answers.to_be_bytes());
        dns.extend([0, 0, 0, 0]);
        dns.extend(name_bytes);
        dns.extend(28u16.to_be_bytes());
        dns.extend(1u16.to_be_bytes());
        dns
    }

    #[test]
    fn a_query_and_its_answer_parse_with_the_client_on_the_same_side() {
        let name = b"\x03api\x07example\x04test\x00";
        let query = Message::parse(
            ETH_P_IP,
            &ipv4_udp(&question(0xbeef, 0x0100, 0, name), false),
        )
        .expect("query");
        assert!(!query.response);
        assert_eq!(query.name, "api.example.test");
        assert_eq!(type_name(query.qtype), "AAAA");
        let answer = Message::parse(
            ETH_P_IP,
            &ipv4_udp(&question(0xbeef, 0x8183, 0, name), true),
        )
        .expect("answer");
        assert!(answer.response);
        assert_eq!(rcode_name(answer.rcode), "NXDOMAIN");
        assert_eq!(
            (query.client, query.client_port, query.id),
            (answer.client, answer.client_port, answer.id),
            "both key to the same pending query"
        );
    }

    #[test]
    fn truncated_and_looping_messages_are_refused_not_panicked_on() {
        let name = b"\x03api\x07example\x04test\x00";
        let whole = ipv4_udp(&question(1, 0x0100, 0, name), false);
        for cut in 0..whole.len() {
            assert!(
                Message::parse(ETH_P_IP, &whole[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        // A name that points at itself.
        let looping = ipv4_udp(&question(1, 0x0100, 0, &[0xc0, 12]), false);
        assert!(Message::parse(ETH_P_IP, &looping).is_none());
    }
}
