//! W-TinyLFU (Einziger, Friedman and Manes; Caffeine's design): a small LRU
//! window in front of a segmented-LRU main space (probation + protected),
//! with a frequency sketch as the admission filter between them, and a
//! window whose size adapts to the workload.
//!
//! - New entries enter the window. When the cache is over capacity and the
//!   window is over its share, the window's LRU entry (the candidate) meets
//!   the main space's victim (probation's LRU, else protected's): the one
//!   with the higher sketch frequency stays. A candidate that loses is an
//!   admission rejection.
//! - A hit in probation promotes to protected (80% of main); protected
//!   overflow demotes its LRU entry back to probation.
//! - The window's share ([`Adapt`]): a cache counted in entries follows
//!   its mini-simulations (see [`super::minisim`]); recency-biased
//!   workloads get a large window (toward LRU), frequency-biased ones and
//!   loops a small one (toward LFU). A weighted cache, whose capacity is a
//!   weight that sampled ghosts cannot scale, climbs a hill instead
//!   (Caffeine's climber, with two guards against noise): every period of
//!   `10 x` the entries the sketch covers (it starts at 16 and doubles with
//!   the entries held; the first period is `2 x`), the hit rate of the
//!   period is compared with the one before. The window
//!   keeps moving in the same direction while the hit rate holds or
//!   improves and turns around when it drops; the step (6.25% of capacity)
//!   decays by 2% a period and restarts after a change of 5 points. It
//!   starts by growing the window.
//!   - A change under 1 point is noise, not a verdict: the window stays.
//!   - A period in which the window could not move (it sat at its minimum
//!     or maximum) says nothing about the last move, so a small drop then
//!     does not turn the climber around; only a drop of 5 points does.
//!     Without this guard a loop, whose hit rate per period wobbles by 3
//!     points with the phase of the loop, pushed the window up from its
//!     minimum again and again (lirs_loop at 768 entries: 73.0% instead
//!     of 75.1%, OPT 75.8%).

use super::minisim::{self, WindowSim};
use super::sketch::Sketch;
use super::{EntryInfo, Policy, Victim};
use crate::list::{Links, List};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Window,
    Probation,
    Protected,
}

impl Queue {
    #[cfg(test)]
    const ALL: [Queue; 3] = [Queue::Window, Queue::Probation, Queue::Protected];
}

/// A slot's queue (two bits) and quiet flag in one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta(u8);

impl Meta {
    const QUIET: u8 = 4;

    fn new(q: Queue) -> Self {
        Meta(q as u8)
    }

    fn queue(self) -> Queue {
        match self.0 & 3 {
            0 => Queue::Window,
            1 => Queue::Probation,
            _ => Queue::Protected,
        }
    }

    fn quiet(self) -> bool {
        self.0 & Self::QUIET != 0
    }

    fn with_queue(self, q: Queue) -> Self {
        Meta((self.0 & !3) | q as u8)
    }

    fn with_quiet(self, quiet: bool) -> Self {
        Meta(if quiet {
            self.0 | Self::QUIET
        } else {
            self.0 & !Self::QUIET
        })
    }
}

#[derive(Debug)]
pub(crate) struct TinyLfu {
    sketch: Sketch,
    /// The most entries the sketch needs to cover: the capacity without a
    /// weigher (never more entries), else unbounded.
    sketch_most: u64,
    links: Links,
    /// Per slot: its queue, and whether its reads are quiet (see
    /// [`Policy::on_hit`]); one byte, where two arrays cost two.
    meta: Vec<Meta>,
    /// Per slot, only with a weigher.
    weights: Option<Vec<u32>>,
    window: List,
    probation: List,
    protected: List,
    capacity: u64,
    window_max: u64,
    /// `PROTECTED_SHARE` of the main space, kept with `window_max` (every
    /// promotion compares against it).
    protected_max: u64,
    adapt: Adapt,
    /// Quiet entries that moved to probation since the shard last asked:
    /// their reads must be reported again (a read there promotes).
    unquiet: Vec<u32>,
}

/// How the window's share is chosen.
#[derive(Debug)]
enum Adapt {
    /// Never changes (a ghost of the simulation).
    Fixed,
    /// Follows the cache's simulation: `seen` is the share it last chose,
    /// `target` that share's window here, which `window_max` approaches by
    /// at most [`FOLLOW_STEP`] of the capacity per policy event.
    Follow {
        sim: Arc<WindowSim>,
        seen: usize,
        target: u64,
    },
    /// Hill climbing (a weighted cache).
    Climb(Climber),
}

