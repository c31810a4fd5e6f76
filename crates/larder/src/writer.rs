//! Write-behind: the cache is updated now, the source of truth soon after,
//! in batches, by a flusher task.
//!
//! The queue holds at most `capacity` distinct keys; a key written again
//! while it waits keeps one slot and its latest value (coalescing). A write
//! that finds the queue full waits for room up to its timeout or is
//! refused ([`Overflow`]): the caller always learns; nothing is dropped
//! silently. The flusher writes a batch when `batch` keys wait or the
//! oldest has waited `interval`, through `Writer::write_many`, retrying with
//! exponential backoff; a batch that still fails after `max_attempts` goes
//! to the dead-letter callback, each entry once, and is counted. Closing
//! the cache (or dropping it) flushes everything left first.
//!
//! Not durable: a process that crashes loses what waits in its queue (at
//! most `capacity` keys and one batch in flight).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use larder_core::{Counter, Error, ErrorKind, Result};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::source::DynWriter;

/// What a write does when the write-behind queue is full.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Wait up to this long for room, then fail with [`ErrorKind::Overflow`].
    Block(Duration),
    /// Fail at once with [`ErrorKind::Overflow`].
    Reject,
}

/// Write-behind settings (`CacheBuilder::write_behind`).
///
/// ```
/// use larder::{Overflow, WriteBehind};
/// use std::time::Duration;
///
/// let wb = WriteBehind::new()
///     .batch(500)
///     .interval(Duration::from_millis(200))
///     .capacity(50_000)
///     .overflow(Overflow::Block(Duration::from_millis(100)))
///     .max_attempts(5);
/// # let _ = wb;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct WriteBehind {
    batch: usize,
    interval: Duration,
    capacity: usize,
    overflow: Overflow,
    max_attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    write_timeout: Duration,
}

impl Default for WriteBehind {
    fn default() -> Self {
        WriteBehind::new()
    }
}

impl WriteBehind {
    /// Batches of 100, every 100 ms at the latest, 10,000 keys of room,
    /// block up to 1 s when full, 5 attempts with backoff from 50 ms to 5 s,
    /// each attempt cut after 30 s.
    pub fn new() -> Self {
        WriteBehind {
            batch: 100,
            interval: Duration::from_millis(100),
            capacity: 10_000,
            overflow: Overflow::Block(Duration::from_secs(1)),
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
        }
    }

    /// Keys per `write_many` call.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// The longest a write waits before its batch goes out.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// Distinct keys the queue holds at most.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// What a write does when the queue is full.
    pub fn overflow(mut self, o: Overflow) -> Self {
        self.overflow = o;
        self
    }

    /// Attempts per batch before it is dead-lettered (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The first retry's delay, doubled per attempt up to `max`.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    /// How long one `write_many` may take before the attempt counts as
    /// failed (a hung source cannot hang `close`).
    pub fn write_timeout(mut self, d: Duration) -> Self {
        self.write_timeout = d;
        self
    }

    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::new(ErrorKind::InvalidConfig, m.to_owned()));
        if self.batch == 0 || self.capacity == 0 || self.max_attempts == 0 {
            return bad("write_behind: batch, capacity and max_attempts must be at least 1");
        }
        if self.interval.is_zero() || self.write_timeout.is_zero() {
            return bad("write_behind: the interval and the write timeout must be positive");
        }
        Ok(())
    }
}

/// Called once per write that could not be written after every attempt.
pub(crate) type DeadLetter<K, V> = dyn Fn(&K, &V, &Error) + Send + Sync;

struct Pending<K, V> {
    values: HashMap<K, V>,
    /// Keys in the order they first entered, with when (Tokio's monotonic
    /// clock: a wall-clock step never delays a flush).
    order: VecDeque<(K, tokio::time::Instant)>,
    /// The batch being written (its values stay readable until written).
    writing: HashMap<K, V>,
    closing: bool,
}

/// The queue, shared by the cache and its flusher task.
pub(crate) struct Queue<K, V> {
    pending: Mutex<Pending<K, V>>,
    work: Notify,
    room: Notify,
    cfg: WriteBehind,
    writer: Arc<dyn DynWriter<K, V>>,
    dead_letter: Option<Box<DeadLetter<K, V>>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    pub(crate) flushed: Counter,
    pub(crate) retries: Counter,
    pub(crate) dead_letters: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) last_error: Mutex<Option<Error>>,
}

