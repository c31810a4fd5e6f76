//! Everything a typical user of Larder names, in one import:
//! `use larder::prelude::*;`.

#[cfg(feature = "bincode")]
pub use larder_core::Bincode;
#[cfg(feature = "json")]
pub use larder_core::Json;
pub use larder_core::envelope::{Compression, EnvelopeMeta, Freshness};
pub use larder_core::{
    CacheStats, Clock, Codec, CodecId, Error, ErrorKind, FnLoader, KeySpace, Loader, MockClock,
    Result, RetryAdvice, SharedClock, Store, StoreEntry, StoreStats, SystemClock, Writer,
};
#[cfg(feature = "postcard")]
pub use larder_core::{DefaultCodec, Postcard};
