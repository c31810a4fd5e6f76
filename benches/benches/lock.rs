//! Locks: uncontended acquire + release on one instance and Redlock on 5
//! masters, Larder against the `rslock` crate in the same run; contended
//! throughput; and wake-up latency of a waiter by pub/sub and by polling.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use larder_benches::manifest::{Better, Manifest};
use larder_lock::{LockConfig, LockManager};
use larder_testkit::start_masters;

const TTL: Duration = Duration::from_secs(10);

fn larder(urls: &[String], watchdog_and_fence: bool) -> LockManager {
    let mut c = LockConfig::with_ttl(TTL);
    c.watchdog = watchdog_and_fence;
    c.fencing = watchdog_and_fence;
    c.quarantine = watchdog_and_fence;
    c.retry_delay = Duration::from_millis(1);
    c.wait_poll = Duration::from_millis(5);
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    LockManager::new(&urls, c).unwrap()
}

#[allow(clippy::disallowed_methods)] // a benchmark measures wall time
fn lock_benches(c: &mut Criterion) {
    let mut m = Manifest::create("lock");
    let masters =
        start_masters(5).expect("redis-server (run `cargo xtask bench`, which installs it)");
    let urls: Vec<String> = masters.iter().map(|s| s.url()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Connection managers spawn their driver tasks on the current runtime.
    let _entered = rt.enter();

    for (group, n) in [
        ("lock/uncontended acquire+release, 1 instance", 1usize),
        ("lock/uncontended acquire+release, Redlock N=5", 5),
    ] {
        let nodes = &urls[..n];
        let full = larder(nodes, true);
        let plain = larder(nodes, false);
        let rs = rslock::LockManager::new(nodes.to_vec());
        rt.block_on(async {
            // Connect everything before measuring.
            full.try_acquire("warm")
                .await
                .unwrap()
                .unwrap()
                .release()
                .await
                .unwrap();
            let l = rs.lock("warm", TTL).await.unwrap();
            rs.unlock(&l).await;
        });
        let mut g = c.benchmark_group(group);
        g.throughput(Throughput::Elements(1));
        m.time(group, "larder (fencing, watchdog, quarantine)", 1);
        g.bench_function("larder (fencing, watchdog, quarantine)", |b| {
            b.to_async(&rt).iter(|| async {
                let guard = full.try_acquire("bench").await.unwrap().unwrap();
                black_box(guard.release().await.unwrap())
            })
        });
        m.time(group, "larder (plain)", 1);
        g.bench_function("larder (plain)", |b| {
            b.to_async(&rt).iter(|| async {
                let guard = plain.try_acquire("bench").await.unwrap().unwrap();
                black_box(guard.release().await.unwrap())
            })
        });
        m.time(group, "rslock", 1);
        g.bench_function("rslock", |b| {
            b.to_async(&rt).iter(|| async {
                let l = rs.lock("bench-rs", TTL).await.unwrap();
                rs.unlock(&l).await;
            })
        });
        g.finish();
        m.compare(group, "larder (plain)", "rslock");
        m.compare(group, "larder (fencing, watchdog, quarantine)", "rslock");
    }

    // Contended: 8 tasks take one lock in turn, 4 times each.
    let group = "lock/contended, 8 tasks, 1 instance";
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(32));
    g.sample_size(10);
    let l = larder(&urls[..1], false);
    m.time(group, "larder acquire_wait", 32);
    g.bench_function("larder acquire_wait", |b| {
        b.to_async(&rt).iter(|| async {
            join_all((0..8).map(|_| async {
                for _ in 0..4 {
                    let g = l
                        .acquire_wait("hot", Duration::from_secs(30))
                        .await
                        .unwrap();
                    g.release().await.unwrap();
                }
            }))
            .await
        })
    });
    let rs = rslock::LockManager::new(urls[..1].to_vec());
    m.time(group, "rslock acquire", 32);
    g.bench_function("rslock acquire", |b| {
        b.to_async(&rt).iter(|| async {
            join_all((0..8).map(|_| async {
                for _ in 0..4 {
                    let guard = rs.acquire("hot-rs", TTL).await.unwrap();
                    guard.release().await;
                }
            }))
            .await
        })
    });
    g.finish();
    m.compare(group, "larder acquire_wait", "rslock acquire");

    // Wake-up latency: from release to the waiter holding the lock.
    let group = "lock/wake-up latency after release";
    for (id, pubsub, poll) in [
        ("pub/sub (poll every 1 s)", true, 1_000u64),
        ("polling every 50 ms", false, 50),
    ] {
        let mut c = LockConfig::with_ttl(TTL);
        c.pubsub_wakeup = pubsub;
        c.wait_poll = Duration::from_millis(poll);
        let waiter = LockManager::new(&[urls[0].as_str()], c).unwrap();
        let holder = larder(&urls[..1], false);
        let mut total = Duration::ZERO;
        let rounds = 20;
        rt.block_on(async {
            for _ in 0..rounds {
                let g = holder.try_acquire("wake").await.unwrap().unwrap();
                let w = waiter.clone();
                let task = tokio::spawn(async move {
                    let got = w
                        .acquire_wait("wake", Duration::from_secs(30))
                        .await
                        .unwrap();
                    let at = Instant::now();
                    got.release().await.unwrap();
                    at
                });
                // Let the waiter subscribe and fail its first attempt.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let released = Instant::now();
                g.release().await.unwrap();
                let acquired = task.await.unwrap();
                total += acquired.saturating_duration_since(released);
            }
        });
        let mean_ms = total.as_secs_f64() * 1000.0 / rounds as f64;
        m.value(group, id, mean_ms, "ms (mean of 20)", Better::Lower);
    }
    m.compare(group, "pub/sub (poll every 1 s)", "polling every 50 ms");
}

criterion_group!(benches, lock_benches);
criterion_main!(benches);
