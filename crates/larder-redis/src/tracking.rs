//! The invalidation stream: what keeps the L1s of many instances coherent.
//!
//! [`RedisStore::invalidations`] opens one dedicated connection per node
//! (standalone: one; sharded: one per shard, merged into one stream) and
//! turns what Redis says into [`Invalidation`]s:
//!
//! - [`CoherenceMode::Tracking`] (the default): a RESP3 connection with
//!   `CLIENT TRACKING ON BCAST PREFIX {ns}: NOLOOP`. Every write to a key of
//!   the namespace, by anyone (another instance, `redis-cli`, a script),
//!   is pushed to it.
//! - [`CoherenceMode::PubSub`]: for servers and proxies without RESP3
//!   tracking. Larder's writers call [`RedisStore::publish_invalidation`],
//!   which bumps the namespace's generation counter and publishes the keys
//!   on the namespace's channel in one script; only those writers are seen.
//!
//! The background tasks belong to the [`Invalidations`] handle and stop when
//! it is dropped. They never panic: a foreign message or key is counted and
//! skipped, a lost connection is a [`FlushReason`] and a reconnection.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use larder_core::{Counter, Error, ErrorKind, KeySpace, Result, validate_key};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::config::RetryPolicy;
use crate::error::from_redis;
use crate::node::{Node, open_client};
use crate::stats::Cmd;
use crate::store::RedisStore;

/// Events buffered between the background tasks and [`Invalidations::recv`].
/// Past it, events collapse into one [`FlushReason::Overflow`].
pub const INVALIDATION_BUFFER: usize = 1024;

/// How often a connection that has been quiet is pinged (a half-dead
/// connection answers no `PING` within the store's response timeout).
const PING_EVERY: Duration = Duration::from_secs(1);

/// How often pub/sub mode re-reads the generation counter as a backstop.
const GENERATION_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The name, under the namespace, of the pub/sub channel: `{ns}:#inv`.
const CHANNEL: &str = "#inv";

/// The name, under the namespace, of the generation counter: `{ns}:#inv:gen`.
const GENERATION: &str = "#inv:gen";

/// The first two bytes of a pub/sub invalidation message.
const MSG_MAGIC: [u8; 2] = *b"LI";

/// The message format this crate writes and reads.
const MSG_VERSION: u8 = 1;

/// Bumps the generation and publishes the message with it, in one step:
/// `ARGV[1]` is the message head, `ARGV[2]` its body (see [`encode_parts`]),
/// `ARGV[3]` the channel. The generation goes between them as a length byte
/// and decimal digits, so messages of one node carry 1, 2, 3, ... in order.
static PUBLISH: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local g = string.format('%d', redis.call('INCR', KEYS[1]))
redis.call('PUBLISH', ARGV[3], ARGV[1] .. string.char(string.len(g)) .. g .. ARGV[2])
return 1
",
    )
});

/// How the stream learns of writes.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoherenceMode {
    /// Server-assisted client tracking over RESP3 (Redis 6+): sees every
    /// write to the namespace, by any client.
    #[default]
    Tracking,
    /// Pub/sub, for servers or proxies without RESP3 tracking: sees only
    /// the writes announced with [`RedisStore::publish_invalidation`].
    PubSub,
}

/// Why everything may be stale.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// The server flushed its keys (`FLUSHALL`, `FLUSHDB`): tracking's
    /// invalidation with no key list.
    Server,
    /// A connection of the stream was lost: until it is back, writes go
    /// unseen. Sent at once, before reconnecting (tracking mode).
    Disconnected,
    /// Tracking is on again after a loss: what was cached while it was off
    /// (from the L2, through the store's own connections) may be stale.
    Reconnected,
    /// Pub/sub mode: the generation counter moved without the messages
    /// that moved it reaching this stream (a reconnection, a lost message).
    GenerationChanged,
    /// The consumer fell [`INVALIDATION_BUFFER`] events behind: events were
    /// dropped, and this flush stands for them.
    Overflow,
}

