//! `cargo xtask profile`: the L1 benchmark's workload (Zipf 1.0 over 1M
//! keys, capacity 100k, `u64` keys, 64-byte values), one subject, a given
//! number of operations after the same warm-up, for a counting profiler:
//! under cachegrind, two runs that differ only in the operation count
//! give the instructions and simulated cache misses of one operation,
//! where wall-clock ratios on a shared 2-core VM swing by 20%. Each
//! subject hashes with its default hasher's family (foldhash) under a
//! fixed seed, so both runs do the same work up to the difference.
//!
//! ```text
//! l1_ops SUBJECT MODE OPS    SUBJECT: larder | quick_cache
//!                            MODE: get (100% gets) | mixed (95% gets, 5% inserts)
//!                                  | hot (the 16 most popular keys, all resident)
//! ```

#![allow(clippy::print_stdout)] // a command-line tool

use std::hint::black_box;

use larder_benches::zipf;
use larder_memory::MemoryCache;

type Value = [u8; 64];
/// Larder's default hasher family (hashbrown's), seeded.
type LarderHasher = foldhash::fast::FixedState;
/// quick_cache's default hasher family, seeded.
type QuickHasher = foldhash::quality::FixedState;
const SEED: u64 = 0x5EED;

trait Subject {
    fn get(&self, k: u64) -> Option<Value>;
    fn insert(&self, k: u64, v: Value);
}

impl Subject for MemoryCache<u64, Value, LarderHasher> {
    fn get(&self, k: u64) -> Option<Value> {
        MemoryCache::get(self, &k)
    }
    fn insert(&self, k: u64, v: Value) {
        MemoryCache::insert(self, k, v);
    }
}

impl Subject for quick_cache::sync::Cache<u64, Value, quick_cache::UnitWeighter, QuickHasher> {
    fn get(&self, k: u64) -> Option<Value> {
        quick_cache::sync::Cache::get(self, &k)
    }
    fn insert(&self, k: u64, v: Value) {
        quick_cache::sync::Cache::insert(self, k, v);
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [subject, mode, ops] = args.as_slice() else {
        return Err("usage: l1_ops larder|quick_cache get|mixed|hot OPS".into());
    };
    let (mixed, hot) = match mode.as_str() {
        "get" => (false, false),
        "mixed" => (true, false),
        "hot" => (false, true),
        other => return Err(format!("unknown mode {other:?}")),
    };
    let ops: usize = ops.parse().map_err(|e| format!("OPS: {e}"))?;
    let cache: Box<dyn Subject> = match subject.as_str() {
        "larder" => Box::new(
            MemoryCache::<u64, Value>::builder(zipf::CAPACITY as u64)
                .hasher(LarderHasher::with_seed(SEED))
                .build(),
        ),
        "quick_cache" => Box::new(quick_cache::sync::Cache::with(
            zipf::CAPACITY,
            zipf::CAPACITY as u64,
            quick_cache::UnitWeighter,
            QuickHasher::with_seed(SEED),
            quick_cache::sync::DefaultLifecycle::default(),
        )),
        other => return Err(format!("unknown subject {other:?}")),
    };
    let stream = zipf::stream(0x1234_5678);
    for &k in &stream {
        if cache.get(k).is_none() {
            cache.insert(k, [1; 64]);
        }
    }
    let hot_keys: [u64; 16] = std::array::from_fn(|r| zipf::key_of(r as u64));
    for &k in &hot_keys {
        if cache.get(k).is_none() {
            cache.insert(k, [1; 64]);
        }
    }
    let mut hits = 0usize;
    for i in 0..ops {
        let k = if hot {
            hot_keys[i & 15]
        } else {
            stream[i & (zipf::STREAM - 1)]
        };
        if mixed && i % 20 == 0 {
            cache.insert(k, [7; 64]);
        } else {
            hits += usize::from(black_box(cache.get(k)).is_some());
        }
    }
    println!("{subject} {mode}: {ops} operations, {hits} hits");
    Ok(())
}
