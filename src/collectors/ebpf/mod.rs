//! The kernel collectors: CO-RE probes from ebpf/, compiled by build.rs, embedded in the
//! binary and loaded with aya.
//!
//! Each collector owns one probe object with one ring buffer (`events`) and one per-CPU
//! count of records the ring buffer had no room for (`lost`), so one collector failing to
//! load (a missing tracepoint, a verifier refusal) leaves the others running. Records start
//! with the header of `ebpf/tapio.h`; [`Record`] reads it.

/// The compiled object of `ebpf/<name>.bpf.c`. build.rs compiles every probe source there
/// (into an empty object when clang is missing), so a new probe needs no list entry.
macro_rules! object {
    ($name:literal) => {
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/", $name, ".bpf.o"))
    };
}

pub mod containers;
pub mod dns;
mod histogram;
pub mod kernel;
pub mod lifecycle;
pub mod memory;
mod names;
pub mod network;
pub mod signals;
pub mod starvation;
pub mod storage;
pub mod syscalls;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;

use super::{Context, Error};
use crate::event::{Event, IdGenerator};
use crate::internal_events::EventsDropped;
use crate::telemetry::DropCause;
use containers::Containers;

/// Ring buffer size when a collector's options do not set one.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 256 * 1024;

/// Options every kernel collector has.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingOptions {
    /// Bytes of the probe's ring buffer: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
}

impl Default for RingOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
        }
    }
}

impl RingOptions {
    /// Appends problems to `problems`, each prefixed with `prefix`.
    pub fn validate(&self, prefix: &str, problems: &mut Vec<String>) {
        let size = self.ring_buffer_bytes;
        if !size.is_power_of_two() || !(4096..=1 << 30).contains(&size) {
            problems.push(format!(
                "{prefix}.ring_buffer_bytes: must be a power of two from 4096 to 1073741824, got {size}"
            ));
        }
    }
}

/// The compiled probe objects; empty when the build had no clang.
/// Loads `object` with its ring buffer sized to `ring_bytes` and its `const volatile` flags
/// set from `flags`, after making sure the kernel can be asked for tracepoints.
pub(crate) fn load(
    object: &[u8],
    ring_bytes: u32,
    flags: &[(&'static str, u8)],
) -> Result<Ebpf, Error> {
    if object.is_empty() {
        return Err(Error::unavailable(
            "this binary was built without eBPF probes (TAPIO_EBPF=off); rebuild without it \
             (scripts/setup installs clang)",
        ));
    }
    if !rustix::process::geteuid().is_root() {
        return Err(Error::unavailable(
            "loading eBPF probes needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN); run the \
             collector as root or as a privileged container",
        ));
    }
    ensure_tracefs()?;
    let mut loader = EbpfLoader::new();
    loader.map_max_entries("events", ring_bytes);
    for (name, value) in flags {
        loader.override_global(name, value, true);
    }
    loader
        .load(object)
        .map_err(|error| Error::unavailable_by("the kernel refused the probes", error))
}

/// Attaches the tracepoint program `program` to `category/name`.
pub(crate) fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
) -> Result<(), Error> {
    let at = format!("tracepoint {category}/{name}");
    let program: &mut aya::programs::TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| {
            Error::unavailable(format!(
                "{at}: program {program} is missing from the object"
            ))
        })?
        .try_into()
        .map_err(|error| Error::unavailable_by(at.clone(), error))?;
    program.load().map_err(|error| {
        Error::unavailable_by(format!("{at}: the verifier refused the program"), error)
    })?;
    program
        .attach(category, name)
        .map_err(|error| Error::unavailable_by(format!("{at}: cannot attach"), error))?;
    Ok(())
}

/// The kernel's BTF, parsed when a collector first attaches a BTF tracepoint and shared by
/// the others (they attach seven between them), with when it was last used. Parsed, it
/// holds about 22 MiB, so [`release_idle_btf`] drops it once the collectors have attached.
static BTF: std::sync::Mutex<Option<(Arc<aya::Btf>, Instant)>> = std::sync::Mutex::new(None);

