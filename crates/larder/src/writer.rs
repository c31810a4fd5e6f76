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
//! Not durable by default: a process that crashes loses what waits in its
//! queue (at most `capacity` keys and one batch in flight). Durable mode
//! (`CacheBuilder::durable`, `redis` feature) journals every write in a
//! Redis Stream in the same script as the cache write, acknowledges it
//! once the writer succeeded, and replays what a crashed process left.

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
    pub(crate) claim_after: Duration,
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
            claim_after: Duration::from_secs(600),
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

    /// Durable mode only: a journalled write that no instance has touched
    /// for this long is taken over and written by another instance (its
    /// writer presumably died). A live instance renews the writes it holds
    /// every half `claim_after`, and before each attempt of a batch; a
    /// batch may take the interval plus every attempt with its timeout and
    /// backoff without a renewal of the writes still waiting, so
    /// `claim_after` must exceed twice that (checked at build). Default 10
    /// minutes.
    pub fn claim_after(mut self, d: Duration) -> Self {
        self.claim_after = d;
        self
    }

    /// The longest a live instance keeps a write before it is written or
    /// dead-lettered.
    #[cfg(feature = "redis")]
    pub(crate) fn longest_hold(&self) -> Duration {
        let attempts = self.max_attempts;
        self.interval.saturating_add(
            (self.write_timeout.saturating_add(self.max_backoff)).saturating_mul(attempts),
        )
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

/// Turns a queued write into journal bytes and back (durable mode).
#[cfg(feature = "redis")]
pub(crate) type EncodeWrite<K, V> = dyn Fn(&K, &V) -> Result<Vec<u8>> + Send + Sync;
/// See [`EncodeWrite`].
#[cfg(feature = "redis")]
pub(crate) type DecodeWrite<K, V> = dyn Fn(&[u8]) -> Result<(K, V)> + Send + Sync;

/// A key's journal entries while its write waits (durable mode): the key
/// text and the ids, oldest first (a coalesced key has several).
#[derive(Debug, Clone, Default)]
pub(crate) struct Journalled {
    text: String,
    ids: Vec<String>,
}

impl Journalled {
    fn newest(&self) -> Option<&str> {
        self.ids.last().map(String::as_str)
    }

    fn pairs(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.ids.iter().map(|id| (self.text.clone(), id.clone()))
    }
}

struct Waiting<V> {
    value: V,
    journal: Option<Journalled>,
}

struct Pending<K, V> {
    values: HashMap<K, Waiting<V>>,
    /// Keys in the order they first entered, with when (Tokio's monotonic
    /// clock: a wall-clock step never delays a flush).
    order: VecDeque<(K, tokio::time::Instant)>,
    /// The batch being written (its values stay readable until written).
    writing: HashMap<K, V>,
    /// Room promised to writes on their way in (durable mode journals the
    /// write before it enters the queue).
    reserved: usize,
    /// Waiting writes taken out by a direct write still under way (they
    /// come back if it fails): the flusher does not stop while any is out.
    held: usize,
    closing: bool,
}

/// A batch taken from the queue: the writes, and per write its journal.
struct Batch<K, V> {
    items: Vec<(K, V)>,
    journal: Vec<Option<Journalled>>,
}

/// Durable mode: the journal and how writes become its bytes.
#[cfg(feature = "redis")]
pub(crate) struct Durable<K, V> {
    pub(crate) journal: larder_redis::Journal,
    pub(crate) encode: Box<EncodeWrite<K, V>>,
    pub(crate) decode: Box<DecodeWrite<K, V>>,
    /// Set once this consumer's own leftovers were replayed.
    own_done: tokio::sync::Mutex<bool>,
    /// The same, for the appends' fast check.
    own_ready: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "redis")]
