//! Durable write-behind against a real server: each write journalled with
//! its cache value, acknowledged once written, replayed after a crash (a
//! runtime shut down mid-flight stands in for the process here; the
//! examples' tests kill a real process with SIGKILL), never replayed over a
//! newer write.

use std::sync::atomic::Ordering;
use std::time::Duration;

use larder::core::{ErrorKind, MockClock};
use larder::redis::{RedisStore, redis};
use larder::{Cache, WriteBehind};
use larder_testkit::RedisServer;

use crate::until;
use crate::write::MapDb;

fn durable(url: &str, db: &MapDb, consumer: &str, wb: WriteBehind) -> Cache<u64, String> {
    Cache::builder()
        .redis(RedisStore::from_url(url).unwrap())
        .clock(MockClock::new().shared())
        .loader(db.clone())
        .writer(db.clone())
        .write_behind(wb)
        .durable(consumer)
        .build()
        .unwrap()
}

/// Nothing goes out before close (or a crash).
fn held() -> WriteBehind {
    WriteBehind::new()
        .batch(1000)
        .interval(Duration::from_secs(3600))
        .claim_after(Duration::from_secs(20_000))
}

fn journal_len(url: &str) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    redis::cmd("XLEN")
        .arg("larder:wb:journal")
        .query(&mut c)
        .unwrap()
}

fn rows(db: &MapDb) -> Vec<(u64, String)> {
    let mut r: Vec<(u64, String)> = db
        .batches
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .cloned()
        .collect();
    r.sort();
    r
}

