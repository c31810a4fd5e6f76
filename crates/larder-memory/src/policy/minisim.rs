//! Sizing W-TinyLFU's window by simulation (the mini-simulation idea of
//! Caffeine's simulator, after Waldspurger et al.'s "Cache Modeling and
//! Optimization using Miniature Simulations", USENIX ATC 2017).
//!
//! A hill climber compares the hit rate of one period with the one before,
//! so it blames its own last move for whatever the workload did meanwhile:
//! on a trace whose popularity shifts (arc_P3) it kept turning a window of
//! 1% into one of 30% and back. Here every candidate window size runs at
//! once, on the same requests, in a small cache of its own (a *ghost*):
//!
//! - A key takes part when its hash falls in a fixed sample (spatial
//!   sampling: a sampled key's accesses are seen until its sketch counters
//!   saturate, so reuse distances keep their shape), sized so each ghost
//!   holds [`GHOST_ENTRIES`] keys: a ghost plays the real cache scaled
//!   down by the sampling rate.
//! - Each ghost is a W-TinyLFU with a fixed window, one per
//!   [`FRACTIONS`] entry. Every period of as many sampled accesses as a
//!   ghost holds keys, each ghost's score decays by [`DECAY`] and gains its
//!   hits; the window follows the best ghost, and moves only when it beats
//!   the current one by [`HYSTERESIS`] (near-ties are noise and a move
//!   costs). A shard's window walks to the chosen share a sixteenth of its
//!   capacity per policy event (see `tinylfu`), so no single event pays for
//!   a whole jump.
//! - One simulation serves every shard of a cache: the shards' keys are
//!   hash-disjoint samples of one workload, so one window share fits them
//!   all. A shard reports its sampled accesses under its upkeep lock and
//!   skips one if another shard is reporting (`try_lock`: never a wait; a
//!   skipped access is lost to every ghost alike, and a skipped insert
//!   makes that key's next access a ghost miss, again in every ghost).
//! - The ghosts see what the policy sees: inserts and reported hits. Quiet
//!   hits (see [`super::Policy::on_hit`]) are not reported, so a sampled
//!   key goes quiet only when its counters saturate (15). Letting it go
//!   quiet at the others' threshold (3) cost 0.66 points over all 24 rows
//!   of `../shared/traces` with one shard and 0.48 with the default shards
//!   (the ghosts, blind to most hits, chose worse windows); keeping it loud
//!   for good would make hot sampled keys cost policy work on every hit. A
//!   cache of up to 256 entries samples every key, so its hot keys go
//!   quiet only at 15.
//! - Inside a ghost, entries go quiet at 3 like the cache's unsampled
//!   keys, and get the same second chances at the tails of their lists: a
//!   ghost plays the policy that most of the cache's keys live under.
//!   Ghosts that marked entries quiet only at 15 scored lower, against
//!   the same build with the ghosts as they are: 88.07
//!   against 88.20 over all 24 rows with one shard, 87.82 against 87.93
//!   with the default shards, where arc_P3's largest cache fell 4.38
//!   points below the best peer (1.50 with the ghosts as they are).
//!
//! Measured with `cargo xtask sim` (mean % of OPT over the traces README's
//! rows): 85.12 with one shard and 85.09 with the default shards, against
//! 83.54 and 83.46 for the hill climber this replaced; over all 24 rows
//! 88.17 against 86.47 (one shard). Cost:
//! six ghosts of 256 keys, about 60 KB per cache, and for a sampled event
//! six ghost accesses; a cache of `c` entries samples `256 / c` of its
//! keys (all of them up to 256 entries).

use super::tinylfu::{MAX_WINDOW, TinyLfu};
use super::{EntryInfo, Policy};
use crate::cache::Padded;
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// The window shares the ghosts try, as fractions of the capacity (`0`
/// stands for a window of one entry). The set was chosen on
/// `../shared/traces`: loops want the smallest window, recency-biased
/// traces (corda, orm-busy) the largest, database traces 20% to 50%.
pub(crate) const FRACTIONS: [f64; 6] = [0.0, 0.02, 0.07, 0.2, 0.5, 0.99];

/// The window a cache starts with, as an index into [`FRACTIONS`].
pub(crate) const INITIAL: usize = 1;

/// Keys per ghost (fewer only in a smaller cache). 512 scored better on
/// arc_P3 (a larger sample, less noise) but cost a cache of 100k entries
/// 17 more instructions per get (`cargo xtask profile`: 274 against 257).
pub(crate) const GHOST_ENTRIES: u64 = 256;

/// How much of its score a ghost keeps from one period to the next.
const DECAY: f64 = 0.98;

/// How much more a ghost must score than the current one to move the
/// window.
const HYSTERESIS: f64 = 0.005;

