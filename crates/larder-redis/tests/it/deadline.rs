//! Every network wait has a deadline, and the documented worst case of a
//! call is what the code does. Time is tokio's paused clock once the
//! connections are up: against a frozen server every wait ends only by a
//! timer, so the elapsed (virtual) time is the sum of the store's timers,
//! with no wall-clock threshold.

use std::time::Duration;

use larder_core::{MockClock, Store};
use larder_redis::{BreakerConfig, BreakerState, RedisStore, RetryPolicy, Topology, WorkQueue};
use larder_testkit::{RedisCluster, RedisServer};
use tokio::time::Instant;

use crate::quick_config;

const T: Duration = Duration::from_secs(30);
const CONNECT: Duration = Duration::from_millis(100);
const RESPONSE: Duration = Duration::from_millis(300);

/// The README's bound: `A * (connect + response) + (A - 1) * max_delay`,
/// `A` = attempts.
fn worst_case(retry: RetryPolicy) -> Duration {
    let attempts = retry.max_retries + 1;
    (CONNECT + RESPONSE) * attempts + retry.max_delay * (attempts - 1)
}

#[tokio::test]
async fn a_cluster_call_against_a_frozen_master_ends_within_the_documented_worst_case() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(1).unwrap())
        .await
        .unwrap();
    let mut over = Vec::new();
    for retry in [RetryPolicy::none(), RetryPolicy::default()] {
        let cfg = quick_config(Topology::Cluster(cluster.urls()))
            .connect_timeout(CONNECT)
            .response_timeout(RESPONSE)
            .retry(retry)
            .breaker(BreakerConfig::new(100, T))
            .build()
            .unwrap();
        let s = RedisStore::new(cfg).unwrap();
        s.set("k", b"v", T).await.unwrap();

        cluster.nodes()[0].pause().unwrap();
        tokio::time::pause();
        let start = Instant::now();
        let e = s.get("k").await.unwrap_err();
        let took = start.elapsed();
        tokio::time::resume();
        cluster.nodes()[0].resume().unwrap();

        assert!(e.is_backend_unavailable(), "{e}");
        if took > worst_case(retry) {
            over.push(format!(
                "{} retries: {took:?} > documented {:?}",
                retry.max_retries,
                worst_case(retry)
            ));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}

/// `WorkQueue::pop`'s blocking read (`XREAD BLOCK`) runs on a connection of its own, but
/// through the node's breaker and stats like every other command: a frozen
/// server makes it time out within its documented bound, counted.
#[tokio::test]
async fn work_queue_pop_goes_through_the_breaker_and_the_stats() {
    let server = RedisServer::start().unwrap();
    let clock = MockClock::new();
    let cfg = quick_config(Topology::Standalone(server.url()))
        .connect_timeout(CONNECT)
        .response_timeout(RESPONSE)
        .breaker(BreakerConfig::new(1, T))
        .build()
        .unwrap();
    let s = RedisStore::with_clock(cfg, clock.shared()).unwrap();
    let q: WorkQueue<u32> = WorkQueue::new(&s, "jobs", T).unwrap();
    let before = s.stats().command("OTHER").map_or(0, |c| c.calls);
    assert_eq!(q.pop(Duration::from_millis(1)).await.unwrap(), None);
    let after = s.stats().command("OTHER").map_or(0, |c| c.calls);
    let mut wrong = Vec::new();
    if after != before + 1 {
        wrong.push(format!(
            "the blocking read not counted: OTHER calls {before} -> {after}"
        ));
    }

    // A blocking read in flight when the server freezes.
    let wait = Duration::from_secs(5);
    let q2 = q.clone();
    let pop = tokio::spawn(async move {
        let start = Instant::now();
        (q2.pop(wait).await, start)
    });
    let mut raw = server.client().get_connection().unwrap();
    let mut blocked = false;
    for _ in 0..100_000 {
        tokio::task::yield_now().await;
        let info: String = redis::cmd("INFO").arg("clients").query(&mut raw).unwrap();
        if info.contains("blocked_clients:1") {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the pop never blocked");
    tokio::time::pause();
    server.pause().unwrap();
    let (r, start) = pop.await.unwrap();
    let took = start.elapsed();
    tokio::time::resume();
    server.resume().unwrap();

    let e = r.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    // The README's bound for pop: the non-blocking try first (one call),
    // then the block; the second take is not reached.
    if took > worst_case(RetryPolicy::none()) + CONNECT + wait + RESPONSE {
        wrong.push(format!("pop took {took:?}"));
    }
    if s.breaker_states()[0].1 != BreakerState::Open {
        wrong.push(format!(
            "the timed-out blocking read did not count against the breaker: {:?}",
            s.breaker_states()
        ));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
