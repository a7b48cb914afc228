//! A bounded cache whose admission resists scans: TinyLFU over an LRU.
//!
//! The cache holds values up to a byte budget, in recency order. What may enter is decided by
//! how often a key was asked for lately, estimated by a count-min sketch of 4-bit counters in
//! front of a doorkeeper (a small Bloom filter that takes every first sighting, so one-off keys
//! never reach the counters). Every `ADMIT_MIN_SEEN` sightings age the sketch: counters are
//! halved and the doorkeeper cleared, so the frequencies are of the recent past.
//!
//! - A key seen once is never admitted: a scan (one read of a large cold object, a listing
//!   job) passes through without displacing anything, and a cache with room holds nothing it
//!   was not asked for twice.
//! - A key seen more often enters when there is room; when there is not, it must be seen more
//!   often than each entry it would evict, oldest first, or it stays out and nothing is evicted.
//!
//! Sans-IO: the caller measures nothing and is handed decisions; the hash seed is passed in
//! (from the caller's randomness, so that nobody can aim keys at one counter).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Sightings a key needs before it may be admitted.
pub const ADMIT_MIN_SEEN: u8 = 2;
/// Counters saturate here (4 bits).
const COUNTER_MAX: u8 = 15;
/// Rows of the count-min sketch.
const ROWS: usize = 4;

/// A bounded cache with TinyLFU admission and LRU eviction. `K` names an immutable value:
/// what changes gets a new key (see the data plane's stripe cache).
pub struct Cache<K, V> {
    capacity: u64,
    used: u64,
    entries: HashMap<K, Entry<V>>,
    /// Recency: the tick of each entry's last use, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    sketch: Sketch,
    seed: u64,
}

struct Entry<V> {
    value: V,
    weight: u64,
    tick: u64,
}

impl<K: Hash + Eq + Clone, V> Cache<K, V> {
    /// A cache of at most `capacity` bytes of values, sized for values of about
    /// `typical_weight` bytes (the sketch gets one counter per row for each such value the
    /// budget holds, at least 16), hashing with `seed`.
    pub fn new(capacity: u64, typical_weight: u64, seed: u64) -> Self {
        let expected = (capacity / typical_weight.max(1)).clamp(16, 1 << 24);
        Cache {
            capacity,
            used: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            sketch: Sketch::new(expected as usize),
            seed,
        }
    }

    fn hash(&self, k: &K) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.seed.hash(&mut h);
        k.hash(&mut h);
        h.finish()
    }

    /// Records a request for `k` and returns its value if cached (it becomes the most
    /// recently used).
    pub fn get(&mut self, k: &K) -> Option<&V> {
        self.record(k);
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(k)?;
        self.order.remove(&e.tick);
        e.tick = tick;
        self.order.insert(tick, k.clone());
        Some(&e.value)
    }

    /// Records a request for `k` without looking it up (a value read in the same batch as
    /// one that was looked up).
    pub fn record(&mut self, k: &K) {
        let h = self.hash(k);
        self.sketch.increment(h);
    }

    /// Whether `k` is cached; counts as no request.
    pub fn contains(&self, k: &K) -> bool {
        self.entries.contains_key(k)
    }

    /// Offers the value of `k` (made by `make` only if admitted) weighing `weight` bytes;
    /// returns whether it was admitted. The request that missed it has been recorded already
    /// ([`Cache::get`] or [`Cache::record`]).
    pub fn offer_with(&mut self, k: K, weight: u64, make: impl FnOnce() -> V) -> bool {
        if weight > self.capacity || self.entries.contains_key(&k) {
            return false;
        }
        let freq = self.sketch.estimate(self.hash(&k));
        if freq < ADMIT_MIN_SEEN {
            return false;
        }
        let need = (self.used + weight).saturating_sub(self.capacity);
        let mut victims = Vec::new();
        let mut freed = 0;
        for (_, v) in self.order.iter() {
            if freed >= need {
                break;
            }
            if self.sketch.estimate(self.hash(v)) >= freq {
                return false;
            }
            freed += self.entries[v].weight;
            victims.push(v.clone());
        }
        for v in victims {
            self.remove(&v);
        }
        self.tick += 1;
        self.order.insert(self.tick, k.clone());
        self.used += weight;
        self.entries.insert(
            k,
            Entry {
                value: make(),
                weight,
                tick: self.tick,
            },
        );
        true
    }

    /// Removes `k`, returning its value.
    fn remove(&mut self, k: &K) -> Option<V> {
        let e = self.entries.remove(k)?;
        self.order.remove(&e.tick);
        self.used -= e.weight;
        Some(e.value)
    }

    /// Bytes of values held.
    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Frequency estimates: a doorkeeper Bloom filter, then a count-min sketch of 4-bit counters
/// (one byte each here), aged by halving.
struct Sketch {
    /// `ROWS` rows of `width` counters.
    counters: Vec<u8>,
    width: usize,
    door: Vec<u64>,
    /// Sightings since the last ageing, and how many make one.
    seen: usize,
    period: usize,
}

impl Sketch {
    fn new(expected: usize) -> Self {
        let width = expected.next_power_of_two();
        Sketch {
            counters: vec![0; ROWS * width],
            width,
            // Eight doorkeeper bits per sighting of a period: a first sighting is mistaken
            // for a second at most ~5 % of the time (two bits per key).
            door: vec![0; (80 * expected).div_ceil(64)],
            seen: 0,
            period: 10 * expected,
        }
    }

    fn slots(&self, h: u64) -> [usize; ROWS] {
        let step = h.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mask = self.width - 1;
        std::array::from_fn(|r| {
            (h.rotate_left(17 * r as u32)
                .wrapping_add(step.wrapping_mul(r as u64)) as usize
                & mask)
                + r * self.width
        })
    }