/// One event of the stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These user keys were written or deleted (the texts given to the
    /// store, without the namespace and braces; a write to an internal key
    /// such as `{ns}:{k}:v` or `{ns}:{k}:lease` names `k`), deduplicated
    /// within the event.
    Keys(Vec<String>),
    /// Everything may be stale.
    Flush(FlushReason),
}

/// Figures of an [`Invalidations`] stream since it was opened.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidationStats {
    /// User keys received (each key of each [`Invalidation::Keys`]).
    pub keys: u64,
    /// [`Invalidation::Flush`] events, every reason.
    pub flushes: u64,
    /// Of those, [`FlushReason::Server`].
    pub server_flushes: u64,
    /// Of those, [`FlushReason::GenerationChanged`].
    pub generation_flushes: u64,
    /// Of those, [`FlushReason::Overflow`].
    pub overflows: u64,
    /// Connections lost (tracking mode flushes for each).
    pub disconnects: u64,
    /// Connections made again after a loss.
    pub reconnects: u64,
    /// Tracked Redis keys that name no user key (helper keys, the
    /// generation counter, keys that are not UTF-8), skipped.
    pub ignored_keys: u64,
    /// Pub/sub messages that are not Larder invalidations of a known
    /// format (foreign, truncated, a newer version), skipped.
    pub ignored_messages: u64,
    /// Pub/sub messages this stream's own sender published, skipped (the
    /// writer evicted its own L1 already).
    pub own_skipped: u64,
    /// Whether every connection of the stream is up now.
    pub connected: bool,
}

/// The stream of invalidations of one store's namespace, from
/// [`RedisStore::invalidations`]. Owns its background tasks: dropping it
/// stops them and closes their connections.
pub struct Invalidations {
    rx: mpsc::Receiver<Invalidation>,
    shared: Arc<Shared>,
    state: watch::Receiver<ConnState>,
    sender: String,
    /// Dropping a `JoinSet` aborts its tasks.
    _tasks: JoinSet<()>,
}

