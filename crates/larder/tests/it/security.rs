//! Security against real servers: the least-privilege ACL the facade needs
//! (documented in `docs/security.md`), passwords never shown, and nothing
//! read or written outside the namespace (a `MONITOR` capture).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use larder::core::{ErrorKind, Result};
use larder::redis::redis::{self, Connection};
use larder::redis::{RedisConfig, RedisStore, RetryPolicy, Topology};
use larder::{Cache, CoherenceMode, WriteBehind};
use larder_testkit::RedisServer;

use crate::hostile::TextDb;

/// The rules of the facade's Redis user: every command Larder's cache
/// sends (directly or from its Lua scripts), keys `larder:*` and channels
/// `larder:*` only. Kept in sync with `docs/security.md`.
pub(crate) const FACADE_ACL: &str = "resetkeys ~larder:* resetchannels &larder:* -@all \
     +ping +client|setname +client|tracking \
     +get +set +mget +del +unlink +scan \
     +evalsha +script|load +time +incr +publish +subscribe \
     +xadd +xreadgroup +xack +xdel +xautoclaim +xclaim +xgroup|create +xlen +xrange \
     +hset +hget +hdel +hmget +pttl";

const BOUND: Duration = Duration::from_secs(10);

fn store(url: &str, namespace: &str) -> RedisStore {
    RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace(namespace)
            .response_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .retry(RetryPolicy::none())
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// Every feature that talks to Redis: tracking, a load lease, durable
/// write-behind.
fn full_cache(url: &str, namespace: &str, db: &TextDb, consumer: &str) -> Cache<String, String> {
    Cache::builder()
        .redis(store(url, namespace))
        .loader(db.clone())
        .writer(db.clone())
        .lease(Duration::from_secs(5))
        .write_behind(WriteBehind::new().interval(Duration::from_millis(20)))
        .durable(consumer)
        .coherence(CoherenceMode::Tracking)
        .build()
        .unwrap()
}

async fn ready(c: &Cache<String, String>) {
    tokio::time::timeout(BOUND, c.coherence_ready())
        .await
        .expect("the invalidation stream came up");
}

/// Reads `key` until this instance's L1 answers it, bounded.
async fn held_in_l1(c: &Cache<String, String>, key: &str) -> String {
    for _ in 0..1000 {
        let before = c.stats().l1_hits;
        let v = c.get_or_load(&key.to_owned()).await.unwrap().unwrap();
        if c.stats().l1_hits > before {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{key} never stayed in the L1");
}

/// Reads `key` (no load) until it answers `want`, bounded.
async fn eventually_reads(c: &Cache<String, String>, key: &str, want: Option<&str>) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let got = c.get(&key.to_owned()).await.unwrap();
        if got.as_deref() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} still reads {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The whole facade: loads, bulk reads, write-through, durable
/// write-behind, invalidation, a remote eviction by tracking, `clear`.
async fn mixed_workload(url: &str, namespace: &str) -> TextDb {
    let db = TextDb::default();
    let a = full_cache(url, namespace, &db, "web-1");
    let b = full_cache(url, namespace, &db, "web-2");
    ready(&a).await;
    ready(&b).await;
    assert_eq!(
        a.get_or_load(&"k1".into()).await.unwrap().as_deref(),
        Some("loaded:k1")
    );
    assert_eq!(held_in_l1(&b, "k1").await, "loaded:k1");
    // A write on one instance evicts the other's L1 copy.
    a.put(&"k1".into(), "v2".into()).await.unwrap();
    eventually_reads(&b, "k1", Some("v2")).await;
    a.put_behind(&"k2".into(), "behind".into()).await.unwrap();
    assert_eq!(
        b.get(&"k2".into()).await.unwrap().as_deref(),
        Some("behind")
    );
    a.invalidate(&"k1".into()).await.unwrap();
    eventually_reads(&b, "k1", None).await;
    let many = b
        .get_many_or_load(&["k1".into(), "k2".into(), "missing".into()])
        .await;
    let many: Vec<Option<String>> = many.into_iter().map(Result::unwrap).collect();
    assert_eq!(many, vec![Some("v2".into()), Some("behind".into()), None]);
    assert_eq!(b.get_many(&["k3".into()]).await[0].as_ref().unwrap(), &None);
    a.delete(&"k1".into()).await.unwrap();
    for c in [&a, &b] {
        let s = c.stats();
        assert_eq!(s.l2_errors, 0, "every L2 call was allowed: {s:?}");
        assert!(s.coherence.as_ref().is_some_and(|co| co.connected), "{s:?}");
    }
    assert!(b.stats().coherence.unwrap().evicted >= 1);
    a.close().await;
    b.clear().await.unwrap();
    b.close().await;
    let stats = a.stats().write_behind.unwrap();
    assert_eq!(
        (stats.dead_letters, stats.journal_errors),
        (0, 0),
        "{stats:?}"
    );
    assert!(
        db.writes() >= 3,
        "put, put_behind and delete reached the source"
    );
    db
}

/// Coherence in pub/sub mode: a write announced by one instance evicts
/// the other's L1 copy.
async fn pubsub_eviction(url: &str, namespace: &str) {
    let db = TextDb::default();
    let cache = || {
        Cache::<String, String>::builder()
            .redis(store(url, namespace))
            .loader(db.clone())
            .writer(db.clone())
            .coherence(CoherenceMode::PubSub)
            .build()
            .unwrap()
    };
    let (a, b) = (cache(), cache());
    ready(&a).await;
    ready(&b).await;
    assert_eq!(held_in_l1(&b, "p1").await, "loaded:p1");
    a.put(&"p1".into(), "announced".into()).await.unwrap();
    eventually_reads(&b, "p1", Some("announced")).await;
    for c in [&a, &b] {
        assert_eq!(c.stats().l2_errors, 0);
    }
    assert!(a.stats().coherence.unwrap().sent >= 1);
    a.close().await;
    b.close().await;
}

fn acl_log(admin: &mut Connection) -> Vec<redis::Value> {
    redis::cmd("ACL").arg("LOG").query(admin).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_facade_runs_under_a_least_privilege_acl() {
    let server = RedisServer::builder()
        .acl_user_with_rules("app", "app-pw", FACADE_ACL)
        .start()
        .unwrap();
    let mut admin = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("outside")
        .arg("keep")
        .exec(&mut admin)
        .unwrap();
    let url = server.url_with_auth("app", "app-pw");
    mixed_workload(&url, "larder").await;
    pubsub_eviction(&url, "larder").await;
    // Nothing was refused along the way (a refusal the client ignored
    // would still be logged here).
    assert_eq!(acl_log(&mut admin), vec![], "denied commands");
    let journal: u64 = redis::cmd("XLEN")
        .arg("larder:wb:journal")
        .query(&mut admin)
        .unwrap();
    assert_eq!(journal, 0, "every journalled write acknowledged");

    // The user cannot reach outside the namespace, nor run admin commands.
    let mut app = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let refused = |r: redis::RedisResult<redis::Value>| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), Some("NOPERM"), "{e}");
    };
    refused(redis::cmd("GET").arg("outside").query(&mut app));
    refused(redis::cmd("SET").arg("outside").arg("x").query(&mut app));
    refused(redis::cmd("DEL").arg("outside").query(&mut app));
    refused(
        redis::cmd("SET")
            .arg("larder2:{k}")
            .arg("x")
            .query(&mut app),
    );
    refused(redis::cmd("FLUSHALL").query(&mut app));
    refused(redis::cmd("KEYS").arg("*").query(&mut app));
    refused(redis::cmd("CONFIG").arg("GET").arg("*").query(&mut app));
    refused(
        redis::cmd("EVAL")
            .arg("return redis.call('GET', 'outside')")
            .arg(0)
            .query(&mut app),
    );
    refused(redis::cmd("PUBLISH").arg("other").arg("x").query(&mut app));
    // Through the store's escape hatch: a typed `Auth` error.
    let s = store(&url, "larder");
    let e = s
        .command::<Option<String>>(None, redis::cmd("GET").arg("outside").clone(), true)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    let kept: String = redis::cmd("GET").arg("outside").query(&mut admin).unwrap();
    assert_eq!(kept, "keep");
    assert!(!acl_log(&mut admin).is_empty(), "the refusals were logged");
}

/// Every way a password could be shown: `Debug` of the configuration,
/// store, cache and builder, their figures, and the `Display`, `Debug` and
/// source chain of the errors of a wrong password and an unreachable host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_debug_or_errors() {
    const SECRET: &str = "s3cr3t-pw";
    let server = RedisServer::builder()
        .acl_user("app", SECRET)
        .acl_user("other", "another-pw")
        .start()
        .unwrap();
    let dead_port = RedisServer::start().unwrap().port();
    let right = format!("redis://app:{SECRET}@127.0.0.1:{}", server.port());
    let wrong = format!("redis://other:{SECRET}@127.0.0.1:{}", server.port());
    let unreachable = format!("redis://app:{SECRET}@127.0.0.1:{dead_port}");
    let mut shown: Vec<String> = Vec::new();
    let mut errors: Vec<larder::core::Error> = Vec::new();

    for url in [&right, &wrong, &unreachable] {
        let cfg = RedisConfig::from_url(url).unwrap();
        let s = RedisStore::new(cfg.clone()).unwrap();
        let db = TextDb::default();
        let builder = Cache::<String, String>::builder()
            .redis(s.clone())
            .loader(db.clone())
            .coherence(CoherenceMode::Tracking);
        shown.push(format!("{builder:?}"));
        let c = builder.build().unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(3), c.coherence_ready()).await;
        let loaded = c.get_or_load(&"k".into()).await;
        assert_eq!(loaded.unwrap().as_deref(), Some("loaded:k"), "{url}");
        if let Err(e) = c.invalidate(&"k".into()).await {
            errors.push(e);
        }
        if let Err(e) = s.ping().await {
            errors.push(e);
        }
        if let Err(e) = larder::core::Store::get(&s, "k").await {
            errors.push(e);
        }
        let journal = s.journal("web-1").unwrap();
        shown.extend([
            format!("{cfg:?}"),
            format!("{:?}", cfg.topology()),
            format!("{s:?}"),
            format!("{c:?}"),
            format!("{journal:?}"),
            format!("{:?}", s.breaker_states()),
            format!("{:?}", s.stats()),
            format!("{:?}", c.stats()),
        ]);
        c.close().await;
    }
    // Every topology's `Debug`, and a configuration error.
    for topology in [
        Topology::Cluster(vec![right.clone(), unreachable.clone()]),
        Topology::Sharded(vec![right.clone(), unreachable.clone()]),
    ] {
        let cfg = RedisConfig::builder(topology).build().unwrap();
        shown.push(format!("{cfg:?}"));
        shown.push(format!("{:?}", RedisStore::new(cfg).unwrap()));
    }
    for bad in [
        format!("redis://app:{SECRET}@127.0.0.1:99999999"),
        format!("rediss://app:{SECRET}@"),
        format!("http://app:{SECRET}@127.0.0.1:1"),
    ] {
        if let Err(e) = RedisConfig::from_url(&bad) {
            errors.push(e);
        }
    }
    // A socket URL carries its password in the query.
    let socket = format!("redis+unix:///tmp/larder.sock?pass={SECRET}");
    let cfg = RedisConfig::from_url(&socket).unwrap();
    shown.push(format!("{cfg:?}"));
    shown.push(format!("{:?}", RedisStore::new(cfg).unwrap()));
    shown.push(larder::redis::redact(&socket));

    let kinds: Vec<ErrorKind> = errors.iter().map(larder::core::Error::kind).collect();
    assert!(kinds.contains(&ErrorKind::Auth), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| matches!(
            k,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::CircuitOpen
        )),
        "{kinds:?}"
    );
    for e in &errors {
        shown.push(format!("{e}"));
        shown.push(format!("{e:?}"));
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            shown.push(format!("{s}"));
            shown.push(format!("{s:?}"));
            source = s.source();
        }
    }
    for text in &shown {
        assert!(!text.contains(SECRET), "the password shows in: {text}");
    }
    assert!(shown.len() > 30);
}

