//! [`LockGuard`]: a held lock, its fencing token, its validity, and the
//! signal that it was lost.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use larder_core::Result;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[cfg(doc)]
use crate::FencedResource;
use crate::fenced::Fence;
use crate::manager::LockManager;

/// What an acquisition hands to its guard.
pub(crate) struct Grant {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) channel: String,
    pub(crate) token: String,
    pub(crate) fence: u64,
    pub(crate) holder: u128,
    /// Until when the lock is ours (on the manager's clock).
    pub(crate) deadline: Instant,
}

struct Shared {
    manager: LockManager,
    name: String,
    key: String,
    channel: String,
    token: String,
    fence: u64,
    /// A random identity of this grant, for [`Fence`].
    holder: u128,
    /// Until when the lock is ours for sure (monotonic, taken before the
    /// acquiring requests were sent, minus drift).
    deadline: Mutex<Instant>,
    lost: watch::Sender<bool>,
}

/// A held lock. While it lives (and the watchdog is on) the lease is renewed
/// at TTL/3; [`LockGuard::lost`] completes if a renewal fails or the
/// validity deadline passes. Release it with [`LockGuard::release`]; a guard
/// that is simply dropped is released by a background task (never blocking
/// the dropping thread), or expires by its TTL if no runtime is left.
pub struct LockGuard {
    shared: Arc<Shared>,
    watchdog: Option<JoinHandle<()>>,
    released: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.shared.name)
            .field("fencing_token", &self.shared.fence)
            .field("lost", &self.is_lost())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LockGuard {
    pub(crate) fn start(manager: LockManager, grant: Grant) -> Self {
        let Grant {
            name,
            key,
            channel,
            token,
            fence,
            holder,
            deadline,
        } = grant;
        let (lost, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            manager,
            name,
            key,
            channel,
            token,
            fence,
            holder,
            deadline: Mutex::new(deadline),
            lost,
        });
        let watchdog = tokio::spawn(keep(Arc::downgrade(&shared)));
        LockGuard {
            shared,
            watchdog: Some(watchdog),
            released: false,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The fencing token: larger than every token issued before for this
    /// lock, also across restarts of the nodes (it is at least the server's
    /// clock in microseconds). Pass it to the resource you protect and have
    /// it refuse older ones ([`crate::FencedResource`]). 0 when fencing is
    /// off.
    pub fn fencing_token(&self) -> u64 {
        self.shared.fence
    }

    /// The fencing token with this grant's identity, for a resource that
    /// accepts several writes under one grant ([`FencedResource::write`]):
    /// an equal token is accepted again only from the same guard.
    pub fn fence(&self) -> Fence {
        Fence::of_holder(self.shared.fence, self.shared.holder)
    }

    /// Until when the lock is certainly held (a monotonic instant).
    pub fn valid_until(&self) -> Instant {
        *lock(&self.shared.deadline)
    }

    /// Whether the lock is still certainly held `d` from now (by the
    /// manager's clock). Check it before a side effect that must not happen
    /// without the lock. False for a `d` too large to add to the clock.
    pub fn is_valid_for(&self, d: Duration) -> bool {
        !self.is_lost()
            && self
                .shared
                .manager
                .inner
                .now()
                .checked_add(d)
                .is_some_and(|t| t < self.valid_until())
    }

    /// Whether the lock has been lost: a renewal failed, it was released,
    /// or the validity deadline has passed on the manager's clock.
    pub fn is_lost(&self) -> bool {
        *self.shared.lost.borrow() || self.shared.manager.inner.now() >= self.valid_until()
    }

    /// Completes when the lock is lost. Use it to cancel work:
    /// `tokio::select! { _ = guard.lost() => abort(), r = work() => r }`.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.lost.subscribe();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Releases the lock on every node. `Ok(true)` if it was still held
    /// (valid, and a quorum still had it); `Ok(false)` if it had already
    /// expired or been lost (another client may have held it since:
    /// whatever was done under it was not protected).
    ///
    /// Cancel-safe: if this future is dropped before the release finished,
    /// the guard's `Drop` sends it again in the background.
    pub async fn release(mut self) -> Result<bool> {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let held = !self.is_lost();
        let s = Arc::clone(&self.shared);
        let n = s
            .manager
            .release_everywhere(&s.key, &s.channel, &s.token)
            .await;
        // Only now: a release dropped before this point is finished by Drop.
        self.released = true;
        s.lost.send_replace(true);
        Ok(held && n >= s.manager.quorum())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        if self.released {
            return;
        }
        self.shared.lost.send_replace(true);
        // Never block in Drop: hand the release to the runtime, if any.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let s = Arc::clone(&self.shared);
            rt.spawn(async move {
                s.manager
                    .release_everywhere(&s.key, &s.channel, &s.token)
                    .await;
            });
        }
    }
}

/// The longest the watchdog sleeps without reading the clock again. Time
/// is the manager's clock (which a test may drive by hand): Tokio's timer
/// only wakes the watchdog up to look at it, so an injected clock that
/// jumps ahead is seen within this long, and a frozen one costs one
/// wake-up per tick, never a busy loop.
const CLOCK_TICK: Duration = Duration::from_millis(100);

/// Sleeps until `at` on the manager's clock (reading it at least every
/// [`CLOCK_TICK`]).
pub(crate) async fn sleep_until(manager: &LockManager, at: Instant) {
    loop {
        let now = manager.inner.now();
        if now >= at {
            return;
        }
        tokio::time::sleep((at - now).min(CLOCK_TICK)).await;
    }
}

/// The watchdog: reports the loss of the lock when its validity deadline
/// passes, and (if enabled) renews it at TTL/3, each renewal raced against
/// the deadline: `lost()` fires by the deadline whatever a hung node does.
/// Holds the guard's state weakly while it sleeps: it never keeps a lock
/// alive.
async fn keep(shared: Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let cfg = s.manager.config().clone();
        let lease = cfg.ttl.saturating_sub(cfg.drift());
        let deadline = *lock(&s.deadline);
        let now = s.manager.inner.now();
        if now >= deadline {
            s.lost.send_replace(true);
            return;
        }
        // The current lease started at deadline - lease; renew a third of
        // the TTL after that.
        let renew_at = deadline
            .checked_sub(lease.saturating_sub(cfg.ttl / 3))
            .unwrap_or(now);
        if !cfg.watchdog || now < renew_at {
            let wake = if cfg.watchdog {
                renew_at.min(deadline)
            } else {
                deadline
            };
            drop(s);
            tokio::time::sleep((wake - now).min(CLOCK_TICK)).await;
            continue;
        }
        let start = now;
        let extended = tokio::select! {
            n = s.manager.extend_everywhere(&s.key, &s.token) => Some(n),
            () = sleep_until(&s.manager, deadline) => None,
        };
        let elapsed = s.manager.inner.now().saturating_duration_since(start);
        match extended {
            Some(n) if n >= s.manager.quorum() && elapsed < lease => {
                *lock(&s.deadline) = start + lease;
            }
            _ => {
                s.lost.send_replace(true);
                return;
            }
        }
    }
}
