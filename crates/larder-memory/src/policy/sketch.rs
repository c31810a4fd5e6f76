//! A count-min sketch of recent access frequencies (TinyLFU, Einziger,
//! Friedman and Manes, 2017): 4 rows of 4-bit counters (saturating at 15),
//! conservative update, and aging by halving every counter after
//! `20 x expected entries` additions, so old popularity fades.

const ROWS: usize = 4;
const MAX: u8 = 15;
const SEEDS: [u64; ROWS] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];

#[derive(Debug)]
pub(crate) struct Sketch {
    rows: Vec<u8>,
    /// Number of 64-byte blocks minus one (a power of two minus one).
    block_mask: usize,
    additions: u64,
    sample: u64,
}

impl Sketch {
    pub(crate) fn new(expected_entries: u64) -> Self {
        // Two counters per row per expected entry (8 in all, 8 bytes per
        // entry like Caffeine's sketch): fewer collisions than one.
        let width = (expected_entries.max(32) as usize * 2).next_power_of_two();
        Sketch {
            rows: vec![0; width * ROWS],
            block_mask: width * ROWS / 64 - 1,
            additions: 0,
            sample: 20 * expected_entries.max(16),
        }
    }

    /// The counter of `row` for `hash`. All four rows of one hash live in
    /// the same 64-byte block (16 counters per row there), so an increment
    /// costs one cache miss, not four (Caffeine's block layout).
    #[inline]
    fn index(&self, hash: u64, row: usize) -> usize {
        let block = ((hash ^ (hash >> 29)).wrapping_mul(SEEDS[0]) >> 32) as usize & self.block_mask;
        let h = (hash ^ (hash >> 31)).wrapping_mul(SEEDS[row]);
        block * 64 + row * 16 + (h >> 60) as usize
    }

    /// The estimated recent frequency of `hash` (0..=15).
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        (0..ROWS)
            .map(|r| self.rows[self.index(hash, r)])
            .min()
            .unwrap_or(0)
    }

    /// Counts one access to `hash`.
    pub(crate) fn increment(&mut self, hash: u64) {
        let idx: [usize; ROWS] = std::array::from_fn(|r| self.index(hash, r));
        let min = idx.iter().map(|&i| self.rows[i]).min().unwrap_or(0);
        if min < MAX {
            // Conservative update: raise only the counters at the minimum.
            for &i in &idx {
                if self.rows[i] == min {
                    self.rows[i] += 1;
                }
            }
        }
        self.additions += 1;
        if self.additions >= self.sample {
            for c in &mut self.rows {
                *c >>= 1;
            }
            self.additions /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_age() {
        let mut s = Sketch::new(64);
        for _ in 0..20 {
            s.increment(42);
        }
        assert_eq!(s.frequency(42), 15);
        assert!(s.frequency(7) <= 1);
        // Enough other traffic halves everything.
        for i in 0..(20 * 64) {
            s.increment(1_000 + i);
        }
        assert!(s.frequency(42) <= 7, "{}", s.frequency(42));
    }
}
