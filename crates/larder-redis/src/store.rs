//! [`RedisStore`]: the `larder_core::Store` on Redis.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{BoxFuture, join_all};
use larder_core::envelope::{self, EnvelopeMeta, HEADER_LEN, MAGIC};
use larder_core::{
    Codec, Error, ErrorKind, KeySpace, Result, SharedClock, Store, StoreEntry, StoreStats,
    SystemClock, validate_key,
};
use larder_ring::{HashRing, hash_tag};
use serde::de::DeserializeOwned;

use crate::batch::{BatchStats, Batcher};
use crate::breaker::BreakerState;
use crate::config::{RedisConfig, Topology};
use crate::node::{Conn, Node};
use crate::scripts;
use crate::stats::{Cmd, Stats};

/// Larder's L2 on Redis: standalone, Cluster, or sharded over standalone
/// servers, behind one type. Cheap to clone (shared).
///
/// Every command has a deadline, goes through its node's circuit breaker,
/// and (for idempotent commands) is retried with backoff after a timeout or
/// connection error. Keys are user keys; the store writes them as
/// `{namespace}:{{key}}`.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<RedisConfig>,
    clock: SharedClock,
    backend: Backend,
    batcher: Option<Batcher>,
    /// The journal keys a fill looks at (`{ns}:wb:latest`,
    /// `{ns}:wb:journal`), when it does.
    fill_journal: Option<(String, String)>,
}

enum Backend {
    Single(Arc<Node>),
    Sharded(RwLock<Arc<Shards>>),
}

pub(crate) struct Shards {
    ring: HashRing,
    /// The same ring, never marked down: each key's home shard.
    home: HashRing,
    nodes: Vec<Arc<Node>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("topology", self.inner.config.topology())
            .field("namespace", &self.inner.config.keyspace().namespace())
            .finish()
    }
}

/// What [`RedisStore::ttl`] found.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyTtl {
    /// No such key.
    Missing,
    /// The key exists and never expires (written without a TTL, not by this store).
    Persistent,
    /// The key expires after this long.
    Expires(Duration),
}

impl KeyTtl {
    /// The remaining time to live, if the key exists and expires.
    pub fn remaining(&self) -> Option<Duration> {
        match self {
            KeyTtl::Expires(d) => Some(*d),
            _ => None,
        }
    }
}

/// The longest TTL sent to Redis: 100 years. Longer ones (up to
/// `Duration::MAX`, "forever") are cut to it: Redis refuses a `PX` whose
/// deadline overflows its clock.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub(crate) fn ttl_ms(ttl: Duration) -> Result<u64> {
    let ms = u64::try_from(ttl.min(MAX_TTL).as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "a TTL must be at least 1 ms",
        ));
    }
    Ok(ms)
}

impl RedisStore {
    /// Builds a store from `config`, with the system clock. Connections are
    /// made lazily: a Redis that is down now is an error on the first
    /// command, not here, and the store recovers by itself when it returns.
    /// Needs no Tokio runtime: connections and the auto-batching task are
    /// made by the first command, on the caller's runtime.
    pub fn new(config: RedisConfig) -> Result<Self> {
        Self::with_clock(config, SystemClock::shared())
    }

