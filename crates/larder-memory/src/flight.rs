//! Per-key single flight: [`SingleFlight`], and the L1's
//! `get_or_*insert_with*` built on it.
//!
//! The first caller for a key becomes the [`Leader`] of its flight; later
//! callers get a [`Wait`] on the same flight. A flight always ends in one of
//! two ways, so no waiter can hang:
//! - **finished**: the leader publishes a value (for the L1, a `Result`,
//!   so an error or a panic reaches every waiter and nothing is cached);
//! - **abandoned**: the [`Leader`] was dropped without finishing (its
//!   future was cancelled, or its thread unwound); waiters get `None` and
//!   retry, and one of them leads.
//!
//! Costs: joining is one map operation under the key's shard lock; a waiter
//! registers its waker once in a slot of its own (O(1), re-polls compare
//! one waker), and unregisters in O(1) when dropped. Finishing wakes each
//! registered waiter once.
//!
//! A flight can be [forgotten](SingleFlight::forget) while it runs: later
//! callers start a new flight, and the old leader learns at
//! [`Leader::finish_with`] that it is no longer current, under the same
//! lock, so whatever it would publish (a cache insert) cannot land after the
//! invalidation that forgot it.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use larder_core::Result;
use parking_lot::{Condvar, Mutex};

use crate::cache::{MemoryCache, panicked};

enum State<T> {
    Running {
        /// One slot per registered async waiter; `None` once it left.
        wakers: Vec<Option<Waker>>,
        /// Free slots, reused by later waiters.
        free: Vec<usize>,
    },
    Done(T),
    Abandoned,
}

struct Flight<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
    /// Callers that joined as waiters (for stats and tests).
    waiters: std::sync::atomic::AtomicUsize,
}

