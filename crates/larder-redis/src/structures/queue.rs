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

use super::check_name;

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

/// KEYS ready, seq, notify; ARGV payload. Adds the item and posts a
/// wake-up on the notify stream (one entry kept) for blocked `pop`s.
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[1], tostring(id) .. '|' .. ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '1', '*', 'n', '1')
return id
",
    )
});

/// KEYS ready, processing, leases, tokens, seq, notify; ARGV now (empty:
/// the server's `TIME`), visibility in ms. The only way an item is taken: moves the oldest item, leases
/// it and gives this delivery its own token (from the id sequence), in one
/// step, so no item is ever in processing without a lease and a token.
/// Returns `{1, item, token}`, or `{0, last notify id, 0}` when the queue
/// is empty: a `pop` then waits for a notify entry after that id, which a
/// push made after this take is sure to add.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_lua!(),
        r"
local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
if not item then
  local last = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)
  if last[1] then
    return {0, last[1][1], 0}
  end
  return {0, '0-0', 0}
end
local token = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[3], clock_ms(ARGV[1]) + tonumber(ARGV[2]), item)
redis.call('HSET', KEYS[4], item, token)
return {1, item, token}
"
    ))
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

/// KEYS ready, processing, leases, tokens, notify; ARGV now (empty: the
/// server's `TIME`), visibility in ms, batch. Bounded work per run (Redis
/// runs a script to the end while every other client waits): gives a lease
/// to items without one among the `batch` oldest in processing (written by
/// hand, or by a version that leased after the move), then moves at most
/// `batch` items whose lease expired back to the head of ready, each found
/// by `LREM` from the tail, where the oldest items are. Returns `{moved,
/// expired leases seen}`.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_lua!(),
        r"
