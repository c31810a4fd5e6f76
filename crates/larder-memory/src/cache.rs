//! [`MemoryCache`], its builder, and the types it hands out.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use larder_core::{CacheStats, Error, ErrorKind, Result, SharedClock, SystemClock};
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockUpgradableReadGuard, RwLockWriteGuard};

use crate::flight::SingleFlight;
use crate::policy::{self, PolicyKind};
use crate::reads::{self, Push, ReadBuffer};
use crate::shard::{Maint, Removed, Shard};

/// Why an entry left the cache (given to the eviction listener).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemovalCause {
    /// Its time to live or time to idle passed.
    Expired,
    /// The policy chose it to stay within capacity (or it was heavier than
    /// the whole cache and was never stored).
    Evicted,
    /// An insert replaced its value (the listener gets the old value).
    Replaced,
    /// `remove` or `clear`.
    Removed,
}

/// Per-entry expiry, like moka's `Expiry`: each method returns how long the
/// entry may live from `now`, or `None` for no limit from this hook. The
/// cache-wide time to live and time to idle still apply; the earliest wins.
pub trait Expiry<K, V>: Send + Sync + 'static {
    /// For a new entry.
    fn expire_after_create(&self, key: &K, value: &V, now: Instant) -> Option<Duration>;

    /// When a value is replaced; `current` is what was left of the old
    /// value's lifetime (see [`Expiry::expire_after_read`]). Default: a
    /// fresh [`Expiry::expire_after_create`].
    fn expire_after_update(
        &self,
        key: &K,
        value: &V,
        now: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        let _ = current;
        self.expire_after_create(key, value, now)
    }

    /// On a read; `current` is what is left of the entry's lifetime: the
    /// earliest of the time to live, an explicit TTL and this hook's
    /// earlier answers, `None` if none applies. The time to idle is not
    /// part of it (every read resets it apart). An answer can bring the
    /// end closer, never past what the last write set. Default: unchanged.
    fn expire_after_read(
        &self,
        key: &K,
        value: &V,
        now: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        let _ = (key, value, now);
        current
    }
}

type Weigher<K, V> = dyn Fn(&K, &V) -> u32 + Send + Sync;
type Listener<K, V> = dyn Fn(K, V, RemovalCause) + Send + Sync;

/// The settings a cache was built with ([`MemoryCache::policy`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// The eviction policy.
    pub kind: PolicyKind,
    /// Capacity: entries, or total weight with a weigher.
    pub capacity: u64,
    /// Whether capacity counts weight (a weigher is set).
    pub weighted: bool,
    /// Cache-wide time to live.
    pub time_to_live: Option<Duration>,
    /// Cache-wide time to idle.
    pub time_to_idle: Option<Duration>,
    /// Number of shards (each holds its share of the capacity).
    pub shards: usize,
    /// W-TinyLFU only: the current window capacity summed over shards
    /// (it follows the cache's window simulation, or climbs a hill with a
    /// weigher).
    pub window_capacity: Option<u64>,
}

/// A value alone on its cache lines (no false sharing between shards).
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A shard, its read ring and its upkeep. What every read touches (the
/// epoch's quiet mark and ring head, the lock word, the shard's table and slab) shares
/// the cell's first 128 bytes.
#[repr(C)]
struct ShardCell<K, V> {
    reads: ReadBuffer,
    lock: RwLock<Shard<K, V>>,
    /// The policy, wheel and statistics; taken after `lock` (see `Maint`).
    maint: Mutex<Maint>,
}

/// A shard locked for a write: the shard and its upkeep, with the read
/// ring applied.
struct Write<'a, K, V> {
    shard: RwLockWriteGuard<'a, Shard<K, V>>,
    m: MutexGuard<'a, Maint>,
}

pub(crate) struct Inner<K, V, S> {
    shards: Box<[Padded<ShardCell<K, V>>]>,
    /// Shards minus one (their count is a power of two).
    shard_mask: usize,
    hasher: S,
    clock: SharedClock,
    origin: Instant,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    expiry: Option<Box<dyn Expiry<K, V>>>,
    /// Set once any entry can expire: until then reads skip the clock.
    timed: AtomicBool,
    /// Reads move deadlines (time to idle, or an expiry hook).
    touch_on_read: bool,
    weigher: Option<Box<Weigher<K, V>>>,
    listener: Option<Box<Listener<K, V>>>,
    kind: PolicyKind,
    capacity: u64,
    pub(crate) flights: SingleFlight<K, Result<V>>,
}

