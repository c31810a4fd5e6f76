//! Leaderboard reads that must not tear or overflow.

use std::time::Duration;

use larder_redis::{Leaderboard, RedisStore, Topology};
use larder_testkit::{FaultProxy, RedisServer};

use crate::quick_config;
use crate::structures::mocked;

#[tokio::test]
async fn page_and_around_do_not_overflow() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let b: Leaderboard = Leaderboard::new(&s, "big").unwrap();
    for (i, m) in ["a", "b", "c"].iter().enumerate() {
        b.set_score(m, i as f64).await.unwrap();
    }
    let members =
        |v: Vec<larder_redis::Ranked>| v.into_iter().map(|r| r.member).collect::<Vec<_>>();
    assert!(b.page(u64::MAX, 10).await.unwrap().is_empty());
    assert!(b.page(u64::MAX / 2, 3).await.unwrap().is_empty());
    assert_eq!(members(b.page(0, u64::MAX).await.unwrap()), ["c", "b", "a"]);
    assert!(b.page(1, u64::MAX).await.unwrap().is_empty());
    assert_eq!(
        members(b.around("b", u64::MAX).await.unwrap()),
        ["c", "b", "a"]
    );
    assert_eq!(members(b.top(u64::MAX).await.unwrap()), ["c", "b", "a"]);
    assert_eq!(
        b.top_with_details::<String>(u64::MAX).await.unwrap().len(),
        3
    );
}

/// `around` is one snapshot: a score change between reading the member's
/// rank and reading the range around it cannot drop the member from its
/// own neighbourhood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_reads_one_snapshot() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let s = RedisStore::new(
        quick_config(Topology::Standalone(proxy.url()))
            .response_timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    )
    .unwrap();
    let b: Leaderboard = Leaderboard::new(&s, "snap").unwrap();
    for (i, m) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        b.set_score(m, (i as f64 + 1.0) * 10.0).await.unwrap();
    }
    // Connected and scripts loaded before the fault.
    b.around("a", 1).await.unwrap();

    // The first reply of `around` is held back; meanwhile c drops to last.
    proxy.set_replies_stalled(true);
    let reader = {
        let b = b.clone();
        tokio::spawn(async move { b.around("c", 1).await })
    };
    proxy.wait_held_replies(1).await;
    let mut c = server.client().get_connection().unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("larder:{board:snap}:#scores")
        .arg(0)
        .arg("c")
        .query(&mut c)
        .unwrap();
    proxy.set_replies_stalled(false);
    let around = reader.await.unwrap().unwrap();
    let names: Vec<(String, u64)> = around.into_iter().map(|r| (r.member, r.rank)).collect();
    assert!(
        names
            == [
                ("d".to_string(), 1),
                ("c".to_string(), 2),
                ("b".to_string(), 3)
            ]
            || names
                == [
                    ("b".to_string(), 3),
                    ("a".to_string(), 4),
                    ("c".to_string(), 4)
                ],
        "around(c) tore across a score change: {names:?}"
    );
}
