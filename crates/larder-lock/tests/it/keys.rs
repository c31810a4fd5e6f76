//! The lock's keys live where no user key can land.

use larder_core::KeySpace;
use larder_lock::NodeWarning;
use larder_testkit::RedisServer;

use crate::{cfg, manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_are_never_data_keys_of_user_keys() {
    let server = RedisServer::start().unwrap();
    let m = manager(&[server.url()], cfg(60_000));
    let g = m.acquire("x").await.unwrap();
    let mut con = server.client().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(!keys.is_empty());
    let ks = KeySpace::default();
    for k in &keys {
        assert_eq!(
            ks.user_key(k),
            None,
            "the lock wrote {k:?}, the data key of a user key"
        );
    }
    let user: bool = redis::cmd("EXISTS")
        .arg(ks.data_key("lock:x").unwrap())
        .query(&mut con)
        .unwrap();
    assert!(!user);
    assert!(g.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_may_evict_lock_keys_is_reported() {
    let evicting = RedisServer::builder()
        .arg("--maxmemory-policy")
        .arg("allkeys-lru")
        .start()
        .unwrap();
    let safe = RedisServer::start().unwrap();
    let m = manager(&[evicting.url(), safe.url(), safe.url()], cfg(5_000));
    let warnings = m.check_nodes().await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    match &warnings[0] {
        NodeWarning::Evicts { node, policy } => {
            assert_eq!(policy, "allkeys-lru");
            assert!(node.contains(&evicting.port().to_string()));
        }
        other => panic!("{other:?}"),
    }
    let ok = manager(&[safe.url()], cfg(5_000));
    assert!(ok.check_nodes().await.is_empty());
}
