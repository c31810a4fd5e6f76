//! A cache sharded over independent Redis servers by a consistent-hash ring
//! in the client (`Topology::Sharded`). It writes 1,000 product keys (one
//! pipeline per server, in parallel), prints how many each server owns,
//! then removes one server from the ring and shows that only that server's
//! keys moved: every other key still lives where it was, and reads of it
//! still hit. Adding the server back returns every key to its first owner.
//!
//! Run: `REDIS_URLS=redis://127.0.0.1:6379,redis://127.0.0.1:6380,redis://127.0.0.1:6381 cargo run --release --example sharded`
//!
//! With `--after-kill`, for when one of the servers is down (stop one and
//! run it): the store finds out by itself. It writes the keys one by one;
//! the first writes routed to the dead server fail, its circuit breaker
//! opens after 5 failures, the ring skips it, and its keys go to the next
//! live server while no other key moves.
//!
//! Keys live in the `larder-example` namespace and expire after 10 minutes.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use larder::prelude::*;
use larder::redis::{BreakerConfig, BreakerState, redact};

const KEYS: usize = 1000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let urls: Vec<String> = std::env::var("REDIS_URLS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let after_kill = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--after-kill") => true,
        Some(other) => {
            eprintln!("sharded: unknown option {other:?}; usage: sharded [--after-kill]");
            return ExitCode::from(2);
        }
    };
    if urls.len() < 2 {
        eprintln!(
            "sharded: set REDIS_URLS to two or more comma-separated Redis servers, e.g.\n  \
             REDIS_URLS=redis://127.0.0.1:6379,redis://127.0.0.1:6380,redis://127.0.0.1:6381 \
             cargo run --release --example sharded [--after-kill]"
        );
        return ExitCode::from(2);
    }
    let outcome = if after_kill {
        run_after_kill(urls).await
    } else {
        run(urls).await
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sharded: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The owner (server name) of every key, in key order.
fn owners(store: &RedisStore, keys: &[String]) -> Result<Vec<String>> {
    keys.iter()
        .map(|k| store.shard_of(k).map(|(_, name)| name))
        .collect()
}

fn print_counts(owners: &[String], servers: &[String]) {
    let mut counts: BTreeMap<&str, usize> = servers.iter().map(|s| (s.as_str(), 0)).collect();
    for o in owners {
        *counts.entry(o.as_str()).or_default() += 1;
    }
    for s in servers {
        println!("  {s}: {} keys", counts[s.as_str()]);
    }
}

async fn run(urls: Vec<String>) -> Result<()> {
    let servers: Vec<String> = urls.iter().map(|u| redact(u)).collect();
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Sharded(urls.clone()))
            .namespace("larder-example")
            .build()?,
    )?;
    println!("sharded store over {} servers", servers.len());

    // Values carry a run id, so a read can tell this run's value from one an
    // earlier run left.
    let run_id = format!("{:08x}", fastrand::u32(..));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("product:{i}")).collect();
    let values: Vec<String> = (0..KEYS)
        .map(|i| format!("run {run_id} product {i}"))
        .collect();
    let entries: Vec<StoreEntry<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| StoreEntry {
            key,
            value: value.as_bytes(),
            ttl: Duration::from_secs(600),
        })
        .collect();
    // Grouped per server, one pipeline each, sent in parallel.
    store.set_many(&entries).await?;

    // `shard_of` answers which server owns a key now: the ring's choice.
    let before = owners(&store, &keys)?;
    println!("{KEYS} keys written; keys per server:");
    print_counts(&before, &servers);

    // Take the last server out of the ring.
    let removed = &servers[servers.len() - 1];
    store.remove_shard(&urls[urls.len() - 1])?;
    let after = owners(&store, &keys)?;
    let moved: Vec<usize> = (0..KEYS).filter(|&i| before[i] != after[i]).collect();
    let moved_from_others = moved.iter().filter(|&&i| &before[i] != removed).count();
    let owned_by_removed = before.iter().filter(|o| *o == removed).count();
    println!("removed {removed}; keys per server:");
    print_counts(&after, &servers[..servers.len() - 1]);
    println!(
        "keys that moved: {} ({removed} owned {owned_by_removed}); keys of other servers that moved: {moved_from_others}",
        moved.len()
    );

    // Reads go to the new owners: the moved keys miss there (a cache would
    // load them from the source again), every other key still hits.
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = store.get_many(&refs).await?;
    let hits = found
        .iter()
        .zip(&values)
        .filter(|(got, want)| got.as_deref() == Some(want.as_bytes()))
        .count();
    println!(
        "reads after the removal: {hits} hits, {} misses (expected {} hits)",
        KEYS - hits,
        KEYS - moved.len()
    );

    // Put it back: the ring is a function of its members, so every key
    // returns to its first owner.
    store.add_shard(&urls[urls.len() - 1])?;
    let back = owners(&store, &keys)?;
    let home = (0..KEYS).filter(|&i| back[i] == before[i]).count();
    println!("added {removed} back: {home} of {KEYS} keys are on their first server again");
    Ok(())
}

