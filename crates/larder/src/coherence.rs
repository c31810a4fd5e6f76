//! Coherence across instances (`redis` feature): each instance's L1 drops
//! what another instance, or any other client, changed in Redis.
//!
//! A task per cache reads the store's invalidation stream
//! ([`larder_redis::RedisStore::invalidations`]) and evicts each key it
//! names from the L1 (through [`CacheKey::from_key_text`]; a key the type
//! cannot read back clears the whole L1), and clears the L1 on every flush
//! event: the server flushed, the stream's connection was lost (at once,
//! before reconnecting), it came back, or pub/sub's generation moved. When
//! the stream is first up, the L1 is cleared too: what was cached before
//! may have changed unseen. The task holds the cache weakly and ends with
//! it.
//!
//! Tracking mode needs nothing from the writers: Redis tells every tracking
//! connection about every write under the namespace's prefix, this
//! instance's own included (its connections are not the tracking one, so
//! `NOLOOP` cannot tell them apart): an instance's own write evicts its L1
//! copy once more, and its next read of the key goes to the L2. Pub/sub
//! mode sees only what Larder's writers announce: each mutation (a write,
//! an invalidation, a delete; never a fill) publishes its keys.

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use larder_core::{Codec, Counter, Result};
use larder_redis::{CoherenceMode, Invalidation, RedisStore};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::Inner;
use crate::key::CacheKey;

/// The longest an L1 entry lives when coherence is on and
/// `memory_ttl_cap` is not set: the backstop for an invalidation lost in
/// a way nothing detected.
pub const DEFAULT_COHERENT_L1_CAP: Duration = Duration::from_secs(60);

/// Coherence figures (in [`Stats`](crate::Stats)).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoherenceStats {
    /// The stream is up (every node's connection).
    pub connected: bool,
    /// Keys named by invalidations received.
    pub received: u64,
    /// Invalidations this instance announced (pub/sub mode).
    pub sent: u64,
    /// Announcements that failed (pub/sub mode; the write itself stood).
    pub send_errors: u64,
    /// Keys named by invalidations and evicted from the L1 (counted
    /// whether or not the L1 held them).
    pub evicted: u64,
    /// Times the whole L1 was cleared (a flush event, the first
    /// connection, a key the key type cannot read back).
    pub l1_flushes: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Connections made again after a loss.
    pub reconnects: u64,
    /// Times the stream could not be opened (retried with backoff).
    pub open_errors: u64,
}

/// A cache's coherence: the mode, the task, and its figures.
pub(crate) struct Coherence {
    pub(crate) mode: CoherenceMode,
    store: RedisStore,
    /// This instance's sender id once the stream is up (pub/sub mode
    /// announces with it, so the stream skips its own messages).
    sender: Mutex<Option<String>>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The task was started (the operations' fast check).
    started: std::sync::atomic::AtomicBool,
    ready: watch::Sender<bool>,
    stream: Mutex<larder_redis::InvalidationStats>,
    pub(crate) sent: Counter,
    pub(crate) send_errors: Counter,
    evicted: Counter,
    l1_flushes: Counter,
    open_errors: Counter,
}

impl Coherence {
    pub(crate) fn new(mode: CoherenceMode, store: RedisStore) -> Self {
        Coherence {
            mode,
            store,
            sender: Mutex::new(None),
            task: Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
            ready: watch::channel(false).0,
            stream: Mutex::new(larder_redis::InvalidationStats::default()),
            sent: Counter::new(),
            send_errors: Counter::new(),
            evicted: Counter::new(),
            l1_flushes: Counter::new(),
            open_errors: Counter::new(),
        }
    }

    pub(crate) fn stats(&self) -> CoherenceStats {
        let s = self.stream.lock().clone();
        CoherenceStats {
            connected: s.connected && *self.ready.borrow(),
            received: s.keys,
            sent: self.sent.get(),
            send_errors: self.send_errors.get(),
            evicted: self.evicted.get(),
            l1_flushes: self.l1_flushes.get(),
            disconnects: s.disconnects,
            reconnects: s.reconnects,
            open_errors: self.open_errors.get(),
        }
    }

