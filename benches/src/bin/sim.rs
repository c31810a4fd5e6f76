//! `cargo xtask sim`: replays cache traces through Larder's policies and the
//! peers (moka in strict mode, quick_cache, lru) plus Belady's OPT, with a
//! fresh cache per (trace, size, policy), as cache-aside: `get`, and
//! `insert` on a miss. Counts hits over all requests (cold start included)
//! and checks after every insert that the cache never holds more than its
//! capacity (`max_resident`).
//!
//! ```text
//! sim --trace FILE --format arc --sizes 1000,2000,5000 [--json]
//! sim [--traces DIR] [--json] [--quick]   every trace of the traces README
//! either form with --policies larder,OPT  only the policies whose name
//!                                         contains one of these (no report)
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use larder_benches::manifest::{Better, Manifest};
use larder_benches::traces::{self, Format};
use larder_memory::{MemoryCache, PolicyKind};

/// (file, sizes to report, the size of the peers' figures in the traces README).
const TRACES: &[(&str, &[usize], usize)] = &[
    ("arc_OLTP.lis.zst", &[1000, 2000, 5000], 0),
    ("arc_P3.lis.zst", &[20000, 32768, 160000], 32768),
    ("lirs_gli.trace.zst", &[250, 500, 1000], 1000),
    ("lirs_loop.trace.zst", &[256, 512, 768], 768),
    ("lirs_multi2.trace.zst", &[256, 512, 768], 256),
    ("cache2k_web07.i32be.zst", &[500, 2000, 6000], 500),
    ("cache2k_orm-busy.i32be.zst", &[1000, 5000, 20000], 1000),
    ("corda_vaultservice.i64be.zst", &[1000, 5000, 20000], 1000),
];

/// Peers' rows of the traces README (arc_OLTP reports all three sizes).
fn readme_row(trace: &str, size: usize) -> bool {
    TRACES
        .iter()
        .any(|(t, _, s)| *t == trace && (*s == size || (*s == 0 && trace.starts_with("arc_OLTP"))))
}

const POLICIES: &[&str] = &[
    "larder TinyLfu",
    DEFAULT_SHARDS,
    "larder Lru",
    "larder Lfu",
    "moka strict",
    "quick_cache",
    "lru",
    "OPT",
];

#[derive(Debug, Clone)]
struct Outcome {
    trace: String,
    size: usize,
    policy: &'static str,
    hit_ratio: f64,
    max_resident: usize,
}

/// Cache-aside over `keys`. `access(k)` answers `None` on a hit, or on a
/// miss inserts `k` and answers how many entries the cache then holds.
/// Returns (hits, the most entries ever held).
fn replay(keys: &[u64], mut access: impl FnMut(u64) -> Option<usize>) -> (u64, usize) {
    let (mut hits, mut max) = (0u64, 0usize);
    for &k in keys {
        match access(k) {
            None => hits += 1,
            Some(resident) => max = max.max(resident),
        }
    }
    (hits, max)
}

/// Larder's default policy with the builder's default shard count, where
/// the other `larder` rows use one shard (exact global policy order). That
/// count grows with the capacity (one shard per 256 entries, so sizes
/// under 512 get one) and with this machine's cores (four per core, a
/// power of two): the figures of this row depend on the host, whose core
/// count the report's header gives. No other policy's name contains this
/// one's, nor the reverse, so `--policies` can pick either.
const DEFAULT_SHARDS: &str = "larder sharded TinyLfu";

fn replay_larder(
    keys: &[u64],
    size: usize,
    kind: PolicyKind,
    shards: Option<usize>,
) -> (u64, usize) {
    // A fixed hasher: the same run gives the same figures.
    let builder = MemoryCache::<u64, ()>::builder(size as u64)
        .policy(kind)
        .hasher(std::hash::BuildHasherDefault::<
            std::collections::hash_map::DefaultHasher,
        >::default());
    let cache = match shards {
        Some(n) => builder.shards(n),
        None => builder,
    }
    .build();
    replay(keys, |k| {
        cache.get(&k).is_none().then(|| {
            cache.insert(k, ());
            cache.entry_count() as usize
        })
    })
}

