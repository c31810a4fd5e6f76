//! `cargo xtask profile facade`: the facade benchmark's L1 hit (100k keys
//! of `String` values read in a fixed stride, the facade with a one-hour
//! TTL and a loader) against a bare larder-memory get of the same keys,
//! a given number of gets after the same warm-up, for a counting profiler
//! (see `l1_ops.rs`). The facade's future is polled once, as an L1 hit
//! never waits.
//!
//! ```text
//! facade_ops SUBJECT hit OPS   SUBJECT: facade | bare
//! ```

#![allow(clippy::print_stdout)] // a command-line tool

use std::hint::black_box;
use std::time::Duration;

use futures_util::FutureExt;
use larder::core::{Error, FnLoader};
use larder::{Cache, Ttl};
use larder_memory::MemoryCache;

const KEYS: u64 = 100_000;

fn value(k: u64) -> String {
    format!("value of {k}")
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [subject, mode, ops] = args.as_slice() else {
        return Err("usage: facade_ops facade|bare hit OPS".into());
    };
    if mode != "hit" {
        return Err(format!("unknown mode {mode:?}"));
    }
    let facade = match subject.as_str() {
        "facade" => true,
        "bare" => false,
        other => return Err(format!("unknown subject {other:?}")),
    };
    let ops: u64 = ops.parse().map_err(|e| format!("OPS: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bare: MemoryCache<u64, String> = MemoryCache::new(2 * KEYS);
    let cache: Cache<u64, String> = Cache::builder()
        .memory(2 * KEYS)
        .ttl(Ttl::fixed(Duration::from_secs(3600)))
        .loader(FnLoader::new(|k: u64| async move {
            Ok::<_, Error>(Some(value(k)))
        }))
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        for k in 0..KEYS {
            bare.insert(k, value(k));
            cache.get_or_load(&k).await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;
    let (mut i, mut hits) = (0u64, 0u64);
    for _ in 0..ops {
        i = (i + 7919) % KEYS;
        let got = if facade {
            match cache.get(&i).now_or_never() {
                Some(Ok(v)) => v,
                Some(Err(e)) => return Err(format!("key {i}: {e}")),
                None => return Err(format!("key {i}: not an L1 hit (it waited)")),
            }
        } else {
            bare.get(&i)
        };
        hits += u64::from(black_box(got).is_some());
    }
    if hits != ops {
        return Err(format!("{hits} hits of {ops} gets"));
    }
    println!("{subject}: {ops} gets, all hits");
    Ok(())
}
