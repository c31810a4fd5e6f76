//! Every helper, and auto-batching, on a Redis Cluster and on a sharded
//! store (each helper's keys share one hash tag, so one slot and one shard).

use std::collections::BTreeMap;
use std::time::Duration;

use larder_core::Store;
use larder_redis::{
    Feed, HashObject, Leaderboard, RateLimit, RateLimiter, RedisStore, Topology, WorkQueue,
};
use larder_testkit::{RedisCluster, RedisServer, start_masters};

use crate::quick_config;

const T: Duration = Duration::from_secs(60);

async fn cluster() -> RedisCluster {
    tokio::task::spawn_blocking(|| RedisCluster::start(3).unwrap())
        .await
        .unwrap()
}

fn cluster_store(cluster: &RedisCluster) -> RedisStore {
    RedisStore::new(
        quick_config(Topology::Cluster(cluster.urls()))
            .response_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// Every helper's operations, each on several objects (so, on a Cluster,
/// several masters), checked against what was written.
async fn exercise_every_helper(s: &RedisStore, servers: &[RedisServer]) {
    for name in ["q0", "q1", "q2", "q3", "q4", "q5"] {
        let q: WorkQueue<String> = WorkQueue::new(s, name, T).unwrap();
        q.push(&format!("{name}-a")).await.unwrap();
        q.push(&format!("{name}-b")).await.unwrap();
        let a = q.pop(Duration::from_millis(100)).await.unwrap().unwrap();
        assert_eq!(a.item, format!("{name}-a"));
        let b = q.try_pop().await.unwrap().unwrap();
        assert!(q.ack(&a).await.unwrap());
        assert!(!q.ack(&a).await.unwrap());
        assert_eq!(q.requeue_expired().await.unwrap(), 0);
        assert!(q.ack(&b).await.unwrap());
        assert_eq!(
            (q.len().await.unwrap(), q.in_flight().await.unwrap()),
            (0, 0)
        );
        assert_eq!(q.dead_letters().await.unwrap(), 0);
    }
    // A blocked pop wakes on a push.
    let q: WorkQueue<u32> = WorkQueue::new(s, "wake", T).unwrap();
    let worker = q.clone();
    let waiting = tokio::spawn(async move { worker.pop(Duration::from_secs(20)).await });
    blocked_somewhere(servers).await;
    q.push(&7).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().unwrap().item, 7);

    let limits = [
        RateLimit::FixedWindow {
            limit: 2,
            window: T,
        },
        RateLimit::SlidingWindow {
            limit: 2,
            window: T,
        },
        RateLimit::TokenBucket {
            rate: 2,
            period: T,
            burst: 2,
        },
    ];
    for (i, limit) in limits.into_iter().enumerate() {
        let rl = RateLimiter::new(s, &format!("rl{i}"), limit).unwrap();
        for id in ["u:1", "u:2", "u:3", "u:4"] {
            assert!(rl.check(id).await.unwrap().allowed, "{limit:?} {id}");
            assert!(rl.check(id).await.unwrap().allowed, "{limit:?} {id}");
            assert!(!rl.check(id).await.unwrap().allowed, "{limit:?} {id}");
        }
    }

    for name in ["b0", "b1", "b2"] {
        let board: Leaderboard = Leaderboard::new(s, name).unwrap();
        for (i, m) in ["ann", "bob", "cat"].iter().enumerate() {
            board.set_score(m, i as f64).await.unwrap();
        }
        board.set_details("cat", &"Cat".to_string()).await.unwrap();
        let around: Vec<String> = board
            .around("bob", 1)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.member)
            .collect();
        assert_eq!(around, ["cat", "bob", "ann"]);
        let top = board.top_with_details::<String>(1).await.unwrap();
        assert_eq!(top[0].1.as_deref(), Some("Cat"));
        assert!(board.remove("cat").await.unwrap());
    }

    let feed: Feed<String> = Feed::new(s, "f", 2, T).unwrap();
    for owner in ["o:1", "o:2", "o:3"] {
        for i in 0..3 {
            feed.push(owner, &format!("{owner} {i}")).await.unwrap();
        }
        assert_eq!(
            feed.recent(owner, 5).await.unwrap(),
            [format!("{owner} 2"), format!("{owner} 1")]
        );
    }

    let objs: HashObject<BTreeMap<String, i64>> = HashObject::new(s, "obj").unwrap();
    for id in ["1", "2", "3"] {
        objs.put(id, &[("n".to_string(), 1)].into(), Some(T))
            .await
            .unwrap();
        assert_eq!(objs.incr_field(id, "n", 2).await.unwrap(), Some(3));
        assert_eq!(objs.get(id).await.unwrap().unwrap()["n"], 3);
        assert!(objs.delete(id).await.unwrap());
    }
}

