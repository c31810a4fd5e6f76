//! The same `RedisStore` against a Redis Cluster (`Topology::Cluster`):
//! keys spread over the masters by hash slot, single reads and writes
//! routed to the slot's owner, and one `get_many` across slots (split by
//! master, each part through that master's circuit breaker). For every key
//! it prints the slot Larder computes (`larder::ring::keyslot`), the slot
//! the server computes (`CLUSTER KEYSLOT`), and the master that owns it
//! (`CLUSTER SLOTS`).
//!
//! Run: `REDIS_CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001 cargo run --release --example cluster`
//! (one or more seed nodes; the client discovers the rest).
//!
//! Keys live in the `larder-example` namespace and expire after 10 minutes.
//! Larder writes a key `k` as `larder-example:{k}`: the braces make `k` the
//! hash tag, so the internal keys that belong to `k` share its slot.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use larder::prelude::*;
use larder::redis::redis::{self, Value};
use larder::ring::keyslot;

const KEYS: usize = 12;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let urls: Vec<String> = std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        eprintln!(
            "cluster: set REDIS_CLUSTER_URLS to one or more comma-separated seed nodes of a Redis Cluster, e.g.\n  \
             REDIS_CLUSTER_URLS=redis://127.0.0.1:7000,redis://127.0.0.1:7001 cargo run --release --example cluster"
        );
        return ExitCode::from(2);
    }
    match run(urls).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

fn unexpected(what: &str) -> Error {
    Error::new(ErrorKind::Backend, format!("unexpected {what} reply"))
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`
/// as `(start, end, "host:port")` of each range's master.
fn slot_ranges(reply: &Value) -> Result<Vec<(u16, u16, String)>> {
    let Value::Array(ranges) = reply else {
        return Err(unexpected("CLUSTER SLOTS"));
    };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(unexpected("CLUSTER SLOTS range"));
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(unexpected("CLUSTER SLOTS range"));
        };
        let (Some(Value::BulkString(host)), Some(Value::Int(port))) =
            (master.first(), master.get(1))
        else {
            return Err(unexpected("CLUSTER SLOTS master"));
        };
        let slot = |n: i64| u16::try_from(n).map_err(|_| unexpected("CLUSTER SLOTS slot"));
        out.push((
            slot(*start)?,
            slot(*end)?,
            format!("{}:{port}", String::from_utf8_lossy(host)),
        ));
    }
    Ok(out)
}

async fn run(urls: Vec<String>) -> Result<()> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Cluster(urls))
            .namespace("larder-example")
            .build()?,
    )?;

    // Who owns which slots. A keyless command: the cluster client sends it
    // to one node, and any node knows the whole map.
    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let ranges = slot_ranges(&store.command(None, slots, true).await?)?;
    let masters: BTreeMap<&str, usize> = ranges.iter().map(|(_, _, m)| (m.as_str(), 0)).collect();
    println!("cluster with {} masters", masters.len());
    let mut per_master = masters;

    let run_id = format!("{:08x}", fastrand::u32(..));
    let keys: Vec<String> = (1..=KEYS).map(|i| format!("user:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let value = format!("run {run_id} user {}", i + 1);
        // Routed to the master of the key's slot (MOVED/ASK are followed).
        store
            .set(key, value.as_bytes(), Duration::from_secs(600))
            .await?;
    }
    println!("{KEYS} keys written; where they live:");
    for key in &keys {
        let redis_key = store.keyspace().data_key(key)?;
        let ours = keyslot(redis_key.as_bytes());
        let mut ask = redis::cmd("CLUSTER");
        ask.arg("KEYSLOT").arg(&redis_key);
        let theirs: u16 = store.command(Some(&redis_key), ask, true).await?;
        let owner = ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&ours))
            .map(|(_, _, m)| m.as_str())
            .unwrap_or("no master");
        if let Some(n) = per_master.get_mut(owner) {
            *n += 1;
        }
        let got = store.get(key).await?;
        let read = if got.is_some() {
            "read back"
        } else {
            "MISSING"
        };
        println!("  {redis_key}: slot {ours} (server: {theirs}), master {owner}, {read}");
    }
    for (master, n) in &per_master {
        println!("  master {master}: {n} keys");
    }

    // One call for keys on every master: the store splits it by master and
    // each part by slot, and answers in the order asked.
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = store.get_many(&refs).await?;
    let in_order = found
        .iter()
        .enumerate()
        .all(|(i, v)| v.as_deref() == Some(format!("run {run_id} user {}", i + 1).as_bytes()));
    let spanned = per_master.values().filter(|&&n| n > 0).count();
    println!(
        "get_many of {KEYS} keys across {spanned} masters: {} found, in order: {in_order}",
        found.iter().filter(|v| v.is_some()).count()
    );

    // The same for deletes.
    let deleted = store.delete_many(&refs).await?;
    println!("delete_many: {deleted} deleted");
    Ok(())
}
