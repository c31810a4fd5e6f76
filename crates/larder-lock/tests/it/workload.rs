//! The lock-set workload and its referee, shared by the in-process and the
//! multi-process tests. The referee lives in Redis (the resource server), so
//! every client and every process reports to the same place:
//! - `occupied` is set with NX on entry: a second holder finds it set and
//!   counts an overlap;
//! - `last_token` keeps the highest fencing token seen on entry: a token
//!   that is not larger counts as stale;
//! - `counter` is read, then written back plus one, with a pause in
//!   between: any overlap loses an update.

use std::time::Duration;

use larder_lock::LockManager;
use larder_testkit::{RedisServer, start_masters};
use redis::Script;

/// Entry: KEYS occupied, overlaps, last_token, stale; ARGV token ('' when
/// the run holds no lock). Every locked entry is checked, token 0 included:
/// its first entry sets `last_token`, so 0 is stale from the second on.
const ENTER: &str = r"
if not redis.call('SET', KEYS[1], '1', 'NX') then redis.call('INCR', KEYS[2]) end
if ARGV[1] ~= '' then
  local t = tonumber(ARGV[1])
  local last = redis.call('GET', KEYS[3])
  if last and t <= tonumber(last) then redis.call('INCR', KEYS[4]) else redis.call('SET', KEYS[3], ARGV[1]) end
end
return 1
";

/// What the referee saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The counter's final value: the number of sections that took effect.
    pub(crate) count: u64,
    /// Entries that found another holder inside.
    pub(crate) overlaps: u64,
    /// Entries whose fencing token was not larger than every earlier one.
    pub(crate) stale: u64,
}

/// Clears the referee's keys.
pub(crate) async fn reset(resource: &redis::Client) {
    let mut con = resource.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::pipe()
        .cmd("MSET")
        .arg(&["counter", "0", "overlaps", "0", "stale", "0"])
        .cmd("DEL")
        .arg(&["occupied", "last_token"])
        .query_async(&mut con)
        .await
        .unwrap();
}

/// Reads the referee's findings.
pub(crate) async fn verdict(resource: &redis::Client) -> Verdict {
    let mut con = resource.get_multiplexed_async_connection().await.unwrap();
    let (count, overlaps, stale): (u64, u64, u64) = redis::cmd("MGET")
        .arg(&["counter", "overlaps", "stale"])
        .query_async(&mut con)
        .await
        .unwrap();
    Verdict {
        count,
        overlaps,
        stale,
    }
}

/// One client (one manager) running `tasks` tasks of `rounds` critical
/// sections each, inside the lock unless `locking` is off.
pub(crate) async fn client(
    m: LockManager,
    resource: redis::Client,
    tasks: usize,
    rounds: u64,
    locking: bool,
) {
    let enter = Script::new(ENTER);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (m, resource, enter) = (m.clone(), resource.clone(), enter.clone());
        handles.push(tokio::spawn(async move {
            let mut con = resource.get_multiplexed_async_connection().await.unwrap();
            for _ in 0..rounds {
                let guard = if locking {
                    Some(
                        m.acquire_wait("shared", Duration::from_secs(60))
                            .await
                            .unwrap(),
                    )
                } else {
                    None
                };
                let token = guard
                    .as_ref()
                    .map_or(String::new(), |g| g.fencing_token().to_string());
                let _: i64 = enter
                    .key("occupied")
                    .key("overlaps")
                    .key("last_token")
                    .key("stale")
                    .arg(token)
                    .invoke_async(&mut con)
                    .await
                    .unwrap();
                let v: u64 = redis::cmd("GET")
                    .arg("counter")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                // The read-modify-write window a lock must protect.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let _: () = redis::cmd("SET")
                    .arg("counter")
                    .arg(v + 1)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let _: () = redis::cmd("DEL")
                    .arg("occupied")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                if let Some(g) = guard {
                    assert!(
                        g.release().await.unwrap(),
                        "the lock was lost during a short section"
                    );
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

/// Three independent masters for Redlock and a separate resource server
/// holding the referee; the masters' URLs.
pub(crate) async fn servers() -> (Vec<RedisServer>, RedisServer, Vec<String>) {
    let masters = tokio::task::spawn_blocking(|| start_masters(3).unwrap())
        .await
        .unwrap();
    let resource = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let urls = masters.iter().map(RedisServer::url).collect();
    (masters, resource, urls)
}

/// A locked run: every section took effect, none overlapped, tokens grew.
pub(crate) fn assert_protected(v: Verdict, sections: u64) {
    assert_eq!(
        v,
        Verdict {
            count: sections,
            overlaps: 0,
            stale: 0
        }
    );
}

/// The negative control: an unlocked run must be caught (an overlap, or a
/// lost update).
pub(crate) fn assert_caught(v: Verdict, sections: u64) {
    assert!(
        v.overlaps > 0 || v.count < sections,
        "the referee missed an unlocked run: {v:?}"
    );
}

/// The fencing negative control: locked, with fencing off (every token 0),
/// the stale-token check must fire.
pub(crate) fn assert_stale_caught(v: Verdict) {
    assert!(
        v.stale > 0,
        "the stale-token check missed repeated tokens: {v:?}"
    );
}
