//! Write-through (`put`): the source first, then both levels with a new
//! version; a load that started earlier cannot put its old value back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::core::{ErrorKind, Loader, MockClock, Result, Writer};
use larder::{Cache, Overflow, WriteBehind};
use tokio::sync::Semaphore;

use crate::until;

/// One `write_many` call's entries.
type Batch = Vec<(u64, String)>;

/// A table in memory: loads read the row when they start (then wait at the
/// gate, if any), writes replace it.
#[derive(Clone, Default)]
pub(crate) struct MapDb {
    pub(crate) rows: Arc<Mutex<HashMap<u64, String>>>,
    pub(crate) loads: Arc<AtomicUsize>,
    pub(crate) gate: Option<Arc<Semaphore>>,
    pub(crate) fail_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Every `write_many` batch, in order.
    pub(crate) batches: Arc<Mutex<Vec<Batch>>>,
    /// When set, each `write_many` takes a permit first.
    pub(crate) write_gate: Option<Arc<Semaphore>>,
    pub(crate) writes_entered: Arc<AtomicUsize>,
}

impl MapDb {
    pub(crate) fn with(rows: &[(u64, &str)]) -> Self {
        let db = MapDb::default();
        for (k, v) in rows {
            db.rows.lock().unwrap().insert(*k, (*v).to_owned());
        }
        db
    }
}

impl Loader<u64, String> for MapDb {
    async fn load(&self, key: &u64) -> Result<Option<String>> {
        let row = self.rows.lock().unwrap().get(key).cloned();
        self.loads.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.acquire().await.expect("gate").forget();
        }
        Ok(row)
    }
}

impl Writer<u64, String> for MapDb {
    async fn write(&self, key: &u64, value: &String) -> Result<()> {
        self.write_many(&[(*key, value.clone())]).await
    }
    async fn delete(&self, key: &u64) -> Result<()> {
        self.rows.lock().unwrap().remove(key);
        Ok(())
    }
    async fn write_many(&self, entries: &[(u64, String)]) -> Result<()> {
        self.writes_entered.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.write_gate {
            g.acquire().await.expect("gate").forget();
        }
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(larder::core::Error::new(ErrorKind::Source, "disk full"));
        }
        self.batches.lock().unwrap().push(entries.to_vec());
        let mut rows = self.rows.lock().unwrap();
        for (k, v) in entries {
            rows.insert(*k, v.clone());
        }
        Ok(())
    }
}

/// An L1-only cache over a table holding `row` under key 1, and a
/// `get_or_load(&1)` that has read the row and waits at the gate.
async fn a_slow_load_of_key_1(
    row: &str,
) -> (
    MapDb,
    Cache<u64, String>,
    Arc<Semaphore>,
    tokio::task::JoinHandle<Result<Option<String>>>,
) {
    let gate = Arc::new(Semaphore::new(0));
    let db = MapDb {
        gate: Some(Arc::clone(&gate)),
        ..MapDb::with(&[(1, row)])
    };
    let c = l1_only(&db, &MockClock::new());
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_load(&1).await })
    };
    until("the load started", || db.loads.load(Ordering::SeqCst) == 1).await;
    (db, c, gate, slow)
}