/// `--after-kill`: one server may be down, and nobody told the store.
async fn run_after_kill(urls: Vec<String>) -> Result<()> {
    let servers: Vec<String> = urls.iter().map(|u| redact(u)).collect();
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Sharded(urls))
            .namespace("larder-example")
            // Open after 5 consecutive failures (the default), and stay open
            // for 30 s, so that the dead server is not probed again during
            // this short demo (the default probes it after 1 s).
            .breaker(BreakerConfig::new(5, Duration::from_secs(30)))
            .connect_timeout(Duration::from_millis(200))
            .build()?,
    )?;
    println!(
        "sharded store over {} servers, one of which may be down",
        servers.len()
    );
    let run_id = format!("{:08x}", fastrand::u32(..));
    let keys: Vec<String> = (0..KEYS).map(|i| format!("product:{i}")).collect();
    // The ring's choice with every server up: nothing has failed yet.
    let planned = owners(&store, &keys)?;

    // One by one, so that each key's fate is known (a `set_many` group for
    // the dead server would fail as a whole).
    let mut written = vec![false; KEYS];
    let mut failures = 0;
    for (i, key) in keys.iter().enumerate() {
        let value = format!("run {run_id} product {i}");
        match store
            .set(key, value.as_bytes(), Duration::from_secs(600))
            .await
        {
            Ok(()) => written[i] = true,
            Err(e) => {
                failures += 1;
                if failures <= 3 {
                    println!("  write of {key} failed: {e}");
                }
            }
        }
    }
    println!(
        "{KEYS} keys: {} written, {failures} failed",
        written.iter().filter(|w| **w).count()
    );
    let states = store.breaker_states();
    for (name, state) in &states {
        println!("  breaker of {name}: {state:?}");
    }
    let down: Vec<&str> = states
        .iter()
        .filter(|(_, s)| *s == BreakerState::Open)
        .map(|(n, _)| n.as_str())
        .collect();

    let now = owners(&store, &keys)?;
    println!("keys per server now:");
    print_counts(&now, &servers);
    let moved: Vec<usize> = (0..KEYS).filter(|&i| planned[i] != now[i]).collect();
    let moved_from_others = moved
        .iter()
        .filter(|&&i| !down.contains(&planned[i].as_str()))
        .count();
    println!(
        "keys that moved away from a server that is down: {}; keys of other servers that moved: {moved_from_others}",
        moved.len() - moved_from_others
    );

    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = store.get_many(&refs).await?;
    let hits = (0..KEYS)
        .filter(|&i| found[i].as_deref() == Some(format!("run {run_id} product {i}").as_bytes()))
        .count();
    println!(
        "reads: {hits} hits of {} keys written",
        written.iter().filter(|w| **w).count()
    );
    Ok(())
}
