//! `storage-io`: block request latency, failed block requests and slow fsyncs
//! (`ebpf/storage.bpf.c`).
//!
//! The kernel keeps a log2 histogram of request latency per (device, operation, issuing
//! cgroup), as running totals. Every interval this side reads what grew and merges it per
//! (device, operation). When the interval's p99 reaches `latency_threshold`, it sends one
//! `block.latency_spike`. When the device falls back under the line (or goes idle), it sends
//! one `block.latency_recovered`. Failed requests (`block.io_error`) and ext4 fsyncs slower
//! than `fsync_threshold` (`fs.slow_fsync`) come as records.

use std::collections::HashMap;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use serde::Deserialize;

use super::histogram::{Crossing, Growth, Lines, Log2, SLOTS, Totals, first_slot_over};
use super::names::errno_name;
use super::{Header, Reader, Ring, Stamp, attach_tracepoint, load};
use crate::collectors::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::{Event, Severity};

/// Registry name.
pub const NAME: &str = "storage-io";

// Record kinds of ebpf/tapio.h, and the histogram's shape in ebpf/storage.bpf.c.
pub(super) const KIND_IO_ERROR: u32 = 50;
pub(super) const KIND_SLOW_FSYNC: u32 = 51;

/// Options of the `storage-io` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageIoConfig {
    /// How often the latency histograms are read.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub interval: Duration,
    /// A device's interval p99 (or p999, over at least 1000 requests) at or above this is a
    /// spike.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub latency_threshold: Duration,
    /// Requests an interval needs before its percentiles count.
    pub min_requests: u64,
    /// An fsync at least this long is reported (ext4).
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub fsync_threshold: Duration,
    /// Report only these devices (names like `vda`, `nvme0n1`); empty: all.
    pub devices: Vec<String>,
    /// Bytes of the probe's ring buffer: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
}

impl Default for StorageIoConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            latency_threshold: Duration::from_millis(100),
            min_requests: 10,
            fsync_threshold: Duration::from_secs(1),
            devices: Vec::new(),
            ring_buffer_bytes: super::DEFAULT_RING_BUFFER_BYTES,
        }
    }
}

type Key = [u32; 4];

impl CollectorConfig for StorageIoConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        super::RingOptions {
            ring_buffer_bytes: self.ring_buffer_bytes,
        }
        .validate(path, problems);
        if self.interval < Duration::from_millis(100) {
            problems.push(format!(
                "{path}.interval: must be at least 100ms, got {:?}",
                self.interval
            ));
        }
        for (field, value) in [
            ("latency_threshold", self.latency_threshold),
            ("fsync_threshold", self.fsync_threshold),
        ] {
            if value.is_zero() {
                problems.push(format!("{path}.{field}: must be above zero"));
            }
        }
        if self.min_requests == 0 {
            problems.push(format!("{path}.min_requests: must be at least 1"));
        }
    }

    fn reporting_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let mut ebpf = load(object!("storage"), self.ring_buffer_bytes, &[])?;
            let map_error = |what: &str, error: aya::maps::MapError| {
                Error::unavailable_by(format!("map {what}"), error)
            };
            let mut settings: Array<_, u64> = Array::try_from(
                ebpf.map_mut("settings")
                    .ok_or_else(|| Error::unavailable("probe object has no map settings"))?,
            )
            .map_err(|e| map_error("settings", e))?;
            let fsync_ns = u64::try_from(self.fsync_threshold.as_nanos()).unwrap_or(u64::MAX);
            settings
                .set(0, fsync_ns, 0)
                .map_err(|e| map_error("settings", e))?;
            attach_tracepoint(&mut ebpf, "tapio_rq_issue", "block", "block_rq_issue")?;
            attach_tracepoint(&mut ebpf, "tapio_rq_complete", "block", "block_rq_complete")?;
            // ext4's own tracepoints: no syscall tracepoint, which would slow every syscall.
            attach_tracepoint(
                &mut ebpf,
                "tapio_fsync_enter",
                "ext4",
                "ext4_sync_file_enter",
            )?;
            attach_tracepoint(&mut ebpf, "tapio_fsync_exit", "ext4", "ext4_sync_file_exit")?;
            let hists: BpfHashMap<MapData, Key, Totals> = BpfHashMap::try_from(
                ebpf.take_map("hists")
                    .ok_or_else(|| Error::unavailable("probe object has no map hists"))?,
            )
            .map_err(|e| map_error("hists", e))?;
            let ring = Ring::new(NAME, ebpf)?;
            let state = State {
                latency: Latency::new(&self, hists),
                stamp: Stamp::new(NAME, &cx.node_name),
                names: DeviceNames::default(),
            };
            Ok::<Running, Error>(Box::pin(ring.pump_every(
                context,
                self.interval,
                state,
                |state, record| decode(&mut state.stamp, &mut state.names, record),
                |state| state.latency.read(&mut state.stamp, &mut state.names),
            )))
        })
    }
}