impl std::fmt::Debug for Invalidations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidations")
            .field("sender", &self.sender)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Invalidations {
    /// The next event, in the order each node sent them (events of
    /// different nodes interleave). `None` only if every background task
    /// has ended, which does not happen while `self` lives.
    pub async fn recv(&mut self) -> Option<Invalidation> {
        self.rx.recv().await
    }

    /// Figures since the stream was opened.
    pub fn stats(&self) -> InvalidationStats {
        let s = &self.shared;
        let st = *self.state.borrow();
        InvalidationStats {
            keys: s.keys.get(),
            flushes: s.flushes.get(),
            server_flushes: s.server_flushes.get(),
            generation_flushes: s.generation_flushes.get(),
            overflows: s.overflows.get(),
            disconnects: s.disconnects.get(),
            reconnects: st.reconnects,
            ignored_keys: s.ignored_keys.get(),
            ignored_messages: s.ignored_messages.get(),
            own_skipped: s.own_skipped.get(),
            connected: st.up == s.nodes,
        }
    }

    /// This stream's sender id: pass it to
    /// [`RedisStore::publish_invalidation`] so this stream skips its own
    /// messages. Also in its connections' names (`larder-inv-{id}`, tracking mode).
    pub fn sender_id(&self) -> &str {
        &self.sender
    }

    /// Waits until every connection is up (tracking on; or subscribed with
    /// the generation read) after at least `reconnects` reconnections in
    /// all. `wait_connected(0)` waits for the stream to be up.
    pub async fn wait_connected(&self, reconnects: u64) {
        let nodes = self.shared.nodes;
        let mut state = self.state.clone();
        // The sender lives in `shared`, as long as `self`.
        let _ = state
            .wait_for(|s| s.up == nodes && s.reconnects >= reconnects)
            .await;
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct ConnState {
    up: usize,
    reconnects: u64,
}

/// What the tasks of one stream share: the channel and its overflow flag,
/// the counters.
struct Shared {
    tx: mpsc::Sender<Invalidation>,
    /// Events were dropped: a `Flush(Overflow)` is owed.
    overflow: AtomicBool,
    state: watch::Sender<ConnState>,
    nodes: usize,
    keys: Counter,
    flushes: Counter,
    server_flushes: Counter,
    generation_flushes: Counter,
    overflows: Counter,
    disconnects: Counter,
    ignored_keys: Counter,
    ignored_messages: Counter,
    own_skipped: Counter,
}

impl Shared {
    /// Queues an event without ever waiting: if the consumer is behind, the
    /// event is dropped and a `Flush(Overflow)` owed, delivered as soon as
    /// there is room (it stands for every event dropped before it).
    fn emit(&self, ev: Invalidation) {
        match &ev {
            Invalidation::Keys(k) => self.keys.add(k.len() as u64),
            Invalidation::Flush(r) => {
                self.flushes.incr();
                match r {
                    FlushReason::Server => self.server_flushes.incr(),
                    FlushReason::GenerationChanged => self.generation_flushes.incr(),
                    _ => {}
                }
            }
        }
        if self.overflow.load(Ordering::Acquire) {
            // `ev` happened before the owed flush is delivered: the flush covers it.
            self.pay_overflow();
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(ev) {
            self.overflow.store(true, Ordering::Release);
        }
    }

    /// Tries to deliver the owed `Flush(Overflow)` now.
    fn pay_overflow(&self) {
        if self.overflow.swap(false, Ordering::AcqRel) {
            match self.tx.try_send(Invalidation::Flush(FlushReason::Overflow)) {
                Ok(()) => {
                    self.flushes.incr();
                    self.overflows.incr();
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.overflow.store(true, Ordering::Release);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Resolves once an owed overflow flush could be delivered (never if
    /// none is owed).
    async fn overflow_room(&self) {
        if !self.overflow.load(Ordering::Acquire) {
            return std::future::pending().await;
        }
        match self.tx.reserve().await {
            Ok(permit) => {
                if self.overflow.swap(false, Ordering::AcqRel) {
                    permit.send(Invalidation::Flush(FlushReason::Overflow));
                    self.flushes.incr();
                    self.overflows.incr();
                }
            }
            // The consumer is gone: nothing to deliver, ever.
            Err(_) => std::future::pending().await,
        }
    }

    fn went_down(&self) {
        self.disconnects.incr();
        self.state.send_modify(|s| s.up = s.up.saturating_sub(1));
    }

    fn came_back(&self) {
        self.state.send_modify(|s| {
            s.up += 1;
            s.reconnects += 1;
        });
    }

    /// Maps tracked Redis keys to a `Keys` event (or a flush for none).
    fn on_tracked(&self, ks: &KeySpace, data: Vec<Value>) {
        let keys = match data.into_iter().next() {
            Some(Value::Array(keys) | Value::Set(keys)) if !keys.is_empty() => keys,
            // A null (or empty) key list: the server flushed.
            _ => return self.emit(Invalidation::Flush(FlushReason::Server)),
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let text = match k {
                Value::BulkString(b) => String::from_utf8(b).ok(),
                Value::SimpleString(s) => Some(s),
                _ => None,
            };
            match text.as_deref().and_then(|t| user_key_of(ks, t)) {
                Some(user) => out.push(user.to_owned()),
                None => self.ignored_keys.incr(),
            }
        }
        if !out.is_empty() {
            self.emit(Invalidation::Keys(dedup(out)));
        }
    }
}

/// The user key a Redis key of this space belongs to: a data key
/// `{ns}:{k}`, or an internal key `{ns}:{k}:suffix` (versions, leases).
/// `None` for helper keys (`{ns}:{k}:#role`), namespace-wide keys and
/// anything else.
fn user_key_of<'k>(ks: &KeySpace, redis_key: &'k str) -> Option<&'k str> {
    let user = match ks.user_key(redis_key) {
        Some(k) => k,
        None => {
            // A data key ends with `}`; an internal key's suffix holds no
            // `}`, so its key ends at the last one.
            let rest = redis_key.strip_prefix(ks.prefix())?.strip_prefix('{')?;
            let close = rest.rfind('}')?;
            let suffix = rest[close + 1..].strip_prefix(':')?;
            if suffix.is_empty() || suffix.starts_with('#') {
                return None;
            }
            &rest[..close]
        }
    };
    (!user.is_empty()).then_some(user)
}

/// Removes repeated keys, keeping the first of each.
fn dedup(keys: Vec<String>) -> Vec<String> {
    if keys.len() < 2 {
        return keys;
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.into_iter()
        .filter(|k| seen.insert(k.clone()))
        .collect()
}

/// A decoded pub/sub message.
#[derive(Debug, PartialEq, Eq)]
struct Message<'a> {
    generation: u64,
    sender: &'a str,
    keys: Vec<&'a str>,
}

/// The two parts of a message around its generation, which the publishing
/// script fills in. Format (version 1), every length big-endian:
///
/// ```text
/// head: "LI" | version u8 (1)
/// generation: len u8 (1..=20) | decimal digits
/// body: sender len u8 | sender (UTF-8) | key count u32 | per key: len u32 | key (UTF-8)
/// ```
fn encode_parts(sender: &str, keys: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let head = vec![MSG_MAGIC[0], MSG_MAGIC[1], MSG_VERSION];
    let mut body =
        Vec::with_capacity(1 + sender.len() + 4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>());
    // Callers check that the sender fits a byte and keys fit a u32.
    body.push(u8::try_from(sender.len()).unwrap_or(u8::MAX));
    body.extend_from_slice(sender.as_bytes());
    body.extend_from_slice(&u32::try_from(keys.len()).unwrap_or(u32::MAX).to_be_bytes());
    for k in keys {
        body.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(k.as_bytes());
    }
    (head, body)
}

/// A whole message, as the script builds it (for tests).
#[cfg(test)]
fn encode_message(generation: u64, sender: &str, keys: &[&str]) -> Vec<u8> {
    let (mut m, body) = encode_parts(sender, keys);
    let g = generation.to_string();
    m.push(g.len() as u8);
    m.extend_from_slice(g.as_bytes());
    m.extend_from_slice(&body);
    m
}

/// Decodes a message; `None` for anything that is not a complete message
/// of this format. Never panics, never allocates more than the input
/// could hold.
fn decode_message(bytes: &[u8]) -> Option<Message<'_>> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if n > self.0.len() {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u8(&mut self) -> Option<u8> {
            Some(self.take(1)?[0])
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
        }
        fn str(&mut self, n: usize) -> Option<&'a str> {
            std::str::from_utf8(self.take(n)?).ok()
        }
    }
    let mut r = Reader(bytes);
    if r.take(2)? != MSG_MAGIC || r.u8()? != MSG_VERSION {
        return None;
    }
    let glen = usize::from(r.u8()?);
    let digits = r.take(glen)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let generation = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let slen = usize::from(r.u8()?);
    let sender = r.str(slen)?;
    let count = usize::try_from(r.u32()?).ok()?;
    // Each key takes at least its 4-byte length: a count the rest cannot
    // hold is refused before any allocation.
    if count > r.0.len() / 4 {
        return None;
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let n = usize::try_from(r.u32()?).ok()?;
        keys.push(r.str(n)?);
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(Message {
        generation,
        sender,
        keys,
    })
}

/// A fresh sender id: 16 hex digits.
fn new_sender_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Backoff between reconnection attempts: full jitter, 50 ms doubling to 5 s.
fn reconnect_backoff(attempt: u32) -> Duration {
    RetryPolicy {
        max_retries: u32::MAX,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_secs(5),
    }
    .backoff(attempt.min(16))
}

/// What a node's task needs.
struct Endpoint {
    node: Arc<Node>,
    client: redis::Client,
    ks: KeySpace,
    shared: Arc<Shared>,
    sender: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    gen_key: String,
    channel: String,
}

impl Endpoint {
    /// Sleeps for `d`, delivering an owed overflow flush meanwhile.
    async fn pause(&self, d: Duration) {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return,
                _ = self.shared.overflow_room() => {}
            }
        }
    }

    fn redis_err(&self, what: &'static str) -> impl Fn(redis::RedisError) -> Error + '_ {
        move |e| from_redis(e, what)
    }

    fn timeout_err(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "{}: invalidations: {what}: no answer in time",
                self.node.name
            ),
        )
    }
}

