//! The orchestrator: servers behind fault proxies, the workers, the
//! nemesis, and the checkers.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use larder::core::{Error, ErrorKind, Result};
use larder_testkit::{FaultProxy, RedisCluster, RedisServer};

use crate::{KEYS_PER_WORKER, L1_CAPACITY, WorkerReport, open_db};

/// What `larder-chaos run` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) seconds: f64,
    pub(crate) seed: u64,
    pub(crate) workers: u64,
    pub(crate) out: PathBuf,
    pub(crate) brk: Option<String>,
    pub(crate) watchdog: Duration,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::with_source(ErrorKind::Source, what, e)
}

fn testkit(what: &'static str) -> impl Fn(larder_testkit::Error) -> Error {
    move |e| Error::new(ErrorKind::Source, format!("{what}: {e}"))
}

/// A worker process and how many times it was started.
struct Worker {
    id: u64,
    incarnation: u64,
    child: Child,
}

struct World {
    cfg: Config,
    redis_url: String,
    shard_urls: Vec<String>,
    cluster_urls: Vec<String>,
    db: PathBuf,
}

impl World {
    fn spawn(&self, id: u64, incarnation: u64, seconds: f64) -> Result<Worker> {
        let exe = std::env::current_exe().map_err(io("exe"))?;
        let err = File::create(self.cfg.out.join(format!("stderr-{id}-{incarnation}.txt")))
            .map_err(io("stderr file"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .args(["--id", &id.to_string()])
            .args(["--incarnation", &incarnation.to_string()])
            .args(["--workers", &self.cfg.workers.to_string()])
            .args(["--redis", &self.redis_url])
            .args(["--shards", &self.shard_urls.join(",")])
            .args(["--cluster", &self.cluster_urls.join(",")])
            .arg("--db")
            .arg(&self.db)
            .arg("--out")
            .arg(&self.cfg.out)
            .args(["--seconds", &format!("{seconds:.3}")])
            .args(["--seed", &self.cfg.seed.to_string()])
            .args(["--watchdog", &self.cfg.watchdog.as_secs_f64().to_string()])
            .stdout(Stdio::null())
            .stderr(err);
        if let Some(b) = &self.cfg.brk {
            cmd.args(["--break", b]);
        }
        let child = cmd.spawn().map_err(io("spawning a worker"))?;
        Ok(Worker {
            id,
            incarnation,
            child,
        })
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid we started; no memory is shared.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs the soak; `Ok(true)` if every checker passed.
pub(crate) fn run(cfg: &Config) -> Result<bool> {
    std::fs::create_dir_all(&cfg.out).map_err(io("out dir"))?;
    let _ = std::fs::remove_file(cfg.out.join("calm"));
    let mut nemesis_log = String::new();
    let say = |log: &mut String, t0: Instant, s: &str| {
        let line = format!("{:>7.2}s {s}", t0.elapsed().as_secs_f64());
        println!("{line}");
        let _ = writeln!(log, "{line}");
    };
    let t0 = Instant::now();
    say(
        &mut nemesis_log,
        t0,
        &format!(
            "seed {} workers {} seconds {} out {}{}",
            cfg.seed,
            cfg.workers,
            cfg.seconds,
            cfg.out.display(),
            cfg.brk
                .as_ref()
                .map_or(String::new(), |b| format!(" NEGATIVE CONTROL --break {b}"))
        ),
    );

    let mut standalone = RedisServer::start().map_err(testkit("redis-server"))?;
    let proxy = FaultProxy::start(standalone.addr()).map_err(testkit("proxy"))?;
    let mut shards = Vec::new();
    let mut shard_proxies = Vec::new();
    for _ in 0..3 {
        let s = RedisServer::start().map_err(testkit("shard"))?;
        shard_proxies.push(FaultProxy::start(s.addr()).map_err(testkit("proxy"))?);
        shards.push(s);
    }
    let (mut cluster, cluster_proxies) =
        RedisCluster::start_proxied(3).map_err(testkit("cluster"))?;
    let db = cfg.out.join("chaos.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    {
        let c = open_db(&db)?;
        c.execute_batch(
            "CREATE TABLE rows (k INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
             CREATE TABLE res (id INTEGER PRIMARY KEY, counter INTEGER NOT NULL, token INTEGER NOT NULL);
             INSERT INTO res VALUES (1, 0, 0);
             CREATE TABLE res_log (n INTEGER PRIMARY KEY AUTOINCREMENT, token INTEGER NOT NULL, worker INTEGER NOT NULL);",
        )
        .map_err(|e| Error::with_source(ErrorKind::Source, "SQLite", e))?;
    }
    for id in 0..cfg.workers {
        let _ = std::fs::remove_file(cfg.out.join(format!("log-{id}.txt")));
    }
    let world = World {
        cfg: cfg.clone(),
        redis_url: proxy.url(),
        shard_urls: shard_proxies.iter().map(FaultProxy::url).collect(),
        cluster_urls: cluster_proxies.iter().map(FaultProxy::url).collect(),
        db: db.clone(),
    };
    let deadline = t0 + Duration::from_secs_f64(cfg.seconds);
    let mut workers: Vec<Worker> = (0..cfg.workers)
        .map(|id| world.spawn(id, 0, cfg.seconds))
        .collect::<Result<_>>()?;
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut kills = 0u64;
    let mut faults: HashMap<&'static str, u64> = HashMap::new();

    // The nemesis: one fault at a time, each undone before the next.
    while Instant::now() + Duration::from_millis(1500) < deadline {
        std::thread::sleep(Duration::from_millis(rng.u64(300..1200)));
        let hold = Duration::from_millis(rng.u64(200..1000));
        let pick = rng.u32(..11);
        let name = match pick {
            0 => {
                let ms = rng.u64(20..200);
                say(
                    &mut nemesis_log,
                    t0,
                    &format!("latency {ms} ms on the standalone for {hold:?}"),
                );
                proxy.set_latency(Duration::from_millis(ms));
                std::thread::sleep(hold);
                proxy.set_latency(Duration::ZERO);
                "latency"
            }
            1 => {
                say(
                    &mut nemesis_log,
                    t0,
                    &format!("stall the standalone's connections for {hold:?}"),
                );
                proxy.set_stalled(true);
                std::thread::sleep(hold);
                proxy.set_stalled(false);
                "stall"
            }
            2 => {
                say(
                    &mut nemesis_log,
                    t0,
                    "cut every connection to the standalone",
                );
                proxy.cut_all();
                "cut"
            }
            3 => {
                say(
                    &mut nemesis_log,
                    t0,
                    &format!("refuse connections to the standalone for {hold:?}"),
                );
                proxy.set_refusing(true);
                proxy.cut_all();
                std::thread::sleep(hold);
                proxy.set_refusing(false);
                "refuse"
            }
            4 => {
                if let Some(pid) = standalone.pid() {
                    say(
                        &mut nemesis_log,
                        t0,
                        &format!("pause the standalone (SIGSTOP) for {hold:?}"),
                    );
                    signal(pid, libc::SIGSTOP);
                    std::thread::sleep(hold);
                    signal(pid, libc::SIGCONT);
                }
                "pause"
            }
            5 => {
                let i = rng.usize(..shard_proxies.len());
                say(
                    &mut nemesis_log,
                    t0,
                    &format!("cut and refuse shard {i} for {hold:?}"),
                );
                shard_proxies[i].set_refusing(true);
                shard_proxies[i].cut_all();
                std::thread::sleep(hold);
                shard_proxies[i].set_refusing(false);
                "shard down"
            }
            6 => {
                let i = rng.usize(..shard_proxies.len());
                let ms = rng.u64(50..300);
                say(
                    &mut nemesis_log,
                    t0,
                    &format!("latency {ms} ms on shard {i} for {hold:?}"),
                );
                shard_proxies[i].set_latency(Duration::from_millis(ms));
                std::thread::sleep(hold);
                shard_proxies[i].set_latency(Duration::ZERO);
                "shard latency"
            }
            7 => {
                let i = rng.usize(..shards.len());
                say(
                    &mut nemesis_log,
                    t0,
                    &format!(
                        "SIGKILL shard {i}'s server, restart it after {hold:?} (its data is gone)"
                    ),
                );
                shards[i].kill();
                std::thread::sleep(hold);
                if let Err(e) = shards[i].restart() {
                    say(
                        &mut nemesis_log,
                        t0,
                        &format!("shard {i} did not restart: {e}"),
                    );
                }
                "shard killed"
            }
            8 => {
                let i = rng.usize(..cluster_proxies.len());
                say(
                    &mut nemesis_log,
                    t0,
                    &format!("pause cluster master {i} (SIGSTOP) for {hold:?}"),
                );
                let node = cluster.node_mut(i);
                let _ = node.pause();
                std::thread::sleep(hold);
                let _ = node.resume();
                "cluster pause"
            }
            9 => {
                let i = rng.usize(..cluster_proxies.len());
                let ms = rng.u64(20..200);
                say(
                    &mut nemesis_log,
                    t0,
                    &format!(
                        "latency {ms} ms on cluster master {i} for {hold:?}, then cut its connections"
                    ),
                );
                cluster_proxies[i].set_latency(Duration::from_millis(ms));
                std::thread::sleep(hold);
                cluster_proxies[i].set_latency(Duration::ZERO);
                cluster_proxies[i].cut_all();
                "cluster latency"
            }
            _ => {
                let i = victim(cfg, &workers, &mut rng);
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                if left > 1.0 {
                    kill_and_restart(&world, &mut workers[i], left, &mut nemesis_log, t0)?;
                    kills += 1;
                }
                "kill worker"
            }
        };
        *faults.entry(name).or_default() += 1;
    }
    // Every run kills a worker at least once.
    if kills == 0 {
        let i = victim(cfg, &workers, &mut rng);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
            .max(0.5);
        kill_and_restart(&world, &mut workers[i], left, &mut nemesis_log, t0)?;
        kills += 1;
        *faults.entry("kill worker").or_default() += 1;
    }
    // Faults stop.
    proxy.set_latency(Duration::ZERO);
    proxy.set_stalled(false);
    proxy.set_refusing(false);
    for p in shard_proxies.iter().chain(&cluster_proxies) {
        p.set_latency(Duration::ZERO);
        p.set_refusing(false);
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    say(
        &mut nemesis_log,
        t0,
        "faults stopped; workers converge and exit",
    );
    File::create(cfg.out.join("calm")).map_err(io("calm file"))?;
    let mut hung_processes = Vec::new();
    let mut exit_failures = Vec::new();
    for w in &mut workers {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            match w.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        exit_failures.push(format!(
                            "worker {} incarnation {}: {status}",
                            w.id, w.incarnation
                        ));
                    }
                    break;
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    hung_processes.push(format!("worker {} incarnation {}", w.id, w.incarnation));
                    break;
                }
            }
        }
    }
    let _ = standalone.is_running();
    let ok = check(
        cfg,
        &db,
        &workers,
        &hung_processes,
        &exit_failures,
        kills,
        &faults,
        &mut nemesis_log,
    )?;
    std::fs::write(cfg.out.join("nemesis.log"), &nemesis_log).map_err(io("nemesis log"))?;
    drop(shards);
    drop(cluster);
    Ok(ok)
}

/// SIGKILLs a worker and starts its next incarnation for `left` seconds.
fn kill_and_restart(
    world: &World,
    w: &mut Worker,
    left: f64,
    log: &mut String,
    t0: Instant,
) -> Result<()> {
    let line = format!(
        "{:>7.2}s SIGKILL worker {} (incarnation {}), start it again",
        t0.elapsed().as_secs_f64(),
        w.id,
        w.incarnation
    );
    println!("{line}");
    let _ = writeln!(log, "{line}");
    let _ = w.child.kill();
    let _ = w.child.wait();
    std::thread::sleep(Duration::from_millis(200));
    *w = world.spawn(w.id, w.incarnation + 1, (left - 0.2).max(0.3))?;
    Ok(())
}

/// The checkers. Prints each with its counts; `true` if all passed.
#[allow(clippy::too_many_arguments)]
fn check(
    cfg: &Config,
    db: &Path,
    workers: &[Worker],
    hung_processes: &[String],
    exit_failures: &[String],
    kills: u64,
    faults: &HashMap<&'static str, u64>,
    log: &mut String,
) -> Result<bool> {
    let mut all_ok = true;
    let mut verdict = |log: &mut String, name: &str, ok: bool, detail: String| {
        let line = format!(
            "check {name:<34} {} {detail}",
            if ok { "PASS" } else { "FAIL" }
        );
        println!("{line}");
        let _ = writeln!(log, "{line}");
        all_ok &= ok;
    };
    let mut faults: Vec<_> = faults.iter().collect();
    faults.sort();
    let _ = writeln!(log, "faults injected: {faults:?}, workers killed: {kills}");
    println!("faults injected: {faults:?}, workers killed: {kills}");

    // Reports of every incarnation that ended cleanly (the last of each).
    let mut reports = Vec::new();
    for w in workers {
        let p = cfg
            .out
            .join(format!("report-{}-{}.json", w.id, w.incarnation));
        if let Ok(s) = std::fs::read_to_string(&p)
            && let Ok(r) = serde_json::from_str::<WorkerReport>(&s)
        {
            reports.push(r);
        }
    }
    let ops: u64 = reports.iter().map(|r| r.ops).sum();
    let oks: u64 = reports.iter().map(|r| r.ok).sum();
    let cancelled: u64 = reports.iter().map(|r| r.cancelled).sum();
    let mut errors = std::collections::BTreeMap::new();
    for r in &reports {
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0u64) += v;
        }
    }
    let _ = writeln!(
        log,
        "ops (last incarnations): {ops}, ok {oks}, cancelled {cancelled}, typed errors {errors:?}"
    );
    println!(
        "ops (last incarnations): {ops}, ok {oks}, cancelled {cancelled}, typed errors {errors:?}"
    );

    // 1. No panic in any process.
    let mut panics = Vec::new();
    if let Ok(dir) = std::fs::read_dir(&cfg.out) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("stderr-")
                && std::fs::read_to_string(e.path()).is_ok_and(|s| s.contains("panicked"))
            {
                panics.push(name);
            }
        }
    }
    panics.sort();
    verdict(log, "no panic", panics.is_empty(), format!("{panics:?}"));
    verdict(
        log,
        "every process exited cleanly",
        exit_failures.is_empty() && reports.len() == workers.len(),
        format!(
            "{exit_failures:?}, {} of {} reports",
            reports.len(),
            workers.len()
        ),
    );

    // 2. No hang: every operation ended within the watchdog.
    let hangs: u64 = reports.iter().map(|r| r.hangs).sum();
    let logged_hangs = count_lines(cfg, workers, "hang ");
    verdict(
        log,
        "no operation hung",
        hangs == 0 && logged_hangs == 0 && hung_processes.is_empty(),
        format!("{hangs} in reports, {logged_hangs} logged, stuck processes {hung_processes:?}"),
    );

    // 3. Every acknowledged durable write is in SQLite.
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut ack_count = 0u64;
    for w in workers {
        for line in read_log(cfg, w.id) {
            if let Some(rest) = line.strip_prefix("ack ") {
                let mut p = rest.split_whitespace().map(str::parse::<u64>);
                if let (Some(Ok(k)), Some(Ok(s))) = (p.next(), p.next()) {
                    ack_count += 1;
                    let e = acked.entry(k).or_insert(0);
                    *e = (*e).max(s);
                }
            }
        }
    }
    let c = open_db(db)?;
    let sql = |e| Error::with_source(ErrorKind::Source, "SQLite", e);
    let mut missing = 0u64;
    for (k, s) in &acked {
        let have: Option<i64> = c
            .query_row(
                "SELECT seq FROM rows WHERE k = ?1",
                [k.cast_signed()],
                |r| r.get(0),
            )
            .ok();
        if have.is_none_or(|h| h.cast_unsigned() < *s) {
            missing += 1;
        }
    }
    verdict(
        log,
        "every acknowledged write is in SQLite",
        missing == 0 && (ack_count > 0 || cfg.seconds < 1.0),
        format!(
            "{ack_count} acknowledged writes over {} keys, {missing} keys behind",
            acked.len()
        ),
    );

    // 4. The lock: accepted tokens only grow; the counter counts them; no
    // two holders overlapped while their locks were valid.
    let mut stmt = c
        .prepare("SELECT token FROM res_log ORDER BY n")
        .map_err(sql)?;
    let tokens: Vec<i64> = stmt
        .query_map([], |r| r.get(0))
        .map_err(sql)?
        .collect::<rusqlite::Result<_>>()
        .map_err(sql)?;
    let increasing = tokens.windows(2).all(|w| w[0] < w[1]);
    let counter: i64 = c
        .query_row("SELECT counter FROM res WHERE id = 1", [], |r| r.get(0))
        .map_err(sql)?;
    let mut sections: Vec<(u64, u64)> = Vec::new();
    let mut rejected = 0u64;
    for w in workers {
        for line in read_log(cfg, w.id) {
            if let Some(rest) = line.strip_prefix("lock ") {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [_, start, end, valid, accepted] = f[..] {
                    if valid == 1 {
                        sections.push((start, end));
                    }
                    if accepted == 0 {
                        rejected += 1;
                    }
                }
            }
        }
    }
    sections.sort_unstable();
    let overlaps = sections.windows(2).filter(|w| w[1].0 < w[0].1).count();
    verdict(
        log,
        "fencing: no stale token accepted",
        increasing && usize::try_from(counter).ok() == Some(tokens.len()),
        format!(
            "{} accepted, counter {counter}, {rejected} rejected as stale",
            tokens.len()
        ),
    );
    verdict(
        log,
        "no two valid lock holders overlapped",
        overlaps == 0,
        format!("{} critical sections, {overlaps} overlaps", sections.len()),
    );

    // 5. After the faults: coherence back, breakers closed, L1 = L2.
    let mismatches: u64 = reports.iter().map(|r| r.mismatches).sum();
    // Which keys, with what (values are `incarnation * 10^9 + n`: they
    // name the incarnation that wrote them).
    let which: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.mismatched
                .iter()
                .take(5)
                .map(move |(k, x, y)| format!("worker {} key {k}: L1 {x}, L2 {y}", r.id))
        })
        .collect();
    verdict(
        log,
        "L1s converge to Redis",
        mismatches == 0 && reports.iter().all(|r| r.coherent),
        format!(
            "{mismatches} keys differ after {:?} {which:?}",
            crate::CONVERGE_BOUND
        ),
    );
    let behind: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.l2_behind
                .iter()
                .take(5)
                .map(move |(k, l2, db)| format!("worker {} key {k}: L2 {l2}, SQLite {db}", r.id))
        })
        .collect();
    let behind_count: usize = reports.iter().map(|r| r.l2_behind.len()).sum();
    verdict(
        log,
        "no L2 value older than SQLite",
        behind_count == 0,
        format!("{behind_count} keys behind after the writes {behind:?}"),
    );
    verdict(
        log,
        "every breaker closed",
        reports.iter().all(|r| r.breakers_closed),
        String::new(),
    );

    // 6. Memory within bounds.
    let l1_max = reports.iter().map(|r| r.l1_max_entries).max().unwrap_or(0);
    verdict(
        log,
        "L1 within its capacity",
        l1_max <= L1_CAPACITY,
        format!("max {l1_max} of {L1_CAPACITY} entries"),
    );
    let _ = KEYS_PER_WORKER;
    Ok(all_ok)
}

