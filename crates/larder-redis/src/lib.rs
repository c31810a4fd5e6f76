#![doc = include_str!("../README.md")]

mod batch;
mod breaker;
mod config;
mod error;
mod journal;
mod node;
mod scripts;
mod stats;
mod store;
pub mod structures;
mod tracking;
mod versioned;

/// The `redis` client this crate is built against.
pub use redis;

pub use batch::BatchStats;
pub use breaker::{BreakerConfig, BreakerState};
pub use config::{HelperClock, RedisConfig, RedisConfigBuilder, RetryPolicy, Topology, redact};
pub use journal::{Journal, JournalEntry, entry_order};
pub use store::{KeyTtl, MAX_TTL, RedisStore};
pub use structures::{
    Delivery, Feed, HashObject, Leaderboard, Ranked, RateDecision, RateLimit, RateLimiter,
    WorkQueue,
};
pub use tracking::{
    CoherenceMode, FlushReason, INVALIDATION_BUFFER, Invalidation, InvalidationStats, Invalidations,
};
