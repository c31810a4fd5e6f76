use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::proxy::FaultProxy;
use crate::server::RedisServer;

/// Number of hash slots in a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16_384;

const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of real `redis-server` masters (no replicas) on loopback,
/// with all 16384 slots assigned and `cluster_state:ok` on every node before
/// [`RedisCluster::start`] returns.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// The shared CA and certificate of a [`RedisCluster::start_tls`].
    certs: Option<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts `masters` nodes (at least 1; 3 is the usual), splits the slots
    /// evenly in ranges, joins them and waits until every node reports the
    /// cluster healthy.
    pub fn start(masters: usize) -> Result<Self> {
        Self::start_with(
            masters,
            RedisServer::builder().cluster_enabled(),
            |_| Ok(()),
        )
    }

    /// As [`RedisCluster::start`], each node also serving TLS on a second
    /// port ([`RedisServer::tls_url`]) with a certificate signed by one CA
    /// for the whole cluster ([`RedisCluster::ca_pem`]), and the cluster
    /// bus over TLS: a client that connects over TLS is shown the TLS ports
    /// in `CLUSTER SLOTS`.
    pub fn start_tls(masters: usize) -> Result<Self> {
        let certs = tempfile::Builder::new()
            .prefix("larder-cluster-tls-")
            .tempdir()?;
        let (cert, key, ca) = crate::server::write_certificates(certs.path())?;
        let builder = RedisServer::builder()
            .cluster_enabled()
            .tls_beside_plain(crate::server::TlsFiles { cert, key, ca });
        let mut cluster = Self::start_with(masters, builder, |_| Ok(()))?;
        cluster.certs = Some(certs);
        Ok(cluster)
    }

    /// The PEM of the CA of a [`RedisCluster::start_tls`] cluster.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        let dir = self.certs.as_ref()?;
        std::fs::read(dir.path().join("ca.pem")).ok()
    }

    /// `rediss://` URLs of every node of a [`RedisCluster::start_tls`] cluster.
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::tls_url).collect()
    }

    /// As [`RedisCluster::start`], with a [`FaultProxy`] in front of each
    /// master that the cluster announces as the master's address
    /// (`cluster-announce-port`): a cluster client that follows `CLUSTER
    /// SLOTS` talks to every master through its proxy, so faults can be
    /// injected between the client and the cluster. Proxy `i` fronts node `i`.
    pub fn start_proxied(masters: usize) -> Result<(Self, Vec<FaultProxy>)> {
        let mut proxies = Vec::with_capacity(masters);
        let cluster =
            Self::start_with(masters, RedisServer::builder().cluster_enabled(), |node| {
                let proxy = FaultProxy::start(node.addr())?;
                let mut con = node.client().get_connection()?;
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("cluster-announce-port")
                    .arg(proxy.addr().port())
                    .arg("cluster-announce-bus-port")
                    .arg(u32::from(node.port()) + 10_000)
                    .exec(&mut con)?;
                proxies.push(proxy);
                Ok(())
            })?;
        Ok((cluster, proxies))
    }

    fn start_with(
        masters: usize,
        builder: crate::ServerBuilder,
        mut prepare: impl FnMut(&RedisServer) -> Result<()>,
    ) -> Result<Self> {
        if masters == 0 {
            return Err(Error::new("a cluster needs at least one master"));
        }
        let nodes = (0..masters)
            .map(|_| builder.clone().start())
            .collect::<Result<Vec<_>>>()?;
        for node in &nodes {
            prepare(node)?;
        }
        let cluster = RedisCluster { nodes, certs: None };
        for (i, node) in cluster.nodes.iter().enumerate() {
            let (first, last) = slot_range(i, masters);
            let mut con = node.client().get_connection()?;
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .exec(&mut con)?;
        }
        // The bus listens beside the TLS port when the bus runs over TLS.
        let seed = cluster.nodes[0].bus_base_port();
        for node in &cluster.nodes[1..] {
            let mut con = node.client().get_connection()?;
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(seed)
                .exec(&mut con)?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    /// Polls every node until it reports `cluster_state:ok`, knows every other
    /// node and sees all slots assigned (bounded by a 30 s deadline).
    #[allow(clippy::disallowed_methods)] // a deadline for external processes, not cache time
    pub fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let want_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut healthy = true;
            let mut last_info = String::new();
            for node in &self.nodes {
                let info: String = node
                    .client()
                    .get_connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                let ok = info.contains("cluster_state:ok")
                    && info.contains(&want_nodes)
                    && info.contains("cluster_slots_assigned:16384");
                if !ok {
                    healthy = false;
                    last_info = info;
                    break;
                }
            }
            if healthy {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::with_log(
                    format!(
                        "cluster not healthy after {CLUSTER_READY_TIMEOUT:?}; last CLUSTER INFO:\n{last_info}"
                    ),
                    self.nodes[0].log(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The nodes, in start order; node `i` owns [`RedisCluster::slots_of`]`(i)`.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, mutably (to kill, pause or restart it).
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// `redis://127.0.0.1:port/` of every node, the seed list for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The inclusive slot range node `i` was given at start.
    pub fn slots_of(&self, i: usize) -> (u16, u16) {
        slot_range(i, self.nodes.len())
    }

    /// The index of the node that owns `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> usize {
        (0..self.nodes.len())
            .find(|&i| {
                let (a, b) = self.slots_of(i);
                (a..=b).contains(&slot)
            })
            .unwrap_or(self.nodes.len() - 1)
    }
}

fn slot_range(i: usize, n: usize) -> (u16, u16) {
    let slots = usize::from(CLUSTER_SLOTS);
    let first = i * slots / n;
    let last = (i + 1) * slots / n - 1;
    (first as u16, last as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_cover_everything_once() {
        for n in 1..=7 {
            let mut next = 0u32;
            for i in 0..n {
                let (a, b) = slot_range(i, n);
                assert_eq!(u32::from(a), next);
                next = u32::from(b) + 1;
            }
            assert_eq!(next, 16_384);
        }
    }
}