/// Write-behind figures (in [`Stats`](crate::Stats)).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBehindStats {
    /// Keys waiting to be written.
    pub queued: u64,
    /// How long the oldest waiting key has waited, in milliseconds.
    pub oldest_ms: u64,
    /// Writes that reached the source.
    pub flushed: u64,
    /// Batches retried after an error.
    pub retries: u64,
    /// Writes given up after every attempt (and handed to the dead-letter callback).
    pub dead_letters: u64,
    /// Writes that replaced a waiting write of the same key.
    pub coalesced: u64,
    /// The last error of the writer, if any.
    pub last_error: Option<String>,
}

impl<K, V> Queue<K, V> {
    /// Stops taking writes; the flusher drains what is left and stops.
    pub(crate) fn close_now(&self) {
        self.pending.lock().closing = true;
        self.work.notify_one();
        self.room.notify_waiters();
    }
}

impl<K, V> Queue<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        cfg: WriteBehind,
        writer: Arc<dyn DynWriter<K, V>>,
        dead_letter: Option<Box<DeadLetter<K, V>>>,
    ) -> Self {
        Queue {
            pending: Mutex::new(Pending {
                values: HashMap::new(),
                order: VecDeque::new(),
                writing: HashMap::new(),
                closing: false,
            }),
            work: Notify::new(),
            room: Notify::new(),
            cfg,
            writer,
            dead_letter,
            flusher: Mutex::new(None),
            flushed: Counter::new(),
            retries: Counter::new(),
            dead_letters: Counter::new(),
            coalesced: Counter::new(),
            last_error: Mutex::new(None),
        }
    }

    /// Drops the waiting write of `key`, if any: a write that goes to the
    /// source directly supersedes it. (A batch already being written is not
    /// recalled: see the crate docs.)
    pub(crate) fn supersede(&self, key: &K) {
        if self.pending.lock().values.remove(key).is_some() {
            self.room.notify_waiters();
        }
    }

    /// The value of `key` waiting to be written, or being written, if any.
    pub(crate) fn pending(&self, key: &K) -> Option<V> {
        let p = self.pending.lock();
        p.values.get(key).or_else(|| p.writing.get(key)).cloned()
    }

    /// Queues a write, waiting for room or refusing per the overflow policy.
    pub(crate) async fn enqueue(self: &Arc<Self>, key: K, value: V) -> Result<()> {
        self.start()?;
        // `None` inside `Some`: block without a bound (the wait overflows
        // the clock, as `Duration::MAX` does).
        let deadline = match self.cfg.overflow {
            Overflow::Block(d) => Some(tokio::time::Instant::now().checked_add(d)),
            Overflow::Reject => None,
        };
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let mut p = self.pending.lock();
                if p.closing {
                    return Err(Error::new(ErrorKind::Closed, "the cache was closed"));
                }
                if let Some(v) = p.values.get_mut(&key) {
                    *v = value;
                    self.coalesced.incr();
                    return Ok(());
                }
                if p.values.len() < self.cfg.capacity {
                    let now = tokio::time::Instant::now();
                    p.values.insert(key.clone(), value);
                    p.order.push_back((key, now));
                    if p.values.len() >= self.cfg.batch || p.values.len() == 1 {
                        self.work.notify_one();
                    }
                    return Ok(());
                }
            }
            let full = || {
                Error::new(
                    ErrorKind::Overflow,
                    format!(
                        "the write-behind queue is full ({} keys)",
                        self.cfg.capacity
                    ),
                )
            };
            match deadline {
                None => return Err(full()),
                Some(None) => room.await,
                Some(Some(at)) => {
                    if tokio::time::timeout_at(at, room).await.is_err() {
                        return Err(full());
                    }
                }
            }
        }
    }

    /// Starts the flusher on the current runtime, or again if the one it
    /// ran on stopped (a runtime shut down under it): a queued write always
    /// has a flusher while writes are accepted.
    fn start(self: &Arc<Self>) -> Result<()> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| crate::cache::no_runtime())?;
        let mut f = self.flusher.lock();
        if f.as_ref().is_none_or(JoinHandle::is_finished) {
            let me = Arc::clone(self);
            *f = Some(handle.spawn(async move { me.flush_loop().await }));
        }
        Ok(())
    }

    /// Takes the next batch: when `batch` keys wait, the oldest waited the
    /// interval, or the queue is closing. `None` when closed and empty.
    async fn next_batch(&self) -> Option<Vec<(K, V)>> {
        loop {
            let work = self.work.notified();
            tokio::pin!(work);
            work.as_mut().enable();
            let wait = {
                let mut p = self.pending.lock();
                let now = tokio::time::Instant::now();
                let due = p
                    .order
                    .front()
                    .and_then(|(_, t)| t.checked_add(self.cfg.interval));
                if p.values.len() >= self.cfg.batch
                    || (p.closing && !p.values.is_empty())
                    || due.is_some_and(|d| now >= d)
                {
                    let mut batch = Vec::with_capacity(self.cfg.batch.min(p.values.len()));
                    while batch.len() < self.cfg.batch {
                        let Some((k, _)) = p.order.pop_front() else {
                            break;
                        };
                        if let Some(v) = p.values.remove(&k) {
                            p.writing.insert(k.clone(), v.clone());
                            batch.push((k, v));
                        }
                    }
                    drop(p);
                    self.room.notify_waiters();
                    return Some(batch);
                }
                if p.closing {
                    return None;
                }
                due.map(|d| d.saturating_duration_since(now))
            };
            match wait {
                Some(d) => {
                    let _ = tokio::time::timeout(d, work).await;
                }
                None => work.await,
            }
        }
    }

    async fn flush_loop(self: Arc<Self>) {
        while let Some(batch) = self.next_batch().await {
            let keys: Vec<K> = batch.iter().map(|(k, _)| k.clone()).collect();
            self.write(batch).await;
            let mut p = self.pending.lock();
            for k in &keys {
                p.writing.remove(k);
            }
        }
    }

    /// Writes a batch with retries; dead-letters it after the last attempt.
    async fn write(&self, batch: Vec<(K, V)>) {
        let mut delay = self.cfg.backoff;
        for attempt in 1..=self.cfg.max_attempts {
            // The future is made inside the guard: a writer that panics
            // before its first await is caught too. A hung writer is cut.
            let write =
                std::panic::AssertUnwindSafe(async { self.writer.write_many(&batch).await });
            let outcome = match tokio::time::timeout(
                self.cfg.write_timeout,
                futures_util::FutureExt::catch_unwind(write),
            )
            .await
            {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::new(ErrorKind::SourcePanicked, "the writer panicked")),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("write_many took longer than {:?}", self.cfg.write_timeout),
                )),
            };
            match outcome {
                Ok(()) => {
                    self.flushed.add(batch.len() as u64);
                    return;
                }
                Err(e) if attempt == self.cfg.max_attempts => {
                    *self.last_error.lock() = Some(e.clone());
                    for (k, v) in &batch {
                        self.dead_letters.incr();
                        if let Some(f) = &self.dead_letter {
                            // A panicking callback must not stop the flusher.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                f(k, v, &e)
                            }));
                        }
                    }
                    return;
                }
                Err(e) => {
                    *self.last_error.lock() = Some(e);
                    self.retries.incr();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cfg.max_backoff);
                }
            }
        }
    }

    /// Stops taking writes and lets the flusher write everything left;
    /// waits for it.
    pub(crate) async fn close(&self) {
        self.close_now();
        let flusher = self.flusher.lock().take();
        if let Some(f) = flusher {
            let _ = f.await;
        }
    }

    pub(crate) fn stats(&self) -> WriteBehindStats {
        let (queued, oldest) = {
            let p = self.pending.lock();
            (p.values.len() as u64, p.order.front().map(|(_, t)| *t))
        };
        let waited = oldest.map_or(Duration::ZERO, |t| {
            tokio::time::Instant::now().saturating_duration_since(t)
        });
        WriteBehindStats {
            queued,
            oldest_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            flushed: self.flushed.get(),
            retries: self.retries.get(),
            dead_letters: self.dead_letters.get(),
            coalesced: self.coalesced.get(),
            last_error: self.last_error.lock().as_ref().map(ToString::to_string),
        }
    }
}
