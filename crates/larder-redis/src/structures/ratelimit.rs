use std::sync::LazyLock;
use std::time::Duration;

use larder_core::{Error, ErrorKind, Result};
use redis::Script;

use crate::stats::Cmd;
use crate::store::RedisStore;

use super::{check_name, check_part};

/// A limit and the algorithm that enforces it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// At most `limit` per aligned window (`[k * window, (k + 1) * window)`).
    /// Cheapest; allows up to `2 * limit` across a window boundary.
    FixedWindow {
        /// Requests per window.
        limit: u64,
        /// Window length (at least 1 ms).
        window: Duration,
    },
    /// At most `limit` in any trailing `window` (a sorted-set log): exact, one
    /// set entry per allowed request.
    SlidingWindow {
        /// Requests per trailing window.
        limit: u64,
        /// Window length (at least 1 ms).
        window: Duration,
    },
    /// GCRA token bucket: `rate` per `period` sustained, bursts of up to
    /// `burst`; O(1) memory (one timestamp per id).
    TokenBucket {
        /// Requests per period, sustained.
        rate: u64,
        /// The period.
        period: Duration,
        /// Bucket size: how many may arrive at once.
        burst: u64,
    },
}

/// The answer of a limiter.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed (a denied request consumes nothing).
    pub allowed: bool,
    /// How many more requests would be allowed right now.
    pub remaining: u64,
    /// When denied: how long until this request would be allowed (rounded
    /// up to whole milliseconds: waiting exactly this long is enough, if
    /// nobody else takes the room first).
    pub retry_after: Option<Duration>,
}

/// KEYS window hash; ARGV now (empty: the server's `TIME`), window ms,
/// cost, limit. One hash per id holds the current window's index and
/// count, so the window is picked by the script's clock. Returns `{allowed,
/// count, retry ms}`.
static FIXED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_lua!(),
        r"
local now = clock_ms(ARGV[1])
local w = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local index = math.floor(now / w)
local ends = (index + 1) * w
local cur = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(cur[1]) == index then n = tonumber(cur[2]) end
if n + cost > limit then
  return {0, n, ends - now}
end
redis.call('HSET', KEYS[1], 'w', string.format('%.0f', index), 'n', n + cost)
redis.call('PEXPIRE', KEYS[1], ends - now)
return {1, n + cost, 0}
"
    ))
});

/// KEYS log zset, seq; ARGV now (empty: the server's `TIME`), window ms,
/// limit, cost. Returns `{allowed, count, retry ms}`.
static SLIDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_lua!(),
        r"
local now = clock_ms(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count + cost > limit then
  local retry = window
  local idx = count + cost - limit - 1
  local e = redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')
  if e[2] then retry = tonumber(e[2]) + window - now end
  return {0, count, retry}
end
for i = 1, cost do
  local s = redis.call('INCR', KEYS[2])
  redis.call('ZADD', KEYS[1], now, tostring(s))
end
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], window)
return {1, count + cost, 0}
"
    ))
});

/// GCRA in microseconds: TAT = theoretical arrival time. KEYS tat; ARGV now
/// (empty: the server's `TIME`, read to the microsecond), interval in us,
/// burst, cost. `retry_after` is rounded up to whole milliseconds (never
/// down: a caller that waits exactly that long is allowed).
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_lua!(),
        r"
local now = clock_us(ARGV[1])
local t = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + t * cost
local allow_at = new_tat - t * burst
if now < allow_at then
  local remaining = math.floor((now - (tat - t * burst)) / t)
  if remaining < 0 then remaining = 0 end
  return {0, remaining, math.ceil((allow_at - now) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / t), 0}
"
    ))
});

/// A distributed rate limiter: every instance of a service that uses the
/// same name shares the limit. Time is the Redis server's `TIME`, read
/// inside the script (or the store's clock with
/// [`crate::HelperClock::Store`]); each decision is one atomic script.
///
/// ```no_run
/// # async fn demo(store: larder_redis::RedisStore) -> larder_core::Result<()> {
/// use larder_redis::{RateLimit, RateLimiter};
/// use std::time::Duration;
///
/// let per_user = RateLimiter::new(&store, "checkout", RateLimit::TokenBucket {
///     rate: 10, period: Duration::from_secs(1), burst: 20,
/// })?;
/// let d = per_user.check("user:42").await?;
/// if !d.allowed {
///     println!("slow down, retry in {:?}", d.retry_after);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    store: RedisStore,
    name: String,
    limit: RateLimit,
}

/// A window in ms, capped at [`crate::MAX_TTL`]: the scripts `PEXPIRE` the
/// counter by it after writing it, and Redis refuses a longer expiry.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.min(crate::MAX_TTL).as_millis()).unwrap_or(u64::MAX)
}

