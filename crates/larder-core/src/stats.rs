//! Statistics: cheap recorders for hot paths and plain snapshot types.
//!
//! Recorders ([`Counter`], [`LatencyHistogram`]) are lock-free and striped so
//! that many threads counting hits do not fight over one cache line.
//! Snapshots ([`CacheStats`], [`StoreStats`], [`LatencySnapshot`]) are plain
//! values: subtract two to get the figures of an interval.

use std::cell::Cell;
use std::ops::Sub;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// Striped counters' stripes that a live thread owns: the owner adds to its
/// stripe with a plain load and store, no locked instruction (on x86 a
/// `lock xadd` costs about as much as an uncontended lock). Threads beyond
/// the first `OWNED_STRIPES` alive at once add with `fetch_add` in a
/// shared stripe.
const OWNED_STRIPES: usize = 8;
/// Shared stripes, for threads beyond the owners, each chosen round-robin
/// so that a large runtime's threads do not all meet on one cache line.
const SHARED_STRIPES: usize = 8;

/// The calling thread's stripe of every striped counter: a [`Counter`]'s,
/// and those that Larder's crates keep as one `AtomicU64` per stripe (the
/// L1's quiet-hit and miss counts). Internal to Larder's crates, hidden
/// from the docs and not part of the stable API: use [`Counter`].
///
/// The first eight threads to take a stripe while one is free each own it
/// until they exit, and are the only writers of its counters; a thread
/// that finds none free counts in a shared stripe for the rest of its life. A `Stripe` is
/// neither `Send` nor `Sync`: it belongs to the thread that took it, so a
/// future that holds one across an `.await` cannot move to another worker.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use larder_core::Stripe;
///
/// // One counter per stripe, each on its own cache lines.
/// #[repr(align(128))]
/// #[derive(Default)]
/// struct Padded(AtomicU64);
///
/// let hits: [Padded; Stripe::COUNT] = Default::default();
/// let me = Stripe::current();
/// me.add(&hits[me.index()].0, 2);
/// let total: u64 = hits.iter().map(|h| h.0.load(Ordering::Relaxed)).sum();
/// assert_eq!(total, 2);
/// ```
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe(usize, std::marker::PhantomData<*const ()>);

impl Stripe {
    /// Stripes in all: a striped counter keeps one `AtomicU64` per stripe.
    pub const COUNT: usize = OWNED_STRIPES + SHARED_STRIPES;

    /// The calling thread's stripe (chosen on the thread's first call).
    #[inline]
    pub fn current() -> Stripe {
        let i = STRIPE.with(Cell::get);
        let i = if i != usize::MAX { i } else { choose_stripe() };
        Stripe(i, std::marker::PhantomData)
    }

    /// Its index, below [`Stripe::COUNT`].
    #[inline]
    pub fn index(self) -> usize {
        self.0
    }

