use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use larder_core::{Codec, DefaultCodec, Error, ErrorKind, Result};
use redis::Script;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::error::from_redis;
use crate::node::Conn;
use crate::stats::Cmd;
use crate::store::RedisStore;

use super::check_part;

/// An item handed to a worker. Acknowledge it with [`WorkQueue::ack`] when
/// done; if the worker dies first, the item is delivered again once its
/// visibility timeout has passed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery<T> {
    /// The item's id (unique per queue, increasing).
    pub id: u64,
    /// The item.
    pub item: T,
    raw: Vec<u8>,
    /// This delivery's own token: a re-delivery of the same item gets a new
    /// one, so a late ack of an earlier delivery finds nothing to remove.
    token: u64,
}

static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[1], tostring(id) .. '|' .. ARGV[1])
return id
",
    )
});

/// KEYS ready, processing, leases, tokens, seq; ARGV lease deadline.
/// Non-blocking take: moves the oldest item, leases it and gives this
/// delivery its own token (from the id sequence), in one step.
/// Returns `{item, token}` or nil.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if not item then
  return false
end
local token = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[3], ARGV[1], item)
redis.call('HSET', KEYS[4], item, token)
return {item, token}
",
    )
});

/// KEYS processing, leases, tokens, seq; ARGV item, lease deadline. The
/// lease and token of an item a blocking move has just put in processing;
/// nil if it is no longer there.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  return false
end
local token = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], token)
return token
",
    )
});

/// KEYS processing, leases, tokens; ARGV item, token. Removes the item only
/// for the delivery that holds the current token: an earlier delivery of
/// the same item (its lease expired, it was handed to another worker)
/// finds a different token and removes nothing.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('LREM', KEYS[1], -1, ARGV[1])
",
    )
});

/// KEYS processing, leases, tokens, dead; ARGV item, token. Moves an item
/// that does not decode from processing to the dead-letter list, with its
/// lease and token, if this delivery still holds it.
static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LREM', KEYS[1], -1, ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[1])
return 1
",
    )
});

/// KEYS ready, processing, leases, tokens; ARGV now, visibility. Gives a lease to
/// items in processing that have none (their worker died between BLMOVE and
/// the lease), then moves items whose lease expired back to the head of ready.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local vis = tonumber(ARGV[2])
for _, item in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if not redis.call('ZSCORE', KEYS[3], item) then
    redis.call('ZADD', KEYS[3], now + vis, item)
  end
end
local moved = 0
for _, item in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[3], item)
  redis.call('HDEL', KEYS[4], item)
  if redis.call('LREM', KEYS[2], 1, item) > 0 then
    redis.call('RPUSH', KEYS[1], item)
    moved = moved + 1
  end
end
return moved
",
    )
});

/// A reliable work queue: an item moves atomically from `ready` to
/// `processing` when taken, stays there until acknowledged, and goes back to
/// `ready` if its worker does not acknowledge it within the visibility
/// timeout ([`WorkQueue::requeue_expired`], run periodically by any worker).
/// Delivery is at least once: make handlers idempotent.
///
/// A blocking [`WorkQueue::pop`] holds a dedicated connection for its
/// duration, so that it never stalls the store's shared connection; each
/// concurrent worker should use its own clone.
///
/// ```no_run
/// # async fn demo(store: larder_redis::RedisStore) -> larder_core::Result<()> {
/// use larder_redis::WorkQueue;
/// use std::time::Duration;
/// let q: WorkQueue<String> = WorkQueue::new(&store, "emails", Duration::from_secs(30))?;
/// q.push(&"welcome:42".to_string()).await?;
/// if let Some(job) = q.pop(Duration::from_secs(5)).await? {
///     // ... send the e-mail ...
///     q.ack(&job).await?;
/// }
/// # Ok(()) }
/// ```
pub struct WorkQueue<T, C: Codec = DefaultCodec> {
    store: RedisStore,
    ready: String,
    processing: String,
    leases: String,
    tokens: String,
    dead: String,
    seq: String,
    visibility: Duration,
    codec: C,
    blocking: Arc<Mutex<Option<Conn>>>,
    _items: PhantomData<fn() -> T>,
}

impl<T, C: Codec> Clone for WorkQueue<T, C> {
    /// A handle on the same queue with its own blocking connection.
    fn clone(&self) -> Self {
        WorkQueue {
            store: self.store.clone(),
            ready: self.ready.clone(),
            processing: self.processing.clone(),
            leases: self.leases.clone(),
            tokens: self.tokens.clone(),
            dead: self.dead.clone(),
            seq: self.seq.clone(),
            visibility: self.visibility,
            codec: self.codec.clone(),
            blocking: Arc::new(Mutex::new(None)),
            _items: PhantomData,
        }
    }
}

