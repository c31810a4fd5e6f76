//! [`LockManager`]: acquiring locks on one Redis or on N independent
//! masters (Redlock).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use larder_core::{Error, ErrorKind, KeySpace, Result, SharedClock, SystemClock};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::guard::{Grant, LockGuard};
use crate::scripts;
use crate::wakeup::Subscriber;

/// The longest lock TTL accepted.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Lock settings.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct LockConfig {
    /// Key namespace (default `larder`): a lock `name` lives at
    /// `{ns}:{name}:lock` (with `{ns}:{name}:fence`), never at a data key.
    pub namespace: String,
    /// Lease time (default 10 s). A holder that stops renewing loses the lock
    /// after this long.
    pub ttl: Duration,
    /// How long one node may take to answer (default 50 ms); keep it small
    /// against the TTL so a dead node cannot eat the validity. Must be
    /// below a third of `ttl - drift` (checked when the manager is made).
    pub node_timeout: Duration,
    /// How long opening a connection may take (default 1 s, as the
    /// store's). A connection opens in the background: an attempt still
    /// waits at most `node_timeout` for it.
    pub connect_timeout: Duration,
    /// Attempts after the first in [`LockManager::acquire`] (default 3).
    pub retry_count: u32,
    /// Delay between attempts, jittered by +/-50% (default 100 ms).
    pub retry_delay: Duration,
    /// Renew the lease at TTL/3 while the guard lives (default on). Off: a
    /// fixed lease; [`LockGuard::lost`] fires when it ends.
    pub watchdog: bool,
    /// Issue fencing tokens (default on).
    pub fencing: bool,
    /// Ignore votes of nodes that restarted (new `run_id`) less than
    /// `max_ttl` ago (default on).
    pub quarantine: bool,
    /// The longest TTL any client uses, for quarantine (default: `ttl`).
    pub max_ttl: Option<Duration>,
    /// While waiting, poll this often even without a release message
    /// (pub/sub messages can be lost; default 250 ms).
    pub wait_poll: Duration,
    /// Wake waiters by the holder's release message (default on). Off:
    /// polling only (for servers whose ACLs forbid SUBSCRIBE).
    pub pubsub_wakeup: bool,
    /// Trust this CA certificate (PEM) for `rediss://` nodes instead of the
    /// system's roots (`tls` feature), as larder-redis's
    /// `RedisConfigBuilder::tls_root_cert`. Credentials (an ACL user and
    /// password, or a password alone) go in the URL, as for the store:
    /// `rediss://user:password@host:port/db`.
    pub tls_root_cert: Option<Vec<u8>>,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            namespace: larder_core::DEFAULT_NAMESPACE.to_owned(),
            ttl: Duration::from_secs(10),
            node_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            retry_count: 3,
            retry_delay: Duration::from_millis(100),
            watchdog: true,
            fencing: true,
            quarantine: true,
            max_ttl: None,
            wait_poll: Duration::from_millis(250),
            pubsub_wakeup: true,
            tls_root_cert: None,
        }
    }
}

impl LockConfig {
    /// The defaults with this lease time.
    pub fn with_ttl(ttl: Duration) -> Self {
        LockConfig {
            ttl,
            ..Self::default()
        }
    }

    /// Clock drift allowance of the Redlock page: 1% of the TTL plus 2 ms.
    pub fn drift(&self) -> Duration {
        self.ttl / 100 + Duration::from_millis(2)
    }
}

pub(crate) struct Node {
    pub(crate) name: String,
    client: redis::Client,
    pub(crate) conn: ConnectionManager,
    last_run_id: Mutex<Option<String>>,
}

pub(crate) struct Inner {
    pub(crate) nodes: Vec<Node>,
    pub(crate) config: LockConfig,
    pub(crate) keys: KeySpace,
    pub(crate) clock: SharedClock,
    subscriber: Subscriber,
}

/// Acquires locks on one Redis server, or on N independent masters with
/// Redlock (quorum N/2+1). Cheap to clone.
#[derive(Clone)]
pub struct LockManager {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for LockManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockManager")
            .field(
                "nodes",
                &self
                    .inner
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("ttl", &self.inner.config.ttl)
            .finish()
    }
}

