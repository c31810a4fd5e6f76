//! One Redis endpoint (a standalone server, or a whole Cluster behind its
//! client): a connection, a breaker, and the rules every command follows.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use larder_core::{Error, ErrorKind, Result, SharedClock};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex as StdMutex, RwLock as StdRwLock};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::OnceCell;

use crate::breaker::{Breaker, BreakerState};
use crate::config::{RedisConfig, redact};
use crate::error::{from_redis, is_node_failure, is_redirect, not_executed};

/// `MOVED`/`ASK` answers followed per call, beyond the retry policy (the
/// cluster client follows none itself: it is built with no retries).
const MAX_REDIRECTS: u32 = 2;
use crate::stats::{Cmd, Stats};

/// A connection to either kind of endpoint; cheap to clone (multiplexed).
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Source {
    Standalone(Box<LazyStandalone>),
    Cluster(Box<LazyCluster>),
}

/// A standalone endpoint's connection manager, made on first use: making
/// one spawns a Tokio task, and a store may be built outside a runtime.
struct LazyStandalone {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: OnceCell<ConnectionManager>,
}

struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
    /// (first slot, last slot, master address), from `CLUSTER SLOTS`.
    slots: StdRwLock<Vec<(u16, u16, String)>>,
    /// One breaker per master address.
    breakers: StdMutex<HashMap<String, Breaker>>,
    /// Set by a node failure: the next attempt re-reads the slot map first,
    /// inside its own deadline (a failed call never waits for the re-read).
    stale: AtomicBool,
}

impl LazyCluster {
    fn owner(&self, slot: u16) -> Option<String> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .find(|(a, b, _)| (*a..=*b).contains(&slot))
            .map(|(_, _, addr)| addr.clone())
    }

    fn breaker(&self, addr: &str, config: &RedisConfig, clock: &SharedClock) -> Breaker {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(addr.to_owned())
            .or_insert_with(|| {
                Breaker::new(
                    &format!("cluster master {addr}"),
                    config.breaker,
                    Arc::clone(clock),
                )
            })
            .clone()
    }

    /// Re-reads the slot map through the cluster connection. On an error
    /// (or an answer with no usable slot) the old map stays.
    async fn refresh_slots(&self, conn: &mut ClusterConnection) -> redis::RedisResult<()> {
        let entries = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<Vec<redis::Value>>>(conn)
            .await?;
        let mut map = Vec::with_capacity(entries.len());
        for e in entries {
            let (Some(a), Some(b), Some(node)) = (e.first(), e.get(1), e.get(2)) else {
                continue;
            };
            let parsed = (
                redis::from_redis_value_ref::<u16>(a),
                redis::from_redis_value_ref::<u16>(b),
                redis::from_redis_value_ref::<(String, u16)>(node).or_else(|_| {
                    redis::from_redis_value_ref::<Vec<redis::Value>>(node).and_then(|v| {
                        Ok((
                            redis::from_redis_value_ref::<String>(
                                v.first().unwrap_or(&redis::Value::Nil),
                            )?,
                            redis::from_redis_value_ref::<u16>(
                                v.get(1).unwrap_or(&redis::Value::Nil),
                            )?,
                        ))
                    })
                }),
            );
            if let (Ok(a), Ok(b), Ok((ip, port))) = parsed {
                map.push((a, b, format!("{ip}:{port}")));
            }
        }
        if map.is_empty() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "CLUSTER SLOTS answered no usable slot range",
            )));
        }
        *self.slots.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }
}

