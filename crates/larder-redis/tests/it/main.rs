//! larder-redis against real redis-server processes from larder-testkit.

mod batching;
mod board;
mod clear;
mod cluster;
mod deadline;
mod escape;
mod faults;
mod hostile;
mod journal;
mod keys;
mod limits;
mod locale;
mod lost_reply;
mod queue;
mod sharded;
mod standalone;
mod structures;
mod topologies;
mod tracking;
mod versioned;

use std::time::Duration;

use larder_core::envelope::{self, Compression, EnvelopeMeta};
use larder_redis::{RedisConfig, RedisStore, RetryPolicy, Topology};

/// A store on `url` with short timeouts, no retries and a low breaker threshold.
pub(crate) fn quick_config(topology: Topology) -> larder_redis::RedisConfigBuilder {
    RedisConfig::builder(topology)
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .retry(RetryPolicy::none())
}

pub(crate) fn store(url: &str) -> RedisStore {
    RedisStore::new(
        quick_config(Topology::Standalone(url.to_owned()))
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// [`store`] with auto-batching: up to 16 keys per `MGET`.
pub(crate) fn batched_store(url: &str) -> RedisStore {
    RedisStore::new(
        quick_config(Topology::Standalone(url.to_owned()))
            .auto_batch(16)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// An envelope with a version, for the conditional-set tests.
pub(crate) fn env(version: u64, payload: &[u8]) -> Vec<u8> {
    let meta = EnvelopeMeta::starting_at(
        1_700_000_000_000,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .with_version(version);
    envelope::encode(&meta, payload, Compression::None).unwrap()
}

pub(crate) fn raw_get(url: &str, key: &str) -> Option<Vec<u8>> {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("GET").arg(key).query(&mut c).unwrap()
}
