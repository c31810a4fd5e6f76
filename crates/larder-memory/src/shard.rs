//! One shard: a hash table of slot indices, a slab of entries, the policy
//! and the timer wheel, all behind the shard's read-write lock. Reads hold
//! it shared and report to the policy through the shard's read buffer
//! ([`crate::reads`]); everything else applies the buffer first (under an
//! upgradable lock, reads still going on) and then holds it exclusively.
//! The shard never holds more than its capacity after any operation
//! returns: an insert evicts before it releases the lock.

use std::borrow::Borrow;
use std::cell::Cell;
use std::hash::Hash;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use hashbrown::HashTable;

use crate::RemovalCause;
use crate::policy::{EntryInfo, Policy};
use crate::reads::{self, ReadBuffer};
use crate::wheel::Wheel;

/// An entry: its key, then its value, and nothing else. Deadlines,
/// weights and quiet marks live beside the slab (the marks in every shard,
/// the others only in shards that need them). The hash is not kept: the
/// table's rare full-hash needs (growing, removing) and admission's
/// comparison of two frequencies hash the keys again.
#[repr(C)]
pub(crate) struct Node<K, V> {
    pub(crate) key: K,
    pub(crate) value: V,
}

/// The sketch's hash of a key's full hash: its low 32 bits, what read
/// events carry ([`reads::tag`]).
fn policy_hash(hash: u64) -> u64 {
    u64::from(reads::tag(hash))
}

/// Hashes a key as the cache does (`MemoryCache::hash`).
pub(crate) type Rehash<'a, K> = &'a dyn Fn(&K) -> u64;

/// The hash table's hasher, for its growth: the key of a mapped slot,
/// hashed again.
///
/// # Safety
///
/// Every slot the hasher is called with must hold an initialised node: pass
/// a shard's slab and call it only from that shard's table (which maps live
/// slots only, the invariants on `Shard::slots`).
unsafe fn table_hasher<'a, K, V>(
    slots: &'a [MaybeUninit<Node<K, V>>],
    rehash: Rehash<'a, K>,
) -> impl Fn(&u32) -> u64 + 'a {
    move |&s| {
        // SAFETY: the caller's promise: `s` is a mapped, so live, slot.
        rehash(&unsafe { slots[s as usize].assume_init_ref() }.key)
    }
}

/// An entry's deadlines (nanoseconds on the cache's clock).
struct Deadline {
    /// The effective deadline: `min(hard, time-to-idle deadline)`. Reads
    /// move it (time to idle) under the shared lock; the wheel and the
    /// policy learn the new value when the read's event is applied, or
    /// when the wheel finds the entry not yet due.
    expires_at: AtomicU64,
    /// The deadline reads cannot extend (time to live, explicit TTL, the
    /// hook's answers); the expiry hook may bring it closer on a read.
    hard: AtomicU64,
}

impl Deadline {
    fn never() -> Self {
        Deadline {
            expires_at: AtomicU64::new(u64::MAX),
            hard: AtomicU64::new(u64::MAX),
        }
    }
}

/// Entries that left the shard during one operation, with their cause, for
/// the listener (called after the lock is released) or to be dropped there.
/// Most operations remove at most one entry (a replaced value, one victim):
/// the first is kept inline, so a steady-state insert does not allocate.
pub(crate) struct Removed<K, V> {
    first: Option<(K, V, RemovalCause)>,
    rest: Vec<(K, V, RemovalCause)>,
}

impl<K, V> Removed<K, V> {
    pub(crate) fn new() -> Self {
        Removed {
            first: None,
            rest: Vec::new(),
        }
    }

