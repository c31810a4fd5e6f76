//! Larder's chaos soak (`cargo xtask chaos [--seconds N] [--seed S]`).
//!
//! `larder-chaos run` starts a standalone Redis and three shard servers,
//! each behind a fault proxy, a SQLite database, and several worker
//! processes (`larder-chaos worker`, see `worker.rs`) that run a mixed
//! workload through the facade (reads with single flight, durable
//! write-behind into SQLite, invalidations, coherence by tracking), the
//! lock (a fenced shared resource) and a sharded store, with callers'
//! futures cancelled at random points. A seeded nemesis (logged) adds
//! latency, stalls and cuts connections, refuses connections, pauses the
//! standalone server (SIGSTOP), kills and restarts shard servers, and
//! SIGKILLs workers and starts them again. When the time is up the faults
//! stop and the checkers run (`orchestrator.rs`); `--break NAME` makes the
//! workers break one guarantee on purpose, so that its checker must fail
//! (the negative controls).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool
#![allow(clippy::disallowed_methods)] // a soak runs in real time, across processes

mod orchestrator;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use larder::core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Keys each worker owns for its durable writes (reads span all).
pub(crate) const KEYS_PER_WORKER: u64 = 500;
/// The L1's capacity in the workers (the memory checker's bound).
pub(crate) const L1_CAPACITY: u64 = 200;
/// Longest any single operation may take before it counts as hung, by
/// default: above every configured bound (load timeout 2 s, overflow
/// block 1 s, lock wait 0.5 s, write timeouts), so only a wedge reaches it.
pub(crate) const WATCHDOG: Duration = Duration::from_secs(20);
/// How long after the faults stop an L1 may still differ from the L2.
pub(crate) const CONVERGE_BOUND: Duration = Duration::from_secs(5);

/// What a worker incarnation reports when it ends cleanly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WorkerReport {
    pub(crate) id: u64,
    pub(crate) incarnation: u64,
    pub(crate) ops: u64,
    pub(crate) ok: u64,
    pub(crate) cancelled: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) hangs: u64,
    pub(crate) l1_max_entries: u64,
    pub(crate) coherent: bool,
    pub(crate) breakers_closed: bool,
    pub(crate) mismatches: u64,
    /// Each mismatch: the key, what the L1 answered, what the L2 holds.
    #[serde(default)]
    pub(crate) mismatched: Vec<(u64, u64, u64)>,
    /// After close, this worker's keys whose L2 value is older than
    /// SQLite's: the key, the L2's seq, SQLite's.
    #[serde(default)]
    pub(crate) l2_behind: Vec<(u64, u64, u64)>,
    pub(crate) journalled: u64,
    pub(crate) replayed: u64,
    pub(crate) dead_letters: u64,
    pub(crate) queued_at_exit: u64,
}

/// Opens the shared SQLite database (WAL, waits for other writers).
pub(crate) fn open_db(path: &Path) -> Result<rusqlite::Connection> {
    let sql = |e| Error::with_source(ErrorKind::Source, "SQLite", e);
    let c = rusqlite::Connection::open(path).map_err(sql)?;
    c.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    c.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    Ok(c)
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: larder-chaos run [--seconds N] [--seed S] [--workers W] [--out DIR] [--break NAME] [--watchdog SECS]\n\
         \x20      (NAME: ack, nodurable, hang, converge, l2behind, nocoherence, fence, panic, overlap, breaker, capacity, exit: a negative control)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("run") => {
            let cfg = orchestrator::Config {
                seconds: flag("--seconds")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(60.0),
                seed: flag("--seed")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| fastrand::u64(..)),
                workers: flag("--workers").and_then(|s| s.parse().ok()).unwrap_or(3),
                out: flag("--out").map_or_else(
                    || std::env::temp_dir().join(format!("larder-chaos-{}", std::process::id())),
                    PathBuf::from,
                ),
                brk: flag("--break"),
                watchdog: flag("--watchdog")
                    .and_then(|s| s.parse().ok())
                    .map_or(WATCHDOG, Duration::from_secs_f64),
            };
            match orchestrator::run(&cfg) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("larder-chaos: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Some("worker") => {
            let get = |n: &str| flag(n).unwrap_or_default();
            let num = |n: &str| get(n).parse::<u64>().unwrap_or(0);
            let a = worker::Args {
                id: num("--id"),
                incarnation: num("--incarnation"),
                workers: num("--workers").max(1),
                redis: get("--redis"),
                shards: get("--shards").split(',').map(str::to_owned).collect(),
                cluster: get("--cluster").split(',').map(str::to_owned).collect(),
                db: PathBuf::from(get("--db")),
                out: PathBuf::from(get("--out")),
                seconds: get("--seconds").parse().unwrap_or(10.0),
                seed: num("--seed"),
                brk: flag("--break"),
                watchdog: get("--watchdog")
                    .parse()
                    .map_or(WATCHDOG, Duration::from_secs_f64),
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("worker: runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let out = a
                .out
                .join(format!("report-{}-{}.json", a.id, a.incarnation));
            match rt.block_on(worker::run(a)) {
                Ok(report) => {
                    let json = serde_json::to_string(&report).unwrap_or_default();
                    if std::fs::write(&out, json).is_err() {
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("worker: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
