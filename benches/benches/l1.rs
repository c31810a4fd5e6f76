//! The L1 against quick_cache, moka and `lru` behind a mutex, same run:
//! Zipf(1.0) over 1M keys, capacity 100k, u64 keys and 64-byte values;
//! 100% get on a warmed cache, and 95% get / 5% insert; 1 and 2 threads.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_benches::manifest::Manifest;
use larder_memory::MemoryCache;

const KEYS: usize = 1_000_000;
const CAPACITY: usize = 100_000;
const STREAM: usize = 1 << 20;

type Value = [u8; 64];

/// A Zipf(1.0) stream of keys over `KEYS` ranks, scrambled so hot keys are
/// not neighbours.
fn zipf_stream(seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(KEYS);
    let mut sum = 0.0f64;
    for r in 1..=KEYS {
        sum += 1.0 / r as f64;
        cdf.push(sum);
    }
    let mut x = seed | 1;
    (0..STREAM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * sum;
            let rank = cdf.partition_point(|&c| c < u) as u64;
            rank.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        })
        .collect()
}

trait Subject: Sync {
    fn get(&self, k: u64) -> Option<Value>;
    fn insert(&self, k: u64, v: Value);
}

struct Larder(MemoryCache<u64, Value>);
impl Subject for Larder {
    fn get(&self, k: u64) -> Option<Value> {
        self.0.get(&k)
    }
    fn insert(&self, k: u64, v: Value) {
        self.0.insert(k, v)
    }
}

struct Quick(quick_cache::sync::Cache<u64, Value>);
impl Subject for Quick {
    fn get(&self, k: u64) -> Option<Value> {
        self.0.get(&k)
    }
    fn insert(&self, k: u64, v: Value) {
        self.0.insert(k, v)
    }
}

struct Moka(moka::sync::Cache<u64, Value>);
impl Subject for Moka {
    fn get(&self, k: u64) -> Option<Value> {
        self.0.get(&k)
    }
    fn insert(&self, k: u64, v: Value) {
        self.0.insert(k, v)
    }
}

struct LruMutex(Mutex<lru::LruCache<u64, Value>>);
impl Subject for LruMutex {
    fn get(&self, k: u64) -> Option<Value> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .copied()
    }
    fn insert(&self, k: u64, v: Value) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).put(k, v);
    }
}

fn subjects() -> Vec<(&'static str, Box<dyn Subject>)> {
    vec![
        (
            "larder",
            Box::new(Larder(MemoryCache::new(CAPACITY as u64))),
        ),
        (
            "quick_cache",
            Box::new(Quick(quick_cache::sync::Cache::new(CAPACITY))),
        ),
        (
            "moka",
            Box::new(Moka(moka::sync::Cache::new(CAPACITY as u64))),
        ),
        (
            "lru+mutex",
            Box::new(LruMutex(Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )))),
        ),
    ]
}

/// Runs `iters` operations per thread on `threads` threads; the wall time.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time
fn run(
    subject: &dyn Subject,
    streams: &[Vec<u64>],
    threads: usize,
    iters: u64,
    mixed: bool,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for stream in streams.iter().take(threads) {
            s.spawn(move || {
                let v = [7u8; 64];
                for i in 0..iters as usize {
                    let k = stream[i & (STREAM - 1)];
                    if mixed && i % 20 == 0 {
                        subject.insert(k, v);
                    } else {
                        black_box(subject.get(k));
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn l1(c: &mut Criterion) {
    let mut m = Manifest::create("l1");
    let streams: Vec<Vec<u64>> = (0..2).map(|t| zipf_stream(0x1234_5678 + t)).collect();
    for mixed in [false, true] {
        for threads in [1usize, 2] {
            let group = format!(
                "l1/{} zipf/{threads} thread{}",
                if mixed {
                    "95% get 5% insert"
                } else {
                    "100% get"
                },
                if threads == 1 { "" } else { "s" }
            );
            let mut g = c.benchmark_group(&group);
            g.throughput(Throughput::Elements(threads as u64));
            for (name, subject) in subjects() {
                // Warm: the whole stream, cache-aside.
                for &k in &streams[0] {
                    if subject.get(k).is_none() {
                        subject.insert(k, [1u8; 64]);
                    }
                }
                m.time(&group, name, threads as u64);
                g.bench_function(name, |b| {
                    b.iter_custom(|iters| run(subject.as_ref(), &streams, threads, iters, mixed))
                });
            }
            g.finish();
            for peer in ["quick_cache", "moka", "lru+mutex"] {
                m.compare(&group, "larder", peer);
            }
        }
    }
}

criterion_group!(benches, l1);
criterion_main!(benches);
