//! Rate limiters: a denied caller that waits exactly `retry_after` is let
//! through, and a request that could never pass is refused up front.

use std::time::Duration;

use larder_redis::{RateLimit, RateLimiter};
use larder_testkit::RedisServer;

use crate::structures::mocked;

#[tokio::test]
async fn waiting_exactly_retry_after_is_allowed() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    // Emission intervals that are not whole milliseconds (333.33 ms, 142.86
    // ms) as well as whole ones.
    let limits = [
        RateLimit::TokenBucket {
            rate: 3,
            period: Duration::from_secs(1),
            burst: 1,
        },
        RateLimit::TokenBucket {
            rate: 7,
            period: Duration::from_secs(1),
            burst: 2,
        },
        RateLimit::TokenBucket {
            rate: 10,
            period: Duration::from_secs(1),
            burst: 1,
        },
        RateLimit::SlidingWindow {
            limit: 2,
            window: Duration::from_millis(1_001),
        },
        RateLimit::FixedWindow {
            limit: 2,
            window: Duration::from_millis(999),
        },
    ];
    for (n, limit) in limits.into_iter().enumerate() {
        let rl = RateLimiter::new(&s, &format!("l{n}"), limit).unwrap();
        for round in 0..20 {
            // Spend everything, then wait exactly as told.
            let mut denied = None;
            for _ in 0..10 {
                let d = rl.check("u").await.unwrap();
                if !d.allowed {
                    denied = Some(d);
                    break;
                }
            }
            let d = denied.expect("the limit was never reached");
            let wait = d.retry_after.expect("a denial says when to retry");
            assert!(!wait.is_zero(), "{limit:?} round {round}");
            clock.advance(wait);
            let again = rl.check("u").await.unwrap();
            assert!(
                again.allowed,
                "{limit:?} round {round}: denied after waiting retry_after = {wait:?}"
            );
            // Off the grid for the next round.
            clock.advance(Duration::from_millis(7 * round + 1));
        }
    }
}

#[tokio::test]
async fn a_cost_that_can_never_pass_is_refused_up_front() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let limits = [
        (
            RateLimit::TokenBucket {
                rate: 10,
                period: Duration::from_secs(1),
                burst: 5,
            },
            5,
        ),
        (
            RateLimit::SlidingWindow {
                limit: 4,
                window: Duration::from_secs(1),
            },
            4,
        ),
        (
            RateLimit::FixedWindow {
                limit: 3,
                window: Duration::from_secs(1),
            },
            3,
        ),
    ];
    for (n, (limit, most)) in limits.into_iter().enumerate() {
        let rl = RateLimiter::new(&s, &format!("c{n}"), limit).unwrap();
        match rl.check_n("u", most + 1).await {
            Err(e) => assert!(e.is_invalid_input(), "{limit:?}: {e}"),
            Ok(d) => panic!(
                "{limit:?}: a cost of {} answered {d:?}, as if it could pass later",
                most + 1
            ),
        }
        // The largest cost that can pass, passes, on a fresh id.
        assert!(rl.check_n("u", most).await.unwrap().allowed, "{limit:?}");
    }
}

/// Leases and limits read the server's clock, not the caller's: a client
/// whose clock runs ahead neither lets itself through a limit nor expires
/// another worker's lease. The skew (20 years) is larger than every window
/// (10 years), and the windows are so long that the test never straddles a
/// boundary of the server's clock.
#[tokio::test]
async fn a_fast_client_clock_decides_nothing() {
    use larder_core::MockClock;
    use larder_redis::{RedisStore, Topology, WorkQueue};

    let server = RedisServer::start().unwrap();
    let at = |unix_ms: u64| {
        let cfg = crate::quick_config(Topology::Standalone(server.url()))
            .build()
            .unwrap();
        RedisStore::with_clock(cfg, MockClock::at_unix_millis(unix_ms).shared()).unwrap()
    };
    let now = MockClock::DEFAULT_UNIX_MS;
    let slow = at(now);
    let fast = at(now + 20 * 365 * 86_400_000);
    let decade = Duration::from_secs(10 * 365 * 86_400);
    let limits = [
        RateLimit::TokenBucket {
            rate: 1,
            period: decade,
            burst: 1,
        },
        RateLimit::SlidingWindow {
            limit: 1,
            window: decade,
        },
        RateLimit::FixedWindow {
            limit: 1,
            window: decade,
        },
    ];
    for limit in limits {
        let a = RateLimiter::new(&slow, "shared", limit).unwrap();
        let b = RateLimiter::new(&fast, "shared", limit).unwrap();
        let id = format!("{limit:?}").replace(['{', '}'], "");
        assert!(a.check(&id).await.unwrap().allowed, "{limit:?}");
        assert!(
            !b.check(&id).await.unwrap().allowed,
            "{limit:?}: a client 20 years ahead got a second request through"
        );
        assert!(!a.check(&id).await.unwrap().allowed, "{limit:?}");
    }

    let q_slow: WorkQueue<u32> = WorkQueue::new(&slow, "jobs", Duration::from_secs(3_600)).unwrap();
    let q_fast: WorkQueue<u32> = WorkQueue::new(&fast, "jobs", Duration::from_secs(3_600)).unwrap();
    q_slow.push(&1).await.unwrap();
    let d = q_slow.try_pop().await.unwrap().unwrap();
    assert_eq!(
        q_fast.requeue_expired().await.unwrap(),
        0,
        "a client 20 years ahead expired a lease taken a moment ago"
    );
    assert!(q_slow.ack(&d).await.unwrap());
}
