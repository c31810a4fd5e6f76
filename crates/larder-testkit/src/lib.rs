#![doc = include_str!("../README.md")]

mod cluster;
mod error;
mod proxy;
mod server;

pub use cluster::{CLUSTER_SLOTS, RedisCluster};
pub use error::{Error, Result};
pub use proxy::FaultProxy;
pub use server::{
    REDIS_SERVER_ENV, RedisServer, ServerBuilder, find_redis_server, locale_available,
    start_masters,
};