/// The worker a kill takes (the nemesis's, or the run's forced one): one
/// whose current incarnation has acknowledged a write, waiting up to 10 s
/// for one (a victim that wrote nothing loses nothing, and the `nodurable`
/// control would pass without testing anything); any worker after that.
/// Which workers have written depends on timing, so a seed fixes the
/// faults but not always the victim.
fn victim(cfg: &Config, workers: &[Worker], rng: &mut fastrand::Rng) -> usize {
    let wrote = |w: &Worker| {
        let start = format!("start incarnation {}:", w.incarnation);
        read_log(cfg, w.id)
            .iter()
            .skip_while(|l| !l.starts_with(&start))
            .any(|l| l.starts_with("ack "))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Vec<usize> = (0..workers.len()).filter(|&i| wrote(&workers[i])).collect();
        if !ready.is_empty() {
            return ready[rng.usize(..ready.len())];
        }
        if Instant::now() >= deadline {
            return rng.usize(..workers.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(cfg: &Config, id: u64) -> Vec<String> {
    std::fs::read_to_string(cfg.out.join(format!("log-{id}.txt")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn count_lines(cfg: &Config, workers: &[Worker], prefix: &str) -> usize {
    workers
        .iter()
        .map(|w| {
            read_log(cfg, w.id)
                .iter()
                .filter(|l| l.starts_with(prefix))
                .count()
        })
        .sum()
}