/// An endpoint with its breaker. Every command goes through [`Node::run`].
pub(crate) struct Node {
    pub(crate) name: String,
    /// The URL(s) as given (with credentials): for dedicated connections.
    pub(crate) urls: Vec<String>,
    source: Source,
    pub(crate) breaker: Breaker,
    config: Arc<RedisConfig>,
    clock: SharedClock,
    pub(crate) stats: Arc<Stats>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl Node {
    /// A standalone node; connects lazily (a server that is down at start
    /// is a failed call, not a failed start).
    pub(crate) fn standalone(
        url: &str,
        config: Arc<RedisConfig>,
        clock: SharedClock,
    ) -> Result<Node> {
        let client = open_client(url, &config)?;
        let cm = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            // Node::run puts one hard deadline on every attempt; a second
            // timer per request inside the manager would only cost time.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(std::time::Duration::from_millis(5))
            .set_max_delay(std::time::Duration::from_millis(50));
        Ok(Node {
            name: redact(url),
            urls: vec![url.to_owned()],
            source: Source::Standalone(Box::new(LazyStandalone {
                client,
                config: cm,
                manager: OnceCell::new(),
            })),
            breaker: Breaker::new(&redact(url), config.breaker, Arc::clone(&clock)),
            config,
            clock,
            stats: Arc::new(Stats::default()),
        })
    }

    /// A Redis Cluster behind one node; connects lazily.
    pub(crate) fn cluster(
        urls: &[String],
        config: Arc<RedisConfig>,
        clock: SharedClock,
    ) -> Result<Node> {
        let client = cluster_client(urls, &config, config.response_timeout)?;
        let name = format!(
            "cluster[{}]",
            urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
        );
        Ok(Node {
            urls: urls.to_vec(),
            breaker: Breaker::new(&name, config.breaker, Arc::clone(&clock)),
            name,
            source: Source::Cluster(Box::new(LazyCluster {
                client,
                conn: OnceCell::new(),
                slots: StdRwLock::new(Vec::new()),
                breakers: StdMutex::new(HashMap::new()),
                stale: AtomicBool::new(false),
            })),
            config,
            clock,
            stats: Arc::new(Stats::default()),
        })
    }

    /// The connection, made on first use. Once made it is handed out
    /// without an await; the making (and, on a Cluster after a node
    /// failure, the slot map's re-read) runs in a future of its own on the
    /// heap, so every command's future stays small: `Store` methods box
    /// it, and glibc, by default, never serves a box over 1032 bytes from
    /// its per-thread cache (profiled: `cargo xtask profile l2`, its
    /// `larder` row).
    async fn conn(&self) -> redis::RedisResult<Conn> {
        let ready = match &self.source {
            Source::Standalone(lazy) => lazy.manager.get().map(|m| Conn::Standalone(m.clone())),
            Source::Cluster(lazy) => lazy.conn.get().map(|c| Conn::Cluster(c.clone())),
        };
        let conn = match ready {
            Some(c) => c,
            None => Box::pin(self.connect()).await?,
        };
        if let (Source::Cluster(lazy), Conn::Cluster(c)) = (&self.source, &conn)
            // A load first: a swap would take the flag's cache line for
            // writing on every command of every thread.
            && lazy.stale.load(Ordering::Relaxed)
            && lazy.stale.swap(false, Ordering::Relaxed)
        {
            Box::pin(self.refresh_stale(lazy, c.clone())).await;
        }
        Ok(conn)
    }

    /// Makes the connection (once; concurrent first callers share it).
    async fn connect(&self) -> redis::RedisResult<Conn> {
        match &self.source {
            Source::Standalone(lazy) => {
                let m = lazy
                    .manager
                    .get_or_try_init(|| async {
                        // Lazy itself: connects on the first command.
                        ConnectionManager::new_lazy_with_config(
                            lazy.client.clone(),
                            lazy.config.clone(),
                        )
                    })
                    .await?;
                Ok(Conn::Standalone(m.clone()))
            }
            Source::Cluster(lazy) => {
                let c = lazy
                    .conn
                    .get_or_try_init(|| async {
                        let mut c = lazy.client.get_async_connection().await?;
                        self.refresh_slots(lazy, &mut c).await;
                        Ok::<_, redis::RedisError>(c)
                    })
                    .await?;
                Ok(Conn::Cluster(c.clone()))
            }
        }
    }

    /// After a node failure on a Cluster, re-reads the slot map before the
    /// next command, for at most half a response timeout (the command keeps
    /// the rest of its attempt's deadline). A re-read that does not finish,
    /// because it failed or because its future was dropped (a caller's
    /// timeout, `select!`), stays due. One cut off by that budget counts as
    /// a timed-out `TOPOLOGY` in the stats.
    async fn refresh_stale(&self, lazy: &LazyCluster, mut c: ClusterConnection) {
        /// Marks the map stale again on drop unless the re-read succeeded.
        struct Due<'a> {
            stale: &'a AtomicBool,
            done: bool,
        }
        impl Drop for Due<'_> {
            fn drop(&mut self) {
                if !self.done {
                    self.stale.store(true, Ordering::Relaxed);
                }
            }
        }
        let mut due = Due {
            stale: &lazy.stale,
            done: false,
        };
        let budget = self.config.response_timeout / 2;
        let start = self.clock.now();
        match tokio::time::timeout(budget, self.refresh_slots(lazy, &mut c)).await {
            Ok(ok) => due.done = ok,
            Err(_) => {
                let took = self.clock.now().saturating_duration_since(start);
                self.stats.record(Cmd::Topology, took, true, true);
            }
        }
    }

    /// Re-reads a Cluster's slot map, counted as `TOPOLOGY` in the stats
    /// (an error there means the breakers route by an older map).
    async fn refresh_slots(&self, lazy: &LazyCluster, conn: &mut ClusterConnection) -> bool {
        let start = self.clock.now();
        let r = lazy.refresh_slots(conn).await;
        let took = self.clock.now().saturating_duration_since(start);
        let timeout = r.as_ref().err().is_some_and(redis::RedisError::is_timeout);
        self.stats.record(Cmd::Topology, took, r.is_err(), timeout);
        r.is_ok()
    }

    /// One attempt of a blocking command (the queue's `XREAD BLOCK`) on a connection of its
    /// own that `work` opens and uses: the breaker of `route`, `deadline` on
    /// the whole of it (connecting included), the stats. Never retried.
    pub(crate) async fn run_blocking<T>(
        &self,
        route: Option<&str>,
        cmd: Cmd,
        what: &'static str,
        deadline: Duration,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let breaker = self.breaker_for(route);
        let permit = match breaker.allow() {
            Ok(p) => p,
            Err(e) => {
                self.stats.breaker_rejections.incr();
                return Err(e);
            }
        };
        let start = self.clock.now();
        let result = match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{}: {what}: no answer within {deadline:?}", self.name),
            )),
        };
        let took = self.clock.now().saturating_duration_since(start);
        let failed = result.as_ref().err().is_some_and(is_node_failure);
        let timeout = result.as_ref().err().is_some_and(Error::is_timeout);
        self.stats.record(cmd, took, result.is_err(), timeout);
        breaker.record(permit, failed);
        result
    }

    /// The README's worst case of one call on this node: every attempt
    /// (retries, and on a Cluster the redirects followed) within connect +
    /// response timeout, and the largest backoff between attempts.
    pub(crate) fn call_deadline(&self) -> Duration {
        let redirects = if self.is_cluster() { MAX_REDIRECTS } else { 0 };
        let attempts = self.config.retry.max_retries + 1 + redirects;
        (self.config.connect_timeout + self.config.response_timeout) * attempts
            + self.config.retry.max_delay * (attempts - 1)
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Every breaker of this node: one, or (Cluster) the cluster-wide one
    /// for multi-slot commands and one per master.
    pub(crate) fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        let mut out = vec![(self.breaker.name().to_owned(), self.breaker.state())];
        if let Source::Cluster(lazy) = &self.source {
            let map = lazy.breakers.lock().unwrap_or_else(|p| p.into_inner());
            let mut masters: Vec<(String, BreakerState)> = map
                .values()
                .map(|b| (b.name().to_owned(), b.state()))
                .collect();
            masters.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(masters);
        }
        out
    }

    /// The breaker guarding a command on `route` (a Redis key): on a Cluster,
    /// the breaker of the master owning its slot, when known.
    /// Borrowed for a standalone node: no reference counts touched per call.
    fn breaker_for(&self, route: Option<&str>) -> Cow<'_, Breaker> {
        if let (Source::Cluster(lazy), Some(addr)) = (&self.source, self.owner_of(route)) {
            return Cow::Owned(lazy.breaker(&addr, &self.config, &self.clock));
        }
        Cow::Borrowed(&self.breaker)
    }

    /// On a Cluster, the address of the master that owns `route`'s slot, when known.
    fn owner_of(&self, route: Option<&str>) -> Option<String> {
        match (&self.source, route) {
            (Source::Cluster(lazy), Some(key)) => lazy.owner(larder_ring::keyslot(key.as_bytes())),
            _ => None,
        }
    }

    /// Groups `keys` (Redis keys) by the master that owns them: on a Cluster,
    /// one group per known owner plus one for keys whose owner is not known
    /// yet (`None`: the cluster-wide breaker); elsewhere, one group. Each
    /// group is its indices into `keys` and the key that routes it.
    fn groups_by_owner<K: AsRef<str>>(&self, keys: &[K]) -> Vec<(Option<String>, Vec<usize>)> {
        let mut groups: Vec<(Option<String>, Option<String>, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
            let owner = self.owner_of(Some(k));
            match groups.iter_mut().find(|(o, _, _)| *o == owner) {
                Some((_, _, idx)) => idx.push(i),
                None => {
                    let route = owner.is_some().then(|| k.to_owned());
                    groups.push((owner, route, vec![i]));
                }
            }
        }
        groups
            .into_iter()
            .map(|(_, route, idx)| (route, idx))
            .collect()
    }

    /// The address of a `MOVED`/`ASK` that points at the master our slot
    /// map already names as the slot's owner: no news, the client could not
    /// reach that master.
    fn redirect_to_known_owner(&self, e: &redis::RedisError) -> Option<String> {
        let Source::Cluster(lazy) = &self.source else {
            return None;
        };
        let (addr, slot) = e.redirect_node()?;
        (lazy.owner(slot).as_deref() == Some(addr)).then(|| addr.to_owned())
    }

    /// Removes every key matching `pattern`, a `SCAN` batch at a time (never
    /// `KEYS`), each batch by `UNLINK`; on a Cluster, on every master. How
    /// many keys were removed. Each call has its deadline and breaker.
    pub(crate) async fn scan_unlink(&self, pattern: &str) -> Result<u64> {
        let targets: Vec<Option<(String, u16)>> = match &self.source {
            Source::Standalone(_) => vec![None],
            Source::Cluster(lazy) => {
                // The first command loads the slot map.
                self.run(Cmd::Other, true, "PING", |mut c| async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                })
                .await?;
                let slots = lazy.slots.read().unwrap_or_else(|p| p.into_inner());
                let mut masters: Vec<String> = slots.iter().map(|(_, _, a)| a.clone()).collect();
                masters.sort();
                masters.dedup();
                masters
                    .into_iter()
                    .filter_map(|a| {
                        let (host, port) = a.rsplit_once(':')?;
                        Some(Some((host.to_owned(), port.parse().ok()?)))
                    })
                    .collect()
            }
        };
        let mut removed = 0;
        for target in &targets {
            let mut cursor: u64 = 0;
            loop {
                // Keys as bytes: a key that is not UTF-8 is removed too.
                let (next, keys): (u64, Vec<Vec<u8>>) = self
                    .run(Cmd::Other, true, "SCAN", |c| async move {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000);
                        match (c, target) {
                            (Conn::Cluster(mut cc), Some((host, port))) => {
                                let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                                    redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                        host: host.clone(),
                                        port: *port,
                                    },
                                );
                                let v = cc.route_command(cmd, routing).await?;
                                Ok(redis::from_redis_value(v)?)
                            }
                            (mut c, _) => cmd.query_async(&mut c).await,
                        }
                    })
                    .await?;
                if !keys.is_empty() {
                    let keys = &keys;
                    // Not resent: the count would be short after a lost reply.
                    removed += self
                        .run(Cmd::Del, false, "UNLINK", |mut c| async move {
                            redis::cmd("UNLINK")
                                .arg(keys)
                                .query_async::<u64>(&mut c)
                                .await
                        })
                        .await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// `DEL` of `keys`, how many existed. On a Cluster split by master, each
    /// part through that master's breaker. Not retried after a possibly
    /// lost reply (the count would be short).
    pub(crate) async fn del(&self, keys: &[String]) -> Result<u64> {
        let groups = self.groups_by_owner(keys);
        let counts = join_all(groups.iter().map(|(route, idx)| {
            let part: Vec<&String> = idx.iter().map(|&i| &keys[i]).collect();
            async move {
                self.run_routed(route.as_deref(), Cmd::Del, false, "DEL", |mut c| {
                    let part = &part;
                    async move { redis::cmd("DEL").arg(part).query_async::<u64>(&mut c).await }
                })
                .await
            }
        }))
        .await;
        counts.into_iter().sum()
    }

    /// `MGET` of `keys`, one answer per key. On a Cluster the keys are split
    /// by master and each part goes through that master's breaker
    /// concurrently, so a dead master fails only its own keys. One node
    /// gets one `MGET`, no grouping.
    pub(crate) async fn mget<K: AsRef<str> + Sync>(
        &self,
        keys: &[K],
        what: &'static str,
    ) -> Vec<Result<Option<Vec<u8>>>> {
        if !self.is_cluster() {
            return self.mget_part(None, keys, what).await;
        }
        let groups = self.groups_by_owner(keys);
        let answers = join_all(groups.iter().map(|(route, idx)| {
            let part: Vec<&str> = idx.iter().map(|&i| keys[i].as_ref()).collect();
            async move { self.mget_part(route.as_deref(), &part, what).await }
        }))
        .await;
        let mut out: Vec<Result<Option<Vec<u8>>>> = (0..keys.len()).map(|_| Ok(None)).collect();
        for ((_, idx), answers) in groups.iter().zip(answers) {
            for (&i, answer) in idx.iter().zip(answers) {
                out[i] = answer;
            }
        }
        out
    }

    /// One `MGET` of `keys` through `route`'s breaker: one answer per key,
    /// the same error for each when the command failed or answered a
    /// different number of values.
    async fn mget_part<K: AsRef<str> + Sync>(
        &self,
        route: Option<&str>,
        keys: &[K],
        what: &'static str,
    ) -> Vec<Result<Option<Vec<u8>>>> {
        let answer = self
            .run_routed(route, Cmd::MGet, true, what, |mut c| {
                let mut cmd = redis::cmd("MGET");
                for k in keys {
                    cmd.arg(k.as_ref());
                }
                async move { cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut c).await }
            })
            .await;
        match answer {
            Ok(values) if values.len() == keys.len() => values.into_iter().map(Ok).collect(),
            Ok(values) => {
                let e = Error::new(
                    ErrorKind::Backend,
                    format!("{what}: {} answers for {} keys", values.len(), keys.len()),
                );
                keys.iter().map(|_| Err(e.clone())).collect()
            }
            Err(e) => keys.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// Runs one command: breaker check, a per-attempt deadline, stats, and
    /// retries with backoff: idempotent commands after node failures, every
    /// command after an error that proves it did not run
    /// ([`not_executed`]: a refused connection, `MOVED`, `TRYAGAIN`, ...).
    /// A command that is not idempotent is never sent again after its
    /// reply may have been lost.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        cmd: Cmd,
        idempotent: bool,
        what: &'static str,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_routed(None, cmd, idempotent, what, f).await
    }

    /// [`Node::run`] for a command on one key: on a Cluster it goes through
    /// the breaker of the master that owns the key.
    pub(crate) async fn run_routed<T, F, Fut>(
        &self,
        route: Option<&str>,
        cmd: Cmd,
        idempotent: bool,
        what: &'static str,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let breaker = self.breaker_for(route);
        let mut retries_left = self.config.retry.max_retries;
        let mut redirects_left = MAX_REDIRECTS;
        let mut attempt = 0;
        loop {
            let permit = match breaker.allow() {
                Ok(p) => p,
                Err(e) => {
                    self.stats.breaker_rejections.incr();
                    return Err(e);
                }
            };
            let start = self.clock.now();
            let deadline = self.config.response_timeout + self.config.connect_timeout;
            let outcome = tokio::time::timeout(deadline, async {
                let conn = self.conn().await?;
                f(conn).await
            })
            .await;
            let (mut unsent, mut redirected) = (false, false);
            let result = match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    unsent = not_executed(&e);
                    redirected = is_redirect(&e);
                    if let Some(addr) = self.redirect_to_known_owner(&e) {
                        // Redirected to the master that already owns the slot:
                        // the client could not reach it and asked another
                        // node, which points back. The owner is unreachable.
                        redirected = false;
                        Err(Error::with_source(
                            ErrorKind::Connection,
                            format!("{}: {what}: master {addr} is unreachable", self.name),
                            e,
                        ))
                    } else {
                        Err(from_redis(e, what))
                    }
                }
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{}: {what}: no answer within {deadline:?}", self.name),
                )),
            };
            let took = self.clock.now().saturating_duration_since(start);
            let failed = result.as_ref().err().is_some_and(is_node_failure);
            self.stats.record(
                cmd,
                took,
                result.is_err(),
                result.as_ref().err().is_some_and(Error::is_timeout),
            );
            breaker.record(permit, failed);
            if failed && let Source::Cluster(lazy) = &self.source {
                // The topology may have changed: the next attempt (a retry,
                // or the next call) re-reads who owns what, in its deadline.
                lazy.stale.store(true, Ordering::Relaxed);
            }
            match result {
                Err(e) if redirected && redirects_left > 0 => {
                    // Routing, not a failure: the client has learnt the new
                    // owner (or will on the next slot refresh).
                    redirects_left -= 1;
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    attempt += 1;
                    drop(e);
                }
                Err(e) if (unsent || (failed && idempotent)) && retries_left > 0 => {
                    retries_left -= 1;
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    attempt += 1;
                    drop(e);
                }
                other => return other,
            }
        }
    }
}