    /// As [`RedisStore::new`], with the clock the breakers and stats use.
    pub fn with_clock(config: RedisConfig, clock: SharedClock) -> Result<Self> {
        let config = Arc::new(config);
        let backend = match config.topology() {
            Topology::Standalone(url) => Backend::Single(Arc::new(Node::standalone(
                url,
                Arc::clone(&config),
                Arc::clone(&clock),
            )?)),
            Topology::Cluster(urls) => Backend::Single(Arc::new(Node::cluster(
                urls,
                Arc::clone(&config),
                Arc::clone(&clock),
            )?)),
            Topology::Sharded(urls) => {
                let nodes = urls
                    .iter()
                    .map(|u| {
                        Node::standalone(u, Arc::clone(&config), Arc::clone(&clock)).map(Arc::new)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Backend::Sharded(RwLock::new(Arc::new(Shards::new(nodes)?)))
            }
        };
        let batcher = match (&backend, config.auto_batch) {
            (Backend::Single(node), Some(max)) => Some(Batcher::new(Arc::clone(node), max)),
            _ => None,
        };
        // Durable write-behind journals live on standalone servers only.
        let fill_journal = match config.topology() {
            Topology::Standalone(_) if config.fill_checks_journal => {
                let ks = config.keyspace();
                Some((
                    ks.global_key(crate::journal::JOURNAL_LATEST)?,
                    ks.global_key(crate::journal::JOURNAL_STREAM)?,
                ))
            }
            _ => None,
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                config,
                clock,
                backend,
                batcher,
                fill_journal,
            }),
        })
    }

    /// A standalone store from a URL with default settings.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(RedisConfig::from_url(url)?)
    }

    /// The key space (namespace) of this store.
    pub fn keyspace(&self) -> &KeySpace {
        self.inner.config.keyspace()
    }

    /// The journal keys a fill on this store looks at, if any.
    pub(crate) fn fill_journal(&self) -> Option<&(String, String)> {
        self.inner.fill_journal.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The `now` argument of a helper's script: empty for the server's
    /// `TIME` (read inside the script), else the store clock's Unix
    /// milliseconds.
    pub(crate) fn helper_now_arg(&self) -> String {
        match self.inner.config.helper_clock {
            crate::config::HelperClock::Server => String::new(),
            crate::config::HelperClock::Store => self.inner.clock.unix_millis().to_string(),
        }
    }

    /// The node that owns a Redis key (by its hash tag, like Cluster).
    pub(crate) fn node_for(&self, redis_key: &str) -> Result<Arc<Node>> {
        match &self.inner.backend {
            Backend::Single(n) => Ok(Arc::clone(n)),
            Backend::Sharded(s) => self.shards(s).route(redis_key),
        }
    }

    /// The home node of a Redis key: on a sharded store, the shard the ring
    /// gives it with every shard up, even while that shard's breaker is
    /// open (no failover). For the helpers, whose keys hold data of record:
    /// a copy written to a stand-in shard would be forgotten when the home
    /// shard returned.
    pub(crate) fn home_node_for(&self, redis_key: &str) -> Result<Arc<Node>> {
        match &self.inner.backend {
            Backend::Single(n) => Ok(Arc::clone(n)),
            Backend::Sharded(s) => self.shards(s).home(redis_key),
        }
    }

    /// Runs a helper's command on the home node of `redis_key` (never a
    /// stand-in: while the home node is down, the command fails with its
    /// error, `CircuitOpen` once its breaker is open).
    pub(crate) async fn run_home<T, F, Fut>(
        &self,
        redis_key: &str,
        cmd: Cmd,
        idempotent: bool,
        what: &'static str,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.home_node_for(redis_key)?
            .run_routed(Some(redis_key), cmd, idempotent, what, f)
            .await
    }

    /// Every node now: the one of a standalone or Cluster store, or each shard.
    pub(crate) fn nodes(&self) -> Vec<Arc<Node>> {
        match &self.inner.backend {
            Backend::Single(n) => vec![Arc::clone(n)],
            Backend::Sharded(s) => self.shards(s).nodes.clone(),
        }
    }

    fn shards(&self, s: &RwLock<Arc<Shards>>) -> Arc<Shards> {
        Arc::clone(&s.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Runs a command on the node owning `redis_key` now: for cache keys,
    /// which fail over to the next live shard (helpers use `run_home`).
    pub(crate) async fn run_on<T, F, Fut>(
        &self,
        redis_key: &str,
        cmd: Cmd,
        idempotent: bool,
        what: &'static str,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.node_for(redis_key)?
            .run_routed(Some(redis_key), cmd, idempotent, what, f)
            .await
    }

    /// [`Store::get`], callable without naming the trait: same answers and
    /// errors, and the same boxed future.
    ///
    /// The future is boxed because a future is moved whole wherever it
    /// goes (into a task, a `join_all`, a `select!`), and a get's state is
    /// large (about 720 bytes: the command, its deadline, retries and the
    /// batcher's wait). Unboxed, `cargo xtask profile l2` counted more
    /// instructions per get, not fewer: about 800 more per key on the
    /// batched path (`join_all` copying each future into its list) and
    /// about the same on the plain path, where the box's allocation
    /// replaces the copy. Being a box, it is `Unpin`: poll it by hand or
    /// in a `select!` as it is.
    pub fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        <Self as Store>::get(self, key)
    }

    /// `Store::get` without the batcher.
    async fn get_unbatched(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Backend::Single(node) = &self.inner.backend
            && !node.is_cluster()
        {
            // One server: the key routes nothing, so it is written straight
            // into the command (no `String` per get).
            validate_key(key)?;
            let prefix = self.keyspace().prefix();
            return node
                .run(Cmd::Get, true, "GET", |mut c| async move {
                    let mut cmd = redis::Cmd::with_capacity(2, 3 + prefix.len() + key.len() + 2);
                    cmd.arg("GET");
                    write_data_key(&mut cmd, prefix, key);
                    cmd.query_async(&mut c).await
                })
                .await;
        }
        let k = self.data_key(key)?;
        self.run_on(&k, Cmd::Get, true, "GET", |mut c| {
            let k = &k;
            async move { redis::cmd("GET").arg(k).query_async(&mut c).await }
        })
        .await
    }

    fn data_key(&self, key: &str) -> Result<String> {
        self.keyspace().data_key(key)
    }

    /// Figures per command, breaker rejections and corrupt values seen
    /// (summed over the nodes of a sharded store).
    pub fn stats(&self) -> StoreStats {
        match &self.inner.backend {
            Backend::Single(n) => n.stats.snapshot(),
            Backend::Sharded(s) => {
                let mut total = StoreStats::default();
                for n in &self.shards(s).nodes {
                    Stats::merge(&mut total, n.stats.snapshot());
                }
                total
            }
        }
    }

    /// What the auto-batcher has sent so far (`MGET`s, keys in them), if
    /// `auto_batch` is on (standalone and Cluster stores).
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.inner.batcher.as_ref().map(Batcher::stats)
    }

    /// Each node's name (password redacted) and breaker state. A Cluster
    /// store lists its cluster-wide breaker (for multi-slot commands) first,
    /// then one per master it has routed a key to.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        match &self.inner.backend {
            Backend::Single(n) => n.breaker_states(),
            Backend::Sharded(s) => self
                .shards(s)
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.breaker_state()))
                .collect(),
        }
    }

    /// Sends `PING` to every node; the first error, if any.
    pub async fn ping(&self) -> Result<()> {
        let nodes = match &self.inner.backend {
            Backend::Single(n) => vec![Arc::clone(n)],
            Backend::Sharded(s) => self.shards(s).nodes.clone(),
        };
        for n in nodes {
            n.run(Cmd::Other, true, "PING", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    /// Reads and decodes an envelope written with `codec`: `Ok(None)` for a
    /// missing key, `(meta, None)` for a negative entry. Bytes that are not a
    /// valid envelope of this codec are counted in [`StoreStats::corrupt`]
    /// and returned as an [`ErrorKind::Corrupt`] error, which callers treat
    /// as a miss.
    pub async fn get_decoded<C: Codec, T: DeserializeOwned>(
        &self,
        codec: &C,
        key: &str,
    ) -> Result<Option<(EnvelopeMeta, Option<T>)>> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        match envelope::decode_value::<C, T>(codec, &bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                if let Ok(k) = self.data_key(key) {
                    self.count_corrupt(&k);
                }
                Err(e)
            }
        }
    }

    /// Counts a value under `redis_key` that did not decode.
    pub(crate) fn count_corrupt(&self, redis_key: &str) {
        if let Ok(node) = self.node_for(redis_key) {
            node.stats.corrupt.incr();
        }
    }

    /// The remaining time to live of a key, or whether it is missing or
    /// has no expiry.
    pub async fn ttl(&self, key: &str) -> Result<KeyTtl> {
        let k = self.data_key(key)?;
        let ms: i64 = self
            .run_on(&k, Cmd::Other, true, "PTTL", |mut c| {
                let k = k.clone();
                async move { redis::cmd("PTTL").arg(k).query_async(&mut c).await }
            })
            .await?;
        Ok(match ms {
            -2 => KeyTtl::Missing,
            ms => u64::try_from(ms).map_or(KeyTtl::Persistent, |ms| {
                KeyTtl::Expires(Duration::from_millis(ms))
            }),
        })
    }

    /// Atomically returns the value under `key`, or sets it to `value` for
    /// `ttl` if there was none: `(true, value)` if this call set it. One
    /// round trip (the tutorial's GET then SET raced). Retried after a
    /// lost reply: a key that already holds exactly `value` counts as set by
    /// this call, so offer distinct values (a token) when racing callers
    /// must be told apart.
    pub async fn get_or_set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(bool, Vec<u8>)> {
        let k = self.data_key(key)?;
        let ms = ttl_ms(ttl)?;
        let (set, v): (i64, Vec<u8>) = self
            .run_on(&k, Cmd::Script, true, "get-or-set script", |mut c| {
                let mut inv = scripts::GET_OR_SET.key(&k);
                inv.arg(value).arg(ms);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok((set == 1, v))
    }

    /// Atomically adds `by` to the integer under `key`, giving it `ttl` if it
    /// had no expiry (a new counter): the tutorial's INCR then EXPIRE in one step.
    /// Not retried (not idempotent).
    pub async fn incr_with_expiry(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        let k = self.data_key(key)?;
        let ms = ttl_ms(ttl)?;
        self.run_on(
            &k,
            Cmd::Script,
            false,
            "incr-with-expiry script",
            |mut c| {
                let mut inv = scripts::INCR_WITH_EXPIRY.key(&k);
                inv.arg(by).arg(ms);
                async move { inv.invoke_async(&mut c).await }
            },
        )
        .await
    }

    /// Runs a command this crate does not wrap (`PUBLISH`, `SCAN`,
    /// `UNLINK`, ...) through the same path as its own: the per-attempt
    /// deadline, the breaker, the stats (as `OTHER`), and retries only if
    /// `idempotent` says it is safe to send it twice.
    ///
    /// `route` is a Redis key as the command names it (with the namespace:
    /// [`KeySpace::data_key`]): it picks the shard of a sharded store and the
    /// breaker of the owning master on a Cluster. Without one, a standalone
    /// or Cluster store runs it on its one connection (the Cluster client
    /// routes keyless commands itself: `SCAN` then scans one node), and a
    /// sharded store refuses it with [`ErrorKind::InvalidArgument`]. The
    /// arguments are sent as given: keys are not namespaced for you.
    /// Blocking commands (`BLPOP`, `SUBSCRIBE`) would hold the shared
    /// connection and are cut by the deadline: use a connection of your own.
    pub async fn command<T: redis::FromRedisValue>(
        &self,
        route: Option<&str>,
        cmd: redis::Cmd,
        idempotent: bool,
    ) -> Result<T> {
        self.node_for_route(route)?
            .run_routed(route, Cmd::Other, idempotent, "command", |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await
    }

    /// [`RedisStore::command`] for a pipeline (or a `MULTI` transaction with
    /// `redis::pipe().atomic()`), counted as `PIPELINE`. On a Cluster every
    /// key of the pipeline must be in `route`'s slot (use hash tags).
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        route: Option<&str>,
        pipeline: redis::Pipeline,
        idempotent: bool,
    ) -> Result<T> {
        self.node_for_route(route)?
            .run_routed(route, Cmd::Pipeline, idempotent, "pipeline", |mut c| {
                let pipeline = &pipeline;
                async move { pipeline.query_async(&mut c).await }
            })
            .await
    }

    /// Removes every key of this store's namespace (data, version records,
    /// leases, helpers' keys, and locks made with the same namespace), and
    /// no key of another namespace, even one that extends this one's name
    /// (`shop` never touches `shop:eu`), with `SCAN MATCH {namespace}:{*` and `UNLINK`
    /// batch by batch on every node (never `KEYS`, which blocks the
    /// server). Keys written while it runs may survive. How many keys were
    /// removed.
    pub async fn clear_namespace(&self) -> Result<u64> {
        // `{ns}:{*`: every data, internal and helper key starts with `{`
        // after the prefix. `{ns}:*` would also match the namespace
        // `{ns}:eu` (namespaces may hold `:`). Braces are literal in a glob.
        let pattern = format!("{}{{*", glob_escape(self.keyspace().prefix()));
        let nodes = match &self.inner.backend {
            Backend::Single(n) => vec![Arc::clone(n)],
            Backend::Sharded(s) => self.shards(s).nodes.clone(),
        };
        let mut removed = 0;
        for n in nodes {
            removed += n.scan_unlink(&pattern).await?;
        }
        Ok(removed)
    }

    fn node_for_route(&self, route: Option<&str>) -> Result<Arc<Node>> {
        match (&self.inner.backend, route) {
            (Backend::Single(n), _) => Ok(Arc::clone(n)),
            (Backend::Sharded(_), Some(key)) => self.node_for(key),
            (Backend::Sharded(_), None) => Err(Error::new(
                ErrorKind::InvalidArgument,
                "a sharded store needs a route key to pick the shard of a command",
            )),
        }
    }

    /// Adds a standalone node to a sharded store; only keys that the new
    /// node now owns move. Errors for other topologies.
    pub fn add_shard(&self, url: &str) -> Result<()> {
        let Backend::Sharded(lock) = &self.inner.backend else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "add_shard needs a sharded store",
            ));
        };
        let node = Arc::new(Node::standalone(
            url,
            Arc::clone(&self.inner.config),
            Arc::clone(&self.inner.clock),
        )?);
        let mut g = lock.write().unwrap_or_else(|p| p.into_inner());
        let mut nodes = g.nodes.clone();
        if nodes.iter().any(|n| n.name == node.name) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{} is already a shard", node.name),
            ));
        }
        nodes.push(node);
        *g = Arc::new(Shards::new(nodes)?);
        Ok(())
    }

    /// Removes a node from a sharded store; only its keys move.
    pub fn remove_shard(&self, url: &str) -> Result<()> {
        let Backend::Sharded(lock) = &self.inner.backend else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "remove_shard needs a sharded store",
            ));
        };
        let name = crate::config::redact(url);
        let mut g = lock.write().unwrap_or_else(|p| p.into_inner());
        let nodes: Vec<Arc<Node>> = g.nodes.iter().filter(|n| n.name != name).cloned().collect();
        if nodes.len() == g.nodes.len() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{name} is not a shard"),
            ));
        }
        *g = Arc::new(Shards::new(nodes)?);
        Ok(())
    }

    /// Which shard (index into the configured list, name) owns `key` now.
    pub fn shard_of(&self, key: &str) -> Result<(usize, String)> {
        let k = self.data_key(key)?;
        match &self.inner.backend {
            Backend::Single(n) => Ok((0, n.name.clone())),
            Backend::Sharded(s) => {
                let shards = self.shards(s);
                let node = shards.route(&k)?;
                // `route` picks from this same snapshot, so the node is in it;
                // an error, never a made-up index, if that ever breaks.
                let i = shards
                    .nodes
                    .iter()
                    .position(|n| Arc::ptr_eq(n, &node))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Backend,
                            format!("{}: routed to a node outside the shard list", node.name),
                        )
                    })?;
                Ok((i, node.name.clone()))
            }
        }
    }
}

