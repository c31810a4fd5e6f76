//! larder-lock against real redis-server processes: safety checkers with
//! negative controls, faults (pause, crash-restart, slow links), the
//! watchdog, and waiting.

mod faults;
mod procs;
mod safety;
mod waiting;
mod workload;

use std::time::Duration;

use larder_lock::{LockConfig, LockManager};

pub(crate) fn manager(urls: &[String], config: LockConfig) -> LockManager {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    LockManager::new(&urls, config).unwrap()
}

pub(crate) fn cfg(ttl_ms: u64) -> LockConfig {
    let mut c = LockConfig::with_ttl(Duration::from_millis(ttl_ms));
    c.retry_delay = Duration::from_millis(10);
    c.wait_poll = Duration::from_millis(20);
    c
}
