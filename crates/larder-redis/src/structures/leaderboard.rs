use std::sync::LazyLock;

use larder_core::{Codec, DefaultCodec, Result};
use redis::Script;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::stats::Cmd;
use crate::store::RedisStore;

use super::check_name;

/// One member of a leaderboard with its score and rank (0 = highest score).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The member.
    pub member: String,
    /// Its score.
    pub score: f64,
    /// Its rank, 0-based, highest score first.
    pub rank: u64,
}

/// `KEYS[1]` zset, `KEYS[2]` details hash; `ARGV[1..2]` start, stop (reverse
/// rank). Returns `{member, score, details-or-false, ...}` in one round trip.
static RANGE_WITH_DETAILS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'REV', 'WITHSCORES')
local out = {}
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = r[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], r[i])
end
return out
",
    )
});

/// `KEYS[1]` zset; `ARGV[1]` member, `ARGV[2]` n. The member's rank and
/// up to `n` members on each side, read in one step (two commands could
/// straddle a score change and miss the member). Returns `{first rank,
/// {member, score, ...}}`, or nil if the member is not on the board.
static AROUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
if not rank then
  return false
end
local n = tonumber(ARGV[2])
local first = rank - n
if first < 0 then first = 0 end
return {first, redis.call('ZRANGE', KEYS[1], first, rank + n, 'REV', 'WITHSCORES')}
",
    )
});

/// The largest index sent to Redis: ranks are `i64`s there, and a Lua
/// script computes with doubles, exact below 2^53.
const MAX_INDEX: u64 = 1 << 52;

/// A leaderboard on a sorted set, highest score first, with optional
/// per-member details (any serde value) kept in a hash beside it.
///
/// ```no_run
/// # async fn demo(store: larder_redis::RedisStore) -> larder_core::Result<()> {
/// use larder_redis::Leaderboard;
/// let board: Leaderboard = Leaderboard::new(&store, "weekly")?;
/// board.incr_score("alice", 30.0).await?;
/// board.incr_score("bob", 45.0).await?;
/// let top = board.top(10).await?;
/// assert_eq!(top[0].member, "bob");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Leaderboard<C: Codec = DefaultCodec> {
    store: RedisStore,
    key: String,
    details: String,
    codec: C,
}

fn to_ranked(flat: Vec<(String, f64)>, first_rank: u64) -> Vec<Ranked> {
    flat.into_iter()
        .enumerate()
        .map(|(i, (member, score))| Ranked {
            member,
            score,
            rank: first_rank + i as u64,
        })
        .collect()
}

impl Leaderboard<DefaultCodec> {
    /// A leaderboard called `name`, details encoded with the default codec.
    pub fn new(store: &RedisStore, name: &str) -> Result<Self> {
        Self::with_codec(store, name, DefaultCodec::default())
    }
}

impl<C: Codec> Leaderboard<C> {
    /// A leaderboard called `name` whose details use `codec`.
    pub fn with_codec(store: &RedisStore, name: &str, codec: C) -> Result<Self> {
        check_name("leaderboard name", name)?;
        let tag = format!("board:{name}");
        Ok(Leaderboard {
            key: store.keyspace().helper_key(&tag, "scores")?,
            details: store.keyspace().helper_key(&tag, "details")?,
            store: store.clone(),
            codec,
        })
    }

    /// Sets a member's score.
    pub async fn set_score(&self, member: &str, score: f64) -> Result<()> {
        larder_core::validate_key(member)?;
        self.store
            .run_home(&self.key, Cmd::Other, true, "ZADD", |mut c| async move {
                redis::cmd("ZADD")
                    .arg(&self.key)
                    .arg(score)
                    .arg(member)
                    .exec_async(&mut c)
                    .await
            })
            .await
    }

    /// Adds `by` to a member's score (creating it at `by`); the new score.
    pub async fn incr_score(&self, member: &str, by: f64) -> Result<f64> {
        larder_core::validate_key(member)?;
        self.store
            .run_home(
                &self.key,
                Cmd::Other,
                false,
                "ZINCRBY",
                |mut c| async move {
                    redis::cmd("ZINCRBY")
                        .arg(&self.key)
                        .arg(by)
                        .arg(member)
                        .query_async(&mut c)
                        .await
                },
            )
            .await
    }

