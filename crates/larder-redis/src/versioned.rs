//! Versioned operations (`Store::version`, `fill`, `invalidate`,
//! `set_versioned`): what keeps a slow loader from putting an old value back
//! after an invalidation or a write.
//!
//! Each data key `{ns}:{key}` has a version record `{ns}:{key}:v` in the same
//! Cluster slot (same hash tag). Versions are integers below 2^53 (Lua's
//! numbers are doubles); an allocated version is the largest of the record
//! plus one, the stored value's version plus one, and the server's `TIME` in
//! microseconds, so versions never go back, even after the record expired.
//! Every comparison is numeric: the 8 big-endian version bytes of an
//! envelope are read with `string.byte`, never compared as strings (Lua's
//! string order follows the server's locale).

use std::sync::LazyLock;
use std::time::Duration;

use larder_core::envelope::{HEADER_LEN, MAGIC};
use larder_core::{Error, ErrorKind, Result};
use redis::Script;

use crate::stats::Cmd;
use crate::store::{RedisStore, ttl_ms};

/// Lua helpers shared by the scripts below.
pub(crate) static PRELUDE: LazyLock<String> =
    LazyLock::new(|| format!("{}{VERSION_LUA}", *crate::scripts::ENVELOPE_LUA));

/// What only the versioned scripts need: `be8` and `allocate`.
const VERSION_LUA: &str = r"
local function be8(v)
  local b = {}
  for i = 8, 1, -1 do
    b[i] = v % 256
    v = math.floor(v / 256)
  end
  return string.char(b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8])
end
local function allocate(data_key, ver_key)
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local rec = tonumber(redis.call('GET', ver_key) or '')
  if rec and rec + 1 > v and rec + 1 < 9007199254740992 then v = rec + 1 end
  local cur = redis.call('GET', data_key)
  -- A version at or above 2^53 was never allocated here (foreign bytes):
  -- following it would make a version no script or client can hold.
  if is_env(cur) and ver(cur) + 1 > v and ver(cur) + 1 < 9007199254740992 then v = ver(cur) + 1 end
  return v
end
";

/// `KEYS[1]` data, `KEYS[2]` version record; `ARGV[1]` envelope whose
/// version is the ticket; `ARGV[2]` PX. 1 if written (or already there).
static FILL: LazyLock<Script> = LazyLock::new(|| fill_script(""));

/// [`FILL`] on a standalone server, where a durable write-behind journal
/// may live: `KEYS[3]` the journal's latest-entry hash, `KEYS[4]` the
/// journal stream, `ARGV[3]` the key. Refused (0) while a journalled write
/// of the key has not reached the source: the loader's value is older than
/// that write, and would outlive it in the L2 once the write lands. A
/// latest-entry field whose entry is no longer in the journal (the stream
/// was trimmed or lost) is removed, so it blocks nothing.
static FILL_UNLESS_JOURNALLED: LazyLock<Script> = LazyLock::new(|| {
    fill_script(
        "local id = redis.call('HGET', KEYS[3], ARGV[3])
if id then
  if #redis.call('XRANGE', KEYS[4], id, id) > 0 then return 0 end
  redis.call('HDEL', KEYS[3], ARGV[3])
end
",
    )
});

fn fill_script(guard: &str) -> Script {
    let prelude: &str = &PRELUDE;
    Script::new(&format!(
        r"{prelude}
{guard}local t = ver(ARGV[1])
local rec = tonumber(redis.call('GET', KEYS[2]) or '')
if rec and rec > t then return 0 end
local cur = redis.call('GET', KEYS[1])
if is_env(cur) then
  if cur == ARGV[1] then return 1 end
  if ver(cur) > t then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"
    ))
}

/// `KEYS[1]` data, `KEYS[2]` version record; `ARGV[1]` PX of the record.
/// Returns the new version.
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    let prelude: &str = &PRELUDE;
    Script::new(&format!(
        r"{prelude}
local v = allocate(KEYS[1], KEYS[2])
redis.call('SET', KEYS[2], string.format('%.0f', v), 'PX', ARGV[1])
redis.call('DEL', KEYS[1])
return v
"
    ))
});

/// `KEYS[1]` data, `KEYS[2]` version record; `ARGV[1]` envelope (its version
/// bytes are replaced), `ARGV[2]` PX of the data, `ARGV[3]` PX of the record.
/// Returns the version written.
static SET_VERSIONED: LazyLock<Script> = LazyLock::new(|| {
    let prelude: &str = &PRELUDE;
    Script::new(&format!(
        r"{prelude}
local v = allocate(KEYS[1], KEYS[2])
local e = string.sub(ARGV[1], 1, 32) .. be8(v) .. string.sub(ARGV[1], 41)
redis.call('SET', KEYS[1], e, 'PX', ARGV[2])
redis.call('SET', KEYS[2], string.format('%.0f', v), 'PX', ARGV[3])
return v
"
    ))
});

/// `KEYS[1]` lease; `ARGV[1]` token; `ARGV[2]` PX. 1 if the caller holds it.
static ACQUIRE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
",
    )
});

/// `KEYS[1]` lease; `ARGV[1]` token. 1 if released.
static RELEASE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// The suffix of a key's load lease.
const LEASE_SUFFIX: &str = "lease";

/// The suffix of a key's version record.
const VERSION_SUFFIX: &str = "v";