/// A concurrent, strictly bounded in-process cache. Cheap to clone (shared).
///
/// ```
/// use larder_memory::MemoryCache;
///
/// let cache: MemoryCache<u64, String> = MemoryCache::builder(10_000).build();
/// cache.insert(1, "one".to_string());
/// assert_eq!(cache.get(&1).as_deref(), Some("one"));
/// assert_eq!(cache.entry_count(), 1);
/// ```
pub struct MemoryCache<K, V, S = hashbrown::DefaultHashBuilder> {
    pub(crate) inner: Arc<Inner<K, V, S>>,
}

impl<K, V, S> Clone for MemoryCache<K, V, S> {
    fn clone(&self) -> Self {
        MemoryCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, S> fmt::Debug for MemoryCache<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("policy", &self.inner.kind)
            .field("capacity", &self.inner.capacity)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// Builder of a [`MemoryCache`]: `MemoryCache::builder(capacity)`.
#[must_use]
pub struct Builder<K, V, S = hashbrown::DefaultHashBuilder> {
    hasher: S,
    capacity: u64,
    kind: PolicyKind,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    expiry: Option<Box<dyn Expiry<K, V>>>,
    weigher: Option<Box<Weigher<K, V>>>,
    listener: Option<Box<Listener<K, V>>>,
    clock: Option<SharedClock>,
    shards: Option<usize>,
}

impl<K, V, S> fmt::Debug for Builder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("capacity", &self.capacity)
            .field("policy", &self.kind)
            .finish()
    }
}

impl<K, V> MemoryCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder for a cache of `capacity` entries (or total weight, with
    /// [`Builder::weigher`]).
    pub fn builder(capacity: u64) -> Builder<K, V> {
        Builder {
            hasher: hashbrown::DefaultHashBuilder::default(),
            capacity,
            kind: PolicyKind::default(),
            ttl: None,
            tti: None,
            expiry: None,
            weigher: None,
            listener: None,
            clock: None,
            shards: None,
        }
    }

    /// A cache of `capacity` entries with the default policy.
    pub fn new(capacity: u64) -> Self {
        Self::builder(capacity).build()
    }
}

