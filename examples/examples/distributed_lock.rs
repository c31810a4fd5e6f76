//! Distributed locks with fencing tokens. First, two workers (each with its
//! own `LockManager`, as two processes would have) contend for the lock of
//! one product and sell from its stock under it: never both at once, and
//! every holder gets a fencing token larger than the previous holder's.
//! Then the failure a lock alone cannot prevent: worker A holds the lock on
//! a fixed 300 ms lease, pauses (a GC pause, a swap storm) past it, worker
//! B takes the lock, and A wakes up and writes anyway. The resource refuses
//! A's write because its token is older than one it has seen: that is what
//! fencing is for.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example distributed_lock`
//!
//! With `REDIS_URLS=redis://h1:6379,redis://h2:6379,redis://h3:6379` (three
//! or more independent masters) it runs again with Redlock, whose tokens
//! come from a quorum max-register.
//!
//! The stock here is a `FencedResource`, an in-process value that checks
//! tokens; in production the check belongs to the storage you write to
//! (a conditional update on a `fence` column, say).

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use larder::lock::{FencedResource, LockConfig, LockManager};
use larder::prelude::*;
use larder::redis::redact;
use parking_lot::Mutex;

/// The lock every worker wants.
const LOCK: &str = "sku:42";
/// Sales per worker in the contention part.
const ROUNDS: u32 = 3;
const STOCK: u32 = 40;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!(
                "distributed_lock: set REDIS_URL to a Redis server, e.g.\n  \
                 REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example distributed_lock\n\
                 (and REDIS_URLS=url1,url2,url3 to run the Redlock variant too)"
            );
            return ExitCode::from(2);
        }
    };
    let redlock: Vec<String> = std::env::var("REDIS_URLS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let mut result = demo(&[url.as_str()]).await;
    if result.is_ok() && !redlock.is_empty() {
        let urls: Vec<&str> = redlock.iter().map(String::as_str).collect();
        result = demo(&urls).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distributed_lock: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(ttl: Duration) -> LockConfig {
    let mut c = LockConfig::with_ttl(ttl);
    c.namespace = "larder-example".to_owned();
    c
}

async fn demo(urls: &[&str]) -> Result<()> {
    let names: Vec<String> = urls.iter().map(|u| redact(u)).collect();
    let managers = |cfg: LockConfig| -> Result<(LockManager, LockManager)> {
        Ok((
            LockManager::new(urls, cfg.clone())?,
            LockManager::new(urls, cfg)?,
        ))
    };
    let (a, b) = managers(config(Duration::from_secs(2)))?;
    if urls.len() == 1 {
        println!("== single-instance lock on {}", names[0]);
    } else {
        println!(
            "== Redlock over {} masters (quorum {}): {}",
            urls.len(),
            a.quorum(),
            names.join(", ")
        );
    }

    // Part 1: two workers contend. The watchdog renews a held lock every
    // TTL/3, so a slow holder keeps it as long as it lives.
    let stock = Arc::new(FencedResource::new(STOCK));
    let inside = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(AtomicU32::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for (name, locks) in [("worker-a", a), ("worker-b", b)] {
        let (stock, inside, overlaps, tokens) = (
            Arc::clone(&stock),
            Arc::clone(&inside),
            Arc::clone(&overlaps),
            Arc::clone(&tokens),
        );
        workers.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                // Waits for the holder's release message (pub/sub), polling too.
                let guard = locks.acquire_wait(LOCK, Duration::from_secs(5)).await?;
                let token = guard.fencing_token();
                if inside.fetch_add(1, Ordering::SeqCst) > 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokens.lock().push(token);
                // The work: read, think, write with the token.
                let before = stock.read();
                tokio::time::sleep(Duration::from_millis(20)).await;
                let after = stock
                    .write(token, |s| {
                        *s -= 1;
                        *s
                    })
                    .map_err(|e| Error::with_source(ErrorKind::Lock, "a sale", e))?;
                println!("  {name} holds {LOCK} with token {token}: stock {before} -> {after}");
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for w in workers {
        w.await
            .map_err(|e| Error::with_source(ErrorKind::Lock, "a worker task", e))??;
    }
    let tokens = tokens.lock().clone();
    let increasing = tokens.windows(2).all(|w| w[0] < w[1]);
    println!(
        "stock after {} sales: {} (expected {}), overlapping holders: {}, tokens increasing: {increasing}",
        2 * ROUNDS,
        stock.read(),
        STOCK - 2 * ROUNDS,
        overlaps.load(Ordering::SeqCst)
    );

    // Part 2: a holder paused past its lease. No watchdog: a fixed 300 ms
    // lease, as if the holder's process had frozen with its renewals.
    let mut fixed = config(Duration::from_millis(300));
    fixed.watchdog = false;
    let (a, b) = managers(fixed)?;
    let guard_a = a.acquire(LOCK).await?;
    let token_a = guard_a.fencing_token();
    println!("worker-a holds {LOCK} with token {token_a} on a 300 ms lease, and pauses");
    let waited = tokio::time::Instant::now();
    let guard_b = b.acquire_wait(LOCK, Duration::from_secs(3)).await?;
    let token_b = guard_b.fencing_token();
    // No release message comes (worker-a is paused), so worker-b finds the
    // lock free by polling (every 250 ms by default) once the lease is over.
    println!(
        "worker-b got {LOCK} after {} ms, once worker-a's lease ran out: token {token_b}",
        waited.elapsed().as_millis()
    );
    stock
        .write(token_b, |s| *s -= 1)
        .map_err(|e| Error::with_source(ErrorKind::Lock, "worker-b's sale", e))?;
    println!("worker-b sold one: stock {}", stock.read());

    // Worker A wakes up. A careful holder checks before its side effect...
    println!(
        "worker-a wakes up: lock lost: {}, still valid: {}",
        guard_a.is_lost(),
        guard_a.is_valid_for(Duration::ZERO)
    );
    // ...but a paused holder may have passed that check just before pausing.
    // Then only the resource can stop it.
    match stock.write(token_a, |s| *s -= 1) {
        Err(stale) => println!("worker-a's late write with token {token_a}: refused ({stale})"),
        Ok(()) => println!("worker-a's late write with token {token_a}: ACCEPTED (unsafe!)"),
    }
    println!("stock: {}", stock.read());
    // `release` says whether the lock was still ours.
    println!("worker-a release: still held: {}", guard_a.release().await?);
    println!("worker-b release: still held: {}", guard_b.release().await?);
    Ok(())
}
