//! The L2 against raw redis-rs, same server, same run: `get` one at a time
//! and 64 at once (with and without auto-batching), and `get_many(100)`
//! against one raw `MGET`. The server is a real redis-server started by
//! larder-testkit on loopback.
//!
//! Auto-batching is held to the limit of batching itself: raw `MGET`s of the
//! mean batch size the batcher formed (its `batch_stats`), the same 64 keys
//! at once. The 64-at-once clients are measured twice: by criterion, one
//! after the other, and taking turns in short rounds
//! (`l2/get/64 concurrent, interleaved`, with each caller's p99 latency in
//! `l2/get/64 concurrent p99`), which keeps a busy machine's swings out of
//! the ratios.
//!
//! `larder RedisStore` is the store's own `get`, as a service holding a
//! `RedisStore` calls it; `larder RedisStore as dyn Store` is `Store::get`
//! through `dyn Store`, as the `larder` facade calls it. Both run the same
//! boxed future, so the interleaved rounds measuring both double as an
//! A/A check: their ratio shows the run's noise. The goal is on the
//! second.

#![allow(missing_docs)] // criterion_group! generates undocumented functions
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time
#![allow(clippy::print_stdout)] // figures measured outside criterion are shown as they come

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use larder_benches::manifest::{Better, Manifest, wanted};
use larder_core::Store;
use larder_redis::{BatchStats, RedisConfig, RedisStore, Topology};
use larder_testkit::RedisServer;