#[derive(Debug)]
struct Climber {
    hits: u64,
    misses: u64,
    /// Requests per period, over [`PERIOD`].
    sample: u64,
    previous_hit_rate: f64,
    step: f64,
    direction: f64,
    /// Whether the last adjustment changed the window.
    moved: bool,
    /// Whether the first (shorter) period is over.
    looked: bool,
}

const INITIAL_WINDOW: f64 = 0.01;
/// A followed window moves by at most `capacity / FOLLOW_STEP` per policy
/// event (an insert or a reported hit; a sixteenth of the capacity, the
/// climber's first step), and shrinks no further
/// than a step below what it holds: the demotions from protected to
/// probation, and the window's entries moved to main, are then at most a
/// step per event (protected's quiet entries still get their second
/// chances, O(1) amortised), so a jump between the smallest window and the
/// largest is not paid by one insert or hit.
const FOLLOW_STEP: u64 = 16;
const PROTECTED_SHARE: f64 = 0.80;
/// The sketch estimate from which a hit leaves the entry quiet (see
/// `on_hit`), for keys the window simulation does not sample. From 3 on a
/// read adds little: admission mostly compares a newcomer seen once or
/// twice with a victim. Measured against the neighbours, each row on the
/// build of its day (`cargo xtask sim`: mean % of OPT over the traces
/// README's rows, then over all 24 rows, one shard / default shards;
/// `cargo xtask profile`: 100% gets):
///
/// | quiet from | README rows | all 24 rows | worst row below the best peer | quiet hits | instructions per get |
/// |---|--:|--:|--:|--:|--:|
/// | 15 (saturation) | 85.06 / 85.10 | 87.84 / 87.71 | 3.11 / 4.90 | 76% | 269 |
/// | **3** | 85.20 / 85.07 | 88.20 / 87.93 | 1.42 / 1.50 | 88% | 239 |
/// | 2 | 85.26 / 85.18 | 87.87 / 87.97 | 4.18 / 1.61 | not profiled | not profiled |
///
/// The instructions are those of this constant's change alone, when
/// sampled keys went quiet at 3 as well; a later build, with sampled keys
/// waiting for 15 among other changes, took 221.
/// At 2, arc_P3's largest cache falls 4.18 points below the best peer with
/// one shard.
const QUIET_FROM: u64 = 3;
/// A sketch counter's largest value: keys the window simulation samples go
/// quiet only there (see `minisim`).
const SATURATED: u64 = super::sketch::MAX;
const STEP_INITIAL: f64 = 0.0625;
const STEP_DECAY: f64 = 0.98;
const RESTART_THRESHOLD: f64 = 0.05;
/// Hit-rate changes smaller than this do not move the window.
const DEAD_BAND: f64 = 0.01;
/// The first period is this many times the capacity, later ones
/// [`PERIOD`] times.
const FIRST_PERIOD: u64 = 2;
const PERIOD: u64 = 10;
/// The window may grow to nearly all of the cache (pure recency).
pub(crate) const MAX_WINDOW: f64 = 0.99;
/// Without a weigher, a sketch for up to this many entries is allocated at
/// once (as many entries as the capacity); beyond, and always with a
/// weigher (whose capacity is a weight, not a count), the sketch starts
/// small and grows with the entries held.
const EAGER_ENTRIES: u64 = 1 << 16;
/// The first sketch of a weighted cache.
const FIRST_ENTRIES: u64 = 16;

