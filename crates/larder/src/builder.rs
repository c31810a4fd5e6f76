//! [`CacheBuilder`]: every setting of a [`Cache`], checked at `build()`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use larder_core::{
    CoarseClock, Codec, Compression, Error, ErrorKind, Loader, Postcard, Result, SharedClock,
    Store, Writer,
};
use larder_memory::MemoryCache;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{Cache, Config, Inner, LeaseConfig};
use crate::key::CacheKey;
use crate::source::{DynLoader, DynWriter};
use crate::ttl::{Ttl, TtlPolicy};
use crate::writer::{DeadLetter, Queue, WriteBehind};

/// The L1's capacity when the builder is given none: 10,000 entries.
pub const DEFAULT_MEMORY_CAPACITY: u64 = 10_000;
/// How often a process that lost a load lease looks for the winner's value.
pub const DEFAULT_LEASE_POLL: Duration = Duration::from_millis(20);
/// How long a load may run by default before its callers get a timeout.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the L1 of a coherent cache keeps a value the L2 did not
/// confirm, by default ([`CacheBuilder::unconfirmed_ttl`]).
pub const DEFAULT_UNCONFIRMED_TTL: Duration = Duration::from_secs(5);

/// Builds a [`Cache`]: `Cache::<K, V>::builder()`.
///
/// Levels: the L1 is on by default ([`DEFAULT_MEMORY_CAPACITY`] entries,
/// [`CacheBuilder::memory`] to size it, [`CacheBuilder::no_memory`] for an
/// L2-only cache); the L2 is off until [`CacheBuilder::store`] (or
/// [`CacheBuilder::redis`] with the `redis` feature) gives one. A cache with
/// neither level is refused at [`CacheBuilder::build`] with
/// [`ErrorKind::InvalidConfig`], as is every out-of-range setting.
#[must_use]
pub struct CacheBuilder<K, V, C = Postcard> {
    memory: Option<u64>,
    memory_ttl_cap: Option<Duration>,
    unconfirmed_ttl: Duration,
    max_value_bytes: Option<usize>,
    store: Option<Arc<dyn Store>>,
    #[cfg(feature = "redis")]
    redis: Option<larder_redis::RedisStore>,
    #[cfg(feature = "redis")]
    coherence: Option<larder_redis::CoherenceMode>,
    loader: Option<Box<dyn DynLoader<K, V>>>,
    writer: Option<Arc<dyn DynWriter<K, V>>>,
    write_behind: Option<WriteBehind>,
    dead_letter: Option<Box<DeadLetter<K, V>>>,
    #[cfg(feature = "redis")]
    durable: Option<DurableSpec<K, V>>,
    ttl: TtlPolicy,
    negative_ttl: Option<Duration>,
    stale_if_error: Option<Duration>,
    beta: f64,
    load_timeout: Duration,
    wait_timeout: Option<Duration>,
    tombstone: Option<Duration>,
    clock: Option<SharedClock>,
    codec: C,
    compression: Compression,
    seed: Option<u64>,
    lease: Option<Duration>,
    lease_poll: Duration,
    hot_keys: Option<usize>,
    hot_ahead: Option<Duration>,
    _types: PhantomData<fn(K) -> V>,
}

impl<K, V, C: fmt::Debug> fmt::Debug for CacheBuilder<K, V, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("memory", &self.memory)
            .field("store", &self.store)
            .field("codec", &self.codec)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<K, V> CacheBuilder<K, V, Postcard> {
    pub(crate) fn new() -> Self {
        CacheBuilder {
            memory: Some(DEFAULT_MEMORY_CAPACITY),
            memory_ttl_cap: None,
            unconfirmed_ttl: DEFAULT_UNCONFIRMED_TTL,
            max_value_bytes: None,
            store: None,
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            coherence: None,
            loader: None,
            writer: None,
            write_behind: None,
            dead_letter: None,
            #[cfg(feature = "redis")]
            durable: None,
            ttl: TtlPolicy::default(),
            negative_ttl: None,
            stale_if_error: None,
            beta: 1.0,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            wait_timeout: None,
            tombstone: None,
            clock: None,
            codec: Postcard,
            compression: Compression::None,
            seed: None,
            lease: None,
            lease_poll: DEFAULT_LEASE_POLL,
            hot_keys: None,
            hot_ahead: None,
            _types: PhantomData,
        }
    }
}