    fn door_bits(&self, h: u64) -> [usize; 2] {
        let bits = self.door.len() * 64;
        [
            (h as usize) % bits,
            ((h >> 32) ^ h.rotate_left(7)) as usize % bits,
        ]
    }

    fn door_has(&self, h: u64) -> bool {
        self.door_bits(h)
            .iter()
            .all(|&b| self.door[b / 64] & (1 << (b % 64)) != 0)
    }

    fn increment(&mut self, h: u64) {
        if !self.door_has(h) {
            for b in self.door_bits(h) {
                self.door[b / 64] |= 1 << (b % 64);
            }
        } else {
            // Conservative update: only the counters at the minimum grow, which keeps
            // collisions from inflating a key's estimate.
            let slots = self.slots(h);
            let min = slots.iter().map(|&s| self.counters[s]).min().unwrap_or(0);
            if min < COUNTER_MAX {
                for s in slots {
                    if self.counters[s] == min {
                        self.counters[s] += 1;
                    }
                }
            }
        }
        self.seen += 1;
        if self.seen >= self.period {
            self.age();
        }
    }

    fn estimate(&self, h: u64) -> u8 {
        let min = self
            .slots(h)
            .iter()
            .map(|&s| self.counters[s])
            .min()
            .unwrap_or(0);
        min + u8::from(self.door_has(h))
    }

    fn age(&mut self) {
        for c in &mut self.counters {
            *c /= 2;
        }
        self.door.iter_mut().for_each(|w| *w = 0);
        self.seen /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 256 * 1024;

    fn ask(c: &mut Cache<u64, u64>, k: u64) -> bool {
        if c.get(&k).is_some() {
            return true;
        }
        c.offer_with(k, W, || k);
        false
    }

    #[test]
    fn a_key_seen_once_is_not_admitted_and_twice_is() {
        let mut c = Cache::new(10 * W, W, 1);
        assert!(!ask(&mut c, 7));
        assert!(c.is_empty(), "one sighting admits nothing");
        assert!(!ask(&mut c, 7));
        assert_eq!(c.len(), 1);
        assert!(ask(&mut c, 7));
        assert_eq!(c.used(), W);
    }

    #[test]
    fn a_scan_does_not_displace_hot_entries() {
        let mut c = Cache::new(8 * W, W, 2);
        for _ in 0..4 {
            for k in 0..8 {
                ask(&mut c, k);
            }
        }
        assert_eq!(c.len(), 8);
        // A scan of 1000 keys, twice over, while the hot keys go on being asked for (one
        // request in four): the scan's keys are seen twice each, but each time too long ago.
        for i in 0..2000u64 {
            ask(&mut c, 1000 + i % 1000);
            if i % 4 == 0 {
                ask(&mut c, (i / 4) % 8);
            }
        }
        for k in 0..8 {
            assert!(c.contains(&k), "hot key {k} evicted by a scan");
        }
        assert!(c.used() <= 8 * W);
    }

    #[test]
    fn a_key_that_becomes_hot_replaces_a_cold_one() {
        let mut c = Cache::new(4 * W, W, 3);
        for _ in 0..2 {
            for k in 0..4 {
                ask(&mut c, k);
            }
        }
        assert_eq!(c.len(), 4);
        for _ in 0..6 {
            ask(&mut c, 99);
        }
        assert!(c.contains(&99));
        assert_eq!(c.len(), 4);
        assert!(c.used() <= 4 * W);
    }

    #[test]
    fn the_budget_holds_with_uneven_weights() {
        let mut c: Cache<u64, Vec<u8>> = Cache::new(1000, 100, 4);
        let mut rng = 12345u64;
        for _ in 0..20_000 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (rng >> 33) % 64;
            let w = 1 + (rng >> 20) % 300;
            if c.get(&k).is_none() {
                c.offer_with(k, w, || vec![0; w as usize]);
            }
            assert!(c.used() <= 1000);
            let sum: u64 = c.entries.values().map(|e| e.weight).sum();
            assert_eq!(sum, c.used());
            assert_eq!(c.order.len(), c.entries.len());
        }
        assert!(!c.is_empty());
    }

    #[test]
    fn nothing_heavier_than_the_budget_and_nothing_in_a_zero_budget() {
        let mut c = Cache::new(0, W, 5);
        for _ in 0..5 {
            ask(&mut c, 1);
        }
        assert!(c.is_empty());
        let mut c: Cache<u64, u64> = Cache::new(W, W, 5);
        for _ in 0..5 {
            c.get(&1);
            assert!(!c.offer_with(1, W + 1, || 1));
        }
    }

    #[test]
    fn frequencies_age() {
        let mut s = Sketch::new(16);
        for _ in 0..20 {
            s.increment(42);
        }
        let before = s.estimate(42);
        assert!(before >= 10);
        for k in 0..(s.period as u64) {
            s.increment(1000 + k);
        }
        assert!(s.estimate(42) < before, "ageing halves old counts");
    }

    #[test]
    fn remove_frees_its_bytes() {
        let mut c = Cache::new(10 * W, W, 6);
        for _ in 0..2 {
            for k in 0..6 {
                ask(&mut c, k);
            }
        }
        assert_eq!(c.len(), 6);
        assert_eq!(c.remove(&0), Some(0));
        assert_eq!(c.remove(&0), None);
        assert_eq!(c.len(), 5);
        assert_eq!(c.used(), 5 * W);
        assert_eq!(c.order.len(), 5);
    }
}