// ---------------------------------------------------------------- tracking

/// One tracking connection's loss: fired once, by the push driver
/// (`Disconnection`) or the pinger, whichever sees it first.
#[derive(Default)]
struct Loss {
    lost: AtomicBool,
    notify: Notify,
}

impl Loss {
    fn fire(&self, shared: &Shared) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            shared.went_down();
            shared.emit(Invalidation::Flush(FlushReason::Disconnected));
            self.notify.notify_one();
        }
    }
}

async fn connect_tracking(ep: &Endpoint) -> Result<(MultiplexedConnection, Arc<Loss>)> {
    let loss = Arc::new(Loss::default());
    let (shared, ks, l) = (Arc::clone(&ep.shared), ep.ks.clone(), Arc::clone(&loss));
    // Runs in the connection's driver: parses and queues without waiting.
    let push = move |info: PushInfo| -> std::result::Result<(), Infallible> {
        match info.kind {
            PushKind::Invalidate => shared.on_tracked(&ks, info.data),
            PushKind::Disconnection => l.fire(&shared),
            _ => {}
        }
        Ok(())
    };
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ep.connect_timeout))
        .set_response_timeout(Some(ep.response_timeout))
        .set_push_sender(push);
    let budget = ep.connect_timeout + ep.response_timeout;
    let mut conn = tokio::time::timeout(
        budget,
        ep.client.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .map_err(|_| ep.timeout_err("connect"))?
    .map_err(ep.redis_err("invalidations: connect (RESP3)"))?;
    let mut p = redis::pipe();
    p.cmd("CLIENT")
        .arg("SETNAME")
        .arg(format!("larder-inv-{}", ep.sender))
        .ignore()
        .cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(ep.ks.prefix())
        .arg("NOLOOP")
        .ignore();
    tokio::time::timeout(ep.response_timeout, p.exec_async(&mut conn))
        .await
        .map_err(|_| ep.timeout_err("CLIENT TRACKING"))?
        .map_err(ep.redis_err("invalidations: CLIENT TRACKING ON BCAST"))?;
    Ok((conn, loss))
}

