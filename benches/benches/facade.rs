//! The multi-level cache (`larder::Cache`) against its own parts and
//! against what users write by hand, same run:
//! - `facade/l1 hit`: a fresh L1 hit through the facade against a bare
//!   `larder-memory` get of the same value type (goal: at most 1.3x the time);
//! - `facade/l2 hit`: an L2 hit through an L2-only facade against a bare
//!   `RedisStore` get of the same key through `dyn Store`, as the facade
//!   reads (goal: at most 1.1x the time);
//! - `clock/unix_millis`: one read of the facade's default wall clock
//!   (`CoarseClock`) against `SystemClock`'s, which every hit used to pay;
//! - `facade/stampede`: 1,000 concurrent `get_or_load` of one missing key,
//!   the loader's call count (goal: 1), in one instance and across three
//!   instances with the load lease;
//! - `facade/flash sale`: a Zipf(1.0) workload with a burst on five cold
//!   keys through Larder (L1 + Redis L2) against `moka::future::Cache` in
//!   front of redis-rs's `ConnectionManager` in front of the same loader:
//!   throughput and loads;
//! - `facade/write modes`: 95% writes over 1,000 hot keys into a real SQLite
//!   table, write-behind (coalesced batches) against write-through (one
//!   statement per write), both bounded (goal: at least 10x).

#![allow(missing_docs)] // criterion_group! generates undocumented functions
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use larder::core::{CoarseClock, Error, FnLoader, Store, SystemClock};
use larder::redis::{RedisConfig, RedisStore, Topology};
use larder::{Cache, Ttl};
use larder_benches::facade_hit::{self, KEYS, value};
use larder_benches::manifest::{Better, Manifest, wanted};
use larder_testkit::RedisServer;

/// The bare L2 get `facade/l2 hit` compares with: `Store::get` through
/// `dyn Store`, the facade's own path to the L2.
const L2_BARE: &str = "larder RedisStore get (dyn Store)";

/// How long the flash-sale workload's loader takes (an emulated query).
const LOAD_TIME: Duration = Duration::from_millis(1);

fn redis_store(url: &str, ns: &str) -> RedisStore {
    RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace(ns)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// A Zipf(1.0) rank sampler over `n` keys.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: u64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for r in 1..=n {
            sum += 1.0 / r as f64;
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        let u = rng.f64();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1) as u64
    }
}

