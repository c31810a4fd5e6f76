//! Hostile input across the facade's public API: keys that are empty, too
//! long, brace-laden, control characters or attempts at Lua and RESP
//! injection; TTLs of zero and far beyond what Redis takes; L1 capacities
//! at the edges; foreign and truncated bytes planted under Larder's keys.
//! Every case ends in a typed error or the documented behaviour, never a
//! panic, and (against a real server) never touches another key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::core::{ErrorKind, Loader, MAX_KEY_LEN, Result, Writer};
use larder::memory::MemoryCache;
use larder::{Cache, Ttl};

/// A source keyed by text: a written row if there is one, else
/// `loaded:{key}`, and "not found" for keys starting with `missing`.
#[derive(Clone, Default)]
pub(crate) struct TextDb {
    pub(crate) rows: Arc<Mutex<HashMap<String, String>>>,
    pub(crate) loads: Arc<AtomicUsize>,
    pub(crate) writes: Arc<AtomicUsize>,
}

impl TextDb {
    pub(crate) fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    pub(crate) fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

impl Loader<String, String> for TextDb {
    async fn load(&self, key: &String) -> Result<Option<String>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if key.starts_with("missing") {
            return Ok(None);
        }
        let row = self.rows.lock().unwrap().get(key).cloned();
        Ok(Some(row.unwrap_or_else(|| format!("loaded:{key}"))))
    }
}

impl Writer<String, String> for TextDb {
    async fn write(&self, key: &String, value: &String) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.rows.lock().unwrap().insert(key.clone(), value.clone());
        Ok(())
    }

    async fn delete(&self, key: &String) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.rows.lock().unwrap().remove(key);
        Ok(())
    }
}

/// Keys every entry point must refuse with [`ErrorKind::InvalidKey`].
pub(crate) fn invalid_keys() -> Vec<String> {
    vec![
        String::new(),
        "k".repeat(MAX_KEY_LEN + 1),
        // Fewer than MAX_KEY_LEN characters, more than MAX_KEY_LEN bytes.
        "é".repeat(MAX_KEY_LEN / 2 + 1),
        "}".into(),
        "}{".into(),
        "}x{".into(),
    ]
}

/// Valid keys that must be stored as plain data under `{ns}:{{key}}`.
pub(crate) fn hostile_keys() -> Vec<String> {
    vec![
        "{".into(),
        "a}".into(),
        "a}{b".into(),
        "{x}".into(),
        "{}".into(),
        " ".into(),
        "a b".into(),
        "\n".into(),
        "line\nbreak".into(),
        "\r\n".into(),
        "x\r\nFLUSHALL\r\n".into(),
        "'); redis.call('FLUSHALL') --".into(),
        "\"]]; redis.call('FLUSHALL') --[[".into(),
        "*1\r\n$8\r\nFLUSHALL\r\n".into(),
        "*".into(),
        "[a-z]?".into(),
        "\\".into(),
        "é🍰".into(),
        "\u{0}".into(),
        "\u{1b}[31m\u{7f}".into(),
        "larder:{other}".into(),
        "k}:v".into(),
        "k}:lease".into(),
        "wb:journal".into(),
        "k".repeat(MAX_KEY_LEN),
        "é".repeat(MAX_KEY_LEN / 2),
    ]
}

fn l1_cache(db: &TextDb, entries: u64) -> Cache<String, String> {
    Cache::builder()
        .memory(entries)
        .loader(db.clone())
        .writer(db.clone())
        .build()
        .unwrap()
}

