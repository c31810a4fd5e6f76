//! A worker process: a mixed workload through the facade, the lock and the
//! sharded store, with callers' futures cancelled at random points; then,
//! once the orchestrator says the faults stopped, the convergence checks.
//! Everything a checker needs goes to an append-only log (it survives a
//! SIGKILL) and a final JSON report.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use larder::core::{Error, ErrorKind, FnLoader, Loader, Result, Writer};
use larder::lock::{LockConfig, LockManager};
use larder::redis::{BreakerState, RedisConfig, RedisStore, RetryPolicy, Topology};
use larder::{Cache, CoherenceMode, Overflow, Ttl, WriteBehind};
use parking_lot::Mutex;
use rusqlite::{Connection, params};

use crate::{KEYS_PER_WORKER, L1_CAPACITY, WorkerReport, open_db};

/// What the worker was told.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) id: u64,
    pub(crate) incarnation: u64,
    pub(crate) workers: u64,
    pub(crate) redis: String,
    pub(crate) shards: Vec<String>,
    pub(crate) cluster: Vec<String>,
    pub(crate) db: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) seconds: f64,
    pub(crate) seed: u64,
    pub(crate) brk: Option<String>,
    pub(crate) watchdog: Duration,
}

/// The rows table through SQLite: loads read a key's seq, writes keep the
/// larger seq (an idempotent, monotone upsert: at-least-once safe).
#[derive(Clone)]
struct Rows(Arc<Mutex<Connection>>);

impl Loader<u64, u64> for Rows {
    async fn load(&self, key: &u64) -> Result<Option<u64>> {
        let (db, k) = (Arc::clone(&self.0), *key);
        tokio::task::spawn_blocking(move || {
            let c = db.lock();
            let r: rusqlite::Result<Option<i64>> = c
                .query_row(
                    "SELECT seq FROM rows WHERE k = ?1",
                    params![k as i64],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                });
            r.map(|v| v.map(i64::cast_unsigned)).map_err(sql)
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }
}

impl Writer<u64, u64> for Rows {
    async fn write(&self, key: &u64, seq: &u64) -> Result<()> {
        self.write_many(&[(*key, *seq)]).await
    }

    async fn delete(&self, _key: &u64) -> Result<()> {
        Err(Error::new(ErrorKind::Unsupported, "rows are never deleted"))
    }