/// What the records and the interval's reading share: one id sequence, one name cache.
struct State {
    latency: Latency,
    stamp: Stamp,
    names: DeviceNames,
}

/// Device names by `dev_t` (the kernel's encoding: major << 20 | minor), from sysfs.
#[derive(Debug, Default)]
struct DeviceNames(HashMap<u32, String>);

impl DeviceNames {
    fn name(&mut self, dev: u32) -> String {
        self.0
            .entry(dev)
            .or_insert_with(|| {
                let (major, minor) = (dev >> 20, dev & 0xf_ffff);
                std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
                    .ok()
                    .and_then(|text| {
                        text.lines()
                            .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
                    })
                    .unwrap_or_else(|| format!("{major}:{minor}"))
            })
            .clone()
    }
}

fn op_name(op: u32) -> &'static str {
    match op {
        0 => "read",
        1 => "write",
        2 => "flush",
        3 => "discard",
        _ => "other",
    }
}

/// The interval's merged histogram of one (device, operation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Interval {
    latency: Log2,
    bytes: u64,
    /// The issuing cgroup with the most requests at or over the line, and how many.
    top: Option<(u64, u64)>,
}

/// Reads the kernel's histograms and decides crossings.
struct Latency {
    hists: BpfHashMap<MapData, Key, Totals>,
    growth: Growth<Key>,
    lines: Lines<(u32, u32)>,
    threshold_us: u64,
    min_requests: u64,
    interval_ns: u64,
    last_read: Option<u64>,
    devices: Vec<String>,
}

impl Latency {
    fn new(config: &StorageIoConfig, hists: BpfHashMap<MapData, Key, Totals>) -> Self {
        let threshold_us = u64::try_from(config.latency_threshold.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            hists,
            growth: Growth::default(),
            lines: Lines::default(),
            threshold_us,
            min_requests: config.min_requests,
            interval_ns: u64::try_from(config.interval.as_nanos()).unwrap_or(u64::MAX),
            last_read: None,
            devices: config.devices.clone(),
        }
    }

