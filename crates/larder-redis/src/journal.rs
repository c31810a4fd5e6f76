//! The journal of durable write-behind: a Redis Stream in the namespace.
//!
//! Each queued write is appended to the stream by the same script that
//! writes the cache's new value (so a write the caller was told about is in
//! the journal, and a value in the cache always has its journal entry), and
//! is delivered at once to the appending consumer of the group, so it is
//! pending (claimable) from the moment it exists. Once the source of truth
//! has it, the entry is acknowledged and deleted (`XACK` and `XDEL` in one
//! script); a write given up is moved to the dead-letter stream in the same
//! way. A hash maps each key to its latest journalled entry, so a replay
//! never writes an older value over a newer one.
//!
//! Standalone Redis only: the script touches the data key and the stream,
//! which a Cluster or a sharded set would put on different nodes.

use std::sync::LazyLock;
use std::time::Duration;

use larder_core::{Error, ErrorKind, Result};
use redis::Script;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use crate::config::Topology;
use crate::stats::Cmd;
use crate::store::{RedisStore, ttl_ms};

/// The hash of each key's latest journalled entry (`{ns}:wb:latest`);
/// fills on a standalone server read it too.
pub(crate) const JOURNAL_LATEST: &str = "wb:latest";
/// The journal stream (`{ns}:wb:journal`).
pub(crate) const JOURNAL_STREAM: &str = "wb:journal";
/// The dead-letter stream (`{ns}:wb:dead`).
const JOURNAL_DEAD: &str = "wb:dead";

/// The consumer group every Larder instance of a namespace joins.
const GROUP: &str = "larder";

/// Entries read per claim call.
const CLAIM_BATCH: usize = 500;

/// `KEYS[1]` data, `KEYS[2]` version record, `KEYS[3]` stream, `KEYS[4]`
/// latest hash; `ARGV[1]` envelope, `ARGV[2]` PX of the data, `ARGV[3]` PX
/// of the record, `ARGV[4]` group, `ARGV[5]` consumer, `ARGV[6]` key,
/// `ARGV[7]` payload. Returns `{entry id, version}`.
static APPEND: LazyLock<Script> = LazyLock::new(|| {
    let prelude: &str = &crate::versioned::PRELUDE;
    Script::new(&format!(
        r"{prelude}
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[3], ARGV[4], '0', 'MKSTREAM')
local id = redis.call('XADD', KEYS[3], '*', 'k', ARGV[6], 'p', ARGV[7])
local found = false
while not found do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[4], ARGV[5], 'COUNT', '100', 'STREAMS', KEYS[3], '>')
  if not r then break end
  for _, m in ipairs(r[1][2]) do
    if m[1] == id then found = true end
  end
end
if not found then
  -- The group's last id is past the entry (moved by hand): nobody would
  -- ever replay it. Refused before the cache changes.
  redis.call('XDEL', KEYS[3], id)
  return redis.error_reply('LARDERJOURNAL the consumer group cannot deliver new entries')
end
local v = allocate(KEYS[1], KEYS[2])
local e = string.sub(ARGV[1], 1, 32) .. be8(v) .. string.sub(ARGV[1], 41)
redis.call('SET', KEYS[1], e, 'PX', ARGV[2])
redis.call('SET', KEYS[2], string.format('%.0f', v), 'PX', ARGV[3])
redis.call('HSET', KEYS[4], ARGV[6], id)
return {{id, string.format('%.0f', v)}}
"
    ))
});

