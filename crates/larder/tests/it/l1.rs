//! L1-only caches (the embedded default): single flight, failures,
//! staleness, negative caching, invalidation races. Time is a mock clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use larder::core::{ErrorKind, MockClock};
use larder::{Cache, Ttl};

use crate::{TestLoader, until};

fn cache(loader: TestLoader, clock: &MockClock) -> Cache<u64, String> {
    Cache::builder()
        .memory(1_000)
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(10)))
        .loader(loader)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_load() {
    let clock = MockClock::new();
    let (loader, gate) = TestLoader::gated();
    let c = cache(loader.clone(), &clock);
    let mut callers = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        callers.push(tokio::spawn(async move { c.get_or_load(&7).await }));
    }
    // Every caller is on the flight before the load may finish.
    until("999 callers wait on the load", || {
        c.stats().coalesced >= 999
    })
    .await;
    gate.add_permits(1);
    for h in callers {
        assert_eq!(h.await.unwrap().unwrap().as_deref(), Some("value7.0"));
    }
    assert_eq!(loader.calls(), 1, "exactly one load");
    assert_eq!(
        c.get_or_load(&7).await.unwrap().as_deref(),
        Some("value7.0")
    );
    assert_eq!(loader.calls(), 1, "then an L1 hit");
    let s = c.stats();
    assert_eq!((s.loads_ok, s.coalesced, s.l1_hits), (1, 999, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_failing_loader_answers_every_waiter_and_caches_nothing() {
    let clock = MockClock::new();
    let (loader, gate) = TestLoader::gated();
    loader.panic.store(true, Ordering::SeqCst);
    let c = cache(loader.clone(), &clock);
    let mut callers = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        callers.push(tokio::spawn(async move { c.get_or_load(&1).await }));
    }
    until("9 waiters", || c.stats().coalesced >= 9).await;
    gate.add_permits(1);
    for h in callers {
        let e = h.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SourcePanicked, "{e}");
    }
    assert_eq!(loader.calls(), 1);
    assert_eq!(c.get(&1).await.unwrap(), None, "a panic is not cached");

    // An error: same, and not cached either.
    loader.panic.store(false, Ordering::SeqCst);
    loader.fail.store(true, Ordering::SeqCst);
    gate.add_permits(1);
    let e = c.get_or_load(&1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Source);
    loader.fail.store(false, Ordering::SeqCst);
    gate.add_permits(1);
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.0")
    );
    assert_eq!(loader.calls(), 3);
    let s = c.stats();
    assert_eq!((s.load_errors, s.loads_ok), (2, 1));
}

/// moka#240: the caller whose call started the load is cancelled; the
/// load runs on in its own task and every other caller gets the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_first_caller_never_strands_the_others() {
    let clock = MockClock::new();
    let (loader, gate) = TestLoader::gated();
    let c = cache(loader.clone(), &clock);
    let first = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_load(&5).await })
    };
    loader.until_entered(1).await;
    let second = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_load(&5).await })
    };
    until("the second caller waits", || c.stats().coalesced >= 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // A caller that gives up by timeout does not stop the load either.
    let third = tokio::time::timeout(Duration::from_millis(1), c.get_or_load(&5)).await;
    assert!(third.is_err(), "the load is still held at the gate");
    gate.add_permits(1);
    assert_eq!(second.await.unwrap().unwrap().as_deref(), Some("value5.0"));
    assert_eq!(loader.calls(), 1, "one load, never restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_has_its_own_timeout() {
    let clock = MockClock::new();
    let (loader, _gate) = TestLoader::gated(); // never opened
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .loader(loader.clone())
        .load_timeout(Duration::from_secs(3600))
        .wait_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let results = futures_util::future::join_all((0..5).map(|_| c.get_or_load(&9))).await;
    for r in results {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Timeout);
    }
    assert_eq!(
        loader.calls(),
        1,
        "the load runs on; nobody started a second"
    );
}

