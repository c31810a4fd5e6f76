//! `cargo xtask profile facade`: the facade benchmark's L1 hit
//! ([`larder_benches::facade_hit`]) against a bare larder-memory get of the
//! same keys, a given number of gets after the same warm-up, for a
//! counting profiler (see `l1_ops.rs`). The facade's future is polled once, as an L1 hit
//! never waits.
//!
//! ```text
//! facade_ops SUBJECT hit OPS   SUBJECT: facade | bare
//! ```

#![allow(clippy::print_stdout)] // a command-line tool

use std::hint::black_box;

use futures_util::FutureExt;
use larder_benches::facade_hit;

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
    let (bare, cache) = facade_hit::caches();
    rt.block_on(facade_hit::fill(&bare, &cache))
        .map_err(|e| e.to_string())?;
    let (mut i, mut hits) = (0u64, 0u64);
    for _ in 0..ops {
        i = facade_hit::next(i);
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
