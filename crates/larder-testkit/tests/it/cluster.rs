use std::collections::BTreeSet;

use larder_testkit::{CLUSTER_SLOTS, RedisCluster};
use redis::AsyncCommands;

#[test]
fn three_master_cluster_covers_every_slot() {
    let cluster = RedisCluster::start(3).unwrap();
    assert_eq!(cluster.nodes().len(), 3);

    // Every node's view of CLUSTER SLOTS covers 0..=16383 exactly once, over 3 owners.
    for node in cluster.nodes() {
        let mut con = node.client().get_connection().unwrap();
        // Each entry: [first, last, [ip, port, id, metadata], ...].
        let entries: Vec<Vec<redis::Value>> =
            redis::cmd("CLUSTER").arg("SLOTS").query(&mut con).unwrap();
        let slots: Vec<(u16, u16, u16)> = entries
            .iter()
            .map(|e| {
                let first: u16 = redis::from_redis_value_ref(&e[0]).unwrap();
                let last: u16 = redis::from_redis_value_ref(&e[1]).unwrap();
                let node: Vec<redis::Value> = redis::from_redis_value_ref(&e[2]).unwrap();
                let port: u16 = redis::from_redis_value_ref(&node[1]).unwrap();
                (first, last, port)
            })
            .collect();
        let mut ranges: Vec<(u16, u16)> = slots.iter().map(|(a, b, _)| (*a, *b)).collect();
        ranges.sort();
        let mut next = 0u32;
        for (a, b) in &ranges {
            assert_eq!(u32::from(*a), next, "gap or overlap before slot {a}");
            next = u32::from(*b) + 1;
        }
        assert_eq!(next, u32::from(CLUSTER_SLOTS));
        let owners: BTreeSet<u16> = slots.iter().map(|(_, _, port)| *port).collect();
        assert_eq!(owners.len(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_spreads_keys_over_all_masters() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3).unwrap())
        .await
        .unwrap();
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    for i in 0..300 {
        let _: () = con.set(format!("key:{i}"), i).await.unwrap();
    }
    for i in 0..300 {
        let v: i32 = con.get(format!("key:{i}")).await.unwrap();
        assert_eq!(v, i);
    }
    // Each master holds some of the keys, and the slot owner is the one given at start.
    let mut total = 0;
    for (idx, node) in cluster.nodes().iter().enumerate() {
        let mut c = node.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(n > 0, "node {idx} holds no key");
        total += n;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg("key:0")
            .query(&mut c)
            .unwrap();
        let owner = cluster.owner_of_slot(slot);
        let mut oc = cluster.nodes()[owner].client().get_connection().unwrap();
        let v: Option<i32> = redis::cmd("GET").arg("key:0").query(&mut oc).unwrap();
        assert_eq!(v, Some(0));
    }
    assert_eq!(total, 300);
}

#[test]
fn a_restarted_cluster_node_rejoins() {
    let mut cluster = RedisCluster::start(3).unwrap();
    cluster.node_mut(1).kill();
    cluster.node_mut(1).restart().unwrap();
    // It kept nodes.conf, so it knows its slots and peers again.
    cluster.wait_healthy().unwrap();
}