/// What `CacheBuilder::durable` asked for, until `build`.
#[cfg(feature = "redis")]
struct DurableSpec<K, V> {
    consumer: String,
    encode: Box<crate::writer::EncodeWrite<K, V>>,
    decode: Box<crate::writer::DecodeWrite<K, V>>,
}

#[cfg(feature = "redis")]
impl<K, V, C> CacheBuilder<K, V, C>
where
    K: CacheKey + Serialize + DeserializeOwned,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Durable write-behind (`redis` feature; needs
    /// [`CacheBuilder::write_behind`] and a standalone Redis L2): each
    /// `put_behind` journals the write in a Redis Stream of the namespace
    /// in the same script that writes the cache, and returns once both are
    /// done; the journal entry is acknowledged after the writer wrote it.
    /// At start, this `consumer`'s writes left by its previous run are
    /// replayed; writes of other consumers untouched for
    /// [`WriteBehind::claim_after`] are taken over. `consumer` names this
    /// process among the live ones and must stay the same across its
    /// restarts (a host or pod name). Keys and values are journalled with
    /// postcard, so the key type must be serde too. See
    /// `docs/GUARANTEES.md` for what survives which crash.
    pub fn durable(mut self, consumer: &str) -> Self {
        self.durable = Some(DurableSpec {
            consumer: consumer.to_owned(),
            encode: Box::new(|k: &K, v: &V| Postcard.encode(&(k, v))),
            decode: Box::new(|b: &[u8]| Postcard.decode::<(K, V)>(b)),
        });
        self
    }
}

