//! Jepsen-style tests across OS processes: the test binary re-runs itself
//! as worker processes (selected by `LARDER_LOCK_WORKER`), so clients have
//! separate memory, connections and schedulers, and can be frozen with
//! SIGSTOP. The referee lives in Redis, where every process can reach it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use larder_lock::LockConfig;
use larder_testkit::RedisServer;
use redis::Script;

use crate::workload::{self, Verdict};
use crate::{cfg, manager};

const WORKER_ENV: &str = "LARDER_LOCK_WORKER";

/// A fenced write: KEYS highest, value; ARGV token, delta. 1 if accepted.
const FENCED_WRITE: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < last then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[2])
return 1
";

/// The next line the worker printed, bounded.
async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("worker output in time")
        .expect("a worker line")
}

/// Re-runs this test binary as a worker running `test` with `role`.
fn spawn_worker(test: &str, role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER_ENV, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for a child's exit (reported by a thread blocked in `wait`),
/// bounded: a child still running after 120 s is killed and fails the test.
fn wait_bounded(mut child: Child, what: &str) {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(status) => {
            let status = status.unwrap();
            assert!(status.success(), "{what} failed: {status}");
        }
        Err(_) => {
            // SAFETY: killing our own child process by its pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{what} did not finish within 120 s");
        }
    }
}

/// One worker process: `tasks` tasks x `rounds` read-modify-writes of the
/// shared counter, each inside the lock (unless locking is off).
async fn counter_worker(spec: &str) {
    // spec: "counter|<locking 0/1>|<resource url>|<url>,<url>,..."
    let parts: Vec<&str> = spec.split('|').collect();
    let resource = redis::Client::open(parts[2]).unwrap();
    let urls: Vec<String> = parts[3].split(',').map(str::to_owned).collect();
    workload::client(manager(&urls, cfg(2_000)), resource, 2, 6, parts[1] == "1").await;
}

async fn run_processes(
    test: &str,
    urls: &[String],
    resource: &RedisServer,
    locking: bool,
) -> Verdict {
    let client = resource.client();
    workload::reset(&client).await;
    let spec = format!(
        "counter|{}|{}|{}",
        u8::from(locking),
        resource.url(),
        urls.join(",")
    );
    let children: Vec<Child> = (0..3).map(|_| spawn_worker(test, &spec)).collect();
    tokio::task::spawn_blocking(move || {
        for (i, c) in children.into_iter().enumerate() {
            wait_bounded(c, &format!("worker {i}"));
        }
    })
    .await
    .unwrap();
    workload::verdict(&client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_set_across_three_processes() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        return counter_worker(&spec).await;
    }
    let test = "procs::lock_set_across_three_processes";
    let (_masters, resource, urls) = workload::servers().await;

    let v = run_processes(test, &urls, &resource, true).await;
    workload::assert_protected(v, 36);

    // Negative control: the same processes without the lock are caught.
    let v = run_processes(test, &urls, &resource, false).await;
    workload::assert_caught(v, 36);
}

/// The pausable client: acquires, reports its token, waits to be told to
/// go on (after being frozen past its lease), then reports whether it knew
/// it had lost the lock and whether its late write was accepted.
#[allow(clippy::print_stdout)] // the worker talks to the parent test on stdout
async fn pausable_worker(spec: &str) {
    let url = spec.strip_prefix("pausable|").unwrap().to_owned();
    let m = manager(
        std::slice::from_ref(&url),
        LockConfig::with_ttl(Duration::from_millis(500)),
    );
    let g = m.acquire("stock").await.unwrap();
    println!("WORKER:ACQUIRED {}", g.fencing_token());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    // Frozen and thawed: the lease ran out while the watchdog was stopped too.
    let lost = tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .is_ok();
    println!("WORKER:LOST {lost}");
    let resource = redis::Client::open(url.as_str()).unwrap();
    let mut con = resource.get_multiplexed_async_connection().await.unwrap();
    let accepted: i64 = Script::new(FENCED_WRITE)
        .key("stock:highest")
        .key("stock:value")
        .arg(g.fencing_token())
        .arg(100)
        .invoke_async(&mut con)
        .await
        .unwrap();
    println!(
        "WORKER:WRITE {}",
        if accepted == 1 {
            "accepted"
        } else {
            "rejected"
        }
    );
    std::io::stdout().flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frozen_by_sigstop_loses_the_lock_and_its_write_is_fenced_off() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        return pausable_worker(&spec).await;
    }
    let test = "procs::a_client_frozen_by_sigstop_loses_the_lock_and_its_write_is_fenced_off";
    let server = tokio::task::spawn_blocking(|| RedisServer::start().unwrap())
        .await
        .unwrap();
    let url = server.url();
    let mut child = spawn_worker(test, &format!("pausable|{url}"));
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The test harness may print on the same line first.
            if let Some(i) = line.find("WORKER:") {
                let _ = tx.send(line[i + "WORKER:".len()..].to_owned());
            }
        }
    });
    let acquired = next(&mut rx).await;
    let stale: u64 = acquired.strip_prefix("ACQUIRED ").unwrap().parse().unwrap();

    // Freeze the holder: the whole process, watchdog included.
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);

    // Another client gets the lock once the frozen holder's lease ends, and writes.
    let m = manager(std::slice::from_ref(&url), cfg(5_000));
    let g = m
        .acquire_wait("stock", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(g.fencing_token() > stale);
    let mut con = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ok: i64 = Script::new(FENCED_WRITE)
        .key("stock:highest")
        .key("stock:value")
        .arg(g.fencing_token())
        .arg(1)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(ok, 1);

    // Thaw the old holder and let it try its late write.
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    stdin.write_all(b"GO\n").unwrap();
    assert_eq!(
        next(&mut rx).await,
        "LOST true",
        "the thawed holder was not told it lost the lock"
    );
    assert_eq!(
        next(&mut rx).await,
        "WRITE rejected",
        "a stale token got through"
    );
    let value: i64 = redis::cmd("GET")
        .arg("stock:value")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(value, 1);
    assert!(g.release().await.unwrap());
    tokio::task::spawn_blocking(move || wait_bounded(child, "the pausable worker"))
        .await
        .unwrap();
}
