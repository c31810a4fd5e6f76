//! Versioned operations: tickets, fills, invalidations and versioned writes,
//! against a real server.

use std::time::Duration;

use larder_core::Store;
use larder_core::envelope;
use larder_testkit::RedisServer;

use crate::{env, raw_get, store};

const T: Duration = Duration::from_secs(30);

fn version_of(bytes: &[u8]) -> u64 {
    envelope::decode(bytes).unwrap().meta.version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_refuses_a_fill_that_started_before_it() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());

    // A key never written has ticket 0, and a fill with it lands.
    assert_eq!(s.version("k").await.unwrap(), 0);
    assert!(s.fill("k", &env(0, b"old"), T).await.unwrap());

    // A loader reads its ticket, then the key is invalidated while it loads.
    let ticket = s.version("k").await.unwrap();
    let v = s.invalidate("k", T).await.unwrap();
    assert!(v > ticket);
    assert_eq!(s.get("k").await.unwrap(), None, "the value is gone");
    assert!(
        !s.fill("k", &env(ticket, b"stale"), T).await.unwrap(),
        "a fill with the pre-invalidation ticket must be refused"
    );
    assert_eq!(s.get("k").await.unwrap(), None);

    // A loader that read its ticket after the invalidation fills.
    assert_eq!(s.version("k").await.unwrap(), v);
    assert!(s.fill("k", &env(v, b"new"), T).await.unwrap());
    // Retrying the same fill (a lost reply) tells the truth.
    assert!(s.fill("k", &env(v, b"new"), T).await.unwrap());
    let got = s.get("k").await.unwrap().unwrap();
    assert_eq!(envelope::decode(&got).unwrap().payload(), b"new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_writes_allocate_increasing_versions_and_beat_older_fills() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());

    let ticket = s.version("p").await.unwrap();
    let v1 = s.set_versioned("p", &env(0, b"w1"), T, T).await.unwrap();
    let stored = raw_get(&server.url(), "larder:{p}").unwrap();
    assert_eq!(
        version_of(&stored),
        v1,
        "the store wrote the version into the envelope"
    );
    assert_eq!(envelope::decode(&stored).unwrap().payload(), b"w1");
    assert!(!s.fill("p", &env(ticket, b"slow loader"), T).await.unwrap());

    let v2 = s.set_versioned("p", &env(0, b"w2"), T, T).await.unwrap();
    assert!(v2 > v1);
    let v3 = s.invalidate("p", T).await.unwrap();
    assert!(v3 > v2);
    assert_eq!(s.version("p").await.unwrap(), v3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_compare_as_numbers_and_never_go_back_after_the_record_expires() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let mut c = server.client().get_connection().unwrap();

    // A value with version 1 and a fill with ticket 128: numerically newer,
    // although byte strings under some collations order them the other way.
    redis::cmd("SET")
        .arg("larder:{n}")
        .arg(env(1, b"one"))
        .exec(&mut c)
        .unwrap();
    assert!(s.fill("n", &env(128, b"128"), T).await.unwrap());
    assert!(!s.fill("n", &env(1, b"one again"), T).await.unwrap());
    // Every byte position matters, in number order.
    for (older, newer) in [
        (255u64, 256u64),
        (0xFF_FF, 0x1_00_00),
        (1 << 40, (1 << 40) + 1),
    ] {
        let key = format!("n{older}");
        assert!(s.fill(&key, &env(newer, b"n"), T).await.unwrap());
        assert!(
            !s.fill(&key, &env(older, b"o"), T).await.unwrap(),
            "{older} < {newer}"
        );
    }

    // The record and the value expire; a later allocation is still higher.
    let v = s
        .invalidate("gone", Duration::from_millis(1))
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg("larder:{gone}:v")
        .exec(&mut c)
        .unwrap();
    assert_eq!(s.version("gone").await.unwrap(), 0);
    let again = s.invalidate("gone", T).await.unwrap();
    assert!(again > v, "{again} <= {v}: versions went back");

    // Bad input is typed, not sent.
    let e = s.fill("x", b"not an envelope", T).await.unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    let e = s.fill("x", &env(1 << 53, b"big"), T).await.unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
    let e = s.invalidate("", T).await.unwrap_err();
    assert!(e.is_invalid_input(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_at_a_time_and_release_by_token_only() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert!(s.acquire_lease("k", b"a", T).await.unwrap());
    assert!(
        s.acquire_lease("k", b"a", T).await.unwrap(),
        "the holder's retry"
    );
    assert!(!s.acquire_lease("k", b"b", T).await.unwrap());
    assert!(
        !s.release_lease("k", b"b").await.unwrap(),
        "not b's to release"
    );
    assert!(s.release_lease("k", b"a").await.unwrap());
    assert!(s.acquire_lease("k", b"b", T).await.unwrap());
    // The lease lives under an internal key, not the data key.
    assert_eq!(s.get("k").await.unwrap(), None);
    assert!(raw_get(&server.url(), "larder:{k}:lease").is_some());
    assert!(
        s.acquire_lease("k", b"", T)
            .await
            .unwrap_err()
            .is_invalid_input()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_with_version_reads_both_in_one_round_trip() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    assert_eq!(s.get_with_version("k").await.unwrap(), (None, 0));
    let v = s.set_versioned("k", &env(0, b"x"), T, T).await.unwrap();
    let mgets = s.stats().command("MGET").map_or(0, |c| c.calls);
    let (bytes, ticket) = s.get_with_version("k").await.unwrap();
    assert_eq!(ticket, v);
    assert_eq!(version_of(&bytes.unwrap()), v);
    assert_eq!(s.stats().command("MGET").unwrap().calls, mgets + 1);
    assert!(s.get_with_version("").await.unwrap_err().is_invalid_input());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_of_duration_max_means_as_long_as_redis_allows() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    s.set("forever", b"v", Duration::MAX).await.unwrap();
    assert!(s.fill("f", &env(0, b"v"), Duration::MAX).await.unwrap());
    s.invalidate("i", Duration::MAX).await.unwrap();
    s.set_versioned("w", &env(0, b"v"), Duration::MAX, Duration::MAX)
        .await
        .unwrap();
    assert!(s.acquire_lease("l", b"t", Duration::MAX).await.unwrap());
    let left = s.ttl("forever").await.unwrap().remaining().unwrap();
    assert!(left > Duration::from_secs(99 * 365 * 24 * 3600), "{left:?}");
}