impl<K, V> Durable<K, V> {
    pub(crate) fn new(
        journal: larder_redis::Journal,
        encode: Box<EncodeWrite<K, V>>,
        decode: Box<DecodeWrite<K, V>>,
    ) -> Self {
        Durable {
            journal,
            encode,
            decode,
            own_done: tokio::sync::Mutex::new(false),
            own_ready: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The queue, shared by the cache and its flusher task.
pub(crate) struct Queue<K, V> {
    pending: Mutex<Pending<K, V>>,
    work: Notify,
    room: Notify,
    cfg: WriteBehind,
    writer: Arc<dyn DynWriter<K, V>>,
    dead_letter: Option<Box<DeadLetter<K, V>>>,
    #[cfg(feature = "redis")]
    pub(crate) durable: Option<Durable<K, V>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    /// Journal ids of the batch being written (durable mode).
    in_flight: Mutex<Vec<String>>,
    /// A flusher was started once (the operations' fast check).
    pub(crate) started: std::sync::atomic::AtomicBool,
    pub(crate) flushed: Counter,
    pub(crate) retries: Counter,
    pub(crate) dead_letters: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) journalled: Counter,
    pub(crate) replayed: Counter,
    pub(crate) superseded: Counter,
    pub(crate) journal_errors: Counter,
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
    /// Writes given up after every attempt (and handed to the dead-letter
    /// callback; in durable mode also moved to the dead-letter stream).
    pub dead_letters: u64,
    /// Writes that replaced a waiting write of the same key.
    pub coalesced: u64,
    /// Durable mode: writes journalled.
    pub journalled: u64,
    /// Durable mode: journalled writes taken over from a previous run or
    /// another instance and queued here.
    pub replayed: u64,
    /// Durable mode: writes not sent because a later write of the key (by
    /// any instance) was journalled after them.
    pub superseded: u64,
    /// Durable mode: journal calls that failed (acknowledgements retried
    /// later by a replay, claims retried at the next interval).
    pub journal_errors: u64,
    /// The last error of the writer or the journal, if any.
    pub last_error: Option<String>,
}

/// Room for one write, held between waiting for it and queueing the write
/// (durable mode journals in between). Dropped unused, it frees the room.
pub(crate) struct Slot<K, V> {
    queue: Arc<Queue<K, V>>,
    reserved: bool,
}

impl<K, V> Drop for Slot<K, V> {
    fn drop(&mut self) {
        if self.reserved {
            self.queue.pending.lock().reserved -= 1;
            self.queue.room.notify_waiters();
            // A closing flusher waits for every promised write.
            self.queue.work.notify_one();
        }
    }
}

/// A waiting write taken out of the queue by a write that goes to the
/// source directly (`put`, `delete`); put back if that write fails.
pub(crate) struct Superseded<K: Hash + Eq + Clone, V> {
    queue: Arc<Queue<K, V>>,
    held: Option<(K, Waiting<V>)>,
}

impl<K: Hash + Eq + Clone, V> Superseded<K, V> {
    /// The direct write reached the source: the waiting write is gone for
    /// good. Returns its journal entries, to acknowledge.
    pub(crate) fn written(mut self) -> Option<Vec<(String, String)>> {
        let (_, w) = self.held.take()?;
        self.queue.pending.lock().held -= 1;
        self.queue.work.notify_one();
        self.queue.superseded.incr();
        w.journal.map(|j| j.pairs().collect())
    }
}

impl<K: Hash + Eq + Clone, V> Drop for Superseded<K, V> {
    fn drop(&mut self) {
        if let Some((k, w)) = self.held.take() {
            let p = &mut *self.queue.pending.lock();
            p.held -= 1;
            match p.values.entry(k) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    p.order
                        .push_back((e.key().clone(), tokio::time::Instant::now()));
                    e.insert(w);
                }
                // A newer write of the key came in meanwhile: it wins, and
                // keeps the older write's journal entries to settle with it.
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if let (Some(old), Some(new)) = (w.journal, &mut e.get_mut().journal) {
                        let mut ids = old.ids;
                        ids.append(&mut new.ids);
                        new.ids = ids;
                    }
                }
            }
            self.queue.work.notify_one();
        }
    }
}

impl<K, V> Queue<K, V> {
    /// Stops taking writes; the flusher drains what is left and stops.
    pub(crate) fn close_now(&self) {
        self.pending.lock().closing = true;
        self.work.notify_one();
        self.room.notify_waiters();
    }
}

/// Journal entries read per replay.
#[cfg(feature = "redis")]
const REPLAY_LIMIT: usize = 10_000;