impl Shards {
    fn new(nodes: Vec<Arc<Node>>) -> Result<Shards> {
        let ring = || {
            HashRing::new(nodes.iter().map(|n| (n.name.clone(), 1)))
                .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("sharded store: {e}")))
        };
        let (ring, home) = (ring()?, ring()?);
        Ok(Shards { ring, home, nodes })
    }

    /// The home node of a key, up or down.
    fn home(&self, redis_key: &str) -> Result<Arc<Node>> {
        let tag = hash_tag(redis_key.as_bytes());
        self.home
            .index_for(tag)
            .map(|i| Arc::clone(&self.nodes[i]))
            .ok_or_else(|| Error::new(ErrorKind::InvalidConfig, "a sharded store with no shard"))
    }

    /// The live node for a key. A node whose breaker is open is ejected from
    /// the ring (its keys fail over to the next live node, no other key
    /// moves); once its breaker lets a probe through it is re-admitted, and
    /// the probe decides (twemproxy's auto_eject_hosts with
    /// server_failure_limit = the breaker threshold, server_retry_timeout =
    /// its open time).
    fn route(&self, redis_key: &str) -> Result<Arc<Node>> {
        if self.ring.live_nodes() < self.nodes.len() {
            for (i, n) in self.nodes.iter().enumerate() {
                if !self.ring.is_up(i) && n.breaker_state() != BreakerState::Open {
                    let _ = self.ring.mark_up(i);
                }
            }
        }
        let tag = hash_tag(redis_key.as_bytes());
        loop {
            let Some(i) = self.ring.index_for(tag) else {
                return Err(Error::new(ErrorKind::CircuitOpen, "every shard is down"));
            };
            if self.nodes[i].breaker_state() == BreakerState::Open {
                let _ = self.ring.mark_down(i);
                continue;
            }
            return Ok(Arc::clone(&self.nodes[i]));
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &str {
        match &self.inner.backend {
            Backend::Single(n) => &n.name,
            Backend::Sharded(_) => "sharded",
        }
    }

    // Written out rather than `async fn`: each path boxes a future of its
    // own size. One `async` body would be as large as its largest branch,
    // on every get: 1712 bytes when the batcher's wait was part of it. A
    // smaller box is less to allocate and move, and under 1032 bytes
    // glibc (by default) can serve it from its per-thread cache (`cargo
    // xtask profile l2`).
    fn get<'a, 'b, 'f>(
        &'a self,
        key: &'b str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>>> + Send + 'f>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        // Each path boxes a future of its own size.
        match &self.inner.batcher {
            Some(b) => Box::pin(b.get(self.keyspace().prefix(), key)),
            None => Box::pin(self.get_unbatched(key)),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let k = self.data_key(key)?;
        let ms = ttl_ms(ttl)?;
        self.run_on(&k, Cmd::Set, true, "SET", |mut c| {
            let k = &k;
            async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .exec_async(&mut c)
                    .await
            }
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let k = self.data_key(key)?;
        // Not retried after a possibly lost reply: the retry would find
        // nothing and report "did not exist" for a key this call deleted.
        let n: i64 = self
            .run_on(&k, Cmd::Del, false, "DEL", |mut c| {
                let k = &k;
                async move { redis::cmd("DEL").arg(k).query_async(&mut c).await }
            })
            .await?;
        Ok(n > 0)
    }

    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let k = self.data_key(key)?;
        let ms = ttl_ms(ttl)?;
        // Not retried: a retry after a lost reply would report "not set" for our own write.
        let r: Option<String> = self
            .run_on(&k, Cmd::Set, false, "SET NX", |mut c| {
                let k = &k;
                async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(r.is_some())
    }

    async fn set_if_newer(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let k = self.data_key(key)?;
        let ms = ttl_ms(ttl)?;
        if value.len() < HEADER_LEN || value[0] != MAGIC {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "set_if_newer takes envelope bytes (the version is read from the header)",
            ));
        }
        let written: i64 = self
            .run_on(&k, Cmd::Script, true, "set-if-newer script", |mut c| {
                let mut inv = scripts::SET_IF_NEWER.key(&k);
                inv.arg(value).arg(ms);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(written == 1)
    }

    async fn version(&self, key: &str) -> Result<u64> {
        self.version_impl(key).await
    }

    async fn get_with_version(&self, key: &str) -> Result<(Option<Vec<u8>>, u64)> {
        self.get_with_version_impl(key).await
    }

    async fn fill(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        self.fill_impl(key, value, ttl).await
    }

    async fn invalidate(&self, key: &str, tombstone: Duration) -> Result<u64> {
        self.invalidate_impl(key, tombstone).await
    }

    async fn set_versioned(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        tombstone: Duration,
    ) -> Result<u64> {
        self.set_versioned_impl(key, value, ttl, tombstone).await
    }

    async fn acquire_lease(&self, key: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        self.acquire_lease_impl(key, token, ttl).await
    }

    async fn release_lease(&self, key: &str, token: &[u8]) -> Result<bool> {
        self.release_lease_impl(key, token).await
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ks = keys
            .iter()
            .map(|k| self.data_key(k))
            .collect::<Result<Vec<_>>>()?;
        match &self.inner.backend {
            // On a Cluster, split by master (each through its own breaker);
            // the client splits a part further by slot.
            Backend::Single(node) => node.mget(&ks, "MGET").await.into_iter().collect(),
            Backend::Sharded(s) => {
                let shards = self.shards(s);
                let mut groups: Vec<(Arc<Node>, Vec<usize>, Vec<String>)> = Vec::new();
                for (i, k) in ks.into_iter().enumerate() {
                    let node = shards.route(&k)?;
                    match groups.iter_mut().find(|(n, _, _)| Arc::ptr_eq(n, &node)) {
                        Some((_, idx, gk)) => {
                            idx.push(i);
                            gk.push(k);
                        }
                        None => groups.push((node, vec![i], vec![k])),
                    }
                }
                let answers = join_all(groups.iter().map(|(n, _, gk)| async move {
                    n.mget(gk, "MGET")
                        .await
                        .into_iter()
                        .collect::<Result<Vec<_>>>()
                }))
                .await;
                let mut out = vec![None; keys.len()];
                for ((_, idx, _), answer) in groups.iter().zip(answers) {
                    for (i, v) in idx.iter().zip(answer?) {
                        out[*i] = v;
                    }
                }
                Ok(out)
            }
        }
    }

    async fn set_many(&self, entries: &[StoreEntry<'_>]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(entries.len());
        for e in entries {
            items.push((self.data_key(e.key)?, e.value, ttl_ms(e.ttl)?));
        }
        let mut groups: Vec<(Arc<Node>, Vec<(String, &[u8], u64)>)> = Vec::new();
        for item in items {
            let node = self.node_for(&item.0)?;
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                Some((_, g)) => g.push(item),
                None => groups.push((node, vec![item])),
            }
        }
        let is_cluster = matches!(self.inner.config.topology(), Topology::Cluster(_));
        let results = join_all(groups.iter().map(|(node, group)| async move {
            if is_cluster {
                // One SET per key, sent concurrently on the multiplexed cluster
                // connection: a cluster pipeline must not span slots.
                let sets = group.iter().map(|(k, v, ms)| {
                    node.run_routed(Some(k), Cmd::Set, true, "SET", move |mut c| async move {
                        redis::cmd("SET")
                            .arg(k)
                            .arg(*v)
                            .arg("PX")
                            .arg(*ms)
                            .exec_async(&mut c)
                            .await
                    })
                });
                join_all(sets)
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>>>()
                    .map(|_| ())
            } else {
                node.run(Cmd::Pipeline, true, "SET pipeline", |mut c| async move {
                    let mut p = redis::pipe();
                    for (k, v, ms) in group {
                        p.cmd("SET").arg(k).arg(*v).arg("PX").arg(*ms).ignore();
                    }
                    p.exec_async(&mut c).await
                })
                .await
            }
        }))
        .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let ks = keys
            .iter()
            .map(|k| self.data_key(k))
            .collect::<Result<Vec<_>>>()?;
        let mut groups: Vec<(Arc<Node>, Vec<String>)> = Vec::new();
        for k in ks {
            let node = self.node_for(&k)?;
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                Some((_, g)) => g.push(k),
                None => groups.push((node, vec![k])),
            }
        }
        // Split by master on a Cluster; never resent (the count would be short).
        let counts = join_all(groups.iter().map(|(node, g)| node.del(g))).await;
        counts.into_iter().sum()
    }
}

/// Appends the Redis key of a (validated) user key, `{prefix}{{key}}`, as
/// the next argument of `cmd`: `KeySpace::data_key` without the `String`.
fn write_data_key(cmd: &mut redis::Cmd, prefix: &str, key: &str) {
    use redis::RedisWrite;
    use std::io::Write;
    let mut w = cmd.writer_for_next_arg();
    // Assembled first and written once when it fits (each write into the
    // command is a call and a capacity check); writing into the command's
    // own Vec cannot fail.
    let mut buf = [0u8; 128];
    let len = prefix.len() + key.len() + 2;
    if let Some(out) = buf.get_mut(..len) {
        let (p, rest) = out.split_at_mut(prefix.len());
        p.copy_from_slice(prefix.as_bytes());
        let (open, rest) = rest.split_at_mut(1);
        open[0] = b'{';
        let (k, close) = rest.split_at_mut(key.len());
        k.copy_from_slice(key.as_bytes());
        close[0] = b'}';
        let _ = w.write_all(out);
    } else {
        let _ = w
            .write_all(prefix.as_bytes())
            .and_then(|()| w.write_all(b"{"))
            .and_then(|()| w.write_all(key.as_bytes()))
            .and_then(|()| w.write_all(b"}"));
    }
}

/// Escapes glob characters (`SCAN MATCH`): a namespace cannot hold `*`, `?`
/// or `[`, but may hold a backslash.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GET of the plain path is byte for byte the one built from `data_key`.
    #[test]
    fn a_key_written_in_place_is_the_data_key() {
        let ks = KeySpace::new("shop:eu").unwrap();
        // 128 bytes written at once; 129 and more in parts.
        let fits = "f".repeat(128 - ks.prefix().len() - 2);
        let over = "o".repeat(129 - ks.prefix().len() - 2);
        let max = "m".repeat(larder_core::MAX_KEY_LEN);
        for key in ["order:42", "a", "{x}", "ü", &fits, &over, &max] {
            let mut cmd = redis::Cmd::new();
            cmd.arg("GET");
            write_data_key(&mut cmd, ks.prefix(), key);
            let want = redis::cmd("GET")
                .arg(ks.data_key(key).unwrap())
                .get_packed_command();
            assert_eq!(cmd.get_packed_command(), want, "{key}");
        }
    }

    /// A store on a closed port (nothing is sent), with the batcher or without.
    fn unconnected_store(batch: bool) -> RedisStore {
        let b = RedisConfig::builder(Topology::Standalone("redis://127.0.0.1:1".into()));
        let b = if batch { b.auto_batch(64) } else { b };
        RedisStore::new(b.build().unwrap()).unwrap()
    }

    /// The size of the future `Store::get` boxes, with the batcher or without.
    fn boxed_get_size(batch: bool) -> usize {
        std::mem::size_of_val(&*Store::get(&unconnected_store(batch), "k"))
    }

    /// The store's own get hands out a box, two pointers wide, whatever
    /// the path: a future that `join_all` or a task moves whole stays
    /// small. It was 720 bytes when the store's own get was unboxed.
    #[test]
    fn the_store_s_own_get_is_two_pointers_wide() {
        for batch in [false, true] {
            let store = unconnected_store(batch);
            let size = std::mem::size_of_val(&store.get("k"));
            assert!(
                size <= 2 * std::mem::size_of::<usize>(),
                "{size} bytes, batch {batch}"
            );
        }
    }

    /// A plain get's future (boxed for `dyn Store`) stays under 1 KiB:
    /// by default glibc never serves a box over 1032 bytes from its
    /// per-thread cache. It was 1712 bytes while the batcher's branch and
    /// the connection's making shared its body.
    #[test]
    fn a_plain_get_boxes_less_than_a_kibibyte() {
        let size = boxed_get_size(false);
        assert!(size < 1024, "{size} bytes");
    }

    /// The same for a batched get: the leader's `MGET` is boxed on its own
    /// (once per batch). It was 1184 bytes inline.
    #[test]
    fn a_batched_get_boxes_less_than_a_kibibyte() {
        let size = boxed_get_size(true);
        assert!(size < 1024, "{size} bytes");
    }
}
