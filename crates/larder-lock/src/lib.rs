#![doc = include_str!("../README.md")]

/// The `redis` client this crate is built against.
pub use redis;
