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