// ------------------------------------------------------------------ MONITOR

/// A raw connection in `MONITOR` mode, read on a thread until a line holds
/// `end`: every command the server ran meanwhile, scripts' included.
fn monitor(addr: SocketAddr, end: &'static str) -> std::thread::JoinHandle<Vec<Vec<Vec<u8>>>> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"MONITOR\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut ok = String::new();
    r.read_line(&mut ok).unwrap();
    assert_eq!(ok, "+OK\r\n");
    std::thread::spawn(move || {
        let mut commands = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap() == 0 {
                panic!("MONITOR connection closed");
            }
            let text = String::from_utf8_lossy(&line);
            if text.contains(end) {
                return commands;
            }
            commands.push(parse_monitor_line(&line));
        }
    })
}

/// `+<time> [<db> <client>] "ARG" "ARG" ...`, each argument quoted the
/// way `sdscatrepr` does (`\\`, `\"`, `\n`, `\r`, `\t`, `\a`, `\b`, `\xHH`).
fn parse_monitor_line(line: &[u8]) -> Vec<Vec<u8>> {
    let start = line
        .windows(2)
        .position(|w| w == b"] ")
        .unwrap_or_else(|| panic!("not a MONITOR line: {}", String::from_utf8_lossy(line)));
    let mut args = Vec::new();
    let mut i = start + 2;
    while i < line.len() {
        if line[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut arg = Vec::new();
        while line[i] != b'"' {
            if line[i] == b'\\' {
                i += 1;
                match line[i] {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = std::str::from_utf8(&line[i + 1..i + 3]).unwrap();
                        arg.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 2;
                    }
                    c => arg.push(c),
                }
            } else {
                arg.push(line[i]);
            }
            i += 1;
        }
        args.push(arg);
        i += 1;
    }
    args
}

