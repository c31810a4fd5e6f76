use std::time::Duration;

use larder_core::ErrorKind;
use larder_testkit::{FaultProxy, RedisServer, start_masters};

use crate::{cfg, manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_five_masters_paused_still_acquires() {
    let masters = tokio::task::spawn_blocking(|| start_masters(5).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
    let m = manager(&urls, cfg(2_000));
    assert_eq!(m.quorum(), 3);
    masters[1].pause().unwrap();
    masters[3].pause().unwrap();
    let g = m
        .try_acquire("five")
        .await
        .unwrap()
        .expect("3 of 5 is a quorum");
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
async fn a_link_slower_than_the_validity_fails_and_cleans_up() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let mut c = cfg(500);
    c.node_timeout = Duration::from_secs(3);
    c.retry_count = 0;
    let m = manager(&[proxy.url()], c);
    // Warm the connection, then slow the link: a round trip now takes 600 ms.
    drop(m.try_acquire("warm").await.unwrap());
    proxy.set_latency(Duration::from_millis(300));
    let e = m.acquire("slow").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Lock, "{e}");
    // The partial lock was released, not left to expire.
    let mut con = server.client().get_connection().unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg("larder:{lock:slow}")
        .query(&mut con)
        .unwrap();
    assert_eq!(v, None);
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
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .expect("lost() fired");
    assert!(!g.is_valid_for(Duration::ZERO));
}
