//! Soonest expiry first: when the cache is full, the entry that would
//! expire first goes; entries without an expiry go last, least recently
//! used first. O(log n) per operation (an ordered set of deadlines).
//!
//! The policy keeps, per slot, the deadline it filed the slot under: reads
//! move deadlines under the shard's shared lock (time to idle) and tell the
//! policy later, or never if their event is lost, so the deadline an
//! `EntryInfo` carries may differ from the filed one. Removing by the filed
//! deadline keeps the set exactly the live slots.

use std::collections::BTreeSet;

use super::{EntryInfo, Policy, Victim};
use crate::list::{Links, List};

/// Filed under no deadline: in the `forever` list.
const FOREVER: u64 = u64::MAX;

#[derive(Debug, Default)]
pub(crate) struct Ttl {
    deadlines: BTreeSet<(u64, u32)>,
    /// Per slot: the deadline the slot is filed under (`FOREVER`: in the
    /// list), for live slots.
    filed: Vec<u64>,
    links: Links,
    forever: List,
}

impl Ttl {
    fn add(&mut self, slot: u32, expires_at: u64) {
        let i = slot as usize;
        if self.filed.len() <= i {
            self.filed
                .resize((i + 1).max(self.filed.len() * 2), FOREVER);
        }
        self.filed[i] = expires_at;
        if expires_at == FOREVER {
            self.links.push_front(&mut self.forever, slot, 1);
        } else {
            self.deadlines.insert((expires_at, slot));
        }
    }

    fn drop_entry(&mut self, slot: u32) {
        let filed = self.filed[slot as usize];
        if filed == FOREVER {
            self.links.unlink(&mut self.forever, slot, 1);
        } else {
            let found = self.deadlines.remove(&(filed, slot));
            debug_assert!(found, "slot {slot} was filed under {filed}");
        }
    }
}

impl Policy for Ttl {
    fn on_insert(&mut self, slot: u32, info: EntryInfo) {
        self.add(slot, info.expires_at);
    }

    /// A read makes an entry without expiry the most recent of them (the
    /// order among entries with a deadline is the deadlines').
    fn on_hit(&mut self, slot: u32, _hash: u64) -> bool {
        if self.filed[slot as usize] == FOREVER {
            self.links.move_to_front(&mut self.forever, slot);
        }
        false
    }

    fn on_update(&mut self, slot: u32, _old: EntryInfo, new: EntryInfo) {
        self.drop_entry(slot);
        self.add(slot, new.expires_at);
    }

    fn on_expiry_moved(&mut self, slot: u32, expires_at: u64) {
        if self.filed[slot as usize] != expires_at {
            self.drop_entry(slot);
            self.add(slot, expires_at);
        }
    }

    fn on_remove(&mut self, slot: u32, _info: EntryInfo) {
        self.drop_entry(slot);
    }

    fn victim(&mut self, _hash_of: &dyn Fn(u32) -> u64) -> Option<Victim> {
        let slot = self
            .deadlines
            .first()
            .map(|&(_, s)| s)
            .or(self.forever.tail())?;
        Some(Victim {
            slot,
            rejected_by_admission: false,
        })
    }

    fn reserve(&mut self, slots: usize) {
        if slots > self.filed.len() {
            self.filed.reserve_exact(slots - self.filed.len());
            self.filed.resize(slots, FOREVER);
            self.links.reserve(slots);
        }
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.links.heap_bytes() + self.filed.capacity() * 8 + self.deadlines.len() * 16
    }
}