impl<K, V> Queue<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        cfg: WriteBehind,
        writer: Arc<dyn DynWriter<K, V>>,
        dead_letter: Option<Box<DeadLetter<K, V>>>,
        #[cfg(feature = "redis")] durable: Option<Durable<K, V>>,
    ) -> Self {
        Queue {
            pending: Mutex::new(Pending {
                values: HashMap::new(),
                order: VecDeque::new(),
                writing: HashMap::new(),
                reserved: 0,
                held: 0,
                closing: false,
            }),
            work: Notify::new(),
            room: Notify::new(),
            cfg,
            writer,
            dead_letter,
            #[cfg(feature = "redis")]
            durable,
            flusher: Mutex::new(None),
            in_flight: Mutex::new(Vec::new()),
            started: std::sync::atomic::AtomicBool::new(false),
            flushed: Counter::new(),
            retries: Counter::new(),
            dead_letters: Counter::new(),
            coalesced: Counter::new(),
            journalled: Counter::new(),
            replayed: Counter::new(),
            superseded: Counter::new(),
            journal_errors: Counter::new(),
            last_error: Mutex::new(None),
        }
    }

    /// Durable mode is on.
    #[cfg(feature = "redis")]
    pub(crate) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Takes the waiting write of `key` out of the queue, if any: a write
    /// that goes to the source directly supersedes it once it succeeds
    /// ([`Superseded::written`]); dropped before, it goes back. (A batch
    /// already being written is not recalled: see the crate docs.)
    pub(crate) fn supersede(self: &Arc<Self>, key: &K) -> Superseded<K, V> {
        let held = {
            let mut p = self.pending.lock();
            let held = p.values.remove_entry(key);
            if held.is_some() {
                p.held += 1;
            }
            held
        };
        if held.is_some() {
            self.room.notify_waiters();
        }
        Superseded {
            queue: Arc::clone(self),
            held,
        }
    }

    /// The value of `key` waiting to be written, or being written, if any.
    pub(crate) fn pending(&self, key: &K) -> Option<V> {
        let p = self.pending.lock();
        p.values
            .get(key)
            .map(|w| &w.value)
            .or_else(|| p.writing.get(key))
            .cloned()
    }

    /// Queues a write, waiting for room or refusing per the overflow policy.
    pub(crate) async fn enqueue(self: &Arc<Self>, key: K, value: V) -> Result<()> {
        let slot = self.reserve(&key).await?;
        self.fill(slot, key, value, None);
        Ok(())
    }

    /// Waits for room for a write of `key` (none needed if a write of it
    /// waits: they coalesce), or refuses per the overflow policy.
    pub(crate) async fn reserve(self: &Arc<Self>, key: &K) -> Result<Slot<K, V>> {
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
                if p.values.contains_key(key) {
                    return Ok(self.slot(false));
                }
                if p.values.len() + p.reserved < self.cfg.capacity {
                    p.reserved += 1;
                    return Ok(self.slot(true));
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

    fn slot(self: &Arc<Self>, reserved: bool) -> Slot<K, V> {
        Slot {
            queue: Arc::clone(self),
            reserved,
        }
    }

    /// Queues a write in the room `slot` holds. With a journal entry, a
    /// write of the key already waiting keeps whichever of the two was
    /// journalled later (a replay may bring older writes than the queue's).
    pub(crate) fn fill(&self, mut slot: Slot<K, V>, key: K, value: V, journal: Option<Journalled>) {
        let mut p = self.pending.lock();
        if std::mem::take(&mut slot.reserved) {
            p.reserved -= 1;
        }
        Self::put(&mut p, key, value, journal, &self.coalesced);
        if p.values.len() >= self.cfg.batch || p.values.len() == 1 || p.closing {
            self.work.notify_one();
        }
    }

    fn put(
        p: &mut Pending<K, V>,
        key: K,
        value: V,
        journal: Option<Journalled>,
        coalesced: &Counter,
    ) {
        match p.values.get_mut(&key) {
            Some(w) => {
                coalesced.incr();
                let newer = match (&journal, &w.journal) {
                    (Some(new), Some(old)) => {
                        entry_order(new.newest()) >= entry_order(old.newest())
                    }
                    _ => true,
                };
                match (journal, &mut w.journal) {
                    (Some(new), Some(old)) => {
                        let mut ids = std::mem::take(&mut old.ids);
                        ids.extend(new.ids);
                        ids.sort_by_key(|id| entry_order(Some(id)));
                        ids.dedup();
                        old.ids = ids;
                    }
                    (Some(new), slot @ None) => *slot = Some(new),
                    (None, _) => {}
                }
                if newer {
                    w.value = value;
                }
            }
            None => {
                p.order
                    .push_back((key.clone(), tokio::time::Instant::now()));
                p.values.insert(key, Waiting { value, journal });
            }
        }
    }

    /// Starts the flusher on the current runtime, or again if the one it
    /// ran on stopped (a runtime shut down under it): a queued write always
    /// has a flusher while writes are accepted.
    pub(crate) fn start(self: &Arc<Self>) -> Result<()> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| crate::cache::no_runtime())?;
        let mut f = self.flusher.lock();
        if f.as_ref().is_none_or(JoinHandle::is_finished) {
            let me = Arc::clone(self);
            *f = Some(handle.spawn(async move { me.flush_loop().await }));
        }
        self.started
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Takes the next batch: when `batch` keys wait, the oldest waited the
    /// interval, or the queue is closing. `None` when closed and empty.
    /// Cancel-safe: the batch is taken and returned without an await.
    async fn next_batch(&self) -> Option<Batch<K, V>> {
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
                    let n = self.cfg.batch.min(p.values.len());
                    let mut batch = Batch {
                        items: Vec::with_capacity(n),
                        journal: Vec::with_capacity(n),
                    };
                    while batch.items.len() < self.cfg.batch {
                        let Some((k, _)) = p.order.pop_front() else {
                            break;
                        };
                        if let Some(w) = p.values.remove(&k) {
                            p.writing.insert(k.clone(), w.value.clone());
                            batch.items.push((k, w.value));
                            batch.journal.push(w.journal);
                        }
                    }
                    drop(p);
                    self.room.notify_waiters();
                    return Some(batch);
                }
                if p.closing && p.reserved == 0 && p.held == 0 {
                    return None;
                }
                // Closing with writes on their way in: wait for them.
                if p.closing {
                    None
                } else {
                    due.map(|d| d.saturating_duration_since(now))
                }
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
        #[cfg(feature = "redis")]
        let claim_every = self.cfg.claim_after / 2;
        #[cfg(feature = "redis")]
        let mut next_claim = tokio::time::Instant::now();
        #[cfg(feature = "redis")]
        if self.durable.is_some() {
            // A failure is counted; the next claim tries again.
            let _ = self.replay(true).await;
            next_claim = tokio::time::Instant::now() + claim_every;
        }
        loop {
            #[cfg(feature = "redis")]
            let batch = if self.durable.is_some() {
                tokio::select! {
                    // The renewal first: a busy queue must not starve it.
                    biased;
                    () = tokio::time::sleep_until(next_claim) => {
                        // Ours stay ours: no other instance takes over a
                        // write this one still holds.
                        self.touch_held().await;
                        // Own leftovers too, if the first replay failed.
                        let _ = self.replay(true).await;
                        next_claim = tokio::time::Instant::now() + claim_every;
                        continue;
                    }
                    b = self.next_batch() => b,
                }
            } else {
                self.next_batch().await
            };
            #[cfg(not(feature = "redis"))]
            let batch = self.next_batch().await;
            let Some(batch) = batch else { break };
            let keys: Vec<K> = batch.items.iter().map(|(k, _)| k.clone()).collect();
            self.write(batch).await;
            let mut p = self.pending.lock();
            for k in &keys {
                p.writing.remove(k);
            }
        }
    }

    /// Writes a batch with retries; dead-letters it after the last attempt.
    /// In durable mode, writes superseded by a later journalled write are
    /// left out, and the journal is settled after.
    async fn write(&self, batch: Batch<K, V>) {
        let Batch { items, journal } = batch;
        #[cfg(feature = "redis")]
        let (items, journal) = self.drop_superseded(items, journal).await;
        let pairs: Vec<(String, String)> = journal
            .iter()
            .flatten()
            .flat_map(Journalled::pairs)
            .collect();
        *self.in_flight.lock() = pairs.iter().map(|(_, id)| id.clone()).collect();
        let outcome = if items.is_empty() {
            Ok(())
        } else {
            self.write_with_retries(&items).await
        };
        match outcome {
            Ok(()) => {
                self.flushed.add(items.len() as u64);
                self.settle(&pairs, None).await;
            }
            Err(e) => {
                *self.last_error.lock() = Some(e.clone());
                self.settle(&pairs, Some(&e)).await;
                for (k, v) in &items {
                    self.dead_letters.incr();
                    if let Some(f) = &self.dead_letter {
                        // A panicking callback must not stop the flusher.
                        let _ =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(k, v, &e)));
                    }
                }
            }
        }
        self.in_flight.lock().clear();
    }

    /// Durable mode: leaves out of a batch the writes a later journalled
    /// write of their key superseded (by any instance), acknowledging
    /// their entries; if the journal cannot tell, keeps them all (at least
    /// once beats never).
    #[cfg(feature = "redis")]
    async fn drop_superseded(
        &self,
        items: Vec<(K, V)>,
        journal: Vec<Option<Journalled>>,
    ) -> (Vec<(K, V)>, Vec<Option<Journalled>>) {
        let Some(d) = &self.durable else {
            return (items, journal);
        };
        let newest: Vec<(String, String)> = journal
            .iter()
            .map(|j| {
                j.as_ref()
                    .and_then(|j| Some((j.text.clone(), j.newest()?.to_owned())))
                    .unwrap_or_default()
            })
            .collect();
        let latest = match d.journal.is_latest(&newest).await {
            Ok(l) => l,
            Err(e) => {
                self.journal_failed(e);
                return (items, journal);
            }
        };
        let (mut keep_items, mut keep_journal, mut stale) = (Vec::new(), Vec::new(), Vec::new());
        for ((item, j), latest) in items.into_iter().zip(journal).zip(latest) {
            match j {
                Some(j) if !latest => stale.extend(j.pairs()),
                j => {
                    keep_items.push(item);
                    keep_journal.push(j);
                }
            }
        }
        if !stale.is_empty() {
            self.superseded.add(stale.len() as u64);
            self.settle(&stale, None).await;
        }
        (keep_items, keep_journal)
    }

    /// Durable mode: resets the idle time of every journal entry this
    /// instance holds (waiting, or in the batch being written).
    #[cfg(feature = "redis")]
    async fn touch_held(&self) {
        let Some(d) = &self.durable else { return };
        let mut ids: Vec<String> = self.in_flight.lock().clone();
        ids.extend(
            self.pending
                .lock()
                .values
                .values()
                .filter_map(|w| w.journal.as_ref())
                .flat_map(|j| j.ids.iter().cloned()),
        );
        if let Err(e) = d.journal.touch(&ids).await {
            self.journal_failed(e);
        }
    }

    /// Acknowledges (or, with an error, dead-letters) journal entries. A
    /// failure leaves them pending: they are replayed later (at least once).
    async fn settle(&self, pairs: &[(String, String)], error: Option<&Error>) {
        if pairs.is_empty() {
            return;
        }
        #[cfg(feature = "redis")]
        if let Some(d) = &self.durable {
            let done = match error {
                None => d.journal.ack(pairs).await,
                Some(e) => d.journal.dead_letter(pairs, &e.to_string()).await,
            };
            if let Err(e) = done {
                self.journal_failed(e);
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = error;
    }

    #[cfg(feature = "redis")]
    fn journal_failed(&self, e: Error) {
        self.journal_errors.incr();
        *self.last_error.lock() = Some(e);
    }

    /// A direct write of `text` reached the source (durable mode):
    /// acknowledges the journal entries of the queued write it superseded
    /// here, and makes every journalled write of the key older than it.
    pub(crate) async fn settle_superseded(&self, pairs: Option<Vec<(String, String)>>, text: &str) {
        #[cfg(feature = "redis")]
        if let Some(d) = &self.durable
            && let Err(e) = d.journal.supersede(&[text.to_owned()]).await
        {
            // Not retried later: by then another instance may have
            // journalled a newer write of the key, and an unconditional
            // removal would drop it. An older entry may still be written
            // over this write (documented).
            self.journal_failed(e);
        }
        #[cfg(not(feature = "redis"))]
        let _ = text;
        if let Some(pairs) = pairs {
            self.settle(&pairs, None).await;
        }
    }

    async fn write_with_retries(&self, items: &[(K, V)]) -> Result<()> {
        let mut delay = self.cfg.backoff;
        let mut attempt = 1;
        loop {
            // Durable mode: the batch's entries stay ours while we try.
            #[cfg(feature = "redis")]
            if let Some(d) = &self.durable {
                let ids = self.in_flight.lock().clone();
                if let Err(e) = d.journal.touch(&ids).await {
                    self.journal_failed(e);
                }
            }
            // The future is made inside the guard: a writer that panics
            // before its first await is caught too. A hung writer is cut.
            let write = std::panic::AssertUnwindSafe(async { self.writer.write_many(items).await });
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
                Ok(()) => return Ok(()),
                Err(e) if attempt >= self.cfg.max_attempts => return Err(e),
                Err(e) => {
                    *self.last_error.lock() = Some(e);
                    self.retries.incr();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.cfg.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    /// Durable mode: this consumer's leftovers from a previous run are
    /// queued before its first append. Its own pending entries are read
    /// only once, and read after an append they would include this run's
    /// writes, queued a second time (the flusher's first replay raced the
    /// first `put_behind`).
    #[cfg(feature = "redis")]
    pub(crate) async fn own_replayed(&self) -> Result<()> {
        match &self.durable {
            Some(d) if !d.own_ready.load(std::sync::atomic::Ordering::Acquire) => {
                self.replay_with(true, true).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Durable mode: takes over journalled writes nobody is writing and
    /// queues them (no room needed: they were accepted long ago). With
    /// `own`, first this consumer's leftovers from a previous run (once per
    /// queue). Returns how many were queued.
    #[cfg(feature = "redis")]
    pub(crate) async fn replay(&self, own: bool) -> Result<usize> {
        self.replay_with(own, false).await
    }

    /// [`Queue::replay`]; with `only_own`, nothing once the own replay is
    /// done: the writes that waited for it (`own_replayed`) leave the
    /// claim passes to the flusher instead of each making one.
    #[cfg(feature = "redis")]
    async fn replay_with(&self, own: bool, only_own: bool) -> Result<usize> {
        let Some(d) = &self.durable else {
            return Ok(0);
        };
        let mut own_done = d.own_done.lock().await;
        if only_own && *own_done {
            return Ok(0);
        }
        let own = own && !*own_done;
        // Claims only while the queue has room (replays need none, but a
        // bound keeps one instance from taking a whole backlog at once).
        let room = {
            let p = self.pending.lock();
            self.cfg.capacity.saturating_sub(p.values.len())
        };
        let entries = match d
            .journal
            .recover(own, self.cfg.claim_after, room.min(REPLAY_LIMIT))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                self.journal_failed(e.clone());
                return Err(e);
            }
        };
        // `own_done` stays locked until the entries are queued, and is set
        // only then: a second caller (recover_writes) returns once they
        // are, and a replay cut short (an error, a cancelled caller) is
        // done again from the start.
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for e in entries {
            match e.payload.as_deref().map(|p| (d.decode)(p)) {
                Some(Ok((k, v))) => good.push((k, v, (e.key, e.id))),
                _ => bad.push((e.key, e.id)),
            }
        }
        if !bad.is_empty() {
            // Not a write of this cache's types: kept in the dead-letter
            // stream for a person to look at, never written.
            self.dead_letters.add(bad.len() as u64);
            if let Err(e) = d
                .journal
                .dead_letter(&bad, "not a journal entry of this cache (undecodable)")
                .await
            {
                self.journal_failed(e);
            }
        }
        let pairs: Vec<(String, String)> = good.iter().map(|(_, _, p)| p.clone()).collect();
        let latest = match d.journal.is_latest(&pairs).await {
            Ok(l) => l,
            Err(e) => {
                self.journal_failed(e.clone());
                return Err(e);
            }
        };
        let (mut queued, mut stale) = (0, Vec::new());
        {
            let mut p = self.pending.lock();
            for ((k, v, (text, id)), latest) in good.into_iter().zip(latest) {
                if latest {
                    let j = Journalled {
                        text,
                        ids: vec![id],
                    };
                    Self::put(&mut p, k, v, Some(j), &self.coalesced);
                    queued += 1;
                } else {
                    stale.push((text, id));
                }
            }
        }
        if own {
            *own_done = true;
            d.own_ready
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.replayed.add(queued as u64);
        if !stale.is_empty() {
            self.superseded.add(stale.len() as u64);
            self.settle(&stale, None).await;
        }
        if queued > 0 {
            self.work.notify_one();
        }
        Ok(queued)
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
            journalled: self.journalled.get(),
            replayed: self.replayed.get(),
            superseded: self.superseded.get(),
            journal_errors: self.journal_errors.get(),
            last_error: self.last_error.lock().as_ref().map(ToString::to_string),
        }
    }
}

/// A journal entry id's order (`None` sorts first: no journal).
fn entry_order(id: Option<&str>) -> Option<(u64, u64)> {
    let (ms, seq) = id?.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Journalled {
    /// A key's first journal entry.
    #[cfg(feature = "redis")]
    pub(crate) fn new(text: String, id: String) -> Self {
        Journalled {
            text,
            ids: vec![id],
        }
    }
}
