//! Time, injectable.
//!
//! Every Larder component reads time through a [`Clock`], never through
//! `Instant::now()` directly (a `clippy.toml` rule enforces it), so tests can
//! drive expiry, freshness and lock validity with a [`MockClock`] and never sleep.
//!
//! A clock has two faces:
//! - [`Clock::now`]: monotonic time, for deadlines and in-process TTLs;
//! - [`Clock::unix_millis`]: wall-clock milliseconds since the Unix epoch, for
//!   the timestamps stored in envelopes, which other processes read.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time. Implementations must be cheap to call from hot paths.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic now.
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch.
    fn unix_millis(&self) -> u64;
}

/// A shared, dynamically dispatched clock, as components store it.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl SystemClock {
    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

#[allow(clippy::disallowed_methods)] // with `CoarseClock`, the only readers of the OS clocks
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// The operating system's clocks, with a wall-clock face read at the
/// kernel's tick: what the `larder` facade uses by default, since it reads
/// the wall clock on every hit.
///
/// - [`Clock::now`] is [`SystemClock`]'s: precise, for deadlines and
///   latencies.
/// - [`Clock::unix_millis`] reads `CLOCK_REALTIME_COARSE` on Linux and
///   Android: the time of the last tick, kept by the kernel itself (no
///   thread of ours). It is never ahead of [`SystemClock`]'s and typically
///   lags it by at most [`CoarseClock::resolution`] (one tick: 4 ms on
///   most distributions, 1 to 10 ms in general; a virtual machine whose
///   time-keeping CPU is descheduled can lag longer), and a read costs a
///   fraction of a precise one (`clock/unix_millis` in
///   `docs/benchmarks.md`). A TTL judged by it is kept to within about a
///   tick. On other systems it is [`SystemClock`]'s.
///
/// ```
/// use larder_core::{Clock, CoarseClock, SystemClock};
///
/// let coarse = CoarseClock.unix_millis();
/// assert!(coarse <= SystemClock.unix_millis());
/// assert!(CoarseClock::resolution() >= std::time::Duration::from_millis(1));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseClock;

impl CoarseClock {
    /// The coarse clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(CoarseClock)
    }

    /// How far [`Clock::unix_millis`] typically lags the precise wall
    /// clock: the kernel's tick on Linux and Android (at least a
    /// millisecond), else a millisecond.
    pub fn resolution() -> Duration {
        coarse::resolution()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_millis(1))
    }
}

impl Clock for CoarseClock {
    fn now(&self) -> Instant {
        SystemClock.now()
    }

    fn unix_millis(&self) -> u64 {
        coarse::unix_millis().unwrap_or_else(|| SystemClock.unix_millis())
    }
}

/// Milliseconds since the Unix epoch of a `timespec`'s fields: `None`
/// before 1970 or for nanoseconds out of `0..1e9` (never from a working
/// clock). Saturates far in the future.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
fn millis(secs: i64, nanos: i64) -> Option<u64> {
    let secs = u64::try_from(secs).ok()?;
    let nanos = u64::try_from(nanos).ok().filter(|&n| n < 1_000_000_000)?;
    Some(secs.saturating_mul(1_000).saturating_add(nanos / 1_000_000))
}

/// `CLOCK_REALTIME_COARSE`, through the vDSO (no system call).
#[cfg(any(target_os = "linux", target_os = "android"))]
mod coarse {
    use std::mem::MaybeUninit;
    use std::time::Duration;