fn facade_benches(c: &mut Criterion) {
    let mut m = Manifest::create("facade");
    let server =
        RedisServer::start().expect("redis-server (run `cargo xtask bench`, which installs it)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // --- L1 hit: the facade against a bare larder-memory get.
    let group = "facade/l1 hit";
    let (bare, cache) = facade_hit::caches();
    rt.block_on(facade_hit::fill(&bare, &cache)).unwrap();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    m.time(group, "larder Cache get (L1 hit)", 1);
    g.bench_function("larder Cache get (L1 hit)", |b| {
        b.iter(|| {
            i = facade_hit::next(i);
            // A fresh L1 hit never awaits: it is ready on the first poll.
            black_box(cache.get(&i).now_or_never().unwrap().unwrap())
        })
    });
    m.time(group, "larder-memory get", 1);
    g.bench_function("larder-memory get", |b| {
        b.iter(|| {
            i = facade_hit::next(i);
            black_box(bare.get(&i))
        })
    });
    g.finish();
    m.compare(group, "larder Cache get (L1 hit)", "larder-memory get");

    // --- L2 hit: an L2-only facade against a bare RedisStore get.
    let group = "facade/l2 hit";
    let store = redis_store(&server.url(), "bench-l2");
    let l2_only: Cache<u64, String> = Cache::builder()
        .no_memory()
        .redis(store.clone())
        .ttl(Ttl::fixed(Duration::from_secs(3600)))
        .loader(FnLoader::new(|k: u64| async move {
            Ok::<_, Error>(Some(value(k)))
        }))
        .build()
        .unwrap();
    const L2_KEYS: u64 = 5_000;
    rt.block_on(async {
        for k in 0..L2_KEYS {
            l2_only.get_or_load(&k).await.unwrap();
        }
    });
    let texts: Vec<String> = (0..L2_KEYS).map(|k| k.to_string()).collect();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    m.time(group, "larder Cache get (L2 hit)", 1);
    g.bench_function("larder Cache get (L2 hit)", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % L2_KEYS;
            let (c, k) = (&l2_only, i);
            async move { black_box(c.get(&k).await.unwrap()) }
        })
    });
    // Through `dyn Store`, as the facade reads: the ratio is the facade's
    // own work, not the box both pay.
    m.time(group, L2_BARE, 1);
    g.bench_function(L2_BARE, |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % L2_KEYS;
            let (s, k): (&dyn Store, _) = (&store, texts[i as usize].as_str());
            async move { black_box(s.get(k).await.unwrap()) }
        })
    });
    g.finish();
    m.compare(group, "larder Cache get (L2 hit)", L2_BARE);

    // --- The wall clock every facade hit reads: the default (coarse)
    // against the precise one.
    let group = "clock/unix_millis";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    for (id, clock) in [
        ("CoarseClock", CoarseClock::shared()),
        ("SystemClock", SystemClock::shared()),
    ] {
        m.time(group, id, 1);
        g.bench_function(id, |b| b.iter(|| black_box(clock.unix_millis())));
    }
    g.finish();
    m.compare(group, "CoarseClock", "SystemClock");

    flight_group(c, &mut m);
    stampede_group(&mut m, &rt, &server);
    flash_sale_group(&mut m, &rt, &server);
    write_modes_group(&mut m, &rt);
    coherence_group(&mut m, &rt, &server);
}

/// Invalidation latency: from the start of a write on one instance to the
/// eviction of the key from another instance's L1, per coherence mode.
fn coherence_group(m: &mut Manifest, rt: &tokio::runtime::Runtime, server: &RedisServer) {
    let group = "facade/coherence";
    if !wanted(group) {
        return;
    }
    for (mode, name) in [
        (larder::CoherenceMode::Tracking, "tracking"),
        (larder::CoherenceMode::PubSub, "pub/sub"),
    ] {
        let mut lat = rt.block_on(invalidation_latency(&server.url(), mode));
        lat.sort_unstable();
        let q = |p: f64| f64::from(lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]);
        m.value(
            group,
            &format!("{name}: write to remote L1 eviction, p50"),
            q(0.5),
            "µs",
            Better::Lower,
        );
        m.value(
            group,
            &format!("{name}: write to remote L1 eviction, p99"),
            q(0.99),
            "µs",
            Better::Lower,
        );
    }
}