impl<K, V, C> CacheBuilder<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The L1: at most `entries` values in process (W-TinyLFU eviction).
    pub fn memory(mut self, entries: u64) -> Self {
        self.memory = Some(entries);
        self
    }

    /// No L1: every read goes to the L2 (and the loader). Needs a store.
    pub fn no_memory(mut self) -> Self {
        self.memory = None;
        self
    }

    /// The largest value (encoded, with its envelope) the L2 takes
    /// (default: no limit but the envelope's 512 MiB). A larger value is
    /// still served, loaded and written to the source, but never stored in
    /// the L2: a load keeps it in this instance's L1 only; a write
    /// invalidates the key in both levels instead; a durable `put_behind`
    /// is refused with [`ErrorKind::InvalidArgument`] (its journal entry
    /// would carry it) and invalidates the key too. Each is counted in `Stats::oversized`.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = Some(bytes);
        self
    }

    /// The longest an L1 entry lives, whatever its L2 lifetime: the bound on
    /// how long an instance can serve a value another instance changed
    /// without [`CacheBuilder::coherence`], and the backstop with it.
    /// Default: none without coherence (an L1 entry lives as long as what
    /// is left of the value's lifetime), [`DEFAULT_COHERENT_L1_CAP`](crate::DEFAULT_COHERENT_L1_CAP)
    /// with it.
    pub fn memory_ttl_cap(mut self, cap: Duration) -> Self {
        self.memory_ttl_cap = Some(cap);
        self
    }

    /// With [`CacheBuilder::coherence`], the longest the L1 keeps a value
    /// the L2 did not confirm (default [`DEFAULT_UNCONFIRMED_TTL`], 5 s): a
    /// value loaded while the L2 could not be read (down, its breaker open,
    /// a timeout) or whose fill failed, and a read of this process's queued
    /// write-behind write. The L2 may hold something newer meanwhile (a
    /// write another instance made, or a write whose reply was lost), and
    /// no invalidation will come for a write that already happened: when
    /// the L2 is reachable again, what it holds wins within this bound. The
    /// cost: while the L2 stays down, each instance loads each key it is
    /// asked for about once per bound (single flight), instead of once per
    /// `memory_ttl_cap`. Without coherence the L1 promises no agreement
    /// with the L2, and such values are kept like any other.
    pub fn unconfirmed_ttl(mut self, ttl: Duration) -> Self {
        self.unconfirmed_ttl = ttl;
        self
    }

    /// The L2, any [`Store`] that implements the versioned operations.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// The L2 on Redis (`redis` feature).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: larder_redis::RedisStore) -> Self {
        self.store = Some(Arc::new(store.clone()));
        self.redis = Some(store);
        self
    }

    /// Coherence across instances (`redis` feature; needs the L1 and a
    /// standalone or sharded Redis L2): each instance's L1 drops a key
    /// when it changes in Redis. [`CoherenceMode::Tracking`](larder_redis::CoherenceMode::Tracking)
    /// (Redis 6+, RESP3 client tracking) sees every write under the
    /// namespace, by any client, and clears the L1 when its connection is
    /// lost and again when it is back; [`CoherenceMode::PubSub`](larder_redis::CoherenceMode::PubSub)
    /// sees only what Larder's instances in pub/sub mode announce (each
    /// write and invalidation publishes its keys; fills never do: give every
    /// instance of a namespace the same mode), and after a lost connection
    /// clears the L1 once it is back if the namespace's generation counter
    /// moved meanwhile. Unless
    /// [`CacheBuilder::memory_ttl_cap`] says otherwise each L1 entry lives
    /// at most [`DEFAULT_COHERENT_L1_CAP`](crate::DEFAULT_COHERENT_L1_CAP):
    /// the backstop. The stream opens in the background at `build` (on the
    /// current runtime) or, built outside a runtime, at the first
    /// operation; [`Cache::coherence_ready`]
    /// waits for it. See `docs/patterns.md` for the bounds.
    #[cfg(feature = "redis")]
    pub fn coherence(mut self, mode: larder_redis::CoherenceMode) -> Self {
        self.coherence = Some(mode);
        self
    }

    /// The source of truth for read-through (`get_or_load`): a
    /// [`Loader`], or a closure through [`larder_core::FnLoader`].
    pub fn loader(mut self, loader: impl Loader<K, V>) -> Self {
        self.loader = Some(Box::new(loader));
        self
    }

    /// The source of truth for writes (`update`).
    pub fn writer(mut self, writer: impl Writer<K, V>) -> Self {
        self.writer = Some(Arc::new(writer));
        self
    }

    /// Write-behind (`Cache::put_behind`): writes reach the `Writer` in
    /// batches, from a queue with the given bounds. Needs a writer.
    pub fn write_behind(mut self, settings: WriteBehind) -> Self {
        self.write_behind = Some(settings);
        self
    }

    /// Called once for each write-behind write given up after every attempt
    /// (it is also counted in `Stats::write_behind`).
    pub fn dead_letter(mut self, f: impl Fn(&K, &V, &Error) + Send + Sync + 'static) -> Self {
        self.dead_letter = Some(Box::new(f));
        self
    }

    /// The default lifetime of loaded values (default: [`Ttl::default`],
    /// five minutes).
    pub fn ttl(mut self, ttl: Ttl) -> Self {
        self.ttl.set_default(ttl);
        self
    }

    /// The lifetime of values whose key text starts with `prefix` (the
    /// longest matching prefix wins).
    pub fn ttl_for_prefix(mut self, prefix: impl Into<String>, ttl: Ttl) -> Self {
        self.ttl.add(prefix.into(), ttl);
        self
    }

    /// Caches "not found" (a loader's `Ok(None)`) for `ttl` at both levels,
    /// so a flood of requests for a missing key does not reach the source
    /// (cache penetration). Off by default.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// When a load fails (error, timeout, panic), serve the value it was
    /// refreshing if it went stale less than `max_staleness` ago
    /// (stale-if-error). Off by default.
    pub fn stale_if_error(mut self, max_staleness: Duration) -> Self {
        self.stale_if_error = Some(max_staleness);
        self
    }

    /// XFetch's `beta` (default 1.0): larger refreshes earlier; `0.0` turns
    /// early refresh off.
    pub fn xfetch_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// How long one load may run (default [`DEFAULT_LOAD_TIMEOUT`]); past
    /// it the load counts as failed.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// How long a caller waits for a load, its own or another caller's
    /// (default: the load timeout plus 5 s for the L2 calls around it). A
    /// caller that gives up leaves the load running for the others.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// How long an invalidation's version record outlives the value
    /// (default: twice the wait timeout). A load that started before an
    /// invalidation and finishes within this time can never put the old
    /// value back; loads are cut at the load timeout, so keep it longer.
    pub fn tombstone(mut self, d: Duration) -> Self {
        self.tombstone = Some(d);
        self
    }

    /// The clock (default: [`CoarseClock`]: precise monotonic time, and
    /// the wall clock at the kernel's tick, which every hit reads to judge
    /// freshness; TTLs are kept to within that tick, often 4 ms). Tests use
    /// `MockClock`; `SystemClock` gives a wall clock precise to the
    /// millisecond, at several times the cost per read (`clock/unix_millis`
    /// in `docs/benchmarks.md`).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// How values are compressed in the L2 (default: not at all).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// Cross-process single flight (needs an L2): before loading, a process
    /// takes the key's load lease in the L2 for `ttl` (at least the load
    /// time; the load timeout is a good value). A process that finds the
    /// lease taken does not load: it looks for the holder's value every
    /// [`CacheBuilder::lease_poll`], and takes the lease over if it expires
    /// without one. Off by default.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = Some(ttl);
        self
    }

    /// How often a process waiting on another's lease reads the L2
    /// (default [`DEFAULT_LEASE_POLL`]).
    pub fn lease_poll(mut self, every: Duration) -> Self {
        self.lease_poll = every;
        self
    }

    /// Hot-key detection: a bounded sketch over a sliding window and the
    /// top `k` keys ([`Cache::hot_keys`]). A hot key is refreshed in the
    /// background when its fresh time left falls to the refresh-ahead time
    /// ([`CacheBuilder::hot_refresh_ahead`]), so its readers never wait for
    /// a load; the L1's TinyLFU admission keeps it in memory. Costs 64 KiB
    /// and a counter increment per read. Off by default.
    pub fn hot_keys(mut self, k: usize) -> Self {
        self.hot_keys = Some(k);
        self
    }

    /// When hot keys are refreshed: this long before their fresh time ends
    /// (default: a tenth of each value's own fresh time).
    pub fn hot_refresh_ahead(mut self, ahead: Duration) -> Self {
        self.hot_ahead = Some(ahead);
        self
    }

    /// Seeds the random draws (XFetch, TTL jitter), for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The codec of values in the L2 (default [`Postcard`]).
    pub fn codec<C2: Codec>(self, codec: C2) -> CacheBuilder<K, V, C2> {
        CacheBuilder {
            memory: self.memory,
            memory_ttl_cap: self.memory_ttl_cap,
            unconfirmed_ttl: self.unconfirmed_ttl,
            max_value_bytes: self.max_value_bytes,
            store: self.store,
            #[cfg(feature = "redis")]
            redis: self.redis,
            #[cfg(feature = "redis")]
            coherence: self.coherence,
            loader: self.loader,
            writer: self.writer,
            write_behind: self.write_behind,
            dead_letter: self.dead_letter,
            #[cfg(feature = "redis")]
            durable: self.durable,
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            stale_if_error: self.stale_if_error,
            beta: self.beta,
            load_timeout: self.load_timeout,
            wait_timeout: self.wait_timeout,
            tombstone: self.tombstone,
            clock: self.clock,
            codec,
            compression: self.compression,
            seed: self.seed,
            lease: self.lease,
            lease_poll: self.lease_poll,
            hot_keys: self.hot_keys,
            hot_ahead: self.hot_ahead,
            _types: PhantomData,
        }
    }

    /// Checks the settings and builds the cache. Needs no runtime; reads and
    /// loads need a Tokio runtime (an [`ErrorKind::Unsupported`] error
    /// without one, never a panic).
    pub fn build(self) -> Result<Cache<K, V, C>> {
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidConfig, m));
        if self.memory.is_none() && self.store.is_none() {
            return bad("a cache needs an L1 (memory) or an L2 (store), or both".into());
        }
        self.ttl.check()?;
        for (name, d) in [
            ("negative_ttl", self.negative_ttl),
            ("memory_ttl_cap", self.memory_ttl_cap),
            ("unconfirmed_ttl", Some(self.unconfirmed_ttl)),
            ("tombstone", self.tombstone),
        ] {
            if d.is_some_and(|d| d.as_millis() == 0) {
                return bad(format!("{name} must be at least 1 ms"));
            }
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad(format!(
                "xfetch_beta must be finite and >= 0, not {}",
                self.beta
            ));
        }
        let lease = match self.lease {
            None => None,
            Some(_) if self.store.is_none() => {
                return bad("a load lease needs an L2 (store or redis)".into());
            }
            Some(ttl) if ttl.as_millis() == 0 || self.lease_poll.is_zero() => {
                return bad("the lease and its poll interval must be at least 1 ms".into());
            }
            Some(ttl) => Some(LeaseConfig {
                ttl,
                poll: self.lease_poll.min(ttl),
            }),
        };
        #[cfg(feature = "redis")]
        let durable_spec = self.durable;
        #[cfg(feature = "redis")]
        if durable_spec.is_some() && self.write_behind.is_none() {
            return bad("durable needs write_behind (CacheBuilder::write_behind)".into());
        }
        let queue = match self.write_behind {
            None => None,
            Some(wb) => {
                wb.check()?;
                let Some(writer) = &self.writer else {
                    return bad("write_behind needs a writer (CacheBuilder::writer)".into());
                };
                #[cfg(feature = "redis")]
                let durable = match durable_spec {
                    None => None,
                    Some(spec) => {
                        let Some(redis) = &self.redis else {
                            return bad("durable write-behind needs the Redis L2 \
                                 (CacheBuilder::redis)"
                                .into());
                        };
                        if wb.claim_after <= wb.longest_hold().saturating_mul(2) {
                            return bad(format!(
                                "write_behind: claim_after ({:?}) must exceed twice the longest a \
                                 batch may take (interval + attempts x (write timeout + max \
                                 backoff) = {:?}), or two instances could write a write",
                                wb.claim_after,
                                wb.longest_hold()
                            ));
                        }
                        let journal = redis.journal(&spec.consumer)?;
                        Some(crate::writer::Durable::new(
                            journal,
                            spec.encode,
                            spec.decode,
                        ))
                    }
                };
                Some(Arc::new(Queue::new(
                    wb,
                    Arc::clone(writer),
                    self.dead_letter,
                    #[cfg(feature = "redis")]
                    durable,
                )))
            }
        };

        if self.max_value_bytes == Some(0) {
            return bad("max_value_bytes must be at least 1".into());
        }
        if self.hot_keys == Some(0) {
            return bad("hot_keys needs k >= 1".into());
        }
        let hot_ahead = self.hot_ahead;
        if self.load_timeout.is_zero() {
            return bad("load_timeout must be positive".into());
        }
        let wait_timeout = self
            .wait_timeout
            .unwrap_or_else(|| self.load_timeout.saturating_add(Duration::from_secs(5)));
        if wait_timeout.is_zero() {
            return bad("wait_timeout must be positive".into());
        }
        let tombstone = self
            .tombstone
            .unwrap_or_else(|| wait_timeout.saturating_mul(2));
        let clock = self.clock.unwrap_or_else(CoarseClock::shared);
        let l1 = self.memory.map(|entries| {
            MemoryCache::builder(entries)
                .clock(Arc::clone(&clock))
                .build()
        });
        #[cfg(feature = "redis")]
        let coherence = match (self.coherence, &self.redis) {
            (None, _) => None,
            (Some(mode), redis) => {
                crate::coherence::check(self.memory.is_some(), redis.is_some())?;
                let store = redis.clone().expect("checked");
                if matches!(
                    store.config().topology(),
                    larder_redis::Topology::Cluster(_)
                ) {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "coherence on Redis Cluster is not supported (standalone or sharded only)",
                    ));
                }
                Some(crate::coherence::Coherence::new(mode, store))
            }
        };
        #[cfg(feature = "redis")]
        let memory_ttl_cap = self.memory_ttl_cap.or(coherence
            .as_ref()
            .map(|_| crate::coherence::DEFAULT_COHERENT_L1_CAP));
        #[cfg(not(feature = "redis"))]
        let memory_ttl_cap = self.memory_ttl_cap;
        #[cfg(feature = "redis")]
        let unconfirmed_ttl = coherence.as_ref().map(|_| self.unconfirmed_ttl);
        #[cfg(not(feature = "redis"))]
        let unconfirmed_ttl = None;
        let cfg = Config {
            codec: self.codec,
            compression: self.compression,
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            stale_if_error: self.stale_if_error,
            beta: self.beta,
            load_timeout: self.load_timeout,
            wait_timeout,
            tombstone,
            memory_ttl_cap,
            unconfirmed_ttl,
            max_value_bytes: self.max_value_bytes,
            lease,
            hot_ahead,
        };
        #[cfg(feature = "redis")]
        let replay_now = queue.as_ref().filter(|q| q.is_durable()).map(Arc::clone);
        let cache = Cache::from_inner(Inner::new(
            l1,
            self.store,
            #[cfg(feature = "redis")]
            self.redis,
            #[cfg(feature = "redis")]
            coherence,
            self.loader,
            self.writer,
            queue,
            cfg,
            clock,
            self.seed,
            self.hot_keys,
        ));
        // Durable mode replays a previous run's writes as soon as it can:
        // now if a runtime is running, else at the first `put_behind`.
        #[cfg(feature = "redis")]
        if let Some(q) = replay_now {
            let _ = q.start();
        }
        #[cfg(feature = "redis")]
        cache.inner.start_coherence();
        Ok(cache)
    }
}
