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

/// Spins (bounded, yielding) until `n` callers wait on the flight of `key`.
fn until_waiting(cache: &MemoryCache<u32, u64>, key: u32, n: usize) {
    for _ in 0..10_000_000 {
        if cache.flight_waiters(&key) >= n {
            return;
        }
        std::thread::yield_now();
    }
    panic!("{n} waiters never joined the flight of {key}");
}

#[test]
fn a_panicking_initialiser_gives_waiters_an_error() {
    let cache: MemoryCache<u32, u64> = MemoryCache::new(100);
    let started = Barrier::new(2);
    let release = Barrier::new(2);
    let waiter_loads = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache.get_or_try_insert_with(1, || {
                started.wait();
                release.wait();
                panic!("boom");
            })
        });
        started.wait();
        let waiter = s.spawn(|| {
            cache.get_or_try_insert_with(1, || {
                waiter_loads.fetch_add(1, Ordering::SeqCst);
                Ok(2)
            })
        });
        // The waiter is on the flight before the leader panics.
        until_waiting(&cache, 1, 1);
        release.wait();
        assert!(leader.join().is_err(), "the leader's caller sees the panic");
        let e = waiter.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourcePanicked);
    });
    assert_eq!(waiter_loads.load(Ordering::SeqCst), 0);
    assert_eq!(cache.get(&1), None, "nothing is cached after a panic");
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
    // Every waiter is on the flight before the leader finishes.
    while cache.flight_waiters(&1) < 20 {
        tokio::task::yield_now().await;
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
    while cache.flight_waiters(&1) == 0 {
        tokio::task::yield_now().await;
    }
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
    while cache.flight_waiters(&1) == 0 {
        tokio::task::yield_now().await;
    }
    go.notify_one();
    assert!(leader.await.unwrap_err().is_panic());
    let e = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the waiter was stranded")
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SourcePanicked);
    assert_eq!(cache.get(&1), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiters_on_one_hot_key_all_get_the_value() {
    use larder_memory::{Join, SingleFlight};
    let flights: SingleFlight<u32, u64> = SingleFlight::new();
    let Join::Leader(leader) = flights.join(7) else {
        panic!("the first caller leads")
    };
    let mut waiters = Vec::new();
    for _ in 0..10_000 {
        let Join::Wait(w) = flights.join(7) else {
            panic!("later callers wait")
        };
        waiters.push(tokio::spawn(w));
    }
    assert_eq!(flights.waiters(&7), 10_000);
    assert!(leader.finish(70));
    for w in waiters {
        assert_eq!(w.await.unwrap(), Some(70));
    }
    assert!(flights.is_empty());
}

#[test]
fn a_forgotten_flight_does_not_publish_and_a_new_one_starts() {
    use larder_memory::{Join, SingleFlight};
    let flights: SingleFlight<&str, u32> = SingleFlight::new();
    let Join::Leader(old) = flights.join("k") else {
        panic!()
    };
    let Join::Wait(old_waiter) = flights.join("k") else {
        panic!()
    };
    assert!(flights.forget("k"), "a flight was running");
    let Join::Leader(new) = flights.join("k") else {
        panic!("after forget, the next caller leads a new flight")
    };
    let mut published = false;
    assert!(
        !old.finish_with(1, |_| published = true),
        "no longer current"
    );
    assert!(!published, "a forgotten flight must not publish");
    assert_eq!(
        old_waiter.wait_blocking(),
        Some(1),
        "its waiters still get its value"
    );
    assert!(new.finish_with(2, |_| published = true));
    assert!(published);
    // A dropped leader abandons its flight: waiters get None and retry.
    let Join::Leader(l) = flights.join("k") else {
        panic!()
    };
    let Join::Wait(w) = flights.join("k") else {
        panic!()
    };
    drop(l);
    assert_eq!(w.wait_blocking(), None);
    assert!(flights.is_empty());
}
