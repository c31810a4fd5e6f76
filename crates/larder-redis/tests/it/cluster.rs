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
    assert!(s.ttl("item:7").await.unwrap().remaining().is_some());
    assert_eq!(s.delete_many(&ask[..150]).await.unwrap(), 150);
    assert!(s.delete("item:200").await.unwrap());
    assert_eq!(s.get("item:0").await.unwrap(), None);

    // Scripts run on the owning master.
    assert!(s.set_if_newer("v", &env(2, b"b"), T).await.unwrap());
    assert!(!s.set_if_newer("v", &env(1, b"a"), T).await.unwrap());
    assert!(s.set_if_absent("lease", b"x", T).await.unwrap());
    assert_eq!(s.incr_with_expiry("n", 2, T).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_trips_only_its_own_breaker() {
    use larder_core::MockClock;
    use larder_redis::{BreakerConfig, BreakerState};

    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3).unwrap())
        .await
        .unwrap();
    let clock = MockClock::new();
    let cfg = quick_config(Topology::Cluster(cluster.urls()))
        .response_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .breaker(BreakerConfig::new(2, Duration::from_secs(10)))
        .build()
        .unwrap();
    let s = RedisStore::with_clock(cfg, clock.shared()).unwrap();
    // One key per master, by slot.
    let mut per_master: Vec<Option<String>> = vec![None; 3];
    for i in 0.. {
        let k = format!("key:{i}");
        let slot = larder_ring::keyslot(format!("larder:{{{k}}}").as_bytes());
        let owner = cluster.owner_of_slot(slot);
        if per_master[owner].is_none() {
            per_master[owner] = Some(k);
        }
        if per_master.iter().all(Option::is_some) {
            break;
        }
    }
    let keys: Vec<String> = per_master.into_iter().map(Option::unwrap).collect();
    for k in &keys {
        s.set(k, b"v", T).await.unwrap();
    }

    cluster.node_mut(1).kill();
    for _ in 0..2 {
        let e = s.get(&keys[1]).await.unwrap_err();
        assert!(e.is_backend_unavailable(), "{e:?}");
    }
    let e = s.get(&keys[1]).await.unwrap_err();
    assert!(e.is_circuit_open(), "{e}");
    // The other masters are unaffected: their keys are served, their breakers closed.
    for k in [&keys[0], &keys[2]] {
        assert_eq!(s.get(k).await.unwrap().as_deref(), Some(&b"v"[..]), "{k}");
    }
    let states = s.breaker_states();
    let open: Vec<&String> = states
        .iter()
        .filter(|(_, st)| *st == BreakerState::Open)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(open.len(), 1, "{states:?}");
    assert!(
        open[0].contains(&cluster.nodes()[1].port().to_string()),
        "{states:?}"
    );

    // Back: after the open period the probe succeeds and the breaker closes.
    cluster.node_mut(1).restart().unwrap();
    // Back means back in the cluster: until it has rejoined, it answers CLUSTERDOWN.
    tokio::task::block_in_place(|| cluster.wait_healthy()).unwrap();
    let mut back = false;
    for _ in 0..30 {
        clock.advance(Duration::from_secs(10));
        if s.set(&keys[1], b"again", T).await.is_ok() {
            back = true;
            break;
        }
    }
    assert!(back, "master 1 never came back: {:?}", s.breaker_states());
    assert!(
        s.breaker_states()
            .iter()
            .all(|(_, st)| *st == BreakerState::Closed)
    );
}

/// One key per master of `cluster`, by slot.
fn key_per_master(cluster: &RedisCluster) -> Vec<String> {
    let n = cluster.nodes().len();
    let mut per_master: Vec<Option<String>> = vec![None; n];
    for i in 0.. {
        let k = format!("key:{i}");
        let slot = larder_ring::keyslot(format!("larder:{{{k}}}").as_bytes());
        per_master[cluster.owner_of_slot(slot)].get_or_insert(k);
        if per_master.iter().all(Option::is_some) {
            break;
        }
    }
    per_master.into_iter().map(Option::unwrap).collect()
}