impl<K, V, S> Builder<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    /// The hasher of keys (default: foldhash, randomly seeded per process).
    /// A fixed hasher makes runs reproducible (the simulator uses one).
    pub fn hasher<S2: BuildHasher>(self, hasher: S2) -> Builder<K, V, S2> {
        Builder {
            hasher,
            capacity: self.capacity,
            kind: self.kind,
            ttl: self.ttl,
            tti: self.tti,
            expiry: self.expiry,
            weigher: self.weigher,
            listener: self.listener,
            clock: self.clock,
            shards: self.shards,
        }
    }

    /// The eviction policy (default [`PolicyKind::TinyLfu`]).
    pub fn policy(mut self, kind: PolicyKind) -> Self {
        self.kind = kind;
        self
    }

    /// Every entry expires this long after it was inserted or replaced.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Every entry expires this long after it was last read or written.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.tti = Some(tti);
        self
    }

    /// A per-entry expiry hook.
    pub fn expiry(mut self, expiry: impl Expiry<K, V>) -> Self {
        self.expiry = Some(Box::new(expiry));
        self
    }

    /// Capacity counts `weigher(key, value)` per entry instead of 1.
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// Called for every entry that leaves the cache, with the cause, after
    /// the cache's internal locks are released (it may use the cache).
    pub fn eviction_listener(
        mut self,
        listener: impl Fn(K, V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// The clock (default: the system clock). Tests use `MockClock`.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Number of shards, rounded up to a power of two and capped so each
    /// holds at least one unit of capacity (and at 65,536). The default is
    /// four per core, rounded up to a power of two, but never so many that
    /// a shard holds fewer than 256 entries (units of capacity); 1 gives
    /// exact global policy order (the simulator uses it).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Builds the cache. A zero capacity makes a cache that stores nothing;
    /// `u64::MAX` one that never evicts (it allocates nothing for its
    /// capacity: per-entry structures grow with the entries held).
    pub fn build(self) -> MemoryCache<K, V, S> {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Clamp before rounding to powers of two: a capacity of u64::MAX
        // must not overflow.
        let units = |c: u64| c.clamp(1, MAX_SHARDS as u64) as usize;
        // The capacity's share rounds down: every default shard holds at
        // least `MIN_AUTO_SHARD` units.
        let floor_pow2 = |n: usize| 1usize << n.ilog2();
        let auto = (cores * 4)
            .next_power_of_two()
            .min(floor_pow2(units(self.capacity / MIN_AUTO_SHARD)));
        let wanted = self
            .shards
            .unwrap_or(auto)
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        let mut n = wanted.min(units(self.capacity).next_power_of_two());
        while n > 1 && (n as u64) > self.capacity {
            n /= 2;
        }
        let clock = self.clock.unwrap_or_else(SystemClock::shared);
        let origin = clock.now();
        let weighted = self.weigher.is_some();
        let sim = policy::simulation(self.kind, self.capacity, weighted);
        let shards: Vec<_> = (0..n as u64)
            .map(|i| {
                let cap = self.capacity / n as u64 + u64::from(i < self.capacity % n as u64);
                let policy = policy::make(self.kind, cap, weighted, sim.as_ref());
                Padded(ShardCell {
                    reads: ReadBuffer::default(),
                    lock: RwLock::new(Shard::new(cap, weighted)),
                    maint: Mutex::new(Maint::new(policy)),
                })
            })
            .collect();
        let timed = self.ttl.is_some() || self.tti.is_some() || self.expiry.is_some();
        let touch_on_read = self.tti.is_some() || self.expiry.is_some();
        MemoryCache {
            inner: Arc::new(Inner {
                shards: shards.into_boxed_slice(),
                shard_mask: n - 1,
                hasher: self.hasher,
                clock,
                origin,
                ttl: self.ttl,
                tti: self.tti,
                expiry: self.expiry,
                timed: AtomicBool::new(timed),
                touch_on_read,
                weigher: self.weigher,
                listener: self.listener,
                kind: self.kind,
                capacity: self.capacity,
                flights: SingleFlight::with_shards(n),
            }),
        }
    }
}

/// The least capacity of a shard that the default shard count makes.
const MIN_AUTO_SHARD: u64 = 256;

/// The most shards a cache has.
const MAX_SHARDS: usize = 1 << 16;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What is left at `now` until `deadline` (`None`: no deadline).
fn left(deadline: u64, now: u64) -> Option<Duration> {
    (deadline != u64::MAX).then(|| Duration::from_nanos(deadline.saturating_sub(now)))
}

impl<K, V, S> MemoryCache<K, V, S>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    #[inline]
    pub(crate) fn hash<Q: Hash + ?Sized>(&self, key: &Q) -> u64 {
        // The same value everywhere (table, sketch, read events); odd,
        // which also picks the keys the window simulation samples.
        self.inner.hasher.hash_one(key) | 1
    }

    /// Bits 32 and up of a multiplicative mix pick the shard (at most
    /// 2^16 shards), without a branch for the single shard; the table
    /// inside the shard uses the hash's own low and top bits.
    #[inline]
    pub(crate) fn shard_index(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.inner.shard_mask
    }

    #[inline]
    fn shard(&self, hash: u64) -> &ShardCell<K, V> {
        &self.inner.shards[self.shard_index(hash)].0
    }

    /// The shard, locked exclusively, with its read buffer applied. The
    /// ring is applied first under an upgradable (shared) lock, so reads of
    /// the shard go on meanwhile; the few events recorded before the
    /// upgrade are applied under the exclusive lock. The upkeep lock is
    /// let go before the upgrade, which waits for the shard's readers: a
    /// scrape (`stats`, `policy`) takes only the upkeep lock and must not
    /// wait for a reader, which may be user code (a hook, a `Clone`) that
    /// itself asks for the statistics.
    fn write<'a>(&self, cell: &'a ShardCell<K, V>) -> Write<'a, K, V> {
        let shared = cell.lock.upgradable_read();
        shared.apply_reads(&mut cell.maint.lock(), &cell.reads, None);
        let shard = RwLockUpgradableReadGuard::upgrade(shared);
        let mut m = cell.maint.lock();
        shard.apply_reads(&mut m, &cell.reads, None);
        Write { shard, m }
    }

    /// Hands a read's event to the policy through the shard's ring. The
    /// shard is held shared: applying the ring takes only the upkeep lock,
    /// so other reads of the shard go on meanwhile.
    #[inline]
    fn record(&self, cell: &ShardCell<K, V>, shard: &Shard<K, V>, ev: u64) {
        match cell.reads.push(ev) {
            Push::Done => {}
            full => Self::apply_ring(cell, shard, full, ev),
        }
    }

    /// The ring is full: apply it if the upkeep lock is free. Out of line
    /// (once in 64 reported hits), so the hit path saves fewer registers.
    #[cold]
    #[inline(never)]
    fn apply_ring(cell: &ShardCell<K, V>, shard: &Shard<K, V>, push: Push, ev: u64) {
        let extra = (push == Push::Rejected).then_some(ev);
        match cell.maint.try_lock() {
            Some(mut m) => shard.apply_reads(&mut m, &cell.reads, extra),
            None if extra.is_some() => {
                cell.reads.lost_hits.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
    }

    /// Nanoseconds since the cache was built; 0 when nothing can expire
    /// (reads then never touch the clock).
    #[inline]
    fn now(&self) -> u64 {
        if self.inner.timed.load(Ordering::Relaxed) {
            nanos(
                self.inner
                    .clock
                    .now()
                    .saturating_duration_since(self.inner.origin),
            )
        } else {
            0
        }
    }

    fn deadline(&self, now: u64, after: Option<Duration>) -> u64 {
        after.map_or(u64::MAX, |d| now.saturating_add(nanos(d)).max(now + 1))
    }

    fn instant(&self, now: u64) -> Instant {
        self.inner.origin + Duration::from_nanos(now)
    }

    /// For a new or replaced value: the hard deadline (the earliest of the
    /// time to live, an explicit TTL and the hook) and the effective one
    /// (also bounded by the time to idle).
    /// `replacing`: the hard deadline of the live value being replaced.
    fn write_deadline(
        &self,
        key: &K,
        value: &V,
        now: u64,
        explicit: Option<Duration>,
        replacing: Option<u64>,
    ) -> (u64, u64) {
        let mut after: Option<Duration> = explicit;
        let mut min = |d: Option<Duration>| {
            if let Some(d) = d {
                after = Some(after.map_or(d, |a| a.min(d)));
            }
        };
        min(self.inner.ttl);
        if let Some(e) = &self.inner.expiry {
            let at = self.instant(now);
            min(match replacing {
                Some(hard) => e.expire_after_update(key, value, at, left(hard, now)),
                None => e.expire_after_create(key, value, at),
            });
        }
        let hard = self.deadline(now, after);
        let idle = self.deadline(now, self.inner.tti);
        (hard, hard.min(idle))
    }

    fn notify(&self, removed: Removed<K, V>) {
        if let Some(l) = &self.inner.listener {
            for (k, v, cause) in removed {
                l(k, v, cause);
            }
        }
    }

    /// The value for `key`, if present and not expired. A hit updates the
    /// policy (recency, frequency) and, with time to idle, the expiry.
    ///
    /// A read holds its shard's lock shared: reads of one shard run in
    /// parallel, and what the policy learns from them is buffered
    /// (see `docs/ARCHITECTURE.md`).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let cell = self.shard(hash);
        let now = self.now();
        let shard = cell.lock.read();
        let Some((slot, node)) = shard.lookup(hash, key) else {
            cell.reads.count_miss();
            return None;
        };
        if now != 0 && shard.expires_at(slot) <= now {
            cell.reads.count_miss();
            drop(shard);
            self.remove_expired(cell, hash, key, now);
            return None;
        }
        // Not under `now != 0`: a timed cache reads 0 until its clock
        // moves, and a read then still moves the deadlines.
        if self.inner.touch_on_read {
            self.touch(&shard, slot, &node.key, &node.value, now);
        }
        if cell.reads.is_quiet(shard.mark(slot)) {
            cell.reads.count_quiet_hit();
        } else {
            self.record(cell, &shard, reads::hit(slot, hash));
        }
        // Cloned straight into the caller's slot, the shard still held.
        Some(node.value.clone())
    }

    /// A read found `key` expired: the entry goes now.
    #[cold]
    #[inline(never)]
    fn remove_expired<Q>(&self, cell: &ShardCell<K, V>, hash: u64, key: &Q, now: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut removed = Removed::new();
        {
            let mut w = self.write(cell);
            let rehash = |k: &K| self.hash(k);
            w.shard
                .remove_expired(&mut w.m, hash, key, now, &rehash, &mut removed);
        }
        self.notify(removed);
    }

    /// A read moves `slot`'s deadlines: time to idle, and the expiry hook,
    /// told what is left. Out of line: most caches never touch on reads,
    /// and the hit path stays small.
    #[inline(never)]
    fn touch(&self, shard: &Shard<K, V>, slot: u32, key: &K, value: &V, now: u64) {
        let mut hard = shard.hard_deadline(slot);
        if let Some(e) = &self.inner.expiry {
            let current = left(hard, now);
            if let Some(d) = e.expire_after_read(key, value, self.instant(now), current) {
                hard = hard.min(self.deadline(now, Some(d)));
            }
        }
        shard.touch(slot, hard, self.deadline(now, self.inner.tti));
    }

    /// Whether `key` holds a live value; does not count as a read.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let now = self.now();
        self.shard(hash).lock.read().peek(hash, key, now).is_some()
    }

    /// The live value for `key` without counting a read or touching recency.
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let now = self.now();
        self.shard(hash).lock.read().peek(hash, key, now).cloned()
    }

    /// Inserts or replaces. If the cache is full, the policy evicts (which
    /// may be this very entry, if W-TinyLFU judges it less valuable than
    /// what it would displace).
    pub fn insert(&self, key: K, value: V) {
        self.insert_inner(key, value, None);
    }

    /// Inserts with a time to live of its own (the cache-wide limits still
    /// apply; the earliest wins).
    pub fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) {
        self.inner.timed.store(true, Ordering::Relaxed);
        self.insert_inner(key, value, Some(ttl));
    }

    fn insert_inner(&self, key: K, value: V, ttl: Option<Duration>) {
        let hash = self.hash(&key);
        let weight = self
            .inner
            .weigher
            .as_ref()
            .map_or(1, |w| u64::from(w(&key, &value)));
        let now = self.now();
        let mut removed = Removed::new();
        {
            let cell = self.shard(hash);
            let mut w = self.write(cell);
            // Only the expiry hook tells a create from an update: look only then.
            let replacing = if self.inner.expiry.is_some() {
                w.shard.live_hard_deadline(hash, &key, now)
            } else {
                None
            };
            let (hard, deadline) = self.write_deadline(&key, &value, now, ttl, replacing);
            let rehash = |k: &K| self.hash(k);
            if self.inner.timed.load(Ordering::Relaxed) {
                w.shard.expire(&mut w.m, now, &rehash, &mut removed);
                // The wheel reaps in ~1 s ticks: the key's own entry may be
                // past its deadline and still held; it expired, it is not replaced.
                w.shard
                    .remove_expired(&mut w.m, hash, &key, now, &rehash, &mut removed);
            }
            w.shard.insert(
                &mut w.m,
                hash,
                key,
                value,
                weight,
                hard,
                deadline,
                &rehash,
                &mut removed,
            );
            // The insert may have aged the sketch: publish the new epoch now.
            w.shard.publish_epoch(&mut w.m, &cell.reads);
        }
        if !removed.is_empty() {
            self.notify(removed);
        }
    }

    /// Removes `key`; its value if it was present and not expired.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hash(key);
        let now = self.now();
        let mut removed = Removed::new();
        let gone = {
            let mut w = self.write(self.shard(hash));
            w.shard
                .remove(&mut w.m, hash, key, now, &|k| self.hash(k), &mut removed)
        };
        if !gone {
            // Nothing, or an expired entry (its listener hears `Expired`).
            self.notify(removed);
            return None;
        }
        if self.inner.listener.is_none() {
            return removed.into_first_value();
        }
        let value = removed.first_value().cloned();
        self.notify(removed);
        value
    }

    /// Removes every entry (the listener hears [`RemovalCause::Removed`]).
    pub fn clear(&self) {
        for s in self.inner.shards.iter() {
            let mut removed = Removed::new();
            {
                let mut w = self.write(&s.0);
                w.shard.clear(&mut w.m, &|k| self.hash(k), &mut removed);
            }
            self.notify(removed);
        }
    }

    /// Expires what is due, in every shard, as far as the timer wheel has
    /// passed: it works in ticks of 2^30 ns (about 1.07 s), so an entry due
    /// within the current tick may stay (counted by `entry_count`) until the
    /// clock enters the next one; reads never return it. Inserts already do this
    /// for their shard, so calling it is optional: it frees memory and fires
    /// listeners sooner for caches that are read much more than written.
    pub fn run_pending_tasks(&self) {
        if !self.inner.timed.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now();
        for s in self.inner.shards.iter() {
            let mut removed = Removed::new();
            {
                let mut w = self.write(&s.0);
                w.shard
                    .expire(&mut w.m, now, &|k| self.hash(k), &mut removed);
            }
            self.notify(removed);
        }
    }

    /// Entries stored (expired entries not yet cleaned up included).
    pub fn entry_count(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock.read().len())
            .sum()
    }

    /// Total weight stored (equals `entry_count` without a weigher).
    pub fn weighted_size(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock.read().weight())
            .sum()
    }

    /// Live entries, cloned, one shard at a time (a snapshot per shard, not
    /// of the whole cache at one instant).
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_
    where
        K: Clone,
    {
        let now = self.now();
        self.inner
            .shards
            .iter()
            .flat_map(move |s| s.0.lock.read().snapshot(now))
    }

    /// The settings the cache runs with. Takes no shard's lock: readers
    /// never wait for it.
    pub fn policy(&self) -> PolicyInfo {
        let window: Option<u64> = self
            .inner
            .shards
            .iter()
            .map(|s| s.0.maint.lock().window_capacity())
            .sum();
        PolicyInfo {
            kind: self.inner.kind,
            capacity: self.inner.capacity,
            weighted: self.inner.weigher.is_some(),
            time_to_live: self.inner.ttl,
            time_to_idle: self.inner.tti,
            shards: self.inner.shards.len(),
            window_capacity: window,
        }
    }

    /// Hits, misses, inserts, evictions by cause and admission rejections.
    ///
    /// Takes each shard's upkeep lock in turn, never a shard's lock: a
    /// metrics scrape never stalls readers (a writer of the shard waits for
    /// it briefly). Reads in flight meanwhile may be counted or not; once
    /// they return, every one is.
    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats::default();
        for shard in self.inner.shards.iter() {
            let st = shard.0.maint.lock().stats_with(&shard.0.reads);
            s.hits += st.hits;
            s.misses += st.misses;
            s.inserts += st.inserts;
            s.evicted_size += st.evicted;
            s.expired += st.expired;
            s.replaced += st.replaced;
            s.removed += st.removed;
            s.admission_rejected += st.rejected;
        }
        s
    }

    /// The value for `key`, or `init()`'s, computed once however many threads
    /// ask at the same time (single flight). If `init` panics, the panic
    /// reaches this caller and the threads waiting on it get an
    /// [`ErrorKind::SourcePanicked`] error from
    /// [`MemoryCache::get_or_try_insert_with`]; the plain variant re-panics.
    pub fn get_or_insert_with(&self, key: K, init: impl FnOnce() -> V) -> V
    where
        K: Clone,
    {
        match self.get_or_try_insert_with(key, || Ok(init())) {
            Ok(v) => v,
            Err(e) => panic!("get_or_insert_with: {e}"),
        }
    }

    /// As [`MemoryCache::get_or_insert_with`] with a fallible `init`: an
    /// error is returned to the caller and every waiter, and nothing is cached.
    pub fn get_or_try_insert_with(&self, key: K, init: impl FnOnce() -> Result<V>) -> Result<V>
    where
        K: Clone,
    {
        crate::flight::get_or_try_insert_with(self, key, init)
    }

    /// How many callers are waiting on the running initialiser of `key`
    /// (0 when none runs): the callers that single flight spared a load.
    pub fn flight_waiters(&self, key: &K) -> usize {
        self.inner.flights.waiters(key)
    }

    /// The async single flight: the caller whose future runs `init` is the
    /// leader; others wait without blocking a thread. A leader future that
    /// is dropped (cancelled) hands the work to a waiter: nobody is left
    /// waiting for a load that no one is running. Runtime-agnostic.
    pub async fn get_or_try_insert_with_async<F, Fut>(&self, key: K, init: F) -> Result<V>
    where
        K: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V>>,
    {
        crate::flight::get_or_try_insert_with_async(self, key, init).await
    }

    /// The infallible async variant.
    pub async fn get_or_insert_with_async<F, Fut>(&self, key: K, init: F) -> V
    where
        K: Clone,
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        match self
            .get_or_try_insert_with_async(key, || async { Ok(init().await) })
            .await
        {
            Ok(v) => v,
            Err(e) => panic!("get_or_insert_with_async: {e}"),
        }
    }
}