/// The parsed kernel BTF, parsing it if no collector holds it now.
fn kernel_btf() -> Result<Arc<aya::Btf>, String> {
    // Held while parsing: collectors starting together parse it once.
    let mut slot = BTF
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((btf, used)) = slot.as_mut() {
        *used = Instant::now();
        return Ok(Arc::clone(btf));
    }
    let btf = Arc::new(aya::Btf::from_sys_fs().map_err(|error| error.to_string())?);
    *slot = Some((Arc::clone(&btf), Instant::now()));
    Ok(btf)
}

/// Drops the parsed kernel BTF if no collector has used it for `idle`; a collector that
/// attaches later (restarted by a reload) parses it again. True when it was dropped.
pub fn release_idle_btf(idle: Duration) -> bool {
    let mut slot = BTF
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if slot
        .as_ref()
        .is_some_and(|(_, used)| used.elapsed() >= idle)
    {
        *slot = None;
        return true;
    }
    false
}

/// Attaches the BTF tracepoint program `program` to the raw tracepoint `name`.
pub(crate) fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    program: &str,
    name: &str,
) -> Result<(), Error> {
    let at = format!("BTF tracepoint {name}");
    let btf = kernel_btf().map_err(|error| {
        Error::unavailable(format!("{at}: cannot read the kernel's BTF: {error}"))
    })?;
    let program: &mut aya::programs::BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| {
            Error::unavailable(format!(
                "{at}: program {program} is missing from the object"
            ))
        })?
        .try_into()
        .map_err(|error| Error::unavailable_by(at.clone(), error))?;
    program.load(name, &btf).map_err(|error| {
        Error::unavailable_by(format!("{at}: the verifier refused the program"), error)
    })?;
    program
        .attach()
        .map_err(|error| Error::unavailable_by(format!("{at}: cannot attach"), error))?;
    Ok(())
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// Tracepoint ids are read from tracefs, which is not mounted at boot on some hosts.
fn ensure_tracefs() -> Result<(), Error> {
    // Collectors start on several threads (and tests run in parallel): one mounts, the
    // others find it mounted.
    static MOUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    rustix::mount::mount(
        "tracefs",
        TRACEFS,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|error| {
        Error::unavailable_by(
            format!("tracefs is not mounted and mounting it on {TRACEFS} failed"),
            error,
        )
    })?;
    tracing::info!(path = TRACEFS, "Mounted tracefs.");
    Ok(())
}

/// Maps the kernel's `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) to Unix time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    offset: i128,
}

impl Clock {
    /// Reads both clocks now.
    pub(crate) fn now() -> Self {
        let nanos = |t: rustix::time::Timespec| {
            i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
        };
        let monotonic = nanos(rustix::time::clock_gettime(
            rustix::time::ClockId::Monotonic,
        ));
        let real = nanos(rustix::time::clock_gettime(rustix::time::ClockId::Realtime));
        Self {
            offset: real - monotonic,
        }
    }

    /// Unix nanoseconds of a kernel timestamp.
    pub(crate) fn unix_nanos(self, ktime: u64) -> u64 {
        u64::try_from(i128::from(ktime) + self.offset).unwrap_or(0)
    }
}

/// Reads little-endian fields off a record in order.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next `n` bytes; `None` when the record is shorter.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    pub(crate) fn i32(&mut self) -> Option<i32> {
        self.take(4)?.try_into().ok().map(i32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.take(8)?.try_into().ok().map(i64::from_le_bytes)
    }

    /// A fixed-size C string field: the text up to its first NUL.
    pub(crate) fn c_str(&mut self, n: usize) -> Option<String> {
        self.take(n).map(c_string)
    }
}

/// The text of a NUL-terminated C buffer, lossily decoded.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `struct header` of ebpf/tapio.h.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub ktime: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

impl Header {
    pub(crate) fn read(reader: &mut Reader<'_>) -> Option<Self> {
        Some(Self {
            kind: reader.u32()?,
            pid: reader.u32()?,
            tid: reader.u32()?,
            uid: reader.u32()?,
            ktime: reader.u64()?,
            cgroup_id: reader.u64()?,
            comm: reader.c_str(16)?,
        })
    }
}

