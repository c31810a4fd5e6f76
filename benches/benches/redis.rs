//! The L2 against raw redis-rs, same server, same run: `get` one at a time
//! and 64 at once (with and without auto-batching), and `get_many(100)`
//! against one raw `MGET`. The server is a real redis-server started by
//! larder-testkit on loopback.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use larder_benches::manifest::Manifest;
use larder_core::Store;
use larder_redis::{RedisConfig, RedisStore, Topology};
use larder_testkit::RedisServer;

const KEYS: usize = 10_000;
const CONCURRENCY: usize = 64;

/// One GET through any raw redis-rs connection (the peers).
async fn raw_get<C: redis::aio::ConnectionLike>(
    mut con: C,
    key: &str,
) -> redis::RedisResult<Option<Vec<u8>>> {
    redis::cmd("GET").arg(key).query_async(&mut con).await
}

fn key(i: usize) -> String {
    format!("bench:{i}")
}

fn redis_benches(c: &mut Criterion) {
    let mut m = Manifest::create("redis");
    let server =
        RedisServer::start().expect("redis-server (run `cargo xtask bench`, which installs it)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let (store, batched, raw, manager) = rt.block_on(async {
        let config = |batch: bool| {
            let b = RedisConfig::builder(Topology::Standalone(server.url()));
            let b = if batch { b.auto_batch(256) } else { b };
            b.build().unwrap()
        };
        let store = RedisStore::new(config(false)).unwrap();
        let batched = RedisStore::new(config(true)).unwrap();
        let raw = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let manager = redis::aio::ConnectionManager::new(server.client())
            .await
            .unwrap();
        let value = vec![b'x'; 200];
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|&i| key(i)).collect();
            let entries: Vec<larder_core::StoreEntry<'_>> = keys
                .iter()
                .map(|k| larder_core::StoreEntry {
                    key: k,
                    value: &value,
                    ttl: Duration::from_secs(3600),
                })
                .collect();
            store.set_many(&entries).await.unwrap();
        }
        (store, batched, raw, manager)
    });
    // The raw client reads the same keys under their namespaced names.
    let raw_keys: Vec<String> = (0..KEYS)
        .map(|i| format!("larder:{{{}}}", key(i)))
        .collect();
    let keys: Vec<String> = (0..KEYS).map(key).collect();

    let group = "l2/get/sequential";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    m.time(group, "larder RedisStore", 1);
    g.bench_function("larder RedisStore", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let k = &keys[i];
            let s = &store;
            async move { black_box(s.get(k).await.unwrap()) }
        })
    });
    m.time(group, "redis-rs multiplexed", 1);
    g.bench_function("redis-rs multiplexed", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let k = &raw_keys[i];
            let con = raw.clone();
            async move { black_box(raw_get(con, k).await.unwrap()) }
        })
    });
    m.time(group, "redis-rs ConnectionManager", 1);
    g.bench_function("redis-rs ConnectionManager", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let k = &raw_keys[i];
            let con = manager.clone();
            async move { black_box(raw_get(con, k).await.unwrap()) }
        })
    });
    g.finish();
    m.compare(group, "larder RedisStore", "redis-rs multiplexed");
    m.compare(group, "larder RedisStore", "redis-rs ConnectionManager");

    let group = "l2/get/64 concurrent";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(CONCURRENCY as u64));
    for (id, s) in [
        ("larder RedisStore", &store),
        ("larder RedisStore auto-batch", &batched),
    ] {
        m.time(group, id, CONCURRENCY as u64);
        g.bench_function(id, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 7919) % KEYS;
                let start = i;
                let keys = &keys;
                async move {
                    let gets = (0..CONCURRENCY).map(|j| s.get(&keys[(start + j * 131) % KEYS]));
                    black_box(join_all(gets).await)
                }
            })
        });
    }
    m.time(group, "redis-rs multiplexed", CONCURRENCY as u64);
    g.bench_function("redis-rs multiplexed", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let start = i;
            let raw_keys = &raw_keys;
            let raw = &raw;
            async move {
                let gets = (0..CONCURRENCY)
                    .map(|j| raw_get(raw.clone(), &raw_keys[(start + j * 131) % KEYS]));
                black_box(join_all(gets).await)
            }
        })
    });
    g.finish();
    m.compare(group, "larder RedisStore", "redis-rs multiplexed");
    m.compare(
        group,
        "larder RedisStore auto-batch",
        "redis-rs multiplexed",
    );

    let group = "l2/get_many/100 keys";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(100));
    m.time(group, "larder get_many", 100);
    g.bench_function("larder get_many", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let ks: Vec<&str> = (0..100)
                .map(|j| keys[(i + j * 97) % KEYS].as_str())
                .collect();
            let s = &store;
            async move { black_box(s.get_many(&ks).await.unwrap()) }
        })
    });
    m.time(group, "redis-rs MGET", 100);
    g.bench_function("redis-rs MGET", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let ks: Vec<&str> = (0..100)
                .map(|j| raw_keys[(i + j * 97) % KEYS].as_str())
                .collect();
            let mut con = raw.clone();
            async move {
                black_box(
                    redis::cmd("MGET")
                        .arg(&ks)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut con)
                        .await
                        .unwrap(),
                )
            }
        })
    });
    g.finish();
    m.compare(group, "larder get_many", "redis-rs MGET");
}

criterion_group!(benches, redis_benches);
criterion_main!(benches);