impl TinyLfu {
    /// The policy of a shard of `capacity`: a weighted one climbs a hill,
    /// one counted in entries follows `sim` (the cache's simulation, shared
    /// by its shards) when there is one, else keeps its first window.
    pub(crate) fn new(capacity: u64, weighted: bool, sim: Option<Arc<WindowSim>>) -> Self {
        let (expected, most) = if weighted {
            (FIRST_ENTRIES, u64::MAX)
        } else {
            (capacity.min(EAGER_ENTRIES), capacity)
        };
        let (adapt, window) = match (weighted, sim) {
            (false, Some(sim)) => {
                let seen = sim.choice();
                let target = minisim::window_for(capacity, seen);
                (Adapt::Follow { sim, seen, target }, target)
            }
            (false, None) => (
                Adapt::Fixed,
                minisim::window_for(capacity, minisim::INITIAL),
            ),
            (true, _) => (
                Adapt::Climb(Climber {
                    hits: 0,
                    misses: 0,
                    sample: expected.max(10),
                    previous_hit_rate: 0.0,
                    step: STEP_INITIAL * capacity as f64,
                    direction: 1.0,
                    moved: true,
                    looked: false,
                }),
                ((capacity as f64 * INITIAL_WINDOW).round() as u64).max(1),
            ),
        };
        let mut p = TinyLfu {
            sketch: Sketch::new(expected),
            sketch_most: most,
            links: Links::default(),
            meta: Vec::new(),
            weights: weighted.then(Vec::new),
            window: List::default(),
            probation: List::default(),
            protected: List::default(),
            capacity,
            window_max: 0,
            protected_max: 0,
            adapt,
            unquiet: Vec::new(),
        };
        p.set_window(window);
        p
    }

    /// A policy of `capacity` entries whose window stays at `window`.
    pub(crate) fn fixed(capacity: u64, window: u64) -> Self {
        let mut p = TinyLfu::new(capacity, false, None);
        p.set_window(window);
        p
    }

    /// Sets the window's share, and the protected segment's with it.
    fn set_window(&mut self, window_max: u64) {
        self.window_max = window_max;
        let main_max = self.capacity.saturating_sub(window_max);
        self.protected_max = (main_max as f64 * PROTECTED_SHARE) as u64;
    }

    fn main_max(&self) -> u64 {
        self.capacity.saturating_sub(self.window_max)
    }

    fn protected_max(&self) -> u64 {
        self.protected_max
    }

    fn set_meta(&mut self, slot: u32, q: Queue, info: EntryInfo) {
        let i = slot as usize;
        if self.meta.len() <= i {
            self.reserve((i + 1).max(self.meta.len() * 2));
        }
        self.meta[i] = Meta::new(q);
        if let Some(w) = &mut self.weights {
            w[i] = info.weight as u32;
        }
    }

    /// The weight of `slot` (1 without a weigher: no array to keep).
    #[inline]
    fn weight(&self, slot: u32) -> u64 {
        self.weights
            .as_ref()
            .map_or(1, |w| u64::from(w[slot as usize]))
    }

    fn queue(&self, slot: u32) -> Queue {
        self.meta[slot as usize].queue()
    }

    fn quiet(&self, slot: u32) -> bool {
        self.meta[slot as usize].quiet()
    }

    fn set_quiet(&mut self, slot: u32, quiet: bool) {
        let m = &mut self.meta[slot as usize];
        *m = m.with_quiet(quiet);
    }

    fn push(&mut self, q: Queue, slot: u32) {
        let w = self.weight(slot);
        let m = self.meta[slot as usize];
        self.meta[slot as usize] = m.with_queue(q);
        if q == Queue::Probation && m.quiet() {
            self.set_quiet(slot, false);
            self.unquiet.push(slot);
        }
        let (links, list) = match q {
            Queue::Window => (&mut self.links, &mut self.window),
            Queue::Probation => (&mut self.links, &mut self.probation),
            Queue::Protected => (&mut self.links, &mut self.protected),
        };
        links.push_front(list, slot, w);
    }

    fn unlink(&mut self, slot: u32) {
        let q = self.queue(slot);
        let w = self.weight(slot);
        let (links, list) = match q {
            Queue::Window => (&mut self.links, &mut self.window),
            Queue::Probation => (&mut self.links, &mut self.probation),
            Queue::Protected => (&mut self.links, &mut self.protected),
        };
        links.unlink(list, slot, w);
    }

    /// Protected over its share: demote its LRU entries to probation.
    fn rebalance_protected(&mut self) {
        while self.protected.weight > self.protected_max() {
            let Some(slot) = self.protected.tail() else {
                break;
            };
            if self.second_chance(slot, Queue::Protected) {
                continue;
            }
            self.unlink(slot);
            self.push(Queue::Probation, slot);
        }
    }

    /// A quiet entry at the tail of `q` was read (its reads went unseen, so
    /// it never moved up): back to the front, as in CLOCK, and no longer
    /// quiet, so its next read is seen again. Each chance costs a quiet mark
    /// that a seen read paid for, so the passes are O(1) amortised.
    fn second_chance(&mut self, slot: u32, q: Queue) -> bool {
        if !self.quiet(slot) {
            return false;
        }
        self.set_quiet(slot, false);
        self.unquiet.push(slot);
        let list = match q {
            Queue::Window => &mut self.window,
            Queue::Probation => &mut self.probation,
            Queue::Protected => &mut self.protected,
        };
        self.links.move_to_front(list, slot);
        true
    }