    /// Adds `n` to `counter`, which must be this stripe's own counter (the
    /// one at [`Stripe::index`] of a per-stripe set), written by nothing
    /// but `add`: only its owner writes an owned stripe, so it adds with a
    /// load and a store. Take the `Stripe` from [`Stripe::current`] on the
    /// thread that adds, and do not keep it (a thread-local destructor that
    /// runs after the thread gave its stripe back must ask again). Broken,
    /// these rules lose counts, never memory safety: read the counters with
    /// loads only, and subtract snapshots rather than reset them.
    #[inline]
    pub fn add(self, counter: &AtomicU64, n: u64) {
        if self.0 < OWNED_STRIPES {
            counter.store(
                counter.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        } else {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Which owned stripes are taken, one bit each.
static TAKEN: AtomicU32 = AtomicU32::new(0);
const _: () = assert!(OWNED_STRIPES <= 32, "one bit of TAKEN per owned stripe");

/// Gives a thread's stripe back when the thread exits.
struct Owner(usize);

impl Drop for Owner {
    fn drop(&mut self) {
        // From here on, this thread counts in a shared stripe; the release
        // orders its last counts before the next owner's.
        let _ = STRIPE.try_with(|s| s.set(OWNED_STRIPES));
        TAKEN.fetch_and(!(1 << self.0), Ordering::Release);
    }
}

thread_local! {
    /// This thread's stripe (`usize::MAX`: not chosen yet). No destructor,
    /// so it stays readable while the thread exits.
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    static OWNER: Cell<Option<Owner>> = const { Cell::new(None) };
}

/// A free owned stripe, else the next shared one.
#[cold]
fn choose_stripe() -> usize {
    let mut taken = TAKEN.load(Ordering::Relaxed);
    let i = loop {
        let free = (!taken).trailing_zeros() as usize;
        if free >= OWNED_STRIPES {
            static NEXT_SHARED: AtomicUsize = AtomicUsize::new(0);
            break OWNED_STRIPES + NEXT_SHARED.fetch_add(1, Ordering::Relaxed) % SHARED_STRIPES;
        }
        // The acquire pairs with the release of the stripe's last owner.
        match TAKEN.compare_exchange_weak(
            taken,
            taken | (1 << free),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => break free,
            Err(t) => taken = t,
        }
    };
    if i < OWNED_STRIPES && OWNER.try_with(|o| o.set(Some(Owner(i)))).is_err() {
        // The thread is exiting: its destructor would not run.
        TAKEN.fetch_and(!(1 << i), Ordering::Release);
        return OWNED_STRIPES;
    }
    let _ = STRIPE.try_with(|s| s.set(i));
    i
}

/// A monotonically increasing counter, striped across cache lines. The
/// first eight threads to count while a stripe is free each own one, and
/// `add` costs them a load and a store; other threads share the remaining
/// stripes, where `add` is one relaxed `fetch_add`.
pub struct Counter {
    stripes: [Padded; Stripe::COUNT],
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Counter {
            stripes: Default::default(),
        }
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        let me = Stripe::current();
        me.add(&self.stripes[me.index()].0, n);
    }

    /// Adds one.
    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// The current total (a sum of relaxed loads: exact once writers are quiet).
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Counter").field(&self.get()).finish()
    }
}

/// Number of buckets of a latency histogram: bucket `i` holds durations of
/// `[2^(i-1), 2^i)` nanoseconds (bucket 0 holds zero).
pub const LATENCY_BUCKETS: usize = 64;

/// A lock-free log2 histogram of durations.
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - nanos.leading_zeros()) as usize;
        self.buckets[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// A copy of the current figures.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            count: self.count.load(Ordering::Relaxed),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
            max_nanos: self.max_nanos.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

/// The figures of a [`LatencyHistogram`] at one moment.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// How many durations were recorded.
    pub count: u64,
    /// Their sum, in nanoseconds.
    pub sum_nanos: u64,
    /// The largest, in nanoseconds (not reduced by subtraction).
    pub max_nanos: u64,
    /// Counts per log2 bucket (see [`LATENCY_BUCKETS`]).
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot {
            count: 0,
            sum_nanos: 0,
            max_nanos: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}

impl LatencySnapshot {
    /// The mean duration, zero when empty.
    pub fn mean(&self) -> Duration {
        self.sum_nanos
            .checked_div(self.count)
            .map_or(Duration::ZERO, Duration::from_nanos)
    }

    /// An upper bound of the `q` quantile (`0.0..=1.0`): the top of the
    /// bucket holding it, so at most twice the true value. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let top = if i == 0 { 0 } else { (1u128 << i) - 1 };
                return Duration::from_nanos(u64::try_from(top).unwrap_or(u64::MAX));
            }
        }
        Duration::from_nanos(self.max_nanos)
    }
}

impl Sub for LatencySnapshot {
    type Output = LatencySnapshot;

    fn sub(self, earlier: LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            count: self.count.saturating_sub(earlier.count),
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
            max_nanos: self.max_nanos,
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }
}

/// Figures of a cache (an L1, or the facade across levels).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a live value.
    pub hits: u64,
    /// Lookups that found nothing (or only an expired value).
    pub misses: u64,
    /// Values inserted (new keys and replacements).
    pub inserts: u64,
    /// Entries evicted to stay within capacity.
    pub evicted_size: u64,
    /// Entries removed because they expired.
    pub expired: u64,
    /// Entries whose value was replaced by an insert.
    pub replaced: u64,
    /// Entries removed explicitly (remove, invalidate, clear).
    pub removed: u64,
    /// Inserts refused by the admission policy.
    pub admission_rejected: u64,
    /// Values found corrupt and treated as misses.
    pub corrupt: u64,
    /// Loads from the source of truth that succeeded.
    pub loads_ok: u64,
    /// Loads from the source of truth that failed.
    pub loads_failed: u64,
    /// Total time spent in successful and failed loads, in nanoseconds.
    pub load_nanos: u64,
}

impl CacheStats {
    /// Hits plus misses.
    pub fn requests(&self) -> u64 {
        self.hits + self.misses
    }

    /// `hits / requests`, or 1.0 when there were no requests.
    pub fn hit_ratio(&self) -> f64 {
        match self.requests() {
            0 => 1.0,
            r => self.hits as f64 / r as f64,
        }
    }
}

impl Sub for CacheStats {
    type Output = CacheStats;

