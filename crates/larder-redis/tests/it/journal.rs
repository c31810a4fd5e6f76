//! The durable write-behind journal against a real server: the cache write
//! and the entry in one script, latest-entry tracking, acknowledgement,
//! dead letters, and recovery of pending entries (own and idle).

use std::time::Duration;

use larder_core::{ErrorKind, Store, envelope};
use larder_redis::{RedisConfig, RedisStore, Topology, entry_order};
use larder_testkit::RedisServer;

use crate::{env, quick_config, raw_get, store};

const T: Duration = Duration::from_secs(30);

/// A stream entry as `XRANGE` answers it: id and field pairs.
type Entry = (String, Vec<(String, Vec<u8>)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_writes_the_value_and_the_entry_together_and_ack_removes_it() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let j = s.journal("web-1").unwrap();

    let (id1, v1) = j.append("k", b"one", &env(0, b"v1"), T, T).await.unwrap();
    let stored = raw_get(&server.url(), "larder:{k}").unwrap();
    let got = envelope::decode(&stored).unwrap();
    assert_eq!(got.payload(), b"v1");
    assert_eq!(
        got.meta.version, v1,
        "the value carries the allocated version"
    );
    assert_eq!(s.version("k").await.unwrap(), v1);
    assert_eq!(j.len().await.unwrap(), 1);

    let (id2, v2) = j.append("k", b"two", &env(0, b"v2"), T, T).await.unwrap();
    assert!(v2 > v1 && entry_order(&id2) > entry_order(&id1));
    let pairs = vec![("k".to_owned(), id1.clone()), ("k".to_owned(), id2.clone())];
    assert_eq!(
        j.is_latest(&pairs).await.unwrap(),
        vec![false, true],
        "the second write superseded the first"
    );

    assert_eq!(j.ack(&pairs).await.unwrap(), 2);
    assert_eq!(j.len().await.unwrap(), 0, "acknowledged entries leave");
    assert_eq!(j.ack(&pairs).await.unwrap(), 0, "idempotent");
    assert_eq!(
        j.is_latest(&pairs[1..]).await.unwrap(),
        vec![false],
        "the latest pointer went with its entry"
    );
    assert!(
        j.recover(true, Duration::ZERO, 100)
            .await
            .unwrap()
            .is_empty(),
        "nothing pending after the acknowledgement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_recovers_its_own_entries_and_others_take_idle_ones() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let first = s.journal("web-1").unwrap();
    let mut ids = Vec::new();
    for (k, p) in [("a", "1"), ("b", "2"), ("a", "3")] {
        ids.push(
            first
                .append(k, p.as_bytes(), &env(0, b"x"), T, T)
                .await
                .unwrap()
                .0,
        );
    }
    drop(first);

    // Another instance with a long idle bound takes nothing.
    let other = store(&server.url()).journal("web-2").unwrap();
    assert!(other.recover(true, T, 100).await.unwrap().is_empty());

    // The same consumer, restarted, gets all three at once, in order.
    let again = store(&server.url()).journal("web-1").unwrap();
    let got = again.recover(true, T, 100).await.unwrap();
    let seen: Vec<(&str, &[u8])> = got
        .iter()
        .map(|e| (e.key.as_str(), e.payload.as_deref().unwrap()))
        .collect();
    assert_eq!(seen, vec![("a", &b"1"[..]), ("b", b"2"), ("a", b"3")]);
    assert_eq!(got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids);

    // Idle entries move to whoever claims them.
    let taken = other.recover(false, Duration::ZERO, 100).await.unwrap();
    assert_eq!(taken.len(), 3);
    assert!(
        again.recover(true, T, 100).await.unwrap().is_empty(),
        "claimed entries left the old consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_keep_the_payload_and_the_error_and_foreign_entries_are_flagged() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let j = s.journal("w").unwrap();
    let (id, _) = j
        .append("k", b"payload", &env(0, b"v"), T, T)
        .await
        .unwrap();
    assert_eq!(
        j.dead_letter(&[("k".to_owned(), id)], "writer said no")
            .await
            .unwrap(),
        1
    );
    assert_eq!(j.len().await.unwrap(), 0);
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let dead: Vec<Entry> = redis::cmd("XRANGE")
        .arg(j.dead_letter_key())
        .arg("-")
        .arg("+")
        .query(&mut c)
        .unwrap();
    assert_eq!(dead.len(), 1);
    let fields = &dead[0].1;
    assert!(fields.contains(&("p".to_owned(), b"payload".to_vec())));
    assert!(fields.contains(&("error".to_owned(), b"writer said no".to_vec())));

    // Another client plants an entry of its own: recovered as foreign.
    let _: String = redis::cmd("XADD")
        .arg(j.stream_key())
        .arg("*")
        .arg("junk")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let got = j.recover(false, Duration::ZERO, 10).await;
    // Undelivered entries are not pending: nothing to claim yet.
    assert!(got.unwrap().is_empty());
    j.append("k2", b"p", &env(0, b"v"), T, T).await.unwrap();
    let got = j.recover(true, T, 10).await.unwrap();
    assert_eq!(got.len(), 2, "the append delivered the planted entry too");
    assert_eq!(got[0].payload, None, "a foreign entry has no payload");
    assert_eq!(got[1].payload.as_deref(), Some(&b"p"[..]));
    // A foreign entry's key is no valid key: it is dead-lettered all the
    // same (once refused with InvalidKey, so it stayed pending forever).
    let foreign = vec![(got[0].key.clone(), got[0].id.clone())];
    assert_eq!(j.dead_letter(&foreign, "foreign").await.unwrap(), 1);
    assert_eq!(j.len().await.unwrap(), 1, "only k2's entry is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journals_need_a_standalone_server_and_a_sane_consumer_name() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    for bad in ["", "has space", "a:b", &"x".repeat(201)] {
        assert_eq!(
            s.journal(bad).unwrap_err().kind(),
            ErrorKind::InvalidArgument,
            "{bad:?}"
        );
    }
    let sharded = RedisStore::new(
        quick_config(Topology::Sharded(vec![server.url()]))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        sharded.journal("w").unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    let cluster = RedisStore::new(
        RedisConfig::builder(Topology::Cluster(vec![server.url()]))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        cluster.journal("w").unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

/// A fill while a journalled write of the key has not reached the source
/// is refused: the loader read the source's older value, which would
/// outlive the write in the L2 once it lands (the chaos soak's finding).
/// Other keys fill as before; once the entry is settled, the key does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_is_refused_while_a_journalled_write_of_the_key_is_pending() {
    let server = RedisServer::start().unwrap();
    let s = store(&server.url());
    let j = s.journal("web-1").unwrap();
    let (id, _) = j.append("k", b"p", &env(0, b"new"), T, T).await.unwrap();
    // Another instance invalidates the key, then a reader misses and loads.
    let ticket = s.invalidate("k", T).await.unwrap();
    assert!(
        !s.fill("k", &env(ticket, b"old"), T).await.unwrap(),
        "refused while the write is pending"
    );
    assert_eq!(s.get("k").await.unwrap(), None, "nothing older was cached");
    let other = s.version("other").await.unwrap();
    assert!(s.fill("other", &env(other, b"o"), T).await.unwrap());

    // A load that read the source before the write reached it, its fill
    // arriving after the acknowledgement: refused too.
    let early = s.version("k").await.unwrap();
    assert_eq!(j.ack(&[("k".to_owned(), id)]).await.unwrap(), 1);
    assert!(
        !s.fill("k", &env(early, b"old"), T).await.unwrap(),
        "a ticket from before the acknowledgement is stale"
    );
    let ticket = s.version("k").await.unwrap();
    assert!(
        s.fill("k", &env(ticket, b"new"), T).await.unwrap(),
        "written to the source: fills again"
    );

    // A store told that no instance journals never looks.
    let blind = RedisStore::new(
        quick_config(Topology::Standalone(server.url()))
            .fill_checks_journal(false)
            .build()
            .unwrap(),
    )
    .unwrap();
    j.append("m", b"p", &env(0, b"new"), T, T).await.unwrap();
    let ticket = s.invalidate("m", T).await.unwrap();
    assert!(!s.fill("m", &env(ticket, b"old"), T).await.unwrap());
    assert!(blind.fill("m", &env(ticket, b"old"), T).await.unwrap());

    // The journal is lost (trimmed, evicted) but the latest-entry hash
    // survives: its stale field blocks no fill, and goes.
    j.append("n", b"p", &env(0, b"new"), T, T).await.unwrap();
    let mut c = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("DEL").arg(j.stream_key()).query(&mut c).unwrap();
    let ticket = s.invalidate("n", T).await.unwrap();
    assert!(s.fill("n", &env(ticket, b"old"), T).await.unwrap());
    let field: Option<String> = redis::cmd("HGET")
        .arg("larder:wb:latest")
        .arg("n")
        .query(&mut c)
        .unwrap();
    assert_eq!(field, None, "the stale field was removed");
}
