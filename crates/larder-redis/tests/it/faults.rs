//! Faults: a killed server, a paused server, a slow link. Breaker timing
//! runs on a mock clock, so recovery needs no sleep.

use std::time::Duration;

use larder_core::{ErrorKind, MockClock, Store};
use larder_redis::{BreakerConfig, BreakerState, RedisStore, RetryPolicy, Topology};
use larder_testkit::{FaultProxy, RedisServer};

use crate::quick_config;

const T: Duration = Duration::from_secs(30);

fn store_with_clock(url: &str, clock: &MockClock) -> RedisStore {
    let cfg = quick_config(Topology::Standalone(url.to_owned()))
        .breaker(BreakerConfig::new(3, Duration::from_secs(5)))
        .build()
        .unwrap();
    RedisStore::with_clock(cfg, clock.shared()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_opens_the_breaker_and_recovery_is_automatic() {
    let mut server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let s = store_with_clock(&server.url(), &clock);
    s.set("k", b"v", T).await.unwrap();

    server.kill();
    // Typed, fast errors (connection refused), counted against the breaker.
    for _ in 0..3 {
        let e = s.get("k").await.unwrap_err();
        assert!(e.is_backend_unavailable(), "{e}");
        assert!(
            matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{e}"
        );
    }
    assert_eq!(s.breaker_states()[0].1, BreakerState::Open);
    // While open, calls fail without touching the network.
    let before = s.stats().command("GET").unwrap().calls;
    let e = s.get("k").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitOpen);
    assert_eq!(s.stats().command("GET").unwrap().calls, before);
    assert_eq!(s.stats().breaker_rejections, 1);

    server.restart().unwrap();
    // After the open period, a probe goes through; the connection manager
    // reconnects by itself. Bounded: each round advances the mock clock.
    let mut recovered = false;
    for _ in 0..20 {
        clock.advance(Duration::from_secs(5));
        if s.set("k2", b"back", T).await.is_ok() {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "the store never recovered");
    assert_eq!(s.breaker_states()[0].1, BreakerState::Closed);
    assert_eq!(s.get("k2").await.unwrap().as_deref(), Some(&b"back"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_within_the_deadline() {
    let server = RedisServer::start().unwrap();
    let s = crate::store(&server.url());
    s.set("k", b"v", T).await.unwrap();
    server.pause().unwrap();
    // The outer guard is generous; the store's own deadline must fire first.
    let r = tokio::time::timeout(Duration::from_secs(10), s.get("k")).await;
    let e = r
        .expect("the store's deadline fired before the guard")
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(s.stats().command("GET").unwrap().timeouts >= 1);
    server.resume().unwrap();
    let mut ok = false;
    for _ in 0..10 {
        if s.get("k").await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the store did not recover after resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_link_through_the_proxy() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let s = crate::store(&proxy.url()); // 300 ms response timeout
    s.set("k", b"v", T).await.unwrap();

    proxy.set_latency(Duration::from_millis(20));
    assert_eq!(
        s.get("k").await.unwrap().as_deref(),
        Some(&b"v"[..]),
        "slow but within the deadline"
    );

    proxy.set_latency(Duration::from_millis(400));
    let e = s.get("k").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    proxy.set_latency(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_commands_are_retried_after_a_cut() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let cfg = quick_config(Topology::Standalone(proxy.url()))
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    let s = RedisStore::new(cfg).unwrap();
    s.set("k", b"v", T).await.unwrap();
    proxy.cut_all();
    // The first attempt meets the dead connection; the retry reconnects.
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(proxy.accepted_connections() >= 2);
}

#[tokio::test]
async fn a_store_can_be_built_while_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill();
    let s = crate::store(&url);
    assert!(s.get("k").await.unwrap_err().is_backend_unavailable());
    server.restart().unwrap();
    let mut ok = false;
    for _ in 0..10 {
        if s.set("k", b"v", T).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok);
}

/// A half-open probe whose caller gives up (a timeout around the call, a
/// `select!`) must not keep the probe slot: otherwise every later call on
/// the node fails with `CircuitOpen` for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_probe_does_not_wedge_the_breaker() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let clock = MockClock::new();
    let open_for = Duration::from_secs(5);
    // A long per-call deadline: the probe below ends only by being dropped.
    let cfg = quick_config(Topology::Standalone(proxy.url()))
        .response_timeout(T)
        .breaker(BreakerConfig::new(2, open_for))
        .build()
        .unwrap();
    let s = RedisStore::with_clock(cfg, clock.shared()).unwrap();
    s.set("k", b"v", T).await.unwrap();

    // Open the breaker with fast connection failures.
    proxy.set_refusing(true);
    proxy.cut_all();
    for _ in 0..20 {
        if s.breaker_states()[0].1 == BreakerState::Open {
            break;
        }
        let e = s.get("k").await.unwrap_err();
        assert!(e.is_backend_unavailable(), "{e}");
    }
    assert_eq!(s.breaker_states()[0].1, BreakerState::Open);

    // Half-open; the probe reaches a silent link and its caller gives up.
    clock.advance(open_for);
    assert_eq!(s.breaker_states()[0].1, BreakerState::HalfOpen);
    proxy.set_refusing(false);
    proxy.set_stalled(true);
    let abandoned = tokio::time::timeout(Duration::from_millis(200), s.get("k")).await;
    assert!(
        abandoned.is_err(),
        "the probe was still in flight when dropped"
    );

    // Healed: the node serves again within one cool-down.
    proxy.set_stalled(false);
    let mut served = None;
    for round in 0..2 {
        match s.get("k").await {
            Ok(v) => {
                served = Some(v);
                break;
            }
            Err(e) => {
                assert_eq!(round, 0, "still failing after one cool-down: {e}");
                clock.advance(open_for);
            }
        }
    }
    assert_eq!(served.flatten().as_deref(), Some(&b"v"[..]));
    assert_eq!(s.breaker_states()[0].1, BreakerState::Closed);
}
