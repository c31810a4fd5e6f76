//! The escape hatch: commands the crate did not wrap, run through the same
//! path as its own (deadline, breaker, stats, routing by key).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use larder_core::Store;
use larder_redis::{RedisStore, Topology};
use larder_testkit::{RedisServer, start_masters};

use crate::quick_config;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_scan_through_the_store() {
    let server = RedisServer::start().unwrap();
    let s = RedisStore::new(
        quick_config(Topology::Standalone(server.url()))
            .namespace("shop")
            .build()
            .unwrap(),
    )
    .unwrap();
    for i in 0..25 {
        s.set(&format!("sku:{i}"), b"v", T).await.unwrap();
    }
    // A key of another namespace, which SCAN MATCH must leave out.
    let mut raw = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("other:x")
        .arg("1")
        .exec(&mut raw)
        .unwrap();

    // SCAN with MATCH on the namespace prefix, bounded.
    let mut seen = BTreeSet::new();
    let mut cursor = 0u64;
    for _ in 0..1_000 {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg("shop:*")
            .arg("COUNT")
            .arg(10);
        let (next, keys): (u64, Vec<String>) = s.command(None, cmd, true).await.unwrap();
        seen.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(cursor, 0, "SCAN did not finish");
    let want: BTreeSet<String> = (0..25).map(|i| format!("shop:{{sku:{i}}}")).collect();
    assert_eq!(seen, want);

    // PUBLISH reaches a subscriber.
    let mut sub = server.client().get_async_pubsub().await.unwrap();
    sub.subscribe("shop:events").await.unwrap();
    let mut messages = sub.on_message();
    let mut publish = redis::cmd("PUBLISH");
    publish.arg("shop:events").arg("restocked");
    let receivers: i64 = s.command(None, publish, false).await.unwrap();
    assert_eq!(receivers, 1);
    let msg = messages.next().await.unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "restocked");

    // A pipeline, and the figures: both counted like the crate's own commands.
    let mut p = redis::pipe();
    p.cmd("UNLINK")
        .arg("shop:{sku:0}")
        .cmd("EXISTS")
        .arg("shop:{sku:1}");
    let (unlinked, exists): (i64, i64) = s.pipeline(Some("shop:{sku:0}"), p, false).await.unwrap();
    assert_eq!((unlinked, exists), (1, 1));
    let stats = s.stats();
    assert!(stats.command("OTHER").unwrap().calls >= 4, "{stats:?}");
    assert_eq!(stats.command("PIPELINE").unwrap().calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_routed_by_key_on_a_sharded_store() {
    let masters = start_masters(3).unwrap();
    let urls: Vec<String> = masters.iter().map(RedisServer::url).collect();
    let s = RedisStore::new(quick_config(Topology::Sharded(urls)).build().unwrap()).unwrap();
    for i in 0..30 {
        let key = format!("k{i}");
        s.set(&key, key.as_bytes(), T).await.unwrap();
        let redis_key = s.keyspace().data_key(&key).unwrap();
        let mut get = redis::cmd("GET");
        get.arg(&redis_key);
        let v: Option<Vec<u8>> = s.command(Some(&redis_key), get, true).await.unwrap();
        assert_eq!(
            v.as_deref(),
            Some(key.as_bytes()),
            "{key} routed to its shard"
        );
    }
    // Without a key there is no one node to send it to.
    let e = s
        .command::<String>(None, redis::cmd("PING"), true)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), larder_core::ErrorKind::InvalidArgument, "{e}");
}
