//! Model-based tests: random operations against a reference.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use larder_core::MockClock;
use larder_memory::{Expiry, MemoryCache, PolicyKind};
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

#[derive(Debug, Clone)]
enum TimedOp {
    Get(u8),
    Insert(u8, u16),
    InsertWithTtl(u8, u16, u16),
    Remove(u8),
    /// Milliseconds.
    Advance(u16),
    RunPending,
}

fn timed_op() -> impl Strategy<Value = TimedOp> {
    prop_oneof![
        6 => any::<u8>().prop_map(|k| TimedOp::Get(k % 24)),
        3 => (any::<u8>(), any::<u16>()).prop_map(|(k, v)| TimedOp::Insert(k % 24, v)),
        2 => (any::<u8>(), any::<u16>(), 1u16..8_000)
            .prop_map(|(k, v, ms)| TimedOp::InsertWithTtl(k % 24, v, ms)),
        1 => any::<u8>().prop_map(|k| TimedOp::Remove(k % 24)),
        3 => (0u16..1_500).prop_map(TimedOp::Advance),
        1 => Just(TimedOp::RunPending),
    ]
}

/// A lifetime per value: a third of the values live `500 + (v % 7) * 700`
/// ms, the others have no limit from the hook. Updates and reads use the
/// trait's defaults (a fresh create; unchanged).
struct ByValue;

impl ByValue {
    fn lifetime(v: u16) -> Option<Duration> {
        v.is_multiple_of(3)
            .then(|| Duration::from_millis(500 + u64::from(v % 7) * 700))
    }
}

impl Expiry<u8, u16> for ByValue {
    fn expire_after_create(&self, _k: &u8, v: &u16, _now: Instant) -> Option<Duration> {
        Self::lifetime(*v)
    }
}

/// The reference's view of one entry: its value, its hard deadline (time
/// to live, explicit TTL, hook) and its effective one (also time to idle),
/// in nanoseconds since the cache was built.
#[derive(Debug, Clone, Copy)]
struct Timed {
    value: u16,
    hard: u64,
    expires_at: u64,
}

