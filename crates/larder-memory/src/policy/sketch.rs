//! A count-min sketch of recent access frequencies (TinyLFU, Einziger,
//! Friedman and Manes, 2017), laid out like Caffeine's: 4-bit counters
//! (saturating at 15), 16 per expected entry, four of them per key, all in
//! one 64-byte block so an access costs one cache miss. Every access raises
//! all four (not a conservative update: on the traces of
//! `../shared/traces` the plain update ages more evenly and scores 3 to 4
//! points of % of OPT more). Aging halves every counter after
//! `10 x expected entries` counted accesses, so old popularity fades.
//!
//! The table is sized by entries, never by weight, and grows with the
//! entries a cache actually holds (as Caffeine's `ensureCapacity`): a byte
//! budget of 1 TiB costs nothing until entries arrive. Growing doubles the
//! number of blocks and copies each block into its new places, so every
//! key's estimate is exactly what it was.

/// A counter's largest value.
pub(crate) const MAX: u64 = 15;
/// Every nibble's low bit, and every nibble's three low bits.
const ONES: u64 = 0x1111_1111_1111_1111;
const LOW3: u64 = 0x7777_7777_7777_7777;
const SEEDS: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];

/// Words per block: 64 bytes, one cache line.
const BLOCK: usize = 8;

/// A zeroed table of `blocks` blocks, and the word at which the first
/// block starts: a 64-byte boundary. A `Vec<u64>` is only 8-byte aligned,
/// and a block straddling two lines cost a second miss on most increments
/// (even after its first word was warmed); seven spare words let the
/// blocks start on a line. A zeroed `Vec<u64>` also comes from `calloc`,
/// whose fresh pages cost nothing until touched.
fn zeroed(blocks: usize) -> (Vec<u64>, usize) {
    let table = vec![0u64; blocks * BLOCK + BLOCK - 1];
    let words_past_line = (table.as_ptr().addr() / 8) % BLOCK;
    (table, (BLOCK - words_past_line) % BLOCK)
}

#[derive(Debug)]
pub(crate) struct Sketch {
    /// 16 nibbles per word, 8 words (64 bytes) per block; the blocks start
    /// at word `start` (see [`zeroed`]).
    table: Vec<u64>,
    start: usize,
    block_mask: usize,
    additions: u64,
    sample: u64,
    /// How many times the counters were halved.
    ages: u32,
}

impl Sketch {
    /// A sketch for `expected_entries` entries (at least 8, at most
    /// [`Sketch::MAX_WORDS`]); [`Sketch::ensure_capacity`] grows it.
    pub(crate) fn new(expected_entries: u64) -> Self {
        // 16 counters (one word) per expected entry, at least one block.
        let entries = expected_entries.clamp(8, Self::MAX_WORDS);
        let words = (entries as usize).next_power_of_two();
        let (table, start) = zeroed(words / BLOCK);
        Sketch {
            table,
            start,
            block_mask: words / BLOCK - 1,
            additions: 0,
            sample: 10 * entries,
            ages: 0,
        }
    }

    /// The most words (entries) a table ever has: 2^30 (8 GiB), like
    /// Caffeine's cap.
    pub(crate) const MAX_WORDS: u64 = 1 << 30;

    /// Entries the table is sized for.
    pub(crate) fn entries(&self) -> u64 {
        (self.block_mask as u64 + 1) * BLOCK as u64
    }

    /// Grows the table to cover `entries` (a power of two at least as
    /// large, up to [`Sketch::MAX_WORDS`]), keeping every estimate, and
    /// samples `10 x` as many accesses between agings.
    pub(crate) fn ensure_capacity(&mut self, entries: u64) {
        let entries = entries.min(Self::MAX_WORDS);
        let old = self.entries() as usize;
        if entries <= old as u64 {
            return;
        }
        let words = (entries as usize).next_power_of_two();
        // A block's index is the low bits of a hash-derived number; the
        // new bits above the old mask pick one of the copies, and the
        // counters inside a block do not depend on the block.
        let (mut table, start) = zeroed(words / BLOCK);
        let counters = &self.table[self.start..self.start + old];
        for copy in table[start..start + words].chunks_exact_mut(old) {
            copy.copy_from_slice(counters);
        }
        (self.table, self.start) = (table, start);
        self.block_mask = words / BLOCK - 1;
        self.sample = 10 * words as u64;
    }

    /// The four (word in the block, shift) pairs of `hash`: one word out
    /// of two per row, one nibble out of 16 in it.
    #[inline]
    fn cells(hash: u64) -> [(usize, u32); 4] {
        // Reads reach the policy with the low 32 bits of the key's hash
        // (see `reads`): count every key by those.
        let hash = u64::from(hash as u32);
        std::array::from_fn(|row| {
            let h = (hash ^ (hash >> 31)).wrapping_mul(SEEDS[row]) >> 59;
            let word = row * 2 + (h & 1) as usize;
            (word, ((h >> 1) as u32) * 4)
        })
    }