/// A Cluster client for `urls` with `response_timeout`, no retries of its
/// own, and the configured root certificate (if any) for `rediss://`.
pub(crate) fn cluster_client(
    urls: &[String],
    config: &RedisConfig,
    response_timeout: Duration,
) -> Result<ClusterClient> {
    let builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(config.connect_timeout)
        .response_timeout(response_timeout)
        // Node::run is the only retry: it resends idempotent commands
        // only. The client's own retries would resend anything after a
        // lost reply (SET NX, increments, queue pushes), and would also
        // hide failures from the breaker.
        .retries(0);
    #[cfg(feature = "tls")]
    let builder = match &config.tls_root_cert {
        Some(root) => builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root.clone()),
        }),
        None => builder,
    };
    builder
        .build()
        .map_err(|e| from_redis(e, "invalid Redis Cluster configuration"))
}

/// A client for `url`, trusting the configured root certificate if any.
pub(crate) fn open_client(url: &str, config: &RedisConfig) -> Result<redis::Client> {
    #[cfg(feature = "tls")]
    if let Some(root) = &config.tls_root_cert {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root.clone()),
        };
        return redis::Client::build_with_tls(url, certs)
            .map_err(|e| from_redis(e, "invalid Redis TLS configuration"));
    }
    let _ = config;
    redis::Client::open(url).map_err(|e| from_redis(e, "invalid Redis URL"))
}
