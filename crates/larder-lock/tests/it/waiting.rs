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
    wait_for_subscribers(server_url, "larder:{lock:queue}:released", waiters).await;
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