    fn push(&mut self, entry: (K, V, RemovalCause)) {
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.rest.push(entry);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The first removed value.
    pub(crate) fn first_value(&self) -> Option<&V> {
        self.first.as_ref().map(|(_, v, _)| v)
    }

    /// The first removed value, dropping the rest.
    pub(crate) fn into_first_value(self) -> Option<V> {
        self.first.map(|(_, v, _)| v)
    }
}

impl<K, V> IntoIterator for Removed<K, V> {
    type Item = (K, V, RemovalCause);
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<(K, V, RemovalCause)>,
        std::vec::IntoIter<(K, V, RemovalCause)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ShardStats {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) inserts: u64,
    pub(crate) evicted: u64,
    pub(crate) expired: u64,
    pub(crate) replaced: u64,
    pub(crate) removed: u64,
    pub(crate) rejected: u64,
}

/// The table and the slab first: every read needs them.
#[repr(C)]
pub(crate) struct Shard<K, V> {
    table: HashTable<u32>,
    /// The slab. Slot `s` holds an initialised node exactly when its bit in
    /// `live` is set, and the table maps live slots only: every
    /// `assume_init` below rests on these two invariants (`insert` sets the
    /// bit after writing the node and maps the slot after that;
    /// `remove_slot` unmaps, clears the bit and moves the node out with
    /// nothing in between that can panic). An `Option` per slot would add
    /// its tag, up to `align_of::<Node<K, V>>()` bytes per entry.
    slots: Vec<MaybeUninit<Node<K, V>>>,
    /// Per slot: the read buffer's quiet mark, or 0 (see [`crate::reads`]).
    /// Reads load it under the shared lock; only the holder of the upkeep
    /// lock (or of the exclusive lock) stores it.
    marks: Vec<AtomicU8>,
    /// Per slot once anything in the shard can expire, else empty.
    deadlines: Vec<Deadline>,
    /// Per slot with a weigher, else empty (every entry weighs 1).
    weights: Vec<u32>,
    weighted: bool,
    /// One bit per slot: holds an entry.
    live: Vec<u64>,
    free: Vec<u32>,
    /// The most entries the shard can hold (its capacity without a
    /// weigher): the slab grows up to one more, exactly, no further.
    max_entries: Option<u64>,
    weight: u64,
    len: u64,
    capacity: u64,
}

/// A shard's upkeep: the policy, the timer wheel and the statistics. It has
/// its own lock, taken after the shard's: a writer holds both; whoever
/// applies the read ring holds the shard's lock shared and this one, so
/// reads go on meanwhile.
pub(crate) struct Maint {
    policy: Box<dyn Policy>,
    wheel: Wheel,
    pub(crate) stats: ShardStats,
    /// Whether the policy takes counted reads (`Policy::counts_reads`,
    /// fixed for its life): if not, they stay in the read buffer's
    /// stripes, and `stats_with` adds them.
    counts_reads: bool,
    /// `quiet_hits` and `misses` of the read buffer as last handed to the
    /// policy (they stay 0 if it does not count reads).
    quiet_seen: u64,
    misses_seen: u64,
    /// The policy's epoch as last published to the read buffer.
    epoch_seen: u32,
    /// The events of one drain of the read buffer (kept for its capacity).
    events: Vec<u64>,
}

impl Maint {
    /// Upkeep for a new shard; time starts at 0 (the cache's origin).
    pub(crate) fn new(policy: Box<dyn Policy>) -> Self {
        Maint {
            counts_reads: policy.counts_reads(),
            policy,
            wheel: Wheel::new(0),
            stats: ShardStats::default(),
            quiet_seen: 0,
            misses_seen: 0,
            epoch_seen: 0,
            events: Vec::new(),
        }
    }

    pub(crate) fn window_capacity(&self) -> Option<u64> {
        self.policy.window_capacity()
    }

    /// The statistics with the reads not yet applied: counted hits and
    /// misses not yet handed to the policy (all of them, unless it counts
    /// reads), events waiting in the ring and
    /// events the ring dropped. Needs only this lock (readers never wait
    /// for it), and counts each read once: an event is applied only under
    /// this lock.
    pub(crate) fn stats_with(&self, buf: &ReadBuffer) -> ShardStats {
        let (quiet, misses) = buf.counted();
        let mut st = self.stats;
        st.hits += quiet.wrapping_sub(self.quiet_seen)
            + buf.pending()
            + buf.lost_hits.load(Ordering::Relaxed);
        st.misses += misses.wrapping_sub(self.misses_seen);
        st
    }

    /// The policy's epoch (the sketch's age).
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> u32 {
        self.policy.epoch()
    }