impl<T> Flight<T> {
    fn new() -> Self {
        Flight {
            state: Mutex::new(State::Running {
                wakers: Vec::new(),
                free: Vec::new(),
            }),
            cond: Condvar::new(),
            waiters: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Publishes the outcome and wakes everyone (once).
    fn end(&self, outcome: State<T>) {
        let wakers = {
            let mut st = self.state.lock();
            if !matches!(*st, State::Running { .. }) {
                return;
            }
            match std::mem::replace(&mut *st, outcome) {
                State::Running { wakers, .. } => wakers,
                _ => Vec::new(),
            }
        };
        self.cond.notify_all();
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

type Table<K, T> = hashbrown::HashMap<K, Arc<Flight<T>>>;

struct Shared<K, T> {
    shards: Box<[Mutex<Table<K, T>>]>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// A table of in-flight computations, one per key. Cheap to clone (shared).
/// Runtime-agnostic: waiting is a plain future or a blocking wait.
///
/// ```
/// use larder_memory::{Join, SingleFlight};
///
/// let flights: SingleFlight<&str, u32> = SingleFlight::new();
/// let Join::Leader(leader) = flights.join("k") else { unreachable!() };
/// let Join::Wait(waiter) = flights.join("k") else { unreachable!() };
/// assert_eq!(flights.waiters(&"k"), 1);
/// assert!(leader.finish(42), "still the current flight");
/// assert_eq!(waiter.wait_blocking(), Some(42));
/// assert_eq!(flights.len(), 0);
/// ```
pub struct SingleFlight<K, T> {
    shared: Arc<Shared<K, T>>,
}

impl<K, T> Clone for SingleFlight<K, T> {
    fn clone(&self) -> Self {
        SingleFlight {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, T> fmt::Debug for SingleFlight<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlight")
            .field("shards", &self.shared.shards.len())
            .finish()
    }
}

/// What [`SingleFlight::join`] made of the caller.
#[must_use = "a dropped leader abandons its flight"]
pub enum Join<K: Hash + Eq, T> {
    /// The caller leads: it must compute the value and
    /// [`finish`](Leader::finish) (dropping the leader abandons the flight).
    Leader(Leader<K, T>),
    /// Another caller leads: await this (or [`Wait::wait_blocking`]).
    Wait(Wait<T>),
}

impl<K: Hash + Eq, T> fmt::Debug for Join<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Join::Leader(_) => "Join::Leader",
            Join::Wait(_) => "Join::Wait",
        })
    }
}

impl<K, T> Default for SingleFlight<K, T>
where
    K: Hash + Eq,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq,
{
    /// A table with one shard per 4 threads of parallelism (at least 8).
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards((cores * 4).max(8))
    }

    /// A table with `n` shards (rounded up to a power of two, at least 1).
    pub fn with_shards(n: usize) -> Self {
        let n = n.clamp(1, 1 << 16).next_power_of_two();
        SingleFlight {
            shared: Arc::new(Shared {
                shards: (0..n).map(|_| Mutex::new(Table::new())).collect(),
                hasher: hashbrown::DefaultHashBuilder::default(),
            }),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<Table<K, T>> {
        let h = self.shared.hasher.hash_one(key);
        let n = self.shared.shards.len();
        &self.shared.shards[(h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (n - 1)]
    }

    /// Joins the flight for `key`: leader if none is running, else waiter.
    pub fn join(&self, key: K) -> Join<K, T>
    where
        K: Clone,
    {
        let mut map = self.shard(&key).lock();
        if let Some(f) = map.get(&key) {
            f.waiters.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Join::Wait(Wait {
                flight: Arc::clone(f),
                slot: None,
            });
        }
        let flight = Arc::new(Flight::new());
        map.insert(key.clone(), Arc::clone(&flight));
        drop(map);
        Join::Leader(Leader {
            table: self.clone(),
            key: Some(key),
            flight,
        })
    }

    /// Leads a new flight for `key` unless one is running: `None` then, and
    /// nothing else happens (no waiter is counted, the key is not cloned).
    /// For background work that needs no answer (a refresh).
    pub fn lead(&self, key: &K) -> Option<Leader<K, T>>
    where
        K: Clone,
    {
        let mut map = self.shard(key).lock();
        if map.contains_key(key) {
            return None;
        }
        let flight = Arc::new(Flight::new());
        map.insert(key.clone(), Arc::clone(&flight));
        drop(map);
        Some(Leader {
            table: self.clone(),
            key: Some(key.clone()),
            flight,
        })
    }

    /// Forgets the running flight of `key`, if any: later callers start a
    /// new one, and the old leader's [`Leader::finish_with`] sees that it is
    /// no longer current. Its waiters still get its outcome. `true` if a
    /// flight was running.
    pub fn forget<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).lock().remove(key).is_some()
    }

    /// Forgets every running flight (see [`SingleFlight::forget`]).
    pub fn forget_all(&self) {
        for shard in self.shared.shards.iter() {
            shard.lock().clear();
        }
    }

    /// How many callers joined the running flight of `key` as waiters.
    pub fn waiters<Q>(&self, key: &Q) -> usize
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key)
            .lock()
            .get(key)
            .map_or(0, |f| f.waiters.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// How many flights are running.
    pub fn len(&self) -> usize {
        self.shared.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no flight is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The caller that computes a flight's value. Dropping it without
/// finishing abandons the flight: its waiters retry.
pub struct Leader<K: Hash + Eq, T> {
    table: SingleFlight<K, T>,
    /// `None` once finished.
    key: Option<K>,
    flight: Arc<Flight<T>>,
}

impl<K: Hash + Eq, T> fmt::Debug for Leader<K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Leader")
    }
}

impl<K: Hash + Eq, T> Leader<K, T> {
    /// A waiter on this leader's own flight: the leader's caller awaits it
    /// when the computation runs elsewhere (a spawned task owns the leader).
    pub fn wait(&self) -> Wait<T> {
        Wait {
            flight: Arc::clone(&self.flight),
            slot: None,
        }
    }

    /// Ends the flight with `value` and wakes every waiter. `true` if the
    /// flight was still current (not [forgotten](SingleFlight::forget)).
    pub fn finish(self, value: T) -> bool {
        self.finish_with(value, |_| {})
    }

    /// As [`Leader::finish`], and runs `publish` first if the flight is
    /// still current, under the table's lock for this key, so a
    /// [`SingleFlight::forget`] either happens before the check (and
    /// `publish` does not run) or after `publish`. `publish` must not join
    /// a flight of the same table.
    pub fn finish_with(mut self, value: T, publish: impl FnOnce(&T)) -> bool {
        let key = self.key.take().expect("a leader finishes once");
        let (current, panic) = {
            let mut map = self.table.shard(&key).lock();
            let current = map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight));
            let mut panic = None;
            if current {
                // A panicking `publish` must not leave the flight in the
                // table, running forever: it is removed and ended first.
                panic = catch_unwind(AssertUnwindSafe(|| publish(&value))).err();
                map.remove(&key);
            }
            (current, panic)
        };
        match panic {
            None => self.flight.end(State::Done(value)),
            Some(p) => {
                self.flight.end(State::Abandoned);
                resume_unwind(p);
            }
        }
        current
    }
}

