//! How a resource protects itself with fencing tokens.

use std::fmt;
use std::sync::Mutex;

/// A write arrived with a token the resource must refuse: older than one it
/// has already accepted (its lock was lost, expired while its holder was
/// paused, say, and someone else has held it since), or equal to the last
/// one accepted without being provably from the same holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleToken {
    /// The token presented.
    pub presented: u64,
    /// The last token accepted.
    pub highest: u64,
}

impl fmt::Display for StaleToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.presented == self.highest {
            write!(
                f,
                "fencing token {} was already used by another holder",
                self.presented
            )
        } else {
            write!(
                f,
                "fencing token {} is older than {}",
                self.presented, self.highest
            )
        }
    }
}

impl std::error::Error for StaleToken {}

/// What a holder presents to a fenced resource: its fencing token and,
/// when it comes from [`crate::LockGuard::fence`], a random identity of
/// that one grant. A bare `u64` converts into an anonymous fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fence {
    token: u64,
    holder: Option<u128>,
}

impl Fence {
    /// A fence for `token` with no holder identity: the resource accepts it
    /// only if it is strictly newer than the last token it accepted.
    pub fn anonymous(token: u64) -> Self {
        Fence {
            token,
            holder: None,
        }
    }

    pub(crate) fn of_holder(token: u64, holder: u128) -> Self {
        Fence {
            token,
            holder: Some(holder),
        }
    }

    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.token
    }
}

impl From<u64> for Fence {
    fn from(token: u64) -> Self {
        Fence::anonymous(token)
    }
}

/// A value guarded by fencing tokens. A write is applied if its token is
/// newer than the last one accepted, or equal to it *and* from the same
/// grant of the lock (a [`Fence`] from the same [`crate::LockGuard`]);
/// everything else is refused. Equal tokens from different holders happen
/// when fencing is off (every token is 0) or a fence was reset: refusing
/// them is what keeps two holders from both writing.
///
/// This is what a storage system must do for a lock to be safe when a
/// holder can pause past its lease (Kleppmann, "How to do distributed
/// locking"); here it wraps an in-process value to show the rule and to
/// referee tests.
///
/// ```
/// use larder_lock::FencedResource;
/// let stock = FencedResource::new(10u32);
/// stock.write(5, |s| *s -= 1)?;
/// assert!(stock.write(4, |s| *s -= 1).is_err(), "an older holder is refused");
/// assert!(stock.write(5, |s| *s -= 1).is_err(), "so is an unknown one with the same token");
/// assert_eq!(stock.read(), 9);
/// # Ok::<(), larder_lock::StaleToken>(())
/// ```
#[derive(Debug)]
pub struct FencedResource<T> {
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    last: Option<Fence>,
    value: T,
}

impl<T: Clone> FencedResource<T> {
    /// A resource holding `value`, no token seen yet.
    pub fn new(value: T) -> Self {
        FencedResource {
            state: Mutex::new(State { last: None, value }),
        }
    }

    /// Applies `f` if `fence` is newer than the last accepted, or is the
    /// same grant as the last accepted; refuses it otherwise.
    pub fn write<R>(
        &self,
        fence: impl Into<Fence>,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, StaleToken> {
        let fence = fence.into();
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = g.last {
            let same_holder = fence.holder.is_some() && fence == last;
            if fence.token < last.token || (fence.token == last.token && !same_holder) {
                return Err(StaleToken {
                    presented: fence.token,
                    highest: last.token,
                });
            }
        }
        g.last = Some(fence);
        Ok(f(&mut g.value))
    }

    /// The current value.
    pub fn read(&self) -> T {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .value
            .clone()
    }

    /// The last token accepted (0 before any).
    pub fn highest_token(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last
            .map_or(0, |f| f.token)
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

    #[test]
    fn the_same_grant_may_write_again_another_may_not() {
        let r = FencedResource::new(0u32);
        let mine = Fence::of_holder(7, 1);
        r.write(mine, |v| *v += 1).unwrap();
        r.write(mine, |v| *v += 1).unwrap();
        assert!(r.write(Fence::of_holder(7, 2), |v| *v += 100).is_err());
        assert!(r.write(7, |v| *v += 100).is_err());
        assert!(r.write(Fence::of_holder(6, 1), |v| *v += 100).is_err());
        r.write(8, |v| *v += 1).unwrap();
        assert_eq!((r.read(), r.highest_token()), (3, 8));
    }
}