/// Builds events from records: ids, wall time, and the process's identity (pid, comm,
/// cgroup, container, pod) shared by every kernel collector.
#[derive(Debug)]
pub(crate) struct Stamp {
    source: &'static str,
    node: Arc<str>,
    ids: IdGenerator,
    clock: Clock,
    containers: Containers,
}

impl Stamp {
    pub(crate) fn new(source: &'static str, node: &str) -> Self {
        Self {
            source,
            node: node.into(),
            ids: IdGenerator::new(),
            clock: Clock::now(),
            containers: Containers::new(containers::DEFAULT_CAPACITY),
        }
    }

    /// A new event of `kind` for the process in `header`.
    pub(crate) fn event(&mut self, header: &Header, kind: &'static str) -> Event {
        self.event_at(
            header.ktime,
            kind,
            header.pid,
            &header.comm,
            header.cgroup_id,
        )
    }

    /// A new event of `kind` at kernel time `ktime` for process `pid`.
    pub(crate) fn event_at(
        &mut self,
        ktime: u64,
        kind: &'static str,
        pid: u32,
        comm: &str,
        cgroup_id: u64,
    ) -> Event {
        let mut event = Event::new(
            self.ids.next_id(),
            self.clock.unix_nanos(ktime),
            kind,
            self.source,
        );
        let entities = &mut event.entities;
        entities.node = Arc::clone(&self.node);
        entities.pid = pid;
        entities.comm = comm.into();
        entities.cgroup_id = cgroup_id;
        if let Some(found) = self.containers.resolve(pid, cgroup_id) {
            entities.container_id = Arc::clone(&found.container_id);
            entities.pod_uid = Arc::clone(&found.pod_uid);
            entities.unit = Arc::clone(&found.unit);
        }
        event
    }

    /// The container of process `pid` in cgroup `cgroup_id`, for an event that names a
    /// second process besides its own.
    pub(crate) fn container_of(&mut self, pid: u32, cgroup_id: u64) -> Option<Arc<str>> {
        self.containers
            .resolve(pid, cgroup_id)
            .map(|found| Arc::clone(&found.container_id))
            .filter(|id| !id.is_empty())
    }

    /// A new event of `kind` at Unix time `timestamp` about the node itself (a device, not
    /// a process).
    pub(crate) fn node_event(&mut self, timestamp: u64, kind: &'static str) -> Event {
        let mut event = Event::new(self.ids.next_id(), timestamp, kind, self.source);
        event.entities.node = Arc::clone(&self.node);
        event
    }

    /// Unix nanoseconds of a kernel timestamp.
    pub(crate) fn unix_nanos(&self, ktime: u64) -> u64 {
        self.clock.unix_nanos(ktime)
    }

    /// Forgets what was cached about a process that has exited.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.containers.forget(pid);
    }
}

/// A loaded probe's ring buffer and lost-record count, read together.
pub(crate) struct Ring {
    name: &'static str,
    records: AsyncFd<RingBuf<MapData>>,
    lost: Lost,
    // Dropping it detaches every program of the object.
    _ebpf: Ebpf,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How often lost-record counts are read between records.
const LOST_POLL: Duration = Duration::from_secs(1);

impl Ring {
    /// Takes the `events` and `lost` maps of a loaded and attached object.
    pub(crate) fn new(name: &'static str, mut ebpf: Ebpf) -> Result<Self, Error> {
        let missing = |map: &str| Error::unavailable(format!("probe object has no map {map}"));
        let events = ebpf.take_map("events").ok_or_else(|| missing("events"))?;
        let lost = Lost::take(name, &mut ebpf)?;
        let ring = RingBuf::try_from(events)
            .map_err(|error| Error::unavailable_by("ring buffer", error))?;
        // Sound: the ring buffer owns its descriptor and the AsyncFd owns the ring buffer,
        // so the descriptor stays open for the AsyncFd's whole life. The replacement,
        // `register_with_interest`, is an unsafe fn, which this crate forbids.
        #[allow(deprecated)]
        let records = AsyncFd::with_interest(ring, tokio::io::Interest::READABLE)
            .map_err(|error| Error::unavailable_by("ring buffer", error))?;
        Ok(Self {
            name,
            records,
            lost,
            _ebpf: ebpf,
        })
    }