    /// One access to `hash` in the sketch; its estimate, or 0 if the
    /// access aged the sketch. Aging ends every quiet mark (the epoch
    /// follows the sketch's age).
    fn count(&mut self, hash: u64) -> u64 {
        let ages = self.sketch.ages();
        let estimate = self.sketch.increment(hash);
        if self.sketch.ages() == ages {
            return estimate;
        }
        for m in &mut self.meta {
            *m = m.with_quiet(false);
        }
        0
    }

    /// Counts reads for the climber, and moves the window when the
    /// climber or the simulation says so.
    fn adapt(&mut self, hits: u64, misses: u64) {
        let (capacity, window) = (self.capacity, self.window_max);
        let held = self.window.weight;
        let new = match &mut self.adapt {
            Adapt::Fixed => return,
            Adapt::Follow { sim, seen, target } => {
                let choice = sim.choice();
                if choice != *seen {
                    *seen = choice;
                    *target = minisim::window_for(capacity, choice);
                }
                let step = (capacity / FOLLOW_STEP).max(1);
                match window.cmp(target) {
                    std::cmp::Ordering::Equal => return,
                    std::cmp::Ordering::Less => window.saturating_add(step).min(*target),
                    // Down no faster than the window drains: `victim` moves
                    // the overflow to main, at most a step of it per call.
                    // (Never up: a window still filling holds more than
                    // its share until the cache first evicts.)
                    std::cmp::Ordering::Greater => window
                        .saturating_sub(step)
                        .max(*target)
                        .max(held.saturating_sub(step))
                        .min(window),
                }
            }
            Adapt::Climb(c) => {
                c.hits += hits;
                c.misses += misses;
                match c.climb(capacity, window) {
                    Some(new) => new,
                    None => return,
                }
            }
        };
        if new == window {
            // A window over its target that cannot drain faster: nothing
            // moves (and protected was rebalanced when it last did).
            return;
        }
        self.set_window(new);
        self.rebalance_protected();
    }

    /// Tells the simulation about an access to `hash`, when sampled;
    /// returns whether it is.
    #[inline]
    fn simulate(&self, hash: u64) -> bool {
        if let Adapt::Follow { sim, .. } = &self.adapt
            && sim.sampled(hash)
        {
            sim.record(hash);
            return true;
        }
        false
    }
}

impl Climber {
    /// At the end of a period, the new window (`None`: no change yet).
    fn climb(&mut self, capacity: u64, window_max: u64) -> Option<u64> {
        let requests = self.hits + self.misses;
        let period = if self.looked { PERIOD } else { FIRST_PERIOD };
        if requests < period * self.sample {
            return None;
        }
        let hit_rate = self.hits as f64 / requests as f64;
        let change = hit_rate - self.previous_hit_rate;
        self.previous_hit_rate = hit_rate;
        self.hits = 0;
        self.misses = 0;
        self.looked = true;
        if change.abs() < DEAD_BAND {
            return None;
        }
        let blameless = !self.moved && change > -RESTART_THRESHOLD;
        if change < 0.0 && !blameless {
            self.direction = -self.direction;
        }
        self.step = if change.abs() >= RESTART_THRESHOLD {
            STEP_INITIAL * capacity as f64
        } else {
            self.step * STEP_DECAY
        };
        let amount = self.direction * self.step;
        let max = (capacity as f64 * MAX_WINDOW) as u64;
        let new = (window_max as f64 + amount)
            .round()
            .clamp(1.0, max.max(1) as f64) as u64;
        self.moved = new != window_max;
        Some(new)
    }
}

impl Policy for TinyLfu {
    /// The sketch counts a new key here, not on the miss before it (as in
    /// Caffeine): a lookup that is never followed by an insert (a negative
    /// answer, a probe) leaves no trace.
    fn on_insert(&mut self, slot: u32, info: EntryInfo) {
        let held = self.window.len + self.probation.len + self.protected.len + 1;
        if held > self.sketch.entries() && self.sketch.entries() < self.sketch_most {
            // More entries than the sketch covers: double it (each key keeps
            // its estimate), and the climber's period follows.
            self.sketch.ensure_capacity(held.min(self.sketch_most));
            if let Adapt::Climb(c) = &mut self.adapt {
                c.sample = self.sketch.entries();
            }
        }
        self.count(info.hash);
        self.set_meta(slot, Queue::Window, info);
        self.push(Queue::Window, slot);
        self.simulate(info.hash);
        self.adapt(0, 0);
    }

