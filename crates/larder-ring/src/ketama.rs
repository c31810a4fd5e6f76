//! Ketama: the consistent hashing of libketama, twemproxy, uhashring and
//! libmemcached, point for point, so a Rust client finds the same server as
//! a C, Python or proxy client sharing the same server list.

use md5::{Digest, Md5};

use crate::continuum::Continuum;
use crate::error::RingError;
use crate::node::{NodeSpec, check_nodes};

/// Digests per node share (each digest gives four points).
const DIGESTS_PER_SHARE: f64 = 40.0;

/// How point names are spelled, which is where ketama implementations differ.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// libketama, twemproxy, uhashring: points are named `"host:port-i"`.
    #[default]
    Libketama,
    /// libmemcached (`MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED`): the same, except
    /// that `:port` is dropped when the port is the memcached default 11211
    /// (`"host-i"`).
    Libmemcached,
}

/// A ketama ring (MD5, 40 digests per weight share, 4 points per digest).
///
/// ```
/// use larder_ring::{Dialect, KetamaRing};
///
/// let ring = KetamaRing::new(
///     [("10.0.0.1:11211", 1), ("10.0.0.2:11211", 1), ("10.0.0.3:11211", 1)],
///     Dialect::Libketama,
/// )?;
/// let node = ring.node_for(b"user:42").unwrap();
/// assert!(node.starts_with("10.0.0."));
/// # Ok::<(), larder_ring::RingError>(())
/// ```
#[derive(Debug)]
pub struct KetamaRing {
    nodes: Vec<NodeSpec>,
    dialect: Dialect,
    continuum: Continuum<u32>,
}

/// The four little-endian u32 points of one MD5 digest (libketama's
/// `ketama_hashi` with alignments 0..4).
fn digest_points(name: &[u8]) -> [u32; 4] {
    let d = Md5::digest(name);
    std::array::from_fn(|h| {
        u32::from_le_bytes([d[h * 4], d[h * 4 + 1], d[h * 4 + 2], d[h * 4 + 3]])
    })
}

/// The ketama hash of a key: the first four bytes of its MD5, little-endian.
pub fn ketama_hash(key: &[u8]) -> u32 {
    digest_points(key)[0]
}

/// Digests for a node: floor(w / W * 40 * N), with `w / W` computed in
/// single precision as the C implementations do (`float pct`).
fn digests_for(weight: u32, total: u64, nodes: usize) -> usize {
    let pct = weight as f32 / total as f32;
    (f64::from(pct) * DIGESTS_PER_SHARE * nodes as f64 + 1e-10).floor() as usize
}

impl KetamaRing {
    /// A ring over `(name, weight)` pairs in the given order. Names are
    /// `host:port`; weights are relative and at least 1.
    pub fn new<I, S>(nodes: I, dialect: Dialect) -> Result<Self, RingError>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let nodes = check_nodes(nodes)?;
        let total: u64 = nodes.iter().map(|n| u64::from(n.weight)).sum();
        let mut points = Vec::new();
        for (idx, node) in nodes.iter().enumerate() {
            let base = point_base(&node.name, dialect);
            for i in 0..digests_for(node.weight, total, nodes.len()) {
                let name = format!("{base}-{i}");
                for p in digest_points(name.as_bytes()) {
                    points.push((p, idx as u32));
                }
            }
        }
        let n = nodes.len();
        Ok(KetamaRing {
            nodes,
            dialect,
            continuum: Continuum::new(points, n),
        })
    }

    /// The dialect the ring was built with.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (&str, u32)> {
        self.nodes.iter().map(|n| (n.name.as_str(), n.weight))
    }

    /// Number of points on the circle.
    pub fn point_count(&self) -> usize {
        self.continuum.points().len()
    }

    /// The index of the live node owning `key`: the owner of the first point
    /// `>=` the key's hash (wrapping), walking past nodes marked down.
    pub fn index_for(&self, key: &[u8]) -> Option<usize> {
        let pos = self
            .continuum
            .position(ketama_hash(key), 0, self.continuum.points().len())?;
        self.continuum.live_owner_from(pos)
    }

    /// The name of the live node owning `key`.
    pub fn node_for(&self, key: &[u8]) -> Option<&str> {
        self.index_for(key).map(|i| self.nodes[i].name.as_str())
    }

    /// Up to `n` distinct live nodes for `key`, in ring order (replicas).
    pub fn indices_for(&self, key: &[u8], n: usize) -> Vec<usize> {
        match self
            .continuum
            .position(ketama_hash(key), 0, self.continuum.points().len())
        {
            Some(pos) => self.continuum.distinct_from(pos, n),
            None => Vec::new(),
        }
    }

    /// Marks node `index` down: its keys go to the next live node clockwise;
    /// no other key moves. Returns whether the state changed.
    pub fn mark_down(&self, index: usize) -> Result<bool, RingError> {
        self.continuum.set_up(index, false)
    }

    /// Marks node `index` up again. Returns whether the state changed.
    pub fn mark_up(&self, index: usize) -> Result<bool, RingError> {
        self.continuum.set_up(index, true)
    }

    /// Whether node `index` is up.
    pub fn is_up(&self, index: usize) -> bool {
        self.continuum.node_is_up(index)
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

fn point_base(name: &str, dialect: Dialect) -> &str {
    match dialect {
        Dialect::Libketama => name,
        Dialect::Libmemcached => name.strip_suffix(":11211").unwrap_or(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_counts_follow_the_c_rounding() {
        assert_eq!(digests_for(1, 10, 10), 40);
        assert_eq!(digests_for(1, 11, 10), 36);
        assert_eq!(digests_for(2, 11, 10), 72);
        assert_eq!(digests_for(1, 3, 3), 40);
    }

    #[test]
    fn libmemcached_drops_only_the_default_port() {
        assert_eq!(
            point_base("10.0.0.1:11211", Dialect::Libmemcached),
            "10.0.0.1"
        );
        assert_eq!(
            point_base("10.0.0.1:11212", Dialect::Libmemcached),
            "10.0.0.1:11212"
        );
        assert_eq!(
            point_base("10.0.0.1:11211", Dialect::Libketama),
            "10.0.0.1:11211"
        );
    }
}
