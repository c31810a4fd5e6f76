//! The read patterns past the basics, each shown on its own cache with a
//! mock clock, so that minutes of cache time pass in milliseconds and every
//! effect is reproducible:
//!
//! 1. **XFetch early refresh**: a hot value is reloaded shortly *before* it
//!    expires, at random, earlier the slower its load; nobody waits.
//! 2. **Stale-while-revalidate** (`Ttl::stale_for`): a value past its fresh
//!    time is served at once while one background load refreshes it; and
//!    **stale-if-error**: when the source fails, a recent value is served.
//! 3. **Hot keys** (`hot_keys(k)`): the most read keys, found in fixed
//!    memory, and refreshed ahead of expiry.
//! 4. **Warming** (`warm`): bulk loads before traffic, with progress and a
//!    report of what was skipped, loaded and failed.
//! 5. **Negative caching** (`negative_ttl`): "not found" cached briefly, so
//!    a flood of reads for a missing id costs one query.
//!
//! Run: `cargo run --example advanced` (L1 only). With
//! `REDIS_URL=redis://127.0.0.1:6379` every cache also gets a Redis L2
//! (namespace `larder-example-advanced`, cleared at the start); the output
//! is the same.
//!
//! Loads "take time" by advancing the mock clock, which is how the cache
//! measures them: a 500 ms load here is a 500 ms load to XFetch.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use larder::prelude::*;
use larder::redis::redact;
use larder_examples::shop::Zipf;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let redis = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => None,
    };
    match run(redis.as_deref()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("advanced: {e} (kind {:?})", e.kind());
            ExitCode::FAILURE
        }
    }
}

/// What every section shares: the mock clock and the optional L2.
struct Env {
    clock: MockClock,
    store: Option<RedisStore>,
}

impl Env {
    /// A builder on the mock clock (with the L2 when there is one), with
    /// seeded random draws (XFetch, TTL jitter) so the run is reproducible.
    fn builder<K: CacheKey, V>(&self) -> CacheBuilder<K, V>
    where
        V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let b = Cache::<K, V>::builder()
            .memory(10_000)
            .clock(self.clock.shared())
            .seed(7);
        match &self.store {
            Some(s) => b.redis(s.clone()),
            None => b,
        }
    }

    /// Mock time elapsed, in milliseconds.
    fn ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