/// `KEYS[1]` stream, `KEYS[2]` latest hash, `KEYS[3]` dead-letter stream,
/// then each key's data key and version record; `ARGV[1]` group, `ARGV[2]`
/// the reason ("" to acknowledge, else the entries move to the dead-letter
/// stream with it), then pairs of key and entry id. Returns the number of
/// entries removed from the journal.
///
/// Acknowledging a key's latest entry also moves its version on: a load
/// that read the source before the write reached it holds an older ticket,
/// and its fill is refused (while the entry was the latest, the fill
/// script refused every fill of the key).
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    let prelude: &str = &crate::versioned::PRELUDE;
    Script::new(&format!(
        r"{prelude}
local n = 0
for i = 3, #ARGV, 2 do
  local k, id = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[2], k) == id then
    redis.call('HDEL', KEYS[2], k)
    if ARGV[2] == '' then
      local data, rec = KEYS[i + 1], KEYS[i + 2]
      local keep = math.max(redis.call('PTTL', data), redis.call('PTTL', rec), 60000)
      redis.call('SET', rec, string.format('%.0f', allocate(data, rec)), 'PX', keep)
    end
  end
  if ARGV[2] ~= '' then
    local e = redis.call('XRANGE', KEYS[1], id, id)
    if e[1] then
      local f = e[1][2]
      local add = {{'XADD', KEYS[3], '*'}}
      for j = 1, #f do add[#add + 1] = f[j] end
      add[#add + 1] = 'error'
      add[#add + 1] = ARGV[2]
      redis.call(unpack(add))
    end
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
  n = n + redis.call('XDEL', KEYS[1], id)
end
return n
"
    ))
});

/// One journalled write, read back by [`Journal::recover`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The stream entry id (`<ms>-<seq>`).
    pub id: String,
    /// The user key.
    pub key: String,
    /// The payload given to [`Journal::append`]; `None` if the entry is not
    /// one of Larder's (foreign or damaged fields).
    pub payload: Option<Vec<u8>>,
}

/// The durable write-behind journal of a namespace (see the module docs),
/// for one consumer (a process, or an instance in it).
///
/// Keys, all in the namespace: the stream `{ns}:wb:journal` (consumer group
/// `larder`), the latest-entry hash `{ns}:wb:latest`, the dead letters
/// `{ns}:wb:dead`.
#[derive(Debug, Clone)]
pub struct Journal {
    store: RedisStore,
    stream: String,
    latest: String,
    dead: String,
    consumer: String,
}

impl RedisStore {
    /// The write-behind journal of this store's namespace, read and written
    /// as `consumer`: a name unique among live processes and stable across
    /// restarts (a host name, a pod name), so a restarted process replays
    /// its own pending writes at once. Standalone Redis only
    /// ([`ErrorKind::Unsupported`] otherwise); `consumer` is 1 to 200
    /// characters of letters, digits, `-`, `_` and `.`
    /// ([`ErrorKind::InvalidArgument`]).
    pub fn journal(&self, consumer: &str) -> Result<Journal> {
        if !matches!(self.config().topology(), Topology::Standalone(_)) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "durable write-behind needs a standalone Redis: the cache write and its journal \
                 entry go in one script",
            ));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if consumer.is_empty() || consumer.len() > 200 || !consumer.chars().all(ok) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("journal consumer {consumer:?}: 1 to 200 of [A-Za-z0-9._-]"),
            ));
        }
        let ks = self.keyspace();
        Ok(Journal {
            store: self.clone(),
            stream: ks.global_key(JOURNAL_STREAM)?,
            latest: ks.global_key(JOURNAL_LATEST)?,
            dead: ks.global_key(JOURNAL_DEAD)?,
            consumer: consumer.to_owned(),
        })
    }
}