/// 300 writes (`insert`: the cache only, no source) on instance A of a key
/// that instance B holds in its L1; for each, the time until B's L1 lost it.
async fn invalidation_latency(url: &str, mode: larder::CoherenceMode) -> Vec<u32> {
    let ns = format!("bench-coherence-{}-{mode:?}", std::process::id());
    let make = || -> Cache<u64, String> {
        Cache::builder()
            .redis(redis_store(url, &ns))
            .ttl(Ttl::fixed(Duration::from_secs(600)))
            .loader(FnLoader::new(|k: u64| async move {
                Ok::<_, Error>(Some(value(k)))
            }))
            .coherence(mode)
            .build()
            .unwrap()
    };
    let (a, b) = (make(), make());
    for c in [&a, &b] {
        tokio::time::timeout(Duration::from_secs(10), c.coherence_ready())
            .await
            .expect("the invalidation stream came up");
    }
    let evicted = |c: &Cache<u64, String>| c.stats().coherence.map_or(0, |s| s.evicted);
    let mut lat = Vec::with_capacity(300);
    for i in 0..300u64 {
        // B holds the key in its L1 (its own fill's invalidation may evict
        // it once: read until an L1 hit).
        loop {
            let hits = b.stats().l1_hits;
            black_box(b.get_or_load(&1).await.unwrap());
            if b.stats().l1_hits > hits {
                break;
            }
            tokio::task::yield_now().await;
        }
        let before = evicted(&b);
        let t0 = Instant::now();
        a.insert(&1, format!("v{i}")).await.unwrap();
        let deadline = t0 + Duration::from_secs(5);
        while evicted(&b) == before {
            assert!(Instant::now() < deadline, "no eviction within 5 s");
            tokio::task::yield_now().await;
        }
        lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    if let Some(r) = a.redis() {
        let _ = r.clear_namespace().await;
    }
    a.close().await;
    b.close().await;
    lat
}

/// 10,000 waiters on one key: each registers its waker and is woken once.
/// Larder's `SingleFlight` (a slot per waiter) against the scan it replaced
/// (every poll compares its waker with every registered one), same run.
fn flight_group(c: &mut Criterion, m: &mut Manifest) {
    use larder_memory::{Join, SingleFlight};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};

    const WAITERS: usize = 10_000;
    let group = "flight/10,000 waiters on one key";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(WAITERS as u64));
    g.sample_size(10);
    m.time(group, "larder SingleFlight", WAITERS as u64);
    g.bench_function("larder SingleFlight", |b| {
        b.iter(|| {
            let flights: SingleFlight<u64, u64> = SingleFlight::with_shards(1);
            let Join::Leader(leader) = flights.join(1) else {
                unreachable!()
            };
            let data: Vec<Box<u8>> = (0..WAITERS).map(|_| Box::new(0u8)).collect();
            let wakers: Vec<Waker> = data.iter().map(|d| noop_waker_at(&**d)).collect();
            let mut waits: Vec<_> = (0..WAITERS)
                .map(|_| match flights.join(1) {
                    Join::Wait(w) => w,
                    Join::Leader(_) => unreachable!(),
                })
                .collect();
            for (w, k) in waits.iter_mut().zip(&wakers) {
                let _ = Pin::new(w).poll(&mut Context::from_waker(k));
            }
            leader.finish(7);
            for w in &mut waits {
                let _ = black_box(Pin::new(w).poll(&mut Context::from_waker(Waker::noop())));
            }
        })
    });
    m.time(
        group,
        "will_wake scan (the replaced design)",
        WAITERS as u64,
    );
    g.bench_function("will_wake scan (the replaced design)", |b| {
        b.iter(|| {
            // Distinct wakers, as distinct tasks have: every registration
            // scans the whole list and finds no match.
            let data: Vec<Box<u8>> = (0..WAITERS).map(|_| Box::new(0u8)).collect();
            let wakers: Vec<Waker> = data.iter().map(|d| noop_waker_at(&**d)).collect();
            let list = parking_lot::Mutex::new(Vec::<Waker>::new());
            for k in &wakers {
                let mut l = list.lock();
                if !l.iter().any(|w| w.will_wake(k)) {
                    l.push(k.clone());
                }
            }
            for w in list.into_inner() {
                w.wake();
            }
        })
    });
    g.finish();
    m.compare(
        group,
        "larder SingleFlight",
        "will_wake scan (the replaced design)",
    );
}

/// A no-op waker whose identity is `at` (so `will_wake` tells them apart).
fn noop_waker_at(at: *const u8) -> std::task::Waker {
    use std::task::{RawWaker, RawWakerVTable, Waker};
    fn clone(p: *const ()) -> RawWaker {
        RawWaker::new(p, &VTABLE)
    }
    fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: the vtable's functions never dereference the pointer.
    unsafe { Waker::from_raw(RawWaker::new(at.cast(), &VTABLE)) }
}