fn replay_moka(keys: &[u64], size: usize) -> (u64, usize) {
    let cache: moka::sync::Cache<u64, ()> = moka::sync::Cache::builder()
        .max_capacity(size as u64)
        .build();
    replay(keys, |k| {
        cache.get(&k).is_none().then(|| {
            cache.insert(k, ());
            // Strict mode: pending maintenance runs after every insert.
            cache.run_pending_tasks();
            cache.entry_count() as usize
        })
    })
}

fn replay_quick(keys: &[u64], size: usize) -> (u64, usize) {
    let mut cache: quick_cache::unsync::Cache<u64, ()> = quick_cache::unsync::Cache::new(size);
    replay(keys, |k| {
        cache.get(&k).is_none().then(|| {
            cache.insert(k, ());
            cache.len()
        })
    })
}

fn replay_lru(keys: &[u64], size: usize) -> (u64, usize) {
    let mut cache = lru::LruCache::new(NonZeroUsize::new(size.max(1)).unwrap_or(NonZeroUsize::MIN));
    replay(keys, |k| {
        cache.get(&k).is_none().then(|| {
            cache.put(k, ());
            cache.len()
        })
    })
}

/// Belady's MIN: on a miss with a full cache, evict the key used farthest
/// in the future. The limit no demand-fetching policy can pass.
fn replay_opt(keys: &[u64], size: usize) -> (u64, usize) {
    let mut next = vec![usize::MAX; keys.len()];
    let mut last: HashMap<u64, usize> = HashMap::with_capacity(keys.len() / 4);
    for (i, &k) in keys.iter().enumerate().rev() {
        if let Some(&j) = last.get(&k) {
            next[i] = j;
        }
        last.insert(k, i);
    }
    let mut resident: HashMap<u64, usize> = HashMap::with_capacity(size * 2);
    let mut by_next: BTreeSet<(usize, u64)> = BTreeSet::new();
    let (mut hits, mut max) = (0u64, 0usize);
    for (i, &k) in keys.iter().enumerate() {
        if let Some(n) = resident.get_mut(&k) {
            hits += 1;
            by_next.remove(&(*n, k));
            *n = next[i];
            by_next.insert((next[i], k));
            continue;
        }
        if resident.len() >= size
            && let Some((_, victim)) = by_next.pop_last()
        {
            resident.remove(&victim);
        }
        resident.insert(k, next[i]);
        by_next.insert((next[i], k));
        max = max.max(resident.len());
    }
    (hits, max)
}

fn run(trace: &str, keys: &[u64], size: usize, policy: &'static str) -> Outcome {
    let (hits, max_resident) = match policy {
        "larder TinyLfu" => replay_larder(keys, size, PolicyKind::TinyLfu, Some(1)),
        DEFAULT_SHARDS => replay_larder(keys, size, PolicyKind::TinyLfu, None),
        "larder Lru" => replay_larder(keys, size, PolicyKind::Lru, Some(1)),
        "larder Lfu" => replay_larder(keys, size, PolicyKind::Lfu, Some(1)),
        "moka strict" => replay_moka(keys, size),
        "quick_cache" => replay_quick(keys, size),
        "lru" => replay_lru(keys, size),
        _ => replay_opt(keys, size),
    };
    Outcome {
        trace: trace.to_owned(),
        size,
        policy,
        hit_ratio: if keys.is_empty() {
            0.0
        } else {
            100.0 * hits as f64 / keys.len() as f64
        },
        max_resident,
    }
}