    /// Quiet once the entry's estimate has reached [`QUIET_FROM`] (for a key
    /// the window simulation samples, [`SATURATED`]) and it sits in the
    /// window or in protected: its further reads go unseen, so
    /// its estimate stays where it is (it already wins most admissions)
    /// and its place in its LRU list goes stale (it drifts to the tail as
    /// if unread, where it gets a second chance: a CLOCK-like
    /// approximation that only hot entries get). Quietness ends when the
    /// sketch ages (the epoch), at a second chance, or when the entry
    /// moves to probation (`unquiet`), where its next read must be seen to
    /// promote it.
    fn on_hit(&mut self, slot: u32, hash: u64) -> bool {
        let estimate = self.count(hash);
        match self.queue(slot) {
            Queue::Window => self.links.move_to_front(&mut self.window, slot),
            Queue::Probation => {
                self.unlink(slot);
                self.push(Queue::Protected, slot);
                self.rebalance_protected();
            }
            Queue::Protected => {
                self.links.move_to_front(&mut self.protected, slot);
            }
        }
        let sampled = self.simulate(hash);
        self.adapt(1, 0);
        // A key the window simulation samples goes quiet only once its
        // counters saturate, so the ghosts see nearly every access to it.
        let quiet_from = if sampled { SATURATED } else { QUIET_FROM };
        let quiet = estimate >= quiet_from && self.queue(slot) != Queue::Probation;
        self.set_quiet(slot, quiet);
        quiet
    }

    fn warm(&self, slot: u32, hash: u64) -> u64 {
        let q = self.meta.get(slot as usize).map_or(0, |m| u64::from(m.0));
        self.sketch.warm(hash) ^ q ^ self.links.warm(slot)
    }

    fn on_counted_reads(&mut self, hits: u64, misses: u64) {
        self.adapt(hits, misses);
    }

    /// Only the climber (a weighted cache) measures hit rates; the window
    /// simulation scores its own ghosts, and a followed window walks on
    /// inserts and reported hits.
    fn counts_reads(&self) -> bool {
        matches!(self.adapt, Adapt::Climb(_))
    }

    fn epoch(&self) -> u32 {
        self.sketch.ages()
    }

    fn take_unquiet(&mut self, unmark: &mut dyn FnMut(u32)) {
        for slot in self.unquiet.drain(..) {
            unmark(slot);
        }
    }

    fn on_update(&mut self, slot: u32, old: EntryInfo, new: EntryInfo) {
        let (q, quiet) = (self.queue(slot), self.quiet(slot));
        self.unlink(slot);
        self.set_meta(slot, q, new);
        self.set_quiet(slot, quiet);
        let _ = old;
        self.push(q, slot);
        if q == Queue::Protected {
            self.rebalance_protected();
        }
    }

    fn on_remove(&mut self, slot: u32, _info: EntryInfo) {
        self.unlink(slot);
        self.set_quiet(slot, false);
    }

    fn reserve(&mut self, slots: usize) {
        if slots > self.meta.len() {
            self.meta.resize(slots, Meta::new(Queue::Window));
            if let Some(w) = &mut self.weights {
                w.resize(slots, 0);
            }
            self.links.reserve(slots);
        }
    }

