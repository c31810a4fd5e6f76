//! `cargo xtask profile l2`: the L2 benchmark's plain workload (64
//! concurrent `GET`s of 200-byte values, one runtime of 2 workers), one
//! client, a given number of rounds, against a redis-server that the
//! caller started (its URL in the arguments), so that a counting profiler
//! sees the client alone. Two runs that differ only in the round count
//! give the client's instructions per get.
//!
//! ```text
//! l2_ops SUBJECT URL ROUNDS   SUBJECT: larder | multiplexed | manager
//!                              | batched | mget:N
//! ```
//! `larder` is `RedisStore::get` (the same boxed future as `Store::get`
//! through `dyn Store`, as the facade reads); `multiplexed` and `manager`
//! are raw
//! redis-rs `GET`s through a `MultiplexedConnection` and a
//! `ConnectionManager` (what `RedisStore` runs on). `batched` is
//! `RedisStore::get` with auto-batching on (it prints the mean batch size
//! it formed); `mget:N` sends the same 64 keys per round as raw `MGET`s of
//! `N` keys through the `ConnectionManager`, the limit batching is held to.

#![allow(clippy::print_stdout)] // a command-line tool

use futures_util::future::join_all;
use larder_core::{DEFAULT_NAMESPACE, KeySpace, Store, StoreEntry};
use larder_redis::{RedisConfig, RedisStore, Topology};

const KEYS: usize = 10_000;
const CONCURRENCY: usize = 64;

fn key(i: usize) -> String {
    format!("ops:{i}")
}

async fn raw_get<C: redis::aio::ConnectionLike>(mut con: C, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut con)
        .await
        .expect("GET")
}

/// One round of store gets: whether each key was found.
async fn store_round<'a, F, Fut>(
    keys: &'a [String],
    pick: impl Fn(usize) -> usize,
    get: F,
) -> Vec<bool>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = larder_core::Result<Option<Vec<u8>>>>,
{
    join_all((0..CONCURRENCY).map(|j| {
        let fut = get(&keys[pick(j)]);
        async move { fut.await.expect("get").is_some() }
    }))
    .await
}

/// One round of raw gets through clones of `con`: whether each key was found.
async fn raw_round<C>(con: &C, keys: &[String], pick: impl Fn(usize) -> usize) -> Vec<bool>
where
    C: redis::aio::ConnectionLike + Clone,
{
    join_all((0..CONCURRENCY).map(|j| {
        let c = con.clone();
        let k = &keys[pick(j)];
        async move { raw_get(c, k).await.is_some() }
    }))
    .await
}

/// One round of raw `MGET`s of `batch` keys each, sent concurrently:
/// whether each key was found.
async fn mget_round<C>(
    con: &C,
    keys: &[String],
    pick: impl Fn(usize) -> usize,
    batch: usize,
) -> Vec<bool>
where
    C: redis::aio::ConnectionLike + Clone,
{
    let ks: Vec<&str> = (0..CONCURRENCY).map(|j| keys[pick(j)].as_str()).collect();
    let mgets = ks.chunks(batch).map(|part| {
        let mut c = con.clone();
        async move {
            let got: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(part)
                .query_async(&mut c)
                .await
                .expect("MGET");
            got
        }
    });
    join_all(mgets)
        .await
        .into_iter()
        .flatten()
        .map(|v| v.is_some())
        .collect()
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [subject, url, rounds] = args.as_slice() else {
        return Err("usage: l2_ops larder|multiplexed|manager|batched|mget:N URL ROUNDS".into());
    };
    let rounds: usize = rounds.parse().map_err(|e| format!("ROUNDS: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let config = |batch: bool| {
            let b = RedisConfig::builder(Topology::Standalone(url.clone()));
            let b = if batch { b.auto_batch(256) } else { b };
            b.build().map_err(|e| e.to_string())
        };
        let store = RedisStore::new(config(false)?).map_err(|e| e.to_string())?;
        let batched = RedisStore::new(config(true)?).map_err(|e| e.to_string())?;
        // The store's keys (`{namespace}:{{key}}`) and the same keys as the
        // raw clients name them.
        let keys: Vec<String> = (0..KEYS).map(key).collect();
        let value = vec![b'x'; 200];
        for chunk in keys.chunks(500) {
            let entries: Vec<StoreEntry<'_>> = chunk
                .iter()
                .map(|k| StoreEntry {
                    key: k,
                    value: &value,
                    ttl: std::time::Duration::from_secs(600),
                })
                .collect();
            store.set_many(&entries).await.map_err(|e| e.to_string())?;
        }
        let ks = KeySpace::new(DEFAULT_NAMESPACE).map_err(|e| e.to_string())?;
        let raw_keys: Vec<String> = keys
            .iter()
            .map(|k| ks.data_key(k))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let multiplexed = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let manager = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| e.to_string())?;
        let mut found = 0usize;
        for round in 0..rounds {
            let start = round * 7919 % KEYS;
            let pick = |j: usize| (start + j * 131) % KEYS;
            let got: Vec<bool> = match subject.as_str() {
                "larder" => store_round(&keys, pick, |k| store.get(k)).await,
                "multiplexed" => raw_round(&multiplexed, &raw_keys, pick).await,
                "manager" => raw_round(&manager, &raw_keys, pick).await,
                "batched" => store_round(&keys, pick, |k| batched.get(k)).await,
                other => match other.strip_prefix("mget:").map(str::parse::<usize>) {
                    Some(Ok(n)) if n > 0 => mget_round(&manager, &raw_keys, pick, n).await,
                    _ => return Err(format!("unknown subject {other}")),
                },
            };
            found += got.into_iter().filter(|&f| f).count();
        }
        if found != rounds * CONCURRENCY {
            return Err(format!("{found} of {} keys found", rounds * CONCURRENCY));
        }
        // A retried GET or MGET would count twice: the count is of clean
        // runs only.
        for (s, command) in [(&store, "GET"), (&batched, "MGET")] {
            if let Some(c) = s.stats().command(command)
                && (c.errors > 0 || c.timeouts > 0)
            {
                return Err(format!(
                    "a store saw {} failed and {} timed-out {command}s: the count is not of one get each",
                    c.errors, c.timeouts
                ));
            }
        }
        if let Some(b) = batched.batch_stats()
            && b.batches > 0
        {
            println!("mean batch size {:.2}", b.mean_batch_size());
        }
        println!("{subject}: {rounds} rounds of {CONCURRENCY} gets");
        Ok(())
    })
}
