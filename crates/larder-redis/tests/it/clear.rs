//! `clear_namespace`: SCAN + UNLINK on every node, only this namespace.

use std::time::Duration;

use larder_core::Store;
use larder_redis::{RedisStore, Topology};
use larder_testkit::{RedisCluster, RedisServer, start_masters};

use crate::quick_config;

const T: Duration = Duration::from_secs(60);

fn in_namespace(topology: Topology, ns: &str) -> RedisStore {
    RedisStore::new(quick_config(topology).namespace(ns).build().unwrap()).unwrap()
}

async fn fill(s: &RedisStore, n: usize) {
    for i in 0..n {
        s.set(&format!("k{i}"), b"v", T).await.unwrap();
    }
    s.invalidate("k0", T).await.unwrap(); // a version record too
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_removes_this_namespace_only_on_a_standalone_server() {
    let server = RedisServer::start().unwrap();
    let ours = in_namespace(Topology::Standalone(server.url()), "shop");
    let theirs = in_namespace(Topology::Standalone(server.url()), "shop2");
    let nested = in_namespace(Topology::Standalone(server.url()), "shop:eu");
    fill(&nested, 10).await;
    fill(&ours, 2500).await;
    fill(&theirs, 10).await;
    let mut c = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("shopping")
        .arg("x")
        .exec(&mut c)
        .unwrap();
    // A key that is not UTF-8, under the namespace, is removed too.
    redis::cmd("SET")
        .arg(&b"shop:{\xff}"[..])
        .arg("x")
        .exec(&mut c)
        .unwrap();
    // 2499 values left after the invalidation, k0's version record, the raw key.
    assert_eq!(ours.clear_namespace().await.unwrap(), 2501);
    assert_eq!(ours.get("k1").await.unwrap(), None);
    assert!(
        theirs.get("k1").await.unwrap().is_some(),
        "another namespace was touched"
    );
    assert!(
        nested.get("k1").await.unwrap().is_some(),
        "the namespace shop:eu was cleared with shop"
    );
    let other: Option<String> = redis::cmd("GET").arg("shopping").query(&mut c).unwrap();
    assert_eq!(other.as_deref(), Some("x"));
    assert_eq!(ours.clear_namespace().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_reaches_every_shard_and_every_cluster_master() {
    let masters = start_masters(3).unwrap();
    let sharded = in_namespace(
        Topology::Sharded(masters.iter().map(|m| m.url()).collect()),
        "ns",
    );
    fill(&sharded, 300).await;
    assert_eq!(sharded.clear_namespace().await.unwrap(), 300);
    for m in &masters {
        let mut c = m.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, 0, "{} kept keys", m.url());
    }

    let cluster = RedisCluster::start(3).unwrap();
    let s = in_namespace(Topology::Cluster(cluster.urls()), "ns");
    fill(&s, 300).await;
    assert_eq!(s.clear_namespace().await.unwrap(), 300);
    for m in cluster.nodes() {
        let mut c = m.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert_eq!(n, 0, "{} kept keys", m.url());
    }
}
