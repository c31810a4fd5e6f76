use std::time::Duration;

use larder_core::envelope::{self, Compression, EnvelopeMeta};
use larder_core::{ErrorKind, Postcard, Store, StoreEntry};
use larder_redis::{RedisConfig, RedisStore, Topology};
use larder_testkit::RedisServer;

use crate::{batched_store, env, quick_config, raw_get, store};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn get_set_delete_and_ttl() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert_eq!(s.get("k").await.unwrap(), None);
    s.set("k", b"v1", T).await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    // Namespaced and hash-tagged in Redis.
    assert_eq!(
        raw_get(&server.url(), "larder:{k}").as_deref(),
        Some(&b"v1"[..])
    );
    let ttl = s.ttl("k").await.unwrap().remaining().unwrap();
    assert!(ttl <= T && ttl > Duration::from_secs(25), "{ttl:?}");
    assert!(s.delete("k").await.unwrap());
    assert!(!s.delete("k").await.unwrap());
    assert_eq!(s.ttl("k").await.unwrap(), larder_redis::KeyTtl::Missing);
}

#[tokio::test]
async fn bulk_operations_keep_order() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let vals: Vec<Vec<u8>> = (0..50).map(|i| format!("v{i}").into_bytes()).collect();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let entries: Vec<StoreEntry<'_>> = keys
        .iter()
        .zip(&vals)
        .map(|(k, v)| StoreEntry {
            key: k,
            value: v,
            ttl: T,
        })
        .collect();
    s.set_many(&entries).await.unwrap();
    let mut ask: Vec<&str> = keys.iter().map(String::as_str).rev().collect();
    ask.insert(10, "missing");
    let got = s.get_many(&ask).await.unwrap();
    assert_eq!(got.len(), 51);
    assert_eq!(got[10], None);
    assert_eq!(got[0].as_deref(), Some(&b"v49"[..]));
    assert_eq!(got[50].as_deref(), Some(&b"v0"[..]));
    assert_eq!(s.delete_many(&["k1", "k2", "missing"]).await.unwrap(), 2);
    assert!(s.get_many(&[]).await.unwrap().is_empty());
    let stats = s.stats();
    assert_eq!(
        stats.command("MGET").unwrap().calls,
        1,
        "an empty get_many sends nothing"
    );
    assert_eq!(stats.command("PIPELINE").unwrap().calls, 1);
}