/// A stream entry id as numbers, for ordering (`None` if malformed).
pub fn entry_order(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Journal {
    /// This journal's consumer name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The dead-letter stream's Redis key.
    pub fn dead_letter_key(&self) -> &str {
        &self.dead
    }

    /// The journal stream's Redis key.
    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    /// Writes `envelope` as the cache value of `key` with a newly allocated
    /// version (as [`larder_core::Store::set_versioned`]) and appends
    /// `payload` to the journal, in one script. Returns the entry id and
    /// the version written. Never resent after a lost reply (it could
    /// journal the write twice); an error means the write may or may not
    /// be journalled, and the caller must treat it as not accepted.
    pub async fn append(
        &self,
        key: &str,
        payload: &[u8],
        envelope: &[u8],
        ttl: Duration,
        tombstone: Duration,
    ) -> Result<(String, u64)> {
        let (data, rec) = self.store.versioned_keys(key)?;
        crate::versioned::check_envelope(envelope, "journal append")?;
        let ms = ttl_ms(ttl)?;
        let rec_ms = ms.max(ttl_ms(tombstone)?);
        let (id, version): (String, String) = self
            .store
            .run_on(
                &data,
                Cmd::Script,
                false,
                "journal append script",
                |mut c| {
                    let mut inv = APPEND.key(&data);
                    inv.key(&rec).key(&self.stream).key(&self.latest);
                    inv.arg(envelope).arg(ms).arg(rec_ms).arg(GROUP);
                    inv.arg(&self.consumer).arg(key).arg(payload);
                    async move { inv.invoke_async(&mut c).await }
                },
            )
            .await?;
        let version = version.parse().map_err(|_| {
            Error::new(
                ErrorKind::Backend,
                format!("journal append: version {version:?}"),
            )
        })?;
        Ok((id, version))
    }

    /// Of these `(key, entry id)` pairs, which are still the latest
    /// journalled write of their key (a later write, by any instance,
    /// supersedes an entry).
    pub async fn is_latest(&self, entries: &[(String, String)]) -> Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let latest: Vec<Option<String>> = self
            .store
            .run_home(&self.latest, Cmd::Other, true, "journal HMGET", |mut c| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&self.latest);
                for (k, _) in entries {
                    cmd.arg(k);
                }
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        Ok(entries
            .iter()
            .zip(latest)
            .map(|((_, id), l)| l.as_deref() == Some(id.as_str()))
            .collect())
    }

    /// A write of each of `keys` went to the source directly: every entry
    /// journalled before for them is superseded (none is the latest any
    /// more, so no replay or flush writes it).
    pub async fn supersede(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.store
            .run_home(&self.latest, Cmd::Other, true, "journal HDEL", |mut c| {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(&self.latest).arg(keys);
                async move { cmd.query_async::<u64>(&mut c).await }
            })
            .await
            .map(|_| ())
    }

    /// Resets the idle time of entries this consumer still holds (waiting
    /// in its queue), so no other consumer takes them over while this one
    /// lives: call it more often than the claim bound.
    pub async fn touch(&self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(CLAIM_BATCH) {
            self.store
                .run_home(&self.stream, Cmd::Other, true, "journal XCLAIM", |mut c| {
                    let mut cmd = redis::cmd("XCLAIM");
                    cmd.arg(&self.stream).arg(GROUP).arg(&self.consumer).arg(0);
                    cmd.arg(chunk).arg("JUSTID");
                    async move { cmd.query_async::<redis::Value>(&mut c).await }
                })
                .await?;
        }
        Ok(())
    }

    /// Acknowledges entries whose writes reached the source of truth (or
    /// were superseded): they leave the journal. Idempotent.
    pub async fn ack(&self, entries: &[(String, String)]) -> Result<u64> {
        self.settle(entries, "").await
    }

    /// Moves entries given up on to the dead-letter stream
    /// ([`Journal::dead_letter_key`], with an `error` field), removing them
    /// from the journal. Idempotent.
    pub async fn dead_letter(&self, entries: &[(String, String)], error: &str) -> Result<u64> {
        let reason = if error.is_empty() { "error" } else { error };
        self.settle(entries, reason).await
    }

    async fn settle(&self, entries: &[(String, String)], reason: &str) -> Result<u64> {
        let mut removed = 0;
        for chunk in entries.chunks(CLAIM_BATCH) {
            // A foreign entry's key may be no valid key (empty, say): it is
            // never the latest of anything, so its keys are never touched;
            // the latest hash stands in for them.
            let keys: Vec<(String, String)> = chunk
                .iter()
                .map(|(k, _)| {
                    self.store
                        .versioned_keys(k)
                        .unwrap_or_else(|_| (self.latest.clone(), self.latest.clone()))
                })
                .collect();
            removed += self
                .store
                .run_home(
                    &self.stream,
                    Cmd::Script,
                    true,
                    "journal settle script",
                    |mut c| {
                        let mut inv = SETTLE.key(&self.stream);
                        inv.key(&self.latest).key(&self.dead).arg(GROUP).arg(reason);
                        for ((k, id), (data, rec)) in chunk.iter().zip(&keys) {
                            inv.arg(k).arg(id).key(data).key(rec);
                        }
                        async move { inv.invoke_async::<u64>(&mut c).await }
                    },
                )
                .await?;
        }
        Ok(removed)
    }

    /// Takes over journalled writes nobody is writing: with `own`, every
    /// entry pending for this consumer (left by a previous run of this
    /// process; call it once, before appending), then at most `limit`
    /// entries of any consumer not touched for `min_idle` (0: none). Oldest
    /// first; the entries now belong to this consumer.
    pub async fn recover(
        &self,
        own: bool,
        min_idle: Duration,
        limit: usize,
    ) -> Result<Vec<JournalEntry>> {
        self.ensure_group().await?;
        let mut out = Vec::new();
        if own {
            let mut after = "0-0".to_owned();
            loop {
                let reply: StreamReadReply = self
                    .store
                    .run_home(
                        &self.stream,
                        Cmd::Other,
                        true,
                        "journal XREADGROUP",
                        |mut c| {
                            let mut cmd = redis::cmd("XREADGROUP");
                            cmd.arg("GROUP").arg(GROUP).arg(&self.consumer);
                            cmd.arg("COUNT").arg(CLAIM_BATCH);
                            cmd.arg("STREAMS").arg(&self.stream).arg(&after);
                            async move { cmd.query_async(&mut c).await }
                        },
                    )
                    .await?;
                let ids: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
                let Some(last) = ids.last() else { break };
                after.clone_from(&last.id);
                out.extend(ids.into_iter().map(entry));
            }
        }
        let idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let mut cursor = "0-0".to_owned();
        let mut claimed = 0;
        while claimed < limit {
            let reply: StreamAutoClaimReply = self
                .store
                .run_home(
                    &self.stream,
                    Cmd::Other,
                    true,
                    "journal XAUTOCLAIM",
                    |mut c| {
                        let mut cmd = redis::cmd("XAUTOCLAIM");
                        cmd.arg(&self.stream).arg(GROUP).arg(&self.consumer);
                        cmd.arg(idle).arg(&cursor);
                        cmd.arg("COUNT").arg(CLAIM_BATCH.min(limit - claimed));
                        async move { cmd.query_async(&mut c).await }
                    },
                )
                .await?;
            claimed += reply.claimed.len().max(1);
            let deleted: Vec<(String, String)> = reply
                .deleted_ids
                .into_iter()
                .map(|id| (String::new(), id))
                .collect();
            if !deleted.is_empty() {
                // Pending but gone from the stream: nothing to write.
                self.ack(&deleted).await?;
            }
            out.extend(reply.claimed.into_iter().map(entry));
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
        out.sort_by_key(|e| entry_order(&e.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Entries in the journal (pending writes of every instance).
    pub async fn len(&self) -> Result<u64> {
        self.store
            .run_home(&self.stream, Cmd::Other, true, "journal XLEN", |mut c| {
                let mut cmd = redis::cmd("XLEN");
                cmd.arg(&self.stream);
                async move { cmd.query_async(&mut c).await }
            })
            .await
    }

    async fn ensure_group(&self) -> Result<()> {
        let created: redis::RedisResult<()> = self
            .store
            .run_home(&self.stream, Cmd::Other, true, "journal XGROUP", |mut c| {
                let mut cmd = redis::cmd("XGROUP");
                cmd.arg("CREATE").arg(&self.stream).arg(GROUP).arg("0");
                cmd.arg("MKSTREAM");
                async move {
                    // BUSYGROUP (it exists) is success: answered inside.
                    Ok(cmd.query_async::<()>(&mut c).await)
                }
            })
            .await?;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(crate::error::from_redis(
                e,
                "journal: creating the consumer group",
            )),
            _ => Ok(()),
        }
    }
}

fn entry(s: StreamId) -> JournalEntry {
    let text = |v: Option<&redis::Value>| match v {
        Some(redis::Value::BulkString(b)) => Some(b.clone()),
        Some(redis::Value::SimpleString(s)) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let key = text(s.map.get("k")).and_then(|b| String::from_utf8(b).ok());
    let payload = text(s.map.get("p"));
    let ok = key.is_some() && payload.is_some();
    JournalEntry {
        id: s.id,
        key: key.unwrap_or_default(),
        payload: payload.filter(|_| ok),
    }
}