const KEYS: usize = 10_000;
/// The interleaved client that gets through `dyn Store`, as the facade does.
const DYN_STORE: &str = "larder RedisStore as dyn Store";
const CONCURRENCY: usize = 64;
/// The raw peer of auto-batching: `MGET`s of the batcher's mean batch size.
const RAW_MGET: &str = "redis-rs MGET at the batcher's mean batch size";
/// The interleaved comparison: rounds of iterations per client, taking turns.
const ROUNDS: usize = 40;
const ROUND_ITERS: usize = 25;

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
    let mut batch_stats = BatchStats::default();
    for (id, s) in [
        ("larder RedisStore", &store),
        ("larder RedisStore auto-batch", &batched),
    ] {
        let before = s.batch_stats();
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
        if let (Some(a), Some(b)) = (before, s.batch_stats()) {
            batch_stats.batches += b.batches - a.batches;
            batch_stats.keys += b.keys - a.keys;
        }
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
    // The limit batching can reach: the same 64 keys as raw MGETs of the
    // batch size the batcher formed above, sent concurrently.
    let mean_batch = if batch_stats.batches > 0 {
        batch_stats.mean_batch_size()
    } else {
        // The batched bench was filtered out: measure the size apart.
        let before = batched.batch_stats().unwrap_or_default();
        rt.block_on(async {
            for r in 0..200 {
                let gets =
                    (0..CONCURRENCY).map(|j| batched.get(&keys[(r * 7919 + j * 131) % KEYS]));
                black_box(join_all(gets).await);
            }
        });
        let after = batched.batch_stats().unwrap_or_default();
        (after.keys - before.keys) as f64 / (after.batches - before.batches).max(1) as f64
    };
    let batch = (mean_batch.round() as usize).clamp(1, CONCURRENCY);
    println!(
        "{group}: auto-batch mean batch size {mean_batch:.2} keys; raw MGET batches of {batch}"
    );
    m.value(
        group,
        "auto-batch mean batch size",
        mean_batch,
        "keys",
        Better::Higher,
    );
    m.time(group, RAW_MGET, CONCURRENCY as u64);
    g.bench_function(RAW_MGET, |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % KEYS;
            let start = i;
            let raw_keys = &raw_keys;
            let raw = &raw;
            async move {
                let ks: Vec<&str> = (0..CONCURRENCY)
                    .map(|j| raw_keys[(start + j * 131) % KEYS].as_str())
                    .collect();
                let mgets = ks.chunks(batch).map(|part| {
                    let mut con = raw.clone();
                    async move {
                        redis::cmd("MGET")
                            .arg(part)
                            .query_async::<Vec<Option<Vec<u8>>>>(&mut con)
                            .await
                            .unwrap()
                    }
                });
                black_box(join_all(mgets).await)
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
    m.compare(group, "larder RedisStore auto-batch", RAW_MGET);

    // The same four clients again, and the store through `dyn Store`
    // (measured only here), taking turns in short rounds so that the
    // machine's noise (other builds on 2 cores) falls on all of them alike:
    // keys/s over the whole of each one's turns, and each caller's latency
    // (from the 64 gets' common start to its own answer).
    let group = "l2/get/64 concurrent, interleaved";
    let lat_group = "l2/get/64 concurrent p99";
    if wanted(group) || wanted(lat_group) {
        const CLIENTS: [&str; 5] = [
            "larder RedisStore",
            "larder RedisStore auto-batch",
            "redis-rs multiplexed",
            RAW_MGET,
            DYN_STORE,
        ];
        let mut lat: [Vec<u64>; 5] = Default::default();
        let mut busy = [Duration::ZERO; 5];
        let before = batched.batch_stats().unwrap_or_default();
        rt.block_on(async {
            for round in 0..ROUNDS {
                for who in 0..CLIENTS.len() {
                    for it in 0..ROUND_ITERS {
                        let start_key = (round * ROUND_ITERS + it) * 7919 % KEYS;
                        let t0 = Instant::now();
                        let took = |found: bool| {
                            assert!(found, "every bench key is present");
                            t0.elapsed().as_nanos() as u64
                        };
                        let nanos: Vec<u64> =
                            match who {
                                0 | 1 => {
                                    let s = if who == 0 { &store } else { &batched };
                                    join_all((0..CONCURRENCY).map(|j| {
                                        let k = &keys[(start_key + j * 131) % KEYS];
                                        async move { took(s.get(k).await.unwrap().is_some()) }
                                    }))
                                    .await
                                }
                                2 => join_all((0..CONCURRENCY).map(|j| {
                                    let k = &raw_keys[(start_key + j * 131) % KEYS];
                                    let con = raw.clone();
                                    async move { took(raw_get(con, k).await.unwrap().is_some()) }
                                }))
                                .await,
                                3 => {
                                    let ks: Vec<&str> = (0..CONCURRENCY)
                                        .map(|j| raw_keys[(start_key + j * 131) % KEYS].as_str())
                                        .collect();
                                    let parts = join_all(ks.chunks(batch).map(|part| {
                                        let mut con = raw.clone();
                                        async move {
                                            let vs = redis::cmd("MGET")
                                                .arg(part)
                                                .query_async::<Vec<Option<Vec<u8>>>>(&mut con)
                                                .await
                                                .unwrap();
                                            let t = took(vs.iter().all(Option::is_some));
                                            vec![t; vs.len()]
                                        }
                                    }))
                                    .await;
                                    parts.concat()
                                }
                                _ => {
                                    let s: &dyn Store = &store;
                                    join_all((0..CONCURRENCY).map(|j| {
                                        let k = &keys[(start_key + j * 131) % KEYS];
                                        async move { took(s.get(k).await.unwrap().is_some()) }
                                    }))
                                    .await
                                }
                            };
                        busy[who] += t0.elapsed();
                        lat[who].extend(nanos);
                    }
                }
            }
        });
        let after = batched.batch_stats().unwrap_or_default();
        let mean =
            (after.keys - before.keys) as f64 / (after.batches - before.batches).max(1) as f64;
        m.value(
            group,
            "auto-batch mean batch size",
            mean,
            "keys",
            Better::Higher,
        );
        let keys_per_client = (ROUNDS * ROUND_ITERS * CONCURRENCY) as f64;
        for (who, id) in CLIENTS.into_iter().enumerate() {
            let rate = keys_per_client / busy[who].as_secs_f64();
            let l = &mut lat[who];
            l.sort_unstable();
            let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1e3;
            println!(
                "{group}/{id}: {:.1} k keys/s, p50 {:.0} µs, p99 {:.0} µs",
                rate / 1e3,
                q(0.50),
                q(0.99)
            );
            m.value(group, id, rate, "keys/s", Better::Higher);
            m.value(lat_group, id, q(0.99), "µs", Better::Lower);
        }
        println!("{group}: auto-batch mean batch size {mean:.2} keys");
        m.compare(group, "larder RedisStore", "redis-rs multiplexed");
        m.compare(group, DYN_STORE, "redis-rs multiplexed");
        m.compare(group, "larder RedisStore auto-batch", RAW_MGET);
        m.compare(
            group,
            "larder RedisStore auto-batch",
            "redis-rs multiplexed",
        );
        m.compare(
            lat_group,
            "larder RedisStore auto-batch",
            "larder RedisStore",
        );
        m.compare(lat_group, "larder RedisStore", "redis-rs multiplexed");
        m.compare(lat_group, DYN_STORE, "redis-rs multiplexed");
    }

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