fn deadline(now: u64, after: Option<Duration>) -> u64 {
    after.map_or(u64::MAX, |d| {
        (now + u64::try_from(d.as_nanos()).unwrap()).max(now + 1)
    })
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every policy with time to live, time to idle, per-entry TTLs and an
    /// expiry hook, on a mock clock: capacity holds, a value returned is
    /// the latest one inserted and not yet expired to the nanosecond, and
    /// an entry the reference calls expired is never returned.
    #[test]
    fn expiry_is_exact_under_any_sequence(
        kind in policies(),
        cap in 1u64..16,
        shards in 0usize..3,
        ttl in proptest::option::of(1u64..6_000),
        tti in proptest::option::of(1u64..3_000),
        hook in any::<bool>(),
        ops in proptest::collection::vec(timed_op(), 1..400),
    ) {
        let ttl = ttl.map(Duration::from_millis);
        let tti = tti.map(Duration::from_millis);
        let clock = MockClock::new();
        let mut b = MemoryCache::builder(cap).policy(kind).shards(1 << shards).clock(clock.shared());
        if let Some(d) = ttl {
            b = b.time_to_live(d);
        }
        if let Some(d) = tti {
            b = b.time_to_idle(d);
        }
        if hook {
            b = b.expiry(ByValue);
        }
        let cache: MemoryCache<u8, u16> = b.build();
        let mut model: HashMap<u8, Timed> = HashMap::new();
        let mut now = 0u64;
        let write = |now: u64, v: u16, explicit: Option<Duration>| {
            let mut after = earliest(explicit, ttl);
            if hook {
                after = earliest(after, ByValue::lifetime(v));
            }
            let hard = deadline(now, after);
            Timed { value: v, hard, expires_at: hard.min(deadline(now, tti)) }
        };
        for op in ops {
            match op {
                TimedOp::Get(k) => {
                    let live = model.get(&k).filter(|e| e.expires_at > now).copied();
                    match (cache.get(&k), live) {
                        (Some(v), Some(e)) => {
                            prop_assert_eq!(v, e.value, "stale value for {}", k);
                            if tti.is_some() {
                                let idle = deadline(now, tti);
                                model.get_mut(&k).unwrap().expires_at = e.hard.min(idle);
                            }
                        }
                        (Some(v), None) => {
                            prop_assert!(false, "{} -> {} returned, expired or never inserted: {:?} at {}", k, v, model.get(&k), now);
                        }
                        (None, _) => {
                            model.remove(&k);
                        }
                    }
                }
                TimedOp::Insert(k, v) => {
                    cache.insert(k, v);
                    model.insert(k, write(now, v, None));
                }
                TimedOp::InsertWithTtl(k, v, ms) => {
                    let d = Duration::from_millis(u64::from(ms));
                    cache.insert_with_ttl(k, v, d);
                    model.insert(k, write(now, v, Some(d)));
                }
                TimedOp::Remove(k) => {
                    let live = model.remove(&k).filter(|e| e.expires_at > now);
                    if let Some(v) = cache.remove(&k) {
                        prop_assert_eq!(Some(v), live.map(|e| e.value), "remove of {} at {}", k, now);
                    }
                }
                TimedOp::Advance(ms) => {
                    let d = Duration::from_millis(u64::from(ms));
                    clock.advance(d);
                    now += u64::try_from(d.as_nanos()).unwrap();
                }
                TimedOp::RunPending => cache.run_pending_tasks(),
            }
            prop_assert!(cache.entry_count() <= cap, "{} entries over capacity {}", cache.entry_count(), cap);
            for (k, e) in &model {
                if e.expires_at <= now {
                    prop_assert!(cache.peek(k).is_none(), "{} expired at {}, now {}", k, e.expires_at, now);
                }
            }
        }
        for (k, v) in cache.iter() {
            let e = model.get(&k).filter(|e| e.expires_at > now);
            prop_assert_eq!(Some(v), e.map(|e| e.value));
        }
        // Everything expires in the end: the policy gives up every entry
        // it held (a stale policy record would panic or be left over).
        if ttl.is_some() {
            clock.advance(Duration::from_secs(10));
            cache.run_pending_tasks();
            prop_assert_eq!(cache.entry_count(), 0);
            for k in 0..64u8 {
                cache.insert(k, u16::from(k) * 3);
            }
            prop_assert!(cache.entry_count() <= cap);
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
    // The hot set survives (all 50 today; the window, which the
    // simulation may size differently for the hot phase, may cost a few).
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

/// A hasher of our own, without a seed: which keys the window simulation
/// samples is then the same in every run and with every toolchain (std's
/// `DefaultHasher` may change its algorithm).
#[derive(Default)]
struct Mix(u64);

impl std::hash::Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn fixed_hasher() -> std::hash::BuildHasherDefault<Mix> {
    std::hash::BuildHasherDefault::default()
}

/// Cache-aside over `keys`; returns the hits.
fn replay<S: std::hash::BuildHasher>(
    cache: &MemoryCache<u64, u64, S>,
    keys: impl Iterator<Item = u64>,
) -> u64 {
    let mut hits = 0;
    for k in keys {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, k);
        }
    }
    hits
}

/// Each key read twice, 200 requests apart, then never again: only a cache
/// that admits newcomers freely (a large window, toward LRU) keeps a key
/// until its second read. The window follows the simulation there, in every
/// shard (one simulation serves them all).
#[test]
fn tinylfu_grows_its_window_for_a_recency_biased_workload() {
    for shards in [1, 4] {
        let cache = MemoryCache::builder(1024)
            .shards(shards)
            .hasher(fixed_hasher())
            .build();
        let first = cache.policy().window_capacity.expect("a window");
        assert!(first < 64, "{first}");
        let stream = (0..40_000u64).flat_map(|i| [i, i.saturating_sub(100)]);
        let hits = replay(&cache, stream);
        let p = cache.policy();
        let window = p.window_capacity.expect("a window");
        assert!(window >= 500, "{shards} shards: window {window} of 1024");
        // And it pays: most second reads hit (LRU's figure is 50%).
        assert!(hits > 30_000, "{shards} shards: {hits} hits of 80000");
    }
}

/// A loop over more keys than the cache holds: LRU (the largest window)
/// never hits; the window shrinks to (nearly) its least and the main space
/// keeps most of the loop.
#[test]
fn tinylfu_shrinks_its_window_for_a_loop() {
    let cache = MemoryCache::builder(1024)
        .shards(2)
        .hasher(fixed_hasher())
        .build();
    // First a recency phase grows the window, then the loop must shrink it.
    replay(
        &cache,
        (0..40_000u64).flat_map(|i| [i + 1_000_000, i.saturating_sub(100) + 1_000_000]),
    );
    assert!(cache.policy().window_capacity.expect("a window") >= 500);
    let hits = replay(&cache, (0..60).flat_map(|_| 0..1500u64));
    let window = cache.policy().window_capacity.expect("a window");
    // One of the two smallest shares (one entry or 2%, a shard's 10):
    // which one depends on the sampled keys.
    assert!(window <= 20, "window {window} of 1024");
    assert!(hits > 30_000, "{hits} hits of 90000");
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

/// The TTL policy evicts the entry that expires soonest; among entries
/// without expiry, the least recently used (as documented), not the
/// oldest insert.
#[test]
fn ttl_policy_is_lru_among_entries_without_expiry() {
    let cache: MemoryCache<u32, u32> = MemoryCache::builder(3)
        .policy(PolicyKind::Ttl)
        .shards(1)
        .build();
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert_with_ttl(3, 3, Duration::from_secs(60));
    assert_eq!(cache.get(&1), Some(1), "1 is now more recent than 2");
    cache.insert(4, 4); // over capacity: 3 expires soonest
    assert_eq!(cache.peek(&3), None, "the entry with a deadline goes first");
    cache.insert(5, 5); // then the least recently used: 2
    assert_eq!(
        (
            cache.peek(&1),
            cache.peek(&2),
            cache.peek(&4),
            cache.peek(&5)
        ),
        (Some(1), None, Some(4), Some(5)),
        "2 is the least recently used entry without expiry"
    );
}

/// Capacities 0 (stores nothing), 1, and u64::MAX (how users say
/// "unbounded": nothing is ever evicted), for every policy, weighted or
/// not, with the default shards and with one.
#[test]
fn capacity_edges_for_every_policy() {
    for cap in [0, 1, u64::MAX] {
        for kind in [
            PolicyKind::TinyLfu,
            PolicyKind::Lru,
            PolicyKind::Lfu,
            PolicyKind::Ttl,
        ] {
            for weighted in [false, true] {
                for shards in [None, Some(1)] {
                    let what = format!("cap {cap}, {kind:?}, weighted {weighted}, {shards:?}");
                    let mut b = MemoryCache::builder(cap).policy(kind);
                    if weighted {
                        b = b.weigher(|_, v: &u64| (*v % 3) as u32 + 1);
                    }
                    if let Some(n) = shards {
                        b = b.shards(n);
                    }
                    let cache: MemoryCache<u64, u64> = b.build();
                    let p = cache.policy();
                    assert_eq!((p.capacity, p.weighted), (cap, weighted), "{what}");
                    assert!(p.shards >= 1, "{what}");
                    for k in 0..200 {
                        cache.insert(k, k);
                        if k % 2 == 0 {
                            let _ = cache.get(&(k / 2));
                        }
                        assert!(cache.weighted_size() <= cap, "{what}");
                    }
                    let weight: u64 = (0..200).map(|v| v % 3 + 1).sum();
                    match cap {
                        0 => assert_eq!(cache.entry_count(), 0, "{what}"),
                        1 if !weighted => assert_eq!(cache.entry_count(), 1, "{what}"),
                        1 => assert!(cache.entry_count() <= 1, "{what}"),
                        _ => {
                            assert_eq!(cache.entry_count(), 200, "{what}: nothing evicted");
                            let want = if weighted { weight } else { 200 };
                            assert_eq!(cache.weighted_size(), want, "{what}");
                            assert!((0..200).all(|k| cache.get(&k) == Some(k)), "{what}");
                        }
                    }
                    for k in 0..200 {
                        let _ = cache.remove(&k);
                    }
                    assert_eq!(cache.entry_count(), 0, "{what}");
                    let st = cache.stats();
                    assert_eq!(st.inserts, 200, "{what}");
                }
            }
        }
    }
}

/// A key that holds a share of a token, so the test can count the keys
/// alive; it hashes and compares as its `u8` (a cache can look it up by
/// `&u8`).
#[derive(Debug)]
struct Counted(u8, #[allow(dead_code)] std::sync::Arc<()>);

impl std::hash::Hash for Counted {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Counted {}

impl std::borrow::Borrow<u8> for Counted {
    fn borrow(&self) -> &u8 {
        &self.0
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every key and value the cache took is dropped exactly once: by
    /// replacement, removal, eviction, expiry, `clear` or the cache's own
    /// drop, never twice and never leaked. After every operation the
    /// token's shares are the test's one plus a key and a value per entry
    /// held (the slab keeps its entries uninitialised-or-live by hand).
    #[test]
    fn every_key_and_value_is_dropped_exactly_once(
        kind in policies(),
        cap in 1u64..16,
        shards in 0usize..3,
        ops in proptest::collection::vec(timed_op(), 1..300),
        clear_at in 0usize..300,
    ) {
        let token = std::sync::Arc::new(());
        let clock = MockClock::new();
        let cache: MemoryCache<Counted, std::sync::Arc<()>> = MemoryCache::builder(cap)
            .policy(kind)
            .shards(1 << shards)
            .time_to_live(Duration::from_secs(3))
            .clock(clock.shared())
            .build();
        let shares = |cache: &MemoryCache<Counted, std::sync::Arc<()>>| {
            1 + 2 * cache.entry_count() as usize
        };
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                TimedOp::Get(k) => {
                    drop(cache.get(&k));
                }
                TimedOp::Insert(k, _) => cache.insert(Counted(k, token.clone()), token.clone()),
                TimedOp::InsertWithTtl(k, _, ms) => cache.insert_with_ttl(
                    Counted(k, token.clone()),
                    token.clone(),
                    Duration::from_millis(u64::from(ms)),
                ),
                TimedOp::Remove(k) => drop(cache.remove(&k)),
                TimedOp::Advance(ms) => clock.advance(Duration::from_millis(u64::from(ms))),
                TimedOp::RunPending => cache.run_pending_tasks(),
            }
            if i == clear_at {
                cache.clear();
            }
            cache.run_pending_tasks();
            prop_assert_eq!(std::sync::Arc::strong_count(&token), shares(&cache), "after op {}", i);
        }
        drop(cache);
        prop_assert_eq!(std::sync::Arc::strong_count(&token), 1, "the cache's drop left shares");
    }
}

/// A key that counts the calls of its `Hash`.
#[derive(Clone, PartialEq, Eq)]
struct Hashed(u64);

static HASHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl std::hash::Hash for Hashed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        HASHED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.hash(state);
    }
}

/// An insert into a full cache hashes the new key once, and each key that
/// eviction compares once: the key evicted is not hashed again to unmap
/// it (three calls per insert; four when removal hashed it again). Removal
/// by key hashes the key asked for only.
#[test]
fn eviction_hashes_each_key_once() {
    let cache: MemoryCache<Hashed, u64> = MemoryCache::builder(64).shards(1).build();
    for k in 0..64 {
        cache.insert(Hashed(k), k);
    }
    let calls = || HASHED.load(std::sync::atomic::Ordering::Relaxed);
    let before = calls();
    for k in 1_000..2_000 {
        cache.insert(Hashed(k), k);
    }
    let per_insert = (calls() - before) as f64 / 1_000.0;
    assert!(per_insert <= 3.0, "{per_insert} hashes per insert");
    let present = (1_000..2_000).find(|&k| cache.contains_key(&Hashed(k)));
    let k = present.expect("a recent key stays");
    let before = calls();
    assert_eq!(cache.remove(&Hashed(k)), Some(k));
    assert_eq!(calls() - before, 1, "remove hashes the key asked for only");
}
