//! Auto-batching: each caller's wait is bounded by its own deadline, however
//! long the queue behind a slow `MGET`.

use std::time::Duration;

use larder_core::Store;
use larder_redis::{RedisStore, Topology};
use larder_testkit::{FaultProxy, RedisServer};

use crate::{batched_store, quick_config};

/// A store that batches up to 16 keys, with each of `keys` set to itself.
async fn batching_store(server: &RedisServer, keys: &[&str]) -> RedisStore {
    batching_store_at(&server.url(), keys).await
}

async fn batching_store_at(url: &str, keys: &[&str]) -> RedisStore {
    let s = batched_store(url);
    for k in keys {
        s.set(k, k.as_bytes(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    s
}

#[tokio::test]
async fn each_batched_get_is_bounded_by_its_own_deadline() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    // 300 ms to connect + 300 ms to answer, no retries: one call's worst
    // case is 600 ms (README, "Worst case of one call").
    let worst = Duration::from_millis(600);
    let cfg = quick_config(Topology::Standalone(proxy.url()))
        .auto_batch(1)
        .build()
        .unwrap();
    let s = RedisStore::new(cfg).unwrap();
    s.set("k", b"v", Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    // The server goes silent. Virtual time from here: the deadlines fire
    // as soon as nothing else can happen, and the waits are measured
    // exactly, without a wall clock.
    tokio::time::pause();
    proxy.set_stalled(true);
    let start = tokio::time::Instant::now();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s.get("k").await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, caller) in callers.into_iter().enumerate() {
        let (r, waited) = caller.await.unwrap();
        match r {
            Err(e) if e.is_backend_unavailable() => {}
            other => wrong.push(format!("caller {i}: {other:?}")),
        }
        // Tokio's timers round up to the next millisecond.
        if waited > worst + Duration::from_millis(1) {
            wrong.push(format!("caller {i} waited {waited:?}, over its {worst:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Batches are sent from the callers' tasks: a caller dropped while its
/// get is batched (leading or waiting, before or during the `MGET`) never
/// leaves the others waiting. The futures are polled by hand, one thread,
/// so each drop happens exactly at the step named.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_caller_never_wedges_the_others() {
    use std::pin::pin;
    use std::task::Poll;

    /// Polls once, in this task's context.
    async fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
    }

    let server = RedisServer::start().unwrap();
    let s = batching_store(&server, &["a", "b", "c", "d", "e"]).await;
    // The connection is up before the drops below.
    assert_eq!(s.get("a").await.unwrap().as_deref(), Some(&b"a"[..]));
    let sent = |s: &RedisStore| s.batch_stats().unwrap().keys;

    // 1. The leader is dropped while its MGET is in flight: a waiter of
    // that batch sends it again, without the dropped caller's key.
    let before = sent(&s);
    {
        let mut a = Box::pin(s.get("a"));
        let mut b = pin!(s.get("b"));
        let mut c = pin!(s.get("c"));
        assert!(poll(&mut a).await.is_pending(), "a leads and yields");
        assert!(poll(&mut b).await.is_pending());
        assert!(poll(&mut c).await.is_pending());
        assert!(poll(&mut a).await.is_pending(), "a's MGET is in flight");
        drop(a);
        assert_eq!((&mut b).await.unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!((&mut c).await.unwrap().as_deref(), Some(&b"c"[..]));
    }
    assert_eq!(sent(&s) - before, 3 + 2, "sent with a, then again without");

    // 2. The leader is dropped before it sends (during its yield).
    {
        let mut a = Box::pin(s.get("a"));
        let mut b = pin!(s.get("b"));
        assert!(poll(&mut a).await.is_pending());
        assert!(poll(&mut b).await.is_pending());
        drop(a);
        assert_eq!((&mut b).await.unwrap().as_deref(), Some(&b"b"[..]));
    }

    // 3. A caller named leader of the next batch is dropped before it is
    // polled; a plain waiter is dropped too. The rest of its batch goes out.
    {
        let mut a = pin!(s.get("a"));
        let mut b = Box::pin(s.get("b"));
        assert!(poll(&mut a).await.is_pending());
        assert!(poll(&mut a).await.is_pending(), "a's MGET is in flight");
        // These three queue for the next batch: b first (named leader next).
        assert!(poll(&mut b).await.is_pending());
        let mut c = Box::pin(s.get("c"));
        let mut d = pin!(s.get("d"));
        assert!(poll(&mut c).await.is_pending());
        assert!(poll(&mut d).await.is_pending());
        drop(c);
        assert_eq!((&mut a).await.unwrap().as_deref(), Some(&b"a"[..]));
        // a handed the lead to b, which is dropped unpolled.
        drop(b);
        match poll(&mut d).await {
            Poll::Ready(r) => panic!("d answered before its batch was sent: {r:?}"),
            Poll::Pending => {}
        }
        assert_eq!((&mut d).await.unwrap().as_deref(), Some(&b"d"[..]));
    }
    // Nothing is left behind: a lone get still goes through.
    assert_eq!(s.get("e").await.unwrap().as_deref(), Some(&b"e"[..]));
}

/// A leader whose future is kept but never polled again (a `select!` that
/// stopped polling it) no longer holds up the callers behind it: after a
/// short stall one of them takes the lead and their gets are answered
/// (before, they waited for their deadline and got `Timeout`). The parked
/// leader's own key is answered too, when it is polled at last.
#[tokio::test(flavor = "current_thread")]
async fn a_leader_that_is_never_polled_again_does_not_hold_up_the_others() {
    use std::task::Poll;

    let server = RedisServer::start().unwrap();
    let s = batching_store(&server, &["a", "b", "c"]).await;
    assert_eq!(s.get("a").await.unwrap().as_deref(), Some(&b"a"[..]));
    for parked_in_flight in [false, true] {
        let mut parked = Box::pin(s.get("a"));
        let mut once = |cx: &mut std::task::Context<'_>| parked.as_mut().poll(cx);
        // Polled once: it leads and yields (and, polled twice, sends).
        let polls = if parked_in_flight { 2 } else { 1 };
        for _ in 0..polls {
            assert!(
                std::future::poll_fn(|cx| Poll::Ready(once(cx)))
                    .await
                    .is_pending()
            );
        }
        let others: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|k| {
                let s = s.clone();
                tokio::spawn(async move { s.get(k).await })
            })
            .collect();
        for (k, h) in ["b", "c"].into_iter().zip(others) {
            let got = h.await.unwrap();
            assert_eq!(
                got.unwrap().as_deref(),
                Some(k.as_bytes()),
                "{k} (the leader parked {})",
                if parked_in_flight {
                    "in flight"
                } else {
                    "before sending"
                }
            );
        }
        assert_eq!(parked.await.unwrap().as_deref(), Some(&b"a"[..]));
    }
}

/// A batch comes back to the queue (its sender was dropped while its
/// `MGET` was in flight) and the caller named to send it again is never
/// polled: another caller of that batch, which had found its key in
/// flight, watches again and takes the lead (before, it waited for its
/// deadline and got `Timeout`).
#[tokio::test(flavor = "current_thread")]
async fn a_batch_put_back_under_a_leader_never_polled_is_still_sent() {
    use std::task::Poll;

    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx))).await
    }

    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let s = batching_store_at(&proxy.url(), &["a", "b", "c"]).await;
    proxy.set_replies_stalled(true);
    let held = proxy.held_replies();
    let mut leader = Box::pin(s.get("a"));
    let mut parked = Box::pin(s.get("b"));
    assert!(
        poll_once(&mut leader).await.is_pending(),
        "a leads and yields"
    );
    assert!(
        poll_once(&mut parked).await.is_pending(),
        "b waits in a's batch"
    );
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move { s.get("c").await })
    };
    tokio::task::yield_now().await; // c joins a's batch
    assert!(poll_once(&mut leader).await.is_pending(), "a sends a, b, c");
    proxy.wait_held_replies(held + 1).await;
    // c's stall check runs and finds its key in flight: the runtime's
    // clock is moved past the check (not slept on), then c runs (this is
    // a current-thread runtime: the yield hands it the thread) and stops
    // watching. Well inside the held MGET's 300 ms response timeout.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(60)).await;
    tokio::task::yield_now().await;
    tokio::time::resume();
    proxy.set_replies_stalled(false);
    drop(leader); // the batch goes back; b is named to send it, never polled
    assert_eq!(
        waiter.await.unwrap().unwrap().as_deref(),
        Some(&b"c"[..]),
        "c took the lead and sent the batch again"
    );
    drop(parked);
}
