//! Bounded multi-threaded stress: capacity holds, values stay right, and
//! every read is counted (the read buffer is lossy for the policy, never
//! for the statistics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use larder_memory::{MemoryCache, PolicyKind};

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
            for t in 0..4u64 {
                let (cache, over, gets) = (&cache, &over, &gets);
                s.spawn(move || {
                    let mut x = t + 1;
                    for _ in 0..20_000 {
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
                                gets.fetch_add(1, Ordering::Relaxed);
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
/// counts still add up, and hot entries stay.
#[test]
fn hot_reads_under_contention_are_all_counted() {
    let cache: MemoryCache<u64, u64> = MemoryCache::builder(2_000).shards(2).build();
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
