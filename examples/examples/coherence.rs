//! Two processes, one Redis: a write in one evicts the other's L1.
//!
//! The parent process changes a product's price through its cache; a child
//! process (this example again, with `--child`) keeps the product in its
//! in-process L1 and reports, for each change, how long after the write
//! began it read the new price. This runs three ways: coherence by Redis
//! client tracking, coherence by pub/sub, and no coherence (the control:
//! the child keeps serving the old price from its L1 until the entry's
//! TTL, which is what an L1 in front of a shared Redis does without it).
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example coherence`

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints
#![allow(clippy::disallowed_methods)] // it measures wall time across processes

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use larder::CoherenceMode;
use larder::prelude::*;
use larder::redis::redact;
use larder_examples::cli::{finish, required_env};

/// Price changes per mode (the control waits out its patience on each).
const CHANGES: u64 = 50;
const CONTROL_CHANGES: u64 = 2;
/// How long the child waits for a new price before it calls it stale.
const PATIENCE: Duration = Duration::from_secs(3);
/// The product.
const SKU: u64 = 7;

fn now_us() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A price list that answers every product's starting price (the source of
/// truth here is the parent's writes).
fn cache(url: &str, ns: &str, mode: Option<CoherenceMode>) -> Result<Cache<u64, i64>> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace(ns)
            .build()?,
    )?;
    let b = Cache::builder()
        .redis(store)
        .ttl(Ttl::fixed(Duration::from_secs(600)))
        .loader(FnLoader::new(|_sku: u64| async {
            Ok::<_, Error>(Some(1_000))
        }));
    match mode {
        Some(m) => b.coherence(m).build(),
        None => b.build(),
    }
}

/// The child: holds the product in its L1; for each line `<price> <t0 µs>`
/// on stdin, reads until it sees that price (or gives up after
/// [`PATIENCE`]) and answers `seen <µs since t0>` or `stale <old price>`.
async fn child(url: &str, ns: &str, mode: Option<CoherenceMode>) -> Result<()> {
    let c = cache(url, ns, mode)?;
    if tokio::time::timeout(Duration::from_secs(10), c.coherence_ready())
        .await
        .is_err()
    {
        return Err(Error::new(
            ErrorKind::Timeout,
            "the invalidation stream never came up",
        ));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Error::with_source(ErrorKind::Source, "stdin", e))?;
        let mut parts = line.split_whitespace();
        let (Some(Ok(price)), Some(Ok(t0))) = (
            parts.next().map(str::parse::<i64>),
            parts.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let answer = loop {
            let seen = c.get_or_load(&SKU).await?;
            if seen == Some(price) {
                break format!("seen {}", now_us().saturating_sub(t0));
            }
            if tokio::time::Instant::now() >= deadline {
                break format!("stale {}", seen.unwrap_or(0));
            }
            tokio::time::sleep(Duration::from_micros(50)).await;
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
    c.close().await;
    Ok(())
}

/// What one mode showed.
struct Outcome {
    seen: Vec<u64>,
    stale: u64,
}

async fn parent(url: &str, mode: Option<CoherenceMode>, changes: u64) -> Result<Outcome> {
    let ns = format!("coherence-example-{:08x}", fastrand::u32(..));
    let c = cache(url, &ns, mode)?;
    let exe =
        std::env::current_exe().map_err(|e| Error::with_source(ErrorKind::Source, "exe", e))?;
    let mode_arg = match mode {
        Some(CoherenceMode::Tracking) => "tracking",
        Some(_) => "pubsub",
        None => "none",
    };
    let mut child = Command::new(exe)
        .args(["--child", url, &ns, mode_arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::with_source(ErrorKind::Source, "spawning the child", e))?;
    let mut to_child = child.stdin.take().expect("piped");
    let mut from_child = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut next = move || -> Result<String> {
        match from_child.next() {
            Some(Ok(l)) => Ok(l),
            _ => Err(Error::new(ErrorKind::Source, "the child stopped")),
        }
    };
    if next()? != "ready" {
        return Err(Error::new(ErrorKind::Source, "the child did not start"));
    }
    // The child reads the product once, so its L1 holds it.
    let mut out = Outcome {
        seen: Vec::new(),
        stale: 0,
    };
    writeln!(to_child, "1000 {}", now_us())
        .map_err(|e| Error::with_source(ErrorKind::Source, "to the child", e))?;
    next()?;
    for i in 1..=changes {
        let price = 1_000 + i64::try_from(i).unwrap_or(0);
        let t0 = now_us();
        c.insert(&SKU, price).await?;
        writeln!(to_child, "{price} {t0}")
            .map_err(|e| Error::with_source(ErrorKind::Source, "to the child", e))?;
        let answer = next()?;
        match answer.split_once(' ') {
            Some(("seen", us)) => out.seen.push(us.parse().unwrap_or(0)),
            _ => out.stale += 1,
        }
    }
    drop(to_child);
    let _ = child.wait();
    if let Some(redis) = c.redis() {
        // The cache keys, then pub/sub's generation counter, which `clear`
        // leaves alone (an instance compares it after a reconnect).
        redis.clear_namespace().await?;
        let counter = redis.keyspace().global_key("#inv:gen")?;
        let mut del = larder::redis::redis::cmd("DEL");
        del.arg(&counter);
        redis.command::<u64>(Some(&counter), del, true).await?;
    }
    c.close().await;
    Ok(out)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (Some(url), Some(ns), Some(mode)) = (args.get(2), args.get(3), args.get(4)) else {
            eprintln!("coherence --child URL NAMESPACE tracking|pubsub|none");
            return ExitCode::from(2);
        };
        let mode = match mode.as_str() {
            "tracking" => Some(CoherenceMode::Tracking),
            "pubsub" => Some(CoherenceMode::PubSub),
            _ => None,
        };
        return finish("coherence child", child(url, ns, mode).await);
    }
    let url = match required_env("coherence", "REDIS_URL", "redis://127.0.0.1:6379") {
        Ok(url) => url,
        Err(code) => return code,
    };
    finish("coherence", run(&url).await)
}

async fn run(url: &str) -> Result<()> {
    println!(
        "two processes on Redis at {}: the parent changes a price, the child holds it in \
         its L1",
        redact(url)
    );
    for (name, mode, changes) in [
        ("tracking     ", Some(CoherenceMode::Tracking), CHANGES),
        ("pub/sub      ", Some(CoherenceMode::PubSub), CHANGES),
        ("no coherence ", None, CONTROL_CHANGES),
    ] {
        let mut o = parent(url, mode, changes).await?;
        o.seen.sort_unstable();
        let q = |p: f64| {
            o.seen
                .get(((o.seen.len() as f64 * p) as usize).min(o.seen.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{name}: {} of {changes} changes seen by the other process (p50 {} µs, p99 {} µs \
             after the write began); {} still stale after {} ms",
            o.seen.len(),
            q(0.5),
            q(0.99),
            o.stale,
            PATIENCE.as_millis()
        );
        if mode.is_some() && o.stale > 0 {
            return Err(Error::new(
                ErrorKind::Source,
                format!("{} changes never reached the other process's L1", o.stale),
            ));
        }
    }
    Ok(())
}
