//! `cargo xtask profile l2`: the L2 benchmark's plain workload (64
//! concurrent `GET`s of 200-byte values, one runtime of 2 workers), one
//! client, a given number of rounds, against a redis-server that the
//! caller started (its URL in the arguments), so that a counting profiler
//! sees the client alone. Two runs that differ only in the round count
//! give the client's instructions per get.
//!
//! ```text
//! l2_ops SUBJECT URL ROUNDS   SUBJECT: larder | larder-dyn | multiplexed | manager
//! ```
//! `larder` is `RedisStore::get` (its future unboxed); `larder-dyn` is
//! `Store::get` through `dyn Store` (boxed, as the facade reads);
//! `multiplexed` and `manager` are raw
//! redis-rs `GET`s through a `MultiplexedConnection` and a
//! `ConnectionManager` (what `RedisStore` runs on).

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

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [subject, url, rounds] = args.as_slice() else {
        return Err("usage: l2_ops larder|multiplexed|manager URL ROUNDS".into());
    };
    let rounds: usize = rounds.parse().map_err(|e| format!("ROUNDS: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = RedisStore::new(
            RedisConfig::builder(Topology::Standalone(url.clone()))
                .build()
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
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
                "larder-dyn" => {
                    let s: &dyn Store = &store;
                    store_round(&keys, pick, |k| s.get(k)).await
                }
                "multiplexed" => raw_round(&multiplexed, &raw_keys, pick).await,
                "manager" => raw_round(&manager, &raw_keys, pick).await,
                other => return Err(format!("unknown subject {other}")),
            };
            found += got.into_iter().filter(|&f| f).count();
        }
        if found != rounds * CONCURRENCY {
            return Err(format!("{found} of {} keys found", rounds * CONCURRENCY));
        }
        // A retried GET would count twice: the count is of clean runs only.
        if let Some(get) = store.stats().command("GET")
            && (get.errors > 0 || get.timeouts > 0)
        {
            return Err(format!(
                "the store saw {} failed and {} timed-out GETs: the count is not of one get each",
                get.errors, get.timeouts
            ));
        }
        println!("{subject}: {rounds} rounds of {CONCURRENCY} gets");
        Ok(())
    })
}