/// A gate: some server reports a client blocked in a blocking command.
async fn blocked_somewhere(servers: &[RedisServer]) {
    let mut conns = Vec::new();
    for s in servers {
        conns.push(s.client().get_multiplexed_async_connection().await.unwrap());
    }
    for _ in 0..5_000 {
        for c in &mut conns {
            let info: String = redis::cmd("INFO")
                .arg("clients")
                .query_async(c)
                .await
                .unwrap();
            if info.lines().any(|l| {
                l.strip_prefix("blocked_clients:")
                    .is_some_and(|v| v.trim() != "0")
            }) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no blocked client on any server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_helper_on_a_cluster() {
    let cluster = cluster().await;
    let s = cluster_store(&cluster);
    exercise_every_helper(&s, cluster.nodes()).await;
    // The helpers' keys spread over the masters.
    for (i, node) in cluster.nodes().iter().enumerate() {
        let mut c = node.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(n > 0, "master {i} holds no helper key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_helper_on_a_sharded_store() {
    let masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let s = RedisStore::new(
        quick_config(Topology::Sharded(
            masters.iter().map(RedisServer::url).collect(),
        ))
        .build()
        .unwrap(),
    )
    .unwrap();
    exercise_every_helper(&s, &masters).await;
    for (i, m) in masters.iter().enumerate() {
        let mut c = m.client().get_connection().unwrap();
        let n: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(n > 0, "shard {i} holds no helper key");
    }
}

/// The queue's blocking connection on a Cluster has no response timeout of
/// its own: a pop that waits longer than the first pop's wait plus the
/// response timeout returns `None` at the end of its wait, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_pop_waits_its_whole_wait_on_a_reused_connection() {
    let cluster = cluster().await;
    let s = cluster_store(&cluster);
    let q: WorkQueue<u32> = WorkQueue::new(&s, "long", T).unwrap();
    assert!(q.pop(Duration::from_millis(10)).await.unwrap().is_none());
    // Longer than 10 ms + the 500 ms response timeout.
    let r = q.pop(Duration::from_millis(1_500)).await;
    assert!(matches!(r, Ok(None)), "{r:?}");
}

// One thread: every caller queues before the batching task runs, so the
// batches are full and their number exact.
#[tokio::test(flavor = "current_thread")]
async fn auto_batching_on_a_cluster() {
    let cluster = cluster().await;
    let s = RedisStore::new(
        quick_config(Topology::Cluster(cluster.urls()))
            .response_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .auto_batch(64)
            .build()
            .unwrap(),
    )
    .unwrap();
    for i in 0..300 {
        s.set(&format!("b{i}"), format!("v{i}").as_bytes(), T)
            .await
            .unwrap();
    }
    let callers: Vec<_> = (0..320)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { (i, s.get(&format!("b{i}")).await.unwrap()) })
        })
        .collect();
    for c in callers {
        let (i, v) = c.await.unwrap();
        let want = (i < 300).then(|| format!("v{i}").into_bytes());
        assert_eq!(v, want, "b{i}");
    }
    let stats = s.stats();
    assert!(stats.command("GET").is_none(), "every get was batched");
    // 5 batches of at most 64 keys, each split by master: one MGET per
    // master per batch.
    let mgets = stats.command("MGET").unwrap().calls;
    assert_eq!(mgets, 5 * 3, "320 gets over 3 masters");
}

/// `tls_root_cert` is honoured on a Cluster: the store's connection and the
/// queue's blocking connection trust the cluster's private CA.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_a_private_root() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start_tls(3).unwrap())
        .await
        .unwrap();
    let s = RedisStore::new(
        quick_config(Topology::Cluster(cluster.tls_urls()))
            .response_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .tls_root_cert(cluster.ca_pem().unwrap())
            .build()
            .unwrap(),
    )
    .unwrap();
    for i in 0..30 {
        s.set(&format!("k{i}"), b"over tls", T).await.unwrap();
    }
    assert_eq!(
        s.get("k7").await.unwrap().as_deref(),
        Some(&b"over tls"[..])
    );
    let q: WorkQueue<u32> = WorkQueue::new(&s, "tls", T).unwrap();
    let worker = q.clone();
    let waiting = tokio::spawn(async move { worker.pop(Duration::from_secs(20)).await });
    blocked_somewhere(cluster.nodes()).await;
    q.push(&7).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap().unwrap().item, 7);
}
