//! `kernel`: process exec and exit, from the `sched_process_exec` and `sched_process_exit`
//! tracepoints (`ebpf/kernel.bpf.c`).

use super::{Header, Reader, Ring, RingOptions, Stamp, attach_tracepoint, load};
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "kernel";

/// Options of the `kernel` collector: its ring buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct KernelConfig(pub RingOptions);

// Record kinds and sizes of ebpf/tapio.h and ebpf/kernel.bpf.c.
pub(super) const KIND_EXEC: u32 = 1;
pub(super) const KIND_EXIT: u32 = 2;
pub(super) const FILENAME_LEN: usize = 256;
pub(super) const ARGS_LEN: usize = 256;

impl CollectorConfig for KernelConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Ebpf);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.0.validate(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mut ebpf = load(object!("kernel"), self.0.ring_buffer_bytes, &[])?;
            attach_tracepoint(&mut ebpf, "tapio_exec", "sched", "sched_process_exec")?;
            attach_tracepoint(&mut ebpf, "tapio_exit", "sched", "sched_process_exit")?;
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
        KIND_EXEC => exec(stamp, &header, &mut reader),
        KIND_EXIT => {
            let event = exit(stamp, &header, &mut reader);
            stamp.forget(header.pid);
            event
        }
        _ => None,
    }
}

fn exec(stamp: &mut Stamp, header: &Header, reader: &mut Reader<'_>) -> Option<Event> {
    let ppid = reader.u32()?;
    let args_len = reader.u32()? as usize;
    let filename = reader.c_str(FILENAME_LEN)?;
    let args = reader.take(ARGS_LEN)?;
    let args = join_args(&args[..args_len.min(ARGS_LEN)]);
    let mut event = stamp.event(header, "process.exec");
    event.message = format!("{} executed {filename}", header.comm);
    event.attributes.set("ppid", ppid);
    event.attributes.set("uid", header.uid);
    event.attributes.set("filename", filename);
    event.attributes.set("args", args);
    Some(event)
}

fn exit(stamp: &mut Stamp, header: &Header, reader: &mut Reader<'_>) -> Option<Event> {
    let ppid = reader.u32()?;
    let status = reader.i32()?;
    let code = (status >> 8) & 0xff;
    let signal = status & 0x7f;
    let mut event = stamp.event(header, "process.exit");
    if signal == 0 {
        event.message = format!("{} exited with code {code}", header.comm);
    } else {
        event.severity = Severity::Warning;
        event.message = format!("{} was killed by signal {signal}", header.comm);
    }
    event.attributes.set("ppid", ppid);
    event.attributes.set("exit_code", code);
    event.attributes.set("signal", signal);
    Some(event)
}

/// The argv strings, NUL-separated in the record, as one space-separated line; the copy
/// in the kernel is bounded, so a long command line ends early.
fn join_args(bytes: &[u8]) -> String {
    bytes
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_joins_and_stops_at_the_copied_length() {
        assert_eq!(join_args(b"sh\0-c\0exit 7\0"), "sh -c exit 7");
        assert_eq!(
            join_args(b"ls\0-l"),
            "ls -l",
            "a truncated copy keeps what it has"
        );
        assert_eq!(join_args(b""), "");
    }
}
