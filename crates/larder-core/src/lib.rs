#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod clock;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod key;
pub mod stats;
pub mod store;

pub use clock::{Clock, CoarseClock, MockClock, SharedClock, SystemClock};
#[cfg(feature = "bincode")]
pub use codec::Bincode;
#[cfg(feature = "json")]
pub use codec::Json;
pub use codec::{Codec, CodecId};
#[cfg(feature = "postcard")]
pub use codec::{DefaultCodec, Postcard};
pub use envelope::{Compression, Envelope, EnvelopeMeta, Freshness};
pub use error::{BoxError, Error, ErrorKind, Result, RetryAdvice};
pub use key::{DEFAULT_NAMESPACE, KeySpace, MAX_KEY_LEN, validate_key};
pub use stats::{
    CacheStats, CommandStats, Counter, LatencyHistogram, LatencySnapshot, StoreStats, Stripe,
};
pub use store::{FnLoader, Loader, Store, StoreEntry, Writer};
