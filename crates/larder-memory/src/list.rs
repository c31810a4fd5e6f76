//! Intrusive doubly-linked lists over slot indices, shared by the policies.
//! A `Links` table holds prev/next per slot; a `List` is a head, a tail and
//! a total weight. Every operation is O(1).

pub(crate) const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// prev/next per slot, grown on demand.
#[derive(Debug, Default)]
pub(crate) struct Links {
    links: Vec<Link>,
}

/// One list: most recent at the head, least recent at the tail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: u32,
    tail: u32,
    pub(crate) len: u64,
    pub(crate) weight: u64,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
            weight: 0,
        }
    }
}

impl List {
    pub(crate) fn tail(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    pub(crate) fn head(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head == NIL
    }
}

impl Links {
    fn ensure(&mut self, slot: u32) {
        let need = slot as usize + 1;
        if self.links.len() < need {
            self.links.resize(
                need.max(self.links.len() * 2),
                Link {
                    prev: NIL,
                    next: NIL,
                },
            );
        }
    }

    /// Room for slots `0..slots`, exactly.
    pub(crate) fn reserve(&mut self, slots: usize) {
        if self.links.len() < slots {
            self.links.reserve_exact(slots - self.links.len());
            self.links.resize(
                slots,
                Link {
                    prev: NIL,
                    next: NIL,
                },
            );
        }
    }

    pub(crate) fn push_front(&mut self, list: &mut List, slot: u32, weight: u64) {
        self.ensure(slot);
        self.links[slot as usize] = Link {
            prev: NIL,
            next: list.head,
        };
        if list.head != NIL {
            self.links[list.head as usize].prev = slot;
        } else {
            list.tail = slot;
        }
        list.head = slot;
        list.len += 1;
        list.weight += weight;
    }

    pub(crate) fn unlink(&mut self, list: &mut List, slot: u32, weight: u64) {
        let Link { prev, next } = self.links[slot as usize];
        if prev != NIL {
            self.links[prev as usize].next = next;
        } else {
            list.head = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        } else {
            list.tail = prev;
        }
        list.len -= 1;
        list.weight -= weight;
    }

    pub(crate) fn move_to_front(&mut self, list: &mut List, slot: u32) {
        if list.head == slot {
            return;
        }
        self.unlink(list, slot, 0);
        self.push_front(list, slot, 0);
    }

    /// `slot`'s links as one word (to bring them into cache early).
    pub(crate) fn warm(&self, slot: u32) -> u64 {
        self.links
            .get(slot as usize)
            .map_or(0, |l| u64::from(l.prev) << 32 | u64::from(l.next))
    }

    /// The slot after `slot` toward the tail.
    pub(crate) fn next(&self, slot: u32) -> Option<u32> {
        let n = self.links[slot as usize].next;
        (n != NIL).then_some(n)
    }

    /// Bytes of the table.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(links: &Links, list: &List) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = list.head();
        while let Some(s) = cur {
            out.push(s);
            cur = links.next(s);
        }
        out
    }

    #[test]
    fn push_unlink_move() {
        let mut links = Links::default();
        let mut l = List::default();
        for s in 0..4 {
            links.push_front(&mut l, s, 1);
        }
        assert_eq!(collect(&links, &l), [3, 2, 1, 0]);
        links.move_to_front(&mut l, 0);
        assert_eq!(collect(&links, &l), [0, 3, 2, 1]);
        links.unlink(&mut l, 2, 1);
        assert_eq!(collect(&links, &l), [0, 3, 1]);
        assert_eq!((l.len, l.weight, l.tail()), (3, 3, Some(1)));
        for s in [0, 3, 1] {
            links.unlink(&mut l, s, 1);
        }
        assert!(l.is_empty() && l.tail().is_none());
    }
}
