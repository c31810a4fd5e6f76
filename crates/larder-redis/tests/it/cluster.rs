use std::time::Duration;

use larder_core::{Store, StoreEntry};
use larder_redis::{RedisStore, Topology};
use larder_testkit::RedisCluster;

use crate::{env, quick_config};

const T: Duration = Duration::from_secs(30);

async fn cluster_store() -> (RedisCluster, RedisStore) {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3).unwrap())
        .await
        .unwrap();
    let cfg = quick_config(Topology::Cluster(cluster.urls()))
        .response_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    (cluster, RedisStore::new(cfg).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_a_three_master_cluster() {
    let (cluster, s) = cluster_store().await;
    let keys: Vec<String> = (0..300).map(|i| format!("item:{i}")).collect();
    let vals: Vec<Vec<u8>> = (0..300).map(|i| format!("v{i}").into_bytes()).collect();
    for (k, v) in keys.iter().zip(&vals).take(100) {
        s.set(k, v, T).await.unwrap();
    }
    let entries: Vec<StoreEntry<'_>> = keys[100..]
        .iter()
        .zip(&vals[100..])
        .map(|(k, v)| StoreEntry {
            key: k,
            value: v,
            ttl: T,
        })
        .collect();
    s.set_many(&entries).await.unwrap();

    // Keys landed on all three masters.
    for (i, node) in cluster.nodes().iter().enumerate() {
        let mut c = node.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(n > 50, "master {i} holds only {n} keys");
    }

    // A multi-slot get_many, in order.
    let ask: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = s.get_many(&ask).await.unwrap();
    for (g, v) in got.iter().zip(&vals) {
        assert_eq!(g.as_ref(), Some(v));
    }
    assert_eq!(s.get("item:7").await.unwrap().as_deref(), Some(&b"v7"[..]));
    assert!(s.ttl("item:7").await.unwrap().is_some());
    assert_eq!(s.delete_many(&ask[..150]).await.unwrap(), 150);
    assert!(s.delete("item:200").await.unwrap());
    assert_eq!(s.get("item:0").await.unwrap(), None);

    // Scripts run on the owning master.
    assert!(s.set_if_newer("v", &env(2, b"b"), T).await.unwrap());
    assert!(!s.set_if_newer("v", &env(1, b"a"), T).await.unwrap());
    assert!(s.set_if_absent("lease", b"x", T).await.unwrap());
    assert_eq!(s.incr_with_expiry("n", 2, T).await.unwrap(), 2);
}
