use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::LazyLock;
use std::time::Duration;

use larder_core::{Error, ErrorKind, Result};
use redis::Script;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::stats::Cmd;
use crate::store::RedisStore;

use super::{check_name, check_part};

/// `KEYS[1]`; `ARGV[1]` field, `ARGV[2]` value: HSET only on an existing object.
static SET_FIELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// `KEYS[1]`; `ARGV[1]` field, `ARGV[2]` by: HINCRBY only on an existing object.
static INCR_FIELD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
",
    )
});

/// A TTL in ms, capped at [`crate::MAX_TTL`] (a longer `PEXPIRE` fails
/// inside the `MULTI` after `DEL` and `HSET` ran, leaving the object without
/// an expiry).
fn ms(d: Duration) -> Result<u64> {
    crate::store::ttl_ms(d)
}

/// A struct stored as the fields of a Redis hash, one field per struct
/// field, each value in JSON (so `redis-cli HGETALL` is readable and integer
/// fields can be incremented in place with `HINCRBY`).
///
/// ```no_run
/// # async fn demo(store: larder_redis::RedisStore) -> larder_core::Result<()> {
/// use larder_redis::HashObject;
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
///
/// #[derive(Serialize, Deserialize)]
/// struct Cart { owner: String, items: u32, total_cents: u64 }
///
/// let carts: HashObject<Cart> = HashObject::new(&store, "cart")?;
/// carts.put("42", &Cart { owner: "ann".into(), items: 1, total_cents: 1250 }, Some(Duration::from_secs(3600))).await?;
/// carts.incr_field("42", "items", 1).await?;
/// let owner = carts.get_fields("42", &["owner"]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HashObject<T> {
    store: RedisStore,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> HashObject<T> {
    /// Objects of kind `name` (keys `{namespace}:{obj:name:id}:#fields`).
    pub fn new(store: &RedisStore, name: &str) -> Result<Self> {
        check_name("object kind", name)?;
        Ok(HashObject {
            store: store.clone(),
            name: name.to_owned(),
            _t: PhantomData,
        })
    }

    fn key(&self, id: &str) -> Result<String> {
        check_part("object id", id)?;
        self.store
            .keyspace()
            .helper_key(&format!("obj:{}:{id}", self.name), "fields")
    }

    /// Stores `value` (a struct or map) under `id`, replacing any previous
    /// object whole, with an optional TTL, in one `MULTI`.
    pub async fn put(&self, id: &str, value: &T, ttl: Option<Duration>) -> Result<()> {
        let key = self.key(id)?;
        let serde_json::Value::Object(map) = serde_json::to_value(value)
            .map_err(|e| Error::with_source(ErrorKind::Encode, "could not encode the object", e))?
        else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a hash object must serialize to a map",
            ));
        };
        if map.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a hash object needs at least one field",
            ));
        }
        let fields: Vec<(String, String)> =
            map.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        let ttl = ttl.map(ms).transpose()?;
        self.store
            .run_home(&key, Cmd::Pipeline, true, "DEL+HSET+PEXPIRE", |mut c| {
                let (key, fields) = (&key, &fields);
                async move {
                    let mut p = redis::pipe();
                    p.atomic().cmd("DEL").arg(key).ignore();
                    p.cmd("HSET").arg(key).arg(fields).ignore();
                    if let Some(ms) = ttl {
                        p.cmd("PEXPIRE").arg(key).arg(ms).ignore();
                    }
                    p.exec_async(&mut c).await
                }
            })
            .await
    }

    /// The object under `id`. Fields that are not valid JSON, or an object
    /// that no longer fits `T`, are [`ErrorKind::Corrupt`] (counted).
    pub async fn get(&self, id: &str) -> Result<Option<T>> {
        let key = self.key(id)?;
        let raw: HashMap<String, String> = self
            .store
            .run_home(&key, Cmd::Other, true, "HGETALL", |mut c| {
                let key = &key;
                async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }
            })
            .await?;
        if raw.is_empty() {
            return Ok(None);
        }
        let decode = || -> std::result::Result<T, serde_json::Error> {
            let mut map = serde_json::Map::new();
            for (k, v) in raw {
                map.insert(k, serde_json::from_str(&v)?);
            }
            serde_json::from_value(serde_json::Value::Object(map))
        };
        decode().map(Some).map_err(|e| {
            self.store.count_corrupt(&key);
            Error::with_source(ErrorKind::Corrupt, "stored hash does not decode", e)
        })
    }

    /// Some fields of the object under `id`, as JSON values, in order
    /// (`None` for a missing field or object).
    pub async fn get_fields(
        &self,
        id: &str,
        fields: &[&str],
    ) -> Result<Vec<Option<serde_json::Value>>> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.key(id)?;
        let raw: Vec<Option<String>> = self
            .store
            .run_home(&key, Cmd::Other, true, "HMGET", |mut c| {
                let key = &key;
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg(fields)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        raw.into_iter()
            .map(|v| {
                v.map(|s| {
                    serde_json::from_str(&s).map_err(|e| {
                        self.store.count_corrupt(&key);
                        Error::with_source(ErrorKind::Corrupt, "field is not JSON", e)
                    })
                })
                .transpose()
            })
            .collect()
    }

    /// Sets one field of an existing object (its TTL is kept); `false` if
    /// there is no object under `id`.
    pub async fn set_field<V: Serialize>(&self, id: &str, field: &str, value: &V) -> Result<bool> {
        let key = self.key(id)?;
        let json = serde_json::to_string(value)
            .map_err(|e| Error::with_source(ErrorKind::Encode, "could not encode the field", e))?;
        let n: i64 = self
            .store
            .run_home(&key, Cmd::Script, true, "set-field script", |mut c| {
                let mut inv = SET_FIELD.key(&key);
                inv.arg(field).arg(&json);
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        Ok(n == 1)
    }

    /// Adds `by` to an integer field of an existing object; the new value,
    /// or `None` if there is no object under `id`. A non-integer field is an
    /// [`ErrorKind::Backend`] error from Redis.
    pub async fn incr_field(&self, id: &str, field: &str, by: i64) -> Result<Option<i64>> {
        let key = self.key(id)?;
        self.store
            .run_home(&key, Cmd::Script, false, "incr-field script", |mut c| {
                let mut inv = INCR_FIELD.key(&key);
                inv.arg(field).arg(by);
                async move { inv.invoke_async(&mut c).await }
            })
            .await
    }

    /// Sets the TTL of the whole object; `false` if there is none.
    pub async fn expire(&self, id: &str, ttl: Duration) -> Result<bool> {
        let key = self.key(id)?;
        let ms = ms(ttl)?;
        let n: i64 = self
            .store
            .run_home(&key, Cmd::Other, true, "PEXPIRE", |mut c| {
                let key = &key;
                async move {
                    redis::cmd("PEXPIRE")
                        .arg(key)
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(n == 1)
    }

    /// Deletes the object; `true` if it existed.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let key = self.key(id)?;
        let n: i64 = self
            .store
            // Not retried after a possibly lost reply (it would answer `false`).
            .run_home(&key, Cmd::Del, false, "DEL", |mut c| {
                let key = &key;
                async move { redis::cmd("DEL").arg(key).query_async(&mut c).await }
            })
            .await?;
        Ok(n == 1)
    }
}