    /// Waits until the stream is up (bounded by the caller).
    pub(crate) async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|up| *up).await;
    }

    /// Pub/sub mode: tells the other instances that `keys` changed.
    pub(crate) async fn announce(&self, keys: &[String]) {
        if self.mode != CoherenceMode::PubSub || keys.is_empty() {
            return;
        }
        let sender = self.sender.lock().clone().unwrap_or_default();
        match self.store.publish_invalidation(&sender, keys).await {
            Ok(()) => self.sent.add(keys.len() as u64),
            Err(_) => self.send_errors.incr(),
        }
    }

    /// Stops the task (close, drop).
    pub(crate) fn stop(&self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

impl<K, V, C> Inner<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Starts the coherence task on the current runtime, if coherence is
    /// on and it is not running. Without a runtime, the next operation
    /// starts it ([`Inner::ensure_coherence`]).
    pub(crate) fn start_coherence(self: &Arc<Self>) {
        let Some(co) = &self.coherence else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut task = co.task.lock();
        if task.as_ref().is_some_and(|t| !t.is_finished()) || self.is_closed() {
            return;
        }
        let weak = Arc::downgrade(self);
        *task = Some(handle.spawn(run(weak, co.store.clone(), co.mode)));
        co.started.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Starts the coherence task if it never started (a cache built
    /// outside a runtime): one relaxed load on the operations' path.
    #[inline]
    pub(crate) fn ensure_coherence(self: &Arc<Self>) {
        if let Some(co) = &self.coherence
            && !co.started.load(std::sync::atomic::Ordering::Relaxed)
        {
            self.start_coherence();
        }
    }
}

/// The coherence task: opens the stream (retrying with backoff), then
/// applies its events until the cache is gone.
async fn run<K, V, C>(weak: Weak<Inner<K, V, C>>, store: RedisStore, mode: CoherenceMode)
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    // However the task ends (its runtime shut down, `close`), the next
    // operation starts it again (unless closed) and `connected` says no.
    let _ended = Ended(weak.clone());
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut stream = match store.invalidations(mode).await {
            Ok(s) => s,
            Err(_) => {
                let Some(inner) = weak.upgrade() else { return };
                if let Some(co) = &inner.coherence {
                    co.open_errors.incr();
                }
                drop(inner);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        {
            let Some(inner) = weak.upgrade() else { return };
            let Some(co) = &inner.coherence else { return };
            *co.sender.lock() = Some(stream.sender_id().to_owned());
            // Whatever the L1 took before the stream was up may have
            // changed unseen.
            flush(&inner);
            *co.stream.lock() = stream.stats();
            co.ready.send_replace(true);
        }
        while let Some(event) = stream.recv().await {
            let Some(inner) = weak.upgrade() else { return };
            let Some(co) = &inner.coherence else { return };
            match event {
                Invalidation::Keys(texts) => {
                    for text in &texts {
                        match K::from_key_text(text) {
                            Some(k) => {
                                inner.invalidate_local(&k);
                                co.evicted.incr();
                            }
                            None => {
                                flush(&inner);
                                break;
                            }
                        }
                    }
                }
                Invalidation::Flush(_) => flush(&inner),
                _ => flush(&inner),
            }
            *co.stream.lock() = stream.stats();
        }
        // The stream ended (it does not while it lives): open it again.
        if let Some(inner) = weak.upgrade()
            && let Some(co) = &inner.coherence
        {
            co.ready.send_replace(false);
            flush(&inner);
        }
    }
}

/// Marks the coherence task as not running when its future is dropped.
struct Ended<K, V, C>(Weak<Inner<K, V, C>>);

impl<K, V, C> Drop for Ended<K, V, C> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade()
            && let Some(co) = &inner.coherence
        {
            co.started
                .store(false, std::sync::atomic::Ordering::Release);
            co.ready.send_replace(false);
        }
    }
}

fn flush<K, V, C>(inner: &Inner<K, V, C>)
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    inner.clear_l1();
    if let Some(co) = &inner.coherence {
        co.l1_flushes.incr();
    }
}

/// Checks the pairing of options at build.
pub(crate) fn check(has_l1: bool, has_redis: bool) -> Result<()> {
    if !has_l1 || !has_redis {
        return Err(larder_core::Error::new(
            larder_core::ErrorKind::InvalidConfig,
            "coherence needs an L1 (memory) and the Redis L2 (CacheBuilder::redis)",
        ));
    }
    Ok(())
}
