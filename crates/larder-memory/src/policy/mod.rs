//! Eviction policies, one file each behind [`Policy`].
//!
//! A policy sees slots (small integers), weights and key hashes, never keys
//! or values; the shard owns the entries. The shard tells the policy about
//! inserts, hits, misses, weight changes and removals, and asks it for a
//! victim while the shard is over capacity.

use std::sync::Arc;

pub(crate) mod lfu;
pub(crate) mod lru;
pub(crate) mod minisim;
pub(crate) mod sketch;
pub(crate) mod tinylfu;
pub(crate) mod ttl;

/// What the policy knows about an entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryInfo {
    pub(crate) hash: u64,
    pub(crate) weight: u64,
    /// Expiry tick (nanoseconds on the cache's clock), `u64::MAX` for never.
    pub(crate) expires_at: u64,
}

/// The policy's answer to "whom do I evict?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Victim {
    pub(crate) slot: u32,
    /// The victim is a newcomer that lost the admission contest.
    pub(crate) rejected_by_admission: bool,
}

pub(crate) trait Policy: Send + 'static {
    /// A new entry now lives in `slot`.
    fn on_insert(&mut self, slot: u32, info: EntryInfo);
    /// `slot` was read. Returns whether the cache may stop reporting reads
    /// of `slot` (counting them only) until [`Policy::epoch`] changes or
    /// [`Policy::take_unquiet`] hands the slot back: a hot entry then costs
    /// no policy work.
    fn on_hit(&mut self, slot: u32, hash: u64) -> bool;
    /// Reads what [`Policy::on_hit`] for `slot` will touch (the result is
    /// only for the caller to sink): called for a batch of hits before they
    /// are applied, so their cache misses overlap.
    fn warm(&self, _slot: u32, _hash: u64) -> u64 {
        0
    }
    /// Reads that were counted but not reported one by one: hits on quiet
    /// entries (see [`Policy::on_hit`]) and misses. The shard calls it, at
    /// drains of the read ring, only if [`Policy::counts_reads`].
    fn on_counted_reads(&mut self, _hits: u64, _misses: u64) {}
    /// Whether the policy wants [`Policy::on_counted_reads`]: summing the
    /// counters' stripes costs every drain of the read ring, so a policy
    /// that does not need the figures is not told (the statistics sum them
    /// when asked). Fixed for the policy's life (the shard asks once).
    fn counts_reads(&self) -> bool {
        false
    }
    /// Changes whenever reads that [`Policy::on_hit`] called quiet would
    /// matter again, for every entry at once.
    fn epoch(&self) -> u32 {
        0
    }
    /// Hands over the slots whose quietness ended one by one since the last
    /// call: their reads matter again.
    fn take_unquiet(&mut self, _unmark: &mut dyn FnMut(u32)) {}
    /// `slot`'s value was replaced: new weight and expiry.
    fn on_update(&mut self, slot: u32, old: EntryInfo, new: EntryInfo);
    /// A read moved `slot`'s deadline (time to idle, the expiry hook), or
    /// the wheel found it moved: the entry itself did not change. Only a
    /// policy that orders by deadline cares.
    fn on_expiry_moved(&mut self, _slot: u32, _expires_at: u64) {}
    /// `slot` was removed (explicitly, expired, or evicted by the shard
    /// after [`Policy::victim`] named it).
    fn on_remove(&mut self, slot: u32, info: EntryInfo);
    /// The entry to evict next; `None` only when the policy holds nothing.
    /// `hash_of` gives a live slot's key hash (the shard hashes the key
    /// again: call it only for slots whose frequency is needed).
    fn victim(&mut self, hash_of: &dyn Fn(u32) -> u64) -> Option<Victim>;
    /// Slots `0..slots` may be used: size per-slot arrays exactly (a full
    /// cache then wastes no growth headroom).
    fn reserve(&mut self, _slots: usize) {}
    /// Bytes the policy holds on the heap (per-entry arrays, the sketch).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize;
    /// Policy-specific figures for [`crate::PolicyInfo`].
    fn window_capacity(&self) -> Option<u64> {
        None
    }
}

/// Which eviction policy a cache uses.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PolicyKind {
    /// W-TinyLFU: a small LRU window admits newcomers; a count-min sketch of
    /// recent frequencies decides whether a window victim may displace the
    /// main space's victim; the main space is a segmented LRU; the window
    /// size follows mini-simulations of six window sizes on a sample of
    /// the keys (hill climbing with a weigher). Resists scans and loops,
    /// keeps recency-biased workloads. The default.
    #[default]
    TinyLfu,
    /// Least recently used, exactly.
    Lru,
    /// Least frequently used, with aging (counts halve periodically) and
    /// LRU among equals.
    Lfu,
    /// The entry that expires soonest goes first; entries without expiry
    /// go last, least recently used first.
    Ttl,
}

/// A policy for a shard of `capacity` (entries, or weight if `weighted`).
/// Nothing is sized by a weight: per-entry structures follow the entries
/// held. `sim` is the cache's window simulation (W-TinyLFU counted in
/// entries only), shared by its shards; see [`simulation`].
pub(crate) fn make(
    kind: PolicyKind,
    capacity: u64,
    weighted: bool,
    sim: Option<&Arc<minisim::WindowSim>>,
) -> Box<dyn Policy> {
    match kind {
        PolicyKind::TinyLfu => Box::new(tinylfu::TinyLfu::new(capacity, weighted, sim.cloned())),
        PolicyKind::Lru => Box::new(lru::Lru::default()),
        PolicyKind::Lfu => Box::new(lfu::Lfu::new(capacity, weighted)),
        PolicyKind::Ttl => Box::new(ttl::Ttl::default()),
    }
}

/// The window simulation for a cache of `capacity`, if its policy uses
/// one: W-TinyLFU counted in entries.
pub(crate) fn simulation(
    kind: PolicyKind,
    capacity: u64,
    weighted: bool,
) -> Option<Arc<minisim::WindowSim>> {
    (kind == PolicyKind::TinyLfu && !weighted)
        .then(|| minisim::WindowSim::new(capacity))
        .flatten()
        .map(Arc::new)
}