    /// Bytes the policy holds on the heap.
    #[cfg(test)]
    pub(crate) fn policy_heap_bytes(&self) -> usize {
        self.policy.heap_bytes()
    }
}

impl<K: Hash + Eq, V: Clone> Shard<K, V> {
    pub(crate) fn new(capacity: u64, weighted: bool) -> Self {
        Shard {
            table: HashTable::new(),
            slots: Vec::new(),
            marks: Vec::new(),
            deadlines: Vec::new(),
            weights: Vec::new(),
            weighted,
            live: Vec::new(),
            free: Vec::new(),
            max_entries: (!weighted).then_some(capacity),
            weight: 0,
            len: 0,
            capacity,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn weight(&self) -> u64 {
        self.weight
    }

    pub(crate) fn find<Q>(&self, hash: u64, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lookup(hash, key).map(|(slot, _)| slot)
    }

    /// [`Shard::find`], and the entry found.
    #[inline]
    pub(crate) fn lookup<Q>(&self, hash: u64, key: &Q) -> Option<(u32, &Node<K, V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = *self
            .table
            .find(hash, |&s| self.mapped(s).key.borrow() == key)?;
        Some((slot, self.mapped(slot)))
    }

    /// The entry in a slot the table maps (so a live one).
    #[inline]
    fn mapped(&self, slot: u32) -> &Node<K, V> {
        debug_assert!(self.is_live(slot), "the table maps a free slot {slot}");
        // SAFETY: the table maps live slots only, and a live slot holds an
        // initialised node (the invariants on `slots`).
        unsafe { self.slots[slot as usize].assume_init_ref() }
    }

    /// The entry in `slot`; panics if the slot is free.
    fn node(&self, slot: u32) -> &Node<K, V> {
        assert!(self.is_live(slot), "slot {slot} is free");
        // SAFETY: a live slot holds an initialised node.
        unsafe { self.slots[slot as usize].assume_init_ref() }
    }

    fn node_mut(&mut self, slot: u32) -> &mut Node<K, V> {
        assert!(self.is_live(slot), "slot {slot} is free");
        // SAFETY: a live slot holds an initialised node.
        unsafe { self.slots[slot as usize].assume_init_mut() }
    }

    /// `slot`'s read mark (0 for a slot never marked since it was filled).
    #[inline]
    pub(crate) fn mark(&self, slot: u32) -> u8 {
        self.marks[slot as usize].load(Ordering::Relaxed)
    }

    /// What the policy is told of the entry in `slot`, whose key hashes to
    /// `hash`.
    fn info(&self, slot: u32, hash: u64) -> EntryInfo {
        EntryInfo {
            hash: policy_hash(hash),
            weight: self.slot_weight(slot),
            expires_at: self.expires_at(slot),
        }
    }

    /// `slot`'s weight (1 without a weigher).
    fn slot_weight(&self, slot: u32) -> u64 {
        self.weights.get(slot as usize).map_or(1, |&w| u64::from(w))
    }

    fn set_weight(&mut self, slot: u32, weight: u64) {
        if self.weighted {
            let i = slot as usize;
            if self.weights.len() <= i {
                self.weights.resize(i + 1, 0);
            }
            self.weights[i] = weight as u32;
        }
    }

    /// `slot`'s effective deadline (`u64::MAX`: never).
    #[inline]
    pub(crate) fn expires_at(&self, slot: u32) -> u64 {
        self.deadlines
            .get(slot as usize)
            .map_or(u64::MAX, |d| d.expires_at.load(Ordering::Relaxed))
    }

    /// `slot`'s hard deadline (`u64::MAX`: none).
    #[inline]
    pub(crate) fn hard_deadline(&self, slot: u32) -> u64 {
        self.deadlines
            .get(slot as usize)
            .map_or(u64::MAX, |d| d.hard.load(Ordering::Relaxed))
    }

    /// The hard deadline of `key`'s entry, if it is live at `now`.
    pub(crate) fn live_hard_deadline<Q>(&self, hash: u64, key: &Q, now: u64) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.find(hash, key)?;
        (self.expires_at(slot) > now).then(|| self.hard_deadline(slot))
    }

    /// A read moved `slot`'s deadlines: the hard one only closer (the
    /// expiry hook), the effective one to the earlier of the hard one and
    /// `idle` (time to idle).
    pub(crate) fn touch(&self, slot: u32, hard: u64, idle: u64) {
        if let Some(d) = self.deadlines.get(slot as usize) {
            let hard = d.hard.fetch_min(hard, Ordering::Relaxed).min(hard);
            d.expires_at.store(hard.min(idle), Ordering::Relaxed);
        }
    }

    fn set_deadlines(&mut self, slot: u32, hard: u64, expires_at: u64) {
        if self.deadlines.is_empty() {
            if expires_at == u64::MAX && hard == u64::MAX {
                return;
            }
            // The first entry that can expire: from now on every slot has
            // its deadlines.
            self.deadlines.reserve_exact(self.slots.capacity());
            self.deadlines
                .resize_with(self.slots.len(), Deadline::never);
        }
        let d = &mut self.deadlines[slot as usize];
        *d.hard.get_mut() = hard;
        *d.expires_at.get_mut() = expires_at;
    }

    /// A free slot, growing the slab (and the policy's per-slot arrays)
    /// when none is left: by doubling, but never past `max_entries`.
    fn new_slot(&mut self, m: &mut Maint) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let len = self.slots.len();
        if len == self.slots.capacity() {
            let doubled = (len * 2).max(16);
            // An insert places its entry before it evicts: a full shard
            // holds `max_entries + 1` for a moment.
            let want = match self.max_entries {
                Some(max) if (len as u64) <= max => {
                    (doubled as u64).min(max.saturating_add(1)) as usize
                }
                _ => doubled,
            };
            self.slots.reserve_exact(want - len);
            self.marks.reserve_exact(want - len);
            if self.weighted {
                self.weights.reserve_exact(want - len);
            }
            if !self.deadlines.is_empty() {
                self.deadlines.reserve_exact(want - len);
            }
            m.policy.reserve(want);
        }
        self.slots.push(MaybeUninit::uninit());
        self.marks.push(AtomicU8::new(0));
        if !self.deadlines.is_empty() {
            self.deadlines.push(Deadline::never());
        }
        len as u32
    }