    fn sub(self, e: CacheStats) -> CacheStats {
        CacheStats {
            hits: self.hits.saturating_sub(e.hits),
            misses: self.misses.saturating_sub(e.misses),
            inserts: self.inserts.saturating_sub(e.inserts),
            evicted_size: self.evicted_size.saturating_sub(e.evicted_size),
            expired: self.expired.saturating_sub(e.expired),
            replaced: self.replaced.saturating_sub(e.replaced),
            removed: self.removed.saturating_sub(e.removed),
            admission_rejected: self.admission_rejected.saturating_sub(e.admission_rejected),
            corrupt: self.corrupt.saturating_sub(e.corrupt),
            loads_ok: self.loads_ok.saturating_sub(e.loads_ok),
            loads_failed: self.loads_failed.saturating_sub(e.loads_failed),
            load_nanos: self.load_nanos.saturating_sub(e.load_nanos),
        }
    }
}

/// Figures of one kind of command sent to a store (for example `GET`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStats {
    /// Calls made (attempts, retries included).
    pub calls: u64,
    /// Calls that failed, timeouts included.
    pub errors: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Latency of all calls.
    pub latency: LatencySnapshot,
}

/// Figures of a store (an L2), per command name.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Per-command figures, sorted by command name.
    pub commands: Vec<(&'static str, CommandStats)>,
    /// Calls refused by an open circuit breaker.
    pub breaker_rejections: u64,
    /// Values read that were not valid envelopes.
    pub corrupt: u64,
}

impl StoreStats {
    /// The figures of one command, if it was used.
    pub fn command(&self, name: &str) -> Option<&CommandStats> {
        self.commands
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that run many counting threads, one at a time: each of
    /// them can hold every owned stripe.
    static THREADED: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn alone() -> std::sync::MutexGuard<'static, ()> {
        // A test that failed while holding it leaves no harm behind.
        THREADED.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    /// More threads at once than there are owned stripes: the owners add
    /// with a load and a store, the rest share stripes, and no count is
    /// lost.
    fn counter_sums_across_threads() {
        let _alone = alone();
        let c = Counter::new();
        let threads = 2 * Stripe::COUNT;
        let all_alive = std::sync::Barrier::new(threads);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    all_alive.wait();
                    for _ in 0..100_000 {
                        c.incr();
                    }
                });
            }
        });
        assert_eq!(c.get(), 100_000 * threads as u64);
    }

    /// Threads alive at once never own the same stripe, and a thread keeps
    /// its stripe.
    #[test]
    fn an_owned_stripe_has_one_owner() {
        let _alone = alone();
        let threads = 2 * Stripe::COUNT;
        let all_alive = std::sync::Barrier::new(threads);
        let seen: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let me = Stripe::current();
                        all_alive.wait();
                        assert_eq!(Stripe::current(), me);
                        me.index()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut owned: Vec<usize> = seen
            .iter()
            .copied()
            .filter(|&i| i < OWNED_STRIPES)
            .collect();
        let n = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(owned.len(), n, "an owned stripe shared: {seen:?}");
        assert!(seen.iter().all(|&i| i < Stripe::COUNT));
    }

    /// A thread's stripe is given back when it exits: of 100 threads run one
    /// after the other, far more than eight own one (the threads of the
    /// tests that run at the same time hold a stripe each, at most).
    #[test]
    fn an_exiting_thread_gives_its_stripe_back() {
        let _alone = alone();
        let owned = (0..100)
            .filter(|_| {
                std::thread::spawn(|| Stripe::current().index() < OWNED_STRIPES)
                    .join()
                    .unwrap()
            })
            .count();
        assert!(owned > 50, "{owned} of 100 threads owned a stripe");
    }

    #[test]
    fn histogram_quantiles_are_upper_bounds() {
        let h = LatencyHistogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.max_nanos, 100_000);
        assert_eq!(s.mean(), Duration::from_nanos(50_500));
        let p50 = s.quantile(0.5);
        assert!(
            p50 >= Duration::from_micros(50) && p50 < Duration::from_micros(100),
            "{p50:?}"
        );
        let p100 = s.quantile(1.0);
        assert!(p100 >= Duration::from_micros(100) && p100 < Duration::from_micros(200));
        assert_eq!((s - s).count, 0);
        assert_eq!(LatencySnapshot::default().quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn cache_stats_ratio_and_delta() {
        let a = CacheStats {
            hits: 3,
            misses: 1,
            ..CacheStats::default()
        };
        assert_eq!(a.hit_ratio(), 0.75);
        let b = CacheStats {
            hits: 10,
            misses: 2,
            ..CacheStats::default()
        };
        let d = b - a;
        assert_eq!((d.hits, d.misses), (7, 1));
        assert_eq!(CacheStats::default().hit_ratio(), 1.0);
    }
}
