//! The fast default ring: a 64-bit hash (xxh3), a fixed number of points per
//! unit of weight, and a bucket index in front of the binary search.

use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use crate::continuum::Continuum;
use crate::error::RingError;
use crate::node::{NodeSpec, check_nodes};

/// Points per unit of weight by default.
///
/// A node's share of the circle is the sum of the arcs before its points;
/// with `V` random points its relative standard deviation is about
/// `1/sqrt(V)`. 2048 points keep it near 2%, inside the 3% this crate
/// promises, for 12 bytes of memory per point (24 KiB per node).
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 2048;

/// The hash of a key on the fast ring (xxh3-64, seed 0): stable across
/// processes, platforms and releases of this crate.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// SplitMix64's finaliser: spreads `name hash + i` into independent points.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Settings of a [`HashRing`].
#[must_use]
#[derive(Debug, Clone)]
pub struct HashRingBuilder {
    points_per_weight: u32,
    nodes: Vec<(String, u32)>,
}

impl HashRingBuilder {
    /// Points per unit of weight (default [`DEFAULT_POINTS_PER_WEIGHT`]).
    pub fn points_per_weight(mut self, points: u32) -> Self {
        self.points_per_weight = points;
        self
    }

    /// Adds a node.
    pub fn node(mut self, name: impl Into<String>, weight: u32) -> Self {
        self.nodes.push((name.into(), weight));
        self
    }

    /// Builds the ring.
    pub fn build(self) -> Result<HashRing, RingError> {
        HashRing::with_points(self.nodes, self.points_per_weight)
    }
}

/// The fast consistent-hash ring.
///
/// - Each node gets `weight * points_per_weight` points whose positions
///   depend only on its own name, so adding or removing a node never moves
///   another node's points: only keys of the node that changed move.
/// - [`HashRing::mark_down`] sends a node's keys to the next live node
///   clockwise without a rebuild and without moving any other key.
/// - [`HashRing::indices_for`] gives distinct nodes for replicas.
/// - [`HashRing::index_for_bounded`] caps each node's load (consistent
///   hashing with bounded loads).
///
/// ```
/// use larder_ring::HashRing;
///
/// let ring = HashRing::new([("redis-a:6379", 1), ("redis-b:6379", 1), ("redis-c:6379", 2)])?;
/// let owner = ring.index_for(b"order:42").unwrap();
/// ring.mark_down(owner)?;
/// let failover = ring.index_for(b"order:42").unwrap();
/// assert_ne!(owner, failover);
/// ring.mark_up(owner)?;
/// assert_eq!(ring.index_for(b"order:42"), Some(owner));
/// # Ok::<(), larder_ring::RingError>(())
/// ```
#[derive(Debug)]
pub struct HashRing {
    nodes: Vec<NodeSpec>,
    points_per_weight: u32,
    continuum: Continuum<u64>,
    /// `index[b]` = first point whose top `bits` bits are `>= b`.
    index: Vec<u32>,
    bits: u32,
}

impl HashRing {
    /// Settings for a ring.
    pub fn builder() -> HashRingBuilder {
        HashRingBuilder {
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            nodes: Vec::new(),
        }
    }