impl<T, C: Codec> std::fmt::Debug for WorkQueue<T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("ready", &self.ready)
            .field("visibility", &self.visibility)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> WorkQueue<T, DefaultCodec> {
    /// A queue called `name` whose items are re-delivered if not
    /// acknowledged within `visibility`.
    pub fn new(store: &RedisStore, name: &str, visibility: Duration) -> Result<Self> {
        Self::with_codec(store, name, visibility, DefaultCodec::default())
    }
}

impl<T: Serialize + DeserializeOwned, C: Codec> WorkQueue<T, C> {
    /// As [`WorkQueue::new`], with a codec for the items.
    pub fn with_codec(
        store: &RedisStore,
        name: &str,
        visibility: Duration,
        codec: C,
    ) -> Result<Self> {
        check_part("queue name", name)?;
        if visibility.as_millis() == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "visibility must be at least 1 ms",
            ));
        }
        let ks = store.keyspace();
        let base = format!("queue:{name}");
        Ok(WorkQueue {
            ready: ks.data_key(&base)?,
            processing: ks.internal_key(&base, "processing")?,
            leases: ks.internal_key(&base, "leases")?,
            tokens: ks.internal_key(&base, "tokens")?,
            dead: ks.internal_key(&base, "dead")?,
            seq: ks.internal_key(&base, "seq")?,
            store: store.clone(),
            visibility,
            codec,
            blocking: Arc::new(Mutex::new(None)),
            _items: PhantomData,
        })
    }

    fn deadline_ms(&self) -> u64 {
        self.store.clock().unix_millis()
            + u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds an item; its id.
    pub async fn push(&self, item: &T) -> Result<u64> {
        let bytes = self.codec.encode(item)?;
        self.store
            .run_on(&self.ready, Cmd::Script, false, "queue push", |mut c| {
                let mut inv = PUSH.key(&self.ready);
                inv.key(&self.seq).arg(&bytes);
                async move { inv.invoke_async(&mut c).await }
            })
            .await
    }

    fn parse(&self, raw: &[u8]) -> Result<(u64, T)> {
        let corrupt = || Error::corrupt("queue item is not `id|payload`");
        let bar = raw.iter().position(|&b| b == b'|').ok_or_else(corrupt)?;
        let id = std::str::from_utf8(&raw[..bar])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(corrupt)?;
        Ok((id, self.codec.decode(&raw[bar + 1..])?))
    }

    /// The delivery of a taken item. An item that does not decode can never
    /// be handled: it goes to the dead-letter list (not back to the queue
    /// after every visibility timeout), is counted in the store's
    /// `stats().corrupt`, and the caller gets the `Corrupt` error.
    async fn deliver(&self, raw: Vec<u8>, token: u64) -> Result<Delivery<T>> {
        match self.parse(&raw) {
            Ok((id, item)) => Ok(Delivery {
                id,
                item,
                raw,
                token,
            }),
            Err(e) => {
                self.store.count_corrupt(&self.ready);
                let _: i64 = self
                    .store
                    .run_on(&self.ready, Cmd::Script, true, "queue bury", |mut c| {
                        let mut inv = BURY.key(&self.processing);
                        inv.key(&self.leases)
                            .key(&self.tokens)
                            .key(&self.dead)
                            .arg(&raw)
                            .arg(token);
                        async move { inv.invoke_async(&mut c).await }
                    })
                    .await?;
                Err(Error::with_source(
                    ErrorKind::Corrupt,
                    "a queue item that does not decode was moved to the dead-letter list",
                    e,
                ))
            }
        }
    }

    /// Takes the oldest item without waiting; `None` if the queue is empty.
    pub async fn try_pop(&self) -> Result<Option<Delivery<T>>> {
        let deadline = self.deadline_ms();
        let taken: Option<(Vec<u8>, u64)> = self
            .store
            .run_on(&self.ready, Cmd::Script, false, "queue take", |mut c| {
                let mut inv = TAKE.key(&self.ready);
                inv.key(&self.processing)
                    .key(&self.leases)
                    .key(&self.tokens)
                    .key(&self.seq)
                    .arg(deadline);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match taken {
            Some((raw, token)) => self.deliver(raw, token).await.map(Some),
            None => Ok(None),
        }
    }

    /// Takes the oldest item, waiting up to `wait` for one (`BLMOVE` on a
    /// dedicated connection); `None` if none came.
    pub async fn pop(&self, wait: Duration) -> Result<Option<Delivery<T>>> {
        if let Some(d) = self.try_pop().await? {
            return Ok(Some(d));
        }
        let node = self.store.node_for(&self.ready)?;
        let config = self.store.config();
        let secs = wait.as_secs_f64().max(0.001);
        // Connecting, the block and the answer: one deadline, the node's
        // breaker and stats, like every command (never retried: it moves an item).
        let deadline = config.connect_timeout + wait + config.response_timeout;
        let blocking = &self.blocking;
        let outcome = node
            .run_blocking(Some(&self.ready), Cmd::Other, "BLMOVE", deadline, async {
                let mut slot = blocking.lock().await;
                let conn = match slot.as_mut() {
                    Some(conn) => conn,
                    None => {
                        slot.insert(dedicated(&node.urls, node.is_cluster(), wait, config).await?)
                    }
                };
                let r = redis::cmd("BLMOVE")
                    .arg(&self.ready)
                    .arg(&self.processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(secs)
                    .query_async::<Option<Vec<u8>>>(conn)
                    .await;
                r.map_err(|e| {
                    *slot = None;
                    from_redis(e, "BLMOVE")
                })
            })
            .await;
        let raw = match outcome {
            Ok(raw) => raw,
            Err(e) => {
                if e.is_timeout() {
                    // Abandoned mid-block: that connection is no longer ours to reuse.
                    *self.blocking.lock().await = None;
                }
                return Err(e);
            }
        };
        let Some(raw) = raw else { return Ok(None) };
        // The lease. If we die before it lands, requeue_expired gives the
        // item one on its next run, and it is re-delivered after that.
        let deadline = self.deadline_ms();
        let token: Option<u64> = self
            .store
            // Not retried: a second token would orphan the first.
            .run_on(&self.ready, Cmd::Script, false, "queue lease", |mut c| {
                let mut inv = LEASE.key(&self.processing);
                inv.key(&self.leases)
                    .key(&self.tokens)
                    .key(&self.seq)
                    .arg(&raw)
                    .arg(deadline);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match token {
            Some(token) => self.deliver(raw, token).await.map(Some),
            None => Ok(None),
        }
    }

    /// Acknowledges a delivery: the item is done and removed. `false` if
    /// this delivery no longer holds the item: its lease expired (it was
    /// put back, or handed to another worker, whose delivery this ack
    /// leaves alone), or it was acknowledged already. Never resent after a
    /// possibly lost reply: the retry would answer `false` for an ack that
    /// worked.
    pub async fn ack(&self, delivery: &Delivery<T>) -> Result<bool> {
        let n: u64 = self
            .store
            // Not retried after a possibly lost reply: the retry would find
            // the item gone and answer `false` for an ack that worked.
            .run_on(&self.ready, Cmd::Script, false, "queue ack", |mut c| {
                let mut inv = ACK.key(&self.processing);
                inv.key(&self.leases)
                    .key(&self.tokens)
                    .arg(&delivery.raw)
                    .arg(delivery.token);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(n > 0)
    }

    /// Moves items whose visibility timeout has passed back to the front of
    /// the queue; how many moved. Call it periodically from any worker.
    pub async fn requeue_expired(&self) -> Result<u64> {
        let now = self.store.clock().unix_millis();
        let vis = u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX);
        self.store
            .run_on(&self.ready, Cmd::Script, false, "queue requeue", |mut c| {
                let mut inv = REQUEUE.key(&self.ready);
                inv.key(&self.processing)
                    .key(&self.leases)
                    .key(&self.tokens)
                    .arg(now)
                    .arg(vis);
                async move { inv.invoke_async(&mut c).await }
            })
            .await
    }

    /// Items waiting (not taken).
    pub async fn len(&self) -> Result<u64> {
        self.store
            .run_on(&self.ready, Cmd::Other, true, "LLEN", |mut c| async move {
                redis::cmd("LLEN")
                    .arg(&self.ready)
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    /// Whether no item is waiting.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Items moved to the dead-letter list because they did not decode
    /// (`{namespace}:{{queue:name}}:dead`, oldest first; inspect or clear it
    /// with [`RedisStore::command`]).
    pub async fn dead_letters(&self) -> Result<u64> {
        self.store
            .run_on(&self.ready, Cmd::Other, true, "LLEN", |mut c| async move {
                redis::cmd("LLEN").arg(&self.dead).query_async(&mut c).await
            })
            .await
    }

    /// Items taken and not yet acknowledged.
    pub async fn in_flight(&self) -> Result<u64> {
        self.store
            .run_on(&self.ready, Cmd::Other, true, "LLEN", |mut c| async move {
                redis::cmd("LLEN")
                    .arg(&self.processing)
                    .query_async(&mut c)
                    .await
            })
            .await
    }
}

/// A connection of its own for blocking commands, with no response timeout
/// shorter than the block; connecting is bounded by `connect_timeout`, and
/// the client never resends (the caller's deadline bounds the whole).
async fn dedicated(
    urls: &[String],
    cluster: bool,
    wait: Duration,
    config: &crate::RedisConfig,
) -> Result<Conn> {
    if cluster {
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(config.connect_timeout)
            .response_timeout(wait + config.response_timeout)
            .retries(0)
            .build()
            .map_err(|e| from_redis(e, "cluster client"))?;
        let c = client
            .get_async_connection()
            .await
            .map_err(|e| from_redis(e, "connect"))?;
        Ok(Conn::Cluster(c))
    } else {
        let client = crate::node::open_client(&urls[0], config)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(0)
            .set_response_timeout(None);
        let m = redis::aio::ConnectionManager::new_with_config(client, cfg)
            .await
            .map_err(|e| from_redis(e, "connect"))?;
        Ok(Conn::Standalone(m))
    }
}