/// A cache's window simulation, shared by its shards.
pub(crate) struct WindowSim {
    /// A key is sampled when `sample_hash(hash) <= threshold`.
    threshold: u32,
    /// The ghosts' capacity.
    ghost_entries: u64,
    /// The chosen window share, an index into [`FRACTIONS`]. It and the
    /// fields above are read by every shard's policy events; the lock
    /// below, written by every sampled event, sits on lines of its own.
    choice: AtomicU32,
    ghosts: Padded<Mutex<Option<Box<Ghosts>>>>,
}

impl std::fmt::Debug for WindowSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowSim")
            .field("ghost_entries", &self.ghost_entries)
            .field("choice", &self.choice())
            .finish_non_exhaustive()
    }
}

impl WindowSim {
    /// The simulation for a cache of `capacity` entries; `None` when it
    /// could change nothing: a cache of 2 entries or fewer (every share
    /// gives a window of one entry), or one so large (above about 10^12
    /// entries, `u64::MAX` among them) that the sample would hold no key.
    pub(crate) fn new(capacity: u64) -> Option<Self> {
        let ghost_entries = capacity.clamp(1, GHOST_ENTRIES);
        let threshold = (u64::from(u32::MAX) as u128 * u128::from(ghost_entries)
            / u128::from(capacity.max(1))) as u32;
        let windows = (0..FRACTIONS.len()).map(|i| window_for(ghost_entries, i));
        let distinct = windows.clone().min() != windows.max();
        (threshold > 0 && distinct).then(|| WindowSim {
            threshold,
            ghost_entries,
            choice: AtomicU32::new(INITIAL as u32),
            ghosts: Padded(Mutex::new(None)),
        })
    }

    /// Whether `hash`'s key is in the sample.
    #[inline]
    pub(crate) fn sampled(&self, hash: u64) -> bool {
        sample_hash(hash) <= self.threshold
    }

    /// One access to a sampled key (an insert or a reported hit). Skipped
    /// when another shard is reporting.
    pub(crate) fn record(&self, hash: u64) {
        let Some(mut ghosts) = self.ghosts.0.try_lock() else {
            return;
        };
        let ghosts = ghosts.get_or_insert_with(|| Box::new(Ghosts::new(self.ghost_entries)));
        if let Some(choice) = ghosts.access(hash as u32) {
            self.choice.store(choice as u32, Ordering::Relaxed);
        }
    }

    /// Sets the choice, as a period's end would.
    #[cfg(test)]
    pub(crate) fn force_choice(&self, i: usize) {
        self.choice.store(i as u32, Ordering::Relaxed);
    }

    /// The chosen window share, an index into [`FRACTIONS`].
    #[inline]
    pub(crate) fn choice(&self) -> usize {
        self.choice.load(Ordering::Relaxed) as usize
    }
}

/// The window a cache (or a ghost) of `capacity` gets for share `i`.
pub(crate) fn window_for(capacity: u64, i: usize) -> u64 {
    let most = ((capacity as f64 * MAX_WINDOW) as u64).max(1);
    ((capacity as f64 * FRACTIONS[i]).round() as u64).clamp(1, most)
}

/// The bits that decide the sample: mixed again (the sketch and the shard
/// index use the hash's own bits), and from the low 32 bits, which are all
/// the policy keeps of a read (see `reads`).
#[inline]
fn sample_hash(hash: u64) -> u32 {
    let h = u64::from(hash as u32);
    ((h ^ (h >> 17)).wrapping_mul(0xA24B_AED4_963E_E407) >> 32) as u32
}

#[derive(Debug)]
struct Ghosts {
    caches: Vec<Ghost>,
    /// The share the cache uses now.
    current: usize,
    /// Sampled accesses in this period.
    accesses: u64,
    period: u64,
}

impl Ghosts {
    fn new(entries: u64) -> Self {
        Ghosts {
            caches: (0..FRACTIONS.len())
                .map(|i| Ghost::new(entries, window_for(entries, i)))
                .collect(),
            current: INITIAL,
            accesses: 0,
            period: entries,
        }
    }

    /// Plays one access in every ghost; at the end of a period in which
    /// another share won, that share.
    fn access(&mut self, key: u32) -> Option<usize> {
        for g in &mut self.caches {
            g.access(key);
        }
        self.accesses += 1;
        if self.accesses < self.period {
            return None;
        }
        self.accesses = 0;
        for g in &mut self.caches {
            g.score = g.score * DECAY + g.hits as f64;
            g.hits = 0;
        }
        let mut best = self.current;
        for (i, g) in self.caches.iter().enumerate() {
            if g.score > self.caches[best].score {
                best = i;
            }
        }
        // Only a change is published: the choice's cache line is read by
        // every shard's policy events.
        let changed = best != self.current
            && self.caches[best].score > self.caches[self.current].score * (1.0 + HYSTERESIS);
        changed.then(|| {
            self.current = best;
            best
        })
    }
}