#[test]
fn monitor_lines_parse_like_sdscatrepr_writes_them() {
    let line = b"+1700000000.000001 [0 lua] \"SET\" \"ns1:{a \\\"b\\\"}\" \"\\x00\\r\\n\\\\\"\r\n";
    assert_eq!(
        parse_monitor_line(line),
        vec![
            b"SET".to_vec(),
            b"ns1:{a \"b\"}".to_vec(),
            b"\x00\r\n\\".to_vec()
        ]
    );
}

/// What a command names that must stay in the namespace: its keys (as the
/// server itself finds them, `COMMAND GETKEYS`), the channels it publishes
/// or subscribes to, a `SCAN MATCH` pattern, a tracking prefix.
fn names_of(admin: &mut Connection, args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let after = |word: &str| -> Vec<Vec<u8>> {
        args.windows(2)
            .filter(|w| w[0].eq_ignore_ascii_case(word.as_bytes()))
            .map(|w| w[1].clone())
            .collect()
    };
    let mut names = match name.as_str() {
        "PUBLISH" | "SPUBLISH" => vec![args[1].clone()],
        "SUBSCRIBE" | "SSUBSCRIBE" | "PSUBSCRIBE" => args[1..].to_vec(),
        "SCAN" => after("MATCH"),
        "CLIENT" => after("PREFIX"),
        _ => Vec::new(),
    };
    let mut cmd = redis::cmd("COMMAND");
    cmd.arg("GETKEYS");
    for a in args {
        cmd.arg(a.as_slice());
    }
    if let Ok(keys) = cmd.query::<Vec<Vec<u8>>>(admin) {
        names.extend(keys);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_capture_sees_nothing_outside_the_namespace() {
    const END: &str = "larder-monitor-end";
    let server = RedisServer::start().unwrap();
    let mut admin = server.client().get_connection().unwrap();
    for k in ["outside", "ns10:{k1}", "ns2:{k1}", "ns1", "larder:{k1}"] {
        redis::cmd("SET")
            .arg(k)
            .arg("keep")
            .exec(&mut admin)
            .unwrap();
    }
    let capture = monitor(server.addr(), END);
    mixed_workload(&server.url(), "ns1").await;
    pubsub_eviction(&server.url(), "ns1").await;
    redis::cmd("ECHO").arg(END).exec(&mut admin).unwrap();
    let commands = capture.join().unwrap();

    let mut seen = std::collections::BTreeSet::new();
    let mut outside = Vec::new();
    for args in &commands {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        assert!(
            !matches!(name.as_str(), "KEYS" | "FLUSHALL" | "FLUSHDB" | "SWAPDB"),
            "{name} was sent"
        );
        for n in names_of(&mut admin, args) {
            if !n.starts_with(b"ns1:") {
                outside.push(format!(
                    "{:?} in {:?}",
                    String::from_utf8_lossy(&n),
                    args.iter()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect::<Vec<_>>()
                ));
            }
        }
        seen.insert(name);
    }
    assert!(outside.is_empty(), "outside the namespace: {outside:#?}");
    // The capture saw the workload: scripts and what they ran, the journal,
    // tracking, the clear.
    for must in [
        "EVALSHA",
        "MGET",
        "SET",
        "XADD",
        "XACK",
        "CLIENT",
        "SCAN",
        "UNLINK",
        "PUBLISH",
        "SUBSCRIBE",
    ] {
        assert!(seen.contains(must), "no {must} captured: {seen:?}");
    }
    for k in ["outside", "ns10:{k1}", "ns2:{k1}", "ns1", "larder:{k1}"] {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut admin).unwrap();
        assert_eq!(v.as_deref(), Some("keep"), "{k}");
    }
}