/// The largest version a script can hold exactly (Lua numbers are doubles).
pub(crate) const MAX_VERSION: u64 = 1 << 53;

pub(crate) fn check_envelope(value: &[u8], what: &str) -> Result<u64> {
    if value.len() < HEADER_LEN || value[0] != MAGIC {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} takes envelope bytes (the version is in the header)"),
        ));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&value[larder_core::envelope::VERSION_RANGE]);
    let v = u64::from_be_bytes(b);
    if v >= MAX_VERSION {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("{what}: version {v} is not below 2^53"),
        ));
    }
    Ok(v)
}

impl RedisStore {
    pub(crate) fn versioned_keys(&self, key: &str) -> Result<(String, String)> {
        let ks = self.keyspace();
        Ok((ks.data_key(key)?, ks.internal_key(key, VERSION_SUFFIX)?))
    }

    pub(crate) async fn version_impl(&self, key: &str) -> Result<u64> {
        let (data, rec) = self.versioned_keys(key)?;
        let v: Option<u64> = self
            .run_on(&data, Cmd::Get, true, "GET version", |mut c| {
                let rec = &rec;
                async move { redis::cmd("GET").arg(rec).query_async(&mut c).await }
            })
            .await?;
        Ok(v.unwrap_or(0))
    }

    pub(crate) async fn get_with_version_impl(&self, key: &str) -> Result<(Option<Vec<u8>>, u64)> {
        let (data, rec) = self.versioned_keys(key)?;
        // One MGET: the data key and its record share a hash tag (one slot).
        let (value, v): (Option<Vec<u8>>, Option<u64>) = self
            .run_on(&data, Cmd::MGet, true, "MGET value and version", |mut c| {
                let (data, rec) = (&data, &rec);
                async move {
                    redis::cmd("MGET")
                        .arg(data)
                        .arg(rec)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok((value, v.unwrap_or(0)))
    }

    pub(crate) async fn fill_impl(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let (data, rec) = self.versioned_keys(key)?;
        let ms = ttl_ms(ttl)?;
        check_envelope(value, "fill")?;
        let journal = self.fill_journal();
        // Retried safely: a retry after a lost reply finds its own bytes and answers 1.
        let written: i64 = self
            .run_on(&data, Cmd::Script, true, "fill script", |mut c| {
                let inv = match journal {
                    Some((latest, stream)) => {
                        let mut inv = FILL_UNLESS_JOURNALLED.key(&data);
                        inv.key(&rec).key(latest).key(stream);
                        inv.arg(value).arg(ms).arg(key);
                        inv
                    }
                    None => {
                        let mut inv = FILL.key(&data);
                        inv.key(&rec).arg(value).arg(ms);
                        inv
                    }
                };
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(written == 1)
    }

    pub(crate) async fn invalidate_impl(&self, key: &str, tombstone: Duration) -> Result<u64> {
        let (data, rec) = self.versioned_keys(key)?;
        let ms = ttl_ms(tombstone)?;
        // Retried: a second run allocates a higher version, the effect is the same.
        self.run_on(&data, Cmd::Script, true, "invalidate script", |mut c| {
            let mut inv = INVALIDATE.key(&data);
            inv.key(&rec).arg(ms);
            async move { inv.invoke_async(&mut c).await }
        })
        .await
    }

    pub(crate) async fn acquire_lease_impl(
        &self,
        key: &str,
        token: &[u8],
        ttl: Duration,
    ) -> Result<bool> {
        let ks = self.keyspace();
        let (data, lease) = (ks.data_key(key)?, ks.internal_key(key, LEASE_SUFFIX)?);
        let ms = ttl_ms(ttl)?;
        if token.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a lease token is empty",
            ));
        }
        // Retried safely: the script answers 1 to the holder's own token.
        let held: i64 = self
            .run_on(&data, Cmd::Script, true, "lease script", |mut c| {
                let mut inv = ACQUIRE_LEASE.key(&lease);
                inv.arg(token).arg(ms);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(held == 1)
    }

    pub(crate) async fn release_lease_impl(&self, key: &str, token: &[u8]) -> Result<bool> {
        let ks = self.keyspace();
        let (data, lease) = (ks.data_key(key)?, ks.internal_key(key, LEASE_SUFFIX)?);
        let released: i64 = self
            // Not resent: a retry after a lost reply would say "not released".
            .run_on(
                &data,
                Cmd::Script,
                false,
                "release-lease script",
                |mut c| {
                    let mut inv = RELEASE_LEASE.key(&lease);
                    inv.arg(token);
                    async move { inv.invoke_async(&mut c).await }
                },
            )
            .await?;
        Ok(released == 1)
    }

    pub(crate) async fn set_versioned_impl(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        tombstone: Duration,
    ) -> Result<u64> {
        let (data, rec) = self.versioned_keys(key)?;
        let ms = ttl_ms(ttl)?;
        let rec_ms = ms.max(ttl_ms(tombstone)?);
        check_envelope(value, "set_versioned")?;
        // Not resent: a retry after a lost reply would allocate a second
        // version and could overwrite a newer write made in between.
        self.run_on(
            &data,
            Cmd::Script,
            false,
            "set-versioned script",
            |mut c| {
                let mut inv = SET_VERSIONED.key(&data);
                inv.key(&rec).arg(value).arg(ms).arg(rec_ms);
                async move { inv.invoke_async(&mut c).await }
            },
        )
        .await
    }
}