    /// Takes an entry out of every structure. `known`: its key's hash, if
    /// the caller has it (the key was found under it, or eviction hashed
    /// it to choose the victim); else the key is hashed again.
    fn remove_slot(
        &mut self,
        m: &mut Maint,
        slot: u32,
        cause: RemovalCause,
        known: Option<u64>,
        rehash: Rehash<'_, K>,
        out: &mut Removed<K, V>,
    ) {
        assert!(self.is_live(slot), "slot {slot} is free");
        // The user's `Hash` runs first, before anything changes: if it
        // panics, the shard is left as it was.
        let hash = match known {
            Some(hash) => hash,
            None => rehash(&self.node(slot).key),
        };
        let info = self.info(slot, hash);
        match self.table.find_entry(hash, |&s| s == slot) {
            Ok(e) => {
                e.remove();
            }
            // The key hashes differently than when it went in (its `Hash`
            // is not a function of its value): unmap the slot the slow
            // way, so the table never maps a free slot.
            Err(_) => self.table.retain(|&mut s| s != slot),
        }
        self.set_live(slot, false);
        // SAFETY: the slot was live (`node` above checked), so it holds an
        // initialised node; it is now free and unmapped, so nothing reads
        // the node again until `insert` writes a new one.
        let node = unsafe { self.slots[slot as usize].assume_init_read() };
        m.policy.on_remove(slot, info);
        m.wheel.unschedule(slot);
        self.weight -= info.weight;
        self.len -= 1;
        self.free.push(slot);
        match cause {
            RemovalCause::Expired => m.stats.expired += 1,
            RemovalCause::Evicted => m.stats.evicted += 1,
            RemovalCause::Removed => m.stats.removed += 1,
            RemovalCause::Replaced => m.stats.replaced += 1,
        }
        out.push((node.key, node.value, cause));
    }

    /// Applies the read buffer's events (and `extra`, one that found the
    /// buffer full) to the policy and the statistics, and publishes the
    /// policy's epoch.
    pub(crate) fn apply_reads(&self, m: &mut Maint, buf: &ReadBuffer, extra: Option<u64>) {
        // Counted reads not yet seen stay in the stripes (`stats_with` adds
        // them) unless the policy wants them.
        if m.counts_reads {
            let (quiet, misses) = buf.counted();
            if quiet != m.quiet_seen || misses != m.misses_seen {
                let hits = quiet.wrapping_sub(m.quiet_seen);
                let missed = misses.wrapping_sub(m.misses_seen);
                m.quiet_seen = quiet;
                m.misses_seen = misses;
                m.stats.hits += hits;
                m.stats.misses += missed;
                m.policy.on_counted_reads(hits, missed);
            }
        }
        let mut events = std::mem::take(&mut m.events);
        events.clear();
        events.reserve(reads::CAPACITY);
        buf.take(&mut events);
        // Touch what applying will touch first: independent loads overlap,
        // so a ring of 64 events costs a few cache misses, not 64 in a row.
        let mut sink = 0u64;
        for &ev in &events {
            let (slot, tag) = reads::decode(ev);
            sink ^= m.policy.warm(slot, u64::from(tag));
        }
        std::hint::black_box(sink);
        for &ev in &events {
            self.apply_read(m, ev);
        }
        m.events = events;
        if let Some(ev) = extra {
            self.apply_read(m, ev);
        }
        self.unmark_unquiet(m);
        self.publish_epoch(m, buf);
    }