    /// As Caffeine's eviction: window overflow moves to probation while
    /// main has room; then the window's LRU entry (the candidate) meets
    /// main's victim (probation's LRU, else protected's) and the one with
    /// the lower frequency goes; ties go against the candidate. The contest
    /// also runs when the window is within its share, so a main entry is
    /// never evicted unheard.
    fn victim(&mut self, hash_of: &dyn Fn(u32) -> u64) -> Option<Victim> {
        loop {
            let candidate = self.window.tail();
            if let Some(c) = candidate
                && self.second_chance(c, Queue::Window)
            {
                continue;
            }
            let over = self.window.weight > self.window_max;
            if over
                && let Some(c) = candidate
                && self.probation.weight + self.protected.weight + self.weight(c) <= self.main_max()
            {
                // Main has room: the candidate just moves over.
                self.unlink(c);
                self.push(Queue::Probation, c);
                continue;
            }
            let victim = match self.probation.tail() {
                Some(v) => Some(v),
                None => {
                    let p = self.protected.tail();
                    if let Some(p) = p
                        && self.second_chance(p, Queue::Protected)
                    {
                        continue;
                    }
                    p
                }
            };
            let (candidate, victim) = match (candidate, victim) {
                (None, None) => return None,
                (Some(slot), None) | (None, Some(slot)) => {
                    return Some(Victim {
                        slot,
                        rejected_by_admission: false,
                    });
                }
                (Some(c), Some(v)) => (c, v),
            };
            if self.sketch.frequency(hash_of(candidate)) > self.sketch.frequency(hash_of(victim)) {
                // Admitted: the victim goes; an overflowing candidate moves
                // to probation.
                if over {
                    self.unlink(candidate);
                    self.push(Queue::Probation, candidate);
                }
                return Some(Victim {
                    slot: victim,
                    rejected_by_admission: false,
                });
            }
            return Some(Victim {
                slot: candidate,
                rejected_by_admission: true,
            });
        }
    }

