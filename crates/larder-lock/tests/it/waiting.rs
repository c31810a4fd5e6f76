use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder_testkit::{FaultProxy, RedisServer};

use crate::{cfg, manager};

/// Polls `PUBSUB NUMSUB` until `n` clients listen on `channel` (bounded).
async fn wait_for_subscribers(server_url: &str, channel: &str, n: usize) {
    let client = redis::Client::open(server_url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..10_000 {
        let (_, count): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut con)
            .await
            .unwrap();
        if count >= n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("fewer than {n} waiters subscribed to {channel}");
}

/// `waiters` tasks wait for the lock held by the test, then take it in turn.
/// Clients use `url`; `server_url` reaches the server directly.
async fn waiters_all_get_it(
    url: &str,
    server_url: &str,
    waiters: usize,
    poll: Duration,
    cut: Option<&FaultProxy>,
) -> u64 {
    let holder = manager(&[url.to_owned()], cfg(5_000));
    let g = holder.acquire("queue").await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        let mut c = cfg(5_000);
        c.wait_poll = poll;
        let m = manager(&[url.to_owned()], c);
        let done = Arc::clone(&done);
        tasks.push(tokio::spawn(async move {
            let g = m
                .acquire_wait("queue", Duration::from_secs(60))
                .await
                .unwrap();
            done.fetch_add(1, Ordering::SeqCst);
            assert!(g.release().await.unwrap());
        }));
    }
    // Wait until Redis counts every waiter's subscription, then (optionally)
    // cut them.
    wait_for_subscribers(server_url, "larder:{queue}:released", waiters).await;
    if let Some(p) = cut {
        p.cut_all();
    }
    assert!(g.release().await.unwrap());
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a waiter hung")
            .unwrap();
    }
    done.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_wake_by_pubsub() {
    let server = RedisServer::start().unwrap();
    // Polling every 60 s: only release messages can hand the lock over in time.
    let n = waiters_all_get_it(
        &server.url(),
        &server.url(),
        100,
        Duration::from_secs(60),
        None,
    )
    .await;
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_still_wake_by_polling_when_subscriptions_are_cut() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let n = waiters_all_get_it(
        &proxy.url(),
        &server.url(),
        100,
        Duration::from_millis(30),
        Some(&proxy),
    )
    .await;
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_runs_and_releases() {
    let server = RedisServer::start().unwrap();
    let m = manager(&[server.url()], cfg(5_000));
    let token = m
        .with_lock("w", Duration::from_secs(5), |g| {
            let t = g.fencing_token();
            async move { t }
        })
        .await
        .unwrap();
    assert!(token > 0);
    assert!(
        m.try_acquire("w").await.unwrap().is_some(),
        "released afterwards"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_reports_a_section_that_was_not_exclusive() {
    let server = RedisServer::start().unwrap();
    let mut c = cfg(300);
    c.watchdog = false; // a fixed lease the section outlives
    let a = manager(&[server.url()], c);
    let b = manager(&[server.url()], cfg(5_000));
    let out = a
        .with_lock("section", Duration::from_secs(5), |_| async move {
            // Gate: the section ends only once another client holds the lock.
            b.acquire_wait("section", Duration::from_secs(10))
                .await
                .unwrap()
        })
        .await;
    let e = out.expect_err("a section another client entered returned Ok");
    assert_eq!(e.kind(), larder_core::ErrorKind::Lock, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_waits_open_no_connection() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let mut c = cfg(5_000);
    // Generous, so that a loaded machine cannot turn an attempt into a
    // timeout (and the wait into a contended one, which subscribes).
    c.node_timeout = Duration::from_secs(1);
    let m = manager(&[proxy.url()], c);
    for i in 0..50u64 {
        let v = m
            .with_lock("calm", Duration::from_secs(5), |_| async move { i })
            .await
            .unwrap();
        assert_eq!(v, i);
    }
    assert_eq!(
        proxy.accepted_connections(),
        1,
        "50 uncontended with_lock calls opened connections of their own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_does_not_stretch_a_short_wait() {
    let server = RedisServer::start().unwrap();
    let mut c = cfg(60_000);
    // A paused node answers nothing: any wait not bounded by max_wait
    // would last this long.
    c.node_timeout = Duration::from_secs(15);
    let m = manager(&[server.url()], c);
    let g = m.acquire("p").await.unwrap();
    drop(g);
    server.pause().unwrap();
    let e = crate::bounded(
        "acquire_wait(20 ms) on a paused node",
        m.acquire_wait("p2", Duration::from_millis(20)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), larder_core::ErrorKind::Timeout, "{e}");
    server.resume().unwrap();
}
