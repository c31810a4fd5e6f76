//! Hostile input through the store and the helpers, against a real server:
//! every key is either refused with a typed error before anything is sent,
//! or stored as plain data under exactly the Redis key the layout says;
//! no other key of the server changes, whatever the key spells (Lua,
//! RESP, glob characters, braces, control characters).

use std::collections::BTreeSet;
use std::time::Duration;

use larder_core::{ErrorKind, MAX_KEY_LEN, Store, StoreEntry};
use larder_redis::structures::{Feed, HashObject, Leaderboard, RateLimit, RateLimiter, WorkQueue};
use larder_redis::{KeyTtl, MAX_TTL};
use larder_testkit::RedisServer;
use redis::Connection;

use crate::store;

/// Keys that must be refused ([`ErrorKind::InvalidKey`]): empty, over
/// [`MAX_KEY_LEN`] bytes (also in multi-byte characters, fewer than
/// `MAX_KEY_LEN` of them), or starting with `}` (it empties the hash tag).
pub(crate) fn invalid_keys() -> Vec<String> {
    vec![
        String::new(),
        "k".repeat(MAX_KEY_LEN + 1),
        "é".repeat(MAX_KEY_LEN / 2 + 1),
        "}".into(),
        "}{".into(),
        "}x{".into(),
    ]
}

/// Keys that are valid and must be stored as plain data.
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
        "\t".into(),
        "x\r\nFLUSHALL\r\n".into(),
        "'); redis.call('FLUSHALL') --".into(),
        "\"]]; redis.call('FLUSHALL') --[[".into(),
        "*1\r\n$8\r\nFLUSHALL\r\n".into(),
        "KEYS *".into(),
        "*".into(),
        "?".into(),
        "[a-z]".into(),
        "\\".into(),
        "é🍰".into(),
        "\u{0}".into(),
        "nul\u{0}byte".into(),
        "\u{1b}[31m\u{7f}".into(),
        "\u{feff}bom".into(),
        "larder:{other}".into(),
        // Spellings of internal and helper keys of another key.
        "k}:v".into(),
        "k}:lease".into(),
        "queue:q}:#ready".into(),
        "k".repeat(MAX_KEY_LEN),
        "é".repeat(MAX_KEY_LEN / 2),
        // `larder:{key}` of exactly 128 bytes and of 129: a plain get
        // assembles the Redis key in 128 bytes on the stack when it fits.
        "b".repeat(119),
        "c".repeat(120),
    ]
}

/// Keys outside Larder's layout that every test plants first and checks last.
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

/// Every key of the server, as bytes.
pub(crate) fn all_keys(c: &mut Connection) -> BTreeSet<Vec<u8>> {
    redis::cmd("KEYS").arg("*").query(c).unwrap()
}

pub(crate) fn dbsize(c: &mut Connection) -> u64 {
    redis::cmd("DBSIZE").query(c).unwrap()
}

fn with_sentinels(mut keys: BTreeSet<Vec<u8>>) -> BTreeSet<Vec<u8>> {
    keys.extend(SENTINELS.iter().map(|k| k.as_bytes().to_vec()));
    keys
}

