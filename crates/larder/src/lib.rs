#![doc = include_str!("../README.md")]

pub mod prelude;

/// The contracts crate, for items the prelude does not list.
pub use larder_core as core;
/// The distributed-lock crate (`lock` feature).
#[cfg(feature = "lock")]
pub use larder_lock as lock;
/// The Redis L2 crate (`redis` feature).
#[cfg(feature = "redis")]
pub use larder_redis as redis;
/// The consistent-hashing crate (`ring` feature).
#[cfg(feature = "ring")]
pub use larder_ring as ring;
