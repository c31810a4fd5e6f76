//! Per-key single flight for `get_or_*insert_with*`.
//!
//! The first caller for a missing key becomes the leader and runs the
//! initialiser; later callers wait on the same flight. The flight always
//! ends in one of three ways, so no waiter can hang:
//! - done with a value (inserted, handed to every waiter);
//! - done with an error, or a panic turned into
//!   `ErrorKind::SourcePanicked` (handed to every waiter, nothing cached);
//! - abandoned: the leader's future was dropped (or its thread unwound
//!   without finishing); waiters wake and retry, and one of them leads.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::task::{Poll, Waker};

use larder_core::Result;
use parking_lot::{Condvar, Mutex};

use crate::cache::{MemoryCache, panicked};

enum State<V> {
    Running(Vec<Waker>),
    Done(Result<V>),
    Abandoned,
}

pub(crate) struct Flight<V> {
    state: Mutex<State<V>>,
    cond: Condvar,
}

/// One map of flights per shard.
pub(crate) struct Flights<K, V> {
    maps: Vec<Mutex<HashMap<K, Arc<Flight<V>>>>>,
}

impl<K, V> Flights<K, V> {
    pub(crate) fn new(n: usize) -> Self {
        Flights {
            maps: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

enum Role<V> {
    Leader(Arc<Flight<V>>),
    Waiter(Arc<Flight<V>>),
}

fn join<K: Hash + Eq + Clone, V>(flights: &Flights<K, V>, shard: usize, key: &K) -> Role<V> {
    let mut map = flights.maps[shard].lock();
    match map.get(key) {
        Some(f) => Role::Waiter(Arc::clone(f)),
        None => {
            let f = Arc::new(Flight {
                state: Mutex::new(State::Running(Vec::new())),
                cond: Condvar::new(),
            });
            map.insert(key.clone(), Arc::clone(&f));
            Role::Leader(f)
        }
    }
}

/// Ends a flight: publishes the outcome, wakes everyone, forgets the flight.
struct Lead<'a, K: Hash + Eq, V> {
    flights: &'a Flights<K, V>,
    shard: usize,
    key: &'a K,
    flight: Arc<Flight<V>>,
    finished: bool,
}

impl<K: Hash + Eq, V> Lead<'_, K, V> {
    fn finish(&mut self, outcome: State<V>) {
        self.finished = true;
        {
            let mut map = self.flights.maps[self.shard].lock();
            if map
                .get(self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(self.key);
            }
        }
        let wakers = {
            let mut st = self.flight.state.lock();
            match std::mem::replace(&mut *st, outcome) {
                State::Running(w) => w,
                _ => Vec::new(),
            }
        };
        self.flight.cond.notify_all();
        for w in wakers {
            w.wake();
        }
    }
}

impl<K: Hash + Eq, V> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(State::Abandoned);
        }
    }
}

/// Where a caller stands on one pass of the single-flight loop.
enum Step<'a, K: Hash + Eq, V> {
    /// The value is in the cache.
    Found(V),
    /// This caller leads the flight and must run its initialiser.
    Lead(Lead<'a, K, V>),
    /// Another caller leads: wait on its flight.
    Wait(Arc<Flight<V>>),
}

/// Looks in the cache, then joins the key's flight as leader or waiter. A
/// new leader checks the cache once more: another flight may have filled
/// the key between the miss and the join.
fn step<'a, K, V, S>(cache: &'a MemoryCache<K, V, S>, key: &'a K, shard: usize) -> Step<'a, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    if let Some(v) = cache.get(key) {
        return Step::Found(v);
    }
    match join(&cache.inner.flights, shard, key) {
        Role::Leader(flight) => {
            let mut lead = Lead {
                flights: &cache.inner.flights,
                shard,
                key,
                flight,
                finished: false,
            };
            match cache.peek(key) {
                Some(v) => {
                    lead.finish(State::Done(Ok(v.clone())));
                    Step::Found(v)
                }
                None => Step::Lead(lead),
            }
        }
        Role::Waiter(flight) => Step::Wait(flight),
    }
}

/// Publishes a leader's outcome: a value is cached and handed to every
/// waiter; an error is handed to every waiter and not cached; a panic gives
/// waiters `SourcePanicked` and goes on unwinding in the leader.
fn conclude<K, V, S>(
    cache: &MemoryCache<K, V, S>,
    key: &K,
    mut lead: Lead<'_, K, V>,
    outcome: std::thread::Result<Result<V>>,
) -> Result<V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: BuildHasher,
{
    match outcome {
        Ok(Ok(v)) => {
            cache.insert(key.clone(), v.clone());
            lead.finish(State::Done(Ok(v.clone())));
            Ok(v)
        }
        Ok(Err(e)) => {
            lead.finish(State::Done(Err(e.clone())));
            Err(e)
        }
        Err(panic) => {
            lead.finish(State::Done(Err(panicked())));
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
    let shard = cache.shard_index(cache.hash(&key));
    loop {
        match step(cache, &key, shard) {
            Step::Found(v) => return Ok(v),
            // The leader runs `init` and returns: it is moved only once.
            Step::Lead(lead) => {
                return conclude(cache, &key, lead, catch_unwind(AssertUnwindSafe(init)));
            }
            Step::Wait(flight) => {
                let mut st = flight.state.lock();
                while matches!(*st, State::Running(_)) {
                    flight.cond.wait(&mut st);
                }
                match &*st {
                    State::Done(r) => return r.clone(),
                    _ => continue,
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
    let shard = cache.shard_index(cache.hash(&key));
    loop {
        match step(cache, &key, shard) {
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
            Step::Wait(flight) => {
                let outcome = std::future::poll_fn(|cx| {
                    let mut st = flight.state.lock();
                    match &mut *st {
                        State::Running(wakers) => {
                            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                                wakers.push(cx.waker().clone());
                            }
                            Poll::Pending
                        }
                        State::Done(r) => Poll::Ready(Some(r.clone())),
                        State::Abandoned => Poll::Ready(None),
                    }
                })
                .await;
                if let Some(r) = outcome {
                    return r;
                }
            }
        }
    }
}
