//! [`Cache`]: the multi-level cache and its public operations. The read
//! path's steps live in `read.rs`, the in-flight loads in `load.rs`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use larder_core::{Codec, Compression, Error, ErrorKind, Postcard, Result, SharedClock, Store};
use larder_memory::{MemoryCache, SingleFlight};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::builder::CacheBuilder;
use crate::entry::Entry;
use crate::hot::HotKeys;
use crate::key::CacheKey;
use crate::source::{DynLoader, DynWriter};
use crate::stats::{Recorders, Stats};
use crate::ttl::TtlPolicy;
use crate::writer::Queue;

/// The settings `build()` checked.
pub(crate) struct Config<C> {
    pub(crate) codec: C,
    pub(crate) compression: Compression,
    pub(crate) ttl: TtlPolicy,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) beta: f64,
    pub(crate) load_timeout: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) tombstone: Duration,
    pub(crate) memory_ttl_cap: Option<Duration>,
    /// The longest the L1 keeps a value the L2 did not confirm (with
    /// coherence only).
    pub(crate) unconfirmed_ttl: Option<Duration>,
    /// Encoded values above this size stay out of the L2.
    pub(crate) max_value_bytes: Option<usize>,
    pub(crate) lease: Option<LeaseConfig>,
    /// Hot keys are refreshed when this little fresh time is left (`None`:
    /// a tenth of each value's own fresh time).
    pub(crate) hot_ahead: Option<Duration>,
}

/// Cross-process single flight: how long a load lease lasts, and how often
/// a process that lost the lease looks for the winner's value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseConfig {
    pub(crate) ttl: Duration,
    pub(crate) poll: Duration,
}

/// What a flight hands its waiters.
pub(crate) type Outcome<V> = Result<Arc<Entry<V>>>;

pub(crate) struct Inner<K, V, C> {
    pub(crate) l1: Option<MemoryCache<K, Entry<V>>>,
    pub(crate) l2: Option<Arc<dyn Store>>,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<larder_redis::RedisStore>,
    /// Coherence across instances (`redis` feature), when on.
    #[cfg(feature = "redis")]
    pub(crate) coherence: Option<crate::coherence::Coherence>,
    pub(crate) loader: Option<Box<dyn DynLoader<K, V>>>,
    pub(crate) writer: Option<Arc<dyn DynWriter<K, V>>>,
    pub(crate) queue: Option<Arc<Queue<K, V>>>,
    pub(crate) flights: SingleFlight<K, Outcome<V>>,
    pub(crate) hot: Option<HotKeys<K>>,
    pub(crate) cfg: Config<C>,
    pub(crate) clock: SharedClock,
    pub(crate) stats: Recorders,
    /// Per key stripe, bumped by every invalidation of a key in it: a
    /// promotion from L2 that raced one is undone (see `Inner::promote`).
    pub(crate) epochs: Box<[AtomicU64]>,
    /// Per key stripe: `put` and `put_behind` of one key write the source
    /// and the cache in the same order.
    pub(crate) write_locks: Box<[Arc<tokio::sync::Mutex<()>>]>,
    stripes: std::collections::hash_map::RandomState,
    pub(crate) closed: AtomicBool,
    /// Background work (loads, refreshes); `None` once closed.
    tasks: Mutex<Option<JoinSet<()>>>,
    rng: Option<Mutex<fastrand::Rng>>,
}

