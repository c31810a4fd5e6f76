#![doc = include_str!("../README.md")]

mod cache;
mod flight;
mod list;
mod policy;
mod reads;
mod shard;
mod wheel;

pub use cache::{Builder, Expiry, MemoryCache, PolicyInfo, RemovalCause};
pub use flight::{Join, Leader, SingleFlight, Wait};
pub use policy::PolicyKind;
