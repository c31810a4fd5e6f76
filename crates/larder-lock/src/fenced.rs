//! How a resource protects itself with fencing tokens.

use std::fmt;
use std::sync::Mutex;

/// A write arrived with a token older than one the resource has already
/// accepted: its lock was lost (expired while its holder was paused, say)
/// and someone else has held it since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleToken {
    /// The token presented.
    pub presented: u64,
    /// The highest token accepted so far.
    pub highest: u64,
}

impl fmt::Display for StaleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fencing token {} is older than {}",
            self.presented, self.highest
        )
    }
}

impl std::error::Error for StaleToken {}

/// A value guarded by fencing tokens: a write with a token lower than the
/// highest seen is refused. This is what a storage system must do for a
/// lock to be safe when a holder can pause past its lease (Kleppmann, "How
/// to do distributed locking"); here it wraps an in-process value to show
/// the rule and to referee tests.
///
/// ```
/// use larder_lock::FencedResource;
/// let stock = FencedResource::new(10u32);
/// stock.write(5, |s| *s -= 1)?;
/// assert!(stock.write(4, |s| *s -= 1).is_err(), "an older holder is refused");
/// assert_eq!(stock.read(), 9);
/// # Ok::<(), larder_lock::StaleToken>(())
/// ```
#[derive(Debug)]
pub struct FencedResource<T> {
    state: Mutex<(u64, T)>,
}

impl<T: Clone> FencedResource<T> {
    /// A resource holding `value`, no token seen yet.
    pub fn new(value: T) -> Self {
        FencedResource {
            state: Mutex::new((0, value)),
        }
    }

    /// Applies `f` if `token` is at least the highest accepted so far.
    pub fn write<R>(&self, token: u64, f: impl FnOnce(&mut T) -> R) -> Result<R, StaleToken> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if token < g.0 {
            return Err(StaleToken {
                presented: token,
                highest: g.0,
            });
        }
        g.0 = token;
        Ok(f(&mut g.1))
    }

    /// The current value.
    pub fn read(&self) -> T {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The highest token accepted.
    pub fn highest_token(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_equal_token_from_an_unknown_holder_is_refused() {
        let r = FencedResource::new(0u32);
        r.write(5, |v| *v += 1).unwrap();
        // Another client presenting the same token (fencing off: every
        // token is 0; or a fence that was reset) is not provably the holder.
        let e = r.write(5, |v| *v += 100).unwrap_err();
        assert_eq!((e.presented, e.highest), (5, 5));
        assert_eq!(r.read(), 1);
    }
}
