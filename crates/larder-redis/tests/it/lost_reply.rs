//! A write whose reply is lost (the server ran it, the connection died
//! before the answer arrived) is either reported truthfully after a retry or
//! not retried at all. The FaultProxy holds the replies, the test waits until
//! the server has answered (a gate, not a sleep), then cuts the connection.

use std::future::Future;
use std::time::Duration;

use larder_core::{Result, Store};
use larder_redis::{RedisStore, RetryPolicy, Topology};
use larder_testkit::{FaultProxy, RedisCluster, RedisServer};

use crate::{env, quick_config, raw_get};

const T: Duration = Duration::from_secs(30);

/// A store through `proxy` that retries idempotent commands, with a
/// deadline long enough that only the cut ends an attempt.
fn retrying_store(url: String) -> RedisStore {
    let cfg = quick_config(Topology::Standalone(url))
        .response_timeout(T)
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    RedisStore::new(cfg).unwrap()
}

/// Runs `call` with its reply lost once: the request reaches the server and
/// runs, the answer is held, the connection is cut, and what follows (a
/// retry or an error) is returned.
async fn with_lost_reply<T, F>(proxy: &FaultProxy, call: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let held = proxy.held_replies();
    proxy.set_replies_stalled(true);
    let task = tokio::spawn(call);
    proxy.wait_held_replies(held + 1).await;
    proxy.cut_all();
    proxy.set_replies_stalled(false);
    task.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_reports_what_happened() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let s = retrying_store(proxy.url());
    // Load both scripts, so the held reply is the script's answer, not NOSCRIPT.
    assert!(s.set_if_newer("warm", &env(1, b"w"), T).await.unwrap());
    assert!(s.get_or_set("warm2", b"w", T).await.unwrap().0);

    let mut lies = Vec::new();
    let s2 = s.clone();
    let written = with_lost_reply(&proxy, async move {
        s2.set_if_newer("v", &env(5, b"five"), T).await
    })
    .await;
    assert_eq!(
        raw_get(&server.url(), "larder:{v}"),
        Some(env(5, b"five")),
        "the write landed"
    );
    if !(written.as_ref().is_ok_and(|w| *w) || written.is_err()) {
        lies.push(format!(
            "set_if_newer said {written:?} for a write that landed"
        ));
    }

    let s2 = s.clone();
    let set = with_lost_reply(&proxy, async move { s2.get_or_set("g", b"mine", T).await }).await;
    assert_eq!(
        raw_get(&server.url(), "larder:{g}").as_deref(),
        Some(&b"mine"[..])
    );
    if !(set.as_ref().is_ok_and(|(set, v)| *set && v == b"mine") || set.is_err()) {
        lies.push(format!("get_or_set said {set:?} for a value it set"));
    }

    s.set("d", b"x", T).await.unwrap();
    let s2 = s.clone();
    let deleted = with_lost_reply(&proxy, async move { s2.delete("d").await }).await;
    assert_eq!(raw_get(&server.url(), "larder:{d}"), None);
    if !(deleted.as_ref().is_ok_and(|d| *d) || deleted.is_err()) {
        lies.push(format!("delete said {deleted:?} for a key it deleted"));
    }
    assert!(lies.is_empty(), "{lies:#?}");
}

/// On a Cluster the client library must not resend on its own: an
/// increment whose reply is lost runs once, and the caller hears of the
/// failure rather than a count that includes a second, hidden increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_write_is_not_resent_after_a_lost_reply() {
    let (cluster, proxies) =
        tokio::task::spawn_blocking(|| RedisCluster::start_proxied(1).unwrap())
            .await
            .unwrap();
    let proxy = &proxies[0];
    let cfg = quick_config(Topology::Cluster(vec![proxy.url()]))
        .response_timeout(T)
        .retry(RetryPolicy::default())
        .build()
        .unwrap();
    let s = RedisStore::new(cfg).unwrap();
    assert_eq!(s.incr_with_expiry("n", 1, T).await.unwrap(), 1);

    let s2 = s.clone();
    let r = with_lost_reply(proxy, async move { s2.incr_with_expiry("n", 1, T).await }).await;
    let mut c = cluster.nodes()[0].client().get_connection().unwrap();
    let n: i64 = redis::cmd("GET").arg("larder:{n}").query(&mut c).unwrap();
    assert_eq!(n, 2, "the increment ran {} times (answer: {r:?})", n - 1);
    assert!(r.is_err(), "a lost reply is an error, not a guess: {r:?}");
}
