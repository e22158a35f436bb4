//! `syscall-errors`: failing syscalls, counted in the kernel per (cgroup, process, syscall,
//! errno) by `ebpf/syscalls.bpf.c` and reported as one event per key per interval.
//!
//! The kernel map holds running totals; each interval this side reports what grew since
//! the last read and deletes keys that did not grow, so a key is only ever deleted after
//! its whole count was reported (a hit racing the delete of an idle key is the one loss).

use std::collections::HashMap;
use std::time::Duration;

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use serde::Deserialize;

use super::names::{errno_name, errno_number, syscall_name, syscall_number};
use super::{Lost, Stamp, attach_btf_tracepoint, c_string, load};
use crate::collectors::{BuildContext, BuildFuture, CollectorConfig, Context, Error, Running};
use crate::event::Event;

/// Registry name.
pub const NAME: &str = "syscall-errors";

/// Errnos that normal non-blocking and interrupted I/O returns all the time.
const QUIET_ERRNOS: [&str; 3] = ["EAGAIN", "EINTR", "EINPROGRESS"];

/// Options of the `syscall-errors` collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyscallErrorsConfig {
    /// How often counts are reported.
    #[serde(deserialize_with = "crate::units::deserialize_duration")]
    pub interval: Duration,
    /// Count only these errnos (names like `ENOENT` or numbers); empty counts all.
    pub errnos: Vec<String>,
    /// Never count these; default `EAGAIN`, `EINTR`, `EINPROGRESS`. Not with `errnos`.
    pub ignore_errnos: Option<Vec<String>>,
    /// Count only these syscalls (names like `openat` or numbers); empty counts all.
    pub syscalls: Vec<String>,
    /// Distinct (cgroup, process, syscall, errno) keys the kernel holds between reports;
    /// failures of new keys beyond it are counted as lost.
    pub max_keys: u32,
}

impl Default for SyscallErrorsConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            errnos: Vec::new(),
            ignore_errnos: None,
            syscalls: Vec::new(),
            max_keys: 10_240,
        }
    }
}

impl SyscallErrorsConfig {
    /// Appends problems to `problems`, each prefixed with `prefix`.
    fn check(&self, prefix: &str, problems: &mut Vec<String>) {
        if self.interval < Duration::from_millis(100) {
            problems.push(format!(
                "{prefix}.interval: must be at least 100ms, got {:?}",
                self.interval
            ));
        }
        if !(16..=1_000_000).contains(&self.max_keys) {
            problems.push(format!(
                "{prefix}.max_keys: must be from 16 to 1000000, got {}",
                self.max_keys
            ));
        }
        if !self.errnos.is_empty() && self.ignore_errnos.as_ref().is_some_and(|i| !i.is_empty()) {
            problems.push(format!(
                "{prefix}: set errnos (count only these) or ignore_errnos (count all but these), not both"
            ));
        }
        for (field, names, number) in [
            (
                "errnos",
                &self.errnos,
                errno_number as fn(&str) -> Option<u32>,
            ),
            (
                "ignore_errnos",
                self.ignore_errnos.as_ref().unwrap_or(&Vec::new()),
                errno_number,
            ),
            ("syscalls", &self.syscalls, syscall_number),
        ] {
            for name in names {
                if number(name).is_none_or(|n| n > MAX_NUMBER) {
                    problems.push(format!("{prefix}.{field}: unknown name or number `{name}`"));
                }
            }
        }
    }

    /// The errnos listed in the kernel's table and whether they are the only ones counted
    /// (`true`) or the ones ignored (`false`).
    fn errno_list(&self) -> (Vec<u32>, bool) {
        if self.errnos.is_empty() {
            let ignored = self
                .ignore_errnos
                .clone()
                .unwrap_or_else(|| QUIET_ERRNOS.map(String::from).to_vec());
            (
                ignored.iter().filter_map(|n| errno_number(n)).collect(),
                false,
            )
        } else {
            (
                self.errnos.iter().filter_map(|n| errno_number(n)).collect(),
                true,
            )
        }
    }
}

/// Highest errno and syscall number the kernel tables hold (ebpf/syscalls.bpf.c).
const MAX_NUMBER: u32 = 1023;

type Key = [u32; 6];
type Counts = [u64; 5];

impl CollectorConfig for SyscallErrorsConfig {
    const NAME: &'static str = NAME;

    fn validate(&self, path: &str, problems: &mut Vec<String>) {
        self.check(path, problems);
    }

