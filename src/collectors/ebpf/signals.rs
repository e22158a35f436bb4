//! `runtime-signals`: signals the kernel delivered, from the `signal_generate` BTF
//! tracepoint, with the sender (the task running when it was sent), the target and whether
//! the kernel sent it; and core dumps, from `sched_process_exit` (`ebpf/signals.bpf.c`).
//! Only the configured signals leave the kernel.

use aya::maps::Array;
use serde::Deserialize;

use super::names::{MAX_SIGNAL, signal_name, signal_number};
use super::{
    Header, Reader, Ring, RingOptions, Stamp, attach_btf_tracepoint, attach_tracepoint, load,
};
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "runtime-signals";

// Record kinds of ebpf/tapio.h.
pub(super) const KIND_SIGNAL: u32 = 40;
pub(super) const KIND_CORE_DUMP: u32 = 41;

/// The signals reported when the options name none: those that end a process.
pub const DEFAULT_SIGNALS: [&str; 7] = [
    "SIGKILL", "SIGTERM", "SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE",
];

/// Options of the `runtime-signals` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSignalsConfig {
    /// Signals to report, by name (`SIGKILL`, `KILL`) or number.
    pub signals: Vec<String>,
    /// Bytes of the probe's ring buffer: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
}

impl Default for RuntimeSignalsConfig {
    fn default() -> Self {
        Self {
            signals: DEFAULT_SIGNALS.map(String::from).to_vec(),
            ring_buffer_bytes: super::DEFAULT_RING_BUFFER_BYTES,
        }
    }
}

impl CollectorConfig for RuntimeSignalsConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Ebpf);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        RingOptions {
            ring_buffer_bytes: self.ring_buffer_bytes,
        }
        .validate(path, problems);
        if self.signals.is_empty() {
            problems.push(format!(
                "{path}.signals: name at least one signal, or leave it out for the default {}",
                DEFAULT_SIGNALS.join(", ")
            ));
        }
        for name in &self.signals {
            if signal_number(name).is_none() {
                problems.push(format!(
                    "{path}.signals: unknown signal `{name}` (a name like SIGKILL or a number from 1 to {MAX_SIGNAL})"
                ));
            }
        }
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mut ebpf = load(object!("signals"), self.ring_buffer_bytes, &[])?;
            let mut watched: Array<_, u8> = Array::try_from(
                ebpf.map_mut("watched")
                    .ok_or_else(|| Error::unavailable("probe object has no map watched"))?,
            )
            .map_err(|error| Error::unavailable_by("map watched", error))?;
            for n in self.signals.iter().filter_map(|name| signal_number(name)) {
                watched
                    .set(n, 1, 0)
                    .map_err(|error| Error::unavailable_by("map watched", error))?;
            }
            attach_btf_tracepoint(&mut ebpf, "tapio_signal", "signal_generate")?;
            attach_tracepoint(&mut ebpf, "tapio_core", "sched", "sched_process_exit")?;
            let ring = Ring::new(NAME, ebpf)?;
            let mut stamp = Stamp::new(NAME, &cx.node_name);
            Ok::<Running, Error>(Box::pin(
                ring.pump(context, move |record| decode(&mut stamp, record)),
            ))
        })
    }
}

pub(super) fn decode(stamp: &mut Stamp, record: &[u8]) -> Option<Event> {
    let mut reader = Reader::new(record);
    let header = Header::read(&mut reader)?;
    match header.kind {
        KIND_SIGNAL => signal(stamp, &header, &mut reader),
        KIND_CORE_DUMP => core_dump(stamp, &header, &mut reader),
        _ => None,
    }
}

fn signal(stamp: &mut Stamp, sender: &Header, reader: &mut Reader<'_>) -> Option<Event> {
    let target_pid = reader.u32()?;
    let number = reader.u32()?;
    let code = reader.i32()?;
    let _pad = reader.u32()?;
    let target_cgroup = reader.u64()?;
    let target_comm = reader.c_str(16)?;
    // `si_code` above 0: a fault or the kernel itself (SI_KERNEL); 0 and below: kill(2),
    // tgkill(2), sigqueue(3).
    let from_kernel = code > 0;
    let name = signal_name(number);
    let sender_container = stamp.container_of(sender.pid, sender.cgroup_id);
    let mut event = stamp.event_at(
        sender.ktime,
        "process.signal",
        target_pid,
        &target_comm,
        target_cgroup,
    );
    event.severity = if name == "SIGTERM" {
        Severity::Info
    } else {
        Severity::Warning
    };
    event.message = if from_kernel {
        format!("the kernel sent {name} to {target_comm} (pid {target_pid})")
    } else {
        format!(
            "{} (pid {}) sent {name} to {target_comm} (pid {target_pid})",
            sender.comm, sender.pid
        )
    };
    let attributes = &mut event.attributes;
    attributes.set("signal", number);
    attributes.set("signal_name", name);
    attributes.set("code", code);
    attributes.set("from_kernel", from_kernel);
    attributes.set("sender_pid", sender.pid);
    attributes.set("sender_comm", sender.comm.clone());
    attributes.set(
        "sender_cgroup_id",
        i64::try_from(sender.cgroup_id).unwrap_or(i64::MAX),
    );
    if let Some(container) = sender_container {
        attributes.set("sender_container_id", container.to_string());
    }
    Some(event)
}

