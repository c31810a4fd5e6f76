#![doc = include_str!("../README.md")]

mod builder;
mod cache;
#[cfg(feature = "redis")]
mod coherence;
mod entry;
mod hot;
mod key;
mod load;
#[cfg(feature = "metrics")]
mod metrics;
pub mod prelude;
mod read;
mod source;
mod stats;
mod ttl;
mod writer;

pub use builder::{
    CacheBuilder, DEFAULT_LEASE_POLL, DEFAULT_LOAD_TIMEOUT, DEFAULT_MEMORY_CAPACITY,
    DEFAULT_UNCONFIRMED_TTL,
};
pub use cache::{Cache, WarmReport};
#[cfg(feature = "redis")]
pub use coherence::{CoherenceStats, DEFAULT_COHERENT_L1_CAP};
pub use key::CacheKey;
/// How instances learn of each other's writes (`redis` feature).
#[cfg(feature = "redis")]
pub use larder_redis::CoherenceMode;
pub use stats::Stats;
pub use ttl::{Ttl, TtlPolicy};
pub use writer::{Overflow, WriteBehind, WriteBehindStats};

/// The contracts crate, for items the prelude does not list.
pub use larder_core as core;
/// The distributed-lock crate (`lock` feature).
#[cfg(feature = "lock")]
pub use larder_lock as lock;
/// The in-process L1 crate.
pub use larder_memory as memory;
/// The Redis L2 crate (`redis` feature).
#[cfg(feature = "redis")]
pub use larder_redis as redis;
/// The consistent-hashing crate (`ring` feature).
#[cfg(feature = "ring")]
pub use larder_ring as ring;
