//! A circuit breaker per node: a dead Redis costs a fast error, not a
//! timeout per call, and is tried again by itself.
//!
//! - **Closed**: calls go through; `failure_threshold` consecutive node
//!   failures (timeouts, connection errors) open it.
//! - **Open**: calls fail at once with [`ErrorKind::CircuitOpen`] for
//!   `open_for`.
//! - **Half-open**: after `open_for`, one probe call goes through (others
//!   still fail fast); its success closes the breaker, its failure opens it
//!   for another `open_for`.
//! - A permit that is dropped without an outcome (the caller's future was
//!   cancelled: a timeout around the call, a `select!`) counts as neither
//!   success nor failure. A dropped probe releases its slot, so the next
//!   call probes: a cancellation says nothing about the node, and a probe
//!   slot held by a future that no longer exists would wedge the breaker
//!   half-open, failing every call with `CircuitOpen` for good.
//!
//! Server error replies (wrong type, script errors) do not count: they prove
//! the node is alive. Time comes from the core `Clock`.
//!
//! A healthy node's calls take no lock: while the breaker is closed with no
//! failure counted (`healthy`, kept with the state under the lock), a permit
//! is a flag and a success changes nothing. Every other case locks as
//! before, so a permit taken just before a failure opened the breaker is
//! one the locked path would have granted a moment earlier.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use larder_core::{Error, ErrorKind, Result, SharedClock};
use std::sync::Mutex as StdMutex;

/// Breaker thresholds.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive node failures that open the breaker (default 5).
    pub failure_threshold: u32,
    /// How long it stays open before a probe (default 1 s).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
        }
    }
}

impl BreakerConfig {
    /// Thresholds: open after `failure_threshold` consecutive failures, probe after `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        BreakerConfig {
            failure_threshold,
            open_for,
        }
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.failure_threshold == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "breaker failure_threshold must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The state of a breaker.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe is allowed.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    /// Which probe is in flight: a permit of an older probe (from before
    /// the breaker re-opened and half-opened again) never frees a newer one.
    probe_id: u64,
}

/// One node's breaker. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    name: Arc<str>,
    config: BreakerConfig,
    clock: SharedClock,
    inner: Arc<StdMutex<Inner>>,
    /// Closed with no failure counted: written under the lock whenever the
    /// state or the count changes, read without it.
    healthy: Arc<AtomicBool>,
}

/// Permission to make one call; report its outcome with
/// [`Breaker::record`]. Dropped unrecorded, it counts as neither success
/// nor failure, and a probe's slot is freed for the next call.
#[derive(Debug)]
pub(crate) struct Permit {
    /// A half-open probe: its id, and the state whose slot it holds.
    probe: Option<(u64, Arc<StdMutex<Inner>>)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        // `record` takes `probe` first, so this runs only for a permit
        // whose call was abandoned.
        if let Some((id, inner)) = &self.probe {
            end_probe(&mut lock(inner), *id);
        }
    }
}

/// Frees the probe slot if `id` is the probe in flight.
fn end_probe(g: &mut Inner, id: u64) {
    if g.probe_id == id {
        g.probe_in_flight = false;
    }
}

fn lock(inner: &StdMutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // The state stays consistent under a panic: every update is a plain store.
    inner.lock().unwrap_or_else(|p| p.into_inner())
}

