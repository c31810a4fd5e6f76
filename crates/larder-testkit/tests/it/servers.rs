use larder_testkit::{RedisServer, start_masters};

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

#[test]
fn standalone_set_get_kill_restart() {
    let mut server = RedisServer::start().unwrap();
    assert!(server.is_running());
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
    assert_eq!(get(&mut con, "k").as_deref(), Some("v"));

    // The server runs with no persistence, in its own directory.
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut con)
        .unwrap();
    assert_eq!(save, ["save", ""]);
    let dir: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        std::path::Path::new(&dir[1]),
        server.dir().canonicalize().unwrap()
    );

    let port = server.port();
    server.kill();
    assert!(!server.is_running());
    assert!(
        server.client().get_connection().is_err(),
        "a killed server refuses connections"
    );

    server.restart().unwrap();
    assert_eq!(server.port(), port, "restart keeps the port");
    let mut con = server.client().get_connection().unwrap();
    assert_eq!(get(&mut con, "k"), None, "no persistence: data is gone");
}

#[test]
fn drop_kills_the_process() {
    let server = RedisServer::start().unwrap();
    let pid = server.pid().unwrap() as libc::pid_t;
    drop(server);
    // SAFETY: signal 0 only checks that the pid exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "pid {pid} still exists after drop");
}

#[test]
fn three_independent_masters() {
    let masters = start_masters(3).unwrap();
    let mut ports: Vec<u16> = masters.iter().map(|m| m.port()).collect();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    let mut first = masters[0].client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("only-on-0")
        .arg("1")
        .exec(&mut first)
        .unwrap();
    for m in &masters[1..] {
        let mut con = m.client().get_connection().unwrap();
        assert_eq!(get(&mut con, "only-on-0"), None);
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).unwrap();
        assert_eq!(role[0], redis::Value::BulkString(b"master".to_vec()));
    }
}

#[test]
fn acl_server_rejects_wrong_password_and_accepts_right_one() {
    let server = RedisServer::builder()
        .requirepass("s3cret")
        .acl_user("app", "app-pass")
        .acl_user_with_rules("reader", "r-pass", "~* +get +ping")
        .start()
        .unwrap();

    // No credentials: NOAUTH on the first command.
    let mut anon = server.client().get_connection().unwrap();
    let err = redis::cmd("GET")
        .arg("k")
        .query::<Option<String>>(&mut anon)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");

    // Wrong password: the connection itself is refused with an auth error.
    let bad = redis::Client::open(server.url_with_auth("app", "wrong")).unwrap();
    let err = bad
        .get_connection()
        .err()
        .expect("a wrong password is refused");
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");

    // Right passwords, for the default user and for an ACL user.
    let good = redis::Client::open(server.url_with_auth("default", "s3cret")).unwrap();
    let mut con = good.get_connection().unwrap();
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
    let app = redis::Client::open(server.url_with_auth("app", "app-pass")).unwrap();
    assert_eq!(
        get(&mut app.get_connection().unwrap(), "k").as_deref(),
        Some("v")
    );

    // A restricted user may read but not write.
    let reader = redis::Client::open(server.url_with_auth("reader", "r-pass")).unwrap();
    let mut r = reader.get_connection().unwrap();
    assert_eq!(get(&mut r, "k").as_deref(), Some("v"));
    let err = redis::cmd("SET")
        .arg("k")
        .arg("x")
        .exec(&mut r)
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
}

#[test]
fn start_up_failure_carries_the_log() {
    let err = RedisServer::builder()
        .arg("--no-such-option")
        .arg("1")
        .start()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("exited at start-up"), "{text}");
}

/// A server that cannot bind its port must not be mistaken for the one
/// already serving it: start-up waits for its own log to say it is ready,
/// then draws another port. (Two tests can draw the same free port; before
/// this check, the loser got a handle to the winner's server, which
/// vanished when the winner's test ended: a flaky "connection refused".)
#[test]
fn a_taken_port_is_never_mistaken_for_our_server() {
    let first = RedisServer::start().unwrap();
    let mut second = RedisServer::builder()
        .first_port(first.port())
        .start()
        .unwrap();
    assert_ne!(second.port(), first.port(), "a handle to the other server");
    // Each handle owns its own process: killing one leaves the other up.
    second.kill();
    let mut con = first.client().get_connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}
