//! Jump consistent hash (Lamping and Veach, 2014): for a fixed, numbered set
//! of buckets where only the last bucket is ever added or removed. No memory,
//! perfectly even, deterministic across processes.

/// The bucket (0..buckets) of a 64-bit key. `buckets == 0` gives 0.
///
/// ```
/// use larder_ring::jump_hash;
/// let b = jump_hash(0xDEAD_BEEF, 10);
/// assert!(b < 10);
/// // Growing from 10 to 11 buckets moves a key only to the new bucket.
/// let after = jump_hash(0xDEAD_BEEF, 11);
/// assert!(after == b || after == 10);
/// ```
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// The bucket of a byte key: [`jump_hash`] of its xxh3-64 hash.
pub fn jump_hash_key(key: &[u8], buckets: u32) -> u32 {
    jump_hash(crate::ring::key_hash(key), buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // Vectors from an independent implementation's tests (Microsoft's
        // JumpConsistentHash, TypeScript port of the paper's C++ code).
        assert_eq!(jump_hash(10_863_919_174_838_991, 11), 6);
        assert_eq!(jump_hash(2_016_238_256_797_177_309, 11), 3);
        // Degenerate sizes.
        assert_eq!(jump_hash(12_345, 1), 0);
        assert_eq!(jump_hash(12_345, 0), 0);
    }

    #[test]
    fn growing_moves_keys_only_to_the_new_bucket() {
        for k in 0..5_000u64 {
            let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for n in 1..40 {
                let (a, b) = (jump_hash(key, n), jump_hash(key, n + 1));
                assert!(a == b || b == n, "key {k}: {a} -> {b} at {n}");
            }
        }
    }
}