    async fn write_many(&self, rows: &[(u64, u64)]) -> Result<()> {
        let (db, rows) = (Arc::clone(&self.0), rows.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut c = db.lock();
            let tx = c.transaction().map_err(sql)?;
            for (k, seq) in &rows {
                tx.execute(
                    "INSERT INTO rows (k, seq) VALUES (?1, ?2)
                     ON CONFLICT(k) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > rows.seq",
                    params![*k as i64, seq.cast_signed()],
                )
                .map_err(sql)?;
            }
            tx.commit().map_err(sql)
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }
}

fn sql(e: rusqlite::Error) -> Error {
    Error::with_source(ErrorKind::Source, "SQLite", e)
}

fn now_us() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The worker's append-only log (one line per fact; survives SIGKILL).
struct Log(Mutex<File>);

impl Log {
    fn line(&self, s: &str) {
        let mut f = self.0.lock();
        let _ = writeln!(f, "{s}");
    }
}

fn store(topology: Topology, ns: &str) -> Result<RedisStore> {
    RedisStore::new(
        RedisConfig::builder(topology)
            .namespace(ns)
            .response_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(300))
            .retry(RetryPolicy::none())
            .build()?,
    )
}

pub(crate) async fn run(a: Args) -> Result<WorkerReport> {
    let entered = Instant::now();
    let mut report = WorkerReport {
        id: a.id,
        incarnation: a.incarnation,
        ..WorkerReport::default()
    };
    let log = Arc::new(Log(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(a.out.join(format!("log-{}.txt", a.id)))
            .map_err(|e| Error::with_source(ErrorKind::Source, "log", e))?,
    )));
    let rows = Rows(Arc::new(Mutex::new(open_db(&a.db)?)));
    let main_store = store(Topology::Standalone(a.redis.clone()), "chaos")?;
    let no_journal = a.brk.as_deref() == Some("nodurable");
    let builder = Cache::builder()
        .memory(L1_CAPACITY)
        .redis(main_store)
        .ttl(Ttl::fixed(Duration::from_secs(30)))
        // Values the L2 did not confirm (loaded during a fault) leave the
        // L1 well within the convergence bound (5 s; the default is 5 s too).
        .unconfirmed_ttl(Duration::from_secs(2))
        .load_timeout(Duration::from_secs(2))
        .loader(rows.clone())
        .writer(rows.clone())
        .write_behind(
            WriteBehind::new()
                // Negative control: plain write-behind that holds its
                // writes until close (a batch above the worker's 500 keys,
                // a long interval), so a SIGKILL loses them.
                .batch(if no_journal { 1_000 } else { 200 })
                .interval(Duration::from_millis(if no_journal { 60_000 } else { 50 }))
                .write_timeout(Duration::from_secs(2))
                .max_attempts(3)
                .backoff(Duration::from_millis(20), Duration::from_millis(200))
                .overflow(Overflow::Block(Duration::from_secs(1)))
                .claim_after(Duration::from_secs(20)),
        );
    let builder = if no_journal {
        builder
    } else {
        builder.durable(&format!("worker-{}", a.id))
    };
    // Negative control at the system level: the same workload without
    // coherence, so other workers' writes leave stale L1 entries.
    let cache: Cache<u64, u64> = if a.brk.as_deref() == Some("nocoherence") {
        builder.build()?
    } else {
        builder.coherence(CoherenceMode::Tracking).build()?
    };
    // The L2 as it is (no L1), for the convergence check.
    let l2_view: Cache<u64, u64> = Cache::builder()
        .no_memory()
        .redis(store(Topology::Standalone(a.redis.clone()), "chaos")?)
        .build()?;
    let sharded: Cache<u64, String> = Cache::builder()
        .memory(1000)
        .redis(store(Topology::Sharded(a.shards.clone()), "chaos-sh")?)
        .ttl(Ttl::fixed(Duration::from_secs(5)))
        .loader(FnLoader::new(|k: u64| async move {
            Ok::<_, Error>(Some(format!("v{k}")))
        }))
        .build()?;
    let clustered: Cache<u64, String> = Cache::builder()
        .memory(1000)
        .redis(store(Topology::Cluster(a.cluster.clone()), "chaos-cl")?)
        .ttl(Ttl::fixed(Duration::from_secs(5)))
        .loader(FnLoader::new(|k: u64| async move {
            Ok::<_, Error>(Some(format!("c{k}")))
        }))
        .build()?;
    let mut lock_config = LockConfig::with_ttl(Duration::from_secs(5));
    lock_config.namespace = "chaos-lock".to_owned();
    lock_config.node_timeout = Duration::from_millis(300);
    lock_config.connect_timeout = Duration::from_millis(300);
    let locks = LockManager::new(&[a.redis.as_str()], lock_config)?;

