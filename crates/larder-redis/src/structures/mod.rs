//! Typed helpers over Redis data structures, each operation atomic (one
//! command, a `MULTI` pipeline, or a Lua script) where the classic tutorial
//! versions took several round trips and could leave half-done state.
//!
//! All keys are helper keys ([`larder_core::KeySpace::helper_key`]):
//! `{namespace}:{{kind:name[:id]}}:#role`, one hash tag per object (so an
//! object's keys share a Cluster slot and a shard), where no user key of
//! the cache and no other helper's key can land. Names hold no `:`, so
//! `kind:name:id` splits one way only.

/// Lua: `clock_ms(arg)` and `clock_us(arg)`, the time of a helper's
/// script: the server's `TIME` when `arg` (the script's `now` argument) is
/// empty, else `arg`, the store clock's Unix milliseconds.
macro_rules! clock_lua {
    () => {
        r"
local function clock_ms(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function clock_us(arg)
  if arg ~= '' then return tonumber(arg) * 1000 end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"
    };
}

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

/// Checks a helper's id (the last part of its tag): a valid key, no `{` or
/// `}` (they would change the hash tag).
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

/// Checks a helper's name: as [`check_part`], and no `:`, so that
/// `kind:name:id` splits one way only (limiter `a` with id `b:c` and
/// limiter `a:b` with id `c` would otherwise share a key).
pub(crate) fn check_name(what: &str, s: &str) -> Result<()> {
    check_part(what, s)?;
    if s.contains(':') {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} {s:?} must not contain ':'"),
        ));
    }
    Ok(())
}