/// Waits (real time) until the cache's background loads have finished.
async fn settle<K: CacheKey, V>(cache: &Cache<K, V>)
where
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    for _ in 0..5_000 {
        if cache.stats().in_flight == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn run(redis: Option<&str>) -> Result<()> {
    let store = match redis {
        Some(url) => {
            let store = RedisStore::new(
                RedisConfig::builder(Topology::Standalone(url.to_owned()))
                    .namespace("larder-example-advanced")
                    .build()?,
            )?;
            store.clear_namespace().await?;
            println!("L2: Redis at {}", redact(url));
            Some(store)
        }
        None => {
            println!("L2: none (set REDIS_URL to add Redis)");
            None
        }
    };
    let env = Env {
        clock: MockClock::new(),
        store,
    };
    xfetch(&env).await?;
    stale(&env).await?;
    hot_keys(&env).await?;
    warming(&env).await?;
    negative(&env).await?;
    Ok(())
}

/// 1. XFetch: two reports, one slow to compute (500 ms) and one fast
///    (5 ms), each read every 10 ms over the last 5 seconds of its life.
async fn xfetch(env: &Env) -> Result<()> {
    println!("-- 1. XFetch early refresh (TTL 60 s, beta 1.0)");
    let clock = env.clock.clone();
    let cache = env
        .builder::<&'static str, String>()
        .ttl(Ttl::fixed(Duration::from_secs(60)))
        .loader(FnLoader::new(move |report: &'static str| {
            let clock = clock.clone();
            async move {
                // The query's duration, as the cache measures it.
                let ms = if report.ends_with("slow") { 500 } else { 5 };
                clock.advance(Duration::from_millis(ms));
                Ok(Some(format!(
                    "{report} computed at {} ms",
                    clock.elapsed().as_millis()
                )))
            }
        }))
        .build()?;
    for (report, load_ms) in [("report:slow", 500), ("report:fast", 5)] {
        cache.get_or_load(&report).await?;
        let expires_at = env.ms() + 60_000;
        let before = cache.stats();
        let (mut reads, mut refreshed_left) = (0, None);
        for left in (0..=5_000u64).rev().step_by(10) {
            // Move the clock to `left` ms before the first value expires
            // (a refresh's own load time may have moved it past that).
            let now = env.ms();
            if now < expires_at - left {
                env.clock
                    .advance(Duration::from_millis(expires_at - left - now));
            }
            cache.get_or_load(&report).await?;
            reads += 1;
            if refreshed_left.is_none() && cache.stats().early_refreshes > before.early_refreshes {
                refreshed_left = Some(left);
                settle(&cache).await;
            }
        }
        let s = cache.stats();
        let waited = s.l1_misses - before.l1_misses;
        match refreshed_left {
            Some(left) => println!(
                "{report} (load {load_ms} ms): refreshed early {:.2} s before expiry; {reads} reads, {waited} waited for a load",
                left as f64 / 1e3
            ),
            None => println!(
                "{report} (load {load_ms} ms): no early refresh (too cheap to bother); {reads} reads, {waited} waited for a load"
            ),
        }
    }
    cache.close().await;

    // The same slow report without XFetch: the first read after expiry
    // waits for the whole load.
    let clock = env.clock.clone();
    let plain = env
        .builder::<&'static str, String>()
        .ttl(Ttl::fixed(Duration::from_secs(60)))
        .xfetch_beta(0.0)
        .loader(FnLoader::new(move |report: &'static str| {
            let clock = clock.clone();
            async move {
                clock.advance(Duration::from_millis(500));
                Ok(Some(report.to_owned()))
            }
        }))
        .build()?;
    plain.get_or_load(&"report:slow-plain").await?;
    for _ in 0..600 {
        env.clock.advance(Duration::from_millis(100));
        let t0 = env.ms();
        plain.get_or_load(&"report:slow-plain").await?;
        let took = env.ms() - t0;
        if took > 0 {
            println!(
                "report:slow with xfetch_beta(0.0): no early refresh; the first read after expiry waited {took} ms"
            );
            break;
        }
    }
    plain.close().await;
    Ok(())
}

/// 2. Stale-while-revalidate, then stale-if-error.
async fn stale(env: &Env) -> Result<()> {
    println!("-- 2. Stale-while-revalidate (TTL 10 s, stale_for 30 s) and stale-if-error");
    let loads = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let loader = {
        let (clock, loads, failing) = (env.clock.clone(), Arc::clone(&loads), Arc::clone(&failing));
        move |sku: &'static str| {
            let (clock, loads, failing) = (clock.clone(), Arc::clone(&loads), Arc::clone(&failing));
            async move {
                clock.advance(Duration::from_millis(300));
                if failing.load(Ordering::SeqCst) {
                    return Err(Error::new(ErrorKind::Source, "the price service is down"));
                }
                let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(Some(format!("{sku} price v{n}")))
            }
        }
    };
    let cache = env
        .builder::<&'static str, String>()
        .ttl(Ttl::fixed(Duration::from_secs(10)).stale_for(Duration::from_secs(30)))
        .loader(FnLoader::new(loader.clone()))
        .build()?;
    let key = "price:tea";
    let t0 = env.ms();
    let v = cache.get_or_load(&key).await?.unwrap_or_default();
    println!("cold read: {v:?}, waited {} ms for the load", env.ms() - t0);
    env.clock.advance(Duration::from_secs(12));
    let t0 = env.ms();
    let v = cache.get_or_load(&key).await?.unwrap_or_default();
    println!(
        "12 s later (stale, in the grace window): {v:?} served in {} ms; stale_served={}, a refresh runs in the background",
        env.ms() - t0,
        cache.stats().stale_served
    );
    settle(&cache).await;
    let v = cache.get_or_load(&key).await?.unwrap_or_default();
    println!("after the refresh: {v:?}");
    cache.close().await;

    // Stale-if-error: no grace window; when the load fails, a value that
    // went stale less than 60 s ago is served instead of the error.
    let sie = env
        .builder::<&'static str, String>()
        .ttl(Ttl::fixed(Duration::from_secs(10)))
        .stale_if_error(Duration::from_secs(60))
        .loader(FnLoader::new(loader))
        .build()?;
    let key = "price:coffee";
    sie.get_or_load(&key).await?;
    failing.store(true, Ordering::SeqCst);
    env.clock.advance(Duration::from_secs(15));
    let v = sie.get_or_load(&key).await?.unwrap_or_default();
    println!(
        "source down, 15 s later: {v:?} (stale_if_error={})",
        sie.stats().stale_if_error
    );
    env.clock.advance(Duration::from_secs(60));
    match sie.get_or_load(&key).await {
        Ok(v) => println!("source down, 75 s later: unexpectedly {v:?}"),
        Err(e) => println!(
            "source down, 75 s later: error {:?}: {} (stale for longer than 60 s)",
            e.kind(),
            e.message()
        ),
    }
    sie.close().await;
    Ok(())
}

