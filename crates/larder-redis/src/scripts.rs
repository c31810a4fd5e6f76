//! The Lua scripts of the store, loaded once per process and run by
//! EVALSHA with a transparent NOSCRIPT fallback (`redis::Script`).
//!
//! Rule for every script of the crate (here and in `structures/`): never
//! order strings with `<`, `<=`, `>`, `>=`. Redis's Lua compares strings
//! with `strcoll`, so the answer depends on the server's locale. Compare
//! numbers (`tonumber`, `string.byte`) or test strings for equality only.

use std::sync::LazyLock;

use larder_core::envelope::{FORMAT_VERSION, MAGIC};
use redis::Script;

/// Lua helpers every script that reads envelopes starts with: `is_env(s)`
/// (a Larder envelope of this format: the magic and version bytes of
/// `larder_core::envelope`), `ver(s)` (its version as a Lua number: exact
/// below 2^53 only) and `newer(a, b)` (whether `a`'s version is above
/// `b`'s, byte by byte: exact for every u64). Never a locale-dependent
/// string compare.
pub(crate) static ENVELOPE_LUA: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"
local function is_env(s)
  return s and string.len(s) >= 40 and string.byte(s, 1) == {MAGIC} and string.byte(s, 2) == {FORMAT_VERSION}
end
local function ver(s)
  local v = 0
  for i = 33, 40 do v = v * 256 + string.byte(s, i) end
  return v
end
local function newer(a, b)
  for i = 33, 40 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return false
end
"
    )
});

/// `KEYS[1]` data key; `ARGV[1]` new envelope; `ARGV[2]` PX.
/// Writes unless the current value is an envelope with a version >= the new
/// one. Versions are big-endian u64s in bytes 33..40, compared byte by byte
/// as numbers (`string.byte`): never with Lua's `<`/`>=` on strings, which
/// Redis runs through `strcoll` under the server's `LC_COLLATE` (under
/// `en_US.UTF-8`, version 1 would count as newer than 128).
/// Foreign or short bytes are overwritten. Returns 1 if written, and 1 if
/// the key already holds exactly these bytes: a retry after a lost reply
/// finds its own write and reports it (identical bytes written by another
/// caller are the same value, so "written" is true either way).
pub(crate) static SET_IF_NEWER: LazyLock<Script> = LazyLock::new(|| {
    let envelope: &str = &ENVELOPE_LUA;
    Script::new(&format!(
        r"{envelope}
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  return 1
end
if is_env(cur) and not newer(ARGV[1], cur) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"
    ))
});

/// `KEYS[1]`; `ARGV[1]` value; `ARGV[2]` PX. Returns `{1, value}` if it set
/// the key, `{0, current}` if the key already held another value. A key
/// that already holds exactly `value` answers `{1, value}`: a retry after a
/// lost reply finds its own write (callers that need to tell racing writers
/// apart offer distinct values, e.g. a token).
pub(crate) static GET_OR_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  return {1, cur}
end
if cur then
  return {0, cur}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
",
    )
});

/// `KEYS[1]`; `ARGV[1]` increment; `ARGV[2]` PX. INCRBY, and set the expiry
/// when the key is new or has none, in one step (the tutorial's INCR then
/// EXPIRE left immortal counters when the client died between the two).
pub(crate) static INCR_WITH_EXPIRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
",
    )
});
