//! Least frequently used with aging: each entry counts its hits; the
//! victim is the least recently used entry among those with the lowest
//! count. Every `10 x capacity` hits (with a weigher, whose capacity is a
//! weight: `10 x entries held`) all counts halve, so past popularity fades. O(1) per hit and eviction (buckets of equal count
//! kept in a map from count to list); the halving is O(n), amortised over
//! the hits that triggered it.

use std::collections::BTreeMap;

use super::{EntryInfo, Policy, Victim};
use crate::list::{Links, List};

#[derive(Debug)]
pub(crate) struct Lfu {
    links: Links,
    buckets: BTreeMap<u32, List>,
    count: Vec<u32>,
    weight: Vec<u64>,
    hits: u64,
    /// Hits between agings; `None`: `10 x len`.
    age_every: Option<u64>,
    /// Entries held.
    len: u64,
}

impl Lfu {
    pub(crate) fn new(capacity: u64, weighted: bool) -> Self {
        Lfu {
            links: Links::default(),
            buckets: BTreeMap::new(),
            count: Vec::new(),
            weight: Vec::new(),
            hits: 0,
            age_every: (!weighted).then(|| capacity.saturating_mul(10).max(100)),
            len: 0,
        }
    }

    fn put(&mut self, slot: u32, count: u32) {
        let i = slot as usize;
        self.count[i] = count;
        let list = self.buckets.entry(count).or_default();
        self.links.push_front(list, slot, self.weight[i]);
    }

    fn take(&mut self, slot: u32) {
        let i = slot as usize;
        let c = self.count[i];
        if let Some(list) = self.buckets.get_mut(&c) {
            self.links.unlink(list, slot, self.weight[i]);
            if list.is_empty() {
                self.buckets.remove(&c);
            }
        }
    }

    /// Halves every count (at least 1), keeping recency order inside each
    /// old bucket.
    fn age(&mut self) {
        let mut order: Vec<(u32, u32)> = Vec::new();
        for (&c, list) in &self.buckets {
            let start = order.len();
            let mut cur = list.head();
            while let Some(s) = cur {
                order.push((c, s));
                cur = self.links.next(s);
            }
            order[start..].reverse(); // least recent first
        }
        self.buckets.clear();
        for (c, s) in order {
            self.put(s, (c / 2).max(1));
        }
    }
}

impl Policy for Lfu {
    fn on_insert(&mut self, slot: u32, info: EntryInfo) {
        let i = slot as usize;
        if self.count.len() <= i {
            let n = (i + 1).max(self.count.len() * 2);
            self.count.resize(n, 0);
            self.weight.resize(n, 0);
        }
        self.weight[i] = info.weight;
        self.put(slot, 1);
        self.len += 1;
    }

    fn on_hit(&mut self, slot: u32, _hash: u64) -> bool {
        let c = self.count[slot as usize];
        self.take(slot);
        self.put(slot, c.saturating_add(1));
        self.hits += 1;
        let every = self
            .age_every
            .unwrap_or_else(|| self.len.saturating_mul(10).max(100));
        if self.hits >= every {
            self.hits = 0;
            self.age();
        }
        false
    }

    fn on_update(&mut self, slot: u32, _old: EntryInfo, new: EntryInfo) {
        let c = self.count[slot as usize];
        self.take(slot);
        self.weight[slot as usize] = new.weight;
        self.put(slot, c);
    }

    fn on_remove(&mut self, slot: u32, _info: EntryInfo) {
        self.take(slot);
        self.len -= 1;
    }

    fn victim(&mut self, _hash_of: &dyn Fn(u32) -> u64) -> Option<Victim> {
        let (_, list) = self.buckets.iter().next()?;
        list.tail().map(|slot| Victim {
            slot,
            rejected_by_admission: false,
        })
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.links.heap_bytes() + self.count.capacity() * 4 + self.weight.capacity() * 8
    }
}