    /// Publishes the policy's epoch to the read buffer. A new one ends
    /// every mark of the epochs before (the policy has dropped its own
    /// quiet flags when its sketch aged), so a byte per mark never meets an
    /// old mark that wrapped around to the new one; marks already set in
    /// the new epoch stay. Call after anything that may age the sketch (a
    /// reported hit, an insert) with the upkeep lock held.
    pub(crate) fn publish_epoch(&self, m: &mut Maint, buf: &ReadBuffer) {
        let epoch = m.policy.epoch();
        if epoch != m.epoch_seen {
            m.epoch_seen = epoch;
            let current = ReadBuffer::quiet_mark(epoch);
            for mark in &self.marks {
                let was = mark.load(Ordering::Relaxed);
                if was != 0 && was != current {
                    mark.store(0, Ordering::Relaxed);
                }
            }
        }
        buf.set_epoch(epoch);
    }

    /// Clears the quiet mark of every entry the policy no longer calls
    /// quiet (call with the upkeep lock held).
    fn unmark_unquiet(&self, m: &mut Maint) {
        let marks = &self.marks;
        m.policy.take_unquiet(&mut |s| {
            if let Some(mark) = marks.get(s as usize) {
                mark.store(0, Ordering::Relaxed);
            }
        });
    }

    /// One reported hit. It touches the slot only to mark it quiet or to
    /// move its deadline: the event's slot and hash tag are enough
    /// for the policy (the sketch counts the tag), and a bitmap says
    /// whether the slot is still live. A slot freed and reused since the
    /// read credits the hit to its new entry: rare, and harmless.
    fn apply_read(&self, m: &mut Maint, ev: u64) {
        let (slot, tag) = reads::decode(ev);
        m.stats.hits += 1;
        if !self.is_live(slot) {
            return;
        }
        if m.policy.on_hit(slot, u64::from(tag)) {
            let mark = ReadBuffer::quiet_mark(m.policy.epoch());
            self.marks[slot as usize].store(mark, Ordering::Relaxed);
        }
        if self.deadlines.is_empty() {
            return;
        }
        let deadline = self.expires_at(slot);
        if deadline != m.wheel.scheduled(slot) {
            m.policy.on_expiry_moved(slot, deadline);
            m.wheel.schedule(slot, deadline);
        }
    }

    fn is_live(&self, slot: u32) -> bool {
        self.live
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    fn set_live(&mut self, slot: u32, live: bool) {
        let i = slot as usize / 64;
        if self.live.len() <= i {
            self.live.resize(i + 1, 0);
        }
        if live {
            self.live[i] |= 1 << (slot % 64);
        } else {
            self.live[i] &= !(1 << (slot % 64));
        }
    }

    /// Removes the entry for `key` if it has expired by `now` (a read found
    /// it so). Counts nothing: the read counted its miss.
    pub(crate) fn remove_expired<Q>(
        &mut self,
        m: &mut Maint,
        hash: u64,
        key: &Q,
        now: u64,
        rehash: Rehash<'_, K>,
        out: &mut Removed<K, V>,
    ) where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(slot) = self.find(hash, key)
            && self.expires_at(slot) <= now
        {
            self.remove_slot(m, slot, RemovalCause::Expired, Some(hash), rehash, out);
        }
    }

    /// The value if present and live, without touching recency or stats.
    pub(crate) fn peek<Q>(&self, hash: u64, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (slot, node) = self.lookup(hash, key)?;
        (self.expires_at(slot) > now).then_some(&node.value)
    }