/// A load that started before an invalidation hands its (old) value to
/// the callers who asked before it, but never puts it in the L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_beats_a_slow_load() {
    let clock = MockClock::new();
    let (loader, gate) = TestLoader::gated();
    let c = cache(loader.clone(), &clock);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_load(&3).await })
    };
    loader.until_entered(1).await;
    // The source changes and the key is invalidated while the load runs.
    loader.generation.store(1, Ordering::SeqCst);
    c.invalidate(&3).await.unwrap();
    // The old load finishes with the old value... (gate: exactly this one)
    gate.add_permits(1);
    let old = slow.await.unwrap().unwrap();
    assert_eq!(old.as_deref(), Some("value3.0"));
    // ...which the cache did not keep.
    assert_eq!(c.get(&3).await.unwrap(), None, "the old value came back");
    gate.add_permits(1);
    assert_eq!(
        c.get_or_load(&3).await.unwrap().as_deref(),
        Some("value3.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(10)).stale_for(Duration::from_secs(5)))
        .loader(loader.clone())
        .build()
        .unwrap();
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.0")
    );
    loader.generation.store(1, Ordering::SeqCst);
    clock.advance(Duration::from_secs(12)); // stale, inside the grace window
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.0")
    );
    assert_eq!(c.stats().stale_served, 1);
    until("the refresh loaded", || c.stats().loads_ok == 2).await;
    until("the refresh landed", || c.stats().in_flight == 0).await;
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.1")
    );
    assert_eq!(loader.calls(), 2, "one refresh");
    // Past the grace window a stale value is a miss: the caller waits.
    loader.generation.store(2, Ordering::SeqCst);
    clock.advance(Duration::from_secs(16));
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("value1.2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_old_value_up_to_its_bound() {
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(10)))
        .stale_if_error(Duration::from_secs(60))
        .loader(loader.clone())
        .build()
        .unwrap();
    c.get_or_load(&2).await.unwrap();
    loader.fail.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        c.get_or_load(&2).await.unwrap().as_deref(),
        Some("value2.0")
    );
    assert_eq!(c.stats().stale_if_error, 1);
    clock.advance(Duration::from_secs(41)); // 61 s past fresh
    let e = c.get_or_load(&2).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_fires_near_expiry_with_the_measured_load_time() {
    let clock = MockClock::new();
    let loader = TestLoader {
        clock: Some((clock.clone(), Duration::from_millis(500))),
        ..Default::default()
    };
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(60)))
        .seed(42)
        .loader(loader.clone())
        .build()
        .unwrap();
    c.get_or_load(&4).await.unwrap();
    // 59 s left: with a 0.5 s load time the chance is about e^-118.
    for _ in 0..1000 {
        c.get_or_load(&4).await.unwrap();
    }
    assert_eq!(c.stats().early_refreshes, 0);
    // 50 ms left: the chance per read is e^-0.1, about 0.9.
    clock.advance(Duration::from_millis(59_450));
    for _ in 0..10 {
        c.get_or_load(&4).await.unwrap();
    }
    assert!(c.stats().early_refreshes >= 1, "{:?}", c.stats());
    until("the refresh loaded", || c.stats().loads_ok == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_caching_spares_the_source_until_its_ttl() {
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .negative_ttl(Duration::from_secs(5))
        .loader(loader.clone())
        .build()
        .unwrap();
    for _ in 0..100 {
        assert_eq!(c.get_or_load(&5000).await.unwrap(), None);
    }
    assert_eq!(loader.calls(), 1);
    assert_eq!(c.stats().negative_hits, 99);
    clock.advance(Duration::from_secs(6));
    assert_eq!(c.get_or_load(&5000).await.unwrap(), None);
    assert_eq!(loader.calls(), 2);

    // Off (the default): every miss reaches the source.
    let plain = cache(loader.clone(), &clock);
    plain.get_or_load(&5001).await.unwrap();
    plain.get_or_load(&5001).await.unwrap();
    assert_eq!(loader.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_reads_answer_per_key_and_load_the_rest_at_once() {
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c = cache(loader.clone(), &clock);
    c.get_or_load(&1).await.unwrap();
    let got = c.get_many_or_load(&[1, 2, 3, 1001]).await;
    let got: Vec<_> = got.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        got,
        vec![
            Some("value1.0".into()),
            Some("value2.0".into()),
            Some("value3.0".into()),
            None
        ]
    );
    // 1 single load, then 2, 3 and 1001 (three keys) in one load_many
    // (the default load_many calls load per key: 3 calls).
    assert_eq!(loader.calls(), 4);
    let cached = c.get_many(&[2, 3, 4]).await;
    assert_eq!(cached[2].as_ref().unwrap(), &None, "get_many does not load");
    assert_eq!(loader.calls(), 4);

    let report = c.warm(&[1, 2, 5, 6, 7], 2, 2, |_, _| {}).await;
    assert_eq!((report.skipped, report.loaded, report.failed), (2, 3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_lifecycle_are_typed_errors() {
    let clock = MockClock::new();
    let c: Cache<String, String> = Cache::builder()
        .clock(clock.shared())
        .loader(larder::core::FnLoader::new(|k: String| async move {
            Ok(Some(k))
        }))
        .build()
        .unwrap();
    let e = c.get_or_load(&String::new()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey);
    let huge = "k".repeat(larder::core::MAX_KEY_LEN + 1);
    assert_eq!(
        c.get_or_load(&huge).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    assert_eq!(
        c.invalidate(&huge).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    let e = c.update(&"a".into(), &"b".into()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "no writer");

    let bad = Cache::<u64, String>::builder()
        .no_memory()
        .build()
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidConfig, "no level at all");
    let bad = Cache::<u64, String>::builder()
        .ttl(Ttl::fixed(Duration::from_secs(1)).jitter(2.0))
        .build()
        .unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidConfig);
    let bad = Cache::<u64, String>::builder()
        .xfetch_beta(f64::NAN)
        .build();
    assert!(bad.is_err());

    c.get_or_load(&"x".into()).await.unwrap();
    c.close().await;
    assert_eq!(
        c.get_or_load(&"x".into()).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[test]
fn without_a_runtime_a_load_is_an_error_not_a_panic() {
    let c: Cache<u64, String> = Cache::builder()
        .loader(TestLoader::default())
        .build()
        .unwrap();
    let mut fut = std::pin::pin!(c.get_or_load(&1));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => assert_eq!(r.unwrap_err().kind(), ErrorKind::Unsupported),
        std::task::Poll::Pending => panic!("no runtime: it must answer at once"),
    }
    let _ = Arc::new(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_found_and_refreshed_before_they_expire() {
    let clock = MockClock::new();
    let loader = TestLoader::default();
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(100)))
        .hot_keys(1)
        .loader(loader.clone())
        .build()
        .unwrap();
    for _ in 0..1000 {
        c.get_or_load(&1).await.unwrap();
    }
    c.get_or_load(&2).await.unwrap();
    let hot: Vec<u64> = c.hot_keys().into_iter().map(|(k, _)| k).collect();
    assert_eq!(hot, vec![1]);
    // 9 s left (under a tenth of the TTL): the hot key refreshes, the cold one does not.
    clock.advance(Duration::from_secs(91));
    for _ in 0..64 {
        c.get_or_load(&2).await.unwrap();
    }
    assert_eq!(c.stats().hot_refreshes, 0);
    for _ in 0..64 {
        c.get_or_load(&1).await.unwrap();
    }
    assert!(c.stats().hot_refreshes >= 1);
    until("the hot key reloaded", || c.stats().loads_ok == 3).await;
    assert_eq!(loader.calls(), 3, "1, 2, then 1 again ahead of expiry");
}

/// A future is moved whole wherever it goes (into a task, a `join_all`, a
/// `select!`), so a read keeps its miss path's state on the heap: the
/// futures of `get` and `get_or_load` stay a few words (they were 216 and
/// 352 bytes with the L2 read and the load inline).
#[test]
fn read_futures_stay_a_few_words() {
    let clock = MockClock::new();
    let (loader, _gate) = TestLoader::gated();
    let c = cache(loader, &clock);
    let most = 6 * std::mem::size_of::<usize>();
    assert!(std::mem::size_of_val(&c.get(&1)) <= most);
    assert!(std::mem::size_of_val(&c.get_or_load(&1)) <= most);
}

/// A stale hit outside any runtime serves the value and starts no refresh
/// (there is nowhere to run one): nothing is counted as started.
#[test]
fn a_refresh_that_cannot_start_is_not_counted() {
    use futures_util::FutureExt;
    let clock = MockClock::new();
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .ttl(Ttl::fixed(Duration::from_secs(10)).stale_for(Duration::from_secs(5)))
        .loader(TestLoader::default())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(c.get_or_load(&1)).unwrap();
    drop(rt);
    clock.advance(Duration::from_secs(12)); // stale, inside the grace window
    let served = c
        .get(&1)
        .now_or_never()
        .expect("an L1 hit is ready at once");
    assert_eq!(served.unwrap().as_deref(), Some("value1.0"));
    let s = c.stats();
    assert_eq!((s.stale_served, s.background_refreshes), (1, 0));
}
