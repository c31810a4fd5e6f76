//! The multi-level cache: L1-only paths on a mock clock, and L1 + L2 /
//! L2-only paths against real redis-server processes from larder-testkit.

#[cfg(feature = "redis")]
mod coherence;
#[cfg(feature = "redis")]
mod durable;
mod hostile;
mod l1;
#[cfg(feature = "redis")]
mod l2;
#[cfg(feature = "metrics")]
mod metrics;
#[cfg(feature = "redis")]
mod security;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use larder::core::{Error, ErrorKind, Loader, Result};
use tokio::sync::Semaphore;

/// A loader for tests: counts calls, answers `value{key}` (or "not found"
/// for keys >= 1000), and can be held at a gate, fail or panic.
#[derive(Clone, Default)]
pub(crate) struct TestLoader {
    pub(crate) calls: Arc<AtomicUsize>,
    /// When set, each load takes a permit first (tests add permits to let loads go).
    pub(crate) gate: Option<Arc<Semaphore>>,
    /// Loads that have started (entered the loader).
    pub(crate) entered: Arc<AtomicUsize>,
    pub(crate) fail: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) panic: Arc<std::sync::atomic::AtomicBool>,
    /// The answers carry this generation (tests bump it to see new values).
    pub(crate) generation: Arc<AtomicUsize>,
    /// Advance this mock clock by this much during each load (a load time).
    pub(crate) clock: Option<(larder::core::MockClock, std::time::Duration)>,
}

impl TestLoader {
    pub(crate) fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (
            TestLoader {
                gate: Some(Arc::clone(&gate)),
                ..Default::default()
            },
            gate,
        )
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits (bounded, yielding) until `n` loads have entered the loader.
    pub(crate) async fn until_entered(&self, n: usize) {
        let entered = Arc::clone(&self.entered);
        until(&format!("{n} loads started"), || {
            entered.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

impl Loader<u64, String> for TestLoader {
    async fn load(&self, key: &u64) -> Result<Option<String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // The source is read when the load starts; the gate holds the answer.
        let g = self.generation.load(Ordering::SeqCst);
        self.entered.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if let Some((clock, d)) = &self.clock {
            clock.advance(*d);
        }
        if self.panic.load(Ordering::SeqCst) {
            panic!("loader bug");
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Source, "database down"));
        }
        if *key >= 1000 {
            return Ok(None);
        }
        Ok(Some(format!("value{key}.{g}")))
    }
}

/// Waits until `f()` holds, checking after every yield. Bounded by a count
/// of yields and short naps (about a minute in all), so a state that never
/// comes fails the test instead of hanging it; a busy machine (other tests
/// on two cores) only makes it check less often.
pub(crate) async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for i in 0..2_000_000u32 {
        if f() {
            return;
        }
        if i % 64 == 63 {
            tokio::time::sleep(std::time::Duration::from_micros(500)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    panic!("never: {what}");
}
