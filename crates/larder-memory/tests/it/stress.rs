//! Bounded multi-threaded stress: capacity holds and values stay right.

use std::sync::atomic::{AtomicBool, Ordering};

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
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (cache, over) = (&cache, &over);
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
    }
}
