//! The tutorial's learning-path examples (quickstart, user_profiles,
//! advanced, monitoring) and the catalog_service, each run as a built
//! binary (against a real redis-server where it takes one) and held to what
//! it prints or serves.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use larder_examples::http::{Response, request};
use larder_examples::shop::initial_price;
use larder_testkit::RedisServer;

use super::{example, run};

/// `name` with the Redis environment cleared, so that a developer's own
/// `REDIS_URL` never leaks into a test.
fn bare(name: &str) -> Command {
    let mut cmd = example(name);
    cmd.env_remove("REDIS_URL");
    cmd
}

/// Asserts that `expected` appear in `out` as consecutive lines.
fn assert_lines(out: &str, expected: &[&str]) {
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.windows(expected.len()).any(|w| w == expected),
        "expected these consecutive lines:\n{}\nin:\n{out}",
        expected.join("\n")
    );
}

/// The only line of `out` that starts with `prefix`.
fn line_starting<'a>(out: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = out.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(
        found.len(),
        1,
        "one line starting {prefix:?} expected in:\n{out}"
    );
    found[0]
}

/// The number right after `prefix` in `line`.
fn number_after(line: &str, prefix: &str) -> u64 {
    let rest = &line[line
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"))
        + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in {line:?}"))
}

/// The value of the Prometheus sample `series` (name and labels, exactly).
fn sample(scrape: &str, series: &str) -> u64 {
    let line = line_starting(scrape, &format!("{series} "));
    line[series.len() + 1..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not an integer sample: {line:?}"))
}

#[test]
fn quickstart_loads_hits_invalidates_and_counts() {
    let out = run(bare("quickstart"));
    assert_lines(
        &out,
        &[
            r#"read 1: Some(Product { name: "Espresso cup", price_cents: 1200 }) (database queries so far: 1)"#,
            r#"read 2: Some(Product { name: "Espresso cup", price_cents: 1200 }) (database queries so far: 1)"#,
            "price of product 1 set to 990 in the database; key 1 invalidated",
            r#"read 3: Some(Product { name: "Espresso cup", price_cents: 990 }) (database queries so far: 2)"#,
            "read 4 (id 404): None (database queries so far: 3)",
            "stats: l1_hits=1 l1_misses=3 loads_ok=3 invalidations=1 l1_entries=1 hit_ratio=0.25",
        ],
    );
}

#[test]
fn user_profiles_without_redis_says_what_to_set_and_exits_2() {
    let out = bare("user_profiles").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}

#[test]
fn user_profiles_reads_through_updates_through_the_writer_and_edits_hash_fields() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("user_profiles");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    assert_lines(
        &out,
        &[
            "-- read-through",
            "instance A reads user 1: Ann Lee <ann@example.com> (SQL queries: 1)",
            "instance A reads user 1 again: L1 hit (SQL queries: 1)",
            "instance B reads user 1: ann@example.com from Redis (B's L2 hits: 1, SQL queries: 1)",
            "instance A reads user 99: None (SQL queries: 2)",
        ],
    );
    assert_lines(
        &out,
        &[
            "instance A updates user 1's email: UPDATE, then invalidate (SQL queries: 3)",
            "instance A reads user 1: ann.lee@example.org (loaded again; SQL queries: 4)",
            // The documented limit: other instances' L1s keep their copy.
            "instance B reads user 1: ann@example.com (its own L1 copy, kept at most 30 s by memory_ttl_cap)",
            "updating user 42: refused (InvalidArgument: no user 42); nothing invalidated",
        ],
    );
    assert_lines(
        &out,
        &[
            r#"fields plan, logins: "free", 0"#,
            "after 3 logins and an upgrade: plan=pro logins=3 last_page=/settings (user 1)",
            "set_field on session 2, which does not exist: false (not created)",
            "instance A: l1_hits=1 l2_hits=0 loads_ok=3 invalidations=1",
        ],
    );
    // A second run starts from a cleared namespace: the same story, with
    // the first run's keys removed first.
    let mut again = bare("user_profiles");
    again.env("REDIS_URL", server.url());
    let second = run(again);
    let tail = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(tail(&second), tail(&out));
    assert!(
        number_after(second.lines().next().unwrap(), ", ") > 0,
        "{second}"
    );
}

fn check_advanced(out: &str) {
    // 1. XFetch: the slow report is refreshed before it expires, within
    //    40 load times of expiry (the law's reach), and nobody waits.
    let slow = line_starting(out, "report:slow (load 500 ms): refreshed early ");
    assert!(slow.ends_with("; 501 reads, 0 waited for a load"), "{slow}");
    let secs: f64 = slow["report:slow (load 500 ms): refreshed early ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0.0 && secs <= 20.0, "{slow}");
    assert_lines(
        out,
        &[
            "report:slow with xfetch_beta(0.0): no early refresh; the first read after expiry waited 500 ms",
        ],
    );
    // 2. Stale-while-revalidate and stale-if-error.
    assert_lines(
        out,
        &[
            r#"cold read: "price:tea price v1", waited 300 ms for the load"#,
            r#"12 s later (stale, in the grace window): "price:tea price v1" served in 0 ms; stale_served=1, a refresh runs in the background"#,
            r#"after the refresh: "price:tea price v2""#,
            r#"source down, 15 s later: "price:coffee price v3" (stale_if_error=1)"#,
            "source down, 75 s later: error Source: the price service is down (stale for longer than 60 s)",
        ],
    );
    // 3. Hot keys: Zipf's three heads, in order; the hottest refreshed ahead.
    let top: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("40000 reads, Zipf(1.0)"))
        .skip(1)
        .take(3)
        .collect();
    for (i, line) in top.iter().enumerate() {
        assert!(
            line.starts_with(&format!("  #{} product {i}: ~", i + 1)),
            "{line}\n{out}"
        );
    }
    assert!(
        number_after(top[0], "~") > number_after(top[1], "~"),
        "{out}"
    );
    assert_lines(
        out,
        &[
            "product 0 read 101 times across its expiry: hot_refreshes=1, reads that waited for a load=0",
        ],
    );
    // 4. Warming: progress after every batch, then the report.
    let progress: Vec<String> = (1..=10)
        .map(|i| format!("  warmed {}/1000", i * 100))
        .collect();
    let progress: Vec<&str> = progress.iter().map(String::as_str).collect();
    assert_lines(out, &progress);
    assert_lines(
        out,
        &[
            "report: skipped=50 loaded=850 failed=100 (10 bulk queries)",
            "then 900 reads of ids 0..899: 0 reached the source (the failed batch was not cached; its next reads will load)",
        ],
    );
    // 5. Negative caching.
    assert_lines(
        out,
        &[
            "without negative_ttl: 100 queries, negative_hits=0",
            "with negative_ttl(30 s): 1 queries, negative_hits=99",
            r#"  31 s later: 2 queries (the "not found" expired and was checked again)"#,
        ],
    );
}

#[test]
fn advanced_shows_each_pattern_with_l1_only_and_the_same_with_redis() {
    let out = run(bare("advanced"));
    assert_eq!(
        out.lines().next(),
        Some("L2: none (set REDIS_URL to add Redis)")
    );
    check_advanced(&out);

    let server = RedisServer::start().unwrap();
    let mut cmd = bare("advanced");
    cmd.env("REDIS_URL", server.url());
    let with_redis = run(cmd);
    assert!(
        with_redis.starts_with("L2: Redis at redis://"),
        "{with_redis}"
    );
    check_advanced(&with_redis);
    // Same story at both levels: the mock clock makes it deterministic.
    let tail = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(tail(&with_redis), tail(&out));
}

/// The scrape's figures equal the ones the workload printed from `stats()`.
fn check_monitoring(out: &str, with_l2: bool) -> String {
    let workload = line_starting(out, "workload: ");
    assert!(workload.starts_with("workload: 20000 reads;"), "{workload}");
    line_starting(out, "serving http://127.0.0.1:");
    assert_lines(
        out,
        &[
            "GET /metrics -> 200 (text/plain; version=0.0.4)",
            "--- one scrape of /metrics (larder_ series) ---",
        ],
    );
    let scrape: String = out
        .lines()
        .skip_while(|l| !l.starts_with("--- one scrape"))
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        scrape.contains("# TYPE larder_requests_total counter"),
        "{scrape}"
    );
    let series = |level: &str, result: &str| {
        format!(r#"larder_requests_total{{cache="products",level="{level}",result="{result}"}}"#)
    };
    let l1_hits = sample(&scrape, &series("l1", "hit"));
    assert_eq!(l1_hits, number_after(workload, "l1 hits "));
    assert!(l1_hits > 10_000, "Zipf reads mostly hit: {workload}");
    assert_eq!(
        sample(&scrape, &series("l1", "miss")),
        number_after(workload, "l1 misses ")
    );
    assert_eq!(
        sample(&scrape, &series("l2", "hit")),
        number_after(workload, "l2 hits ")
    );
    assert_eq!(
        sample(
            &scrape,
            r#"larder_loads_total{cache="products",result="ok"}"#
        ),
        number_after(workload, "loads ok ")
    );
    assert_eq!(
        sample(&scrape, r#"larder_invalidations_total{cache="products"}"#),
        50
    );
    assert_eq!(
        sample(&scrape, r#"larder_l1_entries{cache="products"}"#),
        1_000
    );
    assert_eq!(
        scrape.contains("larder_breaker_open{"),
        with_l2,
        "the breaker gauge exists exactly when there is a Redis L2:\n{scrape}"
    );
    if with_l2 {
        assert!(number_after(workload, "l2 hits ") > 0, "{workload}");
    }
    scrape
}

#[test]
fn monitoring_serves_a_scrape_that_matches_the_cache_stats() {
    check_monitoring(&run(bare("monitoring")), false);

    let server = RedisServer::start().unwrap();
    let mut cmd = bare("monitoring");
    cmd.env("REDIS_URL", server.url());
    let scrape = check_monitoring(&run(cmd), true);
    assert!(
        scrape.contains(&format!(
            r#"larder_breaker_open{{cache="products",node="{}"}} 0"#,
            server.url()
        )),
        "{scrape}"
    );
}

/// A running catalog_service, killed on drop (so a failed assertion never
/// leaves it behind).
struct Service {
    child: Child,
    addr: SocketAddr,
    /// What it printed up to `listening on`.
    banner: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts it on port 0 and reads the address it prints.
    fn start(args: &[&str]) -> Service {
        let mut child = bare("catalog_service")
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("catalog_service starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    banner.push_str(&line);
                    banner.push('\n');
                    if let Some(url) = line.strip_prefix("listening on http://") {
                        let addr = url.parse().expect("an address");
                        return Service {
                            child,
                            addr,
                            banner,
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "catalog_service printed no address:\n{banner}\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(self.addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

#[test]
fn catalog_service_serves_pages_applies_price_changes_and_exports_metrics() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let svc = Service::start(&["--products", "2000", "--redis", &url]);
    assert!(
        svc.banner.contains("cache: L1 (20000 entries) + Redis L2"),
        "{}",
        svc.banner
    );

    // A page, twice: the second from the cache, the same JSON.
    let first = svc.call("GET", "/products/7", None);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert!(
        first.body.starts_with(r#"{"id":7,"name":"Product 7","#),
        "{first:?}"
    );
    let price = format!(r#""price_cents":{}"#, initial_price(7));
    assert!(first.body.contains(&price), "{first:?}");
    assert_eq!(svc.call("GET", "/products/7", None), first);

    // A price change, then the page shows it (the cached page was
    // invalidated: without the invalidation this GET would still say 1069).
    let put = svc.call("PUT", "/products/7/price", Some(r#"{"price_cents":4242}"#));
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(put.body, r#"{"id":7,"price_cents":4242}"#);
    let after = svc.call("GET", "/products/7", None);
    assert_eq!(after.status, 200, "{after:?}");
    assert!(after.body.contains(r#""price_cents":4242"#), "{after:?}");

    // Errors: a missing product, a bad price, a bad id.
    let missing = svc.call("GET", "/products/999999", None);
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.body.contains(r#""kind":"NotFound""#), "{missing:?}");
    assert_eq!(
        svc.call(
            "PUT",
            "/products/999999/price",
            Some(r#"{"price_cents":1}"#)
        )
        .status,
        404
    );
    let bad = svc.call("PUT", "/products/7/price", Some(r#"{"price_cents":0}"#));
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("InvalidArgument"), "{bad:?}");
    assert_eq!(svc.call("GET", "/products/x", None).status, 400);

    let health = svc.call("GET", "/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\nl2: up\n"));

    let metrics = svc.call("GET", "/metrics", None);
    assert_eq!(metrics.status, 200);
    let scrape = metrics.body;
    let series = |level: &str, result: &str| {
        format!(r#"larder_requests_total{{cache="products",level="{level}",result="{result}"}}"#)
    };
    // Reads of id 7: miss (load), hit, miss (after the PUT); id 999999: miss.
    assert_eq!(sample(&scrape, &series("l1", "hit")), 1, "{scrape}");
    assert_eq!(sample(&scrape, &series("l1", "miss")), 3, "{scrape}");
    assert_eq!(
        sample(&scrape, r#"larder_invalidations_total{cache="products"}"#),
        1
    );
    assert_eq!(
        sample(
            &scrape,
            r#"catalog_http_requests_total{route="/products/{id}",status="200"}"#
        ),
        3
    );
    assert_eq!(
        sample(
            &scrape,
            r#"catalog_http_requests_total{route="/products/{id}",status="404"}"#
        ),
        1
    );
}

#[test]
fn catalog_service_refuses_bad_options_with_exit_2() {
    let out = bare("catalog_service")
        .args(["--products", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("products"));
}
