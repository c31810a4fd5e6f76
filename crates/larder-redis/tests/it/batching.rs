//! Auto-batching: each caller's wait is bounded by its own deadline, however
//! long the queue behind a slow `MGET`.

use std::time::Duration;

use larder_core::Store;
use larder_redis::{RedisStore, Topology};
use larder_testkit::{FaultProxy, RedisServer};

use crate::quick_config;

#[tokio::test]
async fn each_batched_get_is_bounded_by_its_own_deadline() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    // 300 ms to connect + 300 ms to answer, no retries: one call's worst
    // case is 600 ms (README, "Worst case of one call").
    let worst = Duration::from_millis(600);
    let cfg = quick_config(Topology::Standalone(proxy.url()))
        .auto_batch(1)
        .build()
        .unwrap();
    let s = RedisStore::new(cfg).unwrap();
    s.set("k", b"v", Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));

    // The server goes silent. Virtual time from here: the deadlines fire
    // as soon as nothing else can happen, and the waits are measured
    // exactly, without a wall clock.
    tokio::time::pause();
    proxy.set_stalled(true);
    let start = tokio::time::Instant::now();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let r = s.get("k").await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, caller) in callers.into_iter().enumerate() {
        let (r, waited) = caller.await.unwrap();
        match r {
            Err(e) if e.is_backend_unavailable() => {}
            other => wrong.push(format!("caller {i}: {other:?}")),
        }
        // Tokio's timers round up to the next millisecond.
        if waited > worst + Duration::from_millis(1) {
            wrong.push(format!("caller {i} waited {waited:?}, over its {worst:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