impl<K, V, C> Inner<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        l1: Option<MemoryCache<K, Entry<V>>>,
        l2: Option<Arc<dyn Store>>,
        #[cfg(feature = "redis")] redis: Option<larder_redis::RedisStore>,
        #[cfg(feature = "redis")] coherence: Option<crate::coherence::Coherence>,
        loader: Option<Box<dyn DynLoader<K, V>>>,
        writer: Option<Arc<dyn DynWriter<K, V>>>,
        queue: Option<Arc<Queue<K, V>>>,
        cfg: Config<C>,
        clock: SharedClock,
        seed: Option<u64>,
        hot_keys: Option<usize>,
    ) -> Self {
        Inner {
            l1,
            l2,
            #[cfg(feature = "redis")]
            redis,
            #[cfg(feature = "redis")]
            coherence,
            loader,
            writer,
            queue,
            flights: SingleFlight::new(),
            hot: hot_keys.map(HotKeys::new),
            cfg,
            clock,
            stats: Recorders::default(),
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            write_locks: (0..STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            stripes: std::collections::hash_map::RandomState::new(),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Some(JoinSet::new())),
            rng: seed.map(|s| Mutex::new(fastrand::Rng::with_seed(s))),
        }
    }

    /// Empties the L1: running loads will not publish, promotions that
    /// raced are undone.
    pub(crate) fn clear_l1(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::SeqCst);
        }
        self.flights.forget_all();
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }

    /// Tells the other instances that `keys` changed (coherence in pub/sub
    /// mode; tracking needs nothing).
    pub(crate) async fn announce(&self, keys: &[String]) {
        #[cfg(feature = "redis")]
        if let Some(co) = &self.coherence {
            co.announce(keys).await;
        }
        #[cfg(not(feature = "redis"))]
        let _ = keys;
    }
}

/// Stripes of the per-key epochs and write locks.
const STRIPES: usize = 256;

impl<K: std::hash::Hash, V, C> Inner<K, V, C> {
    /// The stripe of `key` (epochs, write locks).
    pub(crate) fn stripe(&self, key: &K) -> usize {
        use std::hash::BuildHasher;
        (self.stripes.hash_one(key) as usize) & (STRIPES - 1)
    }

    /// The invalidation epoch of `key`'s stripe.
    pub(crate) fn epoch(&self, key: &K) -> u64 {
        self.epochs[self.stripe(key)].load(Ordering::SeqCst)
    }
}

impl<K, V, C> Inner<K, V, C> {
    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.unix_millis()
    }

    /// A uniform draw in `[0, 1)`.
    pub(crate) fn draw(&self) -> f64 {
        match &self.rng {
            Some(r) => r.lock().f64(),
            None => fastrand::f64(),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::new(ErrorKind::Closed, "the cache was closed"));
        }
        Ok(())
    }

    /// Runs `fut` in the background, owned by the cache (`close` waits for it).
    pub(crate) fn spawn(
        &self,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        let mut g = self.tasks.lock();
        let Some(set) = g.as_mut() else {
            return Err(Error::new(ErrorKind::Closed, "the cache was closed"));
        };
        // Reap what finished, so the set holds only running work.
        while set.try_join_next().is_some() {}
        set.spawn_on(fut, &handle);
        Ok(())
    }
}

impl<K, V, C> Drop for Inner<K, V, C> {
    fn drop(&mut self) {
        // A cache dropped without `close`: its flusher still writes every
        // queued write, then stops.
        if let Some(q) = &self.queue {
            q.close_now();
        }
        #[cfg(feature = "redis")]
        if let Some(co) = &self.coherence {
            co.stop();
        }
    }
}

pub(crate) fn no_runtime() -> Error {
    Error::new(
        ErrorKind::Unsupported,
        "Larder's cache needs a Tokio runtime for loads (none is running on this thread)",
    )
}

/// A multi-level cache: an in-process L1 ([`larder_memory`]) in front of an
/// optional L2 ([`Store`], Redis with the `redis` feature) in front of your
/// source of truth. Cheap to clone (shared).
///
/// Reads ([`Cache::get_or_load`]): a fresh L1 hit returns at once without
/// I/O; otherwise the L2; otherwise one load per key across all callers
/// (single flight), run in a task of its own so that a caller who gives up
/// never strands the others. See the crate documentation for the whole
/// read path, and `docs/patterns.md` for when to use which pattern.
pub struct Cache<K, V, C = Postcard> {
    pub(crate) inner: Arc<Inner<K, V, C>>,
}