    fn reporting_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn build(self, cx: BuildContext, context: Context) -> BuildFuture {
        Box::pin(async move {
            let (errnos, only_errnos) = self.errno_list();
            let syscalls: Vec<u32> = self
                .syscalls
                .iter()
                .filter_map(|n| syscall_number(n))
                .collect();
            let flags = [
                ("only_listed_errnos", u8::from(only_errnos)),
                ("only_listed_syscalls", u8::from(!syscalls.is_empty())),
            ];
            // The ring buffer is unused here: the smallest one the kernel takes.
            let mut ebpf = load(object!("syscalls"), 4096, &flags)?;
            let map_error = |what: &str, error: aya::maps::MapError| {
                Error::unavailable_by(format!("map {what}"), error)
            };
            for (name, numbers) in [("errno_list", &errnos), ("syscall_list", &syscalls)] {
                let mut table: Array<_, u8> =
                    Array::try_from(ebpf.map_mut(name).ok_or_else(|| {
                        Error::unavailable(format!("probe object has no map {name}"))
                    })?)
                    .map_err(|e| map_error(name, e))?;
                for &n in numbers {
                    table.set(n, 1, 0).map_err(|e| map_error(name, e))?;
                }
            }
            attach_btf_tracepoint(&mut ebpf, "tapio_sys_exit", "sys_exit")?;
            let counts: BpfHashMap<MapData, Key, Counts> = BpfHashMap::try_from(
                ebpf.take_map("counts")
                    .ok_or_else(|| Error::unavailable("probe object has no map counts"))?,
            )
            .map_err(|e| map_error("counts", e))?;
            let lost = Lost::take(NAME, &mut ebpf)?;
            let reader = Flusher {
                counts,
                lost,
                reported: HashMap::new(),
                stamp: Stamp::new(NAME, &cx.node_name),
                _ebpf: ebpf,
            };
            Ok::<Running, Error>(Box::pin(run(reader, self.interval, context)))
        })
    }
}

struct Flusher {
    counts: BpfHashMap<MapData, Key, Counts>,
    lost: Lost,
    reported: HashMap<Key, u64>,
    stamp: Stamp,
    // Dropping it detaches the program.
    _ebpf: aya::Ebpf,
}

async fn run(mut flusher: Flusher, interval: Duration, context: Context) -> Result<(), Error> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let stopping = tokio::select! {
            biased;
            () = context.shutdown.cancelled() => true,
            _ = ticker.tick() => false,
        };
        // On shutdown one last read, so counts of the last interval are not lost.
        for event in flusher.flush(&context) {
            context.out.send(event).await?;
        }
        if stopping {
            return Ok(());
        }
    }
}

impl Flusher {
    /// Events for every key that grew since the last read; forgets keys that did not.
    fn flush(&mut self, context: &Context) -> Vec<Event> {
        let mut events = Vec::new();
        let mut idle = Vec::new();
        let entries: Vec<(Key, Counts)> = self.counts.iter().filter_map(Result::ok).collect();
        for (key, counts) in entries {
            let before = self.reported.get(&key).copied().unwrap_or(0);
            let grown = counts[0].saturating_sub(before);
            if grown == 0 {
                idle.push(key);
                continue;
            }
            self.reported.insert(key, counts[0]);
            events.push(self.event(&key, &counts, grown));
        }
        for key in idle {
            let _ = self.counts.remove(&key);
            self.reported.remove(&key);
        }
        self.lost.report(context);
        events
    }

    fn event(&mut self, key: &Key, counts: &Counts, grown: u64) -> Event {
        let cgroup_id = u64::from(key[0]) | (u64::from(key[1]) << 32);
        let (pid, syscall, errno) = (key[2], syscall_name(key[3]), errno_name(key[4]));
        let comm_bytes: Vec<u8> = counts[3..5].iter().flat_map(|w| w.to_le_bytes()).collect();
        let comm = c_string(&comm_bytes);
        let mut event = self
            .stamp
            .event_at(counts[2], "syscall.error", pid, &comm, cgroup_id);
        event.message = format!("{comm} (pid {pid}): {syscall} failed with {errno} {grown} times");
        event.attributes.set("syscall", syscall);
        event.attributes.set("errno", errno);
        event
            .attributes
            .set("count", i64::try_from(grown).unwrap_or(i64::MAX));
        event.attributes.set(
            "first_seen_unix_nano",
            i64::try_from(self.stamp.unix_nanos(counts[1])).unwrap_or(i64::MAX),
        );
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_name_their_bad_entries_and_conflicts() {
        let config = SyscallErrorsConfig {
            errnos: vec!["ENOENT".into(), "ENOPE".into()],
            ignore_errnos: Some(vec!["EAGAIN".into()]),
            syscalls: vec!["openat".into(), "frobnicate".into()],
            ..SyscallErrorsConfig::default()
        };
        let mut problems = Vec::new();
        config.validate("c", &mut problems);
        let all = problems.join("\n");
        assert!(
            all.contains("c.errnos: unknown name or number `ENOPE`"),
            "{all}"
        );
        assert!(
            all.contains("c.syscalls: unknown name or number `frobnicate`"),
            "{all}"
        );
        assert!(all.contains("not both"), "{all}");
        assert_eq!(problems.len(), 3, "{all}");
    }

    #[test]
    fn by_default_quiet_errnos_are_ignored_and_a_list_counts_only_itself() {
        assert_eq!(
            SyscallErrorsConfig::default().errno_list(),
            (vec![11, 4, 115], false)
        );
        let only = SyscallErrorsConfig {
            errnos: vec!["ENOENT".into(), "13".into()],
            ..SyscallErrorsConfig::default()
        };
        assert_eq!(only.errno_list(), (vec![2, 13], true));
    }
}
