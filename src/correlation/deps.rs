//! Dependencies: which server an event's connection or DNS lookup went to, learned from
//! what the agent sees, the way service maps are built from observed connections.
//!
//! - A pod's IP, and the service it backs, from the Kubernetes collector's pod events
//!   (`pod_ip`, `k8s.service.name`).
//! - A listener from every accepted connection (`net.tcp.accept`): its address and port
//!   belong to the accepting pod, or, for a host process, its port belongs to that
//!   process's systemd unit on every address of the node.
//! - The node's own addresses from its host processes' connections; a refused connect to
//!   one of them on a port no listener is known for is put on the node's host units.
//! - The cluster DNS by convention: the pods labelled `k8s-app=kube-dns`, or named
//!   `coredns` or `kube-dns` in `kube-system` (`CoreDNS` and kube-dns both ship so), back
//!   `kube-dns`, and a pod's DNS server that is no known pod is that service (pods resolve
//!   through the cluster DNS).
//!
//! A server is known by up to three keys (its pod, its service, its unit). A `callee` rule
//! remembers a cause under the keys of the entity it happened to and looks an effect up
//! under the keys of the server it called. Bounded: each map holds at most `capacity`
//! entries and forgets the oldest first; a new fact about an address replaces the old one.

use crate::bounded::Bounded;
use crate::bounded::key_parts;
use crate::event::{Event, keys};

use super::rules::Relation;

/// The label the cluster DNS pods carry, and the service they back.
const DNS_LABEL: &str = "k8s.pod.label.k8s-app";
const DNS_SERVICE: &str = "kube-dns";

/// A server's keys: its pod, its service, its unit (0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Server([u64; 3]);

impl Server {
    /// The keys that are known.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().copied().filter(|k| *k != 0)
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 3]
    }
}

/// The learned dependencies.
#[derive(Debug)]
pub struct Dependencies {
    /// Pod IP -> the pod (and its service).
    by_ip: Bounded<u64, Server>,
    /// (address, port) -> who accepted on it.
    listeners: Bounded<u64, Server>,
    /// (node, port) -> the host process's unit that accepted on it, on any node address.
    host_ports: Bounded<u64, Server>,
    /// Addresses host processes accepted on: the node's own.
    node_addresses: Bounded<u64, ()>,
    /// Pod key -> the service it backs.
    services: Bounded<u64, u64>,
}

fn service_key(namespace: &str, name: &str) -> u64 {
    key_parts(&[b"service", namespace.as_bytes(), name.as_bytes()])
}

fn text<'a>(event: &'a Event, key: &str) -> Option<&'a str> {
    event.attributes.text(key).filter(|s| !s.is_empty())
}

fn port(event: &Event, key: &str) -> Option<u16> {
    u16::try_from(event.attributes.int(key)?).ok()
}

fn address_key(address: &str) -> u64 {
    key_parts(&[b"ip", address.as_bytes()])
}

fn endpoint_key(address: &str, port: u16) -> u64 {
    key_parts(&[b"endpoint", address.as_bytes(), &port.to_le_bytes()])
}

fn is_loopback(address: &str) -> bool {
    address.starts_with("127.") || address == "::1"
}

