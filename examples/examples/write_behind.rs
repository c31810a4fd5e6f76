//! Durable write-behind: stock levels written to the cache at once and to
//! SQLite in batches, surviving a `kill -9` of the process that queued them.
//!
//! The example runs a child process (itself, with `--child`) that updates
//! the stock of 50 products as fast as it can with `Cache::put_behind`,
//! printing each write the cache acknowledged. Batches go out every 60 s,
//! so every acknowledged write is still queued when the parent kills the
//! child with SIGKILL, a second or so later. The parent then starts a cache with
//! the same consumer name, which replays the journal, and counts the
//! acknowledged writes SQLite holds. It does this twice: without the
//! journal (plain write-behind: the kill loses what was queued) and with it
//! (`CacheBuilder::durable`: nothing acknowledged is lost).
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example write_behind`

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use larder::prelude::*;
use larder::redis::redact;
use larder_examples::cli::{finish, required_env};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Products whose stock the child updates.
const PRODUCTS: u64 = 50;
/// Acknowledged writes the parent waits for before the kill.
const BEFORE_KILL: usize = 2_000;
/// The consumer name: the same for the child and the process that replays.
const CONSUMER: &str = "stock-writer-1";

/// A stock level; `seq` grows with every write of any product, so a row
/// with a larger `seq` holds a later write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stock {
    units: i64,
    seq: u64,
}

/// The stock table in SQLite: `write_many` upserts a batch in one
/// transaction.
struct StockDb(Mutex<rusqlite::Connection>);

impl StockDb {
    fn open(path: &Path) -> Result<Arc<Self>> {
        let conn = rusqlite::Connection::open(path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS stock (
                 sku INTEGER PRIMARY KEY, units INTEGER NOT NULL, seq INTEGER NOT NULL);",
        )
        .map_err(db)?;
        Ok(Arc::new(StockDb(Mutex::new(conn))))
    }

    /// Every row: sku -> seq.
    fn seqs(&self) -> Result<HashMap<u64, u64>> {
        let conn = self.0.lock();
        let mut q = conn.prepare("SELECT sku, seq FROM stock").map_err(db)?;
        let rows = q
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db)?;
        let mut out = HashMap::new();
        for row in rows {
            let (sku, seq) = row.map_err(db)?;
            out.insert(sku.cast_unsigned(), seq.cast_unsigned());
        }
        Ok(out)
    }
}

fn db(e: rusqlite::Error) -> Error {
    Error::with_source(ErrorKind::Source, "SQLite", e)
}

#[derive(Clone)]
struct StockWriter(Arc<StockDb>);

impl Writer<u64, Stock> for StockWriter {
    async fn write(&self, sku: &u64, stock: &Stock) -> Result<()> {
        self.write_many(&[(*sku, stock.clone())]).await
    }

    async fn delete(&self, _sku: &u64) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "stock rows are never deleted",
        ))
    }

    async fn write_many(&self, rows: &[(u64, Stock)]) -> Result<()> {
        let (db, rows) = (Arc::clone(&self.0), rows.to_vec());
        tokio::task::spawn_blocking(move || {
            let mut conn = db.0.lock();
            let tx = conn.transaction().map_err(self::db)?;
            for (sku, s) in &rows {
                tx.execute(
                    "INSERT INTO stock (sku, units, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT(sku) DO UPDATE SET units = ?2, seq = ?3",
                    (sku.cast_signed(), s.units, s.seq.cast_signed()),
                )
                .map_err(self::db)?;
            }
            tx.commit().map_err(self::db)
        })
        .await
        .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }
}

fn cache(url: &str, ns: &str, db: &Arc<StockDb>, durable: bool) -> Result<Cache<u64, Stock>> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace(ns)
            .build()?,
    )?;
    // A batch a minute: the kill finds every write waiting.
    let wb = WriteBehind::new()
        .batch(10_000)
        .interval(Duration::from_secs(60))
        .capacity(10_000);
    let b = Cache::builder()
        .redis(store)
        .writer(StockWriter(Arc::clone(db)))
        .write_behind(wb);
    if durable {
        b.durable(CONSUMER).build()
    } else {
        b.build()
    }
}

/// The child: updates stock until killed, printing each acknowledged write.
async fn child(url: &str, ns: &str, path: &Path, durable: bool) -> Result<()> {
    let db = StockDb::open(path)?;
    let c = cache(url, ns, &db, durable)?;
    for seq in 1.. {
        let sku = seq % PRODUCTS;
        let units = 1000 - (seq / PRODUCTS).cast_signed();
        c.put_behind(&sku, Stock { units, seq }).await?;
        println!("acked {sku} {seq}");
    }
    Ok(())
}

/// What one crash left.
struct Outcome {
    /// Writes the child's cache acknowledged.
    acked: usize,
    /// Products with an acknowledged write.
    products: usize,
    /// Products whose last acknowledged write SQLite lacks.
    lost: usize,
    /// Writes replayed from the journal.
    replayed: u64,
}

/// Runs a child, kills it with SIGKILL after `BEFORE_KILL` acknowledged
/// writes, replays, and counts.
async fn crash_and_recover(url: &str, durable: bool) -> Result<Outcome> {
    let ns = format!("wb-example-{:08x}", fastrand::u32(..));
    let dir = std::env::temp_dir().join(format!("larder-{ns}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::with_source(ErrorKind::Source, "dir", e))?;
    let path = dir.join("stock.db");
    let db = StockDb::open(&path)?;

    let exe =
        std::env::current_exe().map_err(|e| Error::with_source(ErrorKind::Source, "exe", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--child", url, &ns]).arg(&path);
    if durable {
        cmd.arg("--durable");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::with_source(ErrorKind::Source, "spawning the child", e))?;
    let out = child.stdout.take().expect("piped");
    let mut acked: HashMap<u64, u64> = HashMap::new();
    let mut lines = BufReader::new(out).lines();
    let mut count = 0;
    while count < BEFORE_KILL {
        let Some(Ok(line)) = lines.next() else {
            return Err(Error::new(ErrorKind::Source, "the child stopped early"));
        };
        let mut parts = line.split_whitespace().skip(1);
        let (Some(sku), Some(seq)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (sku, seq) = (sku.parse().unwrap_or(0), seq.parse().unwrap_or(0));
        acked.insert(sku, seq);
        count += 1;
    }
    let mut total = count;
    // SIGKILL: no destructor, no flush, no goodbye.
    child
        .kill()
        .map_err(|e| Error::with_source(ErrorKind::Source, "killing the child", e))?;
    let _ = child.wait();
    // Writes acknowledged after our count are in the pipe: count them too.
    for line in lines.map_while(std::io::Result::ok) {
        let mut parts = line.split_whitespace().skip(1);
        if let (Some(Ok(sku)), Some(Ok(seq))) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u64>),
        ) {
            acked.insert(sku, seq);
            total += 1;
        }
    }

    // A new process (here: this one) with the same consumer name.
    let c = cache(url, &ns, &db, durable)?;
    c.recover_writes().await?;
    c.close().await;
    let replayed = c.stats().write_behind.map_or(0, |w| w.replayed);
    let rows = db.seqs()?;
    let lost = acked
        .iter()
        .filter(|(sku, seq)| rows.get(sku).is_none_or(|have| have < seq))
        .count();
    if let Some(redis) = c.redis() {
        // The cache keys, then the (now empty) journal, which `clear`
        // leaves alone on purpose: it may hold writes not yet written.
        redis.clear_namespace().await?;
        let journal = redis.keyspace().global_key("wb:journal")?;
        let mut del = larder::redis::redis::cmd("DEL");
        del.arg(&journal);
        redis.command::<u64>(Some(&journal), del, true).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Outcome {
        acked: total,
        products: acked.len(),
        lost,
        replayed,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (Some(url), Some(ns), Some(path)) = (args.get(2), args.get(3), args.get(4)) else {
            eprintln!("write_behind --child URL NAMESPACE DB [--durable]");
            return ExitCode::from(2);
        };
        let durable = args.get(5).is_some_and(|a| a == "--durable");
        return finish(
            "write_behind child",
            child(url, ns, &PathBuf::from(path), durable).await,
        );
    }
    let url = match required_env("write_behind", "REDIS_URL", "redis://127.0.0.1:6379") {
        Ok(url) => url,
        Err(code) => return code,
    };
    finish("write_behind", run(&url).await)
}

async fn run(url: &str) -> Result<()> {
    println!(
        "write-behind into SQLite, Redis at {}; a child updates {PRODUCTS} products' stock \
         and is killed with SIGKILL after {BEFORE_KILL} acknowledged writes",
        redact(url)
    );
    for (name, durable) in [
        ("plain write-behind  ", false),
        ("durable write-behind", true),
    ] {
        let o = crash_and_recover(url, durable).await?;
        println!(
            "{name}: {} writes acknowledged for {} products; after the kill and a restart, \
             SQLite lacks the last acknowledged write of {} products ({} writes replayed)",
            o.acked, o.products, o.lost, o.replayed
        );
        if durable && o.lost > 0 {
            return Err(Error::new(
                ErrorKind::Source,
                format!(
                    "durable write-behind lost the last write of {} products",
                    o.lost
                ),
            ));
        }
    }
    Ok(())
}
