use std::marker::PhantomData;
use std::time::Duration;

use larder_core::{Codec, DefaultCodec, Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::stats::Cmd;
use crate::store::RedisStore;

use super::{check_name, check_part};

/// A capped, expiring list of recent activity, newest first: push, trim and
/// expire happen in one `MULTI` (the tutorial's LPUSH, LTRIM, EXPIRE were
/// three round trips that could leave an uncapped or immortal list).
///
/// ```no_run
/// # async fn demo(store: larder_redis::RedisStore) -> larder_core::Result<()> {
/// use larder_redis::Feed;
/// use std::time::Duration;
/// let feed: Feed<String> = Feed::new(&store, "activity", 100, Duration::from_secs(86_400))?;
/// feed.push("user:42", &"bought TEA-01".to_string()).await?;
/// let recent = feed.recent("user:42", 10).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Feed<T, C: Codec = DefaultCodec> {
    store: RedisStore,
    name: String,
    cap: u64,
    ttl: Duration,
    codec: C,
    _items: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Feed<T, DefaultCodec> {
    /// A feed family called `name`: each owner's list keeps at most `cap`
    /// items and expires `ttl` after the last push.
    pub fn new(store: &RedisStore, name: &str, cap: u64, ttl: Duration) -> Result<Self> {
        Self::with_codec(store, name, cap, ttl, DefaultCodec::default())
    }
}

impl<T: Serialize + DeserializeOwned, C: Codec> Feed<T, C> {
    /// As [`Feed::new`], with a codec for the items.
    pub fn with_codec(
        store: &RedisStore,
        name: &str,
        cap: u64,
        ttl: Duration,
        codec: C,
    ) -> Result<Self> {
        check_name("feed name", name)?;
        if cap == 0 || ttl.as_millis() == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a feed needs cap >= 1 and ttl >= 1 ms",
            ));
        }
        Ok(Feed {
            store: store.clone(),
            name: name.to_owned(),
            cap,
            ttl,
            codec,
            _items: PhantomData,
        })
    }

    fn key(&self, owner: &str) -> Result<String> {
        check_part("feed owner", owner)?;
        self.store
            .keyspace()
            .helper_key(&format!("feed:{}:{owner}", self.name), "items")
    }

    /// Adds an item to the front of `owner`'s feed; the feed's length after trimming.
    pub async fn push(&self, owner: &str, item: &T) -> Result<u64> {
        let key = self.key(owner)?;
        let bytes = self.codec.encode(item)?;
        // Capped at MAX_TTL: a longer PEXPIRE fails after the LPUSH ran.
        let ms = crate::store::ttl_ms(self.ttl)?;
        let (len,): (u64,) = self
            .store
            .run_home(
                &key,
                Cmd::Pipeline,
                false,
                "LPUSH+LTRIM+PEXPIRE",
                |mut c| {
                    let (key, bytes) = (&key, &bytes);
                    async move {
                        redis::pipe()
                            .atomic()
                            .cmd("LPUSH")
                            .arg(key)
                            .arg(bytes)
                            .ignore()
                            .cmd("LTRIM")
                            .arg(key)
                            .arg(0)
                            .arg(self.cap - 1)
                            .ignore()
                            .cmd("PEXPIRE")
                            .arg(key)
                            .arg(ms)
                            .ignore()
                            .cmd("LLEN")
                            .arg(key)
                            .query_async(&mut c)
                            .await
                    }
                },
            )
            .await?;
        Ok(len)
    }

    /// Up to `n` newest items of `owner`'s feed, newest first. Items that do
    /// not decode are skipped and counted as corrupt.
    pub async fn recent(&self, owner: &str, n: u64) -> Result<Vec<T>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let key = self.key(owner)?;
        let raw: Vec<Vec<u8>> = self
            .store
            .run_home(&key, Cmd::Other, true, "LRANGE", |mut c| {
                let key = &key;
                async move {
                    redis::cmd("LRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(n - 1)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut out = Vec::with_capacity(raw.len());
        for b in raw {
            match self.codec.decode(&b) {
                Ok(v) => out.push(v),
                Err(_) => self.store.count_corrupt(&key),
            }
        }
        Ok(out)
    }

    /// Items in `owner`'s feed.
    pub async fn len(&self, owner: &str) -> Result<u64> {
        let key = self.key(owner)?;
        self.store
            .run_home(&key, Cmd::Other, true, "LLEN", |mut c| {
                let key = &key;
                async move { redis::cmd("LLEN").arg(key).query_async(&mut c).await }
            })
            .await
    }
}
