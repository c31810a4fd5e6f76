//! One Redis endpoint (a standalone server, or a whole Cluster behind its
//! client): a connection, a breaker, and the rules every command follows.

use std::future::Future;
use std::sync::Arc;

use larder_core::{Error, ErrorKind, Result, SharedClock};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use crate::breaker::{Breaker, BreakerState};
use crate::config::{RedisConfig, redact};
use crate::error::{from_redis, is_node_failure};
use crate::stats::{Cmd, Stats};

/// A connection to either kind of endpoint; cheap to clone (multiplexed).
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum Source {
    Standalone(ConnectionManager),
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// An endpoint with its breaker. Every command goes through [`Node::run`].
pub(crate) struct Node {
    pub(crate) name: String,
    /// The URL(s) as given (with credentials): for dedicated connections.
    pub(crate) urls: Vec<String>,
    source: Source,
    pub(crate) breaker: Breaker,
    config: Arc<RedisConfig>,
    clock: SharedClock,
    pub(crate) stats: Arc<Stats>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl Node {
    /// A standalone node; connects lazily (a server that is down at start
    /// is a failed call, not a failed start).
    pub(crate) fn standalone(
        url: &str,
        config: Arc<RedisConfig>,
        clock: SharedClock,
    ) -> Result<Node> {
        let client = redis::Client::open(url).map_err(|e| from_redis(e, "invalid Redis URL"))?;
        let cm = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(std::time::Duration::from_millis(5))
            .set_max_delay(std::time::Duration::from_millis(50));
        let manager = ConnectionManager::new_lazy_with_config(client, cm)
            .map_err(|e| from_redis(e, "could not create a connection manager"))?;
        Ok(Node {
            name: redact(url),
            urls: vec![url.to_owned()],
            source: Source::Standalone(manager),
            breaker: Breaker::new(config.breaker, Arc::clone(&clock)),
            config,
            clock,
            stats: Arc::new(Stats::default()),
        })
    }

    /// A Redis Cluster behind one node; connects lazily.
    pub(crate) fn cluster(
        urls: &[String],
        config: Arc<RedisConfig>,
        clock: SharedClock,
    ) -> Result<Node> {
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(2)
            .build()
            .map_err(|e| from_redis(e, "invalid Redis Cluster configuration"))?;
        Ok(Node {
            urls: urls.to_vec(),
            name: format!(
                "cluster[{}]",
                urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
            ),
            source: Source::Cluster(Box::new(LazyCluster {
                client,
                conn: OnceCell::new(),
            })),
            breaker: Breaker::new(config.breaker, Arc::clone(&clock)),
            config,
            clock,
            stats: Arc::new(Stats::default()),
        })
    }

    async fn conn(&self) -> redis::RedisResult<Conn> {
        match &self.source {
            Source::Standalone(m) => Ok(Conn::Standalone(m.clone())),
            Source::Cluster(lazy) => lazy
                .conn
                .get_or_try_init(|| lazy.client.get_async_connection())
                .await
                .map(|c| Conn::Cluster(c.clone())),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.source, Source::Cluster(_))
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs one command: breaker check, a per-attempt deadline, stats, and
    /// retries with backoff for idempotent commands after node failures.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        cmd: Cmd,
        idempotent: bool,
        what: &'static str,
        f: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempts = if idempotent {
            self.config.retry.max_retries + 1
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            let permit = match self.breaker.allow(&self.name) {
                Ok(p) => p,
                Err(e) => {
                    self.stats.breaker_rejections.incr();
                    return Err(e);
                }
            };
            let start = self.clock.now();
            let deadline = self.config.response_timeout + self.config.connect_timeout;
            let outcome = tokio::time::timeout(deadline, async {
                let conn = self.conn().await?;
                f(conn).await
            })
            .await;
            let result = match outcome {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(from_redis(e, what)),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{}: {what}: no answer within {deadline:?}", self.name),
                )),
            };
            let took = self.clock.now().saturating_duration_since(start);
            let failed = result.as_ref().err().is_some_and(is_node_failure);
            self.stats.record(
                cmd,
                took,
                result.is_err(),
                result.as_ref().err().is_some_and(Error::is_timeout),
            );
            self.breaker.record(permit, failed);
            match result {
                Err(e) if failed && attempt + 1 < attempts => {
                    tokio::time::sleep(self.config.retry.backoff(attempt)).await;
                    attempt += 1;
                    drop(e);
                }
                other => return other,
            }
        }
    }
}
