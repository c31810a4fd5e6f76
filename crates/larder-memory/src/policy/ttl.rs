//! Soonest expiry first: when the cache is full, the entry that would
//! expire first goes; entries without an expiry go last, least recently
//! used first. O(log n) per operation (an ordered set of deadlines).

use std::collections::BTreeSet;

use super::{EntryInfo, Policy, Victim};
use crate::list::{Links, List};

#[derive(Debug, Default)]
pub(crate) struct Ttl {
    deadlines: BTreeSet<(u64, u32)>,
    links: Links,
    forever: List,
}

impl Ttl {
    fn add(&mut self, slot: u32, info: EntryInfo) {
        if info.expires_at == u64::MAX {
            self.links.push_front(&mut self.forever, slot, info.weight);
        } else {
            self.deadlines.insert((info.expires_at, slot));
        }
    }

    fn drop_entry(&mut self, slot: u32, info: EntryInfo) {
        if info.expires_at == u64::MAX {
            self.links.unlink(&mut self.forever, slot, info.weight);
        } else {
            self.deadlines.remove(&(info.expires_at, slot));
        }
    }
}

impl Policy for Ttl {
    fn on_insert(&mut self, slot: u32, info: EntryInfo) {
        self.add(slot, info);
    }

    fn on_hit(&mut self, _slot: u32, _hash: u64) -> bool {
        false
    }

    fn on_update(&mut self, slot: u32, old: EntryInfo, new: EntryInfo) {
        self.drop_entry(slot, old);
        self.add(slot, new);
    }

    fn on_remove(&mut self, slot: u32, info: EntryInfo) {
        self.drop_entry(slot, info);
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
}
