//! The lock connects with the same security settings as the store: TLS
//! with a private CA, and an ACL user.

use std::time::Duration;

use larder_testkit::RedisServer;

use crate::{bounded, cfg, manager};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_over_tls_with_an_acl_user() {
    let server = tokio::task::spawn_blocking(|| {
        RedisServer::builder()
            .tls()
            .requirepass("not-the-lock")
            .acl_user("locker", "s3cret")
            .start()
            .unwrap()
    })
    .await
    .unwrap();
    let url = format!("rediss://locker:s3cret@127.0.0.1:{}/", server.port());
    let mut c = cfg(5_000);
    c.tls_root_cert = server.ca_pem();
    let holder = manager(std::slice::from_ref(&url), c.clone());
    let waiter = manager(std::slice::from_ref(&url), c.clone());
    let warnings = holder.check_nodes().await;
    assert!(warnings.is_empty(), "{warnings:?}");
    let g = holder.acquire("tls").await.unwrap();
    assert!(g.fencing_token() > 0);
    // A contended wait: the waiter subscribes over TLS as the ACL user and
    // is woken by the release.
    let w = tokio::spawn(async move {
        let g = waiter
            .acquire_wait("tls", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(g.release().await.unwrap());
    });
    assert!(g.release().await.unwrap());
    bounded("the waiter over TLS", w).await.unwrap();

    // Without the CA the server is not trusted; with a wrong password the
    // user is refused: no lock either way.
    let mut untrusted = c.clone();
    untrusted.tls_root_cert = None;
    let m = manager(std::slice::from_ref(&url), untrusted);
    assert!(m.try_acquire("tls").await.unwrap().is_none());
    let wrong = format!("rediss://locker:wrong@127.0.0.1:{}/", server.port());
    let m = manager(&[wrong], c);
    assert!(m.try_acquire("tls").await.unwrap().is_none());
}
