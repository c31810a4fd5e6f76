//! Cancellation at every await point of an acquisition: whatever a
//! cancelled attempt took is released at once (in the background), not
//! left for its TTL.

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use larder_lock::LockManager;
use larder_testkit::{RedisServer, start_masters};

use crate::{bounded, cfg, manager};

/// Polls `fut`, letting it suspend `n` times, then drops it. `Some` if it
/// finished first.
async fn cancel_after<F: Future>(fut: F, n: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut suspended = 0;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending if suspended + 1 >= n => Poll::Ready(None),
        Poll::Pending => {
            suspended += 1;
            Poll::Pending
        }
    })
    .await
}

/// Whether any server holds a lock key now.
fn any_lock_key(servers: &[RedisServer]) -> bool {
    servers.iter().any(|s| {
        let mut con = s.client().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
        keys.iter().any(|k| !k.ends_with(":fence"))
    })
}

/// Cancels an acquisition after 1, 2, 3... suspensions until one runs to
/// completion. After each cancellation another client (60 s TTL, like
/// the cancelled one) must get the lock well before that TTL: only a
/// release can free it. Returns (cancellations, cancellations that had
/// left a key behind).
async fn cancel_everywhere(servers: &[RedisServer]) -> (usize, usize) {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let m = manager(&urls, cfg(60_000));
    let other = manager(&urls, cfg(60_000));
    drop(m.try_acquire("warm").await.unwrap());
    drop(other.try_acquire("warm2").await.unwrap());
    let (mut cancelled, mut orphans) = (0, 0);
    for n in 1..200 {
        match cancel_after(m.try_acquire("racy"), n).await {
            Some(done) => {
                let g = done.unwrap().expect("uncontended");
                assert!(g.release().await.unwrap());
                return (cancelled, orphans);
            }
            None => {
                cancelled += 1;
                if any_lock_key(servers) {
                    orphans += 1;
                }
                let g = bounded("the lock after a cancelled acquisition", take(&other, n)).await;
                assert!(g.release().await.unwrap());
            }
        }
    }
    panic!("the acquisition never completed");
}

async fn take(other: &LockManager, n: usize) -> larder_lock::LockGuard {
    other
        .acquire_wait("racy", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("cancelled after {n} suspensions, the key stayed: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_single_instance_acquisition_releases_its_key() {
    let server = RedisServer::start().unwrap();
    let servers = [server];
    let (cancelled, orphans) = cancel_everywhere(&servers).await;
    assert!(cancelled >= 1, "never cancelled mid-way");
    assert!(orphans >= 1, "no cancellation ever left a key to release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_redlock_acquisition_releases_its_keys_in_every_phase() {
    let servers = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let (cancelled, orphans) = cancel_everywhere(&servers).await;
    // Votes, fence read and fence write: at least one suspension each.
    assert!(cancelled >= 3, "only {cancelled} cancellation points");
    assert!(orphans >= 2, "keys were left behind only {orphans} times");
}
