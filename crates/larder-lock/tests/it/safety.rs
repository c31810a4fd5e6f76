//! The lock-set workload: several independent clients guard a
//! read-modify-write; a referee checks that critical sections never overlap
//! and that no update is lost. The same checker must flag the workload when
//! the lock is disabled.

use std::sync::Arc;

use std::time::Duration;

use futures_util::FutureExt;
use larder_lock::{FencedResource, LockConfig, LockManager};
use larder_testkit::{FaultProxy, RedisServer, start_masters};

use crate::workload::{self, Verdict};
use crate::{bounded, cfg, manager};

/// `clients` independent managers (own connections) running the shared
/// workload at once; the referee's verdict.
async fn in_process(
    urls: &[String],
    resource: &RedisServer,
    clients: usize,
    locking: bool,
    fencing: bool,
) -> Verdict {
    let client = resource.client();
    workload::reset(&client).await;
    let mut c = cfg(2_000);
    c.fencing = fencing;
    let runs = (0..clients)
        .map(|_| workload::client(manager(urls, c.clone()), client.clone(), 3, 3, locking));
    futures_util::future::join_all(runs).await;
    workload::verdict(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_mutual_exclusion_and_its_negative_control() {
    let (_masters, resource, urls) = workload::servers().await;

    // 4 clients x 3 tasks x 3 sections.
    let v = in_process(&urls, &resource, 4, true, true).await;
    workload::assert_protected(v, 36);

    // Negative control: without the lock the same referee sees the damage.
    let v = in_process(&urls, &resource, 4, false, true).await;
    workload::assert_caught(v, 36);

    // Negative control of the stale-token check: locked, but without
    // fencing every token is 0, which must be flagged.
    let v = in_process(&urls, &resource, 4, true, false).await;
    workload::assert_stale_caught(v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_instance_tokens_grow_and_locks_exclude() {
    let server = RedisServer::start().unwrap();
    let m = manager(&[server.url()], cfg(5_000));
    let a = m.try_acquire("job").await.unwrap().unwrap();
    assert!(m.try_acquire("job").await.unwrap().is_none(), "held");
    assert!(a.is_valid_for(Duration::from_secs(1)));
    let t1 = a.fencing_token();
    assert!(a.release().await.unwrap());
    let b = m.try_acquire("job").await.unwrap().unwrap();
    assert!(b.fencing_token() > t1);
    // Other names are independent.
    let c = m.try_acquire("other").await.unwrap().unwrap();
    drop(c); // released in the background
    assert!(b.release().await.unwrap());
    assert!(
        m.try_acquire("bad{name}")
            .await
            .unwrap_err()
            .is_invalid_input()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_tokens_grow_across_majorities() {
    let masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    // Each master behind a proxy that can cut it off: requests to a cut
    // master never arrive (a SIGSTOP would queue them and replay them on
    // SIGCONT, letting a naive per-node INCR catch up).
    let proxies: Vec<FaultProxy> = masters
        .iter()
        .map(|m| FaultProxy::start(m.addr()).unwrap())
        .collect();
    let urls: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
    let m = manager(&urls, cfg(5_000));
    let mut last = 0;
    for _ in 0..2 {
        for cut in &proxies {
            // Each round, another master is cut off: the majorities differ.
            cut.set_refusing(true);
            cut.cut_all();
            let g = m.acquire("fenced").await.unwrap();
            assert!(
                g.fencing_token() > last,
                "token {} after {last}",
                g.fencing_token()
            );
            last = g.fencing_token();
            // The token is the register's value on a majority (a naive
            // per-node INCR leaves different values on each node).
            let holding = masters
                .iter()
                .filter(|s| {
                    let mut con = s.client().get_connection().unwrap();
                    redis::cmd("GET")
                        .arg("larder:{fenced}:fence")
                        .query::<Option<u64>>(&mut con)
                        .unwrap()
                        == Some(last)
                })
                .count();
            assert!(holding >= 2, "token {last} is on {holding} of 3 fences");
            assert!(g.release().await.unwrap());
            cut.set_refusing(false);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_go_backwards_across_a_restart_without_persistence() {
    let mut server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let m = manager(&[server.url()], cfg(5_000));
    let mut last = 0;
    for _ in 0..3 {
        let g = m.acquire("t").await.unwrap();
        assert!(g.fencing_token() > last);
        last = g.fencing_token();
        assert!(g.release().await.unwrap());
    }
    server.kill();
    server.restart().unwrap();
    let fresh = manager(&[server.url()], cfg(5_000));
    let g = fresh.acquire("t").await.unwrap();
    assert!(
        g.fencing_token() > last,
        "token {} after {last}: the fence went backwards",
        g.fencing_token()
    );
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_tokens_never_go_backwards_after_every_master_restarts() {
    let mut masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
    let m = manager(&urls, cfg(5_000));
    let mut last = 0;
    for _ in 0..3 {
        let g = m.acquire("t").await.unwrap();
        assert!(g.fencing_token() > last);
        last = g.fencing_token();
        assert!(g.release().await.unwrap());
    }
    // A rolling restart of every master while the name is idle.
    for s in &mut masters {
        s.kill();
        s.restart().unwrap();
    }
    let fresh = manager(&urls, cfg(5_000));
    let g = fresh.acquire("t").await.unwrap();
    assert!(
        g.fencing_token() > last,
        "token {} after {last}: the fence went backwards",
        g.fencing_token()
    );
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_release_still_releases() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let m = manager(&[proxy.url()], cfg(60_000));
    let g = m.acquire("r").await.unwrap();
    // The release is started, then dropped before its request gets
    // through: the link holds it, then the connection is cut.
    proxy.set_stalled(true);
    assert!(g.release().now_or_never().is_none(), "released at once");
    proxy.cut_all();
    proxy.set_stalled(false);
    // Only a release frees the key before its 60 s TTL.
    let other = manager(&[server.url()], cfg(60_000));
    let g = bounded(
        "the lock after a cancelled release",
        other.acquire_wait("r", Duration::from_secs(10)),
    )
    .await
    .expect("a cancelled release left the key held for its TTL");
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_at_their_maximum_do_not_overflow() {
    let server = RedisServer::start().unwrap();
    let mut c = cfg(60_000);
    c.wait_poll = Duration::MAX;
    let m = manager(&[server.url()], c);
    let g = m.acquire_wait("max", Duration::MAX).await.unwrap();
    assert!(!g.is_valid_for(Duration::MAX));
    assert!(g.is_valid_for(Duration::from_secs(1)));
    assert!(g.release().await.unwrap());
    let e = LockManager::new(
        &[server.url().as_str()],
        LockConfig::with_ttl(Duration::MAX),
    )
    .unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_loses_the_lock_and_its_token_is_refused() {
    let server = RedisServer::start().unwrap();
    let mut c = cfg(300);
    c.watchdog = false; // a fixed lease, as if the holder stopped renewing
    let a_mgr = manager(&[server.url()], c);
    let b_mgr = manager(&[server.url()], cfg(5_000));
    let resource = Arc::new(FencedResource::new(0u32));

    let a = a_mgr.acquire("stock").await.unwrap();
    let stale = a.fencing_token();
    // The holder "pauses": its lease runs out and lost() fires.
    tokio::time::timeout(Duration::from_secs(5), a.lost())
        .await
        .expect("lost() fired");
    assert!(a.is_lost() && !a.is_valid_for(Duration::ZERO));

    // Meanwhile another client takes the lock and writes.
    let b = b_mgr
        .acquire_wait("stock", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(b.fencing_token() > stale);
    // One grant may write several times; another presenting its token may not.
    resource.write(b.fence(), |v| *v += 1).unwrap();
    resource.write(b.fence(), |v| *v += 1).unwrap();
    assert!(resource.write(b.fencing_token(), |v| *v += 100).is_err());
    // The paused holder wakes up and tries to write: refused.
    let err = resource.write(stale, |v| *v += 100).unwrap_err();
    assert_eq!(err.presented, stale);
    assert_eq!(resource.read(), 2);
    assert!(
        !a.release().await.unwrap(),
        "releasing a lost lock reports it"
    );
    assert!(b.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_quarantine_prevents_a_double_grant() {
    for quarantine in [true, false] {
        let mut masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
            .await
            .unwrap();
        let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
        let mut c = cfg(10_000);
        c.watchdog = false;
        c.quarantine = quarantine;
        c.retry_count = 0;
        let a_mgr = manager(&urls, c.clone());
        // B retries, so a connection broken by the restart does not hide the scenario.
        c.retry_count = 3;
        let b_mgr = manager(&urls, c);
        // B has seen every node (it remembers their run_ids).
        drop(b_mgr.try_acquire("warmup").await.unwrap());

        // A acquires while master 2 is paused: its votes are masters 0 and 1.
        masters[2].pause().unwrap();
        let a = a_mgr
            .try_acquire("crit")
            .await
            .unwrap()
            .expect("A holds a quorum");
        masters[2].resume().unwrap();
        // Master 1 crashes and restarts without persistence: A's key is gone there.
        masters[1].kill();
        masters[1].restart().unwrap();

        let b = b_mgr.acquire("crit").await;
        if quarantine {
            assert!(
                b.is_err(),
                "quarantine must refuse the restarted node's vote"
            );
        } else {
            // Negative control: without quarantine, the double grant happens.
            assert!(b.is_ok(), "the unsafe scenario did not reproduce");
        }
        drop(a);
    }
}

#[tokio::test]
async fn bad_configuration_is_typed() {
    let e = LockManager::new(&[], cfg(1_000)).unwrap_err();
    assert!(e.is_invalid_input());
    let e = LockManager::new(&["redis://127.0.0.1:1"], cfg(1)).unwrap_err();
    assert!(e.is_invalid_input());
    let e = LockManager::new(&["not a url"], cfg(1_000)).unwrap_err();
    assert!(e.is_invalid_input());
    // A node timeout that leaves a renewal no time before the deadline.
    let mut c = cfg(1_000);
    c.node_timeout = Duration::from_millis(400);
    let e = LockManager::new(&["redis://127.0.0.1:1"], c).unwrap_err();
    assert!(e.is_invalid_input(), "node_timeout 400 ms with a 1 s TTL");
    let mut c = cfg(1_000);
    c.node_timeout = Duration::ZERO;
    let e = LockManager::new(&["redis://127.0.0.1:1"], c).unwrap_err();
    assert!(e.is_invalid_input(), "a zero node timeout");
}