impl<K: Hash + Eq, T> Drop for Leader<K, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            {
                let mut map = self.table.shard(&key).lock();
                if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                    map.remove(&key);
                }
            }
            self.flight.end(State::Abandoned);
        }
    }
}

/// Waiting for another caller's flight: a future of `Some(value)`, or
/// `None` if the leader abandoned it (retry, and maybe lead).
#[must_use = "futures do nothing unless awaited"]
pub struct Wait<T> {
    flight: Arc<Flight<T>>,
    /// This waiter's waker slot, once registered.
    slot: Option<usize>,
}

impl<T> fmt::Debug for Wait<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Wait")
    }
}

impl<T: Clone> Wait<T> {
    /// Blocks the thread until the flight ends.
    pub fn wait_blocking(self) -> Option<T> {
        let mut st = self.flight.state.lock();
        while matches!(*st, State::Running { .. }) {
            self.flight.cond.wait(&mut st);
        }
        match &*st {
            State::Done(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl<T: Clone> Future for Wait<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let mut st = this.flight.state.lock();
        match &mut *st {
            State::Running { wakers, free } => {
                match this.slot {
                    Some(i) => match &mut wakers[i] {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        w => *w = Some(cx.waker().clone()),
                    },
                    None => {
                        let w = Some(cx.waker().clone());
                        let i = match free.pop() {
                            Some(i) => {
                                wakers[i] = w;
                                i
                            }
                            None => {
                                wakers.push(w);
                                wakers.len() - 1
                            }
                        };
                        this.slot = Some(i);
                    }
                }
                Poll::Pending
            }
            State::Done(v) => Poll::Ready(Some(v.clone())),
            State::Abandoned => Poll::Ready(None),
        }
    }
}

impl<T> Drop for Wait<T> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut st = self.flight.state.lock();
            if let State::Running { wakers, free } = &mut *st {
                wakers[i] = None;
                free.push(i);
            }
        }
    }
}

/// Where a caller stands on one pass of the L1's single-flight loop.
enum Step<K: Hash + Eq, V> {
    /// The value is in the cache.
    Found(V),
    /// This caller leads the flight and must run its initialiser.
    Lead(Leader<K, Result<V>>),
    /// Another caller leads: wait on its flight.
    Wait(Wait<Result<V>>),
}

/// Looks in the cache, then joins the key's flight as leader or waiter. A
/// new leader checks the cache once more: another flight may have filled
/// the key between the miss and the join.
fn step<K, V, S>(cache: &MemoryCache<K, V, S>, key: &K) -> Step<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    if let Some(v) = cache.get(key) {
        return Step::Found(v);
    }
    match cache.inner.flights.join(key.clone()) {
        Join::Leader(lead) => match cache.peek(key) {
            Some(v) => {
                lead.finish(Ok(v.clone()));
                Step::Found(v)
            }
            None => Step::Lead(lead),
        },
        Join::Wait(w) => Step::Wait(w),
    }
}

/// Publishes a leader's outcome: a value is cached and handed to every
/// waiter; an error is handed to every waiter and not cached; a panic gives
/// waiters `SourcePanicked` and goes on unwinding in the leader.
fn conclude<K, V, S>(
    cache: &MemoryCache<K, V, S>,
    key: &K,
    lead: Leader<K, Result<V>>,
    outcome: std::thread::Result<Result<V>>,
) -> Result<V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    match outcome {
        Ok(Ok(v)) => {
            // Inserted before the flight ends (not under its lock: an
            // eviction listener may use the cache).
            cache.insert(key.clone(), v.clone());
            lead.finish(Ok(v.clone()));
            Ok(v)
        }
        Ok(Err(e)) => {
            lead.finish(Err(e.clone()));
            Err(e)
        }
        Err(panic) => {
            lead.finish(Err(panicked()));
            resume_unwind(panic)
        }
    }
}

