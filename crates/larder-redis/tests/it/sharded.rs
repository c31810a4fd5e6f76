//! Client-side sharding over independent servers: keys spread by the ring,
//! a dead node's keys fail over, nobody else's move, and it comes back.

use std::time::Duration;

use larder_core::{MockClock, Store, StoreEntry};
use larder_redis::{BreakerConfig, BreakerState, RedisStore, Topology};
use larder_testkit::start_masters;

use crate::quick_config;

const T: Duration = Duration::from_secs(60);
const KEYS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_without_collateral_moves_and_readmission() {
    let mut masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let urls: Vec<String> = masters.iter().map(|m| m.url()).collect();
    let clock = MockClock::new();
    let cfg = quick_config(Topology::Sharded(urls.clone()))
        .breaker(BreakerConfig::new(2, Duration::from_secs(10)))
        .build()
        .unwrap();
    let s = RedisStore::with_clock(cfg, clock.shared()).unwrap();

    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    let entries: Vec<StoreEntry<'_>> = keys
        .iter()
        .map(|k| StoreEntry {
            key: k,
            value: k.as_bytes(),
            ttl: T,
        })
        .collect();
    s.set_many(&entries).await.unwrap();
    let owner: Vec<usize> = keys.iter().map(|k| s.shard_of(k).unwrap().0).collect();
    for (n, master) in masters.iter().enumerate() {
        let c = owner.iter().filter(|&&o| o == n).count();
        assert!(c > KEYS / 5, "node {n} owns only {c} keys");
        let mut con = master.client().get_connection().unwrap();
        let size: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
        assert_eq!(size, c, "node {n} holds exactly the keys the ring gives it");
    }

    // Kill node 1. Two failures open its breaker; the ring ejects it.
    masters[1].kill();
    let victim_key = keys.iter().zip(&owner).find(|(_, o)| **o == 1).unwrap().0;
    for _ in 0..2 {
        assert!(
            s.get(victim_key)
                .await
                .unwrap_err()
                .is_backend_unavailable()
        );
    }
    assert_eq!(s.breaker_states()[1].1, BreakerState::Open);

    // Every key of a live node still hits, in one get_many.
    let ask: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = s.get_many(&ask).await.unwrap();
    for ((k, o), g) in keys.iter().zip(&owner).zip(&got) {
        if *o != 1 {
            assert_eq!(g.as_deref(), Some(k.as_bytes()), "live key {k} missed");
            assert_eq!(s.shard_of(k).unwrap().0, *o, "live key {k} moved");
        } else {
            // The dead node's keys fail over to a live node: a miss, then writable there.
            assert_eq!(*g, None);
            assert_ne!(s.shard_of(k).unwrap().0, 1);
        }
    }
    s.set(victim_key, b"refilled", T).await.unwrap();
    assert_eq!(
        s.get(victim_key).await.unwrap().as_deref(),
        Some(&b"refilled"[..])
    );

    // Restart node 1: after the retry timeout it is re-admitted and owns its keys again.
    masters[1].restart().unwrap();
    let mut readmitted = false;
    for _ in 0..20 {
        clock.advance(Duration::from_secs(10));
        if s.set(victim_key, b"home", T).await.is_ok() && s.shard_of(victim_key).unwrap().0 == 1 {
            readmitted = true;
            break;
        }
    }
    assert!(readmitted, "node 1 was not re-admitted");
    assert_eq!(s.breaker_states()[1].1, BreakerState::Closed);
    let mut con = masters[1].client().get_connection().unwrap();
    let v: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("larder:{{{victim_key}}}"))
        .query(&mut con)
        .unwrap();
    assert_eq!(v.as_deref(), Some(&b"home"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_can_be_added_and_removed_at_run_time() {
    let masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let s = RedisStore::new(
        quick_config(Topology::Sharded(vec![masters[0].url(), masters[1].url()]))
            .build()
            .unwrap(),
    )
    .unwrap();
    let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    let before: Vec<usize> = keys.iter().map(|k| s.shard_of(k).unwrap().0).collect();
    s.add_shard(&masters[2].url()).unwrap();
    let mut moved = 0;
    for (k, b) in keys.iter().zip(&before) {
        let now = s.shard_of(k).unwrap().0;
        if now != *b {
            assert_eq!(now, 2, "{k} moved between old nodes");
            moved += 1;
        }
    }
    assert!(
        moved > 300 && moved < 1_000,
        "about a third should move, {moved} did"
    );
    assert!(s.add_shard(&masters[2].url()).is_err(), "no duplicates");
    s.remove_shard(&masters[2].url()).unwrap();
    let after: Vec<usize> = keys.iter().map(|k| s.shard_of(k).unwrap().0).collect();
    assert_eq!(after, before);
    s.set("x", b"1", T).await.unwrap();
    s.ping().await.unwrap();
}

/// Helpers hold data of record (a queue, a leaderboard, limiter counters):
/// on a sharded store they stay on their home shard and fail, typed, while
/// it is down; nothing is written to a stand-in shard that would be
/// forgotten when the home shard comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helpers_stay_on_their_home_shard_while_it_is_down() {
    use larder_redis::{Leaderboard, WorkQueue};
    use larder_testkit::FaultProxy;

    let masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let proxies: Vec<FaultProxy> = masters
        .iter()
        .map(|m| FaultProxy::start(m.addr()).unwrap())
        .collect();
    let clock = MockClock::new();
    let cfg = quick_config(Topology::Sharded(
        proxies.iter().map(FaultProxy::url).collect(),
    ))
    .breaker(BreakerConfig::new(2, Duration::from_secs(10)))
    .build()
    .unwrap();
    let s = RedisStore::with_clock(cfg, clock.shared()).unwrap();
    let q: WorkQueue<u32> = WorkQueue::new(&s, "orders", T).unwrap();
    let board: Leaderboard = Leaderboard::new(&s, "weekly").unwrap();
    // A helper's keys share the hash tag of the user key that spells it.
    let q_home = s.shard_of("queue:orders").unwrap().0;
    q.push(&1).await.unwrap();
    board.set_score("ann", 1.0).await.unwrap();

    // The queue's home shard goes away; two failures open its breaker.
    proxies[q_home].set_refusing(true);
    proxies[q_home].cut_all();
    for _ in 0..2 {
        let e = q.push(&2).await.unwrap_err();
        assert!(e.is_backend_unavailable(), "{e}");
    }
    assert_eq!(s.breaker_states()[q_home].1, BreakerState::Open);
    // With the breaker open, a cache key would fail over; the queue does not.
    for _ in 0..3 {
        match q.push(&3).await {
            Err(e) => assert!(e.is_backend_unavailable(), "{e}"),
            Ok(_) => panic!("a push while the queue's home shard is down went to another shard"),
        }
    }
    let board_home = s.shard_of("board:weekly").unwrap().0;
    if board_home == q_home {
        assert!(board.set_score("bob", 2.0).await.is_err());
    }

    // The home shard returns: everything the queue ever accepted is there.
    proxies[q_home].set_refusing(false);
    clock.advance(Duration::from_secs(10));
    assert_eq!(q.try_pop().await.unwrap().unwrap().item, 1);
    assert!(q.try_pop().await.unwrap().is_none());
    assert_eq!(board.len().await.unwrap(), 1);
}