    /// The events of the interval since the last read.
    fn read(&mut self, stamp: &mut Stamp, names: &mut DeviceNames) -> Vec<Event> {
        let entries: Vec<(Key, Totals)> = self.hists.iter().filter_map(Result::ok).collect();
        let mut intervals: HashMap<(u32, u32), Interval> = HashMap::new();
        let mut idle = Vec::new();
        let line_slot = first_slot_over(self.threshold_us);
        for (key, totals) in entries {
            let Some(grown) = self.growth.since(key, totals) else {
                idle.push(key);
                continue;
            };
            let interval = intervals.entry((key[0], key[1])).or_default();
            interval.latency.add(&grown);
            interval.bytes += grown[SLOTS + 1];
            let slow: u64 = grown[line_slot.min(SLOTS)..SLOTS].iter().sum();
            let cgroup = u64::from(key[2]) | (u64::from(key[3]) << 32);
            if slow > 0 && interval.top.is_none_or(|(_, most)| slow > most) {
                interval.top = Some((cgroup, slow));
            }
        }
        for key in idle {
            // An idle key is only deleted after everything it counted was reported.
            let _ = self.hists.remove(&key);
        }
        // Stamped at the start of the interval the figures cover: a slow fsync recorded
        // during it must not come before its cause.
        let now = crate::event::unix_nanos_now();
        let started = self
            .last_read
            .replace(now)
            .unwrap_or(now - self.interval_ns);
        let mut events = Vec::new();
        let readings: Vec<((u32, u32), bool)> = intervals
            .iter()
            .map(|(pair, i)| (*pair, i.latency.over(self.threshold_us, self.min_requests)))
            .collect();
        for ((dev, op), crossing) in self.lines.cross(readings) {
            let interval = intervals.remove(&(dev, op)).unwrap_or_default();
            let kind = match crossing {
                Crossing::Over => "block.latency_spike",
                Crossing::Back => "block.latency_recovered",
            };
            let device = names.name(dev);
            if self.devices.is_empty() || self.devices.contains(&device) {
                events.push(self.event(stamp, started, kind, &device, op, &interval));
            }
        }
        events
    }

    fn event(
        &self,
        stamp: &mut Stamp,
        started: u64,
        kind: &'static str,
        device: &str,
        op: u32,
        interval: &Interval,
    ) -> Event {
        let mut event = stamp.node_event(started, kind);
        let (p50, p99, p999) = (
            interval.latency.quantile_us(500),
            interval.latency.quantile_us(990),
            interval.latency.quantile_us(999),
        );
        let op = op_name(op);
        let threshold = self.threshold_us;
        if kind == "block.latency_spike" {
            event.severity = Severity::Warning;
            event.message = format!(
                "{device} {op} latency p99 {p99} µs over {threshold} µs ({} requests)",
                interval.latency.count
            );
        } else {
            event.message = format!("{device} {op} latency back under {threshold} µs");
        }
        let as_int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let a = &mut event.attributes;
        a.set("device", device.to_owned());
        a.set("op", op);
        a.set("p50_us", as_int(p50));
        a.set("p99_us", as_int(p99));
        a.set("p999_us", as_int(p999));
        a.set("max_us", as_int(interval.latency.max_us()));
        a.set("requests", as_int(interval.latency.count));
        a.set("bytes", as_int(interval.bytes));
        a.set("threshold_us", as_int(threshold));
        if let Some((cgroup, _)) = interval.top.filter(|(cgroup, _)| *cgroup != 0) {
            a.set("top_cgroup_id", as_int(cgroup));
            if let Some(container) = stamp.container_of(0, cgroup) {
                event
                    .attributes
                    .set("top_container_id", container.to_string());
            }
        }
        event
    }
}

fn decode(stamp: &mut Stamp, names: &mut DeviceNames, record: &[u8]) -> Option<Event> {
    let mut reader = Reader::new(record);
    let header = Header::read(&mut reader)?;
    match header.kind {
        KIND_IO_ERROR => io_error(stamp, names, &header, &mut reader),
        KIND_SLOW_FSYNC => slow_fsync(stamp, names, &header, &mut reader),
        _ => None,
    }
}

fn io_error(
    stamp: &mut Stamp,
    names: &mut DeviceNames,
    header: &Header,
    reader: &mut Reader<'_>,
) -> Option<Event> {
    let dev = reader.u32()?;
    let op = op_name(reader.u32()?);
    let sector = reader.u64()?;
    let error = reader.i32()?;
    let bytes = reader.u32()?;
    let issuer = reader.u64()?;
    let device = names.name(dev);
    let errno = errno_name(error.unsigned_abs());
    let mut event = stamp.node_event(stamp.unix_nanos(header.ktime), "block.io_error");
    event.severity = Severity::Error;
    event.message = format!("{device} {op} of {bytes} bytes at sector {sector} failed: {errno}");
    let a = &mut event.attributes;
    a.set("device", device);
    a.set("op", op);
    a.set("sector", i64::try_from(sector).unwrap_or(i64::MAX));
    a.set("bytes", bytes);
    a.set("error", errno);
    a.set(
        "issuer_cgroup_id",
        i64::try_from(issuer).unwrap_or(i64::MAX),
    );
    Some(event)
}

