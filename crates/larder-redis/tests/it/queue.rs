//! The work queue's delivery contract: each delivery is acknowledged only by
//! its own worker, poison items leave the queue, a cancelled pop takes
//! nothing, and reaping expired leases is bounded work.

use std::time::Duration;

use larder_redis::WorkQueue;
use larder_testkit::RedisServer;

use crate::structures::mocked;

#[tokio::test]
async fn a_late_ack_never_removes_the_redelivered_copy() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let q: WorkQueue<String> = WorkQueue::new(&s, "late", Duration::from_secs(10)).unwrap();
    let (worker_1, worker_2) = (q.clone(), q.clone());
    q.push(&"job".to_string()).await.unwrap();

    // Worker 1 takes the job and stalls past its lease.
    let first = worker_1.try_pop().await.unwrap().unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(q.requeue_expired().await.unwrap(), 1);
    // Worker 2 gets the same job (same id, same bytes).
    let second = worker_2.try_pop().await.unwrap().unwrap();
    assert_eq!((second.id, &second.item), (first.id, &first.item));

    // Worker 1 wakes up and acknowledges its stale delivery.
    assert!(
        !worker_1.ack(&first).await.unwrap(),
        "a late ack must not acknowledge another worker's delivery"
    );
    assert_eq!(
        q.in_flight().await.unwrap(),
        1,
        "worker 2's delivery survives a late ack"
    );
    // Worker 2's lease survives too: nothing is re-delivered before it expires.
    clock.advance(Duration::from_secs(9));
    assert_eq!(q.requeue_expired().await.unwrap(), 0);
    assert!(worker_2.ack(&second).await.unwrap());
    assert_eq!(
        (q.len().await.unwrap(), q.in_flight().await.unwrap()),
        (0, 0)
    );
    // A second ack of the same delivery finds nothing.
    assert!(!worker_2.ack(&second).await.unwrap());
}

#[tokio::test]
async fn a_poison_item_goes_to_the_dead_letter_list() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let q: WorkQueue<String> = WorkQueue::new(&s, "poison", Duration::from_secs(10)).unwrap();
    // An item whose payload no codec of ours wrote (an overlong varint).
    let mut c = server.client().get_connection().unwrap();
    let poison: Vec<u8> = [&b"999|"[..], &[0xff; 12]].concat();
    let _: () = redis::cmd("LPUSH")
        .arg(ready_key("poison"))
        .arg(&poison)
        .query(&mut c)
        .unwrap();
    q.push(&"good".to_string()).await.unwrap();

    let e = q.try_pop().await.unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    assert_eq!(
        q.in_flight().await.unwrap(),
        0,
        "an item that cannot be decoded is not left in processing"
    );
    assert_eq!(q.dead_letters().await.unwrap(), 1);
    assert_eq!(s.stats().corrupt, 1);
    // The next item is served, and the poison never comes back.
    let good = q.try_pop().await.unwrap().unwrap();
    assert_eq!(good.item, "good");
    assert!(q.ack(&good).await.unwrap());
    clock.advance(Duration::from_secs(60));
    assert_eq!(q.requeue_expired().await.unwrap(), 0);
    assert_eq!(
        (q.len().await.unwrap(), q.in_flight().await.unwrap()),
        (0, 0)
    );
    assert_eq!(q.dead_letters().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_pop_takes_nothing() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let q: WorkQueue<u32> = WorkQueue::new(&s, "cancel", Duration::from_secs(30)).unwrap();
    let worker = q.clone();
    {
        // A worker blocks in pop, then is cancelled (a select!, a timeout
        // around it, a shutdown) while its handle lives on.
        let pop = worker.pop(Duration::from_secs(60));
        tokio::pin!(pop);
        tokio::select! {
            r = &mut pop => panic!("pop returned from an empty queue: {r:?}"),
            () = blocked_clients(&server, 1) => {}
        }
    }
    q.push(&7).await.unwrap();
    let got = q.try_pop().await.unwrap().map(|d| d.item);
    assert_eq!(got, Some(7), "the cancelled pop took the item");
    // The cancelled worker pops again normally.
    q.push(&8).await.unwrap();
    let again = worker.pop(Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(again.item, 8);
    assert!(worker.ack(&again).await.unwrap());
}

/// Reaping after a mass expiry is bounded work per script run: Redis runs a
/// script to the end while every other client waits (and answers BUSY past
/// `busy-reply-threshold`), so one run over every expired item is an
/// outage on a large queue. Counted in runs, not timed: no run may handle
/// more than 500 items.
#[tokio::test]
async fn requeue_after_a_mass_expiry_is_bounded_work_per_script_run() {
    const N: u64 = 1_200;
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let q: WorkQueue<u64> = WorkQueue::new(&s, "mass", Duration::from_secs(10)).unwrap();
    for i in 0..N {
        q.push(&i).await.unwrap();
    }
    for _ in 0..N {
        q.try_pop().await.unwrap().unwrap();
    }
    // Loads the script, so that every run below is one EVALSHA.
    assert_eq!(q.requeue_expired().await.unwrap(), 0);
    clock.advance(Duration::from_secs(10));
    let mut c = server.client().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
    assert_eq!(q.requeue_expired().await.unwrap(), N);
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    let runs: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        runs >= N.div_ceil(500),
        "{N} expired items were requeued by {runs} script run(s)"
    );
    assert_eq!(
        (q.len().await.unwrap(), q.in_flight().await.unwrap()),
        (N, 0)
    );
    // Each item back exactly once.
    let mut back = Vec::new();
    while let Some(d) = q.try_pop().await.unwrap() {
        back.push(d.item);
    }
    back.sort_unstable();
    assert_eq!(back, (0..N).collect::<Vec<_>>());
}

/// A gate: returns once the server reports at least `n` clients blocked
/// in a blocking command (polled, at most 5,000 times).
pub(crate) async fn blocked_clients(server: &RedisServer, n: u64) {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for _ in 0..5_000 {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut c)
            .await
            .unwrap();
        let blocked = info
            .lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if blocked >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("no {n} blocked clients on the server");
}

/// The Redis key of queue `name`'s ready list.
fn ready_key(name: &str) -> String {
    format!("larder:{{queue:{name}}}:#ready")
}

/// Several `pop`s waiting on one handle take turns on its dedicated
/// connection; waiting for a turn is not a node failure, so a healthy
/// node's breaker stays closed (five timeouts used to open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pops_on_one_handle_never_open_the_breaker() {
    let server = RedisServer::start().unwrap();
    let s = crate::store(&server.url());
    let q: WorkQueue<String> = WorkQueue::new(&s, "turns", Duration::from_secs(10)).unwrap();
    // One handle shared by many tasks (a clone would have its own connection).
    let q = std::sync::Arc::new(q);
    let pops = (0..12).map(|_| {
        let q = std::sync::Arc::clone(&q);
        tokio::spawn(async move { q.pop(Duration::from_millis(500)).await })
    });
    for p in futures_util::future::join_all(pops).await {
        assert!(p.unwrap().unwrap().is_none(), "an empty queue pops nothing");
    }
    assert_eq!(
        s.breaker_states()[0].1,
        larder_redis::BreakerState::Closed,
        "waiting for a turn counted against a healthy node"
    );
    q.push(&"after".to_string()).await.unwrap();
    assert!(q.pop(Duration::from_secs(1)).await.unwrap().is_some());
}