pub(crate) fn get_or_try_insert_with<K, V, S>(
    cache: &MemoryCache<K, V, S>,
    key: K,
    init: impl FnOnce() -> Result<V>,
) -> Result<V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    loop {
        match step(cache, &key) {
            Step::Found(v) => return Ok(v),
            // The leader runs `init` and returns: it is moved only once.
            Step::Lead(lead) => {
                return conclude(cache, &key, lead, catch_unwind(AssertUnwindSafe(init)));
            }
            Step::Wait(w) => {
                if let Some(r) = w.wait_blocking() {
                    return r;
                }
            }
        }
    }
}

pub(crate) async fn get_or_try_insert_with_async<K, V, S, F, Fut>(
    cache: &MemoryCache<K, V, S>,
    key: K,
    init: F,
) -> Result<V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<V>>,
{
    loop {
        match step(cache, &key) {
            Step::Found(v) => return Ok(v),
            // If this future is dropped while awaiting, `lead` drops and the
            // flight is abandoned: waiters retry and one of them leads.
            Step::Lead(lead) => {
                let mut fut = Box::pin(init());
                let outcome = std::future::poll_fn(|cx| {
                    match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                        Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
                        Ok(Poll::Pending) => Poll::Pending,
                        Err(p) => Poll::Ready(Err(p)),
                    }
                })
                .await;
                return conclude(cache, &key, lead, outcome);
            }
            Step::Wait(w) => {
                if let Some(r) = w.await {
                    return r;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots<T>(w: &Wait<T>) -> (usize, usize) {
        match &*w.flight.state.lock() {
            State::Running { wakers, free } => (wakers.len(), free.len()),
            _ => (0, 0),
        }
    }

    /// A waiter registers once, however often it is polled, and a dropped
    /// waiter's slot is reused: registration is O(1), not a scan.
    #[test]
    fn waiters_register_once_and_slots_are_reused() {
        let flights: SingleFlight<u8, u8> = SingleFlight::with_shards(1);
        let Join::Leader(leader) = flights.join(1) else {
            panic!()
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut a = flights_wait(&flights);
        for _ in 0..100 {
            assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        }
        assert_eq!(slots(&a), (1, 0), "re-polls reuse the waiter's slot");
        let mut b = flights_wait(&flights);
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        drop(b);
        assert_eq!(slots(&a), (2, 1), "a dropped waiter frees its slot");
        let mut c = flights_wait(&flights);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        assert_eq!(slots(&a), (2, 0), "and the next waiter takes it");
        assert!(leader.finish(9));
        assert_eq!(Pin::new(&mut a).poll(&mut cx), Poll::Ready(Some(9)));
        assert_eq!(Pin::new(&mut c).poll(&mut cx), Poll::Ready(Some(9)));
    }

    fn flights_wait(f: &SingleFlight<u8, u8>) -> Wait<u8> {
        match f.join(1) {
            Join::Wait(w) => w,
            Join::Leader(_) => panic!("a flight is running"),
        }
    }
}

#[cfg(test)]
mod publish_panics {
    use super::*;

    /// A `publish` that panics leaves no flight behind: its waiters are
    /// released (abandoned) and the next caller leads a new flight.
    #[test]
    fn lead_starts_a_flight_only_when_none_runs() {
        let flights: SingleFlight<u8, u8> = SingleFlight::with_shards(1);
        let leader = flights.lead(&1).expect("no flight ran");
        assert!(flights.lead(&1).is_none(), "one runs now");
        assert_eq!(flights.waiters(&1), 0, "lead counts no waiter");
        assert!(leader.finish(3));
        assert!(flights.lead(&1).is_some());
    }

    #[test]
    fn a_panicking_publish_does_not_wedge_the_key() {
        let flights: SingleFlight<u8, u8> = SingleFlight::with_shards(1);
        let Join::Leader(leader) = flights.join(1) else {
            panic!()
        };
        let Join::Wait(w) = flights.join(1) else {
            panic!()
        };
        let r = catch_unwind(AssertUnwindSafe(|| {
            leader.finish_with(5, |_| panic!("publish failed"))
        }));
        assert!(r.is_err(), "the panic reaches the leader's caller");
        // (Checked before waiting: a wedged flight would block the wait.)
        assert!(flights.is_empty(), "the flight was left in the table");
        assert_eq!(w.wait_blocking(), None);
        assert!(matches!(flights.join(1), Join::Leader(_)));
    }
}
