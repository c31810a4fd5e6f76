//! Write-through (`put`): the source first, then both levels with a new
//! version; a load that started earlier cannot put its old value back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::Cache;
use larder::core::{ErrorKind, Loader, MockClock, Result, Writer};
use tokio::sync::Semaphore;

use crate::until;

/// A table in memory: loads read the row when they start (then wait at the
/// gate, if any), writes replace it.
#[derive(Clone, Default)]
pub(crate) struct MapDb {
    rows: Arc<Mutex<HashMap<u64, String>>>,
    pub(crate) loads: Arc<AtomicUsize>,
    pub(crate) gate: Option<Arc<Semaphore>>,
    pub(crate) fail_writes: Arc<std::sync::atomic::AtomicBool>,
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
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(larder::core::Error::new(ErrorKind::Source, "disk full"));
        }
        self.rows.lock().unwrap().insert(*key, value.clone());
        Ok(())
    }
    async fn delete(&self, key: &u64) -> Result<()> {
        self.rows.lock().unwrap().remove(key);
        Ok(())
    }
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
    let clock = MockClock::new();
    let gate = Arc::new(Semaphore::new(0));
    let db = MapDb {
        gate: Some(Arc::clone(&gate)),
        ..MapDb::with(&[(1, "v0")])
    };
    let c = l1_only(&db, &clock);
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.get_or_load(&1).await })
    };
    until("the load started", || db.loads.load(Ordering::SeqCst) == 1).await;
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