    /// The 64-byte block holding `hash`'s counters.
    #[inline]
    fn block(&self, hash: u64) -> usize {
        let hash = u64::from(hash as u32);
        ((hash ^ (hash >> 29)).wrapping_mul(SEEDS[0]) >> 32) as usize & self.block_mask
    }

    /// The words of block `b`.
    #[inline]
    fn words(&self, b: usize) -> &[u64] {
        let at = self.start + b * BLOCK;
        &self.table[at..at + BLOCK]
    }

    /// One word of `hash`'s block (to bring it into cache early).
    pub(crate) fn warm(&self, hash: u64) -> u64 {
        self.words(self.block(hash))[0]
    }

    /// The estimated recent frequency of `hash` (0..=15).
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        let block = self.words(self.block(hash));
        Self::cells(hash)
            .iter()
            .map(|&(w, s)| (block[w] >> s) & MAX)
            .min()
            .unwrap_or(0) as u8
    }

    /// Counts one access to `hash`. Returns its estimate as counted (the
    /// least of its four counters, at most 15), before any aging this
    /// access set off.
    pub(crate) fn increment(&mut self, hash: u64) -> u64 {
        // Branch-free: whether a counter is saturated is a coin toss the
        // branch predictor loses on most hits.
        let mut added = 0;
        let mut min = MAX;
        let at = self.start + self.block(hash) * BLOCK;
        let block = &mut self.table[at..at + BLOCK];
        for (w, s) in Self::cells(hash) {
            let c = (block[w] >> s) & MAX;
            let inc = u64::from(c < MAX);
            block[w] += inc << s;
            added |= inc;
            min = min.min(c + inc);
        }
        if added != 0 {
            self.additions += 1;
            if self.additions >= self.sample {
                self.age();
            }
        }
        min
    }

    /// How many times the counters were halved (wrapping).
    pub(crate) fn ages(&self) -> u32 {
        self.ages
    }

    /// Bytes of the counter table.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.table.capacity() * 8
    }

    /// Halves every counter. The count of additions halves too, less the
    /// halves lost to rounding (a quarter of the odd counters, since each
    /// access raised four).
    fn age(&mut self) {
        let mut odd = 0u64;
        let words = self.entries() as usize;
        for w in &mut self.table[self.start..self.start + words] {
            odd += u64::from((*w & ONES).count_ones());
            *w = (*w >> 1) & LOW3;
        }
        self.additions = (self.additions - (odd / 4).min(self.additions)) / 2;
        self.ages = self.ages.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_age() {
        let mut s = Sketch::new(64);
        // Each increment answers the estimate it leaves.
        let estimates: Vec<u64> = (0..20).map(|_| s.increment(42)).collect();
        let expected: Vec<u64> = (1..=20).map(|n: u64| n.min(15)).collect();
        assert_eq!(estimates, expected);
        assert_eq!(s.frequency(42), 15);
        assert!(s.frequency(7) <= 1);
        // Enough other traffic halves everything.
        for i in 0..(10 * 64) {
            s.increment(1_000 + i);
        }
        assert!(s.frequency(42) <= 7, "{}", s.frequency(42));
    }

    /// Every block sits on one cache line, also after growing: an
    /// increment costs one miss, not two.
    #[test]
    fn blocks_are_cache_line_aligned() {
        let line = |s: &Sketch| s.words(0).as_ptr().addr() % 64;
        for entries in [8, 100, 5_000, 1 << 16] {
            let mut s = Sketch::new(entries);
            assert_eq!(line(&s), 0, "{entries} entries");
            s.ensure_capacity(entries * 4);
            assert_eq!(line(&s), 0, "{entries} entries, grown");
        }
        for blocks in 1..64 {
            let (table, start) = zeroed(blocks);
            assert_eq!(table[start..].as_ptr().addr() % 64, 0);
            assert!(table.len() - start >= blocks * BLOCK);
        }
    }

    #[test]
    fn growing_keeps_every_estimate() {
        let mut s = Sketch::new(16);
        let key = |k: u64| k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for k in 0..100u64 {
            for _ in 0..k % 17 {
                s.increment(key(k));
            }
        }
        let before: Vec<u8> = (0..1_000).map(|k| s.frequency(key(k))).collect();
        s.ensure_capacity(1_000);
        assert_eq!(s.entries(), 1_024);
        let after: Vec<u8> = (0..1_000).map(|k| s.frequency(key(k))).collect();
        assert_eq!(before, after);
        s.ensure_capacity(10);
        assert_eq!(s.entries(), 1_024, "never shrinks");
    }

    #[test]
    fn counters_stay_in_their_nibble() {
        let mut s = Sketch::new(1024);
        for k in 0..200u64 {
            for _ in 0..k % 41 {
                s.increment(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            }
        }
        // No counter overflowed into its neighbour: every key whose count
        // reached 15 saturates there, and estimates never undercount
        // (before any aging, with few additions).
        assert!(s.additions < s.sample);
        for k in 0..200u64 {
            let f = s.frequency(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert!(u64::from(f) >= (k % 41).min(15), "key {k}: {f}");
        }
    }
}
