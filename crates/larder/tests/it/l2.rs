//! L1 + L2 and L2-only caches against real redis-server processes.

use std::time::Duration;

use larder::core::{ErrorKind, MockClock, envelope};
use larder::redis::redis;
use larder::redis::{BreakerConfig, RedisConfig, RedisStore, RetryPolicy, Topology};
use larder::{Cache, Ttl};
use larder_testkit::{FaultProxy, RedisServer};

use crate::{TestLoader, until};

fn store(url: &str, clock: &MockClock) -> RedisStore {
    let cfg = RedisConfig::builder(Topology::Standalone(url.to_owned()))
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .retry(RetryPolicy::none())
        .breaker(BreakerConfig::new(3, Duration::from_secs(5)))
        .build()
        .unwrap();
    RedisStore::with_clock(cfg, clock.shared()).unwrap()
}

fn two_levels(url: &str, clock: &MockClock, loader: TestLoader) -> Cache<u64, String> {
    Cache::builder()
        .memory(1_000)
        .redis(store(url, clock))
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(10)))
        .loader(loader)
        .build()
        .unwrap()
}

fn raw(server: &RedisServer) -> redis::Connection {
    server.client().get_connection().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_loaded_by_one_instance_is_promoted_by_another_with_its_remaining_life() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let a = two_levels(&server.url(), &clock, loader.clone());
    let b = two_levels(&server.url(), &clock, loader.clone());
    assert_eq!(
        a.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.0")
    );
    clock.advance(Duration::from_secs(4));
    assert_eq!(
        b.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.0")
    );
    assert_eq!(loader.calls(), 1, "b found it in L2");
    assert_eq!(b.stats().l2_hits, 1);
    // b's L1 serves it for what was left (6 s), not a full TTL.
    clock.advance(Duration::from_millis(5_999));
    b.get(&1).await.unwrap().unwrap();
    assert_eq!(b.stats().l1_hits, 1);
    clock.advance(Duration::from_millis(2));
    assert_eq!(b.get(&1).await.unwrap(), None, "expired at both levels");
    assert_eq!(b.stats().l1_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_only_cache_loads_once_and_then_hits_redis() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c: Cache<u64, String> = Cache::builder()
        .no_memory()
        .redis(store(&server.url(), &clock))
        .clock(clock.shared())
        .loader(loader.clone())
        .build()
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            c.get_or_load(&2).await.unwrap().as_deref(),
            Some("value2.0")
        );
    }
    assert_eq!(loader.calls(), 1);
    let s = c.stats();
    assert_eq!((s.l2_hits, s.l1_hits, s.l1_entries), (4, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_through_redis_make_one_load() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let (loader, gate) = TestLoader::gated();
    let c = two_levels(&server.url(), &clock, loader.clone());
    let mut callers = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        callers.push(tokio::spawn(async move { c.get_or_load(&7).await }));
    }
    until("999 callers wait on the load", || {
        c.stats().coalesced >= 999
    })
    .await;
    gate.add_permits(1);
    for h in callers {
        assert_eq!(h.await.unwrap().unwrap().as_deref(), Some("value7.0"));
    }
    assert_eq!(loader.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_reads_take_l1_hits_then_one_mget_then_one_load() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let a = two_levels(&server.url(), &clock, loader.clone());
    let b = two_levels(&server.url(), &clock, loader.clone());
    a.get_or_load(&1).await.unwrap(); // in a's L1 and in L2
    b.get_or_load(&2).await.unwrap(); // in b's L1 and in L2
    let mgets = |c: &Cache<u64, String>| {
        c.redis()
            .unwrap()
            .stats()
            .command("MGET")
            .map_or(0, |s| s.calls)
    };
    let before = mgets(&a);
    let got = a.get_many_or_load(&[1, 2, 3]).await;
    let got: Vec<_> = got.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(got, ["value1.0", "value2.0", "value3.0"]);
    assert_eq!(mgets(&a) - before, 1, "one MGET for keys 2 and 3");
    assert_eq!(loader.calls(), 3, "only key 3 was loaded");
    let s = a.stats();
    assert_eq!((s.l1_hits, s.l2_hits), (1, 1));
}

/// Instance `a` is loading key 3 (slowly) when instance `b` invalidates it:
/// `a`'s callers get the value they asked for, but neither level keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_elsewhere_beats_a_slow_load_in_both_levels() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let (slow, gate) = TestLoader::gated();
    let a = two_levels(&server.url(), &clock, slow.clone());
    let b = two_levels(&server.url(), &clock, TestLoader::default());
    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.get_or_load(&3).await })
    };
    slow.until_entered(1).await;
    b.invalidate(&3).await.unwrap();
    gate.add_permits(1);
    assert_eq!(pending.await.unwrap().unwrap().as_deref(), Some("value3.0"));
    assert_eq!(a.stats().fills_refused, 1);
    let in_redis: Option<Vec<u8>> = redis::cmd("GET")
        .arg("larder:{3}")
        .query(&mut raw(&server))
        .unwrap();
    assert_eq!(in_redis, None, "the old value came back to Redis");
    assert_eq!(
        a.get(&3).await.unwrap(),
        None,
        "the old value stayed in a's L1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_are_a_counted_miss_and_get_overwritten() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c = two_levels(&server.url(), &clock, loader.clone());
    let mut conn = raw(&server);
    // Foreign bytes, and a Larder header with a huge version over a bad payload.
    let mut forged = vec![0x4C, 1, 0, 1];
    forged.extend_from_slice(&[0; 28]);
    forged.extend_from_slice(&(1u64 << 50).to_be_bytes());
    forged.extend_from_slice(b"\xFF\xFF\xFF");
    for (key, bytes) in [(1u64, b"not an envelope".to_vec()), (2, forged)] {
        redis::cmd("SET")
            .arg(format!("larder:{{{key}}}"))
            .arg(bytes)
            .exec(&mut conn)
            .unwrap();
        assert_eq!(
            c.get_or_load(&key).await.unwrap().as_deref(),
            Some(format!("value{key}.0").as_str())
        );
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(format!("larder:{{{key}}}"))
            .query(&mut conn)
            .unwrap();
        let (_, v) = envelope::decode_value::<_, String>(&larder::core::Postcard, &stored).unwrap();
        assert_eq!(v.unwrap(), format!("value{key}.0"), "overwritten");
    }
    assert!(c.stats().corrupt >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_degrades_to_l1_and_the_loader_and_recovers_by_itself() {
    let mut server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c = two_levels(&server.url(), &clock, loader.clone());
    c.get_or_load(&1).await.unwrap();
    server.kill();
    // L1 hits need no Redis; misses go to the loader.
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.0")
    );
    for k in 2..8 {
        assert_eq!(
            c.get_or_load(&k).await.unwrap(),
            Some(format!("value{k}.0"))
        );
    }
    assert!(c.stats().l2_errors > 0);
    // What was loaded meanwhile stays in the L1 like any other value: a
    // cache without coherence keeps no unconfirmed cap (`unconfirmed_ttl`).
    let calls = loader.calls();
    clock.advance(Duration::from_secs(2));
    c.get_or_load(&2).await.unwrap();
    assert_eq!(loader.calls(), calls, "held in the L1");
    let breakers = c.stats().breakers;
    assert_eq!(breakers[0].1, larder::redis::BreakerState::Open);
    // An invalidation cannot reach Redis: a typed error, the L1 is cleared.
    let e = c.invalidate(&1).await.unwrap_err();
    assert!(e.is_backend_unavailable(), "{e}");

    server.restart().unwrap();
    let mut recovered = false;
    for k in 100..120 {
        clock.advance(Duration::from_secs(5));
        c.get_or_load(&k).await.unwrap();
        if c.redis()
            .unwrap()
            .get(&k.to_string())
            .await
            .is_ok_and(|v| v.is_some())
        {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the L2 never came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_costs_a_timeout_not_a_hang() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c = two_levels(&proxy.url(), &clock, loader.clone());
    c.get_or_load(&1).await.unwrap();
    proxy.set_stalled(true);
    for k in 2..5 {
        // Each L2 call ends at its deadline; the loader answers.
        assert_eq!(
            c.get_or_load(&k).await.unwrap(),
            Some(format!("value{k}.0"))
        );
    }
    assert!(c.stats().l2_errors >= 3);
    let e = c.redis().unwrap().get("2").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::CircuitOpen),
        "{e}"
    );
    proxy.set_stalled(false);
}

/// Three instances (three processes' worth of caches, each with its own
/// in-flight table) share one Redis: with the load lease, 900 concurrent
/// misses of one key make one load in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lease_one_load_serves_three_instances() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let (loader, gate) = TestLoader::gated();
    let instances: Vec<Cache<u64, String>> = (0..3)
        .map(|_| {
            Cache::builder()
                .redis(store(&server.url(), &clock))
                .clock(clock.shared())
                .loader(loader.clone())
                .lease(Duration::from_secs(30))
                .lease_poll(Duration::from_millis(5))
                .build()
                .unwrap()
        })
        .collect();
    let mut callers = Vec::new();
    for c in &instances {
        for _ in 0..300 {
            let c = c.clone();
            callers.push(tokio::spawn(async move { c.get_or_load(&7).await }));
        }
    }
    loader.until_entered(1).await;
    // The two other instances lost the lease and wait for the value.
    until("two instances wait on the lease", || {
        instances.iter().map(|c| c.stats().lease_waits).sum::<u64>() == 2
    })
    .await;
    gate.add_permits(1);
    for h in callers {
        assert_eq!(h.await.unwrap().unwrap().as_deref(), Some("value7.0"));
    }
    assert_eq!(loader.calls(), 1, "one load across the instances");
    let held: Option<Vec<u8>> = redis::cmd("GET")
        .arg("larder:{7}:lease")
        .query(&mut raw(&server))
        .unwrap();
    assert_eq!(held, None, "the lease was released");

    // The control: without the lease, each instance loads once.
    let (plain, gate) = TestLoader::gated();
    let mut callers = Vec::new();
    for _ in 0..3 {
        let c = two_levels(&server.url(), &clock, plain.clone());
        callers.push(tokio::spawn(async move { c.get_or_load(&8).await }));
    }
    plain.until_entered(3).await;
    gate.add_permits(3);
    for h in callers {
        h.await.unwrap().unwrap();
    }
    assert_eq!(plain.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_empties_both_levels_of_this_namespace() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c = two_levels(&server.url(), &clock, loader.clone());
    for k in 0..50 {
        c.get_or_load(&k).await.unwrap();
    }
    c.clear().await.unwrap();
    assert_eq!(c.get(&1).await.unwrap(), None);
    let n: u64 = redis::cmd("DBSIZE").query(&mut raw(&server)).unwrap();
    assert_eq!(n, 0);
    c.get_or_load(&1).await.unwrap();
    assert_eq!(loader.calls(), 51);
}

/// The lease holder's load fails: the process waiting on its lease takes
/// over at its next poll, not after the lease's whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lease_holder_hands_over_at_once() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let (failing, gate) = TestLoader::gated();
    failing
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let healthy = TestLoader::default();
    let make = |loader: TestLoader| -> Cache<u64, String> {
        Cache::builder()
            .redis(store(&server.url(), &clock))
            .clock(clock.shared())
            .loader(loader)
            // A lease far longer than a caller waits: only a hand-over in
            // time can answer the second instance's caller.
            .lease(Duration::from_secs(600))
            .lease_poll(Duration::from_millis(5))
            .wait_timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (a, b) = (make(failing.clone()), make(healthy.clone()));
    let first = {
        let a = a.clone();
        tokio::spawn(async move { a.get_or_load(&9).await })
    };
    failing.until_entered(1).await;
    let second = {
        let b = b.clone();
        tokio::spawn(async move { b.get_or_load(&9).await })
    };
    until("b waits on a's lease", || b.stats().lease_waits == 1).await;
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap_err().kind(), ErrorKind::Source);
    assert_eq!(second.await.unwrap().unwrap().as_deref(), Some("value9.0"));
    assert_eq!(b.stats().lease_takeovers, 1);
}

/// Stale-if-error with an empty L1 (a new instance): the value the L2
/// keeps past its fresh time is served when the load fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_what_the_l2_keeps_to_a_new_instance() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let make = || -> Cache<u64, String> {
        Cache::builder()
            .redis(store(&server.url(), &clock))
            .clock(clock.shared())
            .ttl(Ttl::fixed(Duration::from_secs(10)))
            .stale_if_error(Duration::from_secs(120))
            .loader(loader.clone())
            .build()
            .unwrap()
    };
    let a = make();
    a.get_or_load(&4).await.unwrap();
    clock.advance(Duration::from_secs(30));
    loader.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let b = make();
    assert_eq!(
        b.get_or_load(&4).await.unwrap().as_deref(),
        Some("value4.0")
    );
    assert_eq!(b.stats().stale_if_error, 1);
}