    /// Runs until shutdown: every record goes through `decode`, and every event it makes
    /// goes to the pipeline.
    pub(crate) async fn pump<F>(self, context: Context, decode: F) -> Result<(), Error>
    where
        F: FnMut(&[u8]) -> Option<Event> + Send,
    {
        let mut decode = decode;
        self.pump_every(
            context,
            LOST_POLL,
            (),
            |(), record| decode(record),
            |()| Vec::new(),
        )
        .await
    }

    /// [`Ring::pump`], and every `every` the events `tick` makes from what the probe
    /// aggregates in its maps; once more on shutdown, so the last interval is not lost.
    /// Both work on `state`.
    pub(crate) async fn pump_every<S, F, T>(
        mut self,
        context: Context,
        every: Duration,
        mut state: S,
        mut decode: F,
        mut tick: T,
    ) -> Result<(), Error>
    where
        S: Send,
        F: FnMut(&mut S, &[u8]) -> Option<Event> + Send,
        T: FnMut(&mut S) -> Vec<Event> + Send,
    {
        let mut lost_ticker = tokio::time::interval(LOST_POLL);
        lost_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut batch = Vec::new();
        loop {
            let mut stopping = false;
            tokio::select! {
                biased;
                () = context.shutdown.cancelled() => stopping = true,
                _ = lost_ticker.tick() => self.lost.report(&context),
                _ = ticker.tick() => batch.extend(tick(&mut state)),
                ready = self.records.readable_mut() => {
                    let mut guard = ready.map_err(|error| Error::unavailable_by("ring buffer", error))?;
                    let ring = guard.get_inner_mut();
                    while let Some(record) = ring.next() {
                        batch.extend(decode(&mut state, &record));
                    }
                    guard.clear_ready();
                }
            }
            if stopping {
                batch.extend(tick(&mut state));
            }
            for event in batch.drain(..) {
                context.out.send(event).await?;
            }
            if stopping {
                break;
            }
        }
        self.lost.report(&context);
        Ok(())
    }
}

/// A probe object's per-CPU count of records it had no room for (`lost`), reported as
/// drops of its collector.
pub(crate) struct Lost {
    name: &'static str,
    map: PerCpuArray<MapData, u64>,
    reported: u64,
}

impl Lost {
    /// Takes the `lost` map of a loaded object.
    pub(crate) fn take(name: &'static str, ebpf: &mut Ebpf) -> Result<Self, Error> {
        let map = ebpf
            .take_map("lost")
            .ok_or_else(|| Error::unavailable("probe object has no map lost"))?;
        let map = PerCpuArray::try_from(map)
            .map_err(|error| Error::unavailable_by("lost counter", error))?;
        Ok(Self {
            name,
            map,
            reported: 0,
        })
    }

