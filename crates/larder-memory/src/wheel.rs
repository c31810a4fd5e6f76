//! A hierarchical timer wheel (Varghese and Lauck) for expiry in O(1)
//! amortised time, without a background thread: entries are filed by
//! deadline into 64 buckets per level (about 1.07 s, 1.1 min, 1.2 h and
//! 3.3 days per bucket), and [`Wheel::advance`] walks only the buckets the
//! clock has passed, expiring what is due and cascading the rest down.
//!
//! The wheel frees memory and fires listeners; it is not what keeps expired
//! entries from being returned: reads compare the exact deadline.

use crate::list::{Links, List};

const LEVELS: usize = 4;
const BUCKETS: u64 = 64;
const SHIFTS: [u32; LEVELS] = [30, 36, 42, 48];
const UNSCHEDULED: u16 = u16::MAX;

#[derive(Debug)]
pub(crate) struct Wheel {
    buckets: Vec<List>,
    links: Links,
    /// Per slot: level * 64 + bucket, or UNSCHEDULED.
    place: Vec<u16>,
    deadline: Vec<u64>,
    /// The time (ns) the wheel was last advanced to.
    now: u64,
}

impl Wheel {
    pub(crate) fn new(now: u64) -> Self {
        Wheel {
            buckets: vec![List::default(); LEVELS * BUCKETS as usize],
            links: Links::default(),
            place: Vec::new(),
            deadline: Vec::new(),
            now,
        }
    }

    fn ensure(&mut self, slot: u32) {
        let i = slot as usize;
        if self.place.len() <= i {
            let n = (i + 1).max(self.place.len() * 2);
            self.place.resize(n, UNSCHEDULED);
            self.deadline.resize(n, u64::MAX);
        }
    }

    fn bucket_for(&self, deadline: u64) -> u16 {
        let delta = deadline.saturating_sub(self.now);
        for (level, shift) in SHIFTS.iter().enumerate() {
            if delta < (BUCKETS << shift) || level == LEVELS - 1 {
                let idx = (deadline.min(self.now + (BUCKETS << shift) - 1) >> shift) % BUCKETS;
                return (level as u64 * BUCKETS + idx) as u16;
            }
        }
        UNSCHEDULED
    }

    /// Files `slot` under `deadline` (ns); `u64::MAX` means never.
    pub(crate) fn schedule(&mut self, slot: u32, deadline: u64) {
        self.unschedule(slot);
        if deadline == u64::MAX {
            // Nothing to file: a cache without expiry allocates nothing here.
            return;
        }
        self.ensure(slot);
        let b = self.bucket_for(deadline);
        self.place[slot as usize] = b;
        self.deadline[slot as usize] = deadline;
        self.links
            .push_front(&mut self.buckets[b as usize], slot, 0);
    }

    /// The deadline `slot` is filed under, `u64::MAX` if none.
    pub(crate) fn scheduled(&self, slot: u32) -> u64 {
        let i = slot as usize;
        if i < self.place.len() && self.place[i] != UNSCHEDULED {
            self.deadline[i]
        } else {
            u64::MAX
        }
    }

    pub(crate) fn unschedule(&mut self, slot: u32) {
        let i = slot as usize;
        if i >= self.place.len() || self.place[i] == UNSCHEDULED {
            return;
        }
        let b = self.place[i] as usize;
        self.links.unlink(&mut self.buckets[b], slot, 0);
        self.place[i] = UNSCHEDULED;
    }

    /// Moves the wheel to `now`, pushing every slot whose deadline has
    /// passed onto `expired` (they are unscheduled).
    pub(crate) fn advance(&mut self, now: u64, expired: &mut Vec<u32>) {
        if now <= self.now {
            return;
        }
        let before = self.now;
        self.now = now;
        let mut due: Vec<u32> = Vec::new();
        for (level, shift) in SHIFTS.iter().enumerate() {
            let (from, to) = (before >> shift, now >> shift);
            if from == to {
                continue;
            }
            let steps = (to - from + 1).min(BUCKETS);
            for t in 0..steps {
                let b = (level as u64 * BUCKETS + (from + t) % BUCKETS) as usize;
                let mut cur = self.buckets[b].head();
                while let Some(s) = cur {
                    cur = self.links.next(s);
                    due.push(s);
                }
                for &s in &due {
                    self.links.unlink(&mut self.buckets[b], s, 0);
                    self.place[s as usize] = UNSCHEDULED;
                }
                for s in due.drain(..) {
                    let d = self.deadline[s as usize];
                    if d <= now {
                        expired.push(s);
                    } else {
                        self.schedule(s, d);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn expires_each_entry_once_after_its_deadline() {
        let mut w = Wheel::new(0);
        let deadlines = [
            SEC / 2,
            3 * SEC,
            90 * SEC,
            2 * 3600 * SEC,
            5 * 86_400 * SEC,
            400 * 86_400 * SEC,
        ];
        for (s, d) in deadlines.iter().enumerate() {
            w.schedule(s as u32, *d);
        }
        w.schedule(99, u64::MAX);
        let mut expired = Vec::new();
        let mut seen = vec![None; deadlines.len()];
        let mut now = 0;
        // Step through 500 days in uneven strides (about 9,000 steps).
        let mut i = 0usize;
        while now < 500 * 86_400 * SEC {
            now += [SEC / 3, 7 * SEC, 13 * 60 * SEC, 5 * 3600 * SEC][i % 4];
            i += 1;
            w.advance(now, &mut expired);
            for s in expired.drain(..) {
                assert!(seen[s as usize].is_none(), "slot {s} expired twice");
                assert!(deadlines[s as usize] <= now, "slot {s} expired early");
                seen[s as usize] = Some(now);
            }
        }
        assert!(seen.iter().all(Option::is_some), "{seen:?}");
    }

    #[test]
    fn unscheduled_entries_never_expire() {
        let mut w = Wheel::new(0);
        w.schedule(1, 2 * SEC);
        w.unschedule(1);
        w.schedule(2, 2 * SEC);
        w.schedule(2, u64::MAX);
        let mut expired = Vec::new();
        w.advance(100 * SEC, &mut expired);
        assert!(expired.is_empty());
    }
}
