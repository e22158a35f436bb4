//! Events shaped like real ones, shared by the benches so their figures compare.

#![allow(dead_code, reason = "each bench uses a subset")]

pub mod engine;
pub mod fleet;
pub mod processes;

use tapio::event::{Event, IdGenerator, Severity};

/// An event from a container of a Deployment's pod, with every entity a kernel event
/// carries once resolved; the caller adds its type-specific attributes.
pub fn container_event(
    ids: &mut IdGenerator,
    kind: &'static str,
    severity: Severity,
    message: &str,
) -> Event {
    let mut e = Event::new(ids.next_id(), 1_790_000_000_000_000_000, kind, "kernel");
    e.severity = severity;
    e.message = message.into();
    let n = &mut e.entities;
    n.node = "worker-3".into();
    n.pid = 4242;
    n.comm = "java".into();
    n.cgroup_id = 12_345;
    n.container_id = "3f4e".repeat(16).into();
    n.pod_uid = "8f6fe56b-7ad0-4637-a0a3-1be51340079c".into();
    n.pod_namespace = "payments".into();
    n.pod_name = "checkout-7d9f8-x2k4p".into();
    n.workload_kind = "Deployment".into();
    n.workload_name = "checkout".into();
    e
}

/// A TCP connect event with its trace context, as the synthetic collector makes many of:
/// the event the end-to-end benches carry.
pub fn tcp_connect(ids: &mut IdGenerator) -> Event {
    let mut e = container_event(
        ids,
        "net.tcp.connect",
        Severity::Info,
        "java connected to postgres.data:5432",
    );
    e.attributes.set("daddr", "10.96.3.7");
    e.attributes.set("dport", 5432);
    e.attributes.set("duration_us", 412);
    e.trace_id = tapio::event::TraceId::new([1; 16]);
    e.span_id = tapio::event::SpanId::new([2; 8]);
    e
}