impl Dependencies {
    /// An empty map of at most `capacity` entries per kind of fact.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            by_ip: Bounded::new(capacity),
            listeners: Bounded::new(capacity),
            host_ports: Bounded::new(capacity),
            node_addresses: Bounded::new(capacity),
            services: Bounded::new(capacity),
        }
    }

    /// The service a pod event names: its `k8s.service.name`, or the cluster DNS by label
    /// or by name.
    fn named_service(event: &Event) -> Option<u64> {
        let e = &event.entities;
        if let Some(name) = text(event, keys::SERVICE_NAME) {
            return Some(service_key(&e.pod_namespace, name));
        }
        let dns = text(event, DNS_LABEL) == Some(DNS_SERVICE)
            || (&*e.pod_namespace == "kube-system"
                && matches!(&*e.workload_name, "coredns" | "kube-dns"));
        dns.then(|| service_key(&e.pod_namespace, DNS_SERVICE))
    }

    /// The key every host unit of `node` shares, for a refused connect to the node on a
    /// port no listener is known for.
    fn host_key(node: &str) -> u64 {
        key_parts(&[b"host", node.as_bytes()])
    }

    /// The keys of the entity `event` happened to, as a server: its pod, the service that
    /// pod backs, and its unit.
    #[must_use]
    pub fn identity(&self, event: &Event) -> Server {
        let pod = Relation::Pod.key(&event.entities).unwrap_or(0);
        let unit = Relation::Unit.key(&event.entities).unwrap_or(0);
        if pod == 0 && unit != 0 {
            return Server([Self::host_key(&event.entities.node), 0, unit]);
        }
        let service = Self::named_service(event)
            .or_else(|| self.services.get(&pod).copied())
            .unwrap_or(0);
        Server([pod, service, unit])
    }

    /// Learns what `event` says about servers; cheap for events that say nothing.
    pub fn learn(&mut self, event: &Event) {
        match event.kind.as_ref() {
            "net.tcp.accept" => self.learn_listener(event),
            "net.tcp.connect" | "net.tcp.close" if Self::on_host(event) => {
                if let Some(address) = text(event, "saddr").filter(|a| !is_loopback(a)) {
                    self.node_addresses.insert(address_key(address), ());
                }
            }
            kind if kind.starts_with("k8s.") || kind == "container.exit" => {
                let Some(pod) = Relation::Pod.key(&event.entities) else {
                    return;
                };
                let service = Self::named_service(event);
                if let Some(service) = service {
                    self.services.insert(pod, service);
                }
                if let Some(ip) = text(event, keys::POD_IP) {
                    let service = service.or_else(|| self.services.get(&pod).copied());
                    self.by_ip
                        .insert(address_key(ip), Server([pod, service.unwrap_or(0), 0]));
                }
            }
            _ => {}
        }
    }

    fn learn_listener(&mut self, event: &Event) {
        let (Some(address), Some(port)) = (text(event, "saddr"), port(event, "sport")) else {
            return;
        };
        let server = self.identity(event);
        if server.is_empty() {
            return;
        }
        self.listeners.insert(endpoint_key(address, port), server);
        if Self::on_host(event) {
            // A host process: it serves the port on the node's addresses.
            self.node_addresses.insert(address_key(address), ());
            let node = key_parts(&[
                b"node-port",
                event.entities.node.as_bytes(),
                &port.to_le_bytes(),
            ]);
            self.host_ports.insert(node, server);
        }
    }

    /// Whether `event` is a host process's (no pod).
    fn on_host(event: &Event) -> bool {
        event.entities.pod_uid.is_empty() && event.entities.pod_name.is_empty()
    }

    /// The server `event` called: the destination of a connection, or the DNS server of a
    /// lookup; `None` when it is not known.
    #[must_use]
    pub fn callee(&self, event: &Event) -> Option<Server> {
        let (address, port) = match event.kind.as_ref() {
            "app.span" => return self.span_callee(event),
            "dns.query" | "dns.response" => (text(event, "server")?, 53),
            kind if kind.starts_with("net.tcp.") => (text(event, "daddr")?, port(event, "dport")?),
            _ => return None,
        };
        if let Some(server) = self.listeners.get(&endpoint_key(address, port)) {
            return Some(*server);
        }
        if let Some(server) = self.by_ip.get(&address_key(address)) {
            return Some(*server);
        }
        if is_loopback(address) || self.node_addresses.get(&address_key(address)).is_some() {
            let node = key_parts(&[
                b"node-port",
                event.entities.node.as_bytes(),
                &port.to_le_bytes(),
            ]);
            return Some(self.host_ports.get(&node).copied().unwrap_or(Server([
                Self::host_key(&event.entities.node),
                0,
                0,
            ])));
        }
        // A pod's lookups go to the cluster DNS, whatever address it answers on.
        let in_pod = !event.entities.pod_uid.is_empty() || !event.entities.pod_name.is_empty();
        (port == 53 && in_pod).then(|| Server([0, service_key("kube-system", DNS_SERVICE), 0]))
    }
}

impl Dependencies {
    /// The server an application's client span called: its `server.address` and
    /// `server.port` (or the older `net.peer.name`/`net.peer.port`) as a connection's
    /// destination, else the service its `peer.service` or a cluster DNS name
    /// (`cart.shop.svc.cluster.local`, `cart.shop`, `cart`) names.
    fn span_callee(&self, event: &Event) -> Option<Server> {
        let address = text(event, "server.address").or_else(|| text(event, "net.peer.name"));
        let port = port(event, "server.port").or_else(|| port(event, "net.peer.port"));
        if let Some(address) = address
            && address.parse::<std::net::IpAddr>().is_ok()
        {
            let port = port?;
            if let Some(server) = self.listeners.get(&endpoint_key(address, port)) {
                return Some(*server);
            }
            return self.by_ip.get(&address_key(address)).copied();
        }
        let own = &*event.entities.pod_namespace;
        let (name, namespace) = match (text(event, "peer.service"), address) {
            (Some(service), _) => (service, own),
            (None, Some(host)) => {
                let mut labels = host.split('.');
                let name = labels.next()?;
                (name, labels.next().filter(|ns| *ns != "svc").unwrap_or(own))
            }
            (None, None) => return None,
        };
        (!name.is_empty() && !namespace.is_empty())
            .then(|| Server([0, service_key(namespace, name), 0]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttrValue, EventId};

    fn event(kind: &'static str, attributes: &[(&'static str, AttrValue)]) -> Event {
        let mut e = Event::new(EventId::from_u128(1), 1, kind, "t");
        e.entities.node = "node-a".into();
        for (key, value) in attributes {
            e.attributes.push(*key, value.clone());
        }
        e
    }

    fn s(text: &str) -> AttrValue {
        AttrValue::Str(text.to_owned())
    }

