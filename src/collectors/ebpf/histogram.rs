//! What the aggregating probes share: log2 latency histograms that the kernel keeps as
//! running totals (`storage.bpf.c`, `sched.bpf.c`), read as per-interval growth, and lines
//! that are reported once when crossed and once when crossed back.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Buckets of a histogram: [0, 2) µs, [2, 4) µs, ... [2^23 µs, inf).
pub(crate) const SLOTS: usize = 24;

/// Requests an interval must have before its p999 counts: fewer, and it is the maximum.
const P999_MIN_COUNT: u64 = 1000;

/// A histogram's running totals as the kernel keeps them: the buckets, the count, and one
/// more sum (bytes, or nanoseconds waited).
pub(crate) type Totals = [u64; SLOTS + 2];

/// What each key's running totals grew by since they were last read.
#[derive(Debug)]
pub(crate) struct Growth<K> {
    reported: HashMap<K, Totals>,
}

impl<K> Default for Growth<K> {
    fn default() -> Self {
        Self {
            reported: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Growth<K> {
    /// How much `totals` of `key` grew since the last call. `None` when nothing more was
    /// counted: the key is forgotten, and the caller deletes it from the kernel's map,
    /// knowing that everything it counted was reported.
    pub(crate) fn since(&mut self, key: K, totals: Totals) -> Option<Totals> {
        let before = self.reported.get(&key).copied().unwrap_or([0; SLOTS + 2]);
        let mut grown = [0; SLOTS + 2];
        for ((g, now), then) in grown.iter_mut().zip(totals).zip(before) {
            *g = now.saturating_sub(then);
        }
        if grown[SLOTS] == 0 {
            self.reported.remove(&key);
            return None;
        }
        self.reported.insert(key, totals);
        Some(grown)
    }
}

/// One interval's histogram.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Log2 {
    pub slots: [u64; SLOTS],
    pub count: u64,
}

impl Log2 {
    /// Adds `grown`: how much each bucket grew, then how much the count grew.
    pub(crate) fn add(&mut self, grown: &[u64]) {
        for (slot, n) in self.slots.iter_mut().zip(grown) {
            *slot += n;
        }
        self.count += grown.get(SLOTS).copied().unwrap_or(0);
    }

    /// The `per_mille`-th quantile's bucket, as its lower edge in microseconds: the true
    /// value is at least this and under twice it.
    pub(crate) fn quantile_us(&self, per_mille: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (self.count * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (slot, n) in self.slots.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return lower_edge_us(slot);
            }
        }
        lower_edge_us(SLOTS - 1)
    }

    /// The slowest one's bucket, as its lower edge in microseconds.
    pub(crate) fn max_us(&self) -> u64 {
        self.slots
            .iter()
            .rposition(|n| *n > 0)
            .map_or(0, lower_edge_us)
    }

    /// Whether the interval is over `threshold_us`: its p99, or its p999 over at least a
    /// thousand, reaches it, with at least `min_count` in all.
    pub(crate) fn over(&self, threshold_us: u64, min_count: u64) -> bool {
        self.count >= min_count
            && (self.quantile_us(990) >= threshold_us
                || (self.count >= P999_MIN_COUNT && self.quantile_us(999) >= threshold_us))
    }
}

/// The lower edge of bucket `slot`, in microseconds.
pub(crate) fn lower_edge_us(slot: usize) -> u64 {
    if slot == 0 { 0 } else { 1 << slot }
}

/// The first bucket wholly at or over `threshold_us` ([`SLOTS`] when none is).
pub(crate) fn first_slot_over(threshold_us: u64) -> usize {
    (0..SLOTS)
        .find(|s| lower_edge_us(*s) >= threshold_us)
        .unwrap_or(SLOTS)
}

/// A crossing of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Crossing {
    /// Went over.
    Over,
    /// Came back under, or went quiet.
    Back,
}

/// Which keys are over their line, so that each crossing is reported once each way.
#[derive(Debug)]
pub(crate) struct Lines<K> {
    over: HashSet<K>,
}

impl<K> Default for Lines<K> {
    fn default() -> Self {
        Self {
            over: HashSet::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Lines<K> {
    /// The crossings of this reading, in key order. `readings` says for each key read
    /// whether it is over now; a key over before and not read at all went quiet.
    pub(crate) fn cross(
        &mut self,
        readings: impl IntoIterator<Item = (K, bool)>,
    ) -> Vec<(K, Crossing)> {
        let mut read = HashSet::new();
        let mut crossings = Vec::new();
        for (key, over) in readings {
            read.insert(key.clone());
            match (self.over.contains(&key), over) {
                (false, true) => {
                    self.over.insert(key.clone());
                    crossings.push((key, Crossing::Over));
                }
                (true, false) => {
                    self.over.remove(&key);
                    crossings.push((key, Crossing::Back));
                }
                _ => {}
            }
        }
        let quiet: Vec<K> = self
            .over
            .iter()
            .filter(|k| !read.contains(*k))
            .cloned()
            .collect();
        for key in quiet {
            self.over.remove(&key);
            crossings.push((key, Crossing::Back));
        }
        crossings.sort_by(|a, b| a.0.cmp(&b.0));
        crossings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(slots: &[(usize, u64)]) -> Log2 {
        let mut h = Log2::default();
        for &(slot, n) in slots {
            h.slots[slot] = n;
            h.count += n;
        }
        h
    }

    #[test]
    fn percentiles_are_bucket_lower_edges() {
        // 98 at [8, 16) µs, 2 at [2^17, 2^18) µs (131-262 ms).
        let h = hist(&[(3, 98), (17, 2)]);
        assert_eq!(h.quantile_us(500), 8);
        assert_eq!(h.quantile_us(990), 131_072);
        assert_eq!(h.max_us(), 131_072);
        assert!(h.over(100_000, 10), "p99 at least 131 ms is over 100 ms");
        assert!(!h.over(100_000, 101), "too few to count");
        assert!(!hist(&[(3, 100)]).over(100_000, 10));
        assert_eq!(first_slot_over(100_000), 17);
    }

    #[test]
    fn p999_counts_only_over_a_thousand() {
        assert!(!hist(&[(3, 998), (17, 1)]).over(100_000, 10), "p99 rules");
        let many = hist(&[(3, 1997), (17, 3)]);
        assert_eq!(many.quantile_us(990), 8);
        assert!(many.over(100_000, 10), "3 of 2000 slow: p999 over the line");
    }

    #[test]
    fn each_crossing_is_reported_once_each_way() {
        let mut lines = Lines::default();
        assert_eq!(lines.cross([(1, true)]), [(1, Crossing::Over)]);
        assert!(
            lines.cross([(1, true)]).is_empty(),
            "still over: nothing new"
        );
        assert_eq!(lines.cross([(1, false)]), [(1, Crossing::Back)]);
        assert!(lines.cross([(1, false)]).is_empty());
        assert_eq!(lines.cross([(1, true), (2, true)]).len(), 2);
        assert_eq!(
            lines.cross([(2, true)]),
            [(1, Crossing::Back)],
            "a key that went quiet is back under the line"
        );
    }
}