    let mut rng = fastrand::Rng::with_seed(a.seed ^ (a.id << 32) ^ a.incarnation);
    let all_keys = a.workers * KEYS_PER_WORKER;
    let own = a.id * KEYS_PER_WORKER..(a.id + 1) * KEYS_PER_WORKER;
    // A seq larger than any earlier incarnation's for this worker.
    let seq = AtomicU64::new(a.incarnation * 1_000_000_000);
    // When this incarnation began its operations: a killed incarnation
    // leaves no report, and a negative control whose victim never got
    // this far (its writes are what the kill should lose) says so here.
    log.line(&format!(
        "start incarnation {}: {} ms after its run began, at unix {} µs",
        a.incarnation,
        entered.elapsed().as_millis(),
        now_us()
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut broke_once = false;
    while Instant::now() < deadline {
        report.l1_max_entries = report.l1_max_entries.max(cache.stats().l1_entries);
        let roll = rng.u32(..100);
        let cancel_after = if rng.u32(..100) < 30 {
            // A caller that gives up early: cancelled at a random point.
            Some(Duration::from_micros(rng.u64(50..30_000)))
        } else {
            None
        };
        let op = async {
            match roll {
                0..45 => {
                    let k = rng.u64(..all_keys);
                    cache.get_or_load(&k).await.map(|_| ())
                }
                45..50 => {
                    let k = rng.u64(..10_000);
                    if k.is_multiple_of(5) {
                        clustered.invalidate(&k).await
                    } else {
                        clustered.get_or_load(&k).await.map(|_| ())
                    }
                }
                // The control's later incarnations write nothing: their
                // writes would cover the keys whose writes the SIGKILL lost.
                50..72 if no_journal && a.incarnation > 0 => Ok(()),
                50..72 => {
                    let k = rng.u64(own.clone());
                    let s = seq.fetch_add(1, Ordering::Relaxed) + 1;
                    cache.put_behind(&k, s).await?;
                    log.line(&format!("ack {k} {s}"));
                    Ok(())
                }
                72..76 => {
                    // Any worker's key, its write perhaps still queued: no
                    // reader may then fill the L2 with the source's older
                    // value (the fill is refused while the write is
                    // journalled and unwritten).
                    let k = rng.u64(..all_keys);
                    cache.invalidate(&k).await
                }
                76..80 => {
                    let k = rng.u64(..10_000);
                    sharded.invalidate(&k).await
                }
                80..88 => {
                    let k = rng.u64(..10_000);
                    sharded.get_or_load(&k).await.map(|_| ())
                }
                88..94 => {
                    let k = rng.u64(..10_000);
                    clustered.get_or_load(&k).await.map(|_| ())
                }
                _ => critical_section(&locks, &rows, &log).await,
            }
        };
        let started = Instant::now();
        let hang = a.brk.as_deref() == Some("hang") && !broke_once;
        let outcome = tokio::time::timeout(a.watchdog, async {
            if hang {
                // Negative control: an operation that never finishes.
                std::future::pending::<()>().await;
            }
            match cancel_after {
                Some(d) => tokio::time::timeout(d, op).await.ok(),
                None => Some(op.await),
            }
        })
        .await;
        if hang {
            broke_once = true;
        }
        report.ops += 1;
        match outcome {
            Err(_) => {
                report.hangs += 1;
                log.line(&format!("hang op {roll} after {:?}", started.elapsed()));
            }
            Ok(None) => report.cancelled += 1,
            Ok(Some(Ok(()))) => report.ok += 1,
            Ok(Some(Err(e))) => {
                *report.errors.entry(format!("{:?}", e.kind())).or_default() += 1;
            }
        }
    }
    match a.brk.as_deref() {
        Some("ack") => log.line(&format!("ack {} {}", own.start, u64::MAX / 2)),
        Some("fence") => {
            let c = rows.0.lock();
            let _ = c.execute(
                "INSERT INTO res_log (token, worker) VALUES (0, ?1)",
                params![a.id as i64],
            );
        }
        Some("panic") => {
            let _ = tokio::spawn(async { panic!("negative control: a panicking task") }).await;
        }
        // A critical section that overlaps one logged before, both valid.
        Some("overlap") => log.line("lock 1 1000 2000 1 0\nlock 2 1500 2500 1 0"),
        // An L1 that held one entry more than its capacity.
        Some("capacity") => report.l1_max_entries = L1_CAPACITY + 1,
        // A worker that dies without its report.
        Some("exit") => std::process::exit(1),
        _ => {}
    }

    // Faults have stopped: wait for the orchestrator's word.
    let calm = a.out.join("calm");
    let waited = Instant::now();
    while !calm.exists() {
        if waited.elapsed() > Duration::from_secs(120) {
            return Err(Error::new(
                ErrorKind::Timeout,
                "never told the faults stopped",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    converge(&a, &cache, &l2_view, &mut report).await;
    tokio::time::timeout(a.watchdog, cache.close())
        .await
        .unwrap_or_else(|_| report.hangs += 1);
    // This worker's writes are now in SQLite (or still journalled): no L2
    // value of its keys may be older than SQLite's, or it would be served
    // after the write (a fill of a load that read SQLite before a batch).
    // Negative control: compare against a seq one higher.
    let ahead = u64::from(a.brk.as_deref() == Some("l2behind"));
    for k in own.clone() {
        if let (Ok(Some(in_l2)), Ok(Some(in_db))) = (l2_view.get(&k).await, rows.load(&k).await)
            && in_l2 < in_db + ahead
        {
            report.l2_behind.push((k, in_l2, in_db));
        }
    }
    let wb = cache.stats().write_behind.unwrap_or_default();
    report.journalled = wb.journalled;
    report.replayed = wb.replayed;
    report.dead_letters = wb.dead_letters;
    report.queued_at_exit = wb.queued;
    sharded.close().await;
    clustered.close().await;
    Ok(report)
}

/// One critical section on the shared resource: the lock, then a write
/// that the resource accepts only with a token above every one before
/// (fencing), recorded with the holder's interval.
async fn critical_section(locks: &LockManager, rows: &Rows, log: &Log) -> Result<()> {
    let guard = locks
        .acquire_wait("resource", Duration::from_millis(500))
        .await?;
    let token = guard.fencing_token();
    let start = now_us();
    let db = Arc::clone(&rows.0);
    let accepted = tokio::task::spawn_blocking(move || {
        let mut c = db.lock();
        let tx = c.transaction().map_err(sql)?;
        let n = tx
            .execute(
                "UPDATE res SET counter = counter + 1, token = ?1 WHERE id = 1 AND token < ?1",
                params![token.cast_signed()],
            )
            .map_err(sql)?;
        if n == 1 {
            tx.execute(
                "INSERT INTO res_log (token, worker) VALUES (?1, 0)",
                params![token.cast_signed()],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok::<_, Error>(n == 1)
    })
    .await
    .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))??;
    let end = now_us();
    // The lock promises exclusion only while it is valid.
    let valid = !guard.is_lost() && guard.is_valid_for(Duration::ZERO);
    log.line(&format!(
        "lock {token} {start} {end} {} {}",
        u8::from(valid),
        u8::from(accepted)
    ));
    let _ = guard.release().await;
    Ok(())
}

/// After the faults: coherence back, breakers closed, every L1 entry equal
/// to the L2's value (re-checked once after the bound, so an invalidation
/// still in flight is not a failure).
async fn converge(a: &Args, cache: &Cache<u64, u64>, l2: &Cache<u64, u64>, r: &mut WorkerReport) {
    r.coherent = tokio::time::timeout(Duration::from_secs(30), cache.coherence_ready())
        .await
        .is_ok();
    let all_keys = a.workers * KEYS_PER_WORKER;
    // Breakers close on the next successful calls.
    let closed = |c: &Cache<u64, u64>| {
        c.stats()
            .breakers
            .iter()
            .all(|(_, s)| *s == BreakerState::Closed)
    };
    let t = Instant::now();
    let mut k = 0;
    while !(closed(cache) && closed(l2)) && t.elapsed() < Duration::from_secs(30) {
        let _ = cache.get(&(k % all_keys)).await;
        let _ = l2.get(&(k % all_keys)).await;
        k += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Negative control: a breaker reported open.
    r.breakers_closed = closed(cache) && closed(l2) && a.brk.as_deref() != Some("breaker");
    let offset = u64::from(a.brk.as_deref() == Some("converge"));
    let mut suspects = Vec::new();
    for k in 0..all_keys {
        let (mine, theirs) = (cache.get(&k).await, l2.get(&(k + offset)).await);
        if let (Ok(Some(x)), Ok(Some(y))) = (mine, theirs)
            && x != y
        {
            suspects.push(k);
        }
    }
    // The documented bound: an invalidation in flight lands within it.
    tokio::time::sleep(crate::CONVERGE_BOUND).await;
    for k in suspects {
        if let (Ok(Some(x)), Ok(Some(y))) = (cache.get(&k).await, l2.get(&(k + offset)).await)
            && x != y
        {
            r.mismatches += 1;
            r.mismatched.push((k, x, y));
        }
    }
}
