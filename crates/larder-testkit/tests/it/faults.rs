//! Pause, proxy latency, stall, cut and refusal. Time is real here because the
//! faults are real; assertions are lower bounds guaranteed by construction
//! (a delay of d makes a round trip take at least 2d) and error kinds, never
//! a speed threshold.

use std::time::{Duration, Instant};

use larder_testkit::{FaultProxy, RedisServer};

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

#[test]
#[allow(clippy::disallowed_methods)]
fn paused_server_times_a_client_out_then_recovers() {
    let server = RedisServer::start().unwrap();
    let mut con = server.client().get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    server.pause().unwrap();
    let err = ping(&mut con).unwrap_err();
    assert!(err.is_timeout(), "{err}");

    server.resume().unwrap();
    // The timed-out connection is unusable; a new one works.
    let mut fresh = server.client().get_connection().unwrap();
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_an_async_client() {
    let server = RedisServer::start().unwrap();
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_millis(200)));
    let mut con = server
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    server.pause().unwrap();
    let err = redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    server.resume().unwrap();
}

#[test]
#[allow(clippy::disallowed_methods)]
fn proxy_adds_latency_in_both_directions() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let mut con = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    let latency = Duration::from_millis(40);
    proxy.set_latency(latency);
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(ping(&mut con).unwrap(), "PONG");
    }
    let per_round_trip = start.elapsed() / 3;
    assert!(
        per_round_trip >= 2 * latency,
        "round trip {per_round_trip:?} < {:?}",
        2 * latency
    );
    assert_eq!(proxy.live_connections(), 1);
}

#[test]
fn proxy_cuts_connections_and_refuses_new_ones() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let client = redis::Client::open(proxy.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    proxy.cut_all();
    let err = ping(&mut con).unwrap_err();
    assert!(
        err.is_connection_dropped() || err.is_io_error(),
        "expected a dropped connection, got {err}"
    );

    proxy.set_refusing(true);
    let refused = client.get_connection().and_then(|mut c| ping(&mut c));
    assert!(refused.is_err(), "a refusing proxy must not serve");

    proxy.set_refusing(false);
    let mut again = client.get_connection().unwrap();
    assert_eq!(ping(&mut again).unwrap(), "PONG");
    assert!(proxy.accepted_connections() >= 3);
}

#[test]
fn proxy_stall_holds_bytes_until_released() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let mut con = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    con.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    proxy.set_stalled(true);
    let err = ping(&mut con).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    proxy.set_stalled(false);

    let mut fresh = redis::Client::open(proxy.url())
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}