    /// A ring over `(name, weight)` pairs with the default points.
    pub fn new<I, S>(nodes: I) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        Self::with_points(nodes, DEFAULT_POINTS_PER_WEIGHT)
    }

    fn with_points<I, S>(nodes: I, points_per_weight: u32) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        if points_per_weight == 0 {
            return Err(RingError::InvalidArgument(
                "points_per_weight must be at least 1",
            ));
        }
        let nodes = check_nodes(nodes)?;
        let total: u64 = nodes
            .iter()
            .map(|n| u64::from(n.weight) * u64::from(points_per_weight))
            .sum();
        if total > u64::from(u32::MAX) {
            return Err(RingError::InvalidArgument(
                "too many points (weight x points_per_weight)",
            ));
        }
        let mut points = Vec::with_capacity(total as usize);
        for (idx, node) in nodes.iter().enumerate() {
            let base = key_hash(node.name.as_bytes());
            let count = u64::from(node.weight) * u64::from(points_per_weight);
            for i in 0..count {
                points.push((
                    mix(base.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))),
                    idx as u32,
                ));
            }
        }
        let n = nodes.len();
        let continuum = Continuum::new(points, n);
        let (index, bits) = build_index(continuum.points());
        Ok(HashRing {
            nodes,
            points_per_weight,
            continuum,
            index,
            bits,
        })
    }

    /// Points per unit of weight.
    pub fn points_per_weight(&self) -> u32 {
        self.points_per_weight
    }

    /// Number of points on the circle.
    pub fn point_count(&self) -> usize {
        self.continuum.points().len()
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (&str, u32)> {
        self.nodes.iter().map(|n| (n.name.as_str(), n.weight))
    }

    /// The name of node `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.nodes.get(index).map(|n| n.name.as_str())
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    #[inline]
    fn position(&self, h: u64) -> Option<usize> {
        let b = (h >> (64 - self.bits)) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        self.continuum.position(h, lo, hi)
    }

    /// The index of the live node owning `key`, or `None` if every node is down.
    #[inline]
    pub fn index_for(&self, key: &[u8]) -> Option<usize> {
        self.index_for_hash(key_hash(key))
    }

    /// As [`HashRing::index_for`], for a key already hashed with [`key_hash`].
    #[inline]
    pub fn index_for_hash(&self, h: u64) -> Option<usize> {
        let pos = self.position(h)?;
        self.continuum.live_owner_from(pos)
    }

    /// The name of the live node owning `key`.
    pub fn node_for(&self, key: &[u8]) -> Option<&str> {
        self.index_for(key).map(|i| self.nodes[i].name.as_str())
    }

    /// Up to `n` distinct live nodes for `key`, in ring order: the first is
    /// [`HashRing::index_for`]'s answer, the others are where replicas go.
    pub fn indices_for(&self, key: &[u8], n: usize) -> Vec<usize> {
        match self.position(key_hash(key)) {
            Some(pos) => self.continuum.distinct_from(pos, n),
            None => Vec::new(),
        }
    }

    /// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
    /// 2018; HAProxy's `hash-balance-factor`): the first live node clockwise
    /// whose load, counting this request, stays within
    /// `ceil(balance_factor * (total load + 1) / live nodes)`. `balance_factor`
    /// is at least 1.0 (HAProxy's 125 is 1.25).
    pub fn index_for_bounded(
        &self,
        key: &[u8],
        loads: &LoadTracker,
        balance_factor: f64,
    ) -> Option<usize> {
        let pos = self.position(key_hash(key))?;
        let live = self.continuum.live_nodes().max(1) as f64;
        let factor = if balance_factor.is_finite() {
            balance_factor.max(1.0)
        } else {
            1.0
        };
        let cap = (factor * (loads.total() + 1) as f64 / live).ceil() as u64;
        self.continuum.first_accepting(pos, |o| loads.get(o) < cap)
    }

    /// Marks node `index` down: its keys go to the next live node clockwise;
    /// no other key moves and nothing is rebuilt. Returns whether it changed.
    pub fn mark_down(&self, index: usize) -> Result<bool, RingError> {
        self.continuum.set_up(index, false)
    }

    /// Marks node `index` up again. Returns whether it changed.
    pub fn mark_up(&self, index: usize) -> Result<bool, RingError> {
        self.continuum.set_up(index, true)
    }

    /// Whether node `index` is up.
    pub fn is_up(&self, index: usize) -> bool {
        self.continuum.node_is_up(index)
    }

    /// Live nodes.
    pub fn live_nodes(&self) -> usize {
        self.continuum.live_nodes()
    }

    /// A new ring with one more node (health flags start up). Keys move only
    /// to the new node.
    pub fn with_node(&self, name: impl Into<String>, weight: u32) -> Result<HashRing, RingError> {
        let mut nodes: Vec<(String, u32)> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.weight))
            .collect();
        nodes.push((name.into(), weight));
        Self::with_points(nodes, self.points_per_weight)
    }

    /// A new ring without the node called `name`. Only that node's keys move.
    pub fn without_node(&self, name: &str) -> Result<HashRing, RingError> {
        if self.index_of(name).is_none() {
            return Err(RingError::UnknownNode(name.to_owned()));
        }
        let nodes = self
            .nodes
            .iter()
            .filter(|n| n.name != name)
            .map(|n| (n.name.clone(), n.weight));
        Self::with_points(nodes, self.points_per_weight)
    }
}

