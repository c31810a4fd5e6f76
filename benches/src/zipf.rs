//! The L1 benchmark's workload, shared by `benches/l1.rs` and the
//! `l1_ops` profiling tool: Zipf(1.0) over [`KEYS`] keys in front of a
//! cache of [`CAPACITY`] entries.

/// Distinct keys.
pub const KEYS: usize = 1_000_000;
/// The caches' capacity.
pub const CAPACITY: usize = 100_000;
/// Requests per stream (a power of two).
pub const STREAM: usize = 1 << 20;

/// The key of Zipf rank `rank` (0 is the most popular).
pub fn key_of(rank: u64) -> u64 {
    rank.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A Zipf(1.0) stream of [`STREAM`] keys over [`KEYS`] ranks, scrambled so
/// hot keys are not neighbours; the same `seed` gives the same stream.
pub fn stream(seed: u64) -> Vec<u64> {
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
            key_of(cdf.partition_point(|&c| c < u) as u64)
        })
        .collect()
}
