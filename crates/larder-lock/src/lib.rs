#![doc = include_str!("../README.md")]

mod fenced;
mod guard;
mod manager;
mod scripts;
mod wakeup;

/// The `redis` client this crate is built against.
pub use redis;

pub use fenced::{Fence, FencedResource, StaleToken};
pub use guard::LockGuard;
pub use manager::{LockConfig, LockManager, NodeWarning};