local now = clock_ms(ARGV[1])
local vis = tonumber(ARGV[2])
local batch = tonumber(ARGV[3])
for _, item in ipairs(redis.call('LRANGE', KEYS[2], -batch, -1)) do
  if not redis.call('ZSCORE', KEYS[3], item) then
    redis.call('ZADD', KEYS[3], now + vis, item)
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, batch)
local moved = 0
for _, item in ipairs(expired) do
  redis.call('ZREM', KEYS[3], item)
  redis.call('HDEL', KEYS[4], item)
  if redis.call('LREM', KEYS[2], -1, item) > 0 then
    redis.call('RPUSH', KEYS[1], item)
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '1', '*', 'n', '1')
end
return {moved, #expired}
"
    ))
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
    notify: String,
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
            notify: self.notify.clone(),
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
        check_name("queue name", name)?;
        if visibility.as_millis() == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "visibility must be at least 1 ms",
            ));
        }
        let ks = store.keyspace();
        let tag = format!("queue:{name}");
        Ok(WorkQueue {
            ready: ks.helper_key(&tag, "ready")?,
            processing: ks.helper_key(&tag, "processing")?,
            leases: ks.helper_key(&tag, "leases")?,
            tokens: ks.helper_key(&tag, "tokens")?,
            dead: ks.helper_key(&tag, "dead")?,
            notify: ks.helper_key(&tag, "notify")?,
            seq: ks.helper_key(&tag, "seq")?,
            store: store.clone(),
            visibility,
            codec,
            blocking: Arc::new(Mutex::new(None)),
            _items: PhantomData,
        })
    }

    fn visibility_ms(&self) -> u64 {
        u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX)
    }

    /// Adds an item; its id.
    pub async fn push(&self, item: &T) -> Result<u64> {
        let bytes = self.codec.encode(item)?;
        self.store
            .run_home(&self.ready, Cmd::Script, false, "queue push", |mut c| {
                let mut inv = PUSH.key(&self.ready);
                inv.key(&self.seq).key(&self.notify).arg(&bytes);
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
                    .run_home(&self.ready, Cmd::Script, true, "queue bury", |mut c| {
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

    /// One run of the take script: the delivery, or the last notify id.
    async fn take(&self) -> Result<Taken<T>> {
        let (now, vis) = (self.store.helper_now_arg(), self.visibility_ms());
        let (taken, raw, token): (i64, Vec<u8>, u64) = self
            .store
            .run_home(&self.ready, Cmd::Script, false, "queue take", |mut c| {
                let mut inv = TAKE.key(&self.ready);
                inv.key(&self.processing)
                    .key(&self.leases)
                    .key(&self.tokens)
                    .key(&self.seq)
                    .key(&self.notify)
                    .arg(&now)
                    .arg(vis);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        if taken == 1 {
            return self.deliver(raw, token).await.map(Taken::Item);
        }
        let last = String::from_utf8(raw).map_err(|_| {
            Error::new(
                ErrorKind::Backend,
                "queue take: a stream id that is not text",
            )
        })?;
        Ok(Taken::Empty(last))
    }

    /// Takes the oldest item without waiting; `None` if the queue is empty.
    pub async fn try_pop(&self) -> Result<Option<Delivery<T>>> {
        match self.take().await? {
            Taken::Item(d) => Ok(Some(d)),
            Taken::Empty(_) => Ok(None),
        }
    }

    /// Takes the oldest item, waiting up to `wait` for one; `None` if none
    /// came.
    ///
    /// Waiting takes nothing: the item is taken, leased and given its token
    /// by one script (as [`WorkQueue::try_pop`]); in between, the call waits
    /// on a dedicated connection (`XREAD BLOCK` on the queue's notify
    /// stream, which every push and requeue posts to) for a push. So a
    /// `pop` cancelled while it waits (dropped by a `select!` or a timeout)
    /// leaves every item in the queue, and its connection is closed rather
    /// than reused. A wake-up that another worker wins sends it back to
    /// waiting for what is left of `wait`.
    pub async fn pop(&self, wait: Duration) -> Result<Option<Delivery<T>>> {
        let until = tokio::time::Instant::now() + wait;
        let mut first = true;
        loop {
            let last = match self.take().await? {
                Taken::Item(d) => return Ok(Some(d)),
                Taken::Empty(last) => last,
            };
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            // The first wait always happens (for at least 1 ms), however
            // short `wait` is; later ones only while time is left.
            if left.is_zero() && !first {
                return Ok(None);
            }
            first = false;
            self.wait_for_push(&last, left).await?;
        }
    }

    /// Blocks until the notify stream has an entry after `last`, or `wait`
    /// passes: one `XREAD BLOCK` on the dedicated connection, through the
    /// node's breaker and stats, within `connect_timeout + wait +
    /// response_timeout`, never resent. Reads, never takes.
    async fn wait_for_push(&self, last: &str, wait: Duration) -> Result<()> {
        let node = self.store.home_node_for(&self.ready)?;
        let config = self.store.config();
        // BLOCK 0 would wait for ever: at least 1 ms.
        let block_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let deadline = config.connect_timeout + wait + config.response_timeout;
        // The dedicated connection is taken before the call, outside its
        // deadline: another `pop` on this handle holding it is not the
        // node's fault, and must not count against its breaker. No turn
        // within `wait` is "no push seen": the caller looks again.
        let Ok(held) =
            tokio::time::timeout(wait.max(Duration::from_millis(1)), self.blocking.lock()).await
        else {
            return Ok(());
        };
        node.run_blocking(
            Some(&self.ready),
            Cmd::Other,
            "XREAD BLOCK",
            deadline,
            async {
                // Dropped before the answer (cancelled, or past the deadline):
                // the connection may still be blocked on the server, so it is
                // closed, never reused.
                let mut slot = ResetOnDrop {
                    slot: held,
                    done: false,
                };
                let conn = match slot.slot.as_mut() {
                    Some(conn) => conn,
                    None => slot
                        .slot
                        .insert(dedicated(&node.urls, node.is_cluster(), config).await?),
                };
                let r = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(&self.notify)
                    .arg(last)
                    .query_async::<redis::Value>(conn)
                    .await;
                match r {
                    Ok(_) => {
                        slot.done = true;
                        Ok(())
                    }
                    Err(e) => Err(from_redis(e, "XREAD BLOCK")),
                }
            },
        )
        .await
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
            .run_home(&self.ready, Cmd::Script, false, "queue ack", |mut c| {
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
    ///
    /// Each script run handles at most 500 items (a run over 100,000
    /// expired items would hold Redis long enough for it to answer `BUSY`
    /// to everyone); this call runs it until a run finds fewer.
    pub async fn requeue_expired(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            let (now, vis) = (self.store.helper_now_arg(), self.visibility_ms());
            let (moved, seen): (u64, u64) = self
                .store
                .run_home(&self.ready, Cmd::Script, false, "queue requeue", |mut c| {
                    let mut inv = REQUEUE.key(&self.ready);
                    inv.key(&self.processing)
                        .key(&self.leases)
                        .key(&self.tokens)
                        .key(&self.notify)
                        .arg(&now)
                        .arg(vis)
                        .arg(REQUEUE_BATCH);
                    async move { inv.invoke_async(&mut c).await }
                })
                .await?;
            total += moved;
            // Every run removes the leases it saw, so this ends.
            if seen < REQUEUE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Items waiting (not taken).
    pub async fn len(&self) -> Result<u64> {
        self.store
            .run_home(&self.ready, Cmd::Other, true, "LLEN", |mut c| async move {
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
    /// (`{namespace}:{{queue:name}}:#dead`, oldest first; inspect or clear it
    /// with [`RedisStore::command`]).
    pub async fn dead_letters(&self) -> Result<u64> {
        self.store
            .run_home(&self.ready, Cmd::Other, true, "LLEN", |mut c| async move {
                redis::cmd("LLEN").arg(&self.dead).query_async(&mut c).await
            })
            .await
    }

    /// Items taken and not yet acknowledged.
    pub async fn in_flight(&self) -> Result<u64> {
        self.store
            .run_home(&self.ready, Cmd::Other, true, "LLEN", |mut c| async move {
                redis::cmd("LLEN")
                    .arg(&self.processing)
                    .query_async(&mut c)
                    .await
            })
            .await
    }
}

/// The most items one run of the requeue script handles.
const REQUEUE_BATCH: u64 = 500;

/// What one take found.
enum Taken<T> {
    Item(Delivery<T>),
    /// The queue was empty; the notify stream's last id then.
    Empty(String),
}

/// Holds the dedicated connection while a blocking read runs; dropped
/// before the read answered, it discards the connection.
struct ResetOnDrop<'a> {
    slot: tokio::sync::MutexGuard<'a, Option<Conn>>,
    done: bool,
}

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.slot = None;
        }
    }
}

/// A blocking read's client-side response timeout: longer than any wait.
/// The caller's deadline (`connect_timeout + wait + response_timeout`)
/// bounds every read, whatever the wait of the call that made the
/// connection.
const NO_CLIENT_TIMEOUT: Duration = Duration::from_secs(365 * 86_400);

/// A connection of its own for blocking reads: connecting is bounded by
/// `connect_timeout`, the client never resends and has no response timeout
/// of its own (the caller's deadline bounds the whole), and it trusts the
/// configured root certificate like the store's connections.
async fn dedicated(urls: &[String], cluster: bool, config: &crate::RedisConfig) -> Result<Conn> {
    if cluster {
        let client = crate::node::cluster_client(urls, config, NO_CLIENT_TIMEOUT)?;
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