    /// Counts records lost since the last report as drops of this collector.
    pub(crate) fn report(&mut self, context: &Context) {
        let Ok(values) = self.map.get(&0, 0) else {
            return;
        };
        let total: u64 = values.iter().sum();
        let new = total.saturating_sub(self.reported);
        if new > 0 {
            self.reported = total;
            EventsDropped {
                component: self.name,
                cause: DropCause::RingBufferFull,
                count: new,
                counters: context.stats.drop_counters(),
            }
            .emit();
        }
    }
}

/// Why a kernel collector test cannot run here, or `None` when it can.
///
/// Tests call this and skip with the reason; with `TAPIO_REQUIRE_EBPF=1` (CI) they fail.
#[must_use]
pub fn unsupported_here() -> Option<String> {
    if object!("kernel").is_empty() {
        return Some("built without eBPF probes (TAPIO_EBPF=off)".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Some("eBPF needs root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_kernel_btf_is_shared_while_in_use_and_dropped_once_idle() {
        if !Path::new("/sys/kernel/btf/vmlinux").is_file() {
            assert!(
                std::env::var("TAPIO_REQUIRE_EBPF").as_deref() != Ok("1"),
                "TAPIO_REQUIRE_EBPF=1 but this kernel has no BTF"
            );
            eprintln!("skipped: this kernel has no /sys/kernel/btf/vmlinux");
            return;
        }
        let first = kernel_btf().expect("parses");
        let second = kernel_btf().expect("shared");
        assert!(Arc::ptr_eq(&first, &second), "parsed once while in use");
        assert!(!release_idle_btf(Duration::from_hours(1)), "used just now");
        assert!(release_idle_btf(Duration::ZERO), "dropped once idle");
        // Collectors that still hold it keep theirs; the next attach parses it again.
        let third = kernel_btf().expect("parses again");
        assert!(!Arc::ptr_eq(&first, &third));
    }

    /// `#define NAME NUMBER` lines of a C source.
    fn defines(source: &str) -> HashMap<&str, u64> {
        source
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("#define ")?.split_whitespace();
                let name = words.next()?;
                let value = words.next()?;
                let value = match value.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                    None => value.parse().ok()?,
                };
                Some((name, value))
            })
            .collect()
    }