/// Runs one request per node and collects answers until `quorum` of them
/// pass `ok`, or until so many failed that `quorum` cannot be reached: a
/// minority of slow or dead nodes is never waited for. Requests still in
/// flight are dropped (one that already reached its node is harmless: it
/// holds our token, released with the rest).
async fn until_quorum<T, F: Future<Output = T>>(
    requests: impl IntoIterator<Item = F>,
    quorum: usize,
    ok: impl Fn(&T) -> bool,
) -> Vec<T> {
    let mut pending: FuturesUnordered<F> = requests.into_iter().collect();
    let mut answers = Vec::with_capacity(pending.len());
    let mut passed = 0;
    while passed < quorum && passed + pending.len() >= quorum {
        let Some(a) = pending.next().await else { break };
        if ok(&a) {
            passed += 1;
        }
        answers.push(a);
    }
    answers
}

/// An acquisition in progress: if it is dropped (cancelled) before it
/// handed its token to a guard, whatever it took is released in the
/// background, not left for its TTL.
struct Attempt<'a> {
    manager: &'a LockManager,
    key: &'a str,
    channel: &'a str,
    token: &'a str,
    armed: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let m = self.manager.clone();
            let (key, channel, token) = (
                self.key.to_owned(),
                self.channel.to_owned(),
                self.token.to_owned(),
            );
            rt.spawn(async move {
                m.release_everywhere(&key, &channel, &token).await;
            });
        }
    }
}

/// A condition of a lock node that weakens what the lock guarantees,
/// found by [`LockManager::check_nodes`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeWarning {
    /// The node's `maxmemory-policy` may evict keys (anything but
    /// `noeviction`): under memory pressure a lock key can vanish while held
    /// (a second client then gets the lock), and a fence key can vanish
    /// (fencing then relies on the server clock alone). Use `noeviction`, or
    /// a Redis dedicated to locks.
    Evicts {
        /// The node (password redacted).
        node: String,
        /// Its policy.
        policy: String,
    },
    /// `CONFIG GET maxmemory-policy` was refused (ACLs, managed services)
    /// or did not answer within the node timeout: check it by other means.
    Unchecked {
        /// The node (password redacted).
        node: String,
    },
}

/// The outcome of one node's acquire attempt.
struct Vote {
    acquired: bool,
    fence: Option<u64>,
}

/// 128 bits from the operating system's CSPRNG: lock tokens are
/// capabilities (whoever knows one can release or extend the lock), so
/// they must not be predictable from earlier ones.
fn random_u128() -> Result<u128> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        Error::new(
            ErrorKind::Unsupported,
            format!("no operating-system randomness for lock tokens: {e}"),
        )
    })?;
    Ok(u128::from_le_bytes(b))
}

/// A client for `url` with the configured TLS roots; the same rules as
/// larder-redis's: `rediss://` needs the `tls` feature.
fn open_client(url: &str, config: &LockConfig) -> Result<redis::Client> {
    let invalid = |why: String| Error::new(ErrorKind::InvalidConfig, why);
    if url.starts_with("rediss://") && !cfg!(feature = "tls") {
        return Err(invalid(format!(
            "{}: rediss:// needs larder-lock's `tls` feature",
            redacted(url)
        )));
    }
    #[cfg(feature = "tls")]
    if let Some(root) = &config.tls_root_cert {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root.clone()),
        };
        return redis::Client::build_with_tls(url, certs).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig,
                "invalid Redis TLS configuration",
                e,
            )
        });
    }
    #[cfg(not(feature = "tls"))]
    if config.tls_root_cert.is_some() {
        return Err(invalid(
            "tls_root_cert needs larder-lock's `tls` feature".to_owned(),
        ));
    }
    redis::Client::open(url)
        .map_err(|e| Error::with_source(ErrorKind::InvalidConfig, "invalid Redis URL", e))
}

fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***@{}", &url[..s + 3], &url[a + 1..]),
        _ => url.to_owned(),
    }
}

impl LockManager {
    /// A manager over `urls`: one URL is a single-instance lock; several
    /// are independent masters for Redlock. Connects lazily.
    pub fn new(urls: &[&str], config: LockConfig) -> Result<Self> {
        Self::with_clock(urls, config, SystemClock::shared())
    }