fn stampede_group(m: &mut Manifest, rt: &tokio::runtime::Runtime, server: &RedisServer) {
    let group = "facade/stampede";
    if !wanted(group) {
        return;
    }
    let (one, three) = rt.block_on(async {
        let one = stampede(&server.url(), 1).await;
        let three = stampede(&server.url(), 3).await;
        (one, three)
    });
    m.value(
        group,
        "loads, 1000 callers, 1 instance",
        one as f64,
        "loads",
        Better::Lower,
    );
    m.value(
        group,
        "loads, 1000 callers, 3 instances with the lease",
        three as f64,
        "loads",
        Better::Lower,
    );
}

/// Larder (L1 + L2) against moka + redis-rs by hand.
fn flash_sale_group(m: &mut Manifest, rt: &tokio::runtime::Runtime, server: &RedisServer) {
    let group = "facade/flash sale";
    if !wanted(group) {
        return;
    }
    let (larder_ops, larder_loads, larder_p99) = rt.block_on(flash_sale_larder(&server.url()));
    let (moka_ops, moka_loads, moka_p99) = rt.block_on(flash_sale_moka(server));
    m.value(
        group,
        "larder L1 + L2 throughput",
        larder_ops,
        "ops/s",
        Better::Higher,
    );
    m.value(
        group,
        "moka + redis-rs throughput",
        moka_ops,
        "ops/s",
        Better::Higher,
    );
    m.compare(
        group,
        "larder L1 + L2 throughput",
        "moka + redis-rs throughput",
    );
    m.value(
        group,
        "larder L1 + L2 loads",
        larder_loads as f64,
        "loads",
        Better::Lower,
    );
    m.value(
        group,
        "moka + redis-rs loads",
        moka_loads as f64,
        "loads",
        Better::Lower,
    );
    m.compare(group, "larder L1 + L2 loads", "moka + redis-rs loads");
    m.value(group, "larder L1 + L2 p99", larder_p99, "µs", Better::Lower);
    m.value(group, "moka + redis-rs p99", moka_p99, "µs", Better::Lower);
    m.compare(group, "larder L1 + L2 p99", "moka + redis-rs p99");
}

fn write_modes_group(m: &mut Manifest, rt: &tokio::runtime::Runtime) {
    let group = "facade/write modes";
    if !wanted(group) {
        return;
    }
    let behind = rt.block_on(write_mode(true));
    let through = rt.block_on(write_mode(false));
    m.value(
        group,
        "write-behind into SQLite",
        behind,
        "ops/s",
        Better::Higher,
    );
    m.value(
        group,
        "write-through into SQLite",
        through,
        "ops/s",
        Better::Higher,
    );
    m.compare(
        group,
        "write-behind into SQLite",
        "write-through into SQLite",
    );
}

/// A SQLite table of (key, value) behind a mutex, as a `Writer` and a
/// `Loader`; writes run on the blocking pool.
#[derive(Clone)]
struct Sqlite(Arc<parking_lot::Mutex<rusqlite::Connection>>);

impl Sqlite {
    fn open(dir: &std::path::Path) -> Self {
        let c = rusqlite::Connection::open(dir.join("bench.db")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "NORMAL").unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            .unwrap();
        Sqlite(Arc::new(parking_lot::Mutex::new(c)))
    }

    async fn run(&self, entries: Vec<(u64, String)>) -> larder::core::Result<()> {
        let db = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut c = db.lock();
            let tx = c.transaction()?;
            {
                let mut st =
                    tx.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)")?;
                for (k, v) in &entries {
                    st.execute(rusqlite::params![*k as i64, v])?;
                }
            }
            tx.commit()
        })
        .await
        .map_err(|e| Error::with_source(larder::core::ErrorKind::Source, "task", e))?
        .map_err(|e| Error::with_source(larder::core::ErrorKind::Source, "sqlite", e))
    }
}

