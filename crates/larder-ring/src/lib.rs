#![doc = include_str!("../README.md")]

mod continuum;
mod error;
mod jump;
mod ketama;
mod keyslot;
mod node;
mod ring;

pub use error::RingError;
pub use jump::{jump_hash, jump_hash_key};
pub use ketama::{Dialect, KetamaRing, ketama_hash};
pub use keyslot::{SLOTS, crc16, hash_tag, keyslot};
pub use ring::{
    DEFAULT_POINTS_PER_WEIGHT, HashRing, HashRingBuilder, LoadGuard, LoadTracker, key_hash,
};
