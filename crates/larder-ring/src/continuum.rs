//! The sorted circle of points shared by every ring: lookup, walking past
//! nodes that are down, distinct replicas, and bounded loads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::RingError;

/// Points sorted ascending, each owned by a node index. Health flags live
/// beside them so marking a node down or up never rebuilds the circle: a
/// down node's points are skipped, every other key keeps its owner.
#[derive(Debug)]
pub(crate) struct Continuum<P> {
    points: Vec<P>,
    owners: Vec<u32>,
    up: Vec<AtomicBool>,
    live: AtomicU64,
}

impl<P: Copy + Ord> Continuum<P> {
    /// `points` is (point, owner) in any order; `nodes` is the node count.
    /// Equal points keep their input order (a stable sort), so ties resolve
    /// to the node listed first, deterministically.
    pub(crate) fn new(mut points: Vec<(P, u32)>, nodes: usize) -> Self {
        points.sort_by_key(|&(p, _)| p);
        let (points, owners) = points.into_iter().unzip();
        Continuum {
            points,
            owners,
            up: (0..nodes).map(|_| AtomicBool::new(true)).collect(),
            live: AtomicU64::new(nodes as u64),
        }
    }

    pub(crate) fn points(&self) -> &[P] {
        &self.points
    }

    pub(crate) fn nodes(&self) -> usize {
        self.up.len()
    }

    /// Index of the first point `>= h`, wrapping to 0; `None` when empty.
    #[inline]
    pub(crate) fn position(&self, h: P, from: usize, to: usize) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let pos = from + self.points[from..to].partition_point(|&p| p < h);
        Some(if pos == self.points.len() { 0 } else { pos })
    }

    #[inline]
    pub(crate) fn owner_at(&self, pos: usize) -> usize {
        self.owners[pos] as usize
    }

    /// The first live owner at or after `pos`, walking clockwise.
    #[inline]
    pub(crate) fn live_owner_from(&self, pos: usize) -> Option<usize> {
        let n = self.points.len();
        let first = self.owner_at(pos);
        if self.is_up(first) {
            return Some(first);
        }
        if self.live.load(Ordering::Acquire) == 0 {
            return None;
        }
        (1..n)
            .map(|step| self.owner_at((pos + step) % n))
            .find(|&o| self.is_up(o))
    }

    /// Up to `n` distinct live owners clockwise from `pos`.
    pub(crate) fn distinct_from(&self, pos: usize, n: usize) -> Vec<usize> {
        let want = n.min(self.live.load(Ordering::Acquire) as usize);
        let mut out = Vec::with_capacity(want);
        let len = self.points.len();
        for step in 0..len {
            if out.len() == want {
                break;
            }
            let o = self.owner_at((pos + step) % len);
            if self.is_up(o) && !out.contains(&o) {
                out.push(o);
            }
        }
        out
    }

    /// The first owner clockwise from `pos` that is live and accepts
    /// `accept(owner)` (bounded loads); falls back to the plain live owner.
    pub(crate) fn first_accepting(
        &self,
        pos: usize,
        accept: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = self.points.len();
        let mut tried = 0usize;
        let mut seen = vec![false; self.nodes()];
        for step in 0..len {
            let o = self.owner_at((pos + step) % len);
            if seen[o] || !self.is_up(o) {
                continue;
            }
            if accept(o) {
                return Some(o);
            }
            seen[o] = true;
            tried += 1;
            if tried == self.nodes() {
                break;
            }
        }
        self.live_owner_from(pos)
    }

    pub(crate) fn is_up(&self, node: usize) -> bool {
        self.up[node].load(Ordering::Acquire)
    }

    /// Whether `node` is up; `false` for an index outside the ring.
    pub(crate) fn node_is_up(&self, node: usize) -> bool {
        node < self.up.len() && self.is_up(node)
    }

    /// Marks `node` up or down; whether it changed. An index outside the
    /// ring is [`RingError::UnknownNode`].
    pub(crate) fn set_up(&self, node: usize, up: bool) -> Result<bool, RingError> {
        let Some(flag) = self.up.get(node) else {
            return Err(RingError::UnknownNode(node.to_string()));
        };
        let was = flag.swap(up, Ordering::AcqRel);
        if was != up {
            if up {
                self.live.fetch_add(1, Ordering::AcqRel);
            } else {
                self.live.fetch_sub(1, Ordering::AcqRel);
            }
        }
        Ok(was != up)
    }

    pub(crate) fn live_nodes(&self) -> usize {
        self.live.load(Ordering::Acquire) as usize
    }
}