fn slow_fsync(
    stamp: &mut Stamp,
    names: &mut DeviceNames,
    header: &Header,
    reader: &mut Reader<'_>,
) -> Option<Event> {
    let dev = reader.u32()?;
    let ret = reader.i32()?;
    let inode = reader.u64()?;
    let nanos = reader.u64()?;
    let datasync = reader.u32()? != 0;
    let device = names.name(dev);
    let ms = nanos / 1_000_000;
    let mut event = stamp.event(header, "fs.slow_fsync");
    event.severity = Severity::Warning;
    event.message = format!(
        "{} (pid {}) waited {ms} ms for {} of inode {inode} on {device}",
        header.comm,
        header.pid,
        if datasync { "fdatasync" } else { "fsync" }
    );
    let a = &mut event.attributes;
    a.set("device", device);
    a.set("inode", i64::try_from(inode).unwrap_or(i64::MAX));
    a.set("datasync", datasync);
    a.set(
        "duration_us",
        i64::try_from(nanos / 1000).unwrap_or(i64::MAX),
    );
    a.set("result", ret);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_fsyncs_and_failed_requests_are_decoded() {
        let header = |kind: u32| {
            let mut r = Vec::new();
            for n in [kind, 42, 42, 0] {
                r.extend_from_slice(&n.to_le_bytes());
            }
            r.extend_from_slice(&5u64.to_le_bytes());
            r.extend_from_slice(&0u64.to_le_bytes());
            let mut comm = [0u8; 16];
            comm[..2].copy_from_slice(b"dd");
            r.extend_from_slice(&comm);
            r
        };
        let mut stamp = Stamp::new(NAME, "n");
        let mut names = DeviceNames::default();
        // A device no sysfs knows: named by its numbers.
        let dev: u32 = (250 << 20) | 7;
        let mut fsync = header(KIND_SLOW_FSYNC);
        fsync.extend_from_slice(&dev.to_le_bytes());
        fsync.extend_from_slice(&0i32.to_le_bytes());
        fsync.extend_from_slice(&12u64.to_le_bytes());
        fsync.extend_from_slice(&1_500_000_000u64.to_le_bytes());
        fsync.extend_from_slice(&1u32.to_le_bytes());
        fsync.extend_from_slice(&0u32.to_le_bytes());
        let event = decode(&mut stamp, &mut names, &fsync).expect("an fsync record");
        crate::event::schema::check(&event).expect("the documented shape");
        assert_eq!(
            event.message,
            "dd (pid 42) waited 1500 ms for fdatasync of inode 12 on 250:7"
        );
        assert_eq!(event.attributes.int("duration_us"), Some(1_500_000));

        let mut failed = header(KIND_IO_ERROR);
        failed.extend_from_slice(&dev.to_le_bytes());
        failed.extend_from_slice(&1u32.to_le_bytes());
        failed.extend_from_slice(&2048u64.to_le_bytes());
        failed.extend_from_slice(&(-28i32).to_le_bytes());
        failed.extend_from_slice(&4096u32.to_le_bytes());
        failed.extend_from_slice(&0u64.to_le_bytes());
        let event = decode(&mut stamp, &mut names, &failed).expect("an error record");
        crate::event::schema::check(&event).expect("the documented shape");
        assert_eq!(event.attributes.text("error"), Some("ENOSPC"));
        assert_eq!(event.entities.pid, 0, "a device's event, not a process's");
    }
}
