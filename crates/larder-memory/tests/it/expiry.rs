//! Expiry on a mock clock: no sleeps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_core::MockClock;
use larder_memory::{Expiry, MemoryCache, RemovalCause};

type Log = Arc<Mutex<Vec<(u32, u32, RemovalCause)>>>;

fn cache_with(
    clock: &MockClock,
    build: impl FnOnce(larder_memory::Builder<u32, u32>) -> larder_memory::Builder<u32, u32>,
) -> (MemoryCache<u32, u32>, Log) {
    let log: Log = Arc::default();
    let l = Arc::clone(&log);
    let b = MemoryCache::builder(100)
        .clock(clock.shared())
        .shards(1)
        .eviction_listener(move |k, v, c| l.lock().unwrap().push((k, v, c)));
    (build(b).build(), log)
}

const S: Duration = Duration::from_secs(1);

#[test]
fn time_to_live_boundary_is_exact() {
    let clock = MockClock::new();
    let (c, log) = cache_with(&clock, |b| b.time_to_live(10 * S));
    c.insert(1, 10);
    clock.advance(10 * S - Duration::from_nanos(1));
    assert_eq!(c.get(&1), Some(10));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(c.get(&1), None, "expired at exactly 10 s");
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 10, RemovalCause::Expired)]
    );
    assert_eq!(c.stats().expired, 1);
}

#[test]
fn time_to_idle_is_reset_by_reads_but_capped_by_ttl() {
    let clock = MockClock::new();
    let (c, _) = cache_with(&clock, |b| b.time_to_idle(5 * S).time_to_live(12 * S));
    c.insert(1, 1);
    for _ in 0..2 {
        clock.advance(4 * S);
        assert_eq!(c.get(&1), Some(1), "read within the idle time");
    }
    // t = 8 s: idle deadline 13 s, but the TTL is 12 s.
    clock.advance(4 * S - Duration::from_nanos(1)); // t = 12 s - 1 ns
    assert_eq!(c.get(&1), Some(1));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(
        c.get(&1),
        None,
        "time to idle never extends past time to live"
    );

    c.insert(2, 2);
    clock.advance(5 * S);
    assert_eq!(c.get(&2), None, "idle for 5 s");
}

#[test]
fn per_entry_ttl_and_the_earliest_deadline_wins() {
    let clock = MockClock::new();
    let (c, _) = cache_with(&clock, |b| b.time_to_live(60 * S));
    c.insert_with_ttl(1, 1, 2 * S);
    c.insert_with_ttl(2, 2, 600 * S);
    c.insert(3, 3);
    clock.advance(2 * S);
    assert_eq!(c.get(&1), None);
    clock.advance(58 * S);
    assert_eq!(
        (c.get(&2), c.get(&3)),
        (None, None),
        "the cache-wide 60 s wins over 600 s"
    );
}

#[test]
fn per_entry_ttl_on_a_cache_without_expiry() {
    let clock = MockClock::new();
    let (c, _) = cache_with(&clock, |b| b);
    c.insert(1, 1);
    c.insert_with_ttl(2, 2, S);
    clock.advance(S);
    assert_eq!((c.get(&1), c.get(&2)), (Some(1), None));
}

struct ByValue;
impl Expiry<u32, u32> for ByValue {
    fn expire_after_create(&self, _k: &u32, v: &u32, _now: Instant) -> Option<Duration> {
        (*v > 0).then(|| Duration::from_secs(u64::from(*v)))
    }
    fn expire_after_read(
        &self,
        _k: &u32,
        _v: &u32,
        _now: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        current
    }
}

#[test]
fn expiry_hook_sets_lifetimes_per_value() {
    let clock = MockClock::new();
    let (c, _) = cache_with(&clock, |b| b.expiry(ByValue));
    c.insert(1, 3);
    c.insert(2, 0); // no expiry
    clock.advance(3 * S);
    assert_eq!((c.get(&1), c.get(&2)), (None, Some(0)));
    // An update re-runs the hook.
    c.insert(2, 1);
    clock.advance(S);
    assert_eq!(c.get(&2), None);
}

