//! `cri-ebpf`: container lifecycle without a CRI socket, from the kernel
//! (`ebpf/cgroups.bpf.c`). A cgroup v2 directory whose path names a container id is made
//! when the runtime creates the container (`container.created`) and removed when it is
//! gone (`container.exit`). Meanwhile the kernel keeps how the container's last process
//! exited, which is the container's exit code. With `cri` or `kubeapi` on as well, each
//! creation and exit is reported once between them (the first to see it), and the others
//! count theirs as `duplicate` drops.

use std::sync::Arc;

use aya::maps::{HashMap as BpfHashMap, MapData};

use super::containers::from_path;
use super::{Header, Reader, Ring, RingOptions, Stamp, attach_tracepoint, load};
use crate::collectors::{
    BuildContext, BuildFuture, CollectorConfig, Context, Error, Running, first_report,
};
use crate::event::{Event, Severity};
use crate::metadata::PodDirectory;

/// Registry name.
pub const NAME: &str = "cri-ebpf";

// Record kinds and sizes of ebpf/tapio.h and ebpf/cgroups.bpf.c.
const KIND_CGROUP_MKDIR: u32 = 60;
const KIND_CGROUP_RMDIR: u32 = 61;
const PATH_LEN: usize = 256;
const EXIT_UNKNOWN: i32 = -1;

/// Options of the `cri-ebpf` collector: its ring buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct CriEbpfConfig(pub RingOptions);

impl CollectorConfig for CriEbpfConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.0.validate(path, problems);
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mut ebpf = load(object!("cgroups"), self.0.ring_buffer_bytes, &[])?;
            attach_tracepoint(&mut ebpf, "tapio_cgroup_mkdir", "cgroup", "cgroup_mkdir")?;
            attach_tracepoint(&mut ebpf, "tapio_cgroup_rmdir", "cgroup", "cgroup_rmdir")?;
            attach_tracepoint(
                &mut ebpf,
                "tapio_container_exit",
                "sched",
                "sched_process_exit",
            )?;
            let exits: BpfHashMap<MapData, u64, [u32; 2]> = BpfHashMap::try_from(
                ebpf.take_map("exits")
                    .ok_or_else(|| Error::unavailable("probe object has no map exits"))?,
            )
            .map_err(|e| Error::unavailable_by("map exits", e))?;
            let ring = Ring::new(NAME, ebpf)?;
            let state = Containers {
                stamp: Stamp::new(NAME, &cx.node_name),
                exits,
                directory: cx.directory,
                stats: Arc::clone(&context.stats),
            };
            Ok::<Running, Error>(Box::pin(ring.pump_every(
                context,
                std::time::Duration::from_secs(1),
                state,
                Containers::decode,
                |_| Vec::new(),
            )))
        })
    }
}

struct Containers {
    stamp: Stamp,
    exits: BpfHashMap<MapData, u64, [u32; 2]>,
    directory: Arc<PodDirectory>,
    stats: Arc<crate::collectors::CollectorStats>,
}

impl Containers {
    fn decode(&mut self, record: &[u8]) -> Option<Event> {
        let mut reader = Reader::new(record);
        let header = Header::read(&mut reader)?;
        let id = reader.u64()?;
        let status = reader.i32()?;
        let exit_pid = reader.u32()?;
        let path = reader.c_str(PATH_LEN)?;
        let identity = from_path(&path);
        if identity.container_id.is_empty() {
            return None;
        }
        let event = match header.kind {
            KIND_CGROUP_MKDIR => {
                // From now on the kernel keeps how its processes exit.
                let _ = self.exits.insert(id, [EXIT_UNKNOWN.cast_unsigned(), 0], 0);
                let mut event = self.container_event(&header, "container.created", id, &path);
                event.message = format!(
                    "container {} created by {}",
                    &identity.container_id[..12],
                    header.comm
                );
                event
            }
            KIND_CGROUP_RMDIR => {
                let _ = self.exits.remove(&id);
                self.exit_event(&header, id, &path, status, exit_pid)
            }
            _ => return None,
        };
        first_report(&self.directory, &self.stats, &event).then_some(event)
    }

    fn container_event(
        &mut self,
        header: &Header,
        kind: &'static str,
        id: u64,
        path: &str,
    ) -> Event {
        let identity = from_path(path);
        let mut event = self
            .stamp
            .node_event(self.stamp.unix_nanos(header.ktime), kind);
        let e = &mut event.entities;
        e.container_id = Arc::clone(&identity.container_id);
        e.pod_uid = Arc::clone(&identity.pod_uid);
        e.cgroup_id = id;
        event.attributes.set("cgroup", path.to_owned());
        event.attributes.set("runtime_comm", header.comm.clone());
        event
    }

    fn exit_event(&mut self, header: &Header, id: u64, path: &str, status: i32, pid: u32) -> Event {
        let mut event = self.container_event(header, "container.exit", id, path);
        let short = event.entities.container_id[..12].to_owned();
        if status == EXIT_UNKNOWN {
            event.attributes.set("reason", "Unknown");
            event.message = format!("container {short} removed; its exit was not seen");
            return event;
        }
        // As the kubelet reports it: the code, or 128 + the signal that killed it.
        let signal = status & 0x7f;
        let code = if signal == 0 {
            (status >> 8) & 0xff
        } else {
            128 + signal
        };
        let reason = if code == 0 { "Completed" } else { "Error" };
        event.severity = if code == 0 {
            Severity::Info
        } else {
            Severity::Error
        };
        event.message = format!("container {short} exited with {code} ({reason})");
        event.attributes.set("exit_code", code);
        event.attributes.set("reason", reason);
        event.attributes.set("exit_pid", pid);
        event
    }
}