fn data_key(k: &str) -> Vec<u8> {
    format!("larder:{{{k}}}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_through_the_store_are_refused_or_stored_as_plain_data() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().get_connection().unwrap();
    plant_sentinels(&mut c);
    let s = store(&server.url());
    let ttl = Duration::from_secs(60);

    for bad in invalid_keys() {
        let b = bad.as_str();
        let kinds = [
            s.get(b).await.map(|_| ()),
            s.set(b, b"v", ttl).await,
            s.delete(b).await.map(|_| ()),
            s.set_if_absent(b, b"v", ttl).await.map(|_| ()),
            s.get_many(&["ok", b]).await.map(|_| ()),
            s.set_many(&[
                StoreEntry {
                    key: "ok",
                    value: b"v",
                    ttl,
                },
                StoreEntry {
                    key: b,
                    value: b"v",
                    ttl,
                },
            ])
            .await,
            s.delete_many(&["ok", b]).await.map(|_| ()),
            s.ttl(b).await.map(|_| ()),
            s.get_or_set(b, b"v", ttl).await.map(|_| ()),
            s.incr_with_expiry(b, 1, ttl).await.map(|_| ()),
            s.invalidate(b, ttl).await.map(|_| ()),
            s.acquire_lease(b, b"t", ttl).await.map(|_| ()),
        ]
        .map(|r| r.map_err(|e| e.kind()));
        for (i, r) in kinds.iter().enumerate() {
            assert_eq!(*r, Err(ErrorKind::InvalidKey), "call {i} with {bad:?}");
        }
    }
    // Nothing was sent for them: not even the valid key of the mixed calls.
    assert_eq!(all_keys(&mut c), with_sentinels(BTreeSet::new()));

    let keys = hostile_keys();
    let mut expected = BTreeSet::new();
    for k in &keys {
        let value = format!("value of {k}").into_bytes();
        s.set(k, &value, ttl).await.unwrap();
        assert_eq!(s.get(k).await.unwrap(), Some(value.clone()), "{k:?}");
        let raw: Option<Vec<u8>> = redis::cmd("GET").arg(data_key(k)).query(&mut c).unwrap();
        assert_eq!(raw, Some(value), "{k:?} is stored under its own key");
        expected.insert(data_key(k));
        assert_eq!(
            all_keys(&mut c),
            with_sentinels(expected.clone()),
            "after {k:?}"
        );
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = s.get_many(&refs).await.unwrap();
    for (k, v) in keys.iter().zip(got) {
        assert_eq!(v, Some(format!("value of {k}").into_bytes()), "{k:?}");
    }
    assert_eq!(dbsize(&mut c), (SENTINELS.len() + keys.len()) as u64);
    for k in &keys {
        assert!(s.delete(k).await.unwrap(), "{k:?}");
    }
    assert_eq!(all_keys(&mut c), with_sentinels(BTreeSet::new()));
    sentinels_survive(&mut c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_of_zero_are_refused_and_beyond_redis_are_capped() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().get_connection().unwrap();
    plant_sentinels(&mut c);
    let s = store(&server.url());
    for zero in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(999),
    ] {
        assert_eq!(
            s.set("z", b"v", zero).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            s.set_if_absent("z", b"v", zero).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            s.get_or_set("z", b"v", zero).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
    assert_eq!(dbsize(&mut c), SENTINELS.len() as u64, "nothing written");
    for (k, ttl) in [
        ("max", Duration::MAX),
        ("cap", MAX_TTL),
        ("over", MAX_TTL + Duration::from_secs(1)),
        ("u64ms", Duration::from_millis(u64::MAX)),
    ] {
        s.set(k, b"v", ttl).await.unwrap();
        let left = s.ttl(k).await.unwrap().remaining().expect("it expires");
        assert!(
            left <= MAX_TTL && left > MAX_TTL - Duration::from_secs(60),
            "{k}: {left:?}"
        );
    }
    s.set_many(&[StoreEntry {
        key: "many",
        value: b"v",
        ttl: Duration::MAX,
    }])
    .await
    .unwrap();
    assert!(matches!(s.ttl("many").await.unwrap(), KeyTtl::Expires(d) if d <= MAX_TTL));
    sentinels_survive(&mut c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_refuse_bad_names_and_store_hostile_ids_as_plain_data() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().get_connection().unwrap();
    plant_sentinels(&mut c);
    let s = store(&server.url());
    let minute = Duration::from_secs(60);

    // Names: no braces, no ':', valid keys.
    let mut bad_names = invalid_keys();
    bad_names.extend(["a:b", "{", "a}", "x{y", "{x}"].map(String::from));
    for bad in &bad_names {
        let kinds = [
            Feed::<String>::new(&s, bad, 10, minute).map(|_| ()),
            HashObject::<serde_json::Value>::new(&s, bad).map(|_| ()),
            Leaderboard::new(&s, bad).map(|_| ()),
            WorkQueue::<String>::new(&s, bad, minute).map(|_| ()),
            RateLimiter::new(
                &s,
                bad,
                RateLimit::FixedWindow {
                    limit: 1,
                    window: minute,
                },
            )
            .map(|_| ()),
        ]
        .map(|r| r.map_err(|e| e.kind()));
        for (i, r) in kinds.iter().enumerate() {
            assert_eq!(*r, Err(ErrorKind::InvalidKey), "helper {i} named {bad:?}");
        }
    }

    // Ids and owners: no braces, valid keys; ':' is allowed.
    let feed = Feed::<String>::new(&s, "f", 10, minute).unwrap();
    let objs = HashObject::<serde_json::Value>::new(&s, "o").unwrap();
    let limiter = RateLimiter::new(
        &s,
        "r",
        RateLimit::FixedWindow {
            limit: 5,
            window: minute,
        },
    )
    .unwrap();
    let mut bad_ids = invalid_keys();
    bad_ids.extend(["{", "a}", "x{y", "{x}", "a}{b"].map(String::from));
    for bad in &bad_ids {
        let kinds = [
            feed.push(bad, &"x".into()).await.map(|_| ()),
            feed.recent(bad, 1).await.map(|_| ()),
            objs.put(bad, &serde_json::json!({"a": 1}), None).await,
            objs.get(bad).await.map(|_| ()),
            objs.delete(bad).await.map(|_| ()),
            limiter.check(bad).await.map(|_| ()),
        ]
        .map(|r| r.map_err(|e| e.kind()));
        for (i, r) in kinds.iter().enumerate() {
            assert_eq!(*r, Err(ErrorKind::InvalidKey), "call {i} with id {bad:?}");
        }
    }
    assert_eq!(all_keys(&mut c), with_sentinels(BTreeSet::new()));

    // Hostile but valid ids: plain data under their own helper keys.
    let ids: Vec<String> = hostile_keys()
        .into_iter()
        .filter(|k| !k.contains(['{', '}']))
        .filter(|k| k.len() + 10 <= MAX_KEY_LEN)
        .collect();
    let board = Leaderboard::new(&s, "b").unwrap();
    let mut expected = BTreeSet::new();
    for id in &ids {
        feed.push(id, &format!("item {id}")).await.unwrap();
        assert_eq!(
            feed.recent(id, 5).await.unwrap(),
            vec![format!("item {id}")]
        );
        expected.insert(format!("larder:{{feed:f:{id}}}:#items").into_bytes());
        objs.put(id, &serde_json::json!({ id.as_str(): id }), None)
            .await
            .unwrap();
        // A hostile field name is a field, not a command.
        assert!(objs.set_field(id, "x\r\nFLUSHALL", &1).await.unwrap());
        expected.insert(format!("larder:{{obj:o:{id}}}:#fields").into_bytes());
        assert!(limiter.check(id).await.unwrap().allowed);
        expected.insert(format!("larder:{{rate:r:{id}}}:#fixed").into_bytes());
        // Members of a leaderboard are data too, braces and all.
        board.set_score(id, 1.0).await.unwrap();
        assert_eq!(board.score(id).await.unwrap(), Some(1.0), "{id:?}");
    }
    for member in ["{", "a}{b", "'); redis.call('FLUSHDB') --"] {
        board.set_score(member, 2.0).await.unwrap();
    }
    // Members are checked as keys are: a leading `}` is refused.
    assert_eq!(
        board.set_score("}{", 2.0).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    assert_eq!(board.len().await.unwrap(), (ids.len() + 3) as u64);
    expected.insert(b"larder:{board:b}:#scores".to_vec());
    assert_eq!(all_keys(&mut c), with_sentinels(expected));
    sentinels_survive(&mut c);
}

/// Helper TTLs of `Duration::MAX` are capped like the cache's: an object
/// or a feed is never left without an expiry, nor with an error after
/// half its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_ttls_beyond_redis_are_capped_not_half_written() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().get_connection().unwrap();
    let s = store(&server.url());
    let pttl = |c: &mut Connection, k: &str| -> i64 { redis::cmd("PTTL").arg(k).query(c).unwrap() };
    let cap = i64::try_from(MAX_TTL.as_millis()).unwrap();

    let objs = HashObject::<serde_json::Value>::new(&s, "o").unwrap();
    let put = objs
        .put("1", &serde_json::json!({"a": 1}), Some(Duration::MAX))
        .await;
    let left = pttl(&mut c, "larder:{obj:o:1}:#fields");
    assert!(
        left > 0 && left <= cap,
        "PTTL {left} after a put that answered {put:?}"
    );
    put.unwrap();
    assert!(objs.expire("1", Duration::MAX).await.unwrap());
    let left = pttl(&mut c, "larder:{obj:o:1}:#fields");
    assert!(left > 0 && left <= cap, "{left}");

    let feed = Feed::<String>::new(&s, "f", 10, Duration::MAX).unwrap();
    let pushed = feed.push("u", &"x".into()).await;
    let left = pttl(&mut c, "larder:{feed:f:u}:#items");
    assert!(
        left > 0 && left <= cap,
        "PTTL {left} after a push that answered {pushed:?}"
    );
    assert_eq!(pushed.unwrap(), 1);

    // Limiters and queues with windows and leases of `Duration::MAX`: an
    // answer (or a typed error), and never a key left without expiry by a
    // limiter.
    for (name, limit) in [
        (
            "fixed",
            RateLimit::FixedWindow {
                limit: 2,
                window: Duration::MAX,
            },
        ),
        (
            "sliding",
            RateLimit::SlidingWindow {
                limit: 2,
                window: Duration::MAX,
            },
        ),
        (
            "bucket",
            RateLimit::TokenBucket {
                rate: 1,
                period: Duration::MAX,
                burst: 2,
            },
        ),
    ] {
        let l = RateLimiter::new(&s, name, limit).unwrap();
        let first = l.check("u").await;
        assert!(first.as_ref().is_ok_and(|d| d.allowed), "{name}: {first:?}");
    }
    let keys = all_keys(&mut c);
    for k in keys.iter().filter(|k| k.starts_with(b"larder:{rate:")) {
        let left: i64 = redis::cmd("PTTL").arg(k).query(&mut c).unwrap();
        assert!(left > 0, "{} has PTTL {left}", String::from_utf8_lossy(k));
    }
    let q = WorkQueue::<String>::new(&s, "q", Duration::MAX).unwrap();
    q.push(&"job".into()).await.unwrap();
    let d = q.try_pop().await.unwrap().expect("the job");
    assert!(q.ack(&d).await.unwrap());
}