impl Breaker {
    pub(crate) fn new(name: &str, config: BreakerConfig, clock: SharedClock) -> Self {
        Breaker {
            name: Arc::from(name),
            config,
            clock,
            inner: Arc::new(StdMutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                probe_in_flight: false,
                probe_id: 0,
            })),
            healthy: Arc::new(AtomicBool::new(true)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Publishes whether `g` is closed with no failure counted (call with
    /// the lock held, after any change).
    fn publish(&self, g: &Inner) {
        let healthy = g.state == BreakerState::Closed && g.failures == 0;
        self.healthy.store(healthy, Ordering::Release);
    }

    pub(crate) fn state(&self) -> BreakerState {
        let mut g = self.lock();
        self.advance(&mut g);
        g.state
    }

    fn advance(&self, g: &mut Inner) {
        if g.state == BreakerState::Open
            && g.opened_at.is_some_and(|t| {
                self.clock.now().saturating_duration_since(t) >= self.config.open_for
            })
        {
            g.state = BreakerState::HalfOpen;
            g.probe_in_flight = false;
            self.publish(g);
        }
    }

    /// The node it guards.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A permit, or a `CircuitOpen` error naming the node.
    pub(crate) fn allow(&self) -> Result<Permit> {
        if self.healthy.load(Ordering::Acquire) {
            return Ok(Permit { probe: None });
        }
        let node = &self.name;
        let mut g = self.lock();
        self.advance(&mut g);
        match g.state {
            BreakerState::Closed => Ok(Permit { probe: None }),
            BreakerState::HalfOpen if !g.probe_in_flight => {
                g.probe_in_flight = true;
                g.probe_id = g.probe_id.wrapping_add(1);
                Ok(Permit {
                    probe: Some((g.probe_id, Arc::clone(&self.inner))),
                })
            }
            _ => Err(Error::new(
                ErrorKind::CircuitOpen,
                format!("{node}: circuit open after repeated failures"),
            )),
        }
    }

    /// Records the outcome of a permitted call. `failed` is true only for
    /// node failures (timeouts, connection errors).
    pub(crate) fn record(&self, mut permit: Permit, failed: bool) {
        // Taken, so that the permit's Drop has nothing left to release.
        let probe = permit.probe.take().map(|(id, _)| id);
        if !failed && probe.is_none() && self.healthy.load(Ordering::Acquire) {
            // A success where no failure is counted: nothing changes.
            return;
        }
        // Read before the state changes: nothing between a change and its
        // publication can fail.
        let now = failed.then(|| self.clock.now());
        let mut g = self.lock();
        if let Some(id) = probe {
            end_probe(&mut g, id);
        }
        let probe = probe.is_some();
        if failed {
            g.failures = g.failures.saturating_add(1);
            if probe
                || g.state == BreakerState::HalfOpen
                || g.failures >= self.config.failure_threshold
            {
                g.state = BreakerState::Open;
                g.opened_at = now;
            }
        } else {
            g.failures = 0;
            if g.state != BreakerState::Open || probe {
                g.state = BreakerState::Closed;
                g.opened_at = None;
            }
        }
        self.publish(&g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe from an earlier half-open period, dropped late, does not
    /// free the slot of the probe in flight now: one probe at a time.
    #[test]
    fn an_old_probe_never_frees_a_newer_one() {
        let clock = MockClock::new();
        let b = Breaker::new(
            "n",
            BreakerConfig::new(1, Duration::from_secs(1)),
            clock.shared(),
        );
        let closed = b.allow().unwrap();
        b.record(b.allow().unwrap(), true); // open
        clock.advance(Duration::from_secs(1));
        let old = b.allow().unwrap(); // probe 1, it hangs
        b.record(closed, true); // a late failure from before re-opens
        clock.advance(Duration::from_secs(1));
        let new = b.allow().unwrap(); // probe 2
        drop(old);
        assert!(
            b.allow().is_err(),
            "the old probe freed the new probe's slot"
        );
        drop(new);
        assert!(b.allow().is_ok());
    }
    use larder_core::MockClock;

    fn fail(b: &Breaker) {
        let p = b.allow().unwrap();
        b.record(p, true);
    }

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let clock = MockClock::new();
        let b = Breaker::new(
            "n",
            BreakerConfig::new(3, Duration::from_secs(2)),
            clock.shared(),
        );
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        let e = b.allow().unwrap_err();
        assert!(e.is_circuit_open());

        clock.advance(Duration::from_millis(1_999));
        assert!(b.allow().is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let probe = b.allow().unwrap();
        assert!(b.allow().is_err(), "only one probe at a time");
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe re-opens");

        clock.advance(Duration::from_secs(2));
        let probe = b.allow().unwrap();
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow().is_ok());
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let clock = MockClock::new();
        let b = Breaker::new(
            "n",
            BreakerConfig::new(1, Duration::from_secs(2)),
            clock.shared(),
        );
        fail(&b);
        clock.advance(Duration::from_secs(2));
        let probe = b.allow().unwrap();
        assert!(b.allow().is_err(), "one probe at a time");
        drop(probe); // its caller was cancelled: no outcome
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "neither success nor failure"
        );
        let probe = b.allow().expect("the next call probes");
        b.record(probe, false);
        assert_eq!(b.state(), BreakerState::Closed);
        // A recorded permit's drop changes nothing.
        let p = b.allow().unwrap();
        b.record(p, true);
        assert_eq!(b.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(2));
        let probe = b.allow().unwrap();
        b.record(probe, true);
        assert!(b.allow().is_err(), "a failed probe re-opened it");
    }

    #[test]
    fn a_success_resets_the_count() {
        let clock = MockClock::new();
        let b = Breaker::new(
            "n",
            BreakerConfig::new(2, Duration::from_secs(1)),
            clock.shared(),
        );
        fail(&b);
        let p = b.allow().unwrap();
        b.record(p, false);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
