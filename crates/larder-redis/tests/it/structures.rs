use std::time::Duration;

use larder_core::MockClock;
use larder_redis::{
    Feed, HashObject, HelperClock, Leaderboard, RateLimit, RateLimiter, RedisStore, Topology,
    WorkQueue,
};
use larder_testkit::RedisServer;
use serde::{Deserialize, Serialize};

use crate::quick_config;

pub(crate) fn mocked(server: &RedisServer) -> (RedisStore, MockClock) {
    // Start on a whole second so window arithmetic below is easy to read.
    let clock = MockClock::at_unix_millis(1_700_000_000_000);
    let cfg = quick_config(Topology::Standalone(server.url()))
        .helper_clock(HelperClock::Store)
        .build()
        .unwrap();
    (RedisStore::with_clock(cfg, clock.shared()).unwrap(), clock)
}

#[tokio::test]
async fn fixed_window_boundaries_are_exact() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let rl = RateLimiter::new(
        &s,
        "login",
        RateLimit::FixedWindow {
            limit: 3,
            window: Duration::from_secs(10),
        },
    )
    .unwrap();
    for want in [2, 1, 0] {
        let d = rl.check("ip:1").await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, want);
    }
    let d = rl.check("ip:1").await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_secs(10)));
    // Another id has its own budget.
    assert!(rl.check("ip:2").await.unwrap().allowed);
    clock.advance(Duration::from_millis(9_999));
    let d = rl.check("ip:1").await.unwrap();
    assert!(!d.allowed, "still the same window");
    assert_eq!(d.retry_after, Some(Duration::from_millis(1)));
    clock.advance(Duration::from_millis(1));
    assert!(rl.check("ip:1").await.unwrap().allowed, "a new window");
    // All or nothing: a cost over the remainder consumes nothing.
    assert!(!rl.check_n("ip:1", 3).await.unwrap().allowed);
    assert_eq!(rl.check_n("ip:1", 2).await.unwrap().remaining, 0);
}

#[tokio::test]
async fn sliding_window_boundaries_are_exact() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let rl = RateLimiter::new(
        &s,
        "api",
        RateLimit::SlidingWindow {
            limit: 2,
            window: Duration::from_secs(1),
        },
    )
    .unwrap();
    assert!(rl.check("u").await.unwrap().allowed); // t = 0
    clock.advance(Duration::from_millis(400));
    assert!(rl.check("u").await.unwrap().allowed); // t = 400
    clock.advance(Duration::from_millis(100));
    let d = rl.check("u").await.unwrap(); // t = 500
    assert!(!d.allowed);
    assert_eq!(
        d.retry_after,
        Some(Duration::from_millis(500)),
        "the t=0 entry leaves at t=1000"
    );
    clock.advance(Duration::from_millis(499));
    assert!(!rl.check("u").await.unwrap().allowed); // t = 999
    clock.advance(Duration::from_millis(1));
    let d = rl.check("u").await.unwrap(); // t = 1000
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
}

#[tokio::test]
async fn token_bucket_bursts_then_paces() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    // 10 per second sustained (one per 100 ms), bursts of 3.
    let rl = RateLimiter::new(
        &s,
        "buy",
        RateLimit::TokenBucket {
            rate: 10,
            period: Duration::from_secs(1),
            burst: 3,
        },
    )
    .unwrap();
    for want in [2, 1, 0] {
        let d = rl.check("u").await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, want);
    }
    let d = rl.check("u").await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
    clock.advance(Duration::from_millis(99));
    assert!(!rl.check("u").await.unwrap().allowed);
    clock.advance(Duration::from_millis(1));
    assert!(rl.check("u").await.unwrap().allowed, "one token per 100 ms");
    assert!(!rl.check("u").await.unwrap().allowed);
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        rl.check("u").await.unwrap().remaining,
        2,
        "refills to the burst, no further"
    );
}

#[tokio::test]
async fn limiter_rejects_bad_settings() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    assert!(
        RateLimiter::new(
            &s,
            "x",
            RateLimit::FixedWindow {
                limit: 0,
                window: Duration::from_secs(1)
            }
        )
        .is_err()
    );
    assert!(
        RateLimiter::new(
            &s,
            "x{y}",
            RateLimit::FixedWindow {
                limit: 1,
                window: Duration::from_secs(1)
            }
        )
        .is_err()
    );
    let rl = RateLimiter::new(
        &s,
        "x",
        RateLimit::SlidingWindow {
            limit: 1,
            window: Duration::from_secs(1),
        },
    )
    .unwrap();
    assert!(rl.check_n("u", 0).await.unwrap_err().is_invalid_input());
    assert!(rl.check("").await.unwrap_err().is_invalid_input());
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Player {
    name: String,
    level: u32,
}

