//! Heap bytes per entry at 1M entries (u64 keys, 64-byte values), measured
//! with a counting global allocator: Larder against quick_cache and moka.
//! Not a criterion bench: it records its figures in the bench manifest.

#![allow(missing_docs, clippy::print_stdout)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use larder_benches::manifest::{Better, Manifest};
use larder_memory::MemoryCache;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged and only
// counts the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: u64 = 1_000_000;

fn measure<C>(build: impl FnOnce() -> C, fill: impl Fn(&C, u64), settle: impl Fn(&C)) -> f64 {
    let before = LIVE.load(Ordering::SeqCst);
    let cache = build();
    for k in 0..N {
        fill(&cache, k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
    settle(&cache);
    let bytes = LIVE.load(Ordering::SeqCst) - before;
    drop(cache);
    bytes as f64 / N as f64
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let mut m = Manifest::create("l1_memory");
    let group = "l1/memory per entry at 1M entries";
    let larder = measure(
        || MemoryCache::<u64, [u8; 64]>::new(N),
        |c, k| c.insert(k, [1; 64]),
        |_| {},
    );
    let quick = measure(
        || quick_cache::sync::Cache::<u64, [u8; 64]>::new(N as usize),
        |c, k| c.insert(k, [1; 64]),
        |_| {},
    );
    let moka = measure(
        || moka::sync::Cache::<u64, [u8; 64]>::new(N),
        |c, k| c.insert(k, [1; 64]),
        |c| c.run_pending_tasks(),
    );
    for (id, v) in [("larder", larder), ("quick_cache", quick), ("moka", moka)] {
        println!("{group}: {id} {v:.1} bytes/entry");
        m.value(group, id, v, "bytes", Better::Lower);
    }
    m.compare(group, "larder", "quick_cache");
    m.compare(group, "larder", "moka");

    // A byte budget, as a new user writes it: 1 GiB, a weigher returning the
    // value's length, 1M values of 100 bytes (the values' own 100 bytes are
    // in every figure).
    let group = "l1/memory per entry at 1M entries, 1 GiB byte budget";
    const BUDGET: u64 = 1 << 30;
    let value = || vec![1u8; 100];
    let larder = measure(
        || {
            MemoryCache::<u64, Vec<u8>>::builder(BUDGET)
                .weigher(|_, v: &Vec<u8>| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build()
        },
        |c, k| c.insert(k, value()),
        |_| {},
    );
    let quick = measure(
        || {
            quick_cache::sync::Cache::<u64, Vec<u8>, ByLen>::with_weighter(
                N as usize, BUDGET, ByLen,
            )
        },
        |c, k| c.insert(k, value()),
        |_| {},
    );
    let moka = measure(
        || {
            moka::sync::Cache::<u64, Vec<u8>>::builder()
                .max_capacity(BUDGET)
                .weigher(|_, v: &Vec<u8>| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .build()
        },
        |c, k| c.insert(k, value()),
        |c| c.run_pending_tasks(),
    );
    for (id, v) in [("larder", larder), ("quick_cache", quick), ("moka", moka)] {
        println!("{group}: {id} {v:.1} bytes/entry");
        m.value(group, id, v, "bytes", Better::Lower);
    }
    m.compare(group, "larder", "quick_cache");
    m.compare(group, "larder", "moka");
}

/// quick_cache's weigher: the value's length.
#[derive(Clone)]
struct ByLen;

impl quick_cache::Weighter<u64, Vec<u8>> for ByLen {
    fn weight(&self, _: &u64, v: &Vec<u8>) -> u64 {
        v.len() as u64
    }
}
