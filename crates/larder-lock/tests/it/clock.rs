//! Time comes from the injected clock only: a mock clock drives validity,
//! `lost()`, renewal and waiting; Tokio's timer only wakes the lock up to
//! look at it.

use std::time::Duration;

use larder_core::{ErrorKind, MockClock};
use larder_testkit::RedisServer;

use crate::{bounded, cfg, manager, manager_with_clock};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_a_mock_clock_past_the_deadline_fires_lost() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let mut c = cfg(60_000);
    c.watchdog = false;
    let m = manager_with_clock(&[server.url()], c, clock.shared());
    let g = m.acquire("mock").await.unwrap();
    assert!(!g.is_lost());
    assert!(g.is_valid_for(Duration::from_secs(50)));
    clock.advance(Duration::from_secs(61));
    assert!(!g.is_valid_for(Duration::ZERO));
    bounded("lost() after the mock deadline", g.lost()).await;
    assert!(g.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_mock_clock_never_spins_the_watchdog() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let mut c = cfg(300);
    c.node_timeout = Duration::from_millis(50);
    let m = manager_with_clock(&[server.url()], c, clock.shared());
    let g = m.acquire("frozen").await.unwrap();
    let mut con = server.client().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .unwrap();
    // An observation window for something that must not happen at all:
    // the clock never moves, so no renewal is ever due.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    let renewals = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split(['=', ','])
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum::<u64>();
    assert_eq!(renewals, 0, "renewals on a frozen clock:\n{stats}");
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_wait_ends_by_the_injected_clock() {
    let server = RedisServer::start().unwrap();
    let holder = manager(&[server.url()], cfg(60_000));
    let held = holder.acquire("wait").await.unwrap();
    let clock = MockClock::new();
    let m = manager_with_clock(&[server.url()], cfg(60_000), clock.shared());
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut con)
        .await
        .unwrap();
    let waiter = tokio::spawn(async move { m.acquire_wait("wait", Duration::from_secs(60)).await });
    // The wait has started once its first attempt found the lock taken;
    // advancing the clock past max_wait then ends it.
    wait_for_attempts(&mut con, 1).await;
    clock.advance(Duration::from_secs(61));
    let e = bounded("acquire_wait on a mock clock", waiter)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(held.release().await.unwrap());
}

/// Waits (bounded) until the server has run `n` scripts since the last
/// `CONFIG RESETSTAT`.
async fn wait_for_attempts(con: &mut redis::aio::MultiplexedConnection, n: u64) {
    for _ in 0..100_000 {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(con)
            .await
            .unwrap();
        let calls: u64 = stats
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split(['=', ','])
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum();
        if calls >= n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the waiter never tried");
}