    fn window_capacity(&self) -> Option<u64> {
        Some(self.window_max)
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.sketch.heap_bytes()
            + self.links.heap_bytes()
            + self.meta.capacity()
            + self.weights.as_ref().map_or(0, |w| w.capacity() * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TinyLfu {
        /// One policy event that moves nothing but the window (what an
        /// insert or a reported hit does to it besides their own work).
        fn step(&mut self) {
            self.adapt(0, 0);
        }
    }
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Walks every list and checks the policy's structure against the live
    /// slots the driver keeps: each live slot is in exactly the list its
    /// queue byte names, list lengths and weights add up, and quiet marks
    /// sit only outside probation.
    fn check(p: &TinyLfu, live: &BTreeMap<u32, u64>) {
        let mut seen = BTreeSet::new();
        for (q, list) in [
            (Queue::Window, &p.window),
            (Queue::Probation, &p.probation),
            (Queue::Protected, &p.protected),
        ] {
            let (mut n, mut w, mut cur) = (0, 0, list.head());
            while let Some(s) = cur {
                assert!(seen.insert(s), "slot {s} is in two lists");
                assert_eq!(p.queue(s), q, "slot {s}'s queue bits");
                assert!(live.contains_key(&s), "dead slot {s} in {q:?}");
                if q == Queue::Probation {
                    assert!(!p.quiet(s), "quiet slot {s} in probation");
                }
                n += 1;
                w += p.weight(s);
                cur = p.links.next(s);
            }
            assert_eq!((n, w), (list.len, list.weight), "{q:?} totals");
        }
        assert_eq!(seen.len(), live.len(), "a live slot is in no list");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Hit(u8),
        /// A burst of reads of one key: hot keys go quiet.
        Burst(u8, u8),
        Remove(u8),
        Reads(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u8>().prop_map(Op::Insert),
            6 => any::<u8>().prop_map(Op::Hit),
            2 => (any::<u8>(), 10u8..30).prop_map(|(k, n)| Op::Burst(k, n)),
            1 => any::<u8>().prop_map(Op::Remove),
            1 => (any::<u8>(), any::<u8>()).prop_map(|(h, m)| Op::Reads(h, m)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Drives the policy as a shard does (insert, then evict while over
        /// capacity; hits, quiet or not; removals; counted reads) and
        /// checks its structure after every step. Keys are slots here, and
        /// a key's hash is fixed, so hot keys go quiet.
        #[test]
        fn structure_holds_through_any_sequence(
            cap in 1u64..24,
            weighted in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..600),
        ) {
            // Unweighted, the window follows a simulation; weighted, it
            // climbs a hill (weights of 1, so the same driver fits).
            let sim = if weighted { None } else { WindowSim::new(cap).map(Arc::new) };
            let mut p = TinyLfu::new(cap, weighted, sim);
            let mut live: BTreeMap<u32, u64> = BTreeMap::new();
            let hash = |k: u8| u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let slot = u32::from(k % 48);
                        if live.contains_key(&slot) {
                            continue;
                        }
                        let info = EntryInfo { hash: hash(k % 48), weight: 1, expires_at: u64::MAX };
                        p.on_insert(slot, info);
                        live.insert(slot, info.hash);
                        while live.len() as u64 > cap {
                            let v = p
                                .victim(&|s| live.get(&s).copied().unwrap_or(0))
                                .expect("a victim while over capacity");
                            let h = live.remove(&v.slot).expect("the victim is live");
                            p.on_remove(v.slot, EntryInfo { hash: h, weight: 1, expires_at: u64::MAX });
                        }
                    }
                    Op::Hit(k) => {
                        let slot = u32::from(k % 48);
                        if let Some(&h) = live.get(&slot) {
                            p.on_hit(slot, h);
                        }
                    }
                    Op::Burst(k, n) => {
                        let slot = u32::from(k % 48);
                        if let Some(&h) = live.get(&slot) {
                            for _ in 0..n {
                                p.on_hit(slot, h);
                            }
                        }
                    }
                    Op::Remove(k) => {
                        let slot = u32::from(k % 48);
                        if let Some(h) = live.remove(&slot) {
                            p.on_remove(slot, EntryInfo { hash: h, weight: 1, expires_at: u64::MAX });
                        }
                    }
                    Op::Reads(h, m) => p.on_counted_reads(u64::from(h), u64::from(m)),
                }
                p.take_unquiet(&mut |_| {});
                check(&p, &live);
                prop_assert!(p.window_max >= 1 && p.window_max <= cap.max(1));
            }
        }
    }

    #[test]
    fn a_followed_window_walks_a_sixteenth_of_the_capacity_per_event() {
        let sim = Arc::new(WindowSim::new(1600).expect("a simulation"));
        let mut p = TinyLfu::new(1600, false, Some(Arc::clone(&sim)));
        let first = minisim::window_for(1600, minisim::INITIAL);
        assert_eq!(p.window_max, first);
        let last = minisim::FRACTIONS.len() - 1;
        let largest = minisim::window_for(1600, last);
        sim.force_choice(last);
        p.step();
        assert_eq!(p.window_max, first + 100);
        let events = (largest - first).div_ceil(100);
        for _ in 1..events {
            p.step();
        }
        assert_eq!(p.window_max, largest);
        // And back down, as far per event.
        sim.force_choice(0);
        p.step();
        assert_eq!(p.window_max, largest - 100);
    }

    /// A window told to shrink while the cache still fills (the window holds
    /// every entry until the first eviction) never grows instead.
    #[test]
    fn a_window_told_to_shrink_while_filling_never_grows() {
        let cap = 1600u64;
        let sim = Arc::new(WindowSim::new(cap).expect("a simulation"));
        let mut p = TinyLfu::new(cap, false, Some(Arc::clone(&sim)));
        let first = p.window_max;
        for s in 0..1000u32 {
            let hash = u64::from(s).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            p.on_insert(
                s,
                EntryInfo {
                    hash,
                    weight: 1,
                    expires_at: u64::MAX,
                },
            );
        }
        assert_eq!(p.window.len, 1000);
        sim.force_choice(0);
        for _ in 0..32 {
            p.step();
            assert!(p.window_max <= first, "{} > {first}", p.window_max);
        }
    }

    /// A window told to shrink while it is full moves a step of entries to
    /// main per insert, not all of them at the next one.
    #[test]
    fn a_shrinking_window_drains_a_step_per_insert() {
        let cap = 1600u64;
        let sim = Arc::new(WindowSim::new(cap).expect("a simulation"));
        let mut p = TinyLfu::new(cap, false, Some(Arc::clone(&sim)));
        let last = minisim::FRACTIONS.len() - 1;
        sim.force_choice(last);
        for _ in 0..32 {
            p.step();
        }
        let largest = minisim::window_for(cap, last);
        assert_eq!(p.window_max, largest);
        let hash = |s: u32| u64::from(s).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let info = |s: u32| EntryInfo {
            hash: hash(s),
            weight: 1,
            expires_at: u64::MAX,
        };
        let mut live = 0u64;
        let mut insert = |p: &mut TinyLfu, s: u32| {
            p.on_insert(s, info(s));
            live += 1;
            while live > cap {
                let v = p.victim(&|x| hash(x)).expect("a victim");
                p.on_remove(v.slot, info(v.slot));
                live -= 1;
            }
        };
        for s in 0..cap as u32 {
            insert(&mut p, s);
        }
        // Nothing was evicted yet: the window holds every entry.
        assert!(p.window.len >= largest, "{}", p.window.len);
        sim.force_choice(0);
        for _ in 0..32 {
            p.step();
        }
        let main = p.probation.len + p.protected.len;
        insert(&mut p, cap as u32);
        let moved = p.probation.len + p.protected.len - main;
        assert!(
            moved <= cap / 16 + 1,
            "{moved} entries moved to main at once"
        );
        // It still gets there, a step per event.
        for s in cap as u32 + 1..cap as u32 + 40 {
            insert(&mut p, s);
        }
        assert_eq!(p.window_max, minisim::window_for(cap, 0));
    }

    #[test]
    fn a_meta_byte_keeps_queue_and_quiet_apart() {
        for q in Queue::ALL {
            for quiet in [false, true] {
                let m = Meta::new(Queue::Protected).with_quiet(quiet).with_queue(q);
                assert_eq!((m.queue(), m.quiet()), (q, quiet));
                let flipped = m.with_quiet(!quiet);
                assert_eq!((flipped.queue(), flipped.quiet()), (q, !quiet));
            }
        }
    }

    /// Quietness starts at an estimate of `QUIET_FROM`, not at the
    /// counters' saturation: the insert counts once, the read that brings
    /// the estimate to 3 and every later one leave the entry quiet (the
    /// shard then withholds its reads).
    #[test]
    fn an_entry_goes_quiet_once_its_estimate_reaches_quiet_from() {
        let mut p = TinyLfu::new(64, false, None);
        p.on_insert(
            0,
            EntryInfo {
                hash: 1,
                weight: 1,
                expires_at: u64::MAX,
            },
        );
        let seen: Vec<bool> = (0..4).map(|_| p.on_hit(0, 1)).collect();
        assert_eq!(seen, [false, true, true, true]);
    }

    /// A key the window simulation samples goes quiet only once its
    /// counters saturate, so the ghosts see nearly all its accesses (a
    /// cache of 64 entries samples every key).
    #[test]
    fn a_sampled_key_goes_quiet_only_at_saturation() {
        let sim = minisim::WindowSim::new(64).map(Arc::new);
        assert!(
            sim.as_ref().is_some_and(|s| s.sampled(1)),
            "key 1 is sampled"
        );
        let mut p = TinyLfu::new(64, false, sim);
        p.on_insert(
            0,
            EntryInfo {
                hash: 1,
                weight: 1,
                expires_at: u64::MAX,
            },
        );
        let seen: Vec<bool> = (0..16).map(|_| p.on_hit(0, 1)).collect();
        let first_quiet = seen.iter().position(|&q| q);
        assert_eq!(
            first_quiet,
            Some(13),
            "the read that brings the estimate to 15"
        );
        // A key a large cache's simulation does not sample goes quiet at 3.
        let sim = minisim::WindowSim::new(1 << 20).map(Arc::new);
        let hash = (1..1_000u64)
            .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            .find(|&h| sim.as_ref().is_some_and(|s| !s.sampled(h)))
            .expect("most keys are not sampled");
        let mut p = TinyLfu::new(1 << 20, false, sim);
        p.on_insert(
            0,
            EntryInfo {
                hash,
                weight: 1,
                expires_at: u64::MAX,
            },
        );
        let seen: Vec<bool> = (0..4).map(|_| p.on_hit(0, hash)).collect();
        assert_eq!(seen, [false, true, true, true]);
    }

    #[test]
    fn a_hot_entry_goes_quiet_and_a_demoted_one_is_unmarked() {
        let mut p = TinyLfu::new(4, false, None);
        let live: BTreeMap<u32, u64> = (0..4u32).map(|s| (s, u64::from(s) * 2 + 1)).collect();
        for (&s, &h) in &live {
            p.on_insert(
                s,
                EntryInfo {
                    hash: h,
                    weight: 1,
                    expires_at: u64::MAX,
                },
            );
        }
        // Reads until slot 0's estimate is high enough: then it is quiet.
        let quiet = (0..40).map(|_| p.on_hit(0, 1)).last();
        assert_eq!(quiet, Some(true));
        assert!(p.quiet(0));
        let mut unmarked = Vec::new();
        p.take_unquiet(&mut |s| unmarked.push(s));
        assert!(unmarked.is_empty());
        // Forced into probation (as a demotion does): no longer quiet, and
        // the shard is told to clear its mark.
        p.unlink(0);
        p.push(Queue::Probation, 0);
        assert!(!p.quiet(0));
        p.take_unquiet(&mut |s| unmarked.push(s));
        assert_eq!(unmarked, [0]);
    }
}
