//! Bounded multi-threaded stress: capacity holds, values stay right, and
//! every read is counted (the read buffer is lossy for the policy, never
//! for the statistics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use larder_core::MockClock;
use larder_memory::{Expiry, MemoryCache, PolicyKind};

#[test]
fn threads_hammering_every_policy() {
    for kind in [
        PolicyKind::TinyLfu,
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Ttl,
    ] {
        let cache: MemoryCache<u64, u64> = MemoryCache::builder(500).policy(kind).build();
        let over = AtomicBool::new(false);
        let gets = AtomicU64::new(0);
        std::thread::scope(|s| {
            // More threads than the owned counter stripes (8): the rest
            // count in the shared ones, and every read is still counted.
            for t in 0..12u64 {
                let (cache, over, gets) = (&cache, &over, &gets);
                s.spawn(move || {
                    let mut x = t + 1;
                    for i in 0..20_000 {
                        if i % 1_000 == 0 {
                            // The upkeep lock, taken without the shard's
                            // lock, while writers hold both: never more
                            // reads than were started.
                            let st = cache.stats();
                            let started = gets.load(Ordering::SeqCst);
                            assert!(st.hits + st.misses <= started, "{st:?} > {started}");
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // Key and operation from different bits, so every key sees every operation.
                        let k = (x >> 20) % 2_000;
                        match x % 10 {
                            0 => {
                                cache.remove(&k);
                            }
                            1..=4 => cache.insert(k, k * 3),
                            _ => {
                                gets.fetch_add(1, Ordering::SeqCst);
                                if let Some(v) = cache.get(&k) {
                                    assert_eq!(v, k * 3, "wrong value for {k}");
                                }
                            }
                        }
                        if cache.entry_count() > 500 {
                            over.store(true, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert!(
            !over.load(Ordering::SeqCst),
            "{kind:?} exceeded its capacity"
        );
        assert!(cache.entry_count() <= 500);
        let st = cache.stats();
        assert!(st.hits > 0 && st.misses > 0, "{kind:?}: {st:?}");
        assert_eq!(
            st.hits + st.misses,
            gets.load(Ordering::Relaxed),
            "{kind:?}: every read is a hit or a miss: {st:?}"
        );
    }
}

/// Many threads reading a few hot keys (the quiet path) and many cold ones
/// (the read buffer, full and contended), with writers in between: the
/// counts still add up, and hot entries stay. Both ways counted reads take:
/// left in the counter stripes until the statistics are asked for (the
/// default cache), and handed to the policy at every drain (a weighted
/// cache, whose W-TinyLFU climbs on hit rates).
#[test]
fn hot_reads_under_contention_are_all_counted() {
    hot_reads_counted(MemoryCache::builder(2_000).shards(2).build());
    hot_reads_counted(
        MemoryCache::builder(2_000)
            .shards(2)
            .weigher(|_, _| 1)
            .build(),
    );
}

fn hot_reads_counted(cache: MemoryCache<u64, u64>) {
    for k in 0..2_000 {
        cache.insert(k, k);
    }
    let gets = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (cache, gets) = (&cache, &gets);
            s.spawn(move || {
                let mut x = t + 11;
                for i in 0..50_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half the reads go to 8 hot keys.
                    let k = if x % 2 == 0 {
                        (x >> 3) % 8
                    } else {
                        (x >> 8) % 4_000
                    };
                    if t == 0 && i % 50 == 0 {
                        cache.insert(k, k);
                    } else {
                        gets.fetch_add(1, Ordering::Relaxed);
                        if let Some(v) = cache.get(&k) {
                            assert_eq!(v, k);
                        }
                    }
                }
            });
        }
    });
    let st = cache.stats();
    assert_eq!(st.hits + st.misses, gets.load(Ordering::Relaxed), "{st:?}");
    assert!(cache.entry_count() <= 2_000);
    let missing: Vec<u64> = (0..8).filter(|k| !cache.contains_key(k)).collect();
    assert!(missing.is_empty(), "hot keys evicted: {missing:?} {st:?}");
}

/// Every third value lives 300 ms by the hook; reads leave lifetimes alone.
struct ByValue;

impl Expiry<u64, u64> for ByValue {
    fn expire_after_create(&self, _k: &u64, v: &u64, _now: Instant) -> Option<Duration> {
        v.is_multiple_of(3).then(|| Duration::from_millis(300))
    }
}

/// Every policy with time to live, time to idle, per-entry TTLs and an
/// expiry hook, under contention on two shards, while one thread moves a
/// mock clock: reads move deadlines under the shared lock and the lossy
/// ring drops some of their events, the wheel re-files what it finds moved,
/// and writers evict and expire. Nothing panics, values stay right,
/// capacity holds, every read is counted, and in the end every entry
/// inserted has left exactly once (by eviction, expiry, replacement or
/// removal).
#[test]
fn expiry_under_contention_every_policy() {
    for kind in [
        PolicyKind::Ttl,
        PolicyKind::TinyLfu,
        PolicyKind::Lru,
        PolicyKind::Lfu,
    ] {
        let clock = MockClock::new();
        let cache: MemoryCache<u64, u64> = MemoryCache::builder(300)
            .policy(kind)
            .shards(2)
            .time_to_live(Duration::from_secs(2))
            .time_to_idle(Duration::from_millis(400))
            .expiry(ByValue)
            .clock(clock.shared())
            .build();
        let over = AtomicBool::new(false);
        let gets = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (cache, over, gets, clock) = (&cache, &over, &gets, &clock);
                s.spawn(move || {
                    let mut x = t + 101;
                    for i in 0..30_000u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        if t == 0 && i % 64 == 0 {
                            clock.advance(Duration::from_millis(7));
                        }
                        // Half the operations on 16 hot keys: their reads
                        // fill the ring while others apply it.
                        let k = if x % 2 == 0 {
                            (x >> 4) % 16
                        } else {
                            (x >> 8) % 900
                        };
                        // Values are 3 k or 3 k + 1: the hook gives a
                        // lifetime to the first only.
                        match (x >> 32) % 20 {
                            0 => {
                                cache.remove(&k);
                            }
                            1..=3 => cache.insert(k, k * 3),
                            4 => cache.insert_with_ttl(k, k * 3 + 1, Duration::from_millis(150)),
                            5 if t == 1 => cache.run_pending_tasks(),
                            _ => {
                                gets.fetch_add(1, Ordering::Relaxed);
                                if let Some(v) = cache.get(&k) {
                                    assert!(v / 3 == k && v % 3 < 2, "{kind:?}: {v} for {k}");
                                }
                            }
                        }
                        if cache.entry_count() > 300 {
                            over.store(true, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert!(
            !over.load(Ordering::SeqCst),
            "{kind:?} exceeded its capacity"
        );
        let st = cache.stats();
        assert!(st.hits > 0 && st.misses > 0, "{kind:?}: {st:?}");
        assert_eq!(
            st.hits + st.misses,
            gets.load(Ordering::Relaxed),
            "{kind:?}: every read is a hit or a miss: {st:?}"
        );
        clock.advance(Duration::from_secs(3));
        cache.run_pending_tasks();
        assert_eq!(cache.entry_count(), 0, "{kind:?}: everything expired");
        let st = cache.stats();
        assert!(st.expired > 0, "{kind:?}: {st:?}");
        assert_eq!(
            st.inserts,
            st.evicted_size + st.expired + st.replaced + st.removed,
            "{kind:?}: every entry left once: {st:?}"
        );
        // The policy holds nothing stale: filling the cache again evicts
        // only live entries.
        for k in 0..1_000 {
            cache.insert(k, k * 3 + 1);
        }
        assert!(cache.entry_count() <= 300);
    }
}

/// Parks a read of key 7 inside the shard's read lock (the hook runs
/// there) until the test lets it go.
struct Park {
    armed: Arc<AtomicBool>,
    entered: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl Expiry<u64, u64> for Park {
    fn expire_after_create(&self, _k: &u64, _v: &u64, _now: Instant) -> Option<Duration> {
        None
    }
    fn expire_after_read(
        &self,
        k: &u64,
        _v: &u64,
        _now: Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        if *k == 7 && self.armed.load(Ordering::SeqCst) {
            self.entered.wait();
            self.release.wait();
        }
        current
    }
}

/// A metrics scrape never waits for a reader: `stats()` and `policy()`
/// complete while a read holds its shard's lock (the barrier makes the
/// order certain; before, they took every shard's write lock and this
/// deadlocked). The figures are complete once the reader is done.
#[test]
fn stats_and_policy_never_wait_for_a_reader() {
    let armed = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let cache: MemoryCache<u64, u64> = MemoryCache::builder(100)
        .shards(1)
        .expiry(Park {
            armed: Arc::clone(&armed),
            entered: Arc::clone(&entered),
            release: Arc::clone(&release),
        })
        .build();
    for k in 0..10 {
        cache.insert(k, k);
    }
    for k in 0..20 {
        let _ = cache.get(&k); // 10 hits, 10 misses
    }
    armed.store(true, Ordering::SeqCst);
    std::thread::scope(|s| {
        let reader = s.spawn(|| cache.get(&7));
        entered.wait(); // the reader holds the shard's read lock
        let st = cache.stats();
        let p = cache.policy();
        assert_eq!((st.hits, st.misses, st.inserts), (10, 10, 10), "{st:?}");
        assert_eq!((p.capacity, p.shards), (100, 1));
        assert!(p.window_capacity.is_some());
        release.wait();
        assert_eq!(reader.join().unwrap(), Some(7));
    });
    let st = cache.stats();
    assert_eq!((st.hits, st.misses), (11, 10), "{st:?}");
}