async fn run_tracking(ep: Endpoint, mut conn: MultiplexedConnection, mut loss: Arc<Loss>) {
    loop {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = loss.notify.notified() => break,
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        ep.response_timeout,
                        redis::cmd("PING").query_async::<Value>(&mut conn),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        loss.fire(&ep.shared);
                        break;
                    }
                }
                _ = ep.shared.overflow_room() => {}
            }
        }
        drop(conn);
        let mut attempt = 0;
        (conn, loss) = loop {
            ep.pause(reconnect_backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
            if let Ok(c) = connect_tracking(&ep).await {
                break c;
            }
        };
        ep.shared.came_back();
        ep.shared
            .emit(Invalidation::Flush(FlushReason::Reconnected));
    }
}

// ----------------------------------------------------------------- pub/sub

/// Pub/sub state of one node: the last generation accounted for.
struct Generation {
    known: u64,
    /// A generation read ahead of `known` by the backstop: the messages
    /// that account for it must have arrived by the next check.
    pending: Option<u64>,
}

async fn read_generation(ep: &Endpoint) -> Result<u64> {
    let key = &ep.gen_key;
    let g: Option<u64> = ep
        .node
        .run_routed(
            Some(key),
            Cmd::Get,
            true,
            "GET invalidation generation",
            |mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await },
        )
        .await?;
    Ok(g.unwrap_or(0))
}

/// Subscribes, then reads the generation: a message published after the
/// read is received, one published before it is counted in it.
async fn connect_pubsub(ep: &Endpoint) -> Result<(PubSubSink, PubSubStream, u64)> {
    let budget = ep.connect_timeout + ep.response_timeout;
    let mut ps = tokio::time::timeout(budget, ep.client.get_async_pubsub())
        .await
        .map_err(|_| ep.timeout_err("connect"))?
        .map_err(ep.redis_err("invalidations: connect (pub/sub)"))?;
    tokio::time::timeout(ep.response_timeout, ps.subscribe(&ep.channel))
        .await
        .map_err(|_| ep.timeout_err("SUBSCRIBE"))?
        .map_err(ep.redis_err("invalidations: SUBSCRIBE"))?;
    let (sink, stream) = ps.split();
    let g = read_generation(ep).await?;
    Ok((sink, stream, g))
}