/// Queues `writes` in a cache on a runtime of its own, then shuts that
/// runtime down with the writes unwritten (the writer hangs at its gate):
/// what a crash leaves.
fn crash_with(url: &str, consumer: &str, writes: &[(u64, &str)]) -> MapDb {
    let db = MapDb {
        write_gate: Some(std::sync::Arc::new(tokio::sync::Semaphore::new(0))),
        ..MapDb::default()
    };
    let (url, consumer, db2) = (url.to_owned(), consumer.to_owned(), db.clone());
    let writes: Vec<(u64, String)> = writes.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    // A thread of its own: a runtime cannot be blocked on inside another.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let c = durable(&url, &db2, &consumer, WriteBehind::new().batch(1000));
            for (k, v) in writes {
                c.put_behind(&k, v).await.unwrap();
            }
            // The flusher took the batch and hangs in the writer.
            until("the batch reached the writer", || {
                db2.writes_entered.load(Ordering::SeqCst) >= 1
            })
            .await;
            std::mem::forget(c);
        });
        rt.shutdown_background();
    })
    .join()
    .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_is_journalled_with_its_value_and_acknowledged_once_written() {
    let server = RedisServer::start().unwrap();
    let db = MapDb::default();
    let c = durable(&server.url(), &db, "web-1", held());
    for i in 0..3 {
        c.put_behind(&1, format!("v{i}")).await.unwrap();
    }
    c.put_behind(&2, "two".into()).await.unwrap();
    assert_eq!(journal_len(&server.url()), 4, "every write is journalled");
    // Another instance reads the new value from the L2 at once.
    let other = durable(&server.url(), &MapDb::default(), "web-2", held());
    assert_eq!(other.get(&1).await.unwrap().as_deref(), Some("v2"));
    c.close().await;
    assert_eq!(
        rows(&db),
        vec![(1, "v2".to_owned()), (2, "two".to_owned())],
        "coalesced: one write per key, the last value"
    );
    assert_eq!(journal_len(&server.url()), 0, "acknowledged entries leave");
    let s = c.stats().write_behind.unwrap();
    assert_eq!((s.journalled, s.flushed, s.coalesced), (4, 2, 2));
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_process_replays_every_write_its_crash_left() {
    let server = RedisServer::start().unwrap();
    let writes: Vec<(u64, String)> = (0..50).map(|i| (i % 20, format!("v{i}"))).collect();
    let borrowed: Vec<(u64, &str)> = writes.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let crashed = crash_with(&server.url(), "web-1", &borrowed);
    assert!(rows(&crashed).is_empty(), "the crash wrote nothing");
    // Entries a later write of their key superseded may already be
    // acknowledged (a batch taken early); every key's last one is there.
    let left = journal_len(&server.url());
    assert!((20..=50).contains(&left), "{left}");

    // The same consumer starts again: its leftovers are replayed at once.
    let db = MapDb::default();
    let c = durable(&server.url(), &db, "web-1", held());
    // (The flusher started replaying at build; this waits for it.)
    c.recover_writes().await.unwrap();
    c.close().await;
    let mut want: Vec<(u64, String)> = (30..50).map(|i| (i % 20, format!("v{i}"))).collect();
    want.sort();
    assert_eq!(rows(&db), want, "every key, with its last value");
    assert_eq!(journal_len(&server.url()), 0);
    let s = c.stats().write_behind.unwrap();
    assert_eq!(s.replayed, 20, "the last entry of each key replayed");
    assert_eq!(
        s.superseded,
        left - 20,
        "the older entries left were acknowledged, not written"
    );
    assert_eq!(s.flushed, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_writes_an_older_value_over_a_newer_write() {
    let server = RedisServer::start().unwrap();
    let crashed = crash_with(&server.url(), "web-1", &[(1, "old"), (2, "kept")]);
    drop(crashed);
    // Another instance writes key 1 later, and its write is flushed.
    let db = MapDb::default();
    let b = durable(&server.url(), &db, "web-2", held());
    b.put_behind(&1, "new".into()).await.unwrap();
    b.close().await;
    assert_eq!(rows(&db), vec![(1, "new".to_owned())]);

    // web-1 comes back: its key-1 entry is superseded, key 2 is replayed.
    let a = durable(&server.url(), &db, "web-1", held());
    a.recover_writes().await.unwrap();
    a.close().await;
    assert_eq!(
        rows(&db),
        vec![(1, "new".to_owned()), (2, "kept".to_owned())],
        "the replay wrote the older value over the newer"
    );
    let s = a.stats().write_behind.unwrap();
    assert_eq!((s.replayed, s.superseded), (1, 1));
    assert_eq!(journal_len(&server.url()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_takes_over_the_writes_of_one_that_never_returns() {
    let server = RedisServer::start().unwrap();
    crash_with(&server.url(), "gone", &[(7, "orphan")]);
    let db = MapDb::default();
    // Short bounds so the claim comes quickly; claim_after must exceed them.
    let wb = WriteBehind::new()
        .interval(Duration::from_millis(10))
        .write_timeout(Duration::from_millis(50))
        .backoff(Duration::from_millis(5), Duration::from_millis(10))
        .max_attempts(1)
        .claim_after(Duration::from_millis(200));
    let c = durable(&server.url(), &db, "survivor", wb);
    // The entry becomes claimable once idle for 100 ms of Redis's time;
    // the flusher claims every 50 ms, and so does this loop (bounded).
    for _ in 0..400 {
        c.recover_writes().await.unwrap();
        if c.stats().write_behind.unwrap().replayed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        c.stats().write_behind.unwrap().replayed,
        1,
        "the orphaned write was never taken over"
    );
    c.close().await;
    assert_eq!(rows(&db), vec![(7, "orphan".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_acknowledges_the_queued_write_it_supersedes_and_a_failed_one_keeps_it() {
    let server = RedisServer::start().unwrap();
    let db = MapDb::default();
    let c = durable(&server.url(), &db, "web-1", held());
    c.put_behind(&1, "queued".into()).await.unwrap();
    // A put that fails at the source leaves the queued write in place.
    db.fail_writes.store(true, Ordering::SeqCst);
    assert_eq!(
        c.put(&1, "direct".into()).await.unwrap_err().kind(),
        ErrorKind::Source
    );
    db.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(c.stats().write_behind.unwrap().queued, 1);
    assert_eq!(journal_len(&server.url()), 1);
    // One that succeeds supersedes it, journal entry included.
    c.put(&2, "x".into()).await.unwrap();
    c.put_behind(&2, "y".into()).await.unwrap();
    c.put(&2, "z".into()).await.unwrap();
    assert_eq!(
        journal_len(&server.url()),
        1,
        "key 2's entry was acknowledged"
    );
    c.close().await;
    let all = rows(&db);
    assert!(all.contains(&(1, "queued".to_owned())), "{all:?}");
    assert_eq!(
        db.rows.lock().unwrap().get(&2).map(String::as_str),
        Some("z"),
        "the queued y came back over the direct z"
    );
    assert_eq!(journal_len(&server.url()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_durable_write_is_refused_not_queued() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let db = MapDb::default();
    let c = durable(&url, &db, "web-1", held());
    drop(server);
    let e = c.put_behind(&1, "v".into()).await.unwrap_err();
    assert!(e.is_backend_unavailable(), "{e:?}");
    let s = c.stats().write_behind.unwrap();
    assert_eq!(
        (s.queued, s.journalled),
        (0, 0),
        "nothing queued that is not journalled"
    );
    assert_eq!(c.get(&1).await.unwrap(), None);
    c.close().await;
    assert!(rows(&db).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entries_in_the_journal_are_dead_lettered_not_written() {
    let server = RedisServer::start().unwrap();
    let crashed = crash_with(&server.url(), "web-1", &[(1, "real")]);
    drop(crashed);
    // Another client damages the stream: an entry with our fields but
    // garbage, delivered to web-1 so it is pending there.
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("larder:wb:journal")
        .arg("*")
        .arg("k")
        .arg("9")
        .arg("p")
        .arg(&b"\xff\xff\xff"[..])
        .query(&mut raw)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("larder")
        .arg("web-1")
        .arg("STREAMS")
        .arg("larder:wb:journal")
        .arg(">")
        .query(&mut raw)
        .unwrap();
    let db = MapDb::default();
    let c = durable(&server.url(), &db, "web-1", held());
    c.recover_writes().await.unwrap();
    c.close().await;
    assert_eq!(rows(&db), vec![(1, "real".to_owned())]);
    assert_eq!(c.stats().write_behind.unwrap().dead_letters, 1);
    let dead: u64 = redis::cmd("XLEN")
        .arg("larder:wb:dead")
        .query(&mut raw)
        .unwrap();
    assert_eq!(dead, 1, "kept for a person to look at");
    assert_eq!(journal_len(&server.url()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_mode_checks_its_settings() {
    let server = RedisServer::start().unwrap();
    let db = MapDb::default();
    let base = || {
        Cache::<u64, String>::builder()
            .loader(db.clone())
            .writer(db.clone())
    };
    let kind = |r: larder::core::Result<Cache<u64, String>>| r.unwrap_err().kind();
    // Without write-behind; without Redis.
    assert_eq!(
        kind(
            base()
                .redis(RedisStore::from_url(&server.url()).unwrap())
                .durable("a")
                .build()
        ),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(base().write_behind(held()).durable("a").build()),
        ErrorKind::InvalidConfig
    );
    // A claim bound shorter than a live instance may hold a write.
    assert_eq!(
        kind(
            base()
                .redis(RedisStore::from_url(&server.url()).unwrap())
                .write_behind(held().claim_after(Duration::from_secs(60)))
                .durable("a")
                .build()
        ),
        ErrorKind::InvalidConfig
    );
    // A bad consumer name.
    assert_eq!(
        kind(
            base()
                .redis(RedisStore::from_url(&server.url()).unwrap())
                .write_behind(WriteBehind::new())
                .durable("no spaces")
                .build()
        ),
        ErrorKind::InvalidArgument
    );
}

/// A direct write (`put`, here by another instance) makes every journalled
/// write of the key older than it: the crashed instance's entry is not
/// replayed over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_supersedes_another_instances_journalled_write() {
    let server = RedisServer::start().unwrap();
    crash_with(&server.url(), "web-1", &[(1, "queued before the crash")]);
    let db = MapDb::default();
    let b = durable(&server.url(), &db, "web-2", held());
    b.put(&1, "direct".into()).await.unwrap();
    b.close().await;
    let a = durable(&server.url(), &db, "web-1", held());
    a.recover_writes().await.unwrap();
    a.close().await;
    assert_eq!(
        db.rows.lock().unwrap().get(&1).map(String::as_str),
        Some("direct"),
        "the replay wrote the crashed instance's older value over the direct write"
    );
    let s = a.stats().write_behind.unwrap();
    assert_eq!((s.replayed, s.superseded), (0, 1));
}

/// A durable cache built outside any runtime replays its consumer's
/// leftovers once it is first used, even if it only reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_built_outside_a_runtime_replays_at_its_first_operation() {
    let server = RedisServer::start().unwrap();
    crash_with(&server.url(), "web-1", &[(3, "left behind")]);
    let db = MapDb::default();
    let (url, db2) = (server.url(), db.clone());
    let c = std::thread::spawn(move || durable(&url, &db2, "web-1", held()))
        .join()
        .unwrap();
    let _ = c.get(&3).await.unwrap();
    until("the replay queued the write", || {
        c.stats().write_behind.unwrap().replayed == 1
    })
    .await;
    c.close().await;
    assert_eq!(rows(&db), vec![(3, "left behind".to_owned())]);
}

/// Building a durable cache on a runtime starts its first replay, which
/// reads this consumer's pending entries. It must finish before the first
/// append, or it reads this run's appends back and queues those writes a
/// second time (found as a flaky `coalesced` count in
/// `a_durable_write_is_journalled_with_its_value_and_acknowledged_once_written`). The
/// race is a scheduling one, so it is run 20 times: without the ordering
/// about one build in four replays its own writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_replay_runs_before_the_first_append_and_queues_nothing_twice() {
    let server = RedisServer::start().unwrap();
    for round in 0..20 {
        let db = MapDb::default();
        let c = durable(&server.url(), &db, "web-1", held());
        for k in 0..4u64 {
            c.put_behind(&k, format!("v{round}")).await.unwrap();
        }
        c.close().await;
        let s = c.stats().write_behind.unwrap();
        assert_eq!(
            (s.journalled, s.replayed, s.coalesced, s.flushed),
            (4, 0, 0, 4),
            "round {round}: {s:?}"
        );
        assert_eq!(journal_len(&server.url()), 0);
    }
}

/// Values above `max_value_bytes` stay out of the L2: a load keeps one in
/// this instance's L1 only, a write invalidates the key instead, a durable
/// `put_behind` is refused; each is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_above_max_value_bytes_stay_out_of_the_l2() {
    let server = RedisServer::start().unwrap();
    let big = "x".repeat(4096);
    let db = MapDb::with(&[(1, big.as_str()), (2, "small")]);
    let c: Cache<u64, String> = Cache::builder()
        .redis(RedisStore::from_url(&server.url()).unwrap())
        .loader(db.clone())
        .writer(db.clone())
        .max_value_bytes(1024)
        .write_behind(held())
        .durable("web-1")
        .build()
        .unwrap();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let exists = |raw: &mut redis::Connection, k: &str| -> bool {
        redis::cmd("EXISTS").arg(k).query::<u64>(raw).unwrap() == 1
    };
    // A load: served, kept in the L1, not in the L2.
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some(big.as_str())
    );
    assert!(!exists(&mut raw, "larder:{1}"));
    let hits = c.stats().l1_hits;
    assert_eq!(c.get(&1).await.unwrap().as_deref(), Some(big.as_str()));
    assert_eq!(c.stats().l1_hits, hits + 1);
    // A write-through: the source has it, the cache invalidated the key.
    assert_eq!(c.get_or_load(&2).await.unwrap().as_deref(), Some("small"));
    assert!(exists(&mut raw, "larder:{2}"));
    let before = c.stats();
    c.put(&2, big.clone()).await.unwrap();
    let after = c.stats();
    assert_eq!(after.writes, before.writes + 1, "one write");
    assert_eq!(
        after.invalidations, before.invalidations,
        "a write, not an invalidation"
    );
    assert!(
        !exists(&mut raw, "larder:{2}"),
        "the old value stayed in the L2"
    );
    assert_eq!(db.rows.lock().unwrap().get(&2).map(String::len), Some(4096));
    // A durable write-behind: refused, nothing queued or journalled.
    let e = c.put_behind(&3, big.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let s = c.stats();
    assert_eq!(s.oversized, 3);
    assert_eq!(s.write_behind.unwrap().queued, 0);
    assert_eq!(journal_len(&server.url()), 0);
    assert_eq!(
        Cache::<u64, String>::builder()
            .max_value_bytes(0)
            .build()
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
    c.close().await;
}

/// The chaos soak's finding: an invalidation of a key with a journalled
/// write still queued let another instance load the source's older value
/// and fill the L2 with it, where it outlived the write. Now that fill is
/// refused (the reader still gets the source's value: the write-behind
/// lag), and once the write reached the source the key fills again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_while_a_journalled_write_is_queued_lets_no_older_value_into_the_l2() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let db = MapDb::with(&[(1, "old")]);
    let writer = durable(&url, &db, "a", held());
    writer.put_behind(&1, "new".into()).await.unwrap();
    let reader = |db: &MapDb| -> Cache<u64, String> {
        Cache::builder()
            .redis(RedisStore::from_url(&url).unwrap())
            .clock(MockClock::new().shared())
            .loader(db.clone())
            .build()
            .unwrap()
    };
    let other = reader(&db);
    other.invalidate(&1).await.unwrap();
    assert_eq!(
        other.get_or_load(&1).await.unwrap().as_deref(),
        Some("old"),
        "the source has not been written yet"
    );
    assert_eq!(other.stats().fills_refused, 1);
    assert_eq!(other.redis().unwrap().get("1").await.unwrap(), None);

    writer.close().await;
    assert_eq!(
        db.rows.lock().unwrap().get(&1).map(String::as_str),
        Some("new")
    );
    assert_eq!(
        other.get_or_load(&1).await.unwrap().as_deref(),
        Some("new"),
        "nothing older stayed in either level"
    );
    assert_eq!(reader(&db).get(&1).await.unwrap().as_deref(), Some("new"));
}
