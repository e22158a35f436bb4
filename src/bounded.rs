//! A map that forgets its oldest entries beyond a capacity, with a fast hash for ids the
//! agent itself produces: the one bounded map of the entity index, the kernel
//! collectors' container cache and kubeapi's seen events.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A word-at-a-time multiplicative hash (the `FxHash` scheme): the keys are ids the
/// collectors produce, not attacker-chosen, and `SipHash` on a 64-character container id
/// per event was a large share of the engine's time.
#[derive(Default)]
pub struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// A `HashMap` hashed with [`Fx`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// An in-memory key over `parts`: [`Fx`] over each part and its length (so ("ab", "c")
/// and ("a", "bc") differ), mixed with the `SplitMix64` finaliser so that every bit is
/// usable. Not stable across versions: for maps that live in one process (correlation
/// keys), where byte-wise FNV on 64-character container ids was a large share of the
/// engine's time.
#[must_use]
pub fn key_parts(parts: &[&[u8]]) -> u64 {
    let mut hasher = Fx(0xcbf2_9ce4_8422_2325);
    for part in parts {
        hasher.write(part);
        hasher.write_usize(part.len());
    }
    let mut h = hasher.finish();
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A map that forgets its oldest entries beyond a capacity.
#[derive(Debug)]
pub struct Bounded<K, V> {
    capacity: usize,
    map: FxMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Clone + Eq + Hash, V: PartialEq> Bounded<K, V> {
    /// An empty map holding at most `capacity` entries.
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: FxMap::default(),
            order: VecDeque::new(),
        }
    }

    /// Inserts or replaces; returns what `key` held before. A new key past the capacity
    /// pushes out the oldest.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let before = match self.map.get_mut(&key) {
            Some(known) if *known == value => return Some(value),
            Some(known) => Some(std::mem::replace(known, value)),
            None => {
                while self.map.len() >= self.capacity {
                    let Some(oldest) = self.order.pop_front() else {
                        break;
                    };
                    self.map.remove(&oldest);
                }
                self.map.insert(key.clone(), value);
                self.order.push_back(key);
                None
            }
        };
        // Keys removed by `remove` stay in `order` until they reach its front.
        if self.order.len() > self.capacity * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        before
    }

    /// The value of `key`, if it is remembered.
    #[must_use]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// The value of `key` to change in place, if it is remembered.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Forgets `key` and returns what it held.
    pub fn take(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    /// Entries remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
