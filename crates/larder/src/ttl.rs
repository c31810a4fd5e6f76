//! Lifetimes: [`Ttl`] (fresh time, jitter, grace window) and the per-prefix
//! [`TtlPolicy`] the builder assembles.

use std::time::Duration;

use larder_core::{Error, ErrorKind, Result};

/// How long a loaded value lives.
///
/// - **fresh** for the base TTL, shortened by a random jitter: with
///   `jitter(j)` each value's fresh time is uniform in `[ttl * (1 - j), ttl]`,
///   so values loaded together (a warm-up, a deploy) do not all expire in
///   the same second. The jitter applies once, when the value is loaded, and
///   both levels use the result (L1 never outlives L2's copy).
/// - then **stale** for `stale_for` more: a read in this window is answered
///   with the stale value at once while one background load refreshes it
///   (stale-while-revalidate). `Duration::ZERO` (the default) turns it off.
///
/// ```
/// use larder::Ttl;
/// use std::time::Duration;
///
/// let ttl = Ttl::fixed(Duration::from_secs(300))
///     .jitter(0.1)
///     .stale_for(Duration::from_secs(60));
/// assert_eq!(ttl.base(), Duration::from_secs(300));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ttl {
    base: Duration,
    jitter: f64,
    stale: Duration,
}

impl Ttl {
    /// Fresh for `ttl` (no jitter, no grace window).
    pub fn fixed(ttl: Duration) -> Self {
        Ttl {
            base: ttl,
            jitter: 0.0,
            stale: Duration::ZERO,
        }
    }

    /// Shortens each value's fresh time by up to `fraction` of the TTL, at
    /// random (`0.0 <= fraction < 1.0`; checked at `build()`).
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// The grace window after the fresh time, in which a stale value is
    /// served while it is refreshed.
    #[must_use]
    pub fn stale_for(mut self, grace: Duration) -> Self {
        self.stale = grace;
        self
    }

    /// The base TTL.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The grace window.
    pub fn grace(&self) -> Duration {
        self.stale
    }

    /// The jitter fraction.
    pub fn jitter_fraction(&self) -> f64 {
        self.jitter
    }

    pub(crate) fn check(&self, what: &str) -> Result<()> {
        if self.base.is_zero() || self.base.as_millis() == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{what}: a TTL must be at least 1 ms"),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{what}: jitter must be in [0, 1), not {}", self.jitter),
            ));
        }
        Ok(())
    }

    /// The fresh time for one value, with `u` uniform in `[0, 1)`.
    pub(crate) fn fresh_for(&self, u: f64) -> Duration {
        if self.jitter == 0.0 {
            return self.base;
        }
        let f = 1.0 - self.jitter * u.clamp(0.0, 1.0);
        self.base.mul_f64(f).max(Duration::from_millis(1))
    }
}

impl Default for Ttl {
    /// Five minutes, no jitter, no grace window.
    fn default() -> Self {
        Ttl::fixed(Duration::from_secs(300))
    }
}

/// TTLs by key prefix (the longest matching prefix wins), and a default:
/// the "TTL manager" of caching tutorials (users 1 h, config 1 day,
/// sessions 30 min), built with [`CacheBuilder::ttl_for_prefix`](crate::CacheBuilder::ttl_for_prefix).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TtlPolicy {
    default: Ttl,
    /// Sorted by prefix length, longest first.
    rules: Vec<(String, Ttl)>,
}

impl TtlPolicy {
    pub(crate) fn set_default(&mut self, ttl: Ttl) {
        self.default = ttl;
    }

    pub(crate) fn add(&mut self, prefix: String, ttl: Ttl) {
        self.rules.retain(|(p, _)| *p != prefix);
        self.rules.push((prefix, ttl));
        self.rules.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.default.check("ttl")?;
        for (p, t) in &self.rules {
            t.check(&format!("ttl_for_prefix({p:?})"))?;
        }
        Ok(())
    }

    /// The TTL for a key's text.
    pub fn for_key(&self, key: &str) -> &Ttl {
        self.rules
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map_or(&self.default, |(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_its_documented_bounds() {
        let ttl = Ttl::fixed(Duration::from_secs(100)).jitter(0.2);
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let d = ttl.fresh_for(rng.f64());
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(lo >= Duration::from_secs(80), "{lo:?}");
        assert!(hi <= Duration::from_secs(100), "{hi:?}");
        // The range is used, not a constant.
        assert!(lo < Duration::from_secs(81) && hi > Duration::from_secs(99));
        assert_eq!(
            Ttl::fixed(Duration::from_secs(5)).fresh_for(0.9),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn longest_prefix_wins_and_bad_ttls_are_config_errors() {
        let mut p = TtlPolicy::default();
        p.add("user:".into(), Ttl::fixed(Duration::from_secs(3600)));
        p.add("user:vip:".into(), Ttl::fixed(Duration::from_secs(60)));
        assert_eq!(p.for_key("user:vip:1").base(), Duration::from_secs(60));
        assert_eq!(p.for_key("user:1").base(), Duration::from_secs(3600));
        assert_eq!(p.for_key("sku:1").base(), Duration::from_secs(300));
        assert!(p.check().is_ok());
        p.add("x".into(), Ttl::fixed(Duration::ZERO));
        assert_eq!(p.check().unwrap_err().kind(), ErrorKind::InvalidConfig);
        let bad = Ttl::fixed(Duration::from_secs(1)).jitter(1.0);
        assert!(bad.check("t").is_err());
        assert!(
            Ttl::fixed(Duration::from_secs(1))
                .jitter(f64::NAN)
                .check("t")
                .is_err()
        );
    }
}