#[test]
fn the_wheel_cleans_up_without_reads() {
    let clock = MockClock::new();
    let (c, log) = cache_with(&clock, |b| b.time_to_live(30 * S));
    for k in 0..50 {
        c.insert(k, k);
    }
    clock.advance(31 * S);
    assert_eq!(c.entry_count(), 50, "nothing ran yet");
    c.run_pending_tasks();
    assert_eq!(c.entry_count(), 0);
    assert_eq!(log.lock().unwrap().len(), 50);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|(_, _, cause)| *cause == RemovalCause::Expired)
    );
    // Writes clean up their shard too.
    for k in 0..10 {
        c.insert(k, k);
    }
    clock.advance(31 * S);
    c.insert(99, 99);
    assert_eq!(c.entry_count(), 1);
}

#[test]
fn listener_hears_every_cause() {
    let clock = MockClock::new();
    let log: Log = Arc::default();
    let l = Arc::clone(&log);
    let c: MemoryCache<u32, u32> = MemoryCache::builder(2)
        .policy(larder_memory::PolicyKind::Lru)
        .clock(clock.shared())
        .shards(1)
        .eviction_listener(move |k, v, cause| l.lock().unwrap().push((k, v, cause)))
        .build();
    c.insert(1, 1);
    c.insert(1, 11); // replaced
    c.insert(2, 2);
    c.insert(3, 3); // evicts 1
    c.remove(&2); // removed
    c.insert_with_ttl(4, 4, S);
    clock.advance(S);
    assert_eq!(c.get(&4), None); // expired
    c.clear(); // removes 3
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            (1, 1, RemovalCause::Replaced),
            (1, 11, RemovalCause::Evicted),
            (2, 2, RemovalCause::Removed),
            (4, 4, RemovalCause::Expired),
            (3, 3, RemovalCause::Removed),
        ]
    );
    let st = c.stats();
    assert_eq!(
        (st.replaced, st.evicted_size, st.removed, st.expired),
        (1, 1, 2, 1)
    );
}

#[test]
fn the_listener_may_use_the_cache() {
    // Called outside the locks: re-entering the cache does not deadlock.
    let holder: Arc<Mutex<Option<MemoryCache<u32, u32>>>> = Arc::default();
    let h = Arc::clone(&holder);
    let c: MemoryCache<u32, u32> = MemoryCache::builder(1)
        .shards(1)
        .policy(larder_memory::PolicyKind::Lru)
        .eviction_listener(move |k, _, _| {
            if let Some(c) = h.lock().unwrap().as_ref() {
                let _ = c.get(&k);
                let _ = c.entry_count();
            }
        })
        .build();
    *holder.lock().unwrap() = Some(c.clone());
    c.insert(1, 1);
    c.insert(2, 2);
    assert_eq!(c.entry_count(), 1);
}

#[test]
fn remove_never_returns_an_expired_value() {
    let clock = MockClock::new();
    let (c, log) = cache_with(&clock, |b| b.time_to_live(10 * S));
    c.insert(1, 10);
    clock.advance(10 * S);
    assert_eq!(c.remove(&1), None, "expired at 10 s: nothing to remove");
    assert_eq!(
        log.lock().unwrap().as_slice(),
        [(1, 10, RemovalCause::Expired)],
        "it left because it expired"
    );
    assert_eq!(
        (c.entry_count(), c.stats().expired, c.stats().removed),
        (0, 1, 0)
    );
}