    /// The fields of `struct name` in a C source, each as (name, offset, size), laid out
    /// the way C lays them out (natural alignment); a `struct header h` field is expanded.
    fn layout(
        source: &str,
        name: &str,
        header: &[(String, usize, usize)],
    ) -> Vec<(String, usize, usize)> {
        let defines = defines(source);
        let start = source
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} is not in the source"));
        let body = &source[start..start + source[start..].find("};").expect("the struct ends")];
        let mut fields = Vec::new();
        let mut offset = 0;
        for line in body.lines().skip(1) {
            let line = line
                .split("/*")
                .next()
                .unwrap_or("")
                .trim()
                .trim_end_matches(';');
            if line.is_empty() {
                continue;
            }
            let (kind, field) = line.rsplit_once(' ').expect("a type and a name");
            if kind == "struct header" {
                fields.extend(header.iter().cloned());
                offset = header
                    .iter()
                    .map(|(_, at, size)| at + size)
                    .max()
                    .unwrap_or(0);
                offset = offset.next_multiple_of(8);
                continue;
            }
            if let Some(inner) = kind.strip_prefix("struct ") {
                // A nested struct: its fields as `field.name`, aligned to its widest one.
                let nested = layout(source, inner, header);
                let align = nested
                    .iter()
                    .map(|(_, _, size)| *size)
                    .filter(|size| *size <= 8)
                    .max()
                    .unwrap_or(1);
                offset = offset.next_multiple_of(align);
                let end = nested
                    .iter()
                    .map(|(_, at, size)| at + size)
                    .max()
                    .unwrap_or(0);
                for (name, at, size) in nested {
                    fields.push((format!("{field}.{name}"), offset + at, size));
                }
                offset += end.next_multiple_of(align);
                continue;
            }
            let (field, count) = match field.split_once('[') {
                Some((field, count)) => {
                    let count = count.trim_end_matches(']');
                    let count = count
                        .parse()
                        .ok()
                        .or_else(|| defines.get(count).map(|&n| n as usize))
                        .or_else(|| (count == "TASK_COMM_LEN").then_some(16))
                        .unwrap_or_else(|| panic!("array length {count}"));
                    (field, count)
                }
                None => (field, 1),
            };
            let size = match kind {
                "__u8" | "char" => 1,
                "__u16" | "__s16" => 2,
                "__u32" | "__s32" | "int" => 4,
                "__u64" | "__s64" => 8,
                other => panic!("field type {other} is not known to this check"),
            };
            offset = offset.next_multiple_of(size);
            fields.push((field.to_owned(), offset, size * count));
            offset += size * count;
        }
        fields
    }

    fn put(record: &mut Vec<u8>, at: usize, bytes: &[u8]) {
        if record.len() < at + bytes.len() {
            record.resize(at + bytes.len(), 0);
        }
        record[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn field<'a>(fields: &'a [(String, usize, usize)], name: &str) -> &'a (String, usize, usize) {
        fields
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
    }

    const TAPIO_H: &str = include_str!("../../../ebpf/tapio.h");

    #[test]
    fn record_kinds_and_lengths_are_the_c_sides() {
        let tapio = defines(TAPIO_H);
        for (name, value) in [
            ("KIND_EXEC", kernel::KIND_EXEC),
            ("KIND_EXIT", kernel::KIND_EXIT),
            ("KIND_TCP_CONNECT", network::KIND_TCP_CONNECT),
            ("KIND_TCP_ACCEPT", network::KIND_TCP_ACCEPT),
            ("KIND_TCP_CLOSE", network::KIND_TCP_CLOSE),
            ("KIND_TCP_FAILED", network::KIND_TCP_FAILED),
            ("KIND_OOM_KILL", memory::KIND_OOM_KILL),
        ] {
            assert_eq!(tapio.get(name), Some(&u64::from(value)), "{name}");
        }
        let dns_c = defines(include_str!("../../../ebpf/dns.bpf.c"));
        assert_eq!(dns_c["KIND_DNS_PACKET"], u64::from(dns::KIND_DNS_PACKET));
        let kernel_c = defines(include_str!("../../../ebpf/kernel.bpf.c"));
        assert_eq!(kernel_c["FILENAME_LEN"], kernel::FILENAME_LEN as u64);
        assert_eq!(kernel_c["ARGS_LEN"], kernel::ARGS_LEN as u64);
    }

    #[test]
    fn the_header_and_the_exec_record_read_back_as_the_c_side_lays_them_out() {
        let header = layout(TAPIO_H, "header", &[]);
        let mut record = vec![
            0u8;
            header
                .iter()
                .map(|(_, at, size)| at + size)
                .max()
                .unwrap_or(0)
        ];
        for (n, (name, at, size)) in header.iter().enumerate() {
            let value = match name.as_str() {
                "comm" => b"probe-test\0".to_vec(),
                _ => (0x0101_0101_0101_0101u64 * (n as u64 + 1)).to_le_bytes()[..*size].to_vec(),
            };
            put(&mut record, *at, &value);
        }
        let read = Header::read(&mut Reader::new(&record)).expect("a header");
        let u32_at = |name: &str| {
            let (_, at, _) = field(&header, name);
            u32::from_le_bytes(record[*at..at + 4].try_into().expect("4 bytes"))
        };
        let u64_at = |name: &str| {
            let (_, at, _) = field(&header, name);
            u64::from_le_bytes(record[*at..at + 8].try_into().expect("8 bytes"))
        };
        assert_eq!(
            (read.kind, read.pid, read.tid, read.uid),
            (u32_at("kind"), u32_at("pid"), u32_at("tid"), u32_at("uid"))
        );
        assert_eq!(
            (read.ktime, read.cgroup_id),
            (u64_at("ktime"), u64_at("cgroup_id"))
        );
        assert_eq!(read.comm, "probe-test");

        // An exec record built by the C layout decodes into the right attributes.
        let exec = layout(
            include_str!("../../../ebpf/kernel.bpf.c"),
            "exec_record",
            &header,
        );
        let mut record = vec![
            0u8;
            exec.iter()
                .map(|(_, at, size)| at + size)
                .max()
                .unwrap_or(0)
        ];
        put(
            &mut record,
            field(&exec, "kind").1,
            &kernel::KIND_EXEC.to_le_bytes(),
        );
        put(&mut record, field(&exec, "pid").1, &u32::MAX.to_le_bytes());
        put(&mut record, field(&exec, "comm").1, b"sh\0");
        put(&mut record, field(&exec, "ppid").1, &4321u32.to_le_bytes());
        put(&mut record, field(&exec, "args_len").1, &5u32.to_le_bytes());
        put(&mut record, field(&exec, "filename").1, b"/bin/true\0");
        put(&mut record, field(&exec, "args").1, b"a\0bc\0");
        assert_eq!(record.len(), field(&exec, "args").1 + kernel::ARGS_LEN);
        let mut stamp = Stamp::new("kernel", "node");
        let event = kernel::decode(&mut stamp, &record).expect("an exec event");
        assert_eq!(event.kind.as_ref(), "process.exec");
        assert_eq!(
            event.attributes.get("ppid"),
            Some(&crate::event::AttrValue::Int(4321))
        );
        assert_eq!(
            event.attributes.get("filename"),
            Some(&crate::event::AttrValue::Str("/bin/true".into()))
        );
        assert_eq!(
            event.attributes.get("args"),
            Some(&crate::event::AttrValue::Str("a bc".into()))
        );
    }

    /// A record of `fields` with `values` (field name, little-endian bytes) at their C
    /// offsets.
    fn record_of(fields: &[(String, usize, usize)], values: &[(&str, &[u8])]) -> Vec<u8> {
        let mut record = vec![
            0u8;
            fields
                .iter()
                .map(|(_, at, size)| at + size)
                .max()
                .unwrap_or(0)
        ];
        for (name, bytes) in values {
            put(&mut record, field(fields, name).1, bytes);
        }
        record
    }

    #[test]
    fn the_exit_and_oom_records_read_back_as_the_c_side_lays_them_out() {
        use crate::event::AttrValue::Int;
        let header = layout(TAPIO_H, "header", &[]);
        let exit = layout(
            include_str!("../../../ebpf/kernel.bpf.c"),
            "exit_record",
            &header,
        );
        let record = record_of(
            &exit,
            &[
                ("kind", &kernel::KIND_EXIT.to_le_bytes()),
                ("pid", &u32::MAX.to_le_bytes()),
                ("comm", b"sh\0"),
                ("ppid", &77u32.to_le_bytes()),
                ("exit_code", &(3i32 << 8).to_le_bytes()),
            ],
        );
        let mut stamp = Stamp::new("kernel", "node");
        let event = kernel::decode(&mut stamp, &record).expect("an exit event");
        assert_eq!(event.kind.as_ref(), "process.exit");
        assert_eq!(event.attributes.get("ppid"), Some(&Int(77)));
        assert_eq!(event.attributes.get("exit_code"), Some(&Int(3)));

        let container = "3f4a1c2b9d8e7f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";
        let pod = "0d5e5c9a-1b2c-4d3e-8f9a-0b1c2d3e4f5a";
        let oom = layout(
            include_str!("../../../ebpf/memory.bpf.c"),
            "oom_record",
            &header,
        );
        let record = record_of(
            &oom,
            &[
                ("kind", &memory::KIND_OOM_KILL.to_le_bytes()),
                ("pid", &11u32.to_le_bytes()),
                ("victim_pid", &u32::MAX.to_le_bytes()),
                ("victim_uid", &5u32.to_le_bytes()),
                ("victim_comm", b"java\0"),
                ("total_vm_pages", &10u64.to_le_bytes()),
                ("anon_pages", &256i64.to_le_bytes()),
                ("file_pages", &1i64.to_le_bytes()),
                ("shmem_pages", &2i64.to_le_bytes()),
                ("oom_score_adj", &(-7i32).to_le_bytes()),
                ("memcg_name", format!("{container}\0").as_bytes()),
                ("memcg_parent", format!("pod{pod}\0").as_bytes()),
            ],
        );
        let mut stamp = Stamp::new("memory", "node");
        let event = memory::decode(&mut stamp, 4096, &record).expect("an oom event");
        // No /proc entry for the victim: its container comes from the memory cgroup.
        assert_eq!(&*event.entities.container_id, container);
        assert_eq!(&*event.entities.pod_uid, pod);
        assert_eq!(
            event.attributes.get("victim_pid"),
            Some(&Int(i64::from(u32::MAX)))
        );
        assert_eq!(event.attributes.get("uid"), Some(&Int(5)));
        assert_eq!(
            event.attributes.get("total_vm_bytes"),
            Some(&Int(10 * 4096))
        );
        assert_eq!(
            event.attributes.get("anon_rss_bytes"),
            Some(&Int(256 * 4096))
        );
        assert_eq!(event.attributes.get("file_rss_bytes"), Some(&Int(4096)));
        assert_eq!(
            event.attributes.get("shmem_rss_bytes"),
            Some(&Int(2 * 4096))
        );
        assert_eq!(event.attributes.get("oom_score_adj"), Some(&Int(-7)));
        assert_eq!(event.attributes.get("killer_pid"), Some(&Int(11)));
    }

    #[test]
    fn the_tcp_record_reads_back_as_the_c_side_lays_it_out() {
        use crate::event::AttrValue::{Int, Str};
        let header = layout(TAPIO_H, "header", &[]);
        let tcp = layout(
            include_str!("../../../ebpf/network.bpf.c"),
            "tcp_record",
            &header,
        );
        let record = record_of(
            &tcp,
            &[
                ("kind", &network::KIND_TCP_FAILED.to_le_bytes()),
                ("c.pid", &u32::MAX.to_le_bytes()),
                ("c.family", &2u16.to_le_bytes()),
                ("c.sport", &40000u16.to_le_bytes()),
                ("c.dport", &5432u16.to_le_bytes()),
                ("c.comm", b"psql\0"),
                ("c.saddr", &[10, 0, 0, 1]),
                ("c.daddr", &[10, 0, 0, 2]),
                ("duration_ns", &3_000_000u64.to_le_bytes()),
                ("oldstate", &2i32.to_le_bytes()),
                ("newstate", &7i32.to_le_bytes()),
                ("err", &(-111i32).to_le_bytes()),
            ],
        );
        let mut stamp = Stamp::new("network", "node");
        let event = network::decode(&mut stamp, &mut network::ListenerOwners::default(), &record)
            .expect("a tcp event");
        assert_eq!(event.kind.as_ref(), "net.tcp.connect_failed");
        assert_eq!(event.attributes.get("saddr"), Some(&Str("10.0.0.1".into())));
        assert_eq!(event.attributes.get("daddr"), Some(&Str("10.0.0.2".into())));
        assert_eq!(event.attributes.get("sport"), Some(&Int(40000)));
        assert_eq!(event.attributes.get("dport"), Some(&Int(5432)));
        assert_eq!(event.attributes.get("duration_us"), Some(&Int(3000)));
        assert_eq!(
            event.attributes.get("error"),
            Some(&Str("ECONNREFUSED".into()))
        );
    }

    #[test]
    fn the_dns_record_reads_back_as_the_c_side_lays_it_out() {
        let source = include_str!("../../../ebpf/dns.bpf.c");
        let fields = layout(source, "dns_record", &[]);
        assert_eq!(defines(source)["PACKET_MAX"], dns::PACKET_MAX as u64);
        let packet: Vec<u8> = (1..=60).collect();
        let record = record_of(
            &fields,
            &[
                ("kind", &dns::KIND_DNS_PACKET.to_le_bytes()),
                ("pid", &4242u32.to_le_bytes()),
                ("ktime", &0x0102_0304_0506_0708u64.to_le_bytes()),
                ("cgroup_id", &0x1112_1314_1516_1718u64.to_le_bytes()),
                ("ifindex", &3u32.to_le_bytes()),
                ("pkt_type", &4u32.to_le_bytes()),
                ("protocol", &dns::ETH_P_IP.to_le_bytes()),
                ("len", &60u16.to_le_bytes()),
                ("comm", b"curl\0"),
                ("packet", &packet),
            ],
        );
        // What the ring hands over is sizeof(struct dns_record): the C struct padded to 8.
        assert_eq!(record.len(), record.len().next_multiple_of(8));
        let read = dns::Record::read(&record).expect("a dns record");
        assert_eq!(
            read,
            dns::Record {
                pid: 4242,
                ktime: 0x0102_0304_0506_0708,
                cgroup_id: 0x1112_1314_1516_1718,
                protocol: dns::ETH_P_IP,
                comm: "curl".into(),
                packet: &packet,
            }
        );
        assert_eq!(dns::Record::read(&record[..record.len() - 1]), None);
    }
}
