//! Single flight: one initialiser per key; errors, panics and cancelled
//! leaders never strand waiters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use larder_core::{Error, ErrorKind};
use larder_memory::MemoryCache;

#[test]
fn one_initialiser_for_many_threads() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let calls = AtomicUsize::new(0);
    let gate = Barrier::new(8);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                gate.wait();
                let v = cache.get_or_insert_with(7, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Give the others time to join the flight (not a correctness wait).
                    std::thread::yield_now();
                    77
                });
                assert_eq!(v, 77);
            });
        }
    });
    // Exactly one: the value is cached before the flight ends, and a caller
    // that becomes leader after that finds it on its second look.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&7), Some(77));
}

#[test]
fn errors_reach_every_waiter_and_are_not_cached() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let r = cache.get_or_try_insert_with(1, || Err(Error::new(ErrorKind::Source, "db down")));
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Source);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.get_or_try_insert_with(1, || Ok(5)).unwrap(), 5);
}

#[test]
fn a_panicking_initialiser_gives_waiters_an_error() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let started = Barrier::new(2);
    let release = Barrier::new(2);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_try_insert_with(1, || {
                started.wait();
                release.wait();
                panic!("boom");
            })
        });
        started.wait();
        let waiter = s.spawn(|| cache.get_or_try_insert_with(1, || Ok(2)));
        // The waiter is either waiting on the flight or will find it ended;
        // let the leader panic now.
        release.wait();
        assert!(leader.join().is_err(), "the leader's caller sees the panic");
        match waiter.join().unwrap() {
            Err(e) => assert_eq!(e.kind(), ErrorKind::SourcePanicked),
            Ok(v) => assert_eq!(v, 2, "it arrived after the flight ended and loaded itself"),
        }
    });
    assert_ne!(cache.get(&1), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waiters_share_the_leaders_value() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let c = cache.clone();
    let n = Arc::clone(&calls);
    let leader = tokio::spawn(async move {
        c.get_or_try_insert_with_async(1, || async move {
            n.fetch_add(1, Ordering::SeqCst);
            rx.await.ok();
            Ok(10)
        })
        .await
    });
    // Wait until the leader is inside its initialiser.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let mut waiters = Vec::new();
    for _ in 0..20 {
        let c = cache.clone();
        let n = Arc::clone(&calls);
        waiters.push(tokio::spawn(async move {
            c.get_or_try_insert_with_async(1, || async move {
                n.fetch_add(1, Ordering::SeqCst);
                Ok(99)
            })
            .await
        }));
    }
    tx.send(()).unwrap();
    assert_eq!(leader.await.unwrap().unwrap(), 10);
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap(), 10);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one initialiser ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_never_strands_its_waiters() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let entered = Arc::new(tokio::sync::Notify::new());
    let c = cache.clone();
    let e = Arc::clone(&entered);
    let leader = tokio::spawn(async move {
        c.get_or_try_insert_with_async(1, || async move {
            e.notify_one();
            std::future::pending::<()>().await;
            Ok(1)
        })
        .await
    });
    entered.notified().await;
    let c = cache.clone();
    let waiter =
        tokio::spawn(async move { c.get_or_try_insert_with_async(1, || async { Ok(2) }).await });
    tokio::task::yield_now().await;
    leader.abort(); // the leader's future is dropped mid-load
    let got = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter was stranded")
        .unwrap();
    assert_eq!(got.unwrap(), 2, "the waiter took over and loaded");
    assert_eq!(cache.get(&1), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_panic_becomes_an_error_for_waiters() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let entered = Arc::new(tokio::sync::Notify::new());
    let go = Arc::new(tokio::sync::Notify::new());
    let c = cache.clone();
    let (e, g) = (Arc::clone(&entered), Arc::clone(&go));
    let leader = tokio::spawn(async move {
        c.get_or_try_insert_with_async(1, || async move {
            e.notify_one();
            g.notified().await;
            panic!("loader bug");
        })
        .await
    });
    entered.notified().await;
    let c = cache.clone();
    let waiter =
        tokio::spawn(async move { c.get_or_try_insert_with_async(1, || async { Ok(3) }).await });
    tokio::task::yield_now().await;
    go.notify_one();
    assert!(leader.await.unwrap_err().is_panic());
    match tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .unwrap()
        .unwrap()
    {
        Err(e) => assert_eq!(e.kind(), ErrorKind::SourcePanicked),
        Ok(v) => assert_eq!(v, 3, "it arrived after the flight ended"),
    }
}