    /// As [`LockManager::new`] with a clock for validity deadlines.
    pub fn with_clock(urls: &[&str], config: LockConfig, clock: SharedClock) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a lock manager needs at least one node",
            ));
        }
        if config.ttl < Duration::from_millis(10) || config.ttl > MAX_TTL {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "the lock TTL must be between 10 ms and 30 days",
            ));
        }
        // Each phase of an acquisition (votes, fence read, fence write) and
        // each renewal waits at most one node timeout: three of them must
        // fit in the lease, and a renewal started at TTL/3 ends before the
        // deadline.
        let lease = config.ttl.saturating_sub(config.drift());
        if config.connect_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "connect_timeout must be non-zero",
            ));
        }
        if config.node_timeout.is_zero() || config.node_timeout.saturating_mul(3) >= lease {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "node_timeout {:?} must be non-zero and below a third of TTL - drift ({:?})",
                    config.node_timeout, lease
                ),
            ));
        }
        let keys = KeySpace::new(&config.namespace)?;
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            let client = open_client(url, &config)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(None)
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(50));
            let conn =
                ConnectionManager::new_lazy_with_config(client.clone(), cfg).map_err(|e| {
                    Error::with_source(ErrorKind::InvalidConfig, "connection manager", e)
                })?;
            nodes.push(Node {
                name: redacted(url),
                client,
                conn,
                last_run_id: Mutex::new(None),
            });
        }
        Ok(LockManager {
            inner: Arc::new(Inner {
                nodes,
                config,
                keys,
                clock,
                subscriber: Subscriber::default(),
            }),
        })
    }

    /// Checks every node's configuration for conditions that weaken the
    /// lock: today, an eviction policy other than `noeviction`. Empty when
    /// nothing was found. Call it at start-up and log what it returns.
    pub async fn check_nodes(&self) -> Vec<NodeWarning> {
        let checks = self.inner.nodes.iter().map(|n| async move {
            let mut c = n.conn.clone();
            let reply = tokio::time::timeout(
                self.connect_timeout() + self.inner.config.node_timeout,
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async::<Vec<String>>(&mut c),
            )
            .await;
            match reply {
                Ok(Ok(v)) if v.len() == 2 => (v[1] != "noeviction").then(|| NodeWarning::Evicts {
                    node: n.name.clone(),
                    policy: v[1].clone(),
                }),
                _ => Some(NodeWarning::Unchecked {
                    node: n.name.clone(),
                }),
            }
        });
        join_all(checks).await.into_iter().flatten().collect()
    }

    /// Votes needed: N/2 + 1.
    pub fn quorum(&self) -> usize {
        self.inner.nodes.len() / 2 + 1
    }

    /// The configuration.
    pub fn config(&self) -> &LockConfig {
        &self.inner.config
    }

    /// The lock key, fence key and release channel of `name`:
    /// `{ns}:{name}:lock`, `{ns}:{name}:fence`, `{ns}:{name}:released`.
    /// They are internal keys ([`KeySpace::internal_key`]): a data key
    /// `{ns}:{key}` always ends with the closing brace, so no user key of
    /// the cache can land on them, and they share the hash tag `{name}`
    /// (one Cluster slot). Names are user keys without braces.
    pub(crate) fn lock_keys(&self, name: &str) -> Result<(String, String, String)> {
        if name.contains(['{', '}']) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                "a lock name must not contain braces",
            ));
        }
        Ok((
            self.inner.keys.internal_key(name, "lock")?,
            self.inner.keys.internal_key(name, "fence")?,
            self.inner.keys.internal_key(name, "released")?,
        ))
    }

    /// Whether a node's vote must not count: it restarted within `max_ttl`,
    /// or (with quarantine on) it could not be checked: an unknown restart
    /// is treated as a restart.
    async fn quarantined(&self, node: &Node) -> bool {
        if !self.inner.config.quarantine {
            return false;
        }
        let mut c = node.conn.clone();
        let info = tokio::time::timeout(
            self.inner.config.node_timeout,
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut c),
        )
        .await;
        let Ok(Ok(info)) = info else { return true };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.trim().to_owned())
        };
        let (Some(run_id), Some(uptime)) = (field("run_id"), field("uptime_in_seconds")) else {
            return true;
        };
        let uptime = Duration::from_secs(uptime.parse().unwrap_or(u64::MAX));
        let max_ttl = self.inner.config.max_ttl.unwrap_or(self.inner.config.ttl);
        let mut last = node.last_run_id.lock().unwrap_or_else(|p| p.into_inner());
        let restarted = last.as_ref().is_some_and(|prev| *prev != run_id);
        if restarted && uptime < max_ttl {
            // Keep the old run_id until the quarantine ends, so every
            // attempt in the window sees the restart.
            return true;
        }
        *last = Some(run_id);
        false
    }

    async fn vote(
        &self,
        node: &Node,
        key: &str,
        fence_key: &str,
        token: &str,
        single_fence: bool,
    ) -> Vote {
        let ttl_ms = self.inner.config.ttl.as_millis() as u64;
        let mut c = node.conn.clone();
        let mut inv = scripts::ACQUIRE.key(key);
        inv.key(fence_key)
            .arg(token)
            .arg(ttl_ms)
            .arg(if single_fence { "1" } else { "0" });
        let acquire = tokio::time::timeout(
            self.inner.config.node_timeout,
            inv.invoke_async::<i64>(&mut c),
        );
        // The restart check runs as a task of its own: when the attempt
        // stops at a majority (or is cancelled), a slow node's answer still
        // updates what this manager knows of its run_id, so a later
        // restart of that node is recognised.
        let quarantine = if self.inner.config.quarantine {
            let m = self.clone();
            let idx = self
                .inner
                .nodes
                .iter()
                .position(|n| std::ptr::eq(n, node))
                .unwrap_or(0);
            Some(tokio::spawn(async move {
                m.quarantined(&m.inner.nodes[idx]).await
            }))
        } else {
            None
        };
        let check = async {
            match quarantine {
                Some(task) => task.await.unwrap_or(true),
                None => false,
            }
        };
        let (quarantined, outcome) = tokio::join!(check, acquire);
        match outcome {
            Ok(Ok(v)) if v >= 0 => Vote {
                // A quarantined node may hold our key; it is released with the rest.
                acquired: !quarantined,
                fence: (single_fence && v > 0).then_some(v as u64),
            },
            _ => Vote {
                acquired: false,
                fence: None,
            },
        }
    }

    /// Releases `token` on every node (each within the node timeout, retried
    /// once after a connection error: the script is idempotent); how many
    /// nodes released it.
    pub(crate) async fn release_everywhere(&self, key: &str, channel: &str, token: &str) -> usize {
        let t = self
            .inner
            .config
            .node_timeout
            .max(Duration::from_millis(100));
        let releases = self.inner.nodes.iter().map(|n| async move {
            for _ in 0..2 {
                let mut c = n.conn.clone();
                let mut inv = scripts::RELEASE.key(key);
                inv.arg(token).arg(channel);
                match tokio::time::timeout(t, inv.invoke_async::<i64>(&mut c)).await {
                    Ok(Ok(v)) => return v == 1,
                    Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => continue,
                    _ => return false,
                }
            }
            false
        });
        join_all(releases).await.into_iter().filter(|r| *r).count()
    }

    /// Extends `token` on every node; how many extended it.
    pub(crate) async fn extend_everywhere(&self, key: &str, token: &str) -> usize {
        let ttl_ms = self.inner.config.ttl.as_millis() as u64;
        let extends = self.inner.nodes.iter().map(|n| async move {
            // Extending our own lock is idempotent: retry once after a cut.
            for _ in 0..2 {
                let mut c = n.conn.clone();
                let mut inv = scripts::EXTEND.key(key);
                inv.arg(token).arg(ttl_ms);
                match tokio::time::timeout(
                    self.inner.config.node_timeout,
                    inv.invoke_async::<i64>(&mut c),
                )
                .await
                {
                    Ok(Ok(v)) => return v == 1,
                    Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => continue,
                    _ => return false,
                }
            }
            false
        });
        join_all(extends).await.into_iter().filter(|r| *r).count()
    }

    /// Redlock fencing: read the fence and the clock (`TIME`, in
    /// microseconds) of every node, take the maximum of a majority's
    /// answers, and write `max(fence + 1, time)` to a majority (a
    /// max-register write). Any two majorities intersect, so tokens grow
    /// while nodes keep their state; the clock floor keeps them growing
    /// after a majority lost its fence keys (restarts without persistence,
    /// evictions), as long as server clocks do not step back.
    async fn quorum_fence(&self, fence_key: &str) -> Option<u64> {
        let t = self.inner.config.node_timeout;
        let reads = self.inner.nodes.iter().map(|n| async move {
            let mut c = n.conn.clone();
            let inv = scripts::FENCE_READ.key(fence_key);
            tokio::time::timeout(t, inv.invoke_async::<(u64, u64)>(&mut c))
                .await
                .ok()
                .and_then(Result::ok)
        });
        let seen: Vec<(u64, u64)> = until_quorum(reads, self.quorum(), Option::is_some)
            .await
            .into_iter()
            .flatten()
            .collect();
        if seen.len() < self.quorum() {
            return None;
        }
        let fence = seen.iter().map(|s| s.0).max().unwrap_or(0);
        let time = seen.iter().map(|s| s.1).max().unwrap_or(0);
        let next = fence.saturating_add(1).max(time);
        let writes = self.inner.nodes.iter().map(|n| async move {
            let mut c = n.conn.clone();
            let mut inv = scripts::FENCE_MAX.key(fence_key);
            inv.arg(next);
            tokio::time::timeout(t, inv.invoke_async::<u64>(&mut c))
                .await
                .ok()
                .and_then(Result::ok)
        });
        let acks = until_quorum(writes, self.quorum(), |a| *a == Some(next))
            .await
            .into_iter()
            .filter(|a| *a == Some(next))
            .count();
        (acks >= self.quorum()).then_some(next)
    }

    /// One attempt: `Ok(Some(guard))`, or `Ok(None)` if a quorum was not
    /// reached within the validity (everything taken is released).
    pub async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>> {
        let (key, fence_key, channel) = self.lock_keys(name)?;
        let token = format!("{:032x}", random_u128()?);
        let holder = random_u128()?;
        let cfg = &self.inner.config;
        let single = self.inner.nodes.len() == 1;
        // The clock is read before the first request: validity is measured
        // from the moment any node could have granted the lock.
        let start = self.inner.clock.now();
        // From here on, a cancelled attempt releases what it took.
        let mut attempt = Attempt {
            manager: self,
            key: &key,
            channel: &channel,
            token: &token,
            armed: true,
        };
        let votes = until_quorum(
            self.inner
                .nodes
                .iter()
                .map(|n| self.vote(n, &key, &fence_key, &token, single && cfg.fencing)),
            self.quorum(),
            |v| v.acquired,
        )
        .await;
        let granted = votes.iter().filter(|v| v.acquired).count();
        let mut fence = votes.iter().find_map(|v| v.fence).unwrap_or(0);
        let mut ok = granted >= self.quorum();
        if ok && cfg.fencing && !single {
            match self.quorum_fence(&fence_key).await {
                Some(f) => fence = f,
                None => ok = false,
            }
        }
        // Redlock's validity, TTL - elapsed - drift, counts from the end of
        // the acquisition (start + elapsed): the lock is ours until
        // start + TTL - drift, if that is still ahead.
        let elapsed = self.inner.clock.now().saturating_duration_since(start);
        let lease = cfg.ttl.saturating_sub(cfg.drift());
        if !(ok && elapsed < lease) {
            self.release_everywhere(&key, &channel, &token).await;
            attempt.armed = false;
            return Ok(None);
        }
        // The guard takes the token over.
        attempt.armed = false;
        drop(attempt);
        Ok(Some(LockGuard::start(
            self.clone(),
            Grant {
                name: name.to_owned(),
                key,
                channel,
                token,
                fence,
                holder,
                deadline: start + lease,
            },
        )))
    }

    /// Tries up to `1 + retry_count` times with jittered delays; an
    /// [`ErrorKind::Lock`] error if the lock stays taken.
    pub async fn acquire(&self, name: &str) -> Result<LockGuard> {
        let cfg = &self.inner.config;
        for attempt in 0..=cfg.retry_count {
            if let Some(g) = self.try_acquire(name).await? {
                return Ok(g);
            }
            if attempt < cfg.retry_count {
                let base = u64::try_from(cfg.retry_delay.as_millis()).unwrap_or(u64::MAX);
                let jitter = fastrand::u64(base / 2..=base.saturating_add(base / 2));
                tokio::time::sleep(Duration::from_millis(jitter)).await;
            }
        }
        Err(Error::new(
            ErrorKind::Lock,
            format!("lock {name:?} is held elsewhere"),
        ))
    }

    /// Waits up to `max_wait` for the lock: tries at once; if it is taken,
    /// waits to be woken by the holder's release message (pub/sub, on one
    /// subscriber connection per manager, opened on the first contended
    /// wait) and polls every `wait_poll` as well, because messages can be
    /// lost (and the subscriber connection can drop). Every network wait
    /// inside is bounded by what is left of `max_wait`, measured on the
    /// manager's clock, so a zero `max_wait` gives up at the first wait
    /// (use [`LockManager::try_acquire`] for one full attempt). An
    /// [`ErrorKind::Timeout`] error when the wait ends without the lock.
    pub async fn acquire_wait(&self, name: &str, max_wait: Duration) -> Result<LockGuard> {
        let (_, _, channel) = self.lock_keys(name)?;
        // Time is the manager's clock; `None`: a wait too long to represent.
        let deadline = self.inner.now().checked_add(max_wait);
        let timeout = || {
            Error::new(
                ErrorKind::Timeout,
                format!("lock {name:?} not acquired within {max_wait:?}"),
            )
        };
        // What is left of max_wait, for bounding network waits (`None`: unbounded).
        let left = || deadline.map(|d| d.saturating_duration_since(self.inner.now()));
        let mut wake: Option<crate::wakeup::Wake> = None;
        loop {
            // Messages from now on wake the sleep below.
            if let Some(w) = wake.as_mut() {
                w.messages.borrow_and_update();
            }
            // Try first: an uncontended wait costs one attempt, no subscription.
            let attempt = match left() {
                Some(l) => tokio::time::timeout(l, self.try_acquire(name))
                    .await
                    .map_err(|_| timeout())?,
                None => self.try_acquire(name).await,
            };
            if let Some(g) = attempt? {
                return Ok(g);
            }
            if deadline.is_some_and(|d| self.inner.now() >= d) {
                return Err(timeout());
            }
            if wake.is_none() && self.inner.config.pubsub_wakeup {
                let clients: Vec<redis::Client> =
                    self.inner.nodes.iter().map(|n| n.client.clone()).collect();
                let within = left().unwrap_or(Duration::MAX).min(self.connect_timeout());
                wake = self
                    .inner
                    .subscriber
                    .wake_on(&clients, &channel, within)
                    .await;
                // Subscribed now: try again before sleeping, a release may
                // have come in between.
                if wake.is_some() {
                    continue;
                }
            }
            let now = self.inner.now();
            let until = match (now.checked_add(self.inner.config.wait_poll), deadline) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, d) => w.or(d),
            };
            let sleep = async {
                match until {
                    Some(w) => crate::guard::sleep_until(self, w).await,
                    None => std::future::pending().await,
                }
            };
            match wake.as_mut() {
                Some(w) => {
                    tokio::select! {
                        _ = w.messages.changed() => {}
                        () = sleep => {}
                    }
                }
                None => sleep.await,
            }
        }
    }

    /// How long a connection may take to open.
    fn connect_timeout(&self) -> Duration {
        self.inner.config.connect_timeout
    }

    /// Runs `f` while holding the lock (waiting up to `max_wait` for it),
    /// then releases it. `f` gets the guard to check
    /// [`LockGuard::is_valid_for`] or pass its fencing token on.
    ///
    /// `Ok` only if the lock was still held when `f` finished. If it was
    /// lost on the way (the lease ran out, a renewal failed), another client
    /// may have run its own section meanwhile: the result is an
    /// [`ErrorKind::Lock`] error, and `f`'s output is dropped. Whatever `f`
    /// did to a shared resource was not protected by the lock alone: only a
    /// resource that checks fencing tokens refuses such late writes.
    pub async fn with_lock<T, F, Fut>(&self, name: &str, max_wait: Duration, f: F) -> Result<T>
    where
        F: FnOnce(&LockGuard) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.acquire_wait(name, max_wait).await?;
        let out = f(&guard).await;
        if guard.release().await? {
            Ok(out)
        } else {
            Err(Error::new(
                ErrorKind::Lock,
                format!(
                    "lock {name:?} was lost before the section ended: it may not have been exclusive"
                ),
            ))
        }
    }
}

impl Inner {
    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_follow_the_feature() {
        let mut c = LockConfig::default();
        let r = open_client("rediss://127.0.0.1:6380/", &c);
        assert_eq!(r.is_ok(), cfg!(feature = "tls"));
        c.tls_root_cert = Some(b"not a certificate".to_vec());
        let e = open_client("redis://127.0.0.1:6379/", &c).unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
    }

    #[test]
    fn tokens_are_128_random_bits() {
        // Unpredictability cannot be tested; this checks the width and that
        // the source works (the source is the OS CSPRNG, by inspection).
        let a: Vec<u128> = (0..64).map(|_| random_u128().unwrap()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), a.len());
        assert!(a.iter().any(|v| *v > u128::from(u64::MAX)));
    }
}