fn on_message(ep: &Endpoint, gen_state: &mut Generation, payload: &[u8]) {
    let Some(m) = decode_message(payload) else {
        ep.shared.ignored_messages.incr();
        return;
    };
    if m.generation > gen_state.known.saturating_add(1) {
        // Messages between the last one and this one never arrived.
        ep.shared
            .emit(Invalidation::Flush(FlushReason::GenerationChanged));
    }
    gen_state.known = gen_state.known.max(m.generation);
    if m.sender == ep.sender {
        ep.shared.own_skipped.incr();
        return;
    }
    let keys: Vec<String> = m
        .keys
        .into_iter()
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    if !keys.is_empty() {
        ep.shared.emit(Invalidation::Keys(dedup(keys)));
    }
}

/// The backstop: a generation above what the messages accounted for at
/// the previous check, still not accounted for, means a message was lost;
/// a generation below it, that the counter was reset.
fn check_generation(ep: &Endpoint, gen_state: &mut Generation, read: u64) {
    let missed = gen_state.pending.is_some_and(|p| gen_state.known < p);
    if missed || read < gen_state.known {
        ep.shared
            .emit(Invalidation::Flush(FlushReason::GenerationChanged));
        gen_state.known = read;
        gen_state.pending = None;
    } else {
        gen_state.pending = (read > gen_state.known).then_some(read);
    }
}

async fn run_pubsub(ep: Endpoint, mut sink: PubSubSink, mut stream: PubSubStream, first: u64) {
    let mut gen_state = Generation {
        known: first,
        pending: None,
    };
    loop {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut check = tokio::time::interval(GENERATION_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(m) if m.get_channel_name() == ep.channel => {
                        on_message(&ep, &mut gen_state, m.get_payload_bytes());
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(ep.response_timeout, sink.ping::<Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        break;
                    }
                }
                _ = check.tick() => {
                    if let Ok(read) = read_generation(&ep).await {
                        check_generation(&ep, &mut gen_state, read);
                    }
                }
                _ = ep.shared.overflow_room() => {}
            }
        }
        // No flush here: the generation read after resubscribing says
        // whether anything was published meanwhile.
        ep.shared.went_down();
        drop((sink, stream));
        let mut attempt = 0;
        let read;
        (sink, stream, read) = loop {
            ep.pause(reconnect_backoff(attempt)).await;
            attempt = attempt.saturating_add(1);
            if let Ok(c) = connect_pubsub(&ep).await {
                break c;
            }
        };
        ep.shared.came_back();
        if read != gen_state.known {
            ep.shared
                .emit(Invalidation::Flush(FlushReason::GenerationChanged));
        }
        gen_state = Generation {
            known: read,
            pending: None,
        };
    }
}

// --------------------------------------------------------------- the store