type Seen = Arc<Mutex<Vec<(&'static str, u32, Option<Duration>)>>>;

/// Lives 10 s from a create or an update; records the `current` it is
/// given on updates and reads, and leaves reads unchanged.
struct Recording(Seen);

impl Expiry<u32, u32> for Recording {
    fn expire_after_create(&self, _k: &u32, v: &u32, _now: Instant) -> Option<Duration> {
        (*v != 0).then_some(10 * S)
    }
    fn expire_after_update(
        &self,
        k: &u32,
        v: &u32,
        now: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        self.0.lock().unwrap().push(("update", *k, current));
        self.expire_after_create(k, v, now)
    }
    fn expire_after_read(
        &self,
        k: &u32,
        _v: &u32,
        _now: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        self.0.lock().unwrap().push(("read", *k, current));
        current
    }
}

/// `current` is what is left of the entry's lifetime: the time to live,
/// an explicit TTL and the hook's earlier answers (not the time to idle,
/// which every read resets: a hook that returns `current` leaves the idle
/// time working).
#[test]
fn expiry_hook_is_told_what_is_left() {
    let clock = MockClock::new();
    let seen: Seen = Arc::default();
    let hook = Recording(Arc::clone(&seen));
    let (c, _) = cache_with(&clock, |b| {
        b.expiry(hook).time_to_live(60 * S).time_to_idle(5 * S)
    });
    c.insert(1, 1); // t = 0: 10 s by the hook
    clock.advance(3 * S);
    assert_eq!(c.get(&1), Some(1)); // 7 s left
    clock.advance(S);
    c.insert(1, 2); // t = 4: 6 s were left; 10 s again
    clock.advance(2 * S);
    assert_eq!(c.get(&1), Some(2)); // t = 6: 8 s left
    c.insert(2, 0); // no limit from the hook: the time to live's 60 s
    clock.advance(2 * S);
    assert_eq!(c.get(&2), Some(0)); // t = 8: 58 s left
    clock.advance(4 * S);
    assert_eq!(c.get(&2), Some(0), "read 4 s ago: the idle time holds"); // t = 12
    clock.advance(5 * S);
    assert_eq!(c.get(&2), None, "idle for 5 s");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [
            ("read", 1, Some(7 * S)),
            ("update", 1, Some(6 * S)),
            ("read", 1, Some(8 * S)),
            ("read", 2, Some(58 * S)),
            ("read", 2, Some(54 * S)),
        ]
    );
}

/// A read can shorten the lifetime for good (never extend it past what the
/// last write set).
#[test]
fn expiry_hook_on_read_shortens_the_lifetime() {
    struct Shorten;
    impl Expiry<u32, u32> for Shorten {
        fn expire_after_create(&self, _k: &u32, _v: &u32, _now: Instant) -> Option<Duration> {
            Some(10 * S)
        }
        fn expire_after_read(
            &self,
            _k: &u32,
            v: &u32,
            _now: Instant,
            current: Option<Duration>,
        ) -> Option<Duration> {
            // Value 1: at most 2 s more after a read; others: 100 s (no
            // extension past the 10 s of the create).
            if *v == 1 {
                current.map(|c| c.min(2 * S))
            } else {
                Some(100 * S)
            }
        }
    }
    let clock = MockClock::new();
    let (c, _) = cache_with(&clock, |b| b.expiry(Shorten));
    c.insert(1, 1);
    c.insert(2, 2);
    c.insert(3, 1);
    // A read before the clock has moved at all counts too.
    assert_eq!(c.get(&3), Some(1));
    clock.advance(S);
    assert_eq!((c.get(&1), c.get(&2)), (Some(1), Some(2)));
    clock.advance(2 * S); // t = 3: key 1 went at 3 s
    assert_eq!(c.peek(&1), None, "shortened to 2 s after the read at 1 s");
    assert_eq!(c.peek(&3), None, "shortened to 2 s after the read at 0 s");
    clock.advance(7 * S - Duration::from_nanos(1));
    assert_eq!(c.peek(&2), Some(2));
    clock.advance(Duration::from_nanos(1));
    assert_eq!(
        c.peek(&2),
        None,
        "a read never extends past the create's 10 s"
    );
}
