//! The L1 against quick_cache, moka and `lru` behind a mutex, same run:
//! Zipf(1.0) over 1M keys, capacity 100k, u64 keys and 64-byte values;
//! 100% get on a warmed cache, and 95% get / 5% insert; 1 and 2 threads.
//! Each subject's hit ratio on that stream after the warm-up is recorded
//! beside its speed (a policy could buy speed with misses).
//!
//! Hot keys (a flash sale's hot products): every thread reads the same 16
//! keys, the 16 most popular of the Zipf stream, from the warmed cache;
//! 1 and 2 threads, Larder's default builder against quick_cache and moka.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_benches::manifest::{Better, Manifest};
use larder_memory::MemoryCache;

use larder_benches::zipf::{CAPACITY, STREAM, key_of, stream as zipf_stream};

type Value = [u8; 64];

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

/// Warms a subject with `stream`, cache-aside.
fn warm(subject: &dyn Subject, stream: &[u64]) {
    for &k in stream {
        if subject.get(k).is_none() {
            subject.insert(k, [1u8; 64]);
        }
    }
}

/// Percent of `stream`'s gets that hit.
fn hit_ratio(subject: &dyn Subject, stream: &[u64]) -> f64 {
    let hits = stream.iter().filter(|&&k| subject.get(k).is_some()).count();
    100.0 * hits as f64 / stream.len() as f64
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

/// Every thread reads the same `HOT` keys, `iters` reads per thread; the
/// wall time.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time
fn run_hot(subject: &dyn Subject, hot: &[u64; HOT], threads: usize, iters: u64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || {
                for i in 0..iters as usize {
                    black_box(subject.get(hot[i % HOT]));
                }
            });
        }
    });
    start.elapsed()
}

const HOT: usize = 16;

/// The hot-key groups: the warmed cache, every thread on the same keys.
fn hot_keys(c: &mut Criterion, m: &mut Manifest, streams: &[Vec<u64>]) {
    let hot: [u64; HOT] = std::array::from_fn(|r| key_of(r as u64));
    for threads in [1usize, 2] {
        let group = format!(
            "l1/hot keys, every thread reads the same {HOT}/{threads} thread{}",
            if threads == 1 { "" } else { "s" }
        );
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Elements(threads as u64));
        for (name, subject) in subjects() {
            if !matches!(name, "larder" | "quick_cache" | "moka") {
                continue;
            }
            warm(subject.as_ref(), &streams[0]);
            for &k in &hot {
                if subject.get(k).is_none() {
                    subject.insert(k, [1u8; 64]);
                }
            }
            let resident = hot.iter().filter(|&&k| subject.get(k).is_some()).count();
            assert_eq!(resident, HOT, "{name}: the hot keys are resident");
            m.time(&group, name, threads as u64);
            g.bench_function(name, |b| {
                b.iter_custom(|iters| run_hot(subject.as_ref(), &hot, threads, iters))
            });
        }
        g.finish();
        for peer in ["quick_cache", "moka"] {
            m.compare(&group, "larder", peer);
        }
    }
}

fn l1(c: &mut Criterion) {
    let mut m = Manifest::create("l1");
    let streams: Vec<Vec<u64>> = (0..2).map(|t| zipf_stream(0x1234_5678 + t)).collect();
    let ratio_group = "l1/hit ratio after warm-up, zipf";
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
                warm(subject.as_ref(), &streams[0]);
                if !mixed && threads == 1 {
                    let ratio = hit_ratio(subject.as_ref(), &streams[1]);
                    m.value(ratio_group, name, ratio, "% hits", Better::Higher);
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
    for peer in ["quick_cache", "moka", "lru+mutex"] {
        m.compare(ratio_group, "larder", peer);
    }
    hot_keys(c, &mut m, &streams);
}

criterion_group!(benches, l1);
criterion_main!(benches);
