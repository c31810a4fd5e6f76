use std::time::Duration;

use larder_core::{ErrorKind, MockClock};
use larder_testkit::{FaultProxy, RedisServer, start_masters};

use crate::{bounded, cfg, manager, manager_with_clock};

/// Scripts the server has run since the last `CONFIG RESETSTAT`.
pub(crate) async fn scripts_run(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .unwrap();
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split(['=', ','])
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_masters_paused_cost_no_node_timeout() {
    let masters = tokio::task::spawn_blocking(|| start_masters(5).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
    let mut c = cfg(10_000);
    // Long enough that waiting for a paused node would dwarf everything else.
    c.node_timeout = Duration::from_secs(3);
    let m = manager(&urls, c);
    assert_eq!(m.quorum(), 3);
    drop(m.try_acquire("warm").await.unwrap());
    masters[1].pause().unwrap();
    masters[3].pause().unwrap();
    let start = tokio::time::Instant::now();
    let g = m
        .try_acquire("five")
        .await
        .unwrap()
        .expect("3 of 5 is a quorum");
    let took = start.elapsed();
    // Votes, fence read and fence write each finish once a majority has
    // answered: the paused nodes are never waited for (before, each of the
    // three phases waited out the node timeout).
    assert!(
        took < Duration::from_secs(3),
        "acquiring with 2 of 5 paused took {took:?}"
    );
    assert!(g.fencing_token() > 0);
    assert!(g.release().await.unwrap());
    masters[4].pause().unwrap();
    assert!(
        m.try_acquire("five").await.unwrap().is_none(),
        "2 of 5 is not"
    );
    for i in [1, 3, 4] {
        masters[i].resume().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_slower_than_the_node_timeout_fails_and_releases_what_it_took() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let mut c = cfg(60_000);
    c.node_timeout = Duration::from_millis(200);
    c.retry_count = 0;
    let m = manager(&[proxy.url()], c);
    // Warm the connection (and load the scripts), then slow the link: a
    // round trip now takes 600 ms, three node timeouts.
    let warm = m.try_acquire("warm").await.unwrap().unwrap();
    assert!(warm.release().await.unwrap());
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
    proxy.set_latency(Duration::from_millis(300));
    let e = m.acquire("slow").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Lock, "{e}");
    // The acquire script reaches the server late and takes the key for
    // 60 s; only the release (sent behind it on the same connection) can
    // free it before then. Wait until the server has run the acquire.
    for _ in 0..100_000 {
        if scripts_run(&mut con).await >= 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(scripts_run(&mut con).await >= 1, "the acquire never landed");
    let other = manager(&[server.url()], cfg(60_000));
    let g = bounded(
        "a second client after the release",
        other.acquire_wait("slow", Duration::from_secs(10)),
    )
    .await
    .expect("the partial lock was released, not left for its 60 s TTL");
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_acquisition_keeps_its_full_validity() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let clock = MockClock::new();
    let mut c = cfg(10_000);
    c.watchdog = false;
    c.node_timeout = Duration::from_secs(3);
    let m = manager_with_clock(&[proxy.url()], c.clone(), clock.shared());
    let warm = m.try_acquire("warm").await.unwrap().unwrap();
    assert!(warm.release().await.unwrap());
    // The acquisition's replies are held while 4 s pass on the clock.
    proxy.set_replies_stalled(true);
    let m2 = m.clone();
    let attempt = tokio::spawn(async move { m2.try_acquire("slow").await });
    bounded("the acquire reached the server", proxy.wait_held_replies(1)).await;
    clock.advance(Duration::from_secs(4));
    proxy.set_replies_stalled(false);
    let g = bounded("the acquisition", attempt)
        .await
        .unwrap()
        .unwrap()
        .expect("acquired within the TTL");
    // Validity runs from the first request: TTL - drift after it, so
    // 10 s - 102 ms - 4 s = 5.898 s are left, not 1.898 s.
    assert!(
        g.is_valid_for(Duration::from_millis(5_890)),
        "elapsed time subtracted twice: valid until {:?} from now",
        g.valid_until()
            .checked_duration_since(larder_core::Clock::now(&clock))
    );
    assert!(!g.is_valid_for(Duration::from_millis(5_900)));
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_by_the_deadline_while_a_renewal_hangs() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let clock = MockClock::new();
    let mut c = cfg(300_000);
    c.node_timeout = Duration::from_secs(15);
    let m = manager_with_clock(&[proxy.url()], c, clock.shared());
    let g = m.acquire("renew").await.unwrap();
    // The link goes silent, then the renewal falls due (TTL/3 = 100 s).
    proxy.set_replies_stalled(true);
    clock.advance(Duration::from_secs(101));
    bounded("the renewal reached the server", proxy.wait_held_replies(1)).await;
    assert!(!g.is_lost());
    // The renewal hangs (its node timeout is 15 s of real time); the
    // validity deadline passes meanwhile: lost() must not wait for it.
    clock.advance(Duration::from_secs(200));
    bounded("lost() at the deadline", g.lost()).await;
    assert!(g.is_lost());
    proxy.set_replies_stalled(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_renews_long_work_and_reports_a_dead_node() {
    let mut server = RedisServer::start().unwrap();
    let m = manager(&[server.url()], cfg(300));
    let other = manager(&[server.url()], cfg(300));
    let g = m.acquire("long").await.unwrap();
    // Work for three lease times: the lease must be renewed throughout.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!g.is_lost(), "lost during renewed work");
        assert!(
            other.try_acquire("long").await.unwrap().is_none(),
            "someone else got a renewed lock"
        );
    }
    // The node dies: renewal fails and lost() fires.
    server.kill();
    bounded("lost() after the node died", g.lost()).await;
    assert!(!g.is_valid_for(Duration::ZERO));
}
