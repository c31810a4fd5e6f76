//! The lock-set workload: several independent clients guard a
//! read-modify-write; a referee checks that critical sections never overlap
//! and that no update is lost. The same checker must flag the workload when
//! the lock is disabled.

use std::sync::Arc;

use std::time::Duration;

use larder_lock::{FencedResource, LockManager};
use larder_testkit::{RedisServer, start_masters};

use crate::workload::{self, Verdict};
use crate::{cfg, manager};

/// `clients` independent managers (own connections) running the shared
/// workload at once; the referee's verdict.
async fn in_process(
    urls: &[String],
    resource: &RedisServer,
    clients: usize,
    locking: bool,
) -> Verdict {
    let client = resource.client();
    workload::reset(&client).await;
    let runs = (0..clients)
        .map(|_| workload::client(manager(urls, cfg(2_000)), client.clone(), 3, 3, locking));
    futures_util::future::join_all(runs).await;
    workload::verdict(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_mutual_exclusion_and_its_negative_control() {
    let (_masters, resource, urls) = workload::servers().await;

    // 4 clients x 3 tasks x 3 sections.
    let v = in_process(&urls, &resource, 4, true).await;
    workload::assert_protected(v, 36);

    // Negative control: without the lock the same referee sees the damage.
    let v = in_process(&urls, &resource, 4, false).await;
    workload::assert_caught(v, 36);
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
    let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
    let m = manager(&urls, cfg(5_000));
    let mut last = 0;
    for paused in &masters {
        // Each round, another master is paused: the majorities differ.
        paused.pause().unwrap();
        let g = m.acquire("fenced").await.unwrap();
        assert!(
            g.fencing_token() > last,
            "token {} after {last}",
            g.fencing_token()
        );
        last = g.fencing_token();
        assert!(g.release().await.unwrap());
        paused.resume().unwrap();
    }
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
    resource.write(b.fencing_token(), |v| *v += 1).unwrap();
    // The paused holder wakes up and tries to write: refused.
    let err = resource.write(stale, |v| *v += 100).unwrap_err();
    assert_eq!(err.presented, stale);
    assert_eq!(resource.read(), 1);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_futures_leave_no_orphan_beyond_the_ttl() {
    let server = RedisServer::start().unwrap();
    let m = manager(&[server.url()], cfg(400));
    for i in 0..40u64 {
        // Cancel acquisitions at varying points.
        let fut = m.try_acquire("racy");
        let _ = tokio::time::timeout(Duration::from_micros(50 * (i % 8)), fut).await;
    }
    // Whatever a cancelled attempt set expires by its TTL: a fresh client gets the lock.
    let other = manager(&[server.url()], cfg(5_000));
    let g = other
        .acquire_wait("racy", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
}

#[tokio::test]
async fn bad_configuration_is_typed() {
    let e = LockManager::new(&[], cfg(1_000)).unwrap_err();
    assert!(e.is_invalid_input());
    let e = LockManager::new(&["redis://127.0.0.1:1"], cfg(1)).unwrap_err();
    assert!(e.is_invalid_input());
    let e = LockManager::new(&["not a url"], cfg(1_000)).unwrap_err();
    assert!(e.is_invalid_input());
}
