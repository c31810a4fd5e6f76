//! larder-lock against real redis-server processes: safety checkers with
//! negative controls, faults (pause, crash-restart, slow links, stalled
//! replies), the watchdog, waiting, cancellation, the key layout and the
//! injected clock.

mod cancel;
mod clock;
mod faults;
mod keys;
mod procs;
mod safety;
#[cfg(feature = "tls")]
mod tls;
mod waiting;
mod workload;

use std::time::Duration;

use larder_core::SharedClock;
use larder_lock::{LockConfig, LockManager};

pub(crate) fn manager(urls: &[String], config: LockConfig) -> LockManager {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    LockManager::new(&urls, config).unwrap()
}

pub(crate) fn manager_with_clock(
    urls: &[String],
    config: LockConfig,
    clock: SharedClock,
) -> LockManager {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    LockManager::with_clock(&urls, config, clock).unwrap()
}

pub(crate) fn cfg(ttl_ms: u64) -> LockConfig {
    let mut c = LockConfig::with_ttl(Duration::from_millis(ttl_ms));
    // As generous as the TTL allows (the limit is a third of TTL - drift),
    // so a loaded machine does not turn slow answers into lost votes.
    c.node_timeout = Duration::from_secs(1).min(c.ttl.saturating_sub(c.drift()) / 4);
    c.retry_delay = Duration::from_millis(10);
    c.wait_poll = Duration::from_millis(20);
    c
}

/// A hang guard, not a threshold: `what` must finish long before it.
pub(crate) async fn bounded<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after 20 s"))
}
