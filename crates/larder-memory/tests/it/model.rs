//! Model-based tests: random operations against a reference.

use std::collections::{HashMap, VecDeque};

use larder_memory::{MemoryCache, PolicyKind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Insert(u8, u16),
    Remove(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(|k| Op::Get(k % 48)),
        4 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k % 48, v)),
        1 => any::<u8>().prop_map(|k| Op::Remove(k % 48)),
    ]
}

fn policies() -> impl Strategy<Value = PolicyKind> {
    prop_oneof![
        Just(PolicyKind::TinyLfu),
        Just(PolicyKind::Lru),
        Just(PolicyKind::Lfu),
        Just(PolicyKind::Ttl)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every policy: never over capacity, and every value returned is the
    /// latest one inserted for its key and not removed since.
    #[test]
    fn values_are_fresh_and_capacity_holds(kind in policies(), cap in 1u64..20, shards in 0usize..3, ops in proptest::collection::vec(op(), 1..400)) {
        let cache: MemoryCache<u8, u16> = MemoryCache::builder(cap).policy(kind).shards(1 << shards).build();
        let mut model: HashMap<u8, u16> = HashMap::new();
        for op in ops {
            match op {
                Op::Get(k) => {
                    if let Some(v) = cache.get(&k) {
                        prop_assert_eq!(Some(&v), model.get(&k), "stale or invented value for {}", k);
                    }
                }
                Op::Insert(k, v) => {
                    cache.insert(k, v);
                    model.insert(k, v);
                }
                Op::Remove(k) => {
                    let got = cache.remove(&k);
                    if let Some(v) = got {
                        prop_assert_eq!(Some(&v), model.get(&k));
                    }
                    model.remove(&k);
                }
            }
            prop_assert!(cache.entry_count() <= cap, "{} entries over capacity {}", cache.entry_count(), cap);
            prop_assert_eq!(cache.weighted_size(), cache.entry_count());
        }
        for (k, v) in cache.iter() {
            prop_assert_eq!(Some(&v), model.get(&k));
        }
    }

    /// LRU with one shard is exact: the same hits and contents as a
    /// reference LRU list.
    #[test]
    fn lru_order_is_exact(cap in 1usize..16, ops in proptest::collection::vec(op(), 1..400)) {
        let cache: MemoryCache<u8, u16> = MemoryCache::builder(cap as u64).policy(PolicyKind::Lru).shards(1).build();
        let mut order: VecDeque<(u8, u16)> = VecDeque::new(); // front = most recent
        for op in ops {
            match op {
                Op::Get(k) => {
                    let want = order.iter().position(|(x, _)| *x == k).map(|i| {
                        let e = order.remove(i).unwrap();
                        order.push_front(e);
                        e.1
                    });
                    prop_assert_eq!(cache.get(&k), want);
                }
                Op::Insert(k, v) => {
                    if let Some(i) = order.iter().position(|(x, _)| *x == k) {
                        order.remove(i);
                    }
                    order.push_front((k, v));
                    if order.len() > cap {
                        order.pop_back();
                    }
                    cache.insert(k, v);
                }
                Op::Remove(k) => {
                    let want = order.iter().position(|(x, _)| *x == k).map(|i| order.remove(i).unwrap().1);
                    prop_assert_eq!(cache.remove(&k), want);
                }
            }
        }
        let mut got: Vec<(u8, u16)> = cache.iter().collect();
        let mut want: Vec<(u8, u16)> = order.into_iter().collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
    }

    /// Weighted capacity: the total weight never exceeds it.
    #[test]
    fn weights_stay_within_capacity(kind in policies(), cap in 1u64..200, ops in proptest::collection::vec((any::<u8>(), 1u32..60), 1..300)) {
        let cache: MemoryCache<u8, u32> = MemoryCache::builder(cap).policy(kind).weigher(|_, v| *v).shards(1).build();
        for (k, w) in ops {
            cache.insert(k, w);
            prop_assert!(cache.weighted_size() <= cap);
            if u64::from(w) > cap {
                prop_assert!(cache.peek(&k).is_none(), "an entry heavier than the cache was stored");
            }
        }
    }
}

#[test]
fn tinylfu_keeps_a_hot_set_through_a_scan() {
    let cache: MemoryCache<u64, u64> = MemoryCache::builder(100).shards(1).build();
    // A hot set of 50 keys, read often.
    for _ in 0..20 {
        for k in 0..50 {
            if cache.get(&k).is_none() {
                cache.insert(k, k);
            }
        }
    }
    // A one-time scan of 500 other keys (5x the capacity: long scans age
    // the sketch and, rightly, fade old popularity).
    for k in 1_000..1_500 {
        if cache.get(&k).is_none() {
            cache.insert(k, k);
        }
    }
    // The hot set survives (all 50 today; the window, which the climber
    // grows while the hot phase hits 95% of the time, may cost a few).
    let kept = (0..50).filter(|k| cache.peek(k).is_some()).count();
    assert!(
        kept >= 45,
        "the scan flushed the hot set: {kept} of 50 kept"
    );
    let lru: MemoryCache<u64, u64> = MemoryCache::builder(100)
        .policy(PolicyKind::Lru)
        .shards(1)
        .build();
    for _ in 0..20 {
        for k in 0..50 {
            if lru.get(&k).is_none() {
                lru.insert(k, k);
            }
        }
    }
    for k in 1_000..1_500 {
        lru.insert(k, k);
    }
    assert_eq!(
        (0..50).filter(|k| lru.peek(k).is_some()).count(),
        0,
        "LRU loses it (the contrast)"
    );
    let st = cache.stats();
    assert!(st.admission_rejected > 350, "{st:?} kept {kept}");
}

#[test]
fn policy_read_back() {
    let cache: MemoryCache<u64, u64> = MemoryCache::builder(1000)
        .shards(4)
        .time_to_live(std::time::Duration::from_secs(5))
        .build();
    let p = cache.policy();
    assert_eq!(p.kind, PolicyKind::TinyLfu);
    assert_eq!((p.capacity, p.shards, p.weighted), (1000, 4, false));
    assert_eq!(p.time_to_live, Some(std::time::Duration::from_secs(5)));
    assert!(p.window_capacity.unwrap() >= 4);
    // Shards never outnumber capacity.
    let tiny: MemoryCache<u64, u64> = MemoryCache::builder(3).shards(64).build();
    assert_eq!(tiny.policy().shards, 2);
    assert_eq!(tiny.policy().capacity, 3);
}