/// A small W-TinyLFU with a fixed window, over keys that are 32-bit hashes.
#[derive(Debug)]
struct Ghost {
    policy: TinyLfu,
    /// (key, slot) of every key held.
    slots: HashTable<(u32, u32)>,
    /// Per slot, its key.
    keys: Vec<u32>,
    free: Vec<u32>,
    capacity: u64,
    hits: u64,
    score: f64,
}

fn table_hash(key: u32) -> u64 {
    u64::from(key).wrapping_mul(0x9FB2_1C65_1E98_DF25)
}

fn info(key: u32) -> EntryInfo {
    EntryInfo {
        hash: u64::from(key),
        weight: 1,
        expires_at: u64::MAX,
    }
}

impl Ghost {
    fn new(capacity: u64, window: u64) -> Self {
        let mut policy = TinyLfu::fixed(capacity, window);
        policy.reserve(capacity as usize + 1);
        Ghost {
            policy,
            slots: HashTable::with_capacity(capacity as usize + 1),
            keys: Vec::with_capacity(capacity as usize + 1),
            free: Vec::new(),
            capacity,
            hits: 0,
            score: 0.0,
        }
    }

    fn access(&mut self, key: u32) {
        let hash = table_hash(key);
        if let Some(&(_, slot)) = self.slots.find(hash, |&(k, _)| k == key) {
            self.hits += 1;
            self.policy.on_hit(slot, u64::from(key));
        } else {
            let slot = self.free.pop().unwrap_or_else(|| {
                self.keys.push(0);
                (self.keys.len() - 1) as u32
            });
            self.keys[slot as usize] = key;
            self.slots
                .insert_unique(hash, (key, slot), |&(k, _)| table_hash(k));
            self.policy.on_insert(slot, info(key));
            while self.slots.len() as u64 > self.capacity {
                let keys = &self.keys;
                let Some(v) = self.policy.victim(&|s| u64::from(keys[s as usize])) else {
                    break;
                };
                let gone = self.keys[v.slot as usize];
                if let Ok(e) = self.slots.find_entry(table_hash(gone), |&(k, _)| k == gone) {
                    e.remove();
                }
                self.policy.on_remove(v.slot, info(gone));
                self.free.push(v.slot);
            }
        }
        // A ghost has no read buffer to tell: quietness is the policy's
        // own business here.
        self.policy.take_unquiet(&mut |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays `keys` as accesses to a cache of `capacity` (every key is
    /// sampled up to 256 entries) and returns the chosen share.
    fn choose(capacity: u64, keys: impl Iterator<Item = u32>) -> f64 {
        let sim = WindowSim::new(capacity).expect("a simulation");
        for k in keys {
            // Odd, as the cache's hashes are.
            let h = u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            assert!(sim.sampled(h));
            sim.record(h);
        }
        // The ghosts stay within their capacity, and reuse their slots.
        let ghosts = sim.ghosts.0.lock();
        for g in &ghosts.as_ref().expect("ghosts").caches {
            assert!(g.slots.len() as u64 <= g.capacity);
            assert!(g.keys.len() as u64 <= g.capacity + 1);
        }
        FRACTIONS[sim.choice()]
    }

    #[test]
    fn a_loop_larger_than_the_cache_gets_the_smallest_window() {
        // LRU (the largest window) never hits a loop it cannot hold; a
        // frequency-guarded main space keeps most of it.
        let share = choose(200, (0..40).flat_map(|_| 0..300));
        assert_eq!(share, FRACTIONS[0]);
    }

    #[test]
    fn a_recency_biased_workload_gets_a_large_window() {
        // Each key is read twice, 100 requests apart, then never again:
        // only a cache that admits newcomers freely (a large window) keeps
        // it until its second read.
        let share = choose(200, (0..20_000u32).flat_map(|i| [i, i.saturating_sub(50)]));
        assert!(share >= 0.5, "{share}");
    }

    #[test]
    fn a_large_cache_samples_a_share_of_its_keys() {
        let sim = WindowSim::new(256 * 64).expect("a simulation");
        let n = 1 << 16;
        let sampled = (0..n)
            .filter(|&k: &u64| sim.sampled(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1))
            .count() as f64;
        let expected = n as f64 / 64.0;
        assert!((sampled - expected).abs() < expected * 0.2, "{sampled}");
        assert!(WindowSim::new(u64::MAX).is_none());
        // A tiny cache: every key, ghosts of its own size; none at all
        // where every share gives the same window.
        let tiny = WindowSim::new(3).expect("a simulation");
        assert_eq!((tiny.ghost_entries, tiny.threshold), (3, u32::MAX));
        for capacity in [0, 1, 2] {
            assert!(WindowSim::new(capacity).is_none(), "{capacity}");
        }
    }
}