#[tokio::test]
async fn bad_input_is_typed_and_touches_nothing() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert_eq!(s.get("").await.unwrap_err().kind(), ErrorKind::InvalidKey);
    let long = "x".repeat(larder_core::MAX_KEY_LEN + 1);
    assert_eq!(
        s.set(&long, b"v", T).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    assert_eq!(
        s.set("k", b"v", Duration::ZERO).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        s.set_if_newer("k", b"not an envelope", T)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        s.get_many(&["a", ""]).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    assert_eq!(s.stats().commands.len(), 0, "no command was sent");
}

/// `RedisStore::get` (the inherent method, what `store.get` calls on the
/// store itself) answers as `Store::get` (what a `dyn Store` calls) does,
/// with and without the batcher: hit, miss, bad key.
#[tokio::test]
async fn the_inherent_get_answers_as_the_trait_get() {
    let server = RedisServer::start().unwrap();
    let plain = store(&server.url());
    let batched = batched_store(&server.url());
    plain.set("here", b"v", T).await.unwrap();
    for s in [&plain, &batched] {
        let as_dyn: &dyn Store = s;
        for key in ["here", "absent"] {
            let inherent = RedisStore::get(s, key).await.unwrap();
            assert_eq!(inherent, as_dyn.get(key).await.unwrap(), "{key}");
            assert_eq!(inherent.is_some(), key == "here", "{key}");
        }
        let long = "x".repeat(larder_core::MAX_KEY_LEN + 1);
        for bad in ["", long.as_str()] {
            assert_eq!(
                RedisStore::get(s, bad).await.unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
            assert_eq!(
                as_dyn.get(bad).await.unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
    }
    // Both paths reached Redis: two gets each through the plain store,
    // and the batched store's through its batches.
    assert_eq!(plain.stats().command("GET").unwrap().calls, 4);
    let batches = batched.batch_stats().unwrap();
    assert_eq!(batches.keys, 4, "{batches:?}");
}

#[tokio::test]
async fn set_if_absent_and_get_or_set_are_atomic() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert!(s.set_if_absent("lease", b"me", T).await.unwrap());
    assert!(!s.set_if_absent("lease", b"you", T).await.unwrap());
    assert_eq!(s.get("lease").await.unwrap().as_deref(), Some(&b"me"[..]));

    assert_eq!(
        s.get_or_set("g", b"first", T).await.unwrap(),
        (true, b"first".to_vec())
    );
    assert_eq!(
        s.get_or_set("g", b"second", T).await.unwrap(),
        (false, b"first".to_vec())
    );
}

#[tokio::test]
async fn set_if_newer_refuses_older_versions() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert!(
        s.set_if_newer("p", &env(5, b"five"), T).await.unwrap(),
        "absent: written"
    );
    assert!(
        !s.set_if_newer("p", &env(4, b"four"), T).await.unwrap(),
        "older: refused"
    );
    assert!(
        !s.set_if_newer("p", &env(5, b"again"), T).await.unwrap(),
        "equal: refused"
    );
    assert!(
        s.set_if_newer("p", &env(6, b"six"), T).await.unwrap(),
        "newer: written"
    );
    let got = s.get("p").await.unwrap().unwrap();
    assert_eq!(envelope::decode(&got).unwrap().payload(), b"six");
    // Version order is numeric, not lexical on decimal text.
    assert!(s.set_if_newer("p", &env(256, b"x"), T).await.unwrap());
    assert!(!s.set_if_newer("p", &env(255, b"y"), T).await.unwrap());
    // Foreign bytes under the key are overwritten.
    s.set("p", b"garbage", T).await.unwrap();
    assert!(s.set_if_newer("p", &env(1, b"one"), T).await.unwrap());
    // The TTL is set.
    assert!(s.ttl("p").await.unwrap().remaining().is_some());
}

#[tokio::test]
async fn incr_with_expiry_sets_ttl_once() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert_eq!(s.incr_with_expiry("hits", 1, T).await.unwrap(), 1);
    assert_eq!(
        s.incr_with_expiry("hits", 4, Duration::from_secs(999))
            .await
            .unwrap(),
        5
    );
    let ttl = s.ttl("hits").await.unwrap().remaining().unwrap();
    assert!(ttl <= T, "the first TTL stays: {ttl:?}");
}

#[tokio::test]
async fn corrupt_bytes_are_a_typed_counted_miss() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let meta = EnvelopeMeta::starting_at(1, T, T);
    let good = envelope::encode_value(
        &Postcard,
        meta,
        Some(&"hello".to_string()),
        Compression::None,
    )
    .unwrap();
    s.set("good", &good, T).await.unwrap();
    let (m, v) = s
        .get_decoded::<_, String>(&Postcard, "good")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.version, v.as_deref()), (0, Some("hello")));

    for (i, bad) in [&b"{\"json\":1}"[..], b"", &good[..20], &[0x4C, 9, 0, 1]]
        .iter()
        .enumerate()
    {
        let key = format!("bad{i}");
        s.set(&key, bad, T).await.unwrap();
        let e = s
            .get_decoded::<_, String>(&Postcard, &key)
            .await
            .unwrap_err();
        assert!(e.is_corrupt(), "{e}");
    }
    assert_eq!(s.stats().corrupt, 4);
    assert_eq!(
        s.get_decoded::<_, String>(&Postcard, "absent")
            .await
            .unwrap(),
        None
    );
}

// One thread: the 1,000 callers all queue before the batching task runs, so
// the number of MGETs is exact.
#[tokio::test(flavor = "current_thread")]
async fn auto_batching_answers_each_caller_and_batches() {
    let server = RedisServer::start().unwrap();
    let cfg = quick_config(Topology::Standalone(server.url()))
        .auto_batch(64)
        .build()
        .unwrap();
    let s = RedisStore::new(cfg).unwrap();
    for i in 0..200 {
        s.set(&format!("b{i}"), format!("v{i}").as_bytes(), T)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for round in 0..5 {
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("b{}", (i + round * 37) % 250);
                (key.clone(), s.get(&key).await.unwrap())
            }));
        }
    }
    for t in tasks {
        let (key, v) = t.await.unwrap();
        let n: usize = key[1..].parse().unwrap();
        let want = (n < 200).then(|| format!("v{n}").into_bytes());
        assert_eq!(v, want, "{key}");
    }
    let stats = s.stats();
    let mgets = stats.command("MGET").unwrap().calls;
    assert!(
        stats.command("GET").is_none(),
        "every get went through the batcher"
    );
    assert_eq!(
        mgets,
        1000u64.div_ceil(64),
        "1000 gets in batches of at most 64 keys"
    );
}

