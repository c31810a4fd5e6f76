//! The invalidation stream: tracking and pub/sub, on one server and on
//! shards, through lost connections. Every wait is the next event under a
//! bounded timeout, never a sleep.

use std::time::Duration;

use larder_core::{ErrorKind, KeySpace, Store};
use larder_redis::{CoherenceMode, FlushReason, Invalidation, Invalidations, RedisStore, Topology};
use larder_testkit::{FaultProxy, RedisServer, start_masters};

use crate::quick_config;

const WAIT: Duration = Duration::from_secs(5);

fn ns_store(topology: Topology, ns: &str) -> RedisStore {
    RedisStore::new(quick_config(topology).namespace(ns).build().unwrap()).unwrap()
}

async fn next(inv: &mut Invalidations) -> Invalidation {
    tokio::time::timeout(WAIT, inv.recv())
        .await
        .expect("no invalidation within 5 s")
        .expect("the stream ended")
}

fn keys(ks: &[&str]) -> Invalidation {
    Invalidation::Keys(ks.iter().map(|k| (*k).to_owned()).collect())
}

fn strings(ks: &[&str]) -> Vec<String> {
    ks.iter().map(|k| (*k).to_owned()).collect()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn set(c: &mut redis::aio::MultiplexedConnection, key: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg("x")
        .exec_async(c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_sees_writes_to_the_namespace_by_any_client_and_nothing_else() {
    let server = RedisServer::start().unwrap();
    let store = ns_store(Topology::Standalone(server.url()), "t1");
    let mut inv = store.invalidations(CoherenceMode::Tracking).await.unwrap();
    assert!(inv.stats().connected);
    let mut c = raw(&server.url()).await;

    set(&mut c, "t1:{k1}").await;
    assert_eq!(next(&mut inv).await, keys(&["k1"]));

    // Outside the namespace (and a namespace that only starts the same):
    // nothing. The next event is the in-namespace write after them.
    set(&mut c, "other:{k1}").await;
    set(&mut c, "t1x:{k1}").await;
    set(&mut c, "t1:{k2}").await;
    assert_eq!(next(&mut inv).await, keys(&["k2"]));

    // An internal key names its user key; one event names it once; a
    // helper key names none and is counted.
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("t1:{k3}:v")
        .arg(1)
        .cmd("SET")
        .arg("t1:{k3}")
        .arg(1)
        .cmd("SET")
        .arg("t1:{q}:#ready")
        .arg(1)
        .exec_async(&mut c)
        .await
        .unwrap();
    assert_eq!(next(&mut inv).await, keys(&["k3"]));
    // The store's own writes are other connections: seen too.
    store.set("k4", b"v", WAIT).await.unwrap();
    assert_eq!(next(&mut inv).await, keys(&["k4"]));

    let st = inv.stats();
    assert_eq!((st.keys, st.flushes, st.ignored_keys), (4, 0, 1), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_flushes_on_a_killed_connection_and_tracks_again() {
    let server = RedisServer::start().unwrap();
    let store = ns_store(Topology::Standalone(server.url()), "t2");
    let mut inv = store.invalidations(CoherenceMode::Tracking).await.unwrap();
    let mut c = raw(&server.url()).await;

    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    let name = format!("name=larder-inv-{}", inv.sender_id());
    let line = list
        .lines()
        .find(|l| l.split(' ').any(|f| f == name))
        .unwrap_or_else(|| panic!("no {name} in\n{list}"));
    let id = line.split(' ').find_map(|f| f.strip_prefix("id=")).unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(killed, 1);

    assert_eq!(
        next(&mut inv).await,
        Invalidation::Flush(FlushReason::Disconnected)
    );
    // Tracking is on again; what was cached meanwhile may be stale.
    assert_eq!(
        next(&mut inv).await,
        Invalidation::Flush(FlushReason::Reconnected)
    );
    set(&mut c, "t2:{after}").await;
    assert_eq!(next(&mut inv).await, keys(&["after"]));
    let st = inv.stats();
    assert_eq!(
        (st.disconnects, st.reconnects, st.flushes, st.connected),
        (1, 1, 2, true),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_flushes_on_flushdb() {
    let server = RedisServer::start().unwrap();
    let store = ns_store(Topology::Standalone(server.url()), "t3");
    let mut inv = store.invalidations(CoherenceMode::Tracking).await.unwrap();
    let mut c = raw(&server.url()).await;
    set(&mut c, "t3:{k}").await;
    assert_eq!(next(&mut inv).await, keys(&["k"]));
    redis::cmd("FLUSHDB").exec_async(&mut c).await.unwrap();
    assert_eq!(
        next(&mut inv).await,
        Invalidation::Flush(FlushReason::Server)
    );
    assert_eq!(inv.stats().server_flushes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_falls_behind_gets_one_overflow_flush() {
    let server = RedisServer::start().unwrap();
    let store = ns_store(Topology::Standalone(server.url()), "t4");
    let mut inv = store.invalidations(CoherenceMode::Tracking).await.unwrap();
    let mut c = raw(&server.url()).await;
    // Sequential writes: one invalidation each, far more than the buffer.
    let n = 4 * larder_redis::INVALIDATION_BUFFER;
    for i in 0..n {
        set(&mut c, &format!("t4:{{k{i}}}")).await;
    }
    set(&mut c, "t4:{last}").await;
    let mut seen_keys = 0;
    loop {
        match next(&mut inv).await {
            Invalidation::Keys(k) => seen_keys += k.len(),
            Invalidation::Flush(FlushReason::Overflow) => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        seen_keys <= larder_redis::INVALIDATION_BUFFER,
        "{seen_keys}"
    );
    // New events flow again (a few of the burst may come first, if the
    // connection was still reading them when the flush went out).
    set(&mut c, "t4:{fresh}").await;
    loop {
        match next(&mut inv).await {
            Invalidation::Keys(k) if k == ["fresh"] => break,
            Invalidation::Keys(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(inv.stats().overflows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_reaches_the_others_skips_its_own_and_ignores_foreign_messages() {
    let server = RedisServer::start().unwrap();
    let a = ns_store(Topology::Standalone(server.url()), "t5");
    let b = ns_store(Topology::Standalone(server.url()), "t5");
    let mut a_inv = a.invalidations(CoherenceMode::PubSub).await.unwrap();
    let mut b_inv = b.invalidations(CoherenceMode::PubSub).await.unwrap();
    assert_ne!(a_inv.sender_id(), b_inv.sender_id());

    a.publish_invalidation(a_inv.sender_id(), &strings(&["k1", "k2", "k1"]))
        .await
        .unwrap();
    assert_eq!(next(&mut b_inv).await, keys(&["k1", "k2"]));
    // A's next event is B's later message: its own one was skipped.
    b.publish_invalidation(b_inv.sender_id(), &strings(&["k3"]))
        .await
        .unwrap();
    assert_eq!(next(&mut a_inv).await, keys(&["k3"]));
    assert_eq!(a_inv.stats().own_skipped, 1);

    // A foreign message on the channel is counted and skipped.
    let mut c = raw(&server.url()).await;
    for junk in [&b"not ours"[..], b"LI\x01\x011\x05ab"] {
        redis::cmd("PUBLISH")
            .arg("t5:#inv")
            .arg(junk)
            .exec_async(&mut c)
            .await
            .unwrap();
    }
    a.publish_invalidation(a_inv.sender_id(), &strings(&["k4"]))
        .await
        .unwrap();
    assert_eq!(next(&mut b_inv).await, keys(&["k4"]));
    let st = b_inv.stats();
    assert_eq!((st.ignored_messages, st.flushes), (2, 0), "{st:?}");

    // An external write is not seen in pub/sub mode (documented).
    set(&mut c, "t5:{external}").await;
    a.publish_invalidation(a_inv.sender_id(), &strings(&["k5"]))
        .await
        .unwrap();
    assert_eq!(next(&mut b_inv).await, keys(&["k5"]));

    // Bad input is typed.
    let e = a
        .publish_invalidation(&"s".repeat(256), &strings(&["k"]))
        .await;
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidArgument);
    let e = a.publish_invalidation("s", &strings(&[""])).await;
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidKey);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_flushes_when_the_generation_moved_while_it_was_away_and_only_then() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let a = ns_store(Topology::Standalone(server.url()), "t6");
    let b = ns_store(Topology::Standalone(proxy.url()), "t6");
    let mut b_inv = b.invalidations(CoherenceMode::PubSub).await.unwrap();
    a.publish_invalidation("a", &strings(&["k0"]))
        .await
        .unwrap();
    assert_eq!(next(&mut b_inv).await, keys(&["k0"]));

    // A message published while B's link holds every byte, then cut: it
    // never reaches B, but it moved the generation.
    proxy.set_stalled(true);
    a.publish_invalidation("a", &strings(&["lost"]))
        .await
        .unwrap();
    proxy.cut_all();
    proxy.set_stalled(false);
    assert_eq!(
        next(&mut b_inv).await,
        Invalidation::Flush(FlushReason::GenerationChanged)
    );
    tokio::time::timeout(WAIT, b_inv.wait_connected(1))
        .await
        .unwrap();

    // Negative control: a cut with nothing published meanwhile flushes nothing.
    proxy.cut_all();
    tokio::time::timeout(WAIT, b_inv.wait_connected(2))
        .await
        .expect("B never reconnected");
    a.publish_invalidation("a", &strings(&["after"]))
        .await
        .unwrap();
    assert_eq!(next(&mut b_inv).await, keys(&["after"]));
    let st = b_inv.stats();
    assert_eq!(
        (st.reconnects, st.generation_flushes, st.flushes),
        (2, 1, 1),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_store_merges_every_node_into_one_stream() {
    let masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
    let store = ns_store(Topology::Sharded(urls.clone()), "t7");
    let publisher = ns_store(Topology::Sharded(urls.clone()), "t7");
    // One key per node.
    let mut per_node: Vec<Option<String>> = vec![None; 3];
    for i in 0.. {
        let k = format!("k{i}");
        let n = store.shard_of(&k).unwrap().0;
        per_node[n].get_or_insert(k);
        if per_node.iter().all(Option::is_some) {
            break;
        }
    }
    let per_node: Vec<String> = per_node.into_iter().map(Option::unwrap).collect();
    let ks = KeySpace::new("t7").unwrap();

    let mut tracking = store.invalidations(CoherenceMode::Tracking).await.unwrap();
    let mut pubsub = store.invalidations(CoherenceMode::PubSub).await.unwrap();
    for (n, k) in per_node.iter().enumerate() {
        let mut c = raw(&urls[n]).await;
        set(&mut c, &ks.data_key(k).unwrap()).await;
        assert_eq!(next(&mut tracking).await, keys(&[k]), "node {n}");
    }
    // One publish of all three keys: one message per node, each on its node.
    publisher
        .publish_invalidation("p", &per_node)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        match next(&mut pubsub).await {
            Invalidation::Keys(k) => got.extend(k),
            other => panic!("{other:?}"),
        }
    }
    got.sort();
    let mut want = per_node.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(tracking.stats().connected && pubsub.stats().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_says_unsupported() {
    // No server needed: the check comes before any connection.
    let store = ns_store(
        Topology::Cluster(vec!["redis://127.0.0.1:1/".to_owned()]),
        "t8",
    );
    for mode in [CoherenceMode::Tracking, CoherenceMode::PubSub] {
        let e = store.invalidations(mode).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }
    let e = store.publish_invalidation("s", &strings(&["k"])).await;
    assert_eq!(e.unwrap_err().kind(), ErrorKind::Unsupported);
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_work_over_tls() {
    let server = RedisServer::builder().tls().start().unwrap();
    let cfg = quick_config(Topology::Standalone(server.tls_url()))
        .namespace("t9")
        .tls_root_cert(server.ca_pem().unwrap())
        .build()
        .unwrap();
    let store = RedisStore::new(cfg).unwrap();
    let mut tracking = store.invalidations(CoherenceMode::Tracking).await.unwrap();
    let mut pubsub = store.invalidations(CoherenceMode::PubSub).await.unwrap();
    store.set("k", b"v", WAIT).await.unwrap();
    assert_eq!(next(&mut tracking).await, keys(&["k"]));
    store
        .publish_invalidation("other", &strings(&["k"]))
        .await
        .unwrap();
    assert_eq!(next(&mut pubsub).await, keys(&["k"]));
}