/// Batched reads (auto-batched gets and get_many) and delete_many go through
/// the breaker of each key's master, as single gets do: a dead master fails
/// only its keys.
/// Current-thread runtime: the three gets below join one batch.
#[tokio::test]
async fn a_dead_master_fails_only_its_keys_in_batched_reads() {
    use larder_core::MockClock;
    use larder_redis::BreakerConfig;

    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3).unwrap())
        .await
        .unwrap();
    let clock = MockClock::new();
    let cfg = quick_config(Topology::Cluster(cluster.urls()))
        .response_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .breaker(BreakerConfig::new(2, Duration::from_secs(10)))
        .auto_batch(16)
        .build()
        .unwrap();
    let s = RedisStore::with_clock(cfg, clock.shared()).unwrap();
    let keys = key_per_master(&cluster);
    for k in &keys {
        s.set(k, k.as_bytes(), T).await.unwrap();
    }
    let live = [keys[0].as_str(), keys[2].as_str()];

    cluster.node_mut(1).kill();
    let mut wrong = Vec::new();
    for round in 0..4 {
        let (a, b, c) = tokio::join!(s.get(&keys[0]), s.get(&keys[1]), s.get(&keys[2]));
        for (k, r) in [(&keys[0], a), (&keys[2], c)] {
            if r.as_ref().ok().and_then(Option::as_deref) != Some(k.as_bytes()) {
                wrong.push(format!("round {round}: batched get {k}: {r:?}"));
            }
        }
        if b.is_ok() {
            wrong.push(format!(
                "round {round}: the dead master's key was served: {b:?}"
            ));
        }
        if let Err(e) = s
            .get_many(&keys.iter().map(String::as_str).collect::<Vec<_>>())
            .await
        {
            assert!(e.is_backend_unavailable(), "{e}");
        } else {
            wrong.push(format!(
                "round {round}: get_many over the dead master succeeded"
            ));
        }
        match s.delete_many(&[keys[1].as_str()]).await {
            Err(e) if e.is_backend_unavailable() => {}
            other => wrong.push(format!(
                "round {round}: delete_many on the dead master: {other:?}"
            )),
        }
        match s.get_many(&live).await {
            Ok(v)
                if v.iter()
                    .zip(live)
                    .all(|(v, k)| v.as_deref() == Some(k.as_bytes())) => {}
            other => wrong.push(format!(
                "round {round}: get_many over live masters: {other:?}"
            )),
        }
    }
    // delete_many too goes by master: the live masters' keys are deleted.
    match s.delete_many(&live).await {
        Ok(2) => {}
        other => wrong.push(format!("delete_many over live masters: {other:?}")),
    }
    assert!(
        wrong.is_empty(),
        "{wrong:#?}\nbreakers: {:?}",
        s.breaker_states()
    );
}

/// A one-master cluster and a store on it (no retries, `response_timeout`),
/// holding `k` = `v`: its first connection has read the slot map.
async fn one_master_with_k(response_timeout: Duration) -> (RedisCluster, RedisStore) {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(1).unwrap())
        .await
        .unwrap();
    let s = RedisStore::new(
        quick_config(Topology::Cluster(cluster.urls()))
            .response_timeout(response_timeout)
            .build()
            .unwrap(),
    )
    .unwrap();
    s.set("k", b"v", T).await.unwrap();
    (cluster, s)
}

/// Reading the slot map is counted in the stats (`TOPOLOGY`), and a failed
/// read is an error there, not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_map_refreshes_and_their_errors_are_counted() {
    let (mut cluster, s) = one_master_with_k(Duration::from_millis(300)).await;
    let topology = s.stats().command("TOPOLOGY").map(|c| (c.calls, c.errors));
    assert_eq!(
        topology,
        Some((1, 0)),
        "the first connection reads the slot map"
    );

    cluster.node_mut(0).kill();
    // The failure marks the map stale; the next attempt re-reads it first.
    for _ in 0..2 {
        assert!(s.get("k").await.unwrap_err().is_backend_unavailable());
    }
    let t = s.stats().command("TOPOLOGY").cloned().unwrap();
    assert!(
        t.calls >= 2 && t.errors >= 1,
        "the failed re-read is counted: {t:?}"
    );
}

/// A slot-map re-read whose future is dropped (a caller's timeout) stays
/// due: the next call re-reads. It used to be forgotten until the next
/// node failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_map_reread_stays_due() {
    use futures_util::FutureExt;

    // A re-read's budget is half the response timeout: a loaded machine
    // must not cut the last one short.
    let (cluster, s) = one_master_with_k(Duration::from_secs(2)).await;
    let reads = || {
        s.stats()
            .command("TOPOLOGY")
            .map_or((0, 0), |c| (c.calls, c.errors))
    };

    // A node failure (a frozen master: the get times out) marks the map stale.
    cluster.nodes()[0].pause().unwrap();
    assert!(s.get("k").await.unwrap_err().is_backend_unavailable());
    cluster.nodes()[0].resume().unwrap();
    // One poll starts the re-read, which needs the server's answer: the
    // future is dropped with it in flight.
    assert!(s.get("k").now_or_never().is_none());
    let (calls, errors) = reads();
    assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(
        reads(),
        (calls + 1, errors),
        "the next call re-reads the slot map, and succeeds"
    );
}

/// A slot-map re-read cut off by its budget (half the response timeout:
/// here a frozen master never answers) is a timed-out `TOPOLOGY` in the
/// stats, not silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_map_reread_cut_off_by_its_budget_is_counted() {
    let (cluster, s) = one_master_with_k(Duration::from_millis(300)).await;
    cluster.nodes()[0].pause().unwrap();
    // The first get's timeout marks the map stale; the second re-reads it
    // from the frozen master first, for half its response timeout.
    for _ in 0..2 {
        assert!(s.get("k").await.unwrap_err().is_backend_unavailable());
    }
    cluster.nodes()[0].resume().unwrap();
    // The first connection's read, then the re-read cut off: once each.
    let t = s.stats().command("TOPOLOGY").cloned().unwrap();
    assert_eq!((t.calls, t.errors, t.timeouts), (2, 1, 1), "{t:?}");
}
