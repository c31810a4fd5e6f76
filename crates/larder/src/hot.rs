//! Hot-key detection in bounded memory: a count-min sketch over a sliding
//! window (counters halve every `10 x width` counted reads) and a top-k
//! list. Never a map that grows with the keys seen.
//!
//! Reads are sampled (one in [`SAMPLE`] per thread), so the L1 hit path
//! pays a thread-local increment; a hot key is read often enough that
//! sampling finds it.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

/// One read in this many is counted.
pub(crate) const SAMPLE: u32 = 8;
const ROWS: usize = 4;
/// Counters per row (a power of two): 4 x 4096 x 4 bytes = 64 KiB.
const WIDTH: usize = 4096;

pub(crate) struct HotKeys<K> {
    counters: Box<[AtomicU32]>,
    counted: AtomicU64,
    /// The smallest count in `top` once it is full (0 before).
    floor: AtomicU32,
    top: Mutex<Vec<(K, u32)>>,
    k: usize,
    hasher: std::collections::hash_map::RandomState,
}

thread_local! {
    static TICK: Cell<u32> = const { Cell::new(0) };
}

impl<K: Hash + Eq + Clone> HotKeys<K> {
    pub(crate) fn new(k: usize) -> Self {
        HotKeys {
            counters: (0..ROWS * WIDTH).map(|_| AtomicU32::new(0)).collect(),
            counted: AtomicU64::new(0),
            floor: AtomicU32::new(0),
            top: Mutex::new(Vec::with_capacity(k + 1)),
            k,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether this read is one of the sampled ones (a thread-local tick).
    #[inline]
    pub(crate) fn sampled() -> bool {
        TICK.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n.is_multiple_of(SAMPLE)
        })
    }

    /// Counts a (sampled) read of `key`; `true` if the key is in the top-k.
    pub(crate) fn record(&self, key: &K) -> bool {
        let h = self.hasher.hash_one(key);
        let mut est = u32::MAX;
        for row in 0..ROWS {
            let i = row * WIDTH + ((h >> (row * 16)) as usize & (WIDTH - 1));
            let c = self.counters[i]
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            est = est.min(c);
        }
        let n = self.counted.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(10 * WIDTH as u64) {
            self.age();
        }
        if est < self.floor.load(Ordering::Relaxed) {
            return false;
        }
        let mut top = self.top.lock();
        match top.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = est,
            None => {
                top.push((key.clone(), est));
            }
        }
        top.sort_by_key(|e| std::cmp::Reverse(e.1));
        top.truncate(self.k);
        let floor = if top.len() == self.k {
            top.last().map_or(0, |e| e.1)
        } else {
            0
        };
        self.floor.store(floor, Ordering::Relaxed);
        top.iter().any(|(k, _)| k == key)
    }

    /// Halves every counter: old reads fade (the sliding window).
    fn age(&self) {
        for c in self.counters.iter() {
            let v = c.load(Ordering::Relaxed);
            c.store(v / 2, Ordering::Relaxed);
        }
        let mut top = self.top.lock();
        for e in top.iter_mut() {
            e.1 /= 2;
        }
        self.floor
            .store(top.last().map_or(0, |e| e.1), Ordering::Relaxed);
    }

    /// The hot keys, hottest first, with their estimated reads in the
    /// window (sampled counts scaled back up).
    pub(crate) fn top(&self) -> Vec<(K, u64)> {
        self.top
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), u64::from(*c) * u64::from(SAMPLE)))
            .collect()
    }

    /// The memory it holds, in bytes (fixed at creation, plus k keys).
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> usize {
        self.counters.len() * 4 + self.k * std::mem::size_of::<(K, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_heads_of_a_zipf_stream_in_fixed_memory() {
        let hot: HotKeys<u64> = HotKeys::new(10);
        let before = hot.footprint();
        // Zipf(1.0) over 100k keys, 400k reads (unsampled here).
        let n = 100_000u64;
        let h: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
        let mut cdf = Vec::with_capacity(n as usize);
        let mut acc = 0.0;
        for i in 1..=n {
            acc += 1.0 / (i as f64 * h);
            cdf.push(acc);
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..400_000 {
            let u = rng.f64();
            let key = cdf.partition_point(|&c| c < u) as u64;
            hot.record(&key);
        }
        let top: Vec<u64> = hot.top().into_iter().map(|(k, _)| k).collect();
        assert_eq!(top.len(), 10);
        for k in 0..5 {
            assert!(top.contains(&k), "key {k} missing from {top:?}");
        }
        assert_eq!(top[0], 0, "the hottest first");
        assert_eq!(
            hot.footprint(),
            before,
            "memory does not grow with keys seen"
        );
    }

    #[test]
    fn old_reads_fade() {
        let hot: HotKeys<u64> = HotKeys::new(2);
        for _ in 0..1000 {
            hot.record(&1);
        }
        // A new hot key takes over once the window slides.
        for _ in 0..(20 * WIDTH) {
            hot.record(&2);
            hot.record(&3);
        }
        let top: Vec<u64> = hot.top().into_iter().map(|(k, _)| k).collect();
        assert!(!top.contains(&1), "{top:?}");
    }
}
