//! The lock's Lua scripts. Keys of one lock share a hash tag.

use std::sync::LazyLock;

use redis::Script;

/// KEYS lock, fence; ARGV token, ttl ms, use_fence (1/0).
/// Returns the new fence value (or 0 without a fence) if acquired, else -1.
///
/// The fence is `max(previous + 1, server TIME in microseconds)`: it grows
/// by one per grant, and never falls back below the server's clock, so a
/// fence key lost to a restart without persistence, a failover or an
/// eviction starts again above every token issued before (as long as the
/// server's wall clock does not step back).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] == '1' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local new = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now)
    redis.call('SET', KEYS[2], string.format('%.0f', new))
    return new
  end
  return 0
end
return -1
",
    )
});

/// KEYS lock; ARGV token, channel. Deletes only our own lock, then wakes waiters.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
",
    )
});

/// KEYS lock; ARGV token, ttl ms. Extends only our own lock.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS fence. The fence value and the server's TIME in microseconds.
pub(crate) static FENCE_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
return {tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(t[1]) * 1000000 + tonumber(t[2])}
",
    )
});

/// KEYS fence; ARGV value. A max-register write: raise, never lower.
pub(crate) static FENCE_MAX: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local new = tonumber(ARGV[1])
if new > cur then
  redis.call('SET', KEYS[1], ARGV[1])
  return new
end
return cur
",
    )
});
