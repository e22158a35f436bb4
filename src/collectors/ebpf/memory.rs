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

/// `NAME_LEN` in `ebpf/memory.bpf.c`: room for a cgroup's name.
const NAME_LEN: usize = 128;

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
    let _pad = reader.u32()?;
    let memcg_name = reader.c_str(NAME_LEN)?;
    let memcg_parent = reader.c_str(NAME_LEN)?;
    let mut event = stamp.event_at(
        header.ktime,
        "memory.oom_kill",
        victim_pid,
        &victim_comm,
        victim_cgroup,
    );
    if event.entities.container_id.is_empty() {
        // The victim may be gone from its cgroups by now (always so on cgroup v1): the
        // memory cgroup named at the kill still says whose it was.
        let at_kill = super::containers::from_path(&format!("/{memcg_parent}/{memcg_name}"));
        if !at_kill.container_id.is_empty() {
            event.entities.container_id = at_kill.container_id;
            event.entities.pod_uid = at_kill.pod_uid;
        }
    }
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