    #[test]
    fn a_connection_to_a_pod_ip_names_the_pod_and_its_service() {
        let mut deps = Dependencies::new(16);
        let mut ready = event(
            "k8s.pod.ready",
            &[("pod_ip", s("10.244.0.7")), (keys::SERVICE_NAME, s("cart"))],
        );
        ready.entities.pod_uid = "u-cart".into();
        ready.entities.pod_namespace = "shop".into();
        deps.learn(&ready);
        let mut failed = event(
            "net.tcp.connect_failed",
            &[("daddr", s("10.244.0.7")), ("dport", AttrValue::Int(8080))],
        );
        failed.entities.pod_uid = "u-web".into();
        let server = deps.callee(&failed).expect("known");
        let keys: Vec<u64> = server.keys().collect();
        assert!(keys.contains(&Relation::Pod.key(&ready.entities).expect("pod")));
        assert!(keys.contains(&service_key("shop", "cart")));
        // A kernel event of the cart pod, which names only its uid, is the same server.
        let mut oom = event("memory.oom_kill", &[]);
        oom.entities.pod_uid = "u-cart".into();
        let identity: Vec<u64> = deps.identity(&oom).keys().collect();
        assert_eq!(identity, keys);
    }

    #[test]
    fn a_host_listener_serves_its_port_on_the_nodes_addresses() {
        let mut deps = Dependencies::new(16);
        let mut accept = event(
            "net.tcp.accept",
            &[("saddr", s("10.0.1.5")), ("sport", AttrValue::Int(5432))],
        );
        accept.entities.unit = "postgresql.service".into();
        deps.learn(&accept);
        for address in ["10.0.1.5", "127.0.0.1"] {
            let failed = event(
                "net.tcp.connect_failed",
                &[("daddr", s(address)), ("dport", AttrValue::Int(5432))],
            );
            let server = deps.callee(&failed).expect("the unit");
            assert!(
                server
                    .keys()
                    .any(|k| Some(k) == Relation::Unit.key(&accept.entities))
            );
        }
        // A port no listener is known for on the node: any of its failed host units.
        let unknown = event(
            "net.tcp.connect_failed",
            &[("daddr", s("10.0.1.5")), ("dport", AttrValue::Int(6432))],
        );
        let mut failed_unit = event("systemd.unit.failed", &[]);
        failed_unit.entities.unit = "pgbouncer.service".into();
        let callee: Vec<u64> = deps.callee(&unknown).expect("the host").keys().collect();
        assert!(
            deps.identity(&failed_unit)
                .keys()
                .any(|k| callee.contains(&k))
        );
        let elsewhere = event(
            "net.tcp.connect_failed",
            &[("daddr", s("10.9.9.9")), ("dport", AttrValue::Int(5432))],
        );
        assert_eq!(
            deps.callee(&elsewhere),
            None,
            "another host's port is not this unit's"
        );
    }

    #[test]
    fn a_client_span_calls_the_pod_or_the_service_it_names() {
        let mut deps = Dependencies::new(16);
        let mut ready = event(
            "k8s.pod.ready",
            &[("pod_ip", s("10.244.0.7")), (keys::SERVICE_NAME, s("cart"))],
        );
        ready.entities.pod_uid = "u-cart".into();
        ready.entities.pod_namespace = "shop".into();
        deps.learn(&ready);
        let cart = deps.identity(&ready);
        let span = |attributes: &[(&'static str, AttrValue)]| {
            let mut e = event("app.span", attributes);
            e.entities.pod_namespace = "shop".into();
            e
        };
        for called in [
            span(&[
                ("server.address", s("10.244.0.7")),
                ("server.port", AttrValue::Int(8080)),
            ]),
            span(&[("peer.service", s("cart"))]),
            span(&[("server.address", s("cart.shop.svc.cluster.local"))]),
            span(&[("server.address", s("cart"))]),
        ] {
            let callee = deps.callee(&called).expect("a callee");
            assert!(
                callee.keys().any(|k| cart.keys().any(|c| c == k)),
                "{:?}",
                called.attributes
            );
        }
        assert_eq!(deps.callee(&span(&[])), None, "a span that names no peer");
    }

    #[test]
    fn a_pods_dns_server_is_the_cluster_dns() {
        let deps = Dependencies::new(16);
        let mut servfail = event("dns.response", &[("server", s("10.96.0.10"))]);
        servfail.entities.pod_uid = "u-web".into();
        let mut coredns = event("k8s.pod.not_ready", &[(DNS_LABEL, s("kube-dns"))]);
        coredns.entities.pod_uid = "u-dns".into();
        coredns.entities.pod_namespace = "kube-system".into();
        let callee: Vec<u64> = deps.callee(&servfail).expect("dns").keys().collect();
        let identity: Vec<u64> = deps.identity(&coredns).keys().collect();
        assert!(callee.iter().any(|k| identity.contains(k)));
        let host = event("dns.response", &[("server", s("10.96.0.10"))]);
        assert_eq!(
            deps.callee(&host),
            None,
            "a host's resolver is not known to be it"
        );
    }
}
