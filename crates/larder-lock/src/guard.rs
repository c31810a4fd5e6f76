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
    pub(crate) fn start(
        manager: LockManager,
        name: String,
        key: String,
        channel: String,
        token: String,
        fence: u64,
        deadline: Instant,
    ) -> Self {
        let (lost, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            manager,
            name,
            key,
            channel,
            token,
            fence,
            holder: fastrand::u128(..),
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

    /// Whether the lock is still certainly held `d` from now. Check it
    /// before a side effect that must not happen without the lock.
    pub fn is_valid_for(&self, d: Duration) -> bool {
        !self.is_lost() && self.shared.manager.inner.now() + d < self.valid_until()
    }

    /// Whether the lock has been lost (renewal failed or validity passed).
    pub fn is_lost(&self) -> bool {
        *self.shared.lost.borrow()
    }

    /// Completes when the lock is lost. Use it to cancel work:
    /// `tokio::select! { _ = guard.lost() => abort(), r = work() => r }`.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.lost.subscribe();
        async move {
            let _ = rx.wait_for(|lost| *lost).await;
        }
    }

    /// Releases the lock on every node. `Ok(true)` if a quorum still held
    /// it; `Ok(false)` if it had already expired or been lost (another
    /// client may have held it since: whatever was done under it was not
    /// protected).
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let s = &self.shared;
        let n = s
            .manager
            .release_everywhere(&s.key, &s.channel, &s.token)
            .await;
        let was_lost = self.is_lost();
        s.lost.send_replace(true);
        Ok(!was_lost && n >= s.manager.quorum())
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

/// The watchdog: renews at TTL/3 (if enabled) and reports the loss of the
/// lock. Holds the guard's state weakly: it never keeps a lock alive.
async fn keep(shared: Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let cfg = s.manager.config().clone();
        let deadline = *lock(&s.deadline);
        let now = s.manager.inner.now();
        let wake = if cfg.watchdog {
            (now + cfg.ttl / 3).min(deadline)
        } else {
            deadline
        };
        drop(s);
        tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        let Some(s) = shared.upgrade() else { return };
        if s.manager.inner.now() >= *lock(&s.deadline) {
            s.lost.send_replace(true);
            return;
        }
        if !cfg.watchdog {
            continue;
        }
        let start = s.manager.inner.now();
        let extended = s.manager.extend_everywhere(&s.key, &s.token).await;
        let elapsed = s.manager.inner.now().saturating_duration_since(start);
        let lease = cfg.ttl.saturating_sub(cfg.drift());
        match extended >= s.manager.quorum() && elapsed < lease {
            true => *lock(&s.deadline) = start + lease,
            _ => {
                s.lost.send_replace(true);
                return;
            }
        }
    }
}