fn core_dump(stamp: &mut Stamp, header: &Header, reader: &mut Reader<'_>) -> Option<Event> {
    let status = reader.i32()?;
    let number = u32::try_from(status & 0x7f).unwrap_or(0);
    let name = signal_name(number);
    let mut event = stamp.event(header, "process.core_dump");
    event.severity = Severity::Warning;
    event.message = format!("{} (pid {}) dumped core on {name}", header.comm, header.pid);
    event.attributes.set("signal", number);
    event.attributes.set("signal_name", name);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, pid: u32, comm: &str, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        for n in [kind, pid, pid, 0] {
            r.extend_from_slice(&n.to_le_bytes());
        }
        r.extend_from_slice(&1_000u64.to_le_bytes());
        r.extend_from_slice(&7u64.to_le_bytes());
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm.as_bytes());
        r.extend_from_slice(&name);
        r.extend_from_slice(body);
        r
    }

    fn signal_body(target: u32, number: u32, code: i32, comm: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&target.to_le_bytes());
        b.extend_from_slice(&number.to_le_bytes());
        b.extend_from_slice(&code.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&9u64.to_le_bytes());
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm.as_bytes());
        b.extend_from_slice(&name);
        b
    }

    #[test]
    fn a_kill_names_its_sender_and_its_target() {
        let mut stamp = Stamp::new(NAME, "n");
        let bytes = record(KIND_SIGNAL, 10, "kill", &signal_body(20, 9, 0, "sleep"));
        let event = decode(&mut stamp, &bytes).expect("a signal record");
        crate::event::schema::check(&event).expect("the documented shape");
        assert_eq!(event.entities.pid, 20, "the target is the entity");
        assert_eq!(&*event.entities.comm, "sleep");
        assert_eq!(event.entities.cgroup_id, 9);
        assert_eq!(event.severity, Severity::Warning);
        assert_eq!(event.attributes.text("signal_name"), Some("SIGKILL"));
        assert_eq!(event.attributes.int("sender_pid"), Some(10));
        assert_eq!(
            event.message,
            "kill (pid 10) sent SIGKILL to sleep (pid 20)"
        );
    }

    #[test]
    fn a_fault_is_the_kernels_and_a_term_is_routine() {
        let mut stamp = Stamp::new(NAME, "n");
        // SEGV_MAPERR.
        let fault = record(KIND_SIGNAL, 20, "app", &signal_body(20, 11, 1, "app"));
        let event = decode(&mut stamp, &fault).expect("a signal record");
        assert_eq!(
            event.attributes.get("from_kernel"),
            Some(&crate::event::AttrValue::Bool(true))
        );
        assert_eq!(event.message, "the kernel sent SIGSEGV to app (pid 20)");
        let term = record(KIND_SIGNAL, 1, "kubelet", &signal_body(20, 15, 0, "app"));
        let event = decode(&mut stamp, &term).expect("a signal record");
        assert_eq!(event.severity, Severity::Info);
    }

    #[test]
    fn a_core_dump_names_its_signal() {
        let mut stamp = Stamp::new(NAME, "n");
        let bytes = record(KIND_CORE_DUMP, 20, "app", &[0x8b, 0, 0, 0, 0, 0, 0, 0]);
        let event = decode(&mut stamp, &bytes).expect("a core dump record");
        crate::event::schema::check(&event).expect("the documented shape");
        assert_eq!(event.attributes.int("signal"), Some(11));
        assert_eq!(event.message, "app (pid 20) dumped core on SIGSEGV");
    }

    #[test]
    fn unknown_signals_are_named_in_the_error() {
        let config = RuntimeSignalsConfig {
            signals: vec!["SIGKILL".into(), "SIGNOPE".into()],
            ..RuntimeSignalsConfig::default()
        };
        let mut problems = Vec::new();
        config.validate("collectors.runtime-signals.config", &mut problems);
        assert_eq!(
            problems,
            [
                "collectors.runtime-signals.config.signals: unknown signal `SIGNOPE` (a name like SIGKILL or a number from 1 to 64)"
            ]
        );
    }
}