impl larder::core::Writer<u64, String> for Sqlite {
    async fn write(&self, key: &u64, value: &String) -> larder::core::Result<()> {
        self.run(vec![(*key, value.clone())]).await
    }
    async fn delete(&self, _key: &u64) -> larder::core::Result<()> {
        Ok(())
    }
    async fn write_many(&self, entries: &[(u64, String)]) -> larder::core::Result<()> {
        self.run(entries.to_vec()).await
    }
}

impl larder::core::Loader<u64, String> for Sqlite {
    async fn load(&self, key: &u64) -> larder::core::Result<Option<String>> {
        Ok(Some(value(*key)))
    }
}

/// 64 tasks, 95% writes over 1,000 hot keys, into SQLite: ops/s (for
/// write-behind, until everything it accepted is written).
async fn write_mode(behind: bool) -> f64 {
    let dir = std::env::temp_dir().join(format!("larder-bench-wb-{}-{behind}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = Sqlite::open(&dir);
    let b = Cache::<u64, String>::builder()
        .loader(db.clone())
        .writer(db.clone());
    let cache = if behind {
        b.write_behind(
            larder::WriteBehind::new()
                .batch(500)
                .capacity(10_000)
                .interval(Duration::from_millis(50)),
        )
        .build()
        .unwrap()
    } else {
        b.build().unwrap()
    };
    const OPS: usize = 500;
    let start = Instant::now();
    let tasks = (0..TASKS).map(|t| {
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            for i in 0..OPS {
                let k = rng.u64(..1000);
                if rng.f64() < 0.95 {
                    let v = format!("{t}:{i}");
                    if behind {
                        cache.put_behind(&k, v).await.unwrap();
                    } else {
                        cache.put(&k, v).await.unwrap();
                    }
                } else {
                    black_box(cache.get_or_load(&k).await.unwrap());
                }
            }
        })
    });
    for t in futures_util::future::join_all(tasks).await {
        t.unwrap();
    }
    cache.close().await;
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (TASKS * OPS) as f64 / secs
}

/// 1,000 concurrent `get_or_load` of one missing key over `instances`
/// caches sharing one Redis (with the load lease when more than one): how
/// many loads ran.
async fn stampede(url: &str, instances: usize) -> u64 {
    let loads = Arc::new(AtomicU64::new(0));
    let ns = format!("bench-stampede-{instances}");
    let caches: Vec<Cache<u64, String>> = (0..instances)
        .map(|_| {
            let loads = Arc::clone(&loads);
            let b = Cache::builder()
                .redis(redis_store(url, &ns))
                .loader(FnLoader::new(move |k: u64| {
                    let loads = Arc::clone(&loads);
                    async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, Error>(Some(value(k)))
                    }
                }));
            let b = if instances > 1 {
                b.lease(Duration::from_secs(5))
                    .lease_poll(Duration::from_millis(5))
            } else {
                b
            };
            b.build().unwrap()
        })
        .collect();
    let calls = (0..1000).map(|i| {
        let c = caches[i % instances].clone();
        tokio::spawn(async move { c.get_or_load(&424_242).await })
    });
    for r in futures_util::future::join_all(calls).await {
        r.unwrap().unwrap();
    }
    loads.load(Ordering::SeqCst)
}

const TASKS: usize = 64;
const OPS_PER_TASK: usize = 5_000;
const HOT: [u64; 5] = [50_001, 50_002, 50_003, 50_004, 50_005];

/// The workload's key for request `j` of a task: Zipf, with the middle
/// third of each task's requests sent 80% to five cold keys.
fn flash_key(j: usize, rng: &mut fastrand::Rng, zipf: &Zipf) -> u64 {
    let sale = (OPS_PER_TASK / 3..2 * OPS_PER_TASK / 3).contains(&j);
    if sale && rng.f64() < 0.8 {
        HOT[rng.usize(..HOT.len())]
    } else {
        zipf.sample(rng)
    }
}

fn p99(mut lat: Vec<u32>) -> f64 {
    lat.sort_unstable();
    f64::from(lat[(lat.len() * 99 / 100).min(lat.len() - 1)])
}

