//! Everything a typical user of Larder names, in one import:
//! `use larder::prelude::*;`.

pub use crate::{
    Cache, CacheBuilder, CacheKey, Overflow, Stats, Ttl, WarmReport, WriteBehind, WriteBehindStats,
};
#[cfg(feature = "redis")]
pub use crate::{CoherenceMode, CoherenceStats, DEFAULT_COHERENT_L1_CAP};
#[cfg(feature = "bincode")]
pub use larder_core::Bincode;
#[cfg(feature = "json")]
pub use larder_core::Json;
pub use larder_core::envelope::{Compression, EnvelopeMeta, Freshness};
pub use larder_core::{
    CacheStats, Clock, CoarseClock, Codec, CodecId, DefaultCodec, Error, ErrorKind, FnLoader,
    KeySpace, Loader, MockClock, Postcard, Result, RetryAdvice, SharedClock, Store, StoreEntry,
    StoreStats, SystemClock, Writer,
};
#[cfg(feature = "redis")]
pub use larder_redis::{RedisConfig, RedisStore, Topology};