    /// Inserts or replaces, then evicts until within capacity. An entry
    /// heavier than the whole shard is not stored (and any old value for its
    /// key is removed): that counts as an admission rejection.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert(
        &mut self,
        m: &mut Maint,
        hash: u64,
        key: K,
        value: V,
        weight: u64,
        hard: u64,
        expires_at: u64,
        rehash: Rehash<'_, K>,
        out: &mut Removed<K, V>,
    ) {
        m.stats.inserts += 1;
        let existing = self.find(hash, &key);
        if weight > self.capacity {
            if let Some(slot) = existing {
                self.remove_slot(m, slot, RemovalCause::Replaced, Some(hash), rehash, out);
            }
            m.stats.rejected += 1;
            out.push((key, value, RemovalCause::Evicted));
            m.stats.evicted += 1;
            return;
        }
        match existing {
            Some(slot) => {
                let old = self.info(slot, hash);
                let node = self.node_mut(slot);
                let old_value = std::mem::replace(&mut node.value, value);
                self.set_weight(slot, weight);
                self.set_deadlines(slot, hard, expires_at);
                let new = self.info(slot, hash);
                self.weight = self.weight - old.weight + weight;
                m.policy.on_update(slot, old, new);
                m.wheel.schedule(slot, expires_at);
                m.stats.replaced += 1;
                out.push((key, old_value, RemovalCause::Replaced));
            }
            None => {
                // Grow the table first: the user's `Hash` runs before the
                // slot is filled, and `insert_unique` cannot grow. (If the
                // table rehashes in place instead, over many tombstones, a
                // panicking `Hash` leaves the entries not yet rehashed
                // unmapped: still held and evictable, never found.)
                // SAFETY: this shard's slab, for this shard's table.
                self.table
                    .reserve(1, unsafe { table_hasher(&self.slots, rehash) });
                let slot = self.new_slot(m);
                self.slots[slot as usize].write(Node { key, value });
                *self.marks[slot as usize].get_mut() = 0;
                self.set_weight(slot, weight);
                self.set_deadlines(slot, hard, expires_at);
                self.set_live(slot, true);
                let info = self.info(slot, hash);
                // SAFETY: this shard's slab, for this shard's table.
                let hasher = unsafe { table_hasher(&self.slots, rehash) };
                self.table.insert_unique(hash, slot, hasher);
                self.weight += weight;
                self.len += 1;
                m.policy.on_insert(slot, info);
                m.wheel.schedule(slot, expires_at);
            }
        }
        while self.weight > self.capacity {
            // The policy's slots are live. A key's `Hash` that panics here
            // leaves every entry in the shard or out of it, the shard
            // perhaps over its capacity until the next write.
            // The last two keys hashed to choose the victim (a candidate and
            // main's victim): the one evicted is not hashed a third time.
            let this = &*self;
            let hashed = Cell::new([(u32::MAX, 0u64); 2]);
            let hash_of = |s: u32| {
                let hash = rehash(&this.node(s).key);
                let [last, _] = hashed.get();
                hashed.set([(s, hash), last]);
                policy_hash(hash)
            };
            let Some(v) = m.policy.victim(&hash_of) else {
                break;
            };
            if v.rejected_by_admission {
                m.stats.rejected += 1;
            }
            let known = hashed.get().into_iter().find(|&(s, _)| s == v.slot);
            let known = known.map(|(_, hash)| hash);
            self.remove_slot(m, v.slot, RemovalCause::Evicted, known, rehash, out);
        }
        self.unmark_unquiet(m);
    }

    /// Removes the entry for `key`; whether it was live at `now`. An
    /// entry whose deadline has passed (not yet cleaned up) leaves as
    /// expired, and its value is not the caller's.
    pub(crate) fn remove<Q>(
        &mut self,
        m: &mut Maint,
        hash: u64,
        key: &Q,
        now: u64,
        rehash: Rehash<'_, K>,
        out: &mut Removed<K, V>,
    ) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(slot) = self.find(hash, key) else {
            return false;
        };
        if self.expires_at(slot) <= now {
            self.remove_slot(m, slot, RemovalCause::Expired, Some(hash), rehash, out);
            return false;
        }
        self.remove_slot(m, slot, RemovalCause::Removed, Some(hash), rehash, out);
        true
    }

    /// Removes everything.
    pub(crate) fn clear(&mut self, m: &mut Maint, rehash: Rehash<'_, K>, out: &mut Removed<K, V>) {
        for slot in 0..self.slots.len() as u32 {
            if self.is_live(slot) {
                self.remove_slot(m, slot, RemovalCause::Removed, None, rehash, out);
            }
        }
    }

    /// Expires what the wheel says is due by `now`.
    pub(crate) fn expire(
        &mut self,
        m: &mut Maint,
        now: u64,
        rehash: Rehash<'_, K>,
        out: &mut Removed<K, V>,
    ) {
        let mut due = Vec::new();
        m.wheel.advance(now, &mut due);
        for slot in due {
            if !self.is_live(slot) {
                continue;
            }
            let deadline = self.expires_at(slot);
            if deadline <= now {
                self.remove_slot(m, slot, RemovalCause::Expired, None, rehash, out);
            } else {
                // A read moved the deadline and its event was lost or not
                // yet applied: file it again, with the policy too.
                m.policy.on_expiry_moved(slot, deadline);
                m.wheel.schedule(slot, deadline);
            }
        }
    }

    /// Live entries (cloned), for iteration.
    pub(crate) fn snapshot(&self, now: u64) -> Vec<(K, V)>
    where
        K: Clone,
    {
        (0..self.slots.len() as u32)
            .filter(|&s| self.is_live(s) && self.expires_at(s) > now)
            .map(|s| self.node(s))
            .map(|n| (n.key.clone(), n.value.clone()))
            .collect()
    }
}