/// Every entry point of the facade, with `key`: the kinds of the errors
/// (`None` for success).
async fn every_entry_point(c: &Cache<String, String>, key: &str) -> Vec<Option<ErrorKind>> {
    let k = key.to_owned();
    let kind = |r: Result<()>| r.err().map(|e| e.kind());
    let mut out = vec![
        kind(c.get(&k).await.map(|_| ())),
        kind(c.get_or_load(&k).await.map(|_| ())),
        kind(c.put(&k, "v".into()).await),
        kind(c.insert(&k, "v".into()).await),
        kind(c.update(&k, &"v".into()).await),
        kind(c.invalidate(&k).await),
        kind(c.delete(&k).await),
    ];
    for r in c.get_many(std::slice::from_ref(&k)).await {
        out.push(kind(r.map(|_| ())));
    }
    for r in c.get_many_or_load(std::slice::from_ref(&k)).await {
        out.push(kind(r.map(|_| ())));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_keys_are_typed_errors_at_every_entry_point_and_reach_no_source() {
    let db = TextDb::default();
    let c = l1_cache(&db, 100);
    for bad in invalid_keys() {
        let kinds = every_entry_point(&c, &bad).await;
        assert!(
            kinds.iter().all(|k| *k == Some(ErrorKind::InvalidKey)),
            "{:?}: {kinds:?}",
            bad.get(..8)
        );
    }
    assert_eq!((db.loads(), db.writes()), (0, 0), "no source was called");
    // Mixed with valid keys, each answers for itself, in order.
    let keys = vec!["a".to_owned(), String::new(), "}".into(), "b".into()];
    let got: Vec<_> = c
        .get_many_or_load(&keys)
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.kind()))
        .collect();
    assert_eq!(
        got,
        vec![
            Ok(Some("loaded:a".to_owned())),
            Err(ErrorKind::InvalidKey),
            Err(ErrorKind::InvalidKey),
            Ok(Some("loaded:b".to_owned())),
        ]
    );
    // Valid hostile keys are plain keys of the L1.
    for k in hostile_keys() {
        assert_eq!(
            every_entry_point(&c, &k).await,
            vec![None; 9],
            "{:?}",
            k.get(..8)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_capacities_zero_one_and_max_build_and_work() {
    for cap in [0, 1, u64::MAX] {
        let db = TextDb::default();
        let c = l1_cache(&db, cap);
        for round in 0..2 {
            for i in 0..50 {
                let k = format!("k{i}");
                assert_eq!(
                    c.get_or_load(&k).await.unwrap(),
                    Some(format!("loaded:{k}")),
                    "cap {cap}, round {round}"
                );
            }
        }
        let held = c.stats().l1_entries;
        assert!(held <= cap.min(50), "cap {cap}: {held} entries");
        if cap == u64::MAX {
            assert_eq!(held, 50, "an unbounded L1 evicts nothing");
            assert_eq!(db.loads(), 50, "second round all hits");
        }
        c.put(&"k1".into(), "new".into()).await.unwrap();
        assert_eq!(c.get_or_load(&"k1".into()).await.unwrap().unwrap(), "new");

        let m: MemoryCache<u64, u64> = MemoryCache::builder(cap).build();
        for i in 0..100 {
            m.insert(i, i * 2);
        }
        assert!(m.entry_count() <= cap.min(100), "cap {cap}");
        for i in 0..100 {
            assert!(m.get(&i).is_none_or(|v| v == i * 2), "cap {cap}: garbage");
        }
        if cap == u64::MAX {
            assert!((0..100).all(|i| m.get(&i) == Some(i * 2)));
        }
        if cap == 0 {
            assert_eq!(m.entry_count(), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_of_zero_are_config_errors_and_duration_max_is_forever() {
    let db = TextDb::default();
    let b = || Cache::<String, String>::builder().loader(db.clone());
    let sub_ms = Duration::from_micros(999);
    let bad = [
        b().ttl(Ttl::fixed(Duration::ZERO)).build(),
        b().ttl(Ttl::fixed(sub_ms)).build(),
        b().ttl_for_prefix("p", Ttl::fixed(Duration::ZERO)).build(),
        b().ttl(Ttl::fixed(Duration::MAX).jitter(1.0)).build(),
        b().ttl(Ttl::fixed(Duration::MAX).jitter(f64::NAN)).build(),
        b().ttl(Ttl::fixed(Duration::MAX).jitter(-0.1)).build(),
        b().negative_ttl(sub_ms).build(),
        b().memory_ttl_cap(Duration::ZERO).build(),
        b().tombstone(Duration::ZERO).build(),
        b().load_timeout(Duration::ZERO).build(),
        b().wait_timeout(Duration::ZERO).build(),
        b().xfetch_beta(f64::INFINITY).build(),
    ];
    for (i, r) in bad.into_iter().enumerate() {
        assert_eq!(
            r.map(|_| ()).unwrap_err().kind(),
            ErrorKind::InvalidConfig,
            "setting {i}"
        );
    }
    // Every duration at its largest: the cache works and nothing overflows.
    let c = b()
        .writer(db.clone())
        .ttl(
            Ttl::fixed(Duration::MAX)
                .jitter(0.5)
                .stale_for(Duration::MAX),
        )
        .negative_ttl(Duration::MAX)
        .stale_if_error(Duration::MAX)
        .memory_ttl_cap(Duration::MAX)
        .load_timeout(Duration::MAX)
        .wait_timeout(Duration::MAX)
        .tombstone(Duration::MAX)
        .hot_keys(4)
        .hot_refresh_ahead(Duration::MAX)
        .build()
        .unwrap();
    forever_workload(&c).await;
}

/// Loads, a negative load, a put, an insert, an invalidation: each answers
/// what it should with lifetimes of `Duration::MAX`.
pub(crate) async fn forever_workload(c: &Cache<String, String>) {
    for _ in 0..3 {
        assert_eq!(
            c.get_or_load(&"a".into()).await.unwrap().as_deref(),
            Some("loaded:a")
        );
        assert_eq!(c.get_or_load(&"missing".into()).await.unwrap(), None);
    }
    c.put(&"b".into(), "put".into()).await.unwrap();
    c.insert(&"c".into(), "inserted".into()).await.unwrap();
    assert_eq!(c.get(&"b".into()).await.unwrap().as_deref(), Some("put"));
    assert_eq!(
        c.get(&"c".into()).await.unwrap().as_deref(),
        Some("inserted")
    );
    c.invalidate(&"a".into()).await.unwrap();
    assert_eq!(c.get(&"a".into()).await.unwrap(), None);
    let many = c
        .get_many_or_load(&["a".into(), "b".into(), "missing2".into()])
        .await;
    assert_eq!(many.len(), 3);
    assert_eq!(many[0].as_ref().unwrap().as_deref(), Some("loaded:a"));
    assert_eq!(many[1].as_ref().unwrap().as_deref(), Some("put"));
    assert_eq!(many[2].as_ref().unwrap(), &None);
}

#[cfg(feature = "redis")]
pub(crate) mod with_redis {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use larder::core::envelope::{HEADER_LEN, MAGIC};
    use larder::core::{ErrorKind, Store};
    use larder::redis::redis::{self, Connection};
    use larder::redis::{MAX_TTL, RedisConfig, RedisStore, RetryPolicy, Topology};
    use larder::{Cache, Ttl};
    use larder_testkit::RedisServer;

    use super::{TextDb, every_entry_point, forever_workload, hostile_keys, invalid_keys};

    /// Keys outside Larder's layout, planted first and checked last.
    pub(crate) const SENTINELS: &[&str] = &["keep", "other:{keep}", "larder", "larder2:{k}"];

    pub(crate) fn plant_sentinels(c: &mut Connection) {
        for k in SENTINELS {
            redis::cmd("SET")
                .arg(*k)
                .arg(format!("sentinel {k}"))
                .exec(c)
                .unwrap();
        }
    }

    pub(crate) fn sentinels_survive(c: &mut Connection) {
        for k in SENTINELS {
            let v: Option<String> = redis::cmd("GET").arg(*k).query(c).unwrap();
            assert_eq!(v, Some(format!("sentinel {k}")), "sentinel {k:?} changed");
        }
    }

    pub(crate) fn all_keys(c: &mut Connection) -> BTreeSet<Vec<u8>> {
        redis::cmd("KEYS").arg("*").query(c).unwrap()
    }

    fn dbsize(c: &mut Connection) -> usize {
        redis::cmd("DBSIZE").query(c).unwrap()
    }

    fn with_sentinels(mut keys: BTreeSet<Vec<u8>>) -> BTreeSet<Vec<u8>> {
        keys.extend(SENTINELS.iter().map(|k| k.as_bytes().to_vec()));
        keys
    }

    fn data_key(k: &str) -> Vec<u8> {
        format!("larder:{{{k}}}").into_bytes()
    }

    fn version_key(k: &str) -> Vec<u8> {
        format!("larder:{{{k}}}:v").into_bytes()
    }

    pub(crate) fn quick_store(url: &str) -> RedisStore {
        RedisStore::new(
            RedisConfig::builder(Topology::Standalone(url.to_owned()))
                .response_timeout(Duration::from_secs(2))
                .connect_timeout(Duration::from_secs(2))
                .retry(RetryPolicy::none())
                .build()
                .unwrap(),
        )
        .unwrap()
    }

    fn two_levels(url: &str, db: &TextDb) -> Cache<String, String> {
        Cache::builder()
            .memory(1_000)
            .redis(quick_store(url))
            .loader(db.clone())
            .writer(db.clone())
            .build()
            .unwrap()
    }

    /// An L2-only reader: what Redis holds, through the facade.
    fn l2_reader(url: &str) -> Cache<String, String> {
        Cache::builder()
            .no_memory()
            .redis(quick_store(url))
            .build()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_keys_through_the_facade_touch_only_their_own_redis_keys() {
        let server = RedisServer::start().unwrap();
        let mut raw = server.client().get_connection().unwrap();
        plant_sentinels(&mut raw);
        let db = TextDb::default();
        let c = two_levels(&server.url(), &db);
        let reader = l2_reader(&server.url());

        for bad in invalid_keys() {
            let kinds = every_entry_point(&c, &bad).await;
            assert!(
                kinds.iter().all(|k| *k == Some(ErrorKind::InvalidKey)),
                "{:?}: {kinds:?}",
                bad.get(..8)
            );
        }
        assert_eq!((db.loads(), db.writes()), (0, 0));
        assert_eq!(all_keys(&mut raw), with_sentinels(BTreeSet::new()));

        let keys = hostile_keys();
        let mut expected = BTreeSet::new();
        for k in &keys {
            let short = k.get(..12).unwrap_or(k);
            assert_eq!(
                c.get_or_load(k).await.unwrap(),
                Some(format!("loaded:{k}")),
                "{short:?}"
            );
            let stored: Option<Vec<u8>> =
                redis::cmd("GET").arg(data_key(k)).query(&mut raw).unwrap();
            assert!(stored.is_some(), "{short:?} under its own Redis key");
            assert_eq!(
                reader.get(k).await.unwrap(),
                Some(format!("loaded:{k}")),
                "{short:?}"
            );
            c.put(k, format!("put:{k}")).await.unwrap();
            assert_eq!(
                reader.get(k).await.unwrap(),
                Some(format!("put:{k}")),
                "{short:?}"
            );
            expected.insert(data_key(k));
            expected.insert(version_key(k));
            assert_eq!(
                all_keys(&mut raw),
                with_sentinels(expected.clone()),
                "after {short:?}"
            );
            c.invalidate(k).await.unwrap();
            assert_eq!(reader.get(k).await.unwrap(), None, "{short:?}");
            expected.remove(&data_key(k));
            assert_eq!(
                all_keys(&mut raw),
                with_sentinels(expected.clone()),
                "after invalidating {short:?}"
            );
        }
        // Reads of them all at once, valid and invalid mixed.
        let mut mixed = keys.clone();
        mixed.extend(invalid_keys());
        for (k, r) in mixed.iter().zip(c.get_many_or_load(&mixed).await) {
            if keys.contains(k) {
                assert_eq!(r.unwrap(), Some(format!("put:{k}")));
            } else {
                assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidKey);
            }
        }
        for (k, r) in mixed.iter().zip(reader.get_many(&mixed).await) {
            if keys.contains(k) {
                assert_eq!(r.unwrap(), Some(format!("put:{k}")));
            } else {
                assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidKey);
            }
        }
        for k in &keys {
            expected.insert(data_key(k));
        }
        assert_eq!(all_keys(&mut raw), with_sentinels(expected.clone()));
        assert_eq!(dbsize(&mut raw), SENTINELS.len() + 2 * keys.len());
        sentinels_survive(&mut raw);
        // `clear` removes the namespace and nothing else (not `larder`,
        // not `larder2:{k}`).
        c.clear().await.unwrap();
        assert_eq!(all_keys(&mut raw), with_sentinels(BTreeSet::new()));
        sentinels_survive(&mut raw);
    }

    fn pttl(raw: &mut Connection, key: &[u8]) -> i64 {
        redis::cmd("PTTL").arg(key).query(raw).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ttls_beyond_redis_are_capped_at_max_ttl() {
        let server = RedisServer::start().unwrap();
        let mut raw = server.client().get_connection().unwrap();
        let cap = i64::try_from(MAX_TTL.as_millis()).unwrap();
        for (i, ttl) in [Duration::MAX, MAX_TTL + Duration::from_secs(1), MAX_TTL]
            .into_iter()
            .enumerate()
        {
            let db = TextDb::default();
            let c: Cache<String, String> = Cache::builder()
                .redis(quick_store(&server.url()).clone())
                .loader(db.clone())
                .writer(db.clone())
                .ttl(Ttl::fixed(ttl).stale_for(ttl))
                .negative_ttl(ttl)
                .tombstone(ttl)
                .lease(ttl)
                .build()
                .unwrap();
            forever_workload(&c).await;
            for k in ["a", "b", "c", "missing"] {
                let left = pttl(&mut raw, &data_key(k));
                assert!(left > 0 && left <= cap, "ttl {i}, {k}: PTTL {left}");
            }
            for k in ["a", "b", "c"] {
                let left = pttl(&mut raw, &version_key(k));
                assert!(left > 0 && left <= cap, "ttl {i}, {k}:v: PTTL {left}");
            }
            c.clear().await.unwrap();
        }
        // The store's own refusal of a zero TTL, through the facade's store.
        let s = quick_store(&server.url());
        assert_eq!(
            s.set("z", b"v", Duration::ZERO).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(dbsize(&mut raw), 0);
    }

    /// Bytes another client could leave under a key.
    fn foreign_values(real: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        let mut rng = fastrand::Rng::with_seed(15);
        let random: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
        let mut headed = random.clone();
        headed[0] = MAGIC;
        headed[1] = real[1];
        let mut other_codec = real.to_vec();
        other_codec[2] ^= 0x7F;
        vec![
            ("empty", Vec::new()),
            ("L", b"L".to_vec()),
            ("magic only", vec![MAGIC]),
            ("header minus one", real[..HEADER_LEN - 1].to_vec()),
            ("header only", real[..HEADER_LEN].to_vec()),
            ("truncated by one", real[..real.len() - 1].to_vec()),
            ("longer by one", [real, b"x"].concat()),
            ("another codec", other_codec),
            ("1 MiB random", random),
            ("1 MiB random with a header", headed),
            ("text", b"hello, world".to_vec()),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_or_truncated_bytes_are_a_counted_miss_and_the_loader_answers() {
        let server = RedisServer::start().unwrap();
        let mut raw = server.client().get_connection().unwrap();
        let db = TextDb::default();
        let c = two_levels(&server.url(), &db);
        let reader = l2_reader(&server.url());
        c.get_or_load(&"real".into()).await.unwrap();
        let real: Vec<u8> = redis::cmd("GET")
            .arg(data_key("real"))
            .query(&mut raw)
            .unwrap();
        for (i, (what, bytes)) in foreign_values(&real).into_iter().enumerate() {
            let k = format!("k{i}");
            redis::cmd("SET")
                .arg(data_key(&k))
                .arg(&bytes)
                .exec(&mut raw)
                .unwrap();
            let before = reader.stats().corrupt;
            assert_eq!(reader.get(&k).await.unwrap(), None, "{what}: a miss");
            assert_eq!(reader.stats().corrupt, before + 1, "{what}: counted");
            let before = c.stats().corrupt;
            assert_eq!(
                c.get_or_load(&k).await.unwrap(),
                Some(format!("loaded:{k}")),
                "{what}: the loader's value"
            );
            assert!(c.stats().corrupt > before, "{what}: counted");
            // Its version record is one a script can hold (a forged header's
            // version is not followed past 2^53).
            let rec: Option<u64> = redis::cmd("GET")
                .arg(version_key(&k))
                .query(&mut raw)
                .unwrap();
            assert!(rec.is_some_and(|v| v < 1 << 53), "{what}: {rec:?}");
            // The load replaced the bytes: another instance reads the value.
            assert_eq!(
                reader.get(&k).await.unwrap(),
                Some(format!("loaded:{k}")),
                "{what}: overwritten"
            );
            // And in bulk reads.
            redis::cmd("SET")
                .arg(data_key(&k))
                .arg(&bytes)
                .exec(&mut raw)
                .unwrap();
            let many = reader.get_many(&[k.clone(), "real".into()]).await;
            assert_eq!(many[0].as_ref().unwrap(), &None, "{what}: bulk miss");
            assert_eq!(
                many[1].as_ref().unwrap().as_deref(),
                Some("loaded:real"),
                "{what}"
            );
        }
        // A key of another type (a list) under a data key: an L2 error
        // answered by the loader, never a panic.
        redis::cmd("RPUSH")
            .arg(data_key("list"))
            .arg("x")
            .exec(&mut raw)
            .unwrap();
        assert_eq!(reader.get(&"list".into()).await.unwrap(), None);
        assert_eq!(
            c.get_or_load(&"list".into()).await.unwrap().as_deref(),
            Some("loaded:list")
        );
        assert!(c.stats().l2_errors > 0);
        let t: String = redis::cmd("TYPE")
            .arg(data_key("list"))
            .query(&mut raw)
            .unwrap();
        assert_eq!(t, "list", "another client's data is left alone");
    }
}