    /// A member's score, if it is on the board.
    pub async fn score(&self, member: &str) -> Result<Option<f64>> {
        self.store
            .run_home(&self.key, Cmd::Other, true, "ZSCORE", |mut c| async move {
                redis::cmd("ZSCORE")
                    .arg(&self.key)
                    .arg(member)
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    /// A member's rank (0 = highest score), if it is on the board.
    pub async fn rank(&self, member: &str) -> Result<Option<u64>> {
        self.store
            .run_home(
                &self.key,
                Cmd::Other,
                true,
                "ZREVRANK",
                |mut c| async move {
                    redis::cmd("ZREVRANK")
                        .arg(&self.key)
                        .arg(member)
                        .query_async(&mut c)
                        .await
                },
            )
            .await
    }

    /// Members on the board.
    pub async fn len(&self) -> Result<u64> {
        self.store
            .run_home(&self.key, Cmd::Other, true, "ZCARD", |mut c| async move {
                redis::cmd("ZCARD").arg(&self.key).query_async(&mut c).await
            })
            .await
    }

    /// Whether the board is empty.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// Members ranked `start..=stop`; past [`MAX_INDEX`] the board is empty.
    async fn range(&self, start: u64, stop: u64) -> Result<Vec<Ranked>> {
        if start > MAX_INDEX {
            return Ok(Vec::new());
        }
        let stop = stop.min(MAX_INDEX);
        let flat: Vec<(String, f64)> = self
            .store
            .run_home(
                &self.key,
                Cmd::Other,
                true,
                "ZRANGE REV",
                |mut c| async move {
                    redis::cmd("ZRANGE")
                        .arg(&self.key)
                        .arg(start)
                        .arg(stop)
                        .arg("REV")
                        .arg("WITHSCORES")
                        .query_async(&mut c)
                        .await
                },
            )
            .await?;
        Ok(to_ranked(flat, start))
    }

    /// The `n` highest, best first.
    pub async fn top(&self, n: u64) -> Result<Vec<Ranked>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.range(0, n - 1).await
    }

    /// Page `page` (0-based) of `size` members, best first.
    pub async fn page(&self, page: u64, size: u64) -> Result<Vec<Ranked>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let Some(start) = page.checked_mul(size) else {
            return Ok(Vec::new());
        };
        self.range(start, start.saturating_add(size - 1)).await
    }

    /// The member and up to `n` members above and below it; empty if it is
    /// not on the board. One script: the rank and the range come from the
    /// same snapshot.
    pub async fn around(&self, member: &str, n: u64) -> Result<Vec<Ranked>> {
        let n = n.min(MAX_INDEX);
        let found: Option<(u64, Vec<(String, f64)>)> = self
            .store
            .run_home(
                &self.key,
                Cmd::Script,
                true,
                "leaderboard around script",
                |mut c| {
                    let mut inv = AROUND.key(&self.key);
                    inv.arg(member).arg(n);
                    async move { inv.invoke_async(&mut c).await }
                },
            )
            .await?;
        Ok(found.map_or_else(Vec::new, |(first, flat)| to_ranked(flat, first)))
    }

    /// Removes a member and its details.
    pub async fn remove(&self, member: &str) -> Result<bool> {
        let (removed, _): (u64, u64) = self
            .store
            .run_home(
                &self.key,
                Cmd::Pipeline,
                // Not resent: a retry after a lost reply would say "not there".
                false,
                "ZREM+HDEL",
                |mut c| async move {
                    redis::pipe()
                        .atomic()
                        .cmd("ZREM")
                        .arg(&self.key)
                        .arg(member)
                        .cmd("HDEL")
                        .arg(&self.details)
                        .arg(member)
                        .query_async(&mut c)
                        .await
                },
            )
            .await?;
        Ok(removed > 0)
    }

    /// Stores details for a member (its profile, avatar URL, ...).
    pub async fn set_details<T: Serialize>(&self, member: &str, details: &T) -> Result<()> {
        let bytes = self.codec.encode(details)?;
        self.store
            .run_home(&self.key, Cmd::Other, true, "HSET", |mut c| {
                let bytes = &bytes;
                async move {
                    redis::cmd("HSET")
                        .arg(&self.details)
                        .arg(member)
                        .arg(bytes)
                        .exec_async(&mut c)
                        .await
                }
            })
            .await
    }

    /// The `n` highest with their details, in one round trip. Details that
    /// are missing, or that do not decode, are `None` (the latter counted
    /// as corrupt in the store's stats).
    pub async fn top_with_details<T: DeserializeOwned>(
        &self,
        n: u64,
    ) -> Result<Vec<(Ranked, Option<T>)>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let flat: Vec<redis::Value> = self
            .store
            .run_home(
                &self.key,
                Cmd::Script,
                true,
                "leaderboard range script",
                |mut c| {
                    let mut inv = RANGE_WITH_DETAILS.key(&self.key);
                    inv.key(&self.details).arg(0).arg((n - 1).min(MAX_INDEX));
                    async move { inv.invoke_async(&mut c).await }
                },
            )
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for (i, triple) in flat.chunks(3).enumerate() {
            let [m, s, d] = triple else { break };
            let member: String = redis::from_redis_value_ref(m).map_err(parse_err)?;
            let score: f64 = redis::from_redis_value_ref(s).map_err(parse_err)?;
            let details = match d {
                redis::Value::BulkString(b) => match self.codec.decode::<T>(b) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.store.count_corrupt(&self.key);
                        None
                    }
                },
                _ => None,
            };
            out.push((
                Ranked {
                    member,
                    score,
                    rank: i as u64,
                },
                details,
            ));
        }
        Ok(out)
    }
}

fn parse_err(e: redis::ParsingError) -> larder_core::Error {
    larder_core::Error::with_source(larder_core::ErrorKind::Backend, "unexpected reply", e)
}