impl<K, V> Drop for Shard<K, V> {
    fn drop(&mut self) {
        for (i, word) in self.live.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let slot = i * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // SAFETY: a live slot holds an initialised node, dropped
                // once here (the shard goes with it).
                unsafe { self.slots[slot].assume_init_drop() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, PolicyKind};

    const SEC: u64 = 1_000_000_000;

    /// An empty shard of `capacity`, its upkeep with a `kind` policy, and
    /// a list for what leaves it.
    fn parts(
        kind: PolicyKind,
        capacity: u64,
        weighted: bool,
    ) -> (Shard<u64, u64>, Maint, Removed<u64, u64>) {
        (
            Shard::new(capacity, weighted),
            Maint::new(policy::make(kind, capacity, weighted, None)),
            Removed::new(),
        )
    }

    /// A read moves a deadline (time to idle) and its event is lost (the
    /// ring was full and busy); the wheel then finds the entry not yet due
    /// and files it again. Removing the entry afterwards must take it out
    /// of the policy too: the TTL policy keyed it by the deadline it was
    /// told, not by the one the read moved to.
    #[test]
    fn a_lost_read_event_leaves_the_ttl_policy_consistent() {
        for kind in [
            PolicyKind::Ttl,
            PolicyKind::TinyLfu,
            PolicyKind::Lru,
            PolicyKind::Lfu,
        ] {
            let (mut shard, mut m, mut out) = parts(kind, 10, true);
            // Key k hashes to 2k + 1.
            let h: Rehash<'_, u64> = &|k| 2 * k + 1;
            shard.insert(&mut m, 3, 1, 1, 1, u64::MAX, 5 * SEC, h, &mut out);
            shard.insert(&mut m, 5, 2, 2, 1, u64::MAX, u64::MAX, h, &mut out);
            // t = 4 s: a read moves key 1's idle deadline to 9 s; its event
            // is lost, so only the slot's deadline knows.
            let slot = shard.find(3, &1).expect("key 1");
            shard.touch(slot, u64::MAX, 9 * SEC);
            // t = 6 s: the wheel finds key 1 filed under 5 s, not yet due.
            shard.expire(&mut m, 6 * SEC, h, &mut out);
            assert!(out.is_empty(), "nothing is due at 6 s");
            shard.remove(&mut m, 3, &1, 6 * SEC, h, &mut out);
            // Slot 0 is reused; then an insert must evict twice.
            shard.insert(&mut m, 7, 3, 3, 5, u64::MAX, u64::MAX, h, &mut out);
            shard.insert(&mut m, 9, 4, 4, 10, u64::MAX, u64::MAX, h, &mut out);
            assert!(shard.weight() <= 10, "{kind:?}");
            for (hash, key) in [(3, 1), (5, 2), (7, 3), (9, 4)] {
                shard.remove(&mut m, hash, &key, 6 * SEC, h, &mut out);
            }
            assert_eq!(shard.len(), 0);
            assert!(
                m.policy.victim(&|_| 0).is_none(),
                "{kind:?}: the policy still holds a removed slot"
            );
        }
    }

    /// A key whose hash changes between calls (a `Hash` that breaks its
    /// contract) must not leave the table mapping a freed slot: the slab
    /// would hand out an entry that is gone.
    #[test]
    fn a_fickle_hash_never_leaves_a_free_slot_mapped() {
        let (mut shard, mut m, mut out) = parts(PolicyKind::TinyLfu, 4, false);
        let calls = std::sync::atomic::AtomicU64::new(0);
        // Never the same hash twice.
        let fickle: Rehash<'_, u64> = &|k| {
            (k ^ calls.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
        };
        for k in 0..40u64 {
            shard.insert(
                &mut m,
                fickle(&k),
                k,
                k,
                1,
                u64::MAX,
                u64::MAX,
                fickle,
                &mut out,
            );
        }
        shard.clear(&mut m, fickle, &mut out);
        assert_eq!(shard.len(), 0);
        assert_eq!(shard.table.len(), 0, "the table still maps freed slots");
        let left = usize::from(out.first.is_some()) + out.rest.len();
        assert_eq!(left, 40, "every key left once, by eviction or clear");
    }

    /// A new epoch ends every quiet mark of the epochs before: a mark is a
    /// byte, and one left from 128 epochs back would read as quiet again.
    #[test]
    fn a_new_epoch_clears_every_quiet_mark() {
        // With a weigher the policy samples no keys for its window
        // simulation, so hot keys go quiet at an estimate of 3.
        let (mut shard, mut m, mut out) = parts(PolicyKind::TinyLfu, 16, true);
        let buf = ReadBuffer::default();
        let h: Rehash<'_, u64> = &|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut quiet_seen = false;
        for round in 0..2_000u64 {
            let k = 4 + round % 40;
            if shard.find(h(&k), &k).is_none() {
                shard.insert(&mut m, h(&k), k, k, 1, u64::MAX, u64::MAX, h, &mut out);
            }
            for hot in 0..4u64 {
                if shard.find(h(&hot), &hot).is_none() {
                    shard.insert(
                        &mut m,
                        h(&hot),
                        hot,
                        hot,
                        1,
                        u64::MAX,
                        u64::MAX,
                        h,
                        &mut out,
                    );
                }
                let slot = shard.find(h(&hot), &hot).expect("just inserted");
                if buf.is_quiet(shard.mark(slot)) {
                    quiet_seen = true;
                } else {
                    assert_eq!(buf.push(reads::hit(slot, h(&hot))), reads::Push::Done);
                }
            }
            shard.apply_reads(&mut m, &buf, None);
            let mark = ReadBuffer::quiet_mark(m.policy.epoch());
            for slot in 0..shard.marks.len() as u32 {
                let got = shard.mark(slot);
                assert!(
                    got == 0 || got == mark,
                    "round {round}: slot {slot} keeps mark {got} in epoch {}",
                    m.policy.epoch()
                );
            }
        }
        assert!(quiet_seen, "no read was ever quiet");
        assert!(m.policy.epoch() >= 2, "the sketch never aged");
    }

    /// A key whose `Hash` panics while the table grows for its insert
    /// leaves the shard as it was: no entry in the slab that the table,
    /// the policy and the length do not know of.
    #[test]
    fn a_hash_that_panics_while_the_table_grows_changes_nothing() {
        let (mut shard, mut m, mut out) = parts(PolicyKind::TinyLfu, 1_000, false);
        let calls = std::sync::atomic::AtomicU64::new(0);
        let panic_at = std::sync::atomic::AtomicU64::new(u64::MAX);
        let h: Rehash<'_, u64> = &|k| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            assert_ne!(n, panic_at.load(Ordering::Relaxed), "a Hash that panics");
            k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
        };
        let mut k = 0u64;
        while k == 0 || shard.table.len() < shard.table.capacity() {
            shard.insert(&mut m, h(&k), k, k, 1, u64::MAX, u64::MAX, h, &mut out);
            k += 1;
        }
        let held = shard.len();
        let hash = h(&k);
        // The next call of `h` is the table's, rehashing a key to grow.
        panic_at.store(calls.load(Ordering::Relaxed), Ordering::Relaxed);
        let insert = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            shard.insert(&mut m, hash, k, k, 1, u64::MAX, u64::MAX, h, &mut out);
        }));
        assert!(
            insert.is_err(),
            "the table did not grow: the test missed its point"
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            panic_at.load(Ordering::Relaxed) + 1,
            "the panic came from the table's first rehash"
        );
        panic_at.store(u64::MAX, Ordering::Relaxed);
        let live: u64 = shard.live.iter().map(|w| u64::from(w.count_ones())).sum();
        assert_eq!(
            (shard.len(), live, shard.table.len() as u64),
            (held, held, held)
        );
        shard.clear(&mut m, h, &mut out);
        assert_eq!(shard.len(), 0);
        assert!(
            m.policy.victim(&|_| 0).is_none(),
            "the policy still holds a slot"
        );
    }

    /// A slot is its key and its value, nothing more (the quiet mark is a
    /// byte in `marks`).
    #[test]
    fn a_slot_is_its_key_and_its_value() {
        assert_eq!(
            std::mem::size_of::<MaybeUninit<Node<u64, [u8; 64]>>>(),
            8 + 64
        );
    }
}