impl RateLimiter {
    /// A limiter called `name` (its keys are `{namespace}:{rate:name:id}:#role`; the name
    /// holds no `:`).
    /// Errors: an invalid name, a zero limit, rate, burst or window.
    pub fn new(store: &RedisStore, name: &str, limit: RateLimit) -> Result<Self> {
        check_name("limiter name", name)?;
        let bad = |m: &'static str| Err(Error::new(ErrorKind::InvalidArgument, m));
        match limit {
            RateLimit::FixedWindow { limit, window }
            | RateLimit::SlidingWindow { limit, window } => {
                if limit == 0 || ms(window) == 0 {
                    return bad("a window limit needs limit >= 1 and window >= 1 ms");
                }
            }
            RateLimit::TokenBucket {
                rate,
                period,
                burst,
            } => {
                if rate == 0 || burst == 0 || period.is_zero() {
                    return bad("a token bucket needs rate, burst and period above zero");
                }
            }
        }
        Ok(RateLimiter {
            store: store.clone(),
            name: name.to_owned(),
            limit,
        })
    }

    /// Takes one request for `id`.
    pub async fn check(&self, id: &str) -> Result<RateDecision> {
        self.check_n(id, 1).await
    }

    /// Takes `cost` requests for `id` at once (all or nothing). A cost above
    /// what the limit can ever allow at once (`limit`, or the bucket's
    /// `burst`) is refused with [`ErrorKind::InvalidArgument`], not answered
    /// with a `retry_after` that would never come true.
    pub async fn check_n(&self, id: &str, cost: u64) -> Result<RateDecision> {
        check_part("limiter id", id)?;
        if cost == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "cost must be at least 1",
            ));
        }
        let most = match self.limit {
            RateLimit::FixedWindow { limit, .. } | RateLimit::SlidingWindow { limit, .. } => limit,
            RateLimit::TokenBucket { burst, .. } => burst,
        };
        if cost > most {
            // It could never pass: a finite retry_after would be a lie.
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a cost of {cost} is above this limiter's most at once ({most})"),
            ));
        }
        let tag = format!("rate:{}:{id}", self.name);
        let ks = self.store.keyspace();
        let now = self.store.helper_now_arg();
        match self.limit {
            RateLimit::FixedWindow { limit, window } => {
                let key = ks.helper_key(&tag, "fixed")?;
                let (ok, count, retry): (i64, u64, u64) = self
                    .store
                    .run_home(&key, Cmd::Script, false, "fixed-window limiter", |mut c| {
                        let mut inv = FIXED.key(&key);
                        inv.arg(&now).arg(ms(window)).arg(cost).arg(limit);
                        async move { inv.invoke_async(&mut c).await }
                    })
                    .await?;
                Ok(RateDecision {
                    allowed: ok == 1,
                    remaining: limit.saturating_sub(count),
                    retry_after: (ok != 1).then(|| Duration::from_millis(retry)),
                })
            }
            RateLimit::SlidingWindow { limit, window } => {
                let key = ks.helper_key(&tag, "log")?;
                let seq = ks.helper_key(&tag, "seq")?;
                let (ok, count, retry): (i64, u64, u64) = self
                    .store
                    .run_home(
                        &key,
                        Cmd::Script,
                        false,
                        "sliding-window limiter",
                        |mut c| {
                            let mut inv = SLIDING.key(&key);
                            inv.key(&seq).arg(&now).arg(ms(window)).arg(limit).arg(cost);
                            async move { inv.invoke_async(&mut c).await }
                        },
                    )
                    .await?;
                Ok(RateDecision {
                    allowed: ok == 1,
                    remaining: limit.saturating_sub(count),
                    retry_after: (ok != 1).then(|| Duration::from_millis(retry)),
                })
            }
            RateLimit::TokenBucket {
                rate,
                period,
                burst,
            } => {
                let key = ks.helper_key(&tag, "tat")?;
                // The period is capped like a window: the key's PX is one interval.
                let t_us = (period.min(crate::MAX_TTL).as_micros() as f64 / rate as f64).max(1.0);
                let (ok, remaining, retry_ms): (i64, u64, u64) = self
                    .store
                    .run_home(&key, Cmd::Script, false, "token-bucket limiter", |mut c| {
                        let mut inv = GCRA.key(&key);
                        inv.arg(&now).arg(t_us).arg(burst).arg(cost);
                        async move { inv.invoke_async(&mut c).await }
                    })
                    .await?;
                Ok(RateDecision {
                    allowed: ok == 1,
                    remaining,
                    retry_after: (ok != 1).then(|| Duration::from_millis(retry_ms)),
                })
            }
        }
    }
}