#[tokio::test]
async fn leaderboard_ranks_pages_and_details() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let b = Leaderboard::new(&s, "weekly").unwrap();
    for (i, m) in ["ann", "bob", "cat", "dan", "eve"].iter().enumerate() {
        b.set_score(m, (i as f64 + 1.0) * 10.0).await.unwrap();
    }
    assert_eq!(b.incr_score("ann", 100.0).await.unwrap(), 110.0);
    let top: Vec<String> = b
        .top(3)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.member)
        .collect();
    assert_eq!(top, ["ann", "eve", "dan"]);
    assert_eq!(b.rank("ann").await.unwrap(), Some(0));
    assert_eq!(b.rank("bob").await.unwrap(), Some(4));
    assert_eq!(b.rank("zed").await.unwrap(), None);
    assert_eq!(b.score("cat").await.unwrap(), Some(30.0));
    let page1: Vec<(String, u64)> = b
        .page(1, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.member, r.rank))
        .collect();
    assert_eq!(page1, [("dan".to_string(), 2), ("cat".to_string(), 3)]);
    let around: Vec<String> = b
        .around("dan", 1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.member)
        .collect();
    assert_eq!(around, ["eve", "dan", "cat"]);
    assert_eq!(b.len().await.unwrap(), 5);

    b.set_details(
        "ann",
        &Player {
            name: "Ann".into(),
            level: 7,
        },
    )
    .await
    .unwrap();
    let with = b.top_with_details::<Player>(2).await.unwrap();
    assert_eq!(with[0].0.member, "ann");
    assert_eq!(
        with[0].1,
        Some(Player {
            name: "Ann".into(),
            level: 7
        })
    );
    assert_eq!(with[1].1, None, "eve has no details");
    assert!(b.remove("ann").await.unwrap());
    assert_eq!(b.top(1).await.unwrap()[0].member, "eve");
}

