//! Key collisions: a helper's keys are where no user key and no other
//! helper can land.

use std::time::Duration;

use larder_core::Store;
use larder_redis::{Feed, HashObject, Leaderboard, RateLimit, RateLimiter, WorkQueue};
use larder_testkit::RedisServer;

use crate::structures::mocked;

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn limiters_whose_name_and_id_join_alike_do_not_share_a_counter() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let one = RateLimit::FixedWindow {
        limit: 1,
        window: Duration::from_secs(60),
    };
    let a = RateLimiter::new(&s, "a", one).unwrap();
    assert!(a.check("b:c").await.unwrap().allowed);
    // Limiter `a:b` with id `c`: either refused, or a counter of its own.
    match RateLimiter::new(&s, "a:b", one) {
        Err(e) => assert!(e.is_invalid_input(), "{e}"),
        Ok(ab) => assert!(
            ab.check("c").await.unwrap().allowed,
            "limiter a:b, id c, shares limiter a's counter for id b:c"
        ),
    }
}

#[tokio::test]
async fn a_cache_key_never_lands_on_a_helper() {
    let server = RedisServer::start().unwrap();
    let (s, _) = mocked(&server);
    let q: WorkQueue<String> = WorkQueue::new(&s, "emails", T).unwrap();
    q.push(&"welcome".to_string()).await.unwrap();
    let board: Leaderboard = Leaderboard::new(&s, "weekly").unwrap();
    board.set_score("ann", 1.0).await.unwrap();
    let feed: Feed<String> = Feed::new(&s, "activity", 10, T).unwrap();
    feed.push("u1", &"hello".to_string()).await.unwrap();
    let carts: HashObject<std::collections::BTreeMap<String, u64>> =
        HashObject::new(&s, "cart").unwrap();
    carts
        .put("42", &[("items".to_string(), 1)].into(), None)
        .await
        .unwrap();

    // A cache writes user keys that spell the helpers' names.
    for key in [
        "queue:emails",
        "board:weekly",
        "feed:activity:u1",
        "obj:cart:42",
    ] {
        s.set(key, b"cached bytes", T).await.unwrap();
    }

    assert_eq!(q.len().await.unwrap(), 1, "the queue was overwritten");
    assert_eq!(q.try_pop().await.unwrap().unwrap().item, "welcome");
    assert_eq!(board.score("ann").await.unwrap(), Some(1.0));
    assert_eq!(feed.recent("u1", 10).await.unwrap(), ["hello"]);
    assert_eq!(carts.get("42").await.unwrap().unwrap()["items"], 1);
    assert_eq!(
        s.get("queue:emails").await.unwrap().as_deref(),
        Some(&b"cached bytes"[..])
    );
}
