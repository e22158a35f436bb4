//! `memory`: OOM kills, from the `mark_victim` BTF tracepoint (`ebpf/memory.bpf.c`), with
//! the victim's pid, comm, cgroup and memory figures at the moment it was chosen.

use super::{Header, Reader, Ring, RingOptions, Stamp, attach_btf_tracepoint, load};
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Group, Running,
};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "memory";

/// Options of the `memory` collector: its ring buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct MemoryConfig(pub RingOptions);

pub(super) const KIND_OOM_KILL: u32 = 30;

impl CollectorConfig for MemoryConfig {
    const NAME: &'static str = NAME;
    const GROUP: Option<Group> = Some(Group::Ebpf);

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.0.validate(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mut ebpf = load(object!("memory"), self.0.ring_buffer_bytes, &[])?;
            attach_btf_tracepoint(&mut ebpf, "tapio_oom", "mark_victim")?;
            let ring = Ring::new(NAME, ebpf)?;
            let mut stamp = Stamp::new(NAME, &cx.node_name);
            let page = i64::try_from(rustix::param::page_size()).unwrap_or(4096);
            Ok::<Running, Error>(Box::pin(
                ring.pump(context, move |record| decode(&mut stamp, page, record)),
            ))
        })
    }
}

pub(super) fn decode(stamp: &mut Stamp, page: i64, record: &[u8]) -> Option<Event> {
    let mut reader = Reader::new(record);
    let header = Header::read(&mut reader)?;
    if header.kind != KIND_OOM_KILL {
        return None;
    }
    let victim_pid = reader.u32()?;
    let uid = reader.u32()?;
    let victim_cgroup = reader.u64()?;
    let victim_comm = reader.c_str(16)?;
    let total_vm = reader.u64()?;
    let anon = reader.i64()?;
    let file = reader.i64()?;
    let shmem = reader.i64()?;
    let oom_score_adj = reader.i32()?;
    let mut event = stamp.event_at(
        header.ktime,
        "memory.oom_kill",
        victim_pid,
        &victim_comm,
        victim_cgroup,
    );
    event.severity = Severity::Critical;
    let rss = (anon + file + shmem).max(0) * page;
    event.message = format!(
        "OOM killer killed {victim_comm} (pid {victim_pid}) using {} MiB",
        rss >> 20
    );
    event.attributes.set("victim_pid", victim_pid);
    event.attributes.set("uid", uid);
    event.attributes.set(
        "total_vm_bytes",
        i64::try_from(total_vm)
            .unwrap_or(i64::MAX)
            .saturating_mul(page),
    );
    event.attributes.set("anon_rss_bytes", anon.max(0) * page);
    event.attributes.set("file_rss_bytes", file.max(0) * page);
    event.attributes.set("shmem_rss_bytes", shmem.max(0) * page);
    event.attributes.set("oom_score_adj", oom_score_adj);
    event.attributes.set("killer_pid", header.pid);
    event.attributes.set("killer_comm", header.comm.clone());
    Some(event)
}