#[tokio::test]
async fn acl_auth_right_and_wrong() {
    let server = RedisServer::builder()
        .acl_user("app", "app-pass")
        .requirepass("root-pass")
        .start()
        .unwrap();
    let good = store(&server.url_with_auth("app", "app-pass"));
    good.set("k", b"v", T).await.unwrap();
    assert_eq!(good.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    let bad = store(&server.url_with_auth("app", "nope"));
    let e = bad.get("k").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    // Nobody prints the password.
    assert!(!format!("{bad:?}").contains("nope"));
    assert!(!format!("{:?}", bad.breaker_states()).contains("nope"));

    let anonymous = store(&server.url());
    assert_eq!(
        anonymous.get("k").await.unwrap_err().kind(),
        ErrorKind::Auth
    );
}

#[tokio::test]
async fn namespaces_are_separate() {
    let server = RedisServer::start().unwrap();
    let a = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(server.url()))
            .namespace("a")
            .build()
            .unwrap(),
    )
    .unwrap();
    let b = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(server.url()))
            .namespace("b")
            .build()
            .unwrap(),
    )
    .unwrap();
    a.set("k", b"from a", T).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
    assert_eq!(
        raw_get(&server.url(), "a:{k}").as_deref(),
        Some(&b"from a"[..])
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_with_a_generated_certificate() {
    let server = RedisServer::builder().tls().start().unwrap();
    let cfg = quick_config(Topology::Standalone(server.tls_url()))
        .tls_root_cert(server.ca_pem().unwrap())
        .build()
        .unwrap();
    let s = RedisStore::new(cfg).unwrap();
    s.set("secret", b"over tls", T).await.unwrap();
    assert_eq!(
        s.get("secret").await.unwrap().as_deref(),
        Some(&b"over tls"[..])
    );

    // Without the CA the certificate is refused; plain text to a TLS port fails too.
    let untrusted = store(&server.tls_url());
    assert!(
        untrusted
            .get("secret")
            .await
            .unwrap_err()
            .is_backend_unavailable()
    );
    let plain = store(&server.url());
    assert!(plain.get("secret").await.is_err());
}

/// Building a store needs no Tokio runtime (a plain `#[test]`, a `main`
/// before the runtime starts); the batching task starts with the first `get`.
#[test]
fn a_store_is_built_outside_a_runtime() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let batched = batched_store(&url);
    for topology in [
        Topology::Cluster(vec![url.clone()]),
        Topology::Sharded(vec![url.clone()]),
    ] {
        RedisStore::new(quick_config(topology).auto_batch(16).build().unwrap()).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        batched.set("k", b"v", T).await.unwrap();
        assert_eq!(batched.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    });
    assert_eq!(batched.stats().command("MGET").unwrap().calls, 1);
}

/// `ttl` tells a missing key from a key without expiry.
#[tokio::test]
async fn ttl_tells_missing_from_persistent() {
    use larder_redis::KeyTtl;
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert_eq!(s.ttl("gone").await.unwrap(), KeyTtl::Missing);
    let mut raw = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("larder:{forever}")
        .arg("v")
        .exec(&mut raw)
        .unwrap();
    assert_eq!(s.ttl("forever").await.unwrap(), KeyTtl::Persistent);
    s.set("k", b"v", T).await.unwrap();
    let KeyTtl::Expires(left) = s.ttl("k").await.unwrap() else {
        panic!("a key set with a TTL expires")
    };
    assert!(left <= T && left > Duration::from_secs(25), "{left:?}");
    assert!(s.ttl("k").await.unwrap().remaining().is_some());
    assert_eq!(KeyTtl::Persistent.remaining(), None);
}
