//! Larder in five steps, in process only (no Redis): a loader over a small
//! "database", a read that loads, a read that hits the L1, a write followed
//! by an invalidation (cache-aside), a missing key, and the cache's stats.
//!
//! Run: `cargo run --example quickstart`
//!
//! The "database" is a map behind a lock that counts its queries, so the
//! output shows which reads reached it. In a service it is a SQL query or
//! an HTTP call (`examples/src/lib.rs` has a real SQLite one).

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder::prelude::*;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// What we cache: it must be `Clone` (the L1 hands out copies) and `serde`
/// (an L2 would store it as bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    name: String,
    price_cents: u64,
}

/// The source of truth, and a count of the queries it answered.
#[derive(Default)]
struct Database {
    rows: Mutex<HashMap<u64, Product>>,
    queries: AtomicU64,
}

impl Database {
    fn find(&self, id: u64) -> Option<Product> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.rows.lock().get(&id).cloned()
    }

    fn set_price(&self, id: u64, price_cents: u64) {
        if let Some(p) = self.rows.lock().get_mut(&id) {
            p.price_cents = price_cents;
        }
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e} (kind {:?})", e.kind());
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let db = Arc::new(Database::default());
    db.rows.lock().insert(
        1,
        Product {
            name: "Espresso cup".into(),
            price_cents: 1200,
        },
    );

    // 1. The cache: an L1 of at most 1,000 entries, values fresh for five
    //    minutes, and a loader that the cache calls on a miss (read-through).
    //    `Ok(None)` from the loader means "no such product".
    let loader_db = Arc::clone(&db);
    let cache = Cache::<u64, Product>::builder()
        .memory(1_000)
        .ttl(Ttl::fixed(Duration::from_secs(300)))
        .loader(FnLoader::new(move |id: u64| {
            let db = Arc::clone(&loader_db);
            async move { Ok(db.find(id)) }
        }))
        .build()?;

    // 2. The first read misses and loads from the database.
    let p = cache.get_or_load(&1).await?;
    println!("read 1: {p:?} (database queries so far: {})", db.queries());

    // 3. The second read is an L1 hit: no query.
    let p = cache.get_or_load(&1).await?;
    println!("read 2: {p:?} (database queries so far: {})", db.queries());

    // 4. A write: the database first, then invalidate the key, so the next
    //    read loads the new price. (Deleting first and writing second lets
    //    a reader in between cache the old price again.)
    db.set_price(1, 990);
    cache.invalidate(&1).await?;
    println!("price of product 1 set to 990 in the database; key 1 invalidated");
    let p = cache.get_or_load(&1).await?;
    println!("read 3: {p:?} (database queries so far: {})", db.queries());

    // 5. A product that does not exist: `None`, and nothing is cached (see
    //    `negative_ttl` in the `advanced` example to cache "not found").
    let p = cache.get_or_load(&404).await?;
    println!(
        "read 4 (id 404): {p:?} (database queries so far: {})",
        db.queries()
    );

    // 6. The figures: subtract two snapshots to get an interval's.
    let s = cache.stats();
    println!(
        "stats: l1_hits={} l1_misses={} loads_ok={} invalidations={} l1_entries={} hit_ratio={:.2}",
        s.l1_hits,
        s.l1_misses,
        s.loads_ok,
        s.invalidations,
        s.l1_entries,
        s.hit_ratio()
    );

    // 7. Stop the cache: waits for background loads, none here.
    cache.close().await;
    Ok(())
}