/// A bucket index over sorted points: about 8 points per bucket.
fn build_index(points: &[u64]) -> (Vec<u32>, u32) {
    let target = (points.len() / 8).max(1);
    let bits = (usize::BITS - target.leading_zeros()).clamp(1, 24);
    let buckets = 1usize << bits;
    let mut index = Vec::with_capacity(buckets + 1);
    let mut pos = 0usize;
    for b in 0..buckets {
        while pos < points.len() && ((points[pos] >> (64 - bits)) as usize) < b {
            pos += 1;
        }
        index.push(pos as u32);
    }
    index.push(points.len() as u32);
    (index, bits)
}

/// Per-node in-flight counts for bounded-load lookups: `acquire` when a
/// request is sent to a node, and drop the guard when it finishes.
#[derive(Debug)]
pub struct LoadTracker {
    loads: Vec<AtomicU64>,
    total: AtomicU64,
}

impl LoadTracker {
    /// Zero load on `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        LoadTracker {
            loads: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
        }
    }

    /// The load of node `i` (0 for an unknown node).
    pub fn get(&self, i: usize) -> u64 {
        self.loads.get(i).map_or(0, |l| l.load(Ordering::Acquire))
    }

    /// The load of all nodes.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Counts one request on node `i` until the guard is dropped.
    pub fn acquire(&self, i: usize) -> LoadGuard<'_> {
        if let Some(l) = self.loads.get(i) {
            l.fetch_add(1, Ordering::AcqRel);
            self.total.fetch_add(1, Ordering::AcqRel);
        }
        LoadGuard {
            tracker: self,
            node: i,
        }
    }
}

/// One request counted on a node; dropping it ends the request.
#[derive(Debug)]
pub struct LoadGuard<'a> {
    tracker: &'a LoadTracker,
    node: usize,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.tracker.loads.get(self.node) {
            l.fetch_sub(1, Ordering::AcqRel);
            self.tracker.total.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_plain_binary_search() {
        let ring = HashRing::builder()
            .points_per_weight(37)
            .node("a", 1)
            .node("b", 3)
            .node("c", 2)
            .build()
            .unwrap();
        let pts = ring.continuum.points();
        for k in 0..20_000u64 {
            let h = mix(k);
            let plain = pts.partition_point(|&p| p < h);
            let plain = if plain == pts.len() { 0 } else { plain };
            assert_eq!(ring.position(h), Some(plain));
        }
        // The extremes wrap correctly.
        assert_eq!(
            ring.position(u64::MAX),
            Some(if pts[pts.len() - 1] == u64::MAX {
                pts.len() - 1
            } else {
                0
            })
        );
        assert_eq!(ring.position(0), Some(0));
    }

    #[test]
    fn all_down_is_none_and_errors_are_typed() {
        let ring = HashRing::new([("a", 1), ("b", 1)]).unwrap();
        ring.mark_down(0).unwrap();
        ring.mark_down(1).unwrap();
        assert_eq!(ring.index_for(b"k"), None);
        assert!(ring.indices_for(b"k", 2).is_empty());
        assert_eq!(ring.mark_down(2), Err(RingError::UnknownNode("2".into())));
        assert_eq!(
            HashRing::new(Vec::<(String, u32)>::new()).unwrap_err(),
            RingError::NoNodes
        );
        assert_eq!(
            HashRing::new([("a", 1), ("a", 1)]).unwrap_err(),
            RingError::DuplicateNode("a".into())
        );
        assert_eq!(
            HashRing::new([("a", 0)]).unwrap_err(),
            RingError::ZeroWeight("a".into())
        );
        assert!(
            HashRing::builder()
                .points_per_weight(0)
                .node("a", 1)
                .build()
                .is_err()
        );
    }

    #[test]
    fn bounded_loads_respect_the_cap() {
        let ring = HashRing::new([("a", 1), ("b", 1), ("c", 1), ("d", 1)]).unwrap();
        let loads = LoadTracker::new(4);
        let mut guards = Vec::new();
        // Every request for the same hot key: plain hashing would send all 400 to one node.
        for _ in 0..400 {
            let i = ring.index_for_bounded(b"hot", &loads, 1.25).unwrap();
            guards.push(loads.acquire(i));
        }
        let max = (0..4).map(|i| loads.get(i)).max().unwrap();
        assert!(max <= 125, "max load {max} over ceil(1.25 * 400 / 4)");
        assert_eq!(loads.total(), 400);
        drop(guards);
        assert_eq!(loads.total(), 0);
    }
}