    /// Milliseconds since the Unix epoch at the last tick; `None` if the
    /// clock cannot be read or is before 1970 (the caller falls back to
    /// the precise clock, as [`super::SystemClock`] answers those).
    // `expect`: if the ban in `clippy.toml` ever stops matching, this
    // fails the lint run instead of silently allowing nothing.
    #[expect(
        clippy::disallowed_methods,
        reason = "`CoarseClock` reads the OS clock"
    )]
    pub(super) fn unix_millis() -> Option<u64> {
        // Zeroed rather than a literal: on some 32-bit targets `timespec`
        // has private padding.
        let mut ts = MaybeUninit::<libc::timespec>::zeroed();
        // SAFETY: `ts` points to a writable `timespec`, the only memory
        // `clock_gettime` writes; the clock id is a Linux constant.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, ts.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: all-zero bytes are a valid `timespec` (integers only),
        // and the call succeeded, so it holds the clock's reading.
        let ts = unsafe { ts.assume_init() };
        #[allow(clippy::useless_conversion)] // `i32` fields on some 32-bit targets
        super::millis(ts.tv_sec.into(), ts.tv_nsec.into())
    }

    /// The clock's resolution (the tick).
    pub(super) fn resolution() -> Option<Duration> {
        let mut ts = MaybeUninit::<libc::timespec>::zeroed();
        // SAFETY: as in `unix_millis`: `clock_getres` writes only `ts`.
        if unsafe { libc::clock_getres(libc::CLOCK_REALTIME_COARSE, ts.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: as in `unix_millis`.
        let ts = unsafe { ts.assume_init() };
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u32::try_from(ts.tv_nsec).ok()?;
        Some(Duration::new(secs, nanos))
    }
}

/// No coarse clock known here: the precise one.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod coarse {
    use std::time::Duration;

    pub(super) fn unix_millis() -> Option<u64> {
        None
    }

    pub(super) fn resolution() -> Option<Duration> {
        None
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use larder_core::{Clock, MockClock};
/// use std::time::Duration;
///
/// let clock = MockClock::new();
/// let t0 = clock.now();
/// let wall0 = clock.unix_millis();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now() - t0, Duration::from_secs(5));
/// assert_eq!(clock.unix_millis() - wall0, 5_000);
/// ```
#[derive(Clone)]
pub struct MockClock {
    inner: Arc<MockInner>,
}

struct MockInner {
    origin: Instant,
    origin_unix_ms: u64,
    elapsed_nanos: AtomicU64,
}

impl MockClock {
    /// The wall-clock time a new mock clock starts at: 2023-11-14T22:13:20Z.
    pub const DEFAULT_UNIX_MS: u64 = 1_700_000_000_000;

    /// A mock clock at [`Self::DEFAULT_UNIX_MS`].
    pub fn new() -> Self {
        Self::at_unix_millis(Self::DEFAULT_UNIX_MS)
    }

    /// A mock clock whose wall clock starts at `unix_ms`.
    #[allow(clippy::disallowed_methods)] // an origin only; the mock never reads it again
    pub fn at_unix_millis(unix_ms: u64) -> Self {
        MockClock {
            inner: Arc::new(MockInner {
                origin: Instant::now(),
                origin_unix_ms: unix_ms,
                elapsed_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Moves both faces of the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.elapsed_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// How far the clock has been advanced since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.inner.elapsed_nanos.load(Ordering::SeqCst))
    }

    /// This clock as a [`SharedClock`] (sharing the same time).
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Default for MockClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MockClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockClock")
            .field("elapsed", &self.elapsed())
            .field("unix_millis", &self.unix_millis())
            .finish()
    }
}

impl Clock for MockClock {
    fn now(&self) -> Instant {
        self.inner.origin + self.elapsed()
    }

    fn unix_millis(&self) -> u64 {
        let ms = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.origin_unix_ms.saturating_add(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_clock_clones_share_time() {
        let a = MockClock::at_unix_millis(1_000);
        let b = a.clone();
        let shared = a.shared();
        let start = shared.now();
        b.advance(Duration::from_millis(1_500));
        assert_eq!(a.unix_millis(), 2_500);
        assert_eq!(shared.now() - start, Duration::from_millis(1_500));
    }

    /// A `timespec`'s fields in milliseconds: truncated, `None` before
    /// 1970 or for impossible nanoseconds, saturated far ahead.
    #[test]
    fn timespec_fields_convert_to_millis() {
        assert_eq!(millis(0, 0), Some(0));
        assert_eq!(millis(1_700_000_000, 999_999_999), Some(1_700_000_000_999));
        assert_eq!(millis(1, 1_999_999), Some(1_001));
        assert_eq!(millis(-1, 0), None);
        assert_eq!(millis(0, -1), None);
        assert_eq!(millis(0, 1_000_000_000), None);
        assert_eq!(millis(i64::MAX, 0), Some(u64::MAX));
    }

    /// The coarse wall clock is never ahead of the precise one read after
    /// it (the kernel's tick time is at most its precise time). The lower
    /// bound is a check of units, not of speed: an hour.
    #[test]
    fn coarse_clock_is_never_ahead_of_the_precise_one() {
        for _ in 0..1_000 {
            let before = SystemClock.unix_millis();
            let coarse = CoarseClock.unix_millis();
            let after = SystemClock.unix_millis();
            assert!(coarse <= after, "{coarse} ahead of {after}");
            assert!(coarse + 3_600_000 >= before, "{coarse} far behind {before}");
        }
        assert!(CoarseClock::resolution() >= Duration::from_millis(1));
        // Its monotonic face is the precise one.
        let a = CoarseClock.now();
        assert!(SystemClock.now() >= a);
    }

    #[test]
    fn system_clock_is_monotonic_and_recent() {
        let c = SystemClock;
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        // After 2020-09-13 (1.6e12 ms): a sanity check on units, not on speed.
        assert!(c.unix_millis() > 1_600_000_000_000);
    }
}
