//! Cancellation at every await point of an acquisition: whatever a
//! cancelled attempt took is released at once (in the background), not
//! left for its TTL.

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use larder_lock::LockManager;
use larder_testkit::{FaultProxy, RedisServer, start_masters};

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

/// Cancels an acquisition after 1, 2, 3... suspensions until one runs to
/// completion. After each cancellation another client (60 s TTL, like
/// the cancelled one) must get the lock well before that TTL: only a
/// release can free a key the cancelled attempt left.
async fn cancel_everywhere(servers: &[RedisServer]) {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let m = manager(&urls, cfg(60_000));
    let other = manager(&urls, cfg(60_000));
    drop(m.try_acquire("warm").await.unwrap());
    drop(other.try_acquire("warm2").await.unwrap());
    for n in 1..200 {
        match cancel_after(m.try_acquire("racy"), n).await {
            Some(done) => {
                let g = done.unwrap().expect("uncontended");
                assert!(g.release().await.unwrap());
                return;
            }
            None => {
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

// How many suspensions an attempt goes through depends on scheduling (a
// reply can arrive within the poll that sent the request), so the sweeps
// assert what every cancellation must leave, not how many there were;
// `an_acquisition_cancelled_after_the_server_took_the_key_releases_it`
// makes the orphan happen deterministically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_single_instance_acquisition_releases_its_key() {
    let server = RedisServer::start().unwrap();
    cancel_everywhere(&[server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_cancelled_after_the_server_took_the_key_releases_it() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let m = manager(&[proxy.url()], cfg(60_000));
    drop(m.try_acquire("warm").await.unwrap());
    // The server runs the acquire script; its reply is held: the key is
    // taken and the client does not know. Then the attempt is cancelled.
    proxy.set_replies_stalled(true);
    let mut attempt = Box::pin(m.try_acquire("orphan"));
    tokio::select! {
        _ = &mut attempt => panic!("acquired with its reply held"),
        () = proxy.wait_held_replies(1) => {}
    }
    let mut con = server.client().get_connection().unwrap();
    // Its requests (script and INFO) reach the server in order; the script's
    // key shows up while the attempt is still pending.
    let taken = (0..10_000).any(|_| {
        redis::cmd("EXISTS")
            .arg("larder:{orphan}:lock")
            .query::<bool>(&mut con)
            .unwrap()
    });
    assert!(taken, "the attempt took the key");
    drop(attempt);
    proxy.set_replies_stalled(false);
    let other = manager(&[server.url()], cfg(60_000));
    let g = bounded(
        "the lock after a cancelled acquisition",
        take_named(&other, "orphan"),
    )
    .await;
    assert!(g.release().await.unwrap());
}

async fn take_named(other: &LockManager, name: &str) -> larder_lock::LockGuard {
    other
        .acquire_wait(name, Duration::from_secs(10))
        .await
        .expect("the key of a cancelled acquisition stayed for its TTL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_redlock_acquisition_releases_its_keys_in_every_phase() {
    let servers = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    // Votes, fence read and fence write each suspend at least once.
    cancel_everywhere(&servers).await;
}