impl RedisStore {
    /// Opens the invalidation stream of this store's namespace: one
    /// dedicated connection per node (standalone: one; sharded: one per
    /// shard at this moment), with the store's URLs, credentials, TLS
    /// settings and timeouts. Returns once every connection is listening
    /// (tracking on, or subscribed with the generation read), so a write
    /// made after it returns is seen.
    ///
    /// Errors: [`ErrorKind::Unsupported`] on a Redis Cluster (tracking
    /// would need a connection per master, followed across failovers);
    /// the connection's error if a node cannot be reached, or, in
    /// [`CoherenceMode::Tracking`], if it does not speak RESP3 (Redis 5 and
    /// some proxies: use [`CoherenceMode::PubSub`]). Needs a Tokio runtime.
    pub async fn invalidations(&self, mode: CoherenceMode) -> Result<Invalidations> {
        let nodes = self.nodes();
        if nodes.iter().any(|n| n.is_cluster()) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "invalidations: Redis Cluster is not supported (use a standalone or sharded store)",
            ));
        }
        let config = self.config();
        let ks = self.keyspace().clone();
        let sender = new_sender_id();
        let (tx, rx) = mpsc::channel(INVALIDATION_BUFFER);
        let (state_tx, state) = watch::channel(ConnState::default());
        let shared = Arc::new(Shared {
            tx,
            overflow: AtomicBool::new(false),
            state: state_tx,
            nodes: nodes.len(),
            keys: Counter::default(),
            flushes: Counter::default(),
            server_flushes: Counter::default(),
            generation_flushes: Counter::default(),
            overflows: Counter::default(),
            disconnects: Counter::default(),
            ignored_keys: Counter::default(),
            ignored_messages: Counter::default(),
            own_skipped: Counter::default(),
        });
        let mut endpoints = Vec::with_capacity(nodes.len());
        for node in nodes {
            let url = node.urls.first().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    "invalidations: a node without a URL",
                )
            })?;
            let mut client = open_client(url, config)?;
            if mode == CoherenceMode::Tracking {
                // The same address, credentials and TLS parameters, in RESP3.
                let info = client.get_connection_info().clone();
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                client = redis::Client::open(info.set_redis_settings(settings))
                    .map_err(|e| from_redis(e, "invalidations: RESP3 client"))?;
            }
            endpoints.push(Endpoint {
                node,
                client,
                ks: ks.clone(),
                shared: Arc::clone(&shared),
                sender: sender.clone(),
                connect_timeout: config.connect_timeout,
                response_timeout: config.response_timeout,
                gen_key: ks.global_key(GENERATION)?,
                channel: ks.global_key(CHANNEL)?,
            });
        }
        let mut tasks = JoinSet::new();
        match mode {
            CoherenceMode::Tracking => {
                let conns = join_all(endpoints.iter().map(connect_tracking)).await;
                let conns = conns.into_iter().collect::<Result<Vec<_>>>()?;
                for (ep, (conn, loss)) in endpoints.into_iter().zip(conns) {
                    tasks.spawn(run_tracking(ep, conn, loss));
                }
            }
            CoherenceMode::PubSub => {
                let conns = join_all(endpoints.iter().map(connect_pubsub)).await;
                let conns = conns.into_iter().collect::<Result<Vec<_>>>()?;
                for (ep, (sink, stream, g)) in endpoints.into_iter().zip(conns) {
                    tasks.spawn(run_pubsub(ep, sink, stream, g));
                }
            }
        }
        shared.state.send_modify(|s| s.up = shared.nodes);
        Ok(Invalidations {
            rx,
            shared,
            state,
            sender,
            _tasks: tasks,
        })
    }

    /// Announces that `keys` (user keys) were written, for streams in
    /// [`CoherenceMode::PubSub`]: on the node of each key, one script bumps
    /// the namespace's generation counter (`{ns}:#inv:gen`) and publishes
    /// `sender` and the keys on the channel `{ns}:#inv`. Call it after the
    /// write; pass the writer's own [`Invalidations::sender_id`] so its
    /// stream skips the message. Tracking mode needs none of this.
    ///
    /// Errors: [`ErrorKind::InvalidArgument`] for a sender over 255 bytes,
    /// [`ErrorKind::InvalidKey`] for an invalid key,
    /// [`ErrorKind::Unsupported`] on a Redis Cluster, and the node's error.
    /// Sent again after a lost reply: a repeated invalidation evicts nothing more.
    pub async fn publish_invalidation(&self, sender: &str, keys: &[String]) -> Result<()> {
        if sender.len() > usize::from(u8::MAX) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "publish_invalidation: the sender id is over 255 bytes",
            ));
        }
        if keys.is_empty() {
            return Ok(());
        }
        let ks = self.keyspace();
        let mut groups: Vec<(Arc<Node>, Vec<&str>)> = Vec::new();
        for k in keys {
            validate_key(k)?;
            let node = self.node_for(&ks.data_key(k)?)?;
            if node.is_cluster() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "publish_invalidation: Redis Cluster is not supported",
                ));
            }
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                Some((_, g)) => g.push(k),
                None => groups.push((node, vec![k])),
            }
        }
        let gen_key = ks.global_key(GENERATION)?;
        let channel = ks.global_key(CHANNEL)?;
        let sent = join_all(groups.iter().map(|(node, group)| {
            let (head, body) = encode_parts(sender, group);
            let (gen_key, channel) = (&gen_key, &channel);
            async move {
                node.run_routed(
                    Some(gen_key),
                    Cmd::Script,
                    true,
                    "publish invalidation script",
                    |mut c| {
                        let mut inv = PUBLISH.key(gen_key);
                        inv.arg(&head).arg(&body).arg(channel);
                        async move { inv.invoke_async::<i64>(&mut c).await }
                    },
                )
                .await
            }
        }))
        .await;
        sent.into_iter().collect::<Result<Vec<_>>>().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips() {
        let m = encode_message(42, "abc", &["k1", "", "ключ", "k1"]);
        assert_eq!(
            decode_message(&m),
            Some(Message {
                generation: 42,
                sender: "abc",
                keys: vec!["k1", "", "ключ", "k1"],
            })
        );
        let big = encode_message(u64::MAX, "", &[]);
        assert_eq!(decode_message(&big).unwrap().generation, u64::MAX);
    }

    #[test]
    fn every_truncation_is_refused() {
        let m = encode_message(7, "sender", &["a", "bb", "ccc"]);
        for n in 0..m.len() {
            assert_eq!(decode_message(&m[..n]), None, "prefix of {n} bytes");
        }
        let mut long = m.clone();
        long.push(0);
        assert_eq!(decode_message(&long), None, "trailing bytes");
    }

    #[test]
    fn foreign_messages_are_refused() {
        let m = encode_message(7, "s", &["a"]);
        for bad in [
            &b"hello"[..],
            &b""[..],
            b"LI\x02\x011\x00\x00\x00\x00\x00", // a newer version
            b"LI\x01\x00\x00\x00\x00\x00\x00",  // no generation digits
            b"LI\x01\x01x\x00\x00\x00\x00\x00", // not a digit
            b"LI\x01\x1599999999999999999999\x00\x00\x00\x00\x00", // over u64
        ] {
            assert_eq!(decode_message(bad), None, "{bad:?}");
        }
        let mut not_utf8 = m.clone();
        let last = not_utf8.len() - 1;
        not_utf8[last] = 0xff;
        assert_eq!(decode_message(&not_utf8), None);
        // Arbitrary bytes never panic.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut b = m.clone();
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
            let _ = decode_message(&b);
        }
    }

    #[test]
    fn a_huge_count_allocates_nothing_big() {
        let mut m = encode_message(1, "s", &[]);
        let n = m.len();
        m[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_message(&m), None);
        // A key length past the end.
        let mut m = encode_message(1, "s", &["k"]);
        let n = m.len();
        m[n - 5..n - 1].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_message(&m), None);
    }

    #[test]
    fn tracked_keys_map_to_user_keys() {
        let ks = KeySpace::new("shop").unwrap();
        for (redis_key, user) in [
            ("shop:{k1}", Some("k1")),
            ("shop:{order:42}:v", Some("order:42")),
            ("shop:{order:42}:lease", Some("order:42")),
            ("shop:{a}b}", Some("a}b")),
            ("shop:{a}b}:v", Some("a}b")),
            ("shop:{a}:v}", Some("a}:v")),
            ("shop:{queue:emails}:#ready", None),
            ("shop:#inv:gen", None),
            ("shop:{}", None),
            ("shop:{k}:", None),
            ("other:{k1}", None),
            ("shop:{k1", None),
        ] {
            assert_eq!(user_key_of(&ks, redis_key), user, "{redis_key}");
        }
    }

    #[test]
    fn keys_are_deduplicated_in_order() {
        let v = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(dedup(v(&["b", "a", "b", "a", "c"])), v(&["b", "a", "c"]));
    }
}
