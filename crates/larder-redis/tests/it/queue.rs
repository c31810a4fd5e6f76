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

/// The Redis key of queue `name`'s ready list.
fn ready_key(name: &str) -> String {
    format!("larder:{{queue:{name}}}")
}