impl<K, V, C> Clone for Cache<K, V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, C: fmt::Debug> fmt::Debug for Cache<K, V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("l1", &self.inner.l1.is_some())
            .field("l2", &self.inner.l2)
            .field("codec", &self.inner.cfg.codec)
            .finish_non_exhaustive()
    }
}

impl<K, V> Cache<K, V, Postcard>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A builder: L1 on by default, no L2, no loader.
    pub fn builder() -> CacheBuilder<K, V, Postcard> {
        CacheBuilder::new()
    }
}

/// What [`Cache::warm`] did.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Keys already cached (L1 or L2): nothing loaded.
    pub skipped: u64,
    /// Keys loaded from the source (found or cached as not found).
    pub loaded: u64,
    /// Keys whose load failed.
    pub failed: u64,
}

impl<K, V, C> Cache<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(crate) fn from_inner(inner: Inner<K, V, C>) -> Self {
        Cache {
            inner: Arc::new(inner),
        }
    }

    /// Every operation starts here: refused once closed; starts the
    /// coherence stream, and the durable journal's replay, if the cache was
    /// built outside a runtime.
    #[inline]
    fn enter(&self) -> Result<()> {
        self.inner.check_open()?;
        #[cfg(feature = "redis")]
        {
            self.inner.ensure_coherence();
            if let Some(q) = &self.inner.queue
                && q.is_durable()
                && !q.started.load(Ordering::Relaxed)
            {
                let _ = q.start();
            }
        }
        Ok(())
    }

    /// The value of `key` if a level holds it: `Ok(None)` for a miss or a
    /// cached "not found". It never waits for a load, but a hit may start a
    /// background refresh (early refresh, grace window). L2 errors are
    /// counted and answered as a miss.
    pub async fn get(&self, key: &K) -> Result<Option<V>> {
        self.enter()?;
        let now = self.inner.now_ms();
        if let Some(hit) = self.inner.l1_lookup(key, now) {
            return Ok(hit);
        }
        self.inner.stats.l1_misses.incr();
        let text = key.key_text()?;
        if self.inner.l2.is_none() {
            return Ok(None);
        }
        // The L2 read on the heap (one allocation per L2 read): a future is
        // moved whole wherever it goes, so an L1 hit's future stays a few
        // words instead of carrying the L2 read's state.
        Box::pin(self.get_from_l2(key, text, now)).await
    }

    /// [`Cache::get`] after an L1 miss, from the L2.
    async fn get_from_l2(&self, key: &K, text: String, now: u64) -> Result<Option<V>> {
        Ok(self
            .inner
            .l2_lookup(key, &text, now, false)
            .await
            .ok()
            .flatten())
    }

    /// The value of `key`: from the L1, else the L2, else the loader, with
    /// one load per key at a time across all callers. `Ok(None)` when the
    /// loader says "not found". Errors: an invalid key, no loader
    /// configured, the load's error (never cached), a wait past the wait
    /// timeout ([`ErrorKind::Timeout`]), no Tokio runtime.
    pub async fn get_or_load(&self, key: &K) -> Result<Option<V>> {
        self.enter()?;
        let now = self.inner.now_ms();
        if let Some(hit) = self.inner.l1_lookup(key, now) {
            return Ok(hit);
        }
        // As in `get`: the miss path's state on the heap, once per miss.
        Box::pin(self.load_miss(key, now)).await
    }

    /// [`Cache::get_or_load`] after an L1 miss.
    async fn load_miss(&self, key: &K, now: u64) -> Result<Option<V>> {
        self.inner.stats.l1_misses.incr();
        if let Some(hot) = &self.inner.hot
            && HotKeys::<K>::sampled()
        {
            hot.record(key);
        }
        let text = key.key_text()?;
        if self.inner.loader.is_none() {
            return Err(no_loader());
        }
        let (ticket, kept) = match self.inner.l2_lookup(key, &text, now, true).await {
            Ok(hit) => return Ok(hit),
            Err(checked) => checked,
        };
        let entry = Arc::clone(&self.inner)
            .load(key, text, ticket, kept)
            .await?;
        Ok(entry.value.clone())
    }

    /// [`Cache::get`] for many keys: one result per key, in order. L1 hits
    /// first, then one bulk L2 read (`MGET`) for the rest.
    pub async fn get_many(&self, keys: &[K]) -> Vec<Result<Option<V>>> {
        if let Err(e) = self.enter() {
            return keys.iter().map(|_| Err(e.clone())).collect();
        }
        Arc::clone(&self.inner).get_many(keys, false).await
    }

    /// [`Cache::get_or_load`] for many keys: one result per key, in order.
    /// L1 hits, then one bulk L2 read for the rest, then one bulk load
    /// ([`larder_core::Loader::load_many`]) for the keys no other caller is
    /// loading already.
    pub async fn get_many_or_load(&self, keys: &[K]) -> Vec<Result<Option<V>>> {
        if self.inner.loader.is_none() {
            return keys.iter().map(|_| Err(no_loader())).collect();
        }
        if let Err(e) = self.enter() {
            return keys.iter().map(|_| Err(e.clone())).collect();
        }
        Arc::clone(&self.inner).get_many(keys, true).await
    }

    /// Removes `key` from every level: the L1, the L2 (a versioned delete:
    /// a load that started earlier cannot put the old value back), and the
    /// in-flight table (a running load's result is handed to its waiters
    /// but not cached). Cache-aside: call it after writing the source.
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        self.enter()?;
        let text = key.key_text()?;
        self.inner.invalidate(key, &text).await
    }

    /// [`Cache::invalidate`] for many keys; the first error, after trying all.
    pub async fn invalidate_many(&self, keys: &[K]) -> Result<()> {
        let results = futures_util::future::join_all(keys.iter().map(|k| self.invalidate(k))).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// Cache-aside update: writes `value` to the source of truth through
    /// the configured [`larder_core::Writer`], then [invalidates](Cache::invalidate)
    /// the key. The next read loads the new value. If the write fails,
    /// nothing is invalidated and the error is returned.
    pub async fn update(&self, key: &K, value: &V) -> Result<()> {
        self.enter()?;
        let Some(writer) = &self.inner.writer else {
            return Err(no_writer());
        };
        let text = key.key_text()?;
        // Like `put`: ordered with the key's other writes, superseding a
        // queued write-behind write of it.
        let order = self.inner.write_order(key).await;
        writer.write(key, value).await?;
        self.invalidate_after_write(key, text, order).await
    }

    /// Write-through: writes `value` to the source of truth through the
    /// configured [`larder_core::Writer`], then to the L2 with a newly
    /// allocated version (`Store::set_versioned`), then to this instance's
    /// L1. A load that started before it can neither overwrite it in the L2
    /// (its fill carries an older version) nor in the L1 (its flight is
    /// forgotten). If the write to the source fails, nothing changes; if the
    /// L2 write fails after it, the key is invalidated here and the L2's
    /// error is returned (the L2 may still hold the old value until it
    /// expires: retry or invalidate).
    pub async fn put(&self, key: &K, value: V) -> Result<()> {
        self.enter()?;
        let text = key.key_text()?;
        let Some(writer) = &self.inner.writer else {
            return Err(no_writer());
        };
        // Writes of one key reach the source and the cache in one order,
        // and a write-behind write of it still waiting is superseded.
        let mut order = self.inner.write_order(key).await;
        writer.write(key, &value).await?;
        order.written();
        // The source changed: the cache is updated to its end even if this
        // future is dropped now.
        let (inner, k) = (Arc::clone(&self.inner), key.clone());
        self.in_task(key, async move {
            order.settle(&text).await;
            inner.store_written(&k, &text, value).await
        })
        .await
    }

    /// Puts `value` in the cache without writing the source of truth (a
    /// value you loaded or computed yourself): the L2 with a newly
    /// allocated version, then the L1, like the cache half of
    /// [`Cache::put`]. A load that started earlier cannot overwrite it.
    pub async fn insert(&self, key: &K, value: V) -> Result<()> {
        self.enter()?;
        let text = key.key_text()?;
        let order = Arc::clone(&self.inner.write_locks[self.inner.stripe(key)])
            .lock_owned()
            .await;
        let (inner, k) = (Arc::clone(&self.inner), key.clone());
        self.in_task(key, async move {
            let _order = order;
            inner.store_written(&k, &text, value).await
        })
        .await
    }

    /// Write-behind (with [`CacheBuilder::write_behind`]): queues the write
    /// of `value` to the source of truth, then updates the L2 (versioned, as
    /// [`Cache::put`]) and the L1 at once. The write is coalesced with a
    /// waiting write of the same key (the latest wins) and reaches the
    /// [`larder_core::Writer`] in a batch; one that keeps failing goes to
    /// the dead-letter callback. A full queue waits or refuses per
    /// [`Overflow`](crate::Overflow): [`ErrorKind::Overflow`], never a silent
    /// drop. Until its batch is written, a read that misses the cache loads
    /// the old value from the source: keep the interval well below the TTL.
    /// Once the write is queued, the cache is updated by a task the cache
    /// owns, so dropping this future cannot leave them apart.
    pub async fn put_behind(&self, key: &K, value: V) -> Result<()> {
        self.enter()?;
        let text = key.key_text()?;
        let Some(queue) = &self.inner.queue else {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "put_behind needs write-behind (CacheBuilder::write_behind)",
            ));
        };
        #[cfg(feature = "redis")]
        queue.own_replayed().await?;
        let order = Arc::clone(&self.inner.write_locks[self.inner.stripe(key)])
            .lock_owned()
            .await;
        #[cfg(feature = "redis")]
        if queue.is_durable() {
            // Room first; the journal entry and the cache value are written
            // together by the cache's task, which then queues the write.
            let slot = queue.reserve(key).await?;
            let (inner, k) = (Arc::clone(&self.inner), key.clone());
            return self
                .in_task(key, async move {
                    let _order = order;
                    inner.journal_written(&k, &text, value, slot).await
                })
                .await;
        }
        queue.enqueue(key.clone(), value.clone()).await?;
        let (inner, k) = (Arc::clone(&self.inner), key.clone());
        self.in_task(key, async move {
            let _order = order;
            if Arc::clone(&inner)
                .store_written(&k, &text, value)
                .await
                .is_err()
            {
                // Queued all the same; the key was invalidated here.
                inner.stats.l2_errors.incr();
            }
            Ok(())
        })
        .await
    }

    /// Durable write-behind ([`CacheBuilder::durable`]): takes over the
    /// journalled writes nobody is writing now (this consumer's leftovers
    /// from its previous run, the first time; then writes of other
    /// consumers untouched for [`WriteBehind::claim_after`](crate::WriteBehind::claim_after))
    /// and queues them. The flusher does this by itself when it starts and
    /// every half `claim_after`; call it to know when a restart's replay is
    /// queued (then [`Cache::close`] or wait for `Stats::write_behind`).
    /// Returns how many writes were queued; 0 without durable mode.
    pub async fn recover_writes(&self) -> Result<usize> {
        self.enter()?;
        #[cfg(feature = "redis")]
        if let Some(q) = &self.inner.queue {
            q.start()?;
            return q.replay(true).await;
        }
        Ok(0)
    }

    /// Runs the cache half of a write in a task the cache owns, so a caller
    /// dropped after the source was written cannot leave the cache stale;
    /// if no task can run (closed), the key is invalidated here.
    ///
    /// The work is polled once here first: a cache half with nothing to
    /// wait for (an L1-only cache) is done before this returns, without a
    /// task; work that must wait moves to the task as it is.
    async fn in_task(
        &self,
        key: &K,
        work: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) -> Result<()> {
        let panicked = || {
            Error::new(
                ErrorKind::Cancelled,
                "the cache half of this write panicked",
            )
        };
        // Whatever the work needs (timers, sockets) needs a runtime: without
        // one, a typed error before it runs, as the task would give.
        if tokio::runtime::Handle::try_current().is_err() {
            self.inner.invalidate_local(key);
            return Err(no_runtime());
        }
        let mut work = Box::pin(work);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures_util::FutureExt::now_or_never(&mut work)
        })) {
            Ok(Some(done)) => return done,
            Ok(None) => {}
            Err(_) => {
                self.inner.invalidate_local(key);
                return Err(panicked());
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (inner, k) = (Arc::clone(&self.inner), key.clone());
        if let Err(e) = self.inner.spawn(async move {
            let done =
                futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(work)).await;
            let _ = tx.send(done.unwrap_or_else(|_| {
                // The L1 must not keep what the source no longer has.
                inner.invalidate_local(&k);
                Err(panicked())
            }));
        }) {
            self.inner.invalidate_local(key);
            return Err(e);
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Cancelled,
                "the cache's task for this write was stopped",
            ))
        })
    }

    /// Cache-aside delete: deletes `key` from the source of truth through
    /// the configured [`larder_core::Writer`], then
    /// [invalidates](Cache::invalidate) it.
    pub async fn delete(&self, key: &K) -> Result<()> {
        self.enter()?;
        let Some(writer) = &self.inner.writer else {
            return Err(no_writer());
        };
        let text = key.key_text()?;
        let order = self.inner.write_order(key).await;
        writer.delete(key).await?;
        self.invalidate_after_write(key, text, order).await
    }

    /// The cache half of `update` and `delete`, once the source has the
    /// write: the superseded write-behind write is dropped for good before
    /// the first await (so a caller dropped later cannot put it back), then
    /// the invalidation runs in the cache's task to its end.
    async fn invalidate_after_write(
        &self,
        key: &K,
        text: String,
        mut order: crate::read::WriteOrder<K, V>,
    ) -> Result<()> {
        order.written();
        let (inner, k) = (Arc::clone(&self.inner), key.clone());
        self.in_task(key, async move {
            order.settle(&text).await;
            inner.invalidate(&k, &text).await
        })
        .await
    }

    /// Removes every entry of this instance's L1; running loads will not
    /// publish (other instances and the L2 keep theirs).
    pub fn clear_local(&self) {
        self.inner.clear_l1();
    }

    /// Removes everything this cache holds: its L1, and (`redis` feature,
    /// with a Redis L2) every key of the store's namespace, by `SCAN` and
    /// `UNLINK` on every node, never `KEYS`. Other instances' L1s keep
    /// their entries until they expire, unless they use coherence by
    /// tracking (the deletions evict them; pub/sub mode announces nothing
    /// here). The durable journal (`{ns}:wb:*`) and pub/sub's generation
    /// counter are not data and stay. With an L2 that is not a
    /// `RedisStore`: [`ErrorKind::Unsupported`] after the L1 is cleared.
    ///
    /// Not a versioned invalidation: it removes the version records too, so
    /// a load that started before it may still fill its value afterwards;
    /// and it removes every key of the namespace, the data-structure
    /// helpers' and the locks' included: give a cache a namespace of its
    /// own.
    pub async fn clear(&self) -> Result<()> {
        self.enter()?;
        self.clear_local();
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.inner.redis {
            redis.clear_namespace().await?;
            self.clear_local();
            return Ok(());
        }
        if self.inner.l2.is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "clear needs a Redis L2 (the Store trait has no namespace scan)",
            ));
        }
        Ok(())
    }

    /// Loads `keys` ahead of traffic, `batch` keys per bulk load with at
    /// most `concurrency` batches at once, calling `progress(done, total)`
    /// after each batch. Keys already cached are skipped.
    pub async fn warm(
        &self,
        keys: &[K],
        batch: usize,
        concurrency: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> WarmReport {
        use futures_util::StreamExt;
        let mut done = 0;
        let mut report = WarmReport::default();
        let mut batches = futures_util::stream::iter(keys.chunks(batch.max(1)))
            .map(|chunk| self.warm_batch(chunk))
            .buffer_unordered(concurrency.max(1));
        while let Some((n, r)) = batches.next().await {
            report.skipped += r.skipped;
            report.loaded += r.loaded;
            report.failed += r.failed;
            done += n;
            progress(done, keys.len());
        }
        report
    }

    async fn warm_batch(&self, chunk: &[K]) -> (usize, WarmReport) {
        let mut report = WarmReport::default();
        let cached = self.get_many(chunk).await;
        let missing: Vec<K> = chunk
            .iter()
            .zip(&cached)
            .filter(|(_, r)| !matches!(r, Ok(Some(_))))
            .map(|(k, _)| k.clone())
            .collect();
        report.skipped = (chunk.len() - missing.len()) as u64;
        for r in self.get_many_or_load(&missing).await {
            match r {
                Ok(_) => report.loaded += 1,
                Err(_) => report.failed += 1,
            }
        }
        (chunk.len(), report)
    }

    /// The hottest keys read recently (with [`CacheBuilder::hot_keys`]),
    /// hottest first, with their estimated reads in the sliding window.
    /// Empty when hot-key detection is off.
    pub fn hot_keys(&self) -> Vec<(K, u64)> {
        self.inner.hot.as_ref().map_or_else(Vec::new, HotKeys::top)
    }

    /// A snapshot of the cache's figures.
    pub fn stats(&self) -> Stats {
        let mut s = self.inner.stats.snapshot();
        if let Some(l1) = &self.inner.l1 {
            s.l1 = Some(l1.stats());
            s.l1_entries = l1.entry_count();
        }
        s.in_flight = self.inner.flights.len();
        s.write_behind = self.inner.queue.as_ref().map(|q| q.stats());
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.inner.redis {
            s.breakers = redis.breaker_states();
        }
        #[cfg(feature = "redis")]
        {
            s.coherence = self.inner.coherence.as_ref().map(|c| c.stats());
        }
        s
    }

    /// Coherence on ([`CacheBuilder::coherence`]): waits until this
    /// instance's invalidation stream is up, so that every write from now
    /// on evicts its L1 copy. Starts the stream if the cache was built
    /// outside a runtime. Returns at once without coherence; bound it with
    /// a timeout (the stream retries with backoff while Redis is down).
    #[cfg(feature = "redis")]
    pub async fn coherence_ready(&self) {
        self.inner.start_coherence();
        if let Some(co) = &self.inner.coherence {
            co.ready().await;
        }
    }

    /// The Redis store behind the L2 (`redis` feature), for its own figures
    /// (`stats()`, `breaker_states()`) and helpers.
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Option<&larder_redis::RedisStore> {
        self.inner.redis.as_ref()
    }

    /// Stops the cache: later calls answer [`ErrorKind::Closed`]; this
    /// writes every queued write-behind write (each attempt bounded by the
    /// write timeout, with its retries; what still fails is dead-lettered
    /// and counted in `Stats::write_behind`), then waits for the background
    /// loads and refreshes still running (each bounded by the load timeout,
    /// plus up to three lease times when waiting on another process's
    /// lease). Nothing outlives the cache silently. A direct write (`put`,
    /// `update`, `delete`) of a key whose write-behind write it took out of
    /// the queue is waited for too, as that write comes back if the direct
    /// one fails: such a wait lasts as long as the `Writer` call, which
    /// Larder does not bound (bound it in the `Writer`).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        #[cfg(feature = "redis")]
        if let Some(co) = &self.inner.coherence {
            co.stop();
        }
        if let Some(q) = &self.inner.queue {
            q.close().await;
        }
        let set = self.inner.tasks.lock().take();
        if let Some(mut set) = set {
            while set.join_next().await.is_some() {}
        }
    }
}

pub(crate) fn no_loader() -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        "get_or_load needs a loader (CacheBuilder::loader)",
    )
}

fn no_writer() -> Error {
    Error::new(
        ErrorKind::InvalidConfig,
        "put, update and delete need a writer (CacheBuilder::writer)",
    )
}