#[tokio::test]
async fn feed_is_capped_newest_first_and_expires() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let f: Feed<String> = Feed::new(&s, "activity", 3, Duration::from_secs(60)).unwrap();
    for i in 0..5 {
        f.push("u1", &format!("event {i}")).await.unwrap();
    }
    assert_eq!(f.len("u1").await.unwrap(), 3);
    assert_eq!(
        f.recent("u1", 10).await.unwrap(),
        ["event 4", "event 3", "event 2"]
    );
    assert_eq!(f.recent("u1", 1).await.unwrap(), ["event 4"]);
    assert!(
        raw_pttl(&server, "larder:{feed:activity:u1}:#items") > 0,
        "the list expires"
    );
    assert!(f.recent("nobody", 5).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_redelivers_the_item_of_a_dead_worker() {
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let q: WorkQueue<String> = WorkQueue::new(&s, "jobs", Duration::from_secs(30)).unwrap();
    let id1 = q.push(&"job-1".to_string()).await.unwrap();
    let id2 = q.push(&"job-2".to_string()).await.unwrap();
    assert!(id2 > id1);

    // Worker A takes job-1 and dies without acknowledging it.
    let worker_a = q.clone();
    let taken = worker_a
        .pop(Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.id, taken.item.as_str()), (id1, "job-1"));
    drop(worker_a);

    // Worker B takes job-2 and finishes it.
    let b = q.clone();
    let j2 = b.pop(Duration::from_millis(100)).await.unwrap().unwrap();
    assert_eq!(j2.item, "job-2");
    assert!(b.ack(&j2).await.unwrap());
    assert_eq!(q.in_flight().await.unwrap(), 1);

    // Before the visibility timeout nothing moves; after it, job-1 returns.
    clock.advance(Duration::from_secs(29));
    assert_eq!(q.requeue_expired().await.unwrap(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(q.requeue_expired().await.unwrap(), 1);
    let again = b.pop(Duration::from_millis(100)).await.unwrap().unwrap();
    assert_eq!((again.id, again.item.as_str()), (id1, "job-1"));
    assert!(b.ack(&again).await.unwrap());
    // A late ack from the dead worker's copy finds nothing.
    assert!(!b.ack(&taken).await.unwrap());
    assert_eq!(
        (q.len().await.unwrap(), q.in_flight().await.unwrap()),
        (0, 0)
    );
    // An empty queue: a blocking pop returns None after its wait.
    assert!(b.pop(Duration::from_millis(50)).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pop_wakes_on_push_without_stalling_the_store() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let q: WorkQueue<u32> = WorkQueue::new(&s, "wake", Duration::from_secs(30)).unwrap();
    let worker = q.clone();
    let waiting = tokio::spawn(async move { worker.pop(Duration::from_secs(20)).await });
    // A gate: the pop is blocked on the server before anything else happens.
    crate::queue::blocked_clients(&server, 1).await;
    // Other commands on the store still work while the pop blocks.
    for i in 1..=5 {
        let n = s
            .incr_with_expiry("busy", 1, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(n, i);
    }
    assert!(!waiting.is_finished(), "the pop waits for a push");
    q.push(&7).await.unwrap();
    let got = waiting.await.unwrap().unwrap().unwrap();
    assert_eq!(got.item, 7);
}

#[tokio::test]
async fn work_queue_gives_a_lease_to_an_orphaned_item() {
    // An item in processing without a lease (moved there by hand, or by an
    // older version whose worker died between BLMOVE and its lease): it sits in
    // processing with no lease. The reaper leases it, then re-delivers it.
    let server = RedisServer::start().unwrap();
    let (s, clock) = mocked(&server);
    let q: WorkQueue<String> = WorkQueue::new(&s, "orphans", Duration::from_secs(10)).unwrap();
    q.push(&"lost".to_string()).await.unwrap();
    let mut c = server.client().get_connection().unwrap();
    let _: Vec<u8> = redis::cmd("LMOVE")
        .arg("larder:{queue:orphans}:#ready")
        .arg("larder:{queue:orphans}:#processing")
        .arg("RIGHT")
        .arg("LEFT")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        q.requeue_expired().await.unwrap(),
        0,
        "first pass only leases it"
    );
    clock.advance(Duration::from_secs(10));
    assert_eq!(q.requeue_expired().await.unwrap(), 1);
    assert_eq!(q.try_pop().await.unwrap().unwrap().item, "lost");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cart {
    owner: String,
    items: u32,
    total_cents: u64,
    tags: Vec<String>,
}

#[tokio::test]
async fn hash_object_fields() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let carts: HashObject<Cart> = HashObject::new(&s, "cart").unwrap();
    let cart = Cart {
        owner: "ann".into(),
        items: 2,
        total_cents: 2500,
        tags: vec!["gift".into()],
    };
    carts
        .put("42", &cart, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(carts.get("42").await.unwrap(), Some(cart.clone()));
    assert_eq!(carts.incr_field("42", "items", 3).await.unwrap(), Some(5));
    assert!(carts.set_field("42", "owner", &"bob").await.unwrap());
    let f = carts
        .get_fields("42", &["owner", "items", "nope"])
        .await
        .unwrap();
    assert_eq!(
        f,
        [
            Some(serde_json::json!("bob")),
            Some(serde_json::json!(5)),
            None
        ]
    );
    assert!(
        raw_pttl(&server, "larder:{obj:cart:42}:#fields") > 0,
        "field updates keep the TTL"
    );
    // Missing objects are not created by partial updates.
    assert!(!carts.set_field("missing", "owner", &"x").await.unwrap());
    assert_eq!(carts.incr_field("missing", "items", 1).await.unwrap(), None);
    assert_eq!(carts.get("missing").await.unwrap(), None);
    // A field that is not JSON is a typed, counted corrupt error.
    let mut c = server.client().get_connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg("larder:{obj:cart:42}:#fields")
        .arg("owner")
        .arg("not json")
        .query(&mut c)
        .unwrap();
    assert!(carts.get("42").await.unwrap_err().is_corrupt());
    assert_eq!(s.stats().corrupt, 1);
    assert!(carts.delete("42").await.unwrap());
}

/// `PTTL` of a Redis key, read past the store.
pub(crate) fn raw_pttl(server: &RedisServer, key: &str) -> i64 {
    let mut c = server.client().get_connection().unwrap();
    redis::cmd("PTTL").arg(key).query(&mut c).unwrap()
}