async fn flash_sale_larder(url: &str) -> (f64, u64, f64) {
    let loads = Arc::new(AtomicU64::new(0));
    let l = Arc::clone(&loads);
    let cache: Cache<u64, String> = Cache::builder()
        .memory(20_000)
        .redis(redis_store(
            url,
            &format!("bench-flash-{}", std::process::id()),
        ))
        .ttl(Ttl::fixed(Duration::from_secs(300)))
        .loader(FnLoader::new(move |k: u64| {
            let l = Arc::clone(&l);
            async move {
                l.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(LOAD_TIME).await;
                Ok::<_, Error>(Some(value(k)))
            }
        }))
        .build()
        .unwrap();
    let zipf = Arc::new(Zipf::new(KEYS));
    let start = Instant::now();
    let tasks = (0..TASKS).map(|t| {
        let (cache, zipf) = (cache.clone(), Arc::clone(&zipf));
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            let mut lat = Vec::with_capacity(OPS_PER_TASK);
            for j in 0..OPS_PER_TASK {
                let k = flash_key(j, &mut rng, &zipf);
                let t0 = Instant::now();
                black_box(cache.get_or_load(&k).await.unwrap());
                lat.push(t0.elapsed().as_micros() as u32);
            }
            lat
        })
    });
    let mut lat = Vec::new();
    for t in futures_util::future::join_all(tasks).await {
        lat.extend(t.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    cache.close().await;
    (
        (TASKS * OPS_PER_TASK) as f64 / secs,
        loads.load(Ordering::Relaxed),
        p99(lat),
    )
}

/// What users write by hand: moka's single flight (`try_get_with`) in
/// front of a Redis GET, then the loader and a SET on a miss.
async fn flash_sale_moka(server: &RedisServer) -> (f64, u64, f64) {
    let loads = Arc::new(AtomicU64::new(0));
    let moka: moka::future::Cache<u64, String> = moka::future::Cache::builder()
        .max_capacity(20_000)
        .time_to_live(Duration::from_secs(300))
        .build();
    let redis = redis::aio::ConnectionManager::new(server.client())
        .await
        .unwrap();
    let prefix = format!("bench-moka-{}", std::process::id());
    let zipf = Arc::new(Zipf::new(KEYS));
    let start = Instant::now();
    let tasks = (0..TASKS).map(|t| {
        let (moka, redis, zipf, loads, prefix) = (
            moka.clone(),
            redis.clone(),
            Arc::clone(&zipf),
            Arc::clone(&loads),
            prefix.clone(),
        );
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64);
            let mut lat = Vec::with_capacity(OPS_PER_TASK);
            for j in 0..OPS_PER_TASK {
                let k = flash_key(j, &mut rng, &zipf);
                let t0 = Instant::now();
                let (mut redis, loads, prefix) = (redis.clone(), Arc::clone(&loads), &prefix);
                let v: Result<String, Arc<redis::RedisError>> = moka
                    .try_get_with(k, async move {
                        let key = format!("{prefix}:{k}");
                        let hit: Option<String> =
                            redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
                        if let Some(v) = hit {
                            return Ok(v);
                        }
                        loads.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(LOAD_TIME).await;
                        let v = value(k);
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(&v)
                            .arg("EX")
                            .arg(300)
                            .exec_async(&mut redis)
                            .await?;
                        Ok(v)
                    })
                    .await;
                black_box(v.unwrap());
                lat.push(t0.elapsed().as_micros() as u32);
            }
            lat
        })
    });
    let mut lat = Vec::new();
    for t in futures_util::future::join_all(tasks).await {
        lat.extend(t.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    (
        (TASKS * OPS_PER_TASK) as f64 / secs,
        loads.load(Ordering::Relaxed),
        p99(lat),
    )
}

criterion_group!(benches, facade_benches);
criterion_main!(benches);