struct Args {
    trace: Option<PathBuf>,
    format: Option<Format>,
    sizes: Vec<usize>,
    json: bool,
    quick: bool,
    traces_dir: PathBuf,
    /// Only the policies whose name contains one of these (empty: all).
    policies: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        trace: None,
        format: None,
        sizes: Vec::new(),
        json: false,
        quick: false,
        traces_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces"),
        policies: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} takes a value"));
        match arg.as_str() {
            "--trace" => a.trace = Some(PathBuf::from(value("--trace")?)),
            "--format" => a.format = Some(value("--format")?.parse().map_err(|e| format!("{e}"))?),
            "--sizes" => {
                a.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|_| format!("bad size {s:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--traces" => a.traces_dir = PathBuf::from(value("--traces")?),
            "--json" => a.json = true,
            "--quick" => a.quick = true,
            "--policies" => {
                a.policies = value("--policies")?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if !POLICIES
                    .iter()
                    .any(|p| a.policies.iter().any(|f| p.contains(f.as_str())))
                {
                    return Err(format!("--policies matches none of {POLICIES:?}"));
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// Writes to stdout; a closed stdout (`sim --json | head`) ends the program
/// quietly instead of panicking.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("sim: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    // (trace name, keys, sizes)
    let mut jobs_input: Vec<(String, Vec<u64>, Vec<usize>)> = Vec::new();
    if let Some(path) = &args.trace {
        let format = args
            .format
            .or_else(|| Format::of_path(path))
            .ok_or("--format is needed for this file name")?;
        if args.sizes.is_empty() {
            return Err("--sizes is needed with --trace".into());
        }
        let keys = traces::read(path, format).map_err(|e| e.to_string())?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("trace")
            .to_owned();
        jobs_input.push((name, keys, args.sizes.clone()));
    } else {
        if !args.traces_dir.is_dir() {
            return Err(format!(
                "no traces at {} (pass --traces DIR; traces are published by moka-rs/cache-trace, Caffeine's simulator resources and cache2k)",
                args.traces_dir.display()
            ));
        }
        for (file, sizes, readme_size) in TRACES {
            let path = args.traces_dir.join(file);
            let Some(format) = Format::of_path(Path::new(file)) else {
                continue;
            };
            let keys = traces::read(&path, format).map_err(|e| e.to_string())?;
            let sizes: Vec<usize> = if args.quick {
                if *readme_size == 0 {
                    sizes.to_vec()
                } else {
                    vec![*readme_size]
                }
            } else {
                sizes.to_vec()
            };
            jobs_input.push((file.trim_end_matches(".zst").to_owned(), keys, sizes));
        }
    }

    let jobs: Vec<(usize, usize, &'static str)> = jobs_input
        .iter()
        .enumerate()
        .flat_map(|(t, (_, _, sizes))| {
            sizes
                .iter()
                .flat_map(move |&s| POLICIES.iter().map(move |&p| (t, s, p)))
        })
        .filter(|&(_, _, p)| {
            args.policies.is_empty() || args.policies.iter().any(|f| p.contains(f.as_str()))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(t, size, policy)) = jobs.get(i) else { break };
                    let (name, keys, _) = &jobs_input[t];
                    let o = run(name, keys, size, policy);
                    if args.json {
                        out(&format!(
                            "{{\"trace\":\"{}\",\"size\":{},\"policy\":\"{}\",\"hit_ratio\":{:.4},\"max_resident\":{}}}\n",
                            o.trace, o.size, o.policy, o.hit_ratio, o.max_resident
                        ));
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner()).push(o);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by(|a, b| (&a.trace, a.size).cmp(&(&b.trace, b.size)));
    if !args.json {
        print_table(&results);
    }
    let over: Vec<&Outcome> = results.iter().filter(|o| o.max_resident > o.size).collect();
    for o in &over {
        eprintln!(
            "sim: {} held {} entries at size {} on {}",
            o.policy, o.max_resident, o.size, o.trace
        );
    }
    // Only a full run is a report.
    if args.trace.is_none() && args.policies.is_empty() {
        record(&results);
    }
    Ok(())
}

fn rows(results: &[Outcome]) -> Vec<(String, usize)> {
    let mut rows: Vec<(String, usize)> =
        results.iter().map(|o| (o.trace.clone(), o.size)).collect();
    rows.dedup();
    rows
}

fn get(results: &[Outcome], trace: &str, size: usize, policy: &str) -> Option<f64> {
    results
        .iter()
        .find(|o| o.trace == trace && o.size == size && o.policy == policy)
        .map(|o| o.hit_ratio)
}

fn print_table(results: &[Outcome]) {
    use std::fmt::Write as _;
    let mut t = String::from("| trace | size |");
    for p in POLICIES {
        let _ = write!(t, " {p} |");
    }
    t.push_str(" max resident <= size |\n|---|--:|");
    for _ in POLICIES {
        t.push_str("--:|");
    }
    t.push_str("---|\n");
    for (trace, size) in rows(results) {
        let _ = write!(t, "| {trace} | {size} |");
        for p in POLICIES {
            match get(results, &trace, size, p) {
                Some(h) => {
                    let _ = write!(t, " {h:.2} |");
                }
                None => t.push_str(" |"),
            }
        }
        let ok = results
            .iter()
            .filter(|o| o.trace == trace && o.size == size)
            .all(|o| o.max_resident <= size);
        let _ = writeln!(t, " {} |", if ok { "yes" } else { "NO" });
    }
    out(&t);
}

/// Writes the figures for `cargo xtask bench`: per row, every policy's hit
/// ratio and Larder TinyLfu against each peer; a summary of % of OPT over
/// the traces README's rows.
fn record(results: &[Outcome]) {
    let mut m = Manifest::create("sim");
    let mut share: HashMap<&str, (f64, usize)> = HashMap::new();
    // Per subject (one shard, default shards): the worst row's gap to the
    // best peer.
    let mut worst: Vec<(&str, f64, String)> = ["larder TinyLfu", DEFAULT_SHARDS]
        .iter()
        .map(|&p| (p, f64::NEG_INFINITY, String::new()))
        .collect();
    for (trace, size) in rows(results) {
        let group = format!("sim/{trace} @ {size}");
        for p in POLICIES {
            if let Some(h) = get(results, &trace, size, p) {
                m.value(&group, p, h, "% hits", Better::Higher);
            }
        }
        for peer in ["moka strict", "quick_cache", "lru"] {
            m.compare(&group, "larder TinyLfu", peer);
        }
        if !readme_row(&format!("{trace}.zst"), size) {
            continue;
        }
        let Some(opt) = get(results, &trace, size, "OPT") else {
            continue;
        };
        for p in POLICIES.iter().filter(|p| **p != "OPT") {
            if let Some(h) = get(results, &trace, size, p) {
                let e = share.entry(p).or_insert((0.0, 0));
                e.0 += if opt > 0.0 { h / opt } else { 1.0 };
                e.1 += 1;
            }
        }
        let best_peer = ["moka strict", "quick_cache", "lru"]
            .iter()
            .filter_map(|p| get(results, &trace, size, p))
            .fold(f64::NEG_INFINITY, f64::max);
        for (p, worst_gap, worst_row) in &mut worst {
            if let Some(ours) = get(results, &trace, size, p) {
                let gap = best_peer - ours;
                if gap > *worst_gap {
                    *worst_gap = gap;
                    *worst_row = format!("{trace} @ {size}");
                }
            }
        }
    }
    for p in POLICIES.iter().filter(|p| **p != "OPT") {
        if let Some((sum, n)) = share.get(p) {
            m.value(
                "sim/summary",
                &format!("{p}: mean % of OPT"),
                100.0 * sum / *n as f64,
                "%",
                Better::Higher,
            );
        }
    }
    m.compare(
        "sim/summary",
        "larder TinyLfu: mean % of OPT",
        "quick_cache: mean % of OPT",
    );
    m.compare(
        "sim/summary",
        "larder TinyLfu: mean % of OPT",
        "moka strict: mean % of OPT",
    );
    for (p, worst_gap, worst_row) in worst {
        if worst_gap.is_finite() {
            let id = if p == DEFAULT_SHARDS {
                format!("points below the best peer, sharded, worst row ({worst_row})")
            } else {
                format!("points below the best peer, worst row ({worst_row})")
            };
            m.value(
                "sim/summary",
                &id,
                worst_gap.max(0.0),
                "points",
                Better::Lower,
            );
        }
    }
}