fn l1_only(db: &MapDb, clock: &MockClock) -> Cache<u64, String> {
    Cache::builder()
        .clock(clock.shared())
        .loader(db.clone())
        .writer(db.clone())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_writes_the_source_then_the_cache_and_beats_a_slow_load() {
    let (db, c, gate, slow) = a_slow_load_of_key_1("v0").await;
    c.put(&1, "v1".to_owned()).await.unwrap();
    gate.add_permits(1);
    assert_eq!(
        slow.await.unwrap().unwrap().as_deref(),
        Some("v0"),
        "asked before"
    );
    assert_eq!(
        c.get(&1).await.unwrap().as_deref(),
        Some("v1"),
        "the cache kept v1"
    );
    assert_eq!(db.rows.lock().unwrap()[&1], "v1");
    assert_eq!(c.stats().writes, 1);

    // A failed source write changes nothing.
    db.fail_writes.store(true, Ordering::SeqCst);
    let e = c.put(&1, "v2".to_owned()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Source);
    assert_eq!(c.get(&1).await.unwrap().as_deref(), Some("v1"));
}

#[cfg(feature = "redis")]
mod with_redis {
    use super::*;
    use larder::Ttl;
    use larder::redis::redis;
    use larder_testkit::RedisServer;

    fn two_levels(url: &str, db: &MapDb, clock: &MockClock) -> Cache<u64, String> {
        Cache::builder()
            .redis(larder::redis::RedisStore::from_url(url).unwrap())
            .clock(clock.shared())
            .ttl(Ttl::fixed(Duration::from_secs(60)))
            .loader(db.clone())
            .writer(db.clone())
            .build()
            .unwrap()
    }

    /// A `put` whose caller is dropped while the cache half waits for
    /// Redis still finishes it (in the cache's task): the L1 does not keep
    /// the old value the source no longer has. Red when the cache half runs
    /// in the caller's future.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_dropped_while_its_cache_half_waits_still_updates_the_cache() {
        let server = RedisServer::start().unwrap();
        let proxy = larder_testkit::FaultProxy::start(server.addr()).unwrap();
        let clock = MockClock::new();
        let db = MapDb::with(&[(7, "old")]);
        let c = two_levels(&proxy.url(), &db, &clock);
        assert_eq!(c.get_or_load(&7).await.unwrap().as_deref(), Some("old"));
        proxy.set_replies_stalled(true);
        let held = proxy.held_replies();
        let put = {
            let c = c.clone();
            tokio::spawn(async move { c.put(&7, "new".into()).await })
        };
        // The source has the write and the L2 ran it; its reply is held.
        proxy.wait_held_replies(held + 1).await;
        assert_eq!(
            db.rows.lock().unwrap().get(&7).map(String::as_str),
            Some("new")
        );
        put.abort();
        assert!(put.await.unwrap_err().is_cancelled());
        proxy.set_replies_stalled(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.get(&7).await.unwrap().as_deref() != Some("new") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the L1 kept the old value"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A value whose `Serialize` panics, on its way into the L2.
    #[derive(Clone, Debug, serde::Deserialize)]
    struct Bomb;

    impl serde::Serialize for Bomb {
        fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            panic!("a Serialize that panics")
        }
    }

    /// The cache half of a write panics (the user's `Serialize`): the
    /// caller gets a typed error, the key is out of the L1, and the cache
    /// goes on working (its write lock was released).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cache_half_that_panics_is_a_typed_error_and_wedges_nothing() {
        let server = RedisServer::start().unwrap();
        let c: Cache<u64, Option<Bomb>> = Cache::builder()
            .redis(larder::redis::RedisStore::from_url(&server.url()).unwrap())
            .build()
            .unwrap();
        c.insert(&1, None).await.unwrap();
        let e = c.insert(&1, Some(Bomb)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
        // Out of the L1: the next read goes to the L2.
        let l1_hits = c.stats().l1_hits;
        assert!(matches!(c.get(&1).await.unwrap(), Some(None)));
        assert_eq!(c.stats().l1_hits, l1_hits, "the key left the L1");
        // The key's write lock is free again.
        c.insert(&1, None).await.unwrap();
    }

    /// Instance `b` is loading the old row when instance `a` writes through:
    /// `b`'s fill is refused, and both levels end with the new value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_beats_a_slow_load_in_another_instance() {
        let server = RedisServer::start().unwrap();
        let clock = MockClock::new();
        let db = MapDb::with(&[(7, "old")]);
        let gate = Arc::new(Semaphore::new(0));
        let slow_db = MapDb {
            gate: Some(Arc::clone(&gate)),
            ..db.clone()
        };
        let a = two_levels(&server.url(), &db, &clock);
        let b = two_levels(&server.url(), &slow_db, &clock);
        let pending = {
            let b = b.clone();
            tokio::spawn(async move { b.get_or_load(&7).await })
        };
        until("b's load started", || {
            slow_db.loads.load(Ordering::SeqCst) == 1
        })
        .await;
        a.put(&7, "new".to_owned()).await.unwrap();
        gate.add_permits(1);
        assert_eq!(pending.await.unwrap().unwrap().as_deref(), Some("old"));
        assert_eq!(b.stats().fills_refused, 1);
        assert_eq!(b.get_or_load(&7).await.unwrap().as_deref(), Some("new"));
        assert_eq!(a.get(&7).await.unwrap().as_deref(), Some("new"));
        let raw: Vec<u8> = redis::cmd("GET")
            .arg("larder:{7}")
            .query(&mut server.client().get_connection().unwrap())
            .unwrap();
        let (meta, v) =
            larder::core::envelope::decode_value::<_, String>(&larder::core::Postcard, &raw)
                .unwrap();
        assert_eq!(v.as_deref(), Some("new"));
        assert!(meta.version > 0, "the store allocated a version");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_that_cannot_reach_redis_says_so_and_clears_the_l1() {
        let mut server = RedisServer::start().unwrap();
        let clock = MockClock::new();
        let db = MapDb::with(&[(1, "a")]);
        let c = two_levels(&server.url(), &db, &clock);
        assert_eq!(c.get_or_load(&1).await.unwrap().as_deref(), Some("a"));
        server.kill();
        let e = c.put(&1, "b".to_owned()).await.unwrap_err();
        assert!(e.is_backend_unavailable(), "{e}");
        assert_eq!(db.rows.lock().unwrap()[&1], "b", "the source was written");
        // Not the old value from the L1: the loader's answer.
        assert_eq!(c.get_or_load(&1).await.unwrap().as_deref(), Some("b"));
    }
}

fn behind(db: &MapDb, clock: &MockClock, wb: WriteBehind) -> Cache<u64, String> {
    Cache::builder()
        .clock(clock.shared())
        .loader(db.clone())
        .writer(db.clone())
        .write_behind(wb)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_coalesces_and_close_flushes_everything() {
    let clock = MockClock::new();
    let db = MapDb::default();
    // Large batch, long interval: nothing goes out before close.
    let wb = WriteBehind::new()
        .batch(1000)
        .interval(Duration::from_secs(3600));
    let c = behind(&db, &clock, wb);
    for i in 0..100 {
        c.put_behind(&1, format!("v{i}")).await.unwrap();
    }
    c.put_behind(&2, "two".into()).await.unwrap();
    // The cache has the latest value at once; the source not yet.
    assert_eq!(c.get(&1).await.unwrap().as_deref(), Some("v99"));
    assert!(db.batches.lock().unwrap().is_empty());
    let s = c.stats().write_behind.unwrap();
    assert_eq!((s.queued, s.coalesced), (2, 99));
    c.close().await;
    let batches = db.batches.lock().unwrap().clone();
    assert_eq!(
        batches,
        vec![vec![(1, "v99".to_owned()), (2, "two".to_owned())]]
    );
    let s = c.stats().write_behind.unwrap();
    assert_eq!((s.queued, s.flushed), (0, 2));
    assert_eq!(
        c.put_behind(&3, "x".into()).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_or_waits_but_never_drops() {
    let clock = MockClock::new();
    let gate = Arc::new(Semaphore::new(0));
    let db = MapDb {
        write_gate: Some(Arc::clone(&gate)),
        ..MapDb::default()
    };
    let wb = WriteBehind::new()
        .batch(1)
        .capacity(2)
        .overflow(Overflow::Reject);
    let c = behind(&db, &clock, wb);
    c.put_behind(&1, "a".into()).await.unwrap();
    // Key 1's batch is out, held at the writer's gate; two keys of room.
    until("the first batch reached the writer", || {
        db.writes_entered.load(Ordering::SeqCst) == 1
    })
    .await;
    c.put_behind(&2, "b".into()).await.unwrap();
    c.put_behind(&3, "c".into()).await.unwrap();
    let e = c.put_behind(&4, "d".into()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overflow);
    // A waiting key takes its new value without a slot.
    c.put_behind(&2, "b2".into()).await.unwrap();

    // Block: waits for room, and gets it when the writer moves on.
    let blocking = behind(
        &db,
        &clock,
        WriteBehind::new()
            .batch(1)
            .capacity(1)
            .overflow(Overflow::Block(Duration::from_millis(20))),
    );
    blocking.put_behind(&10, "x".into()).await.unwrap();
    until("its batch reached the writer", || {
        db.writes_entered.load(Ordering::SeqCst) == 2
    })
    .await;
    blocking.put_behind(&11, "y".into()).await.unwrap();
    let e = blocking.put_behind(&12, "z".into()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overflow, "no room within the timeout");
    // With a long enough block, the write waits for room and gets it when
    // the writer moves on.
    let patient = behind(
        &db,
        &clock,
        WriteBehind::new()
            .batch(1)
            .capacity(1)
            .overflow(Overflow::Block(Duration::from_secs(60))),
    );
    patient.put_behind(&20, "p".into()).await.unwrap();
    until("its batch reached the writer", || {
        db.writes_entered.load(Ordering::SeqCst) == 3
    })
    .await;
    patient.put_behind(&21, "q".into()).await.unwrap();
    let waiting = {
        let patient = patient.clone();
        tokio::spawn(async move { patient.put_behind(&22, "r".into()).await })
    };
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!waiting.is_finished(), "no room yet: it waits");
    gate.add_permits(100);
    waiting.await.unwrap().unwrap();
    patient.close().await;
    c.close().await;
    blocking.close().await;
    let rows = db.rows.lock().unwrap().clone();
    for (k, v) in [
        (1, "a"),
        (2, "b2"),
        (3, "c"),
        (10, "x"),
        (11, "y"),
        (20, "p"),
        (21, "q"),
        (22, "r"),
    ] {
        assert_eq!(rows.get(&k).map(String::as_str), Some(v), "key {k}");
    }
    assert!(
        !rows.contains_key(&4) && !rows.contains_key(&12),
        "refused writes said so"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_writes_are_retried_then_dead_lettered() {
    let clock = MockClock::new();
    let db = MapDb::default();
    db.fail_writes.store(true, Ordering::SeqCst);
    let dead = Arc::new(Mutex::new(Vec::new()));
    let d = Arc::clone(&dead);
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .loader(db.clone())
        .writer(db.clone())
        .write_behind(
            WriteBehind::new()
                .max_attempts(3)
                .backoff(Duration::from_millis(1), Duration::from_millis(2)),
        )
        .dead_letter(move |k: &u64, v: &String, e| {
            d.lock().unwrap().push((*k, v.clone(), e.kind()));
        })
        .build()
        .unwrap();
    c.put_behind(&5, "five".into()).await.unwrap();
    c.close().await;
    assert_eq!(
        *dead.lock().unwrap(),
        vec![(5, "five".to_owned(), ErrorKind::Source)]
    );
    let s = c.stats().write_behind.unwrap();
    assert_eq!(
        (s.retries, s.dead_letters, s.flushed, s.queued),
        (2, 1, 0, 0)
    );
    assert!(s.last_error.unwrap().contains("disk full"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_cache_still_writes_its_queue() {
    let clock = MockClock::new();
    let db = MapDb::default();
    let c = behind(
        &db,
        &clock,
        WriteBehind::new()
            .batch(1000)
            .interval(Duration::from_secs(3600)),
    );
    for k in 0..50 {
        c.put_behind(&k, format!("v{k}")).await.unwrap();
    }
    drop(c);
    until("the flusher wrote the queue", || {
        db.rows.lock().unwrap().len() == 50
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_finds_the_row_gone_evicts_it() {
    let clock = MockClock::new();
    let db = MapDb::with(&[(1, "a")]);
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .ttl(larder::Ttl::fixed(Duration::from_secs(10)).stale_for(Duration::from_secs(5)))
        .loader(db.clone())
        .build()
        .unwrap();
    assert_eq!(c.get_or_load(&1).await.unwrap().as_deref(), Some("a"));
    db.rows.lock().unwrap().remove(&1); // deleted at the source, no invalidation
    clock.advance(Duration::from_secs(12)); // in the grace window
    assert_eq!(
        c.get_or_load(&1).await.unwrap().as_deref(),
        Some("a"),
        "served stale"
    );
    until("the refresh ran", || db.loads.load(Ordering::SeqCst) == 2).await;
    until("the refresh ended", || c.stats().in_flight == 0).await;
    assert_eq!(
        c.get(&1).await.unwrap(),
        None,
        "the deleted row is no longer served"
    );
}

/// Two `put`s of one key: the second waits for the first, so the source
/// and the cache see them in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_of_one_key_reach_the_source_and_the_cache_in_one_order() {
    let clock = MockClock::new();
    let gate = Arc::new(Semaphore::new(0));
    let db = MapDb {
        write_gate: Some(Arc::clone(&gate)),
        ..MapDb::default()
    };
    let c = l1_only(&db, &clock);
    let first = {
        let c = c.clone();
        tokio::spawn(async move { c.put(&1, "v1".into()).await })
    };
    until("the first write reached the source", || {
        db.writes_entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = {
        let c = c.clone();
        tokio::spawn(async move { c.put(&1, "v2".into()).await })
    };
    // Other keys are not held up (a different lock stripe, most likely;
    // the first 8 keys cannot all share key 1's stripe).
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        db.writes_entered.load(Ordering::SeqCst),
        1,
        "the second put of the key reached the source while the first was writing"
    );
    gate.add_permits(2);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(db.rows.lock().unwrap()[&1], "v2");
    assert_eq!(c.get(&1).await.unwrap().as_deref(), Some("v2"));
}

/// Read your writes: a key whose write-behind write still waits is served
/// from the queue, not loaded (old) from the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_write_behind_value_is_served_not_the_old_row() {
    let clock = MockClock::new();
    let db = MapDb::with(&[(1, "old")]);
    let c = behind(
        &db,
        &clock,
        WriteBehind::new()
            .batch(1000)
            .interval(Duration::from_secs(3600)),
    );
    c.put_behind(&1, "new".into()).await.unwrap();
    c.clear_local(); // the L1 loses it (an eviction, say)
    assert_eq!(c.get_or_load(&1).await.unwrap().as_deref(), Some("new"));
    assert_eq!(db.loads.load(Ordering::SeqCst), 0);
    c.close().await;
}

/// A dead-letter callback that panics does not stop the flusher: later
/// writes are still written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_dead_letter_callback_does_not_stop_the_flusher() {
    let clock = MockClock::new();
    let db = MapDb::default();
    db.fail_writes.store(true, Ordering::SeqCst);
    let c: Cache<u64, String> = Cache::builder()
        .clock(clock.shared())
        .loader(db.clone())
        .writer(db.clone())
        .write_behind(
            WriteBehind::new()
                .batch(1)
                .max_attempts(1)
                .backoff(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .dead_letter(|_, _, _| panic!("callback bug"))
        .build()
        .unwrap();
    c.put_behind(&1, "lost".into()).await.unwrap();
    until("dead-lettered", || {
        c.stats().write_behind.unwrap().dead_letters == 1
    })
    .await;
    db.fail_writes.store(false, Ordering::SeqCst);
    c.put_behind(&2, "kept".into()).await.unwrap();
    c.close().await;
    assert_eq!(
        db.rows.lock().unwrap().get(&2).map(String::as_str),
        Some("kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_fills_the_cache_only_and_beats_a_slow_load() {
    let (db, c, gate, slow) = a_slow_load_of_key_1("db").await;
    c.insert(&1, "mine".to_owned()).await.unwrap();
    gate.add_permits(1);
    assert_eq!(slow.await.unwrap().unwrap().as_deref(), Some("db"));
    assert_eq!(c.get(&1).await.unwrap().as_deref(), Some("mine"));
    assert_eq!(
        db.rows.lock().unwrap()[&1],
        "db",
        "the source was not written"
    );
    assert!(db.batches.lock().unwrap().is_empty());
}

/// A write that goes to the source now supersedes a write-behind write of
/// the same key still waiting: the flusher never writes the older value
/// over it, nor a deleted row back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_delete_supersede_a_waiting_write_behind_write() {
    let clock = MockClock::new();
    let db = MapDb::default();
    let c = behind(
        &db,
        &clock,
        WriteBehind::new()
            .batch(1000)
            .interval(Duration::from_secs(3600)),
    );
    c.put_behind(&1, "v0".into()).await.unwrap();
    c.put(&1, "v1".into()).await.unwrap();
    c.put_behind(&2, "w0".into()).await.unwrap();
    c.delete(&2).await.unwrap();
    c.close().await;
    let rows = db.rows.lock().unwrap().clone();
    assert_eq!(
        rows.get(&1).map(String::as_str),
        Some("v1"),
        "the older write came back"
    );
    assert!(!rows.contains_key(&2), "the deleted row came back");
}

/// `update` (cache-aside) supersedes a waiting write-behind write like
/// `put` does: the queued older value never reaches the source after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_supersedes_a_waiting_write_behind_write() {
    let clock = MockClock::new();
    let db = MapDb::default();
    let c = behind(
        &db,
        &clock,
        WriteBehind::new()
            .batch(1000)
            .interval(Duration::from_secs(3600)),
    );
    c.put_behind(&1, "queued".into()).await.unwrap();
    c.update(&1, &"direct".to_owned()).await.unwrap();
    c.close().await;
    assert_eq!(
        db.rows.lock().unwrap().get(&1).map(String::as_str),
        Some("direct"),
        "the queued older write came back over the update"
    );
}

/// A write-behind value stays readable while its batch is being written,
/// and bulk loads read it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_value_in_a_batch_being_written_is_served_not_the_old_row() {
    let clock = MockClock::new();
    let gate = Arc::new(Semaphore::new(0));
    let db = MapDb {
        write_gate: Some(Arc::clone(&gate)),
        ..MapDb::with(&[(1, "old"), (2, "old2")])
    };
    let c = behind(&db, &clock, WriteBehind::new().batch(1));
    c.put_behind(&1, "new".into()).await.unwrap();
    until("its batch reached the writer", || {
        db.writes_entered.load(Ordering::SeqCst) == 1
    })
    .await;
    c.clear_local();
    assert_eq!(c.get_or_load(&1).await.unwrap().as_deref(), Some("new"));
    c.clear_local();
    let got = c.get_many_or_load(&[1, 2]).await;
    assert_eq!(got[0].as_ref().unwrap().as_deref(), Some("new"));
    assert_eq!(got[1].as_ref().unwrap().as_deref(), Some("old2"));
    gate.add_permits(10);
    c.close().await;
}

/// `close` while a direct write that superseded a queued write-behind
/// write is under way: if the direct write fails, the queued write comes
/// back, and the closing flusher still writes it (it waits for writes on
/// their way back or in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_a_superseded_write_that_comes_back() {
    let gate = Arc::new(Semaphore::new(0));
    let db = MapDb {
        write_gate: Some(Arc::clone(&gate)),
        ..MapDb::default()
    };
    let c = behind(
        &db,
        &MockClock::new(),
        WriteBehind::new()
            .batch(1000)
            .interval(Duration::from_secs(3600)),
    );
    c.put_behind(&1, "queued".into()).await.unwrap();
    let put = {
        let c = c.clone();
        tokio::spawn(async move { c.put(&1, "direct".into()).await })
    };
    until("the direct write reached the source", || {
        db.writes_entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let close = {
        let c = c.clone();
        tokio::spawn(async move { c.close().await })
    };
    // Give a flusher that would stop now every chance to (bounded).
    for _ in 0..2000 {
        if close.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    // The direct write fails: the queued write is back.
    db.fail_writes.store(true, Ordering::SeqCst);
    gate.add_permits(1);
    assert!(put.await.unwrap().is_err());
    db.fail_writes.store(false, Ordering::SeqCst);
    gate.add_permits(10);
    close.await.unwrap();
    assert_eq!(
        db.rows.lock().unwrap().get(&1).map(String::as_str),
        Some("queued"),
        "the queued write came back after the flusher had stopped"
    );
}
