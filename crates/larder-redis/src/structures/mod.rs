//! Typed helpers over Redis data structures, each operation atomic (one
//! command, a `MULTI` pipeline, or a Lua script) where the classic tutorial
//! versions took several round trips and could leave half-done state.
//!
//! All keys live in the store's namespace and share a hash tag per object,
//! so every helper works on Redis Cluster and on a sharded store.

mod feed;
mod hash;
mod leaderboard;
mod queue;
mod ratelimit;

pub use feed::Feed;
pub use hash::HashObject;
pub use leaderboard::{Leaderboard, Ranked};
pub use queue::{Delivery, WorkQueue};
pub use ratelimit::{RateDecision, RateLimit, RateLimiter};

use larder_core::{Error, ErrorKind, Result};

/// Checks a helper's name or id: a valid key, no `{` or `}` (they would
/// change the hash tag).
pub(crate) fn check_part(what: &str, s: &str) -> Result<()> {
    larder_core::validate_key(s)?;
    if s.contains(['{', '}']) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} {s:?} must not contain braces"),
        ));
    }
    Ok(())
}
