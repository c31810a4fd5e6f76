//! User profiles: cache-aside over SQLite with Redis as the shared L2, and
//! a Redis hash for the fields that change on their own.
//!
//! - **Read-through**: `get_or_load` reads the L1, then Redis, then SQLite.
//!   A second instance (a second `Cache` on the same Redis, as a second
//!   server process would be) finds the profile in Redis: no SQL query.
//! - **Writes** go through a `Writer` (`cache.update`): the `UPDATE` runs
//!   first, then the key is invalidated in both levels; the next read loads
//!   the new row.
//! - **Partial reads and updates**: a session's fields (`plan`, `logins`,
//!   `last_page`) live in a Redis hash (`HashObject`), one field per struct
//!   field: read two fields with `HMGET`, increment one with `HINCRBY`,
//!   without reading and rewriting the whole object (no lost update when
//!   two servers change different fields at once).
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --example user_profiles`
//!
//! Keys live in the `larder-example-users` namespace, cleared at the start,
//! so every run prints the same thing.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder::prelude::*;
use larder::redis::{HashObject, redact};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A row of the `users` table, cached whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

/// A session's state: fields updated one at a time, kept in a Redis hash.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    user_id: u64,
    plan: String,
    logins: i64,
    last_page: String,
}

/// The `users` table in a SQLite file in a temporary directory (removed on
/// drop), and a count of the queries it answered.
struct UserDb {
    dir: PathBuf,
    conn: Mutex<Connection>,
    queries: AtomicU64,
}

impl Drop for UserDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sql(e: rusqlite::Error) -> Error {
    Error::with_source(ErrorKind::Source, "SQLite", e)
}

impl UserDb {
    fn create() -> Result<Arc<UserDb>> {
        let dir = std::env::temp_dir().join(format!(
            "larder-users-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::with_source(ErrorKind::Source, "temporary directory", e))?;
        let conn = Connection::open(dir.join("users.db")).map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL);
             INSERT INTO users VALUES (1, 'Ann Lee', 'ann@example.com'),
                                      (2, 'Bob Stone', 'bob@example.com'),
                                      (3, 'Cho Min-jun', 'cho@example.com');",
        )
        .map_err(sql)?;
        Ok(Arc::new(UserDb {
            dir,
            conn: Mutex::new(conn),
            queries: AtomicU64::new(0),
        }))
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn find(&self, id: u64) -> Result<Option<User>> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.conn
            .lock()
            .query_row(
                "SELECT name, email FROM users WHERE id = ?1",
                params![id as i64],
                |r| {
                    Ok(User {
                        id,
                        name: r.get(0)?,
                        email: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(sql)
    }

    fn save(&self, user: &User) -> Result<()> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let n = self
            .conn
            .lock()
            .execute(
                "UPDATE users SET name = ?2, email = ?3 WHERE id = ?1",
                params![user.id as i64, user.name, user.email],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("no user {}", user.id),
            ));
        }
        Ok(())
    }
}

/// Reads a user (on a blocking thread: SQLite calls block).
#[derive(Clone)]
struct UserLoader(Arc<UserDb>);

impl Loader<u64, User> for UserLoader {
    async fn load(&self, id: &u64) -> Result<Option<User>> {
        let (db, id) = (Arc::clone(&self.0), *id);
        tokio::task::spawn_blocking(move || db.find(id))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }
}

/// Writes a user: what `cache.update` calls before it invalidates.
#[derive(Clone)]
struct UserWriter(Arc<UserDb>);

impl Writer<u64, User> for UserWriter {
    async fn write(&self, _id: &u64, user: &User) -> Result<()> {
        let (db, user) = (Arc::clone(&self.0), user.clone());
        tokio::task::spawn_blocking(move || db.save(&user))
            .await
            .map_err(|e| Error::with_source(ErrorKind::Source, "query task", e))?
    }

    async fn delete(&self, _id: &u64) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "this example does not delete users",
        ))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!(
                "user_profiles: set REDIS_URL to a Redis server, e.g.\n  \
                 REDIS_URL=redis://127.0.0.1:6379 cargo run --example user_profiles"
            );
            return ExitCode::from(2);
        }
    };
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("user_profiles: {e} (kind {:?})", e.kind());
            ExitCode::FAILURE
        }
    }
}

/// One "server instance": its own L1, the shared Redis L2, the database.
fn instance(store: &RedisStore, db: &Arc<UserDb>) -> Result<Cache<u64, User>> {
    Cache::<u64, User>::builder()
        .memory(10_000)
        .redis(store.clone())
        .loader(UserLoader(Arc::clone(db)))
        .writer(UserWriter(Arc::clone(db)))
        // Profiles change rarely: an hour, with 10% jitter so that profiles
        // loaded together do not expire together.
        .ttl(Ttl::fixed(Duration::from_secs(3600)).jitter(0.1))
        // Another instance's L1 learns of an update only when its entry
        // expires: bound that staleness.
        .memory_ttl_cap(Duration::from_secs(30))
        .build()
}

async fn run(url: &str) -> Result<()> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace("larder-example-users")
            .build()?,
    )?;
    let removed = store.clear_namespace().await?;
    println!(
        "Redis at {} (namespace larder-example-users, {removed} old keys removed)",
        redact(url)
    );
    let db = UserDb::create()?;
    let a = instance(&store, &db)?;
    let b = instance(&store, &db)?;

    println!("-- read-through");
    let user = a.get_or_load(&1).await?.ok_or_else(missing)?;
    println!(
        "instance A reads user 1: {} <{}> (SQL queries: {})",
        user.name,
        user.email,
        db.queries()
    );
    a.get_or_load(&1).await?;
    println!(
        "instance A reads user 1 again: L1 hit (SQL queries: {})",
        db.queries()
    );
    let seen_by_b = b.get_or_load(&1).await?.ok_or_else(missing)?;
    let bs = b.stats();
    println!(
        "instance B reads user 1: {} from Redis (B's L2 hits: {}, SQL queries: {})",
        seen_by_b.email,
        bs.l2_hits,
        db.queries()
    );
    let nobody = a.get_or_load(&99).await?;
    println!(
        "instance A reads user 99: {nobody:?} (SQL queries: {})",
        db.queries()
    );

    println!("-- update through the writer (cache-aside)");
    let mut changed = user.clone();
    changed.email = "ann.lee@example.org".into();
    a.update(&1, &changed).await?;
    println!(
        "instance A updates user 1's email: UPDATE, then invalidate (SQL queries: {})",
        db.queries()
    );
    let after = a.get_or_load(&1).await?.ok_or_else(missing)?;
    println!(
        "instance A reads user 1: {} (loaded again; SQL queries: {})",
        after.email,
        db.queries()
    );
    // Instance B still holds the old row in its L1: an invalidation reaches
    // Redis and this instance's L1, not other instances' L1s (not built
    // yet). `memory_ttl_cap` bounds how long B serves it.
    let stale_in_b = b.get_or_load(&1).await?.ok_or_else(missing)?;
    println!(
        "instance B reads user 1: {} (its own L1 copy, kept at most 30 s by memory_ttl_cap)",
        stale_in_b.email
    );
    let bogus = User {
        id: 42,
        name: "Nobody".into(),
        email: "x@example.com".into(),
    };
    match a.update(&42, &bogus).await {
        Ok(()) => println!("updating user 42: unexpectedly succeeded"),
        Err(e) => println!(
            "updating user 42: refused ({:?}: {}); nothing invalidated",
            e.kind(),
            e.message()
        ),
    }

    println!("-- a session as a Redis hash: partial reads and updates");
    let sessions: HashObject<Session> = HashObject::new(&store, "session")?;
    sessions
        .put(
            "1",
            &Session {
                user_id: 1,
                plan: "free".into(),
                logins: 0,
                last_page: "/".into(),
            },
            Some(Duration::from_secs(1800)),
        )
        .await?;
    let fields = sessions.get_fields("1", &["plan", "logins"]).await?;
    let show = |v: &Option<serde_json::Value>| v.as_ref().map_or("-".into(), |v| v.to_string());
    println!(
        "fields plan, logins: {}, {}",
        show(&fields[0]),
        show(&fields[1])
    );
    for _ in 0..3 {
        sessions.incr_field("1", "logins", 1).await?;
    }
    sessions.set_field("1", "plan", &"pro").await?;
    sessions.set_field("1", "last_page", &"/settings").await?;
    let missing_set = sessions.set_field("2", "plan", &"pro").await?;
    let s = sessions.get("1").await?.ok_or_else(missing)?;
    println!(
        "after 3 logins and an upgrade: plan={} logins={} last_page={} (user {})",
        s.plan, s.logins, s.last_page, s.user_id
    );
    println!("set_field on session 2, which does not exist: {missing_set} (not created)");

    let sa = a.stats();
    println!(
        "instance A: l1_hits={} l2_hits={} loads_ok={} invalidations={}",
        sa.l1_hits, sa.l2_hits, sa.loads_ok, sa.invalidations
    );
    a.close().await;
    b.close().await;
    Ok(())
}

fn missing() -> Error {
    Error::new(ErrorKind::Source, "a seeded row is missing")
}