/// 3. Hot keys: Zipf reads over 1,000 products; the top 3, then a hot key
///    refreshed before it expires.
async fn hot_keys(env: &Env) -> Result<()> {
    println!("-- 3. Hot keys (hot_keys(3), TTL 10 s, refreshed 1 s ahead)");
    let cache = env
        .builder::<(&'static str, u64), String>()
        .ttl(Ttl::fixed(Duration::from_secs(10)))
        .hot_keys(3)
        .loader(FnLoader::new(|(_, id): (&'static str, u64)| async move {
            Ok(Some(format!("product {id}")))
        }))
        .build()?;
    let zipf = Zipf::new(1_000, 1.0);
    let mut rng = fastrand::Rng::with_seed(3);
    let reads = 40_000;
    for _ in 0..reads {
        cache.get_or_load(&("hot", zipf.sample(&mut rng))).await?;
    }
    println!(
        "{reads} reads, Zipf(1.0) over 1000 products; hottest (estimated reads in the window):"
    );
    for (i, ((_, id), n)) in cache.hot_keys().iter().enumerate() {
        println!("  #{} product {id}: ~{n}", i + 1);
    }
    // 9.5 s later the hottest key has 0.5 s left: its next reads start a
    // refresh in the background, and nobody waits at expiry.
    env.clock.advance(Duration::from_millis(9_500));
    let misses = cache.stats().l1_misses;
    for _ in 0..100 {
        cache.get_or_load(&("hot", 0)).await?;
    }
    settle(&cache).await;
    env.clock.advance(Duration::from_secs(1));
    cache.get_or_load(&("hot", 0)).await?;
    let s = cache.stats();
    println!(
        "product 0 read 101 times across its expiry: hot_refreshes={}, reads that waited for a load={}",
        s.hot_refreshes,
        s.l1_misses - misses
    );
    println!(
        "(the sketch is 64 KiB whatever the number of keys; a HashMap of counts would hold every key ever read)"
    );
    cache.close().await;
    Ok(())
}

/// A catalogue whose bulk query (`load_many`) serves a batch in one
/// round trip; ids 900 and up sit on a partition that times out.
struct Catalogue {
    clock: MockClock,
    bulk_queries: AtomicU64,
}

impl Loader<(&'static str, u64), String> for Catalogue {
    async fn load(&self, key: &(&'static str, u64)) -> Result<Option<String>> {
        self.load_many(std::slice::from_ref(key))
            .await
            .map(|mut v| v.pop().flatten())
    }

    async fn load_many(&self, keys: &[(&'static str, u64)]) -> Result<Vec<Option<String>>> {
        self.bulk_queries.fetch_add(1, Ordering::SeqCst);
        self.clock.advance(Duration::from_millis(20));
        if keys.iter().any(|(_, id)| *id >= 900) {
            return Err(Error::new(
                ErrorKind::Timeout,
                "partition 9 did not answer (simulated)",
            ));
        }
        Ok(keys
            .iter()
            .map(|(_, id)| Some(format!("product {id}")))
            .collect())
    }
}

/// 4. Warming 1,000 products in batches of 100, four batches at a time,
///    with the first 50 already cached.
async fn warming(env: &Env) -> Result<()> {
    println!("-- 4. Warming (1000 keys, batches of 100, 4 at a time)");
    let catalogue = Arc::new(Catalogue {
        clock: env.clock.clone(),
        bulk_queries: AtomicU64::new(0),
    });
    struct Shared(Arc<Catalogue>);
    impl Loader<(&'static str, u64), String> for Shared {
        async fn load(&self, key: &(&'static str, u64)) -> Result<Option<String>> {
            self.0.load(key).await
        }
        async fn load_many(&self, keys: &[(&'static str, u64)]) -> Result<Vec<Option<String>>> {
            self.0.load_many(keys).await
        }
    }
    let cache = env
        .builder::<(&'static str, u64), String>()
        .ttl(Ttl::fixed(Duration::from_secs(600)).jitter(0.1))
        .loader(Shared(Arc::clone(&catalogue)))
        .build()?;
    let keys: Vec<(&'static str, u64)> = (0..1_000).map(|id| ("warm", id)).collect();
    for k in &keys[..50] {
        cache.get_or_load(k).await?;
    }
    let queries_before = catalogue.bulk_queries.load(Ordering::SeqCst);
    let report = cache
        .warm(&keys, 100, 4, |done, total| {
            println!("  warmed {done}/{total}");
        })
        .await;
    println!(
        "report: skipped={} loaded={} failed={} ({} bulk queries)",
        report.skipped,
        report.loaded,
        report.failed,
        catalogue.bulk_queries.load(Ordering::SeqCst) - queries_before
    );
    let misses = cache.stats().l1_misses;
    for k in &keys[..900] {
        cache.get_or_load(k).await?;
    }
    println!(
        "then 900 reads of ids 0..899: {} reached the source (the failed batch was not cached; its next reads will load)",
        cache.stats().l1_misses - misses
    );
    cache.close().await;
    Ok(())
}

/// 5. Negative caching: 100 reads of a product that does not exist.
async fn negative(env: &Env) -> Result<()> {
    println!("-- 5. Negative caching (100 reads of a missing product)");
    for negative_ttl in [None, Some(Duration::from_secs(30))] {
        let queries = Arc::new(AtomicU64::new(0));
        let q = Arc::clone(&queries);
        let b = env
            .builder::<(&'static str, u64), String>()
            .loader(FnLoader::new(move |(_, id): (&'static str, u64)| {
                let q = Arc::clone(&q);
                async move {
                    q.fetch_add(1, Ordering::SeqCst);
                    Ok((id < 1_000).then(|| format!("product {id}")))
                }
            }));
        let cache = match negative_ttl {
            Some(d) => b.negative_ttl(d).build()?,
            None => b.build()?,
        };
        // Each setting reads its own key, so the two caches share nothing
        // (not even through Redis).
        let key = (
            "neg",
            if negative_ttl.is_some() {
                123_457
            } else {
                123_456
            },
        );
        for _ in 0..100 {
            cache.get_or_load(&key).await?;
        }
        let label = match negative_ttl {
            None => "without negative_ttl".to_owned(),
            Some(d) => format!("with negative_ttl({} s)", d.as_secs()),
        };
        println!(
            "{label}: {} queries, negative_hits={}",
            queries.load(Ordering::SeqCst),
            cache.stats().negative_hits
        );
        if let Some(d) = negative_ttl {
            env.clock.advance(d + Duration::from_secs(1));
            cache.get_or_load(&key).await?;
            println!(
                "  {} s later: {} queries (the \"not found\" expired and was checked again)",
                d.as_secs() + 1,
                queries.load(Ordering::SeqCst)
            );
        }
        cache.close().await;
    }
    Ok(())
}