/// An error for a waiter whose leader panicked.
pub(crate) fn panicked() -> Error {
    Error::new(
        ErrorKind::SourcePanicked,
        "the initialiser of this entry panicked",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<K, V, S> MemoryCache<K, V, S> {
        /// Bytes the policies of all shards hold on the heap.
        fn policy_heap_bytes(&self) -> usize {
            self.inner
                .shards
                .iter()
                .map(|s| s.0.maint.lock().policy_heap_bytes())
                .sum()
        }
    }

    /// Parks the read of key 7 in the expiry hook, holding the shard's read
    /// lock, until released.
    struct Park {
        entered: std::sync::mpsc::SyncSender<()>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Expiry<u64, u64> for Park {
        fn expire_after_create(&self, _k: &u64, _v: &u64, _now: Instant) -> Option<Duration> {
            None
        }
        fn expire_after_read(
            &self,
            k: &u64,
            _v: &u64,
            _now: Instant,
            current: Option<Duration>,
        ) -> Option<Duration> {
            if *k == 7 {
                let _ = self.entered.send(());
                let _ = self.release.lock().recv();
            }
            current
        }
    }

    #[test]
    fn an_insert_that_ages_the_sketch_publishes_the_new_epoch() {
        // Inserts only, no reads: the sketch ages during an insert, and the
        // read ring must know at once (its mark decides which reads the
        // policy sees).
        let cache: MemoryCache<u64, u64> = MemoryCache::builder(16).shards(1).build();
        let cell = &cache.inner.shards[0].0;
        let mut aged = 0;
        for k in 0..2_000u64 {
            cache.insert(k, k);
            let epoch = cell.maint.lock().epoch();
            assert!(
                cell.reads.is_quiet(ReadBuffer::quiet_mark(epoch)),
                "insert {k}: the ring still publishes an older epoch than {epoch}"
            );
            aged = epoch;
        }
        assert!(aged >= 2, "the sketch never aged");
    }

    /// The default shard count gives every shard at least
    /// `MIN_AUTO_SHARD` entries: a shard's policy needs room to tell the
    /// frequent from the new. Red when the capacity's share was rounded up
    /// to a power of two (768 entries made 4 shards of 192).
    #[test]
    fn default_shards_hold_at_least_the_least_share() {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let most = (cores * 4).next_power_of_two();
        for capacity in [
            1,
            255,
            256,
            511,
            512,
            768,
            1_000,
            1_023,
            2_000,
            5_000,
            1 << 20,
        ] {
            let cache: MemoryCache<u64, u64> = MemoryCache::builder(capacity).build();
            let shards = cache.policy().shards;
            assert!(shards.is_power_of_two(), "{capacity}: {shards} shards");
            assert!(
                shards == 1 || capacity / shards as u64 >= MIN_AUTO_SHARD,
                "{capacity}: {shards} shards of {}",
                capacity / shards as u64
            );
            // As many as the rule allows: twice as many would break it.
            let allowed = (capacity / MIN_AUTO_SHARD).max(1);
            assert!(
                shards == most || 2 * shards as u64 > allowed,
                "{capacity}: only {shards} shards"
            );
        }
    }

    /// A write waiting for a reader to leave the shard holds nothing a
    /// scrape needs: `stats()` returns while a reader is parked (in user
    /// code) and a writer waits behind it. Red when the writer kept the
    /// upkeep lock across the upgrade: the scrape waited for the reader.
    #[test]
    fn a_scrape_does_not_wait_for_a_writer_that_waits_for_a_reader() {
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        let (release, release_rx) = std::sync::mpsc::sync_channel(1);
        let cache: MemoryCache<u64, u64> = MemoryCache::builder(100)
            .shards(1)
            .expiry(Park {
                entered: entered_tx,
                release: Mutex::new(release_rx),
            })
            .build();
        cache.insert(7, 7);
        let cache = &cache;
        std::thread::scope(|s| {
            let reader = s.spawn(|| cache.get(&7));
            entered.recv().expect("the reader is parked in the hook");
            let writer = s.spawn(|| cache.insert(8, 8));
            // The gate: the writer holds the shard's upgradable lock (it
            // then applies the ring and waits to upgrade). Bounded.
            let shard = &cache.inner.shards[0].0;
            let mut spins = 0u32;
            while shard.lock.try_upgradable_read().is_some() {
                assert!(spins < 10_000_000, "the writer never took the shard");
                spins += 1;
                std::thread::yield_now();
            }
            let (done_tx, done) = std::sync::mpsc::channel();
            let scraper = s.spawn(move || {
                let st = cache.stats();
                let _ = done_tx.send(st.inserts);
            });
            let scraped = done.recv_timeout(Duration::from_secs(10));
            // Let everyone finish before judging, so a failure ends.
            let _ = release.send(());
            assert_eq!(reader.join().unwrap(), Some(7));
            writer.join().unwrap();
            scraper.join().unwrap();
            assert_eq!(scraped, Ok(1), "the scrape waited for the parked reader");
        });
        assert_eq!(cache.stats().inserts, 2);
    }

    /// An insert over an entry past its deadline that the wheel has not
    /// reaped yet (it works in ~1.07 s ticks) reports it `Expired`, not
    /// `Replaced` (found by the `l1_model` fuzz target).
    #[test]
    fn an_insert_over_an_expired_entry_reports_it_expired() {
        let clock = larder_core::MockClock::new();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&heard);
        let cache: MemoryCache<u8, u64> = MemoryCache::builder(4)
            .time_to_live(Duration::from_millis(50))
            .clock(clock.shared())
            .eviction_listener(move |k, v, cause| log.lock().push((k, v, cause)))
            .build();
        cache.insert(1, 10);
        clock.advance(Duration::from_millis(100));
        cache.insert(1, 11);
        assert_eq!(*heard.lock(), [(1, 10, RemovalCause::Expired)]);
        let stats = cache.stats();
        assert_eq!((stats.expired, stats.replaced), (1, 0), "{stats:?}");
        assert_eq!(cache.get(&1), Some(11));
    }

    /// A byte budget is a weight, not an entry count: the sketch and the
    /// per-entry arrays follow the entries held (1,000 values of 100
    /// bytes in a 64 MiB budget), for every policy.
    #[test]
    fn a_byte_budget_sizes_policies_by_entries_held() {
        for kind in [
            PolicyKind::TinyLfu,
            PolicyKind::Lru,
            PolicyKind::Lfu,
            PolicyKind::Ttl,
        ] {
            let cache: MemoryCache<u64, Vec<u8>> = MemoryCache::builder(64 << 20)
                .policy(kind)
                .weigher(|_, v: &Vec<u8>| v.len() as u32)
                .build();
            for k in 0..1_000 {
                cache.insert(k, vec![0; 100]);
            }
            assert_eq!(cache.entry_count(), 1_000);
            let bytes = cache.policy_heap_bytes();
            assert!(
                bytes <= 1_000 * 128 + cache.inner.shards.len() * 1_024,
                "{kind:?}: {bytes} bytes of policy for 1,000 entries"
            );
        }
    }

    /// A 1 TiB budget (today: a 1 TiB sketch, and an abort on allocation).
    #[test]
    fn a_tebibyte_budget_allocates_nothing_per_unit_of_weight() {
        let cache: MemoryCache<u64, Vec<u8>> = MemoryCache::builder(1 << 40)
            .weigher(|_, v: &Vec<u8>| v.len() as u32)
            .build();
        for k in 0..100 {
            cache.insert(k, vec![0; 1_000]);
        }
        assert_eq!(cache.weighted_size(), 100_000);
        assert!(cache.policy_heap_bytes() < 64 << 10);
    }
}
