//! Least recently used: one list, hits move to the front, the tail goes.

use super::{EntryInfo, Policy, Victim};
use crate::list::{Links, List};

#[derive(Debug, Default)]
pub(crate) struct Lru {
    links: Links,
    list: List,
}

impl Policy for Lru {
    fn on_insert(&mut self, slot: u32, info: EntryInfo) {
        self.links.push_front(&mut self.list, slot, info.weight);
    }

    fn on_hit(&mut self, slot: u32, _hash: u64) -> bool {
        self.links.move_to_front(&mut self.list, slot);
        false
    }

    fn on_update(&mut self, slot: u32, old: EntryInfo, new: EntryInfo) {
        self.links.unlink(&mut self.list, slot, old.weight);
        self.links.push_front(&mut self.list, slot, new.weight);
    }

    fn on_remove(&mut self, slot: u32, info: EntryInfo) {
        self.links.unlink(&mut self.list, slot, info.weight);
    }

    fn victim(&mut self, _hash_of: &dyn Fn(u32) -> u64) -> Option<Victim> {
        self.list.tail().map(|slot| Victim {
            slot,
            rejected_by_admission: false,
        })
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.links.heap_bytes()
    }
}
