//! The lock's keys live where no user key can land.

use larder_core::KeySpace;
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
