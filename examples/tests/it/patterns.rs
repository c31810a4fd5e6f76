//! The tutorial's pattern examples (leaderboard, rate limiter, feed, work
//! queue, lock, sharding, cluster), each run against real servers and held
//! to what it claims to show.

use std::process::Command;

use larder::redis::redis;
use larder_testkit::{RedisCluster, RedisServer, start_masters};

use super::{example, run};

/// `name` with its Redis environment cleared, so that a developer's own
/// `REDIS_URL` never leaks into a test.
fn bare(name: &str) -> Command {
    let mut cmd = example(name);
    for var in ["REDIS_URL", "REDIS_URLS", "REDIS_CLUSTER_URLS"] {
        cmd.env_remove(var);
    }
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

/// The number right after `prefix` in `line` (digits only).
fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The only line of `out` that contains `needle`.
fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    let found: Vec<&str> = out.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(
        found.len(),
        1,
        "one line with {needle:?} expected in:\n{out}"
    );
    found[0]
}

fn dbsize(server: &RedisServer) -> u64 {
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("DBSIZE").query(&mut con).unwrap()
}

#[test]
fn pattern_examples_without_their_servers_say_what_to_set_and_exit_2() {
    for (name, var) in [
        ("leaderboard", "REDIS_URL"),
        ("rate_limiter", "REDIS_URL"),
        ("activity_feed", "REDIS_URL"),
        ("work_queue", "REDIS_URL"),
        ("write_behind", "REDIS_URL"),
        ("coherence", "REDIS_URL"),
        ("distributed_lock", "REDIS_URL"),
        ("sharded", "REDIS_URLS"),
        ("cluster", "REDIS_CLUSTER_URLS"),
    ] {
        let out = bare(name).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(var), "{name} must name {var}: {stderr}");
    }
}

#[test]
fn leaderboard_ranks_pages_and_surrounds_a_player() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("leaderboard");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    assert_lines(&out, &["bob wins a match: +700 -> 3570 points"]);
    assert_lines(
        &out,
        &["bob: rank #4, 3570 points", "zed: not on the board"],
    );
    assert_lines(
        &out,
        &[
            "top 3:",
            "  #1 cho 4410 (Cho Min-jun, KR)",
            "  #2 hal 3880 (Hal Jordan, CA)",
            "  #3 eve 3650 (Eve Martin, FR)",
        ],
    );
    assert_lines(
        &out,
        &[
            "page 2 (3 per page):",
            "  #4 bob 3570",
            "  #5 ann 3120",
            "  #6 jon 2990",
        ],
    );
    assert_lines(
        &out,
        &[
            "around fay (2 either side):",
            "  #5 ann 3120",
            "  #6 jon 2990",
            "  #7 fay 2500   <- you",
            "  #8 ivy 2210",
            "  #9 dev 1990",
        ],
    );
    // It clears the board first: a second run prints the same (bob's +700
    // is not added twice).
    let mut again = bare("leaderboard");
    again.env("REDIS_URL", server.url());
    assert_eq!(run(again), out);
}

#[test]
fn rate_limiter_denies_the_excess_of_a_burst_and_its_retry_after_holds() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("rate_limiter");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    // (algorithm, longest possible retry_after in ms)
    for (name, max_retry) in [
        ("fixed window", 1000),
        ("sliding window", 1000),
        ("token bucket (GCRA)", 500),
    ] {
        let section: Vec<&str> = out
            .lines()
            .skip_while(|l| *l != format!("{name}:"))
            .skip(1)
            .take(10)
            .collect();
        assert_eq!(section.len(), 10, "no {name} section in:\n{out}");
        for (i, line) in section[..5].iter().enumerate() {
            let want = format!("  request {}: allowed, {} remaining", i + 1, 4 - i);
            assert_eq!(*line, want, "{name}:\n{out}");
        }
        for (i, line) in section[5..8].iter().enumerate() {
            let want = format!("  request {}: denied, retry after ", i + 6);
            assert!(line.starts_with(&want), "{name}: {line}\n{out}");
            let ms = number_after(line, "retry after ").unwrap();
            assert!(ms > 0 && ms <= max_retry, "{name}: {line}");
        }
        assert_eq!(section[8], format!("  {name}: 5 allowed, 3 denied"));
        // Waiting exactly the advertised retry_after is enough.
        assert!(
            section[9].starts_with("  after waiting ") && section[9].ends_with(" ms: allowed"),
            "{name}: {}\n{out}",
            section[9]
        );
    }
}

#[test]
fn activity_feed_fans_out_caps_and_reads_newest_first() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("activity_feed");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    // No feed ever grows past its cap of 5.
    let pushes: Vec<&str> = out.lines().filter(|l| l.starts_with("pushed #")).collect();
    assert_eq!(pushes.len(), 9, "{out}");
    for line in &pushes {
        let own = number_after(line, "'s feed ").unwrap();
        let timeline = number_after(line, "cho's timeline ").unwrap();
        assert!(own <= 5 && timeline <= 5, "{line}");
    }
    assert!(pushes[8].ends_with("ann's feed 5, cho's timeline 5"));
    assert_lines(
        &out,
        &[
            "cho's timeline, first page (3 newest):",
            "  #9 ann ordered CUP-06",
            "  #8 ann returned MUG-02",
            "  #7 ann ordered TEA-05",
            "cho's timeline holds 5 items (9 pushed, cap 5)",
        ],
    );
    assert_lines(
        &out,
        &[
            "ann's feed (5 items):",
            "  #9 ann ordered CUP-06",
            "  #8 ann returned MUG-02",
            "  #7 ann ordered TEA-05",
            "  #6 ann ordered TEA-04",
            "  #4 ann reviewed MUG-02",
            "trimmed from ann's feed: #1, #3",
        ],
    );
    assert_lines(
        &out,
        &[
            "bob's feed:",
            "  #5 bob ordered POT-03",
            "  #2 bob reviewed TEA-01",
            "dan's feed holds 0 items",
        ],
    );
}

#[test]
fn work_queue_redelivers_the_crashed_workers_job_after_the_visibility_timeout() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("work_queue");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    let crashed = number_after(line_with(&out, "worker-1 took job #"), "job #").unwrap();
    let again = line_with(&out, " again ");
    let redelivered = number_after(again, "job #").unwrap();
    assert_eq!(redelivered, crashed, "{out}");
    assert!(again.ends_with("ack: true"), "{again}");
    // The two other jobs were done once each, by worker 2.
    let done: Vec<u64> = out
        .lines()
        .filter(|l| l.starts_with("worker-2 did job #"))
        .map(|l| number_after(l, "job #").unwrap())
        .collect();
    assert_eq!(done.len(), 2, "{out}");
    assert!(!done.contains(&crashed), "{out}");
    assert_lines(
        &out,
        &[
            "waiting: 0, in flight: 1 (the crashed worker's job)",
            "requeued before the visibility timeout: 0",
            "requeued after the visibility timeout: 1",
        ],
    );
    assert_eq!(
        out.lines().last(),
        Some("waiting: 0, in flight: 0"),
        "{out}"
    );
}

#[test]
fn distributed_lock_excludes_and_fencing_refuses_the_paused_holder() {
    let single = RedisServer::start().unwrap();
    let masters = start_masters(3).unwrap();
    let urls: Vec<String> = masters.iter().map(RedisServer::url).collect();
    let mut cmd = bare("distributed_lock");
    cmd.env("REDIS_URL", single.url())
        .env("REDIS_URLS", urls.join(","));
    let out = run(cmd);
    let sections: Vec<&str> = out.split("== ").skip(1).collect();
    assert_eq!(sections.len(), 2, "{out}");
    assert!(sections[0].starts_with("single-instance lock on "), "{out}");
    assert!(
        sections[1].starts_with("Redlock over 3 masters (quorum 2)"),
        "{out}"
    );
    for s in sections {
        let sales: Vec<&str> = s
            .lines()
            .filter(|l| l.contains(" holds sku:42 with token "))
            .collect();
        assert_eq!(sales.len(), 6 + 1, "six sales and the paused holder:\n{s}");
        assert_lines(
            s,
            &[
                "stock after 6 sales: 34 (expected 34), overlapping holders: 0, tokens increasing: true",
            ],
        );
        let late = line_with(s, "worker-a's late write");
        let stale = number_after(late, "with token ").unwrap();
        let highest = number_after(late, "is older than ").unwrap();
        assert!(late.contains(": refused (fencing token"), "{late}");
        assert!(stale < highest, "{late}");
        assert_eq!(
            number_after(line_with(s, "worker-b got sku:42"), "token ").unwrap(),
            highest
        );
        assert_lines(
            s,
            &["worker-a wakes up: lock lost: true, still valid: false"],
        );
        // One sale by the new holder; the stale write changed nothing.
        assert_lines(
            s,
            &[
                late,
                "stock: 33",
                "worker-a release: still held: false",
                "worker-b release: still held: true",
            ],
        );
    }
}

#[test]
fn sharded_store_moves_only_the_removed_servers_keys() {
    let servers = start_masters(3).unwrap();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mut cmd = bare("sharded");
    cmd.env("REDIS_URLS", urls.join(","));
    let out = run(cmd);
    // Before the removal: where shard_of says each key is, is where the
    // data went (counted on the servers themselves).
    let mut total = 0;
    for (url, server) in urls.iter().zip(&servers) {
        let printed = number_after(
            out.lines()
                .find(|l| l.starts_with(&format!("  {url}: ")))
                .unwrap_or_else(|| panic!("no count for {url}:\n{out}")),
            ": ",
        )
        .unwrap();
        assert_eq!(printed, dbsize(server), "{url}:\n{out}");
        assert!(
            printed > 200,
            "an unbalanced ring: {url} owns {printed}\n{out}"
        );
        total += printed;
    }
    assert_eq!(total, 1000, "{out}");
    let removed_owned = number_after(&out, &format!("({} owned ", urls[2])).unwrap();
    let moved = line_with(&out, "keys that moved: ");
    assert_eq!(
        number_after(moved, "keys that moved: "),
        Some(removed_owned)
    );
    assert!(
        moved.ends_with("keys of other servers that moved: 0"),
        "{moved}"
    );
    let reads = line_with(&out, "reads after the removal: ");
    assert_eq!(
        number_after(reads, "reads after the removal: "),
        Some(1000 - removed_owned),
        "{reads}"
    );
    assert!(
        out.contains("1000 of 1000 keys are on their first server again"),
        "{out}"
    );
}

#[test]
fn cluster_store_routes_each_key_to_its_slots_master() {
    let cluster = RedisCluster::start(3).unwrap();
    let mut cmd = bare("cluster");
    cmd.env("REDIS_CLUSTER_URLS", cluster.urls().join(","));
    let out = run(cmd);
    assert!(out.contains("cluster with 3 masters"), "{out}");
    let keys: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  larder-example:{user:"))
        .collect();
    assert_eq!(keys.len(), 12, "{out}");
    for line in keys {
        let ours = number_after(line, ": slot ").unwrap();
        let theirs = number_after(line, "(server: ").unwrap();
        assert_eq!(ours, theirs, "{line}");
        let port = number_after(line, "master 127.0.0.1:").unwrap();
        let owner = cluster.owner_of_slot(u16::try_from(ours).unwrap());
        assert_eq!(port, u64::from(cluster.nodes()[owner].port()), "{line}");
        assert!(line.ends_with(", read back"), "{line}");
    }
    assert_lines(
        &out,
        &[
            "get_many of 12 keys across 3 masters: 12 found, in order: true",
            "delete_many: 12 deleted",
        ],
    );
}

#[test]
fn sharded_store_routes_around_a_killed_server_moving_only_its_keys() {
    let mut servers = start_masters(3).unwrap();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    servers[1].kill();
    let mut cmd = bare("sharded");
    cmd.arg("--after-kill").env("REDIS_URLS", urls.join(","));
    let out = run(cmd);
    for (i, url) in urls.iter().enumerate() {
        let state = if i == 1 { "Open" } else { "Closed" };
        assert_lines(&out, &[&format!("  breaker of {url}: {state}")]);
    }
    // A few writes fail before the breaker opens (5 failed attempts, each
    // write tried up to 3 times while the connection is refused), none after.
    let summary = line_with(&out, "1000 keys: ");
    let written = number_after(summary, "1000 keys: ").unwrap();
    let failed = number_after(summary, "written, ").unwrap();
    assert!((1..=5).contains(&failed), "{summary}");
    assert_eq!(written + failed, 1000, "{summary}");
    // The dead server owns nothing now; the live ones hold what shard_of
    // says they own, but for the writes that failed.
    let now: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "keys per server now:")
        .skip(1)
        .take(3)
        .collect();
    assert_eq!(now[1], format!("  {}: 0 keys", urls[1]), "{out}");
    let mut stored = 0;
    for i in [0, 2] {
        let printed = number_after(now[i], ": ").unwrap();
        assert!(now[i].starts_with(&format!("  {}: ", urls[i])), "{out}");
        let held = dbsize(&servers[i]);
        assert!(
            held <= printed && printed - held <= failed,
            "{}: {held}\n{out}",
            urls[i]
        );
        stored += held;
    }
    assert_eq!(stored, written, "{out}");
    let moved = line_with(&out, "keys that moved away from a server that is down: ");
    assert!(number_after(moved, "is down: ").unwrap() > 200, "{moved}");
    assert!(
        moved.ends_with("keys of other servers that moved: 0"),
        "{moved}"
    );
    assert_eq!(
        line_with(&out, "reads: "),
        format!("reads: {written} hits of {written} keys written")
    );
}

/// The SIGKILL test of durable write-behind: a child process queues writes
/// into SQLite and is killed with SIGKILL; a new process with the same
/// consumer name replays the journal. Plain write-behind is the negative
/// control: the same kill loses every queued write.
#[test]
fn write_behind_loses_nothing_acknowledged_to_a_sigkill_when_durable() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("write_behind");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    let plain = line_with(&out, "plain write-behind");
    let durable = line_with(&out, "durable write-behind");
    for line in [plain, durable] {
        assert!(
            number_after(line, ": ").is_some_and(|n| n >= 2000),
            "at least 2000 acknowledged writes: {line}"
        );
    }
    assert_eq!(
        number_after(plain, "last acknowledged write of "),
        Some(50),
        "the control must lose the queued writes, or the test proves nothing: {plain}"
    );
    assert_eq!(
        number_after(durable, "last acknowledged write of "),
        Some(0),
        "{durable}"
    );
    assert_eq!(number_after(durable, "("), Some(50), "{durable}");
    assert_eq!(dbsize(&server), 0, "the example cleans its namespace up");
}

/// Two processes share Redis: a write in one reaches the other's L1 within
/// the bound, in both coherence modes; without coherence (the control) the
/// other process keeps serving the old price.
#[test]
fn coherence_a_write_in_one_process_evicts_the_other_processs_l1() {
    let server = RedisServer::start().unwrap();
    let mut cmd = bare("coherence");
    cmd.env("REDIS_URL", server.url());
    let out = run(cmd);
    for mode in ["tracking", "pub/sub"] {
        let line = line_with(&out, &format!("{mode} "));
        assert_eq!(number_after(line, ": "), Some(50), "{line}");
        assert_eq!(number_after(line, "); "), Some(0), "{line}");
    }
    let control = line_with(&out, "no coherence");
    assert_eq!(
        number_after(control, ": "),
        Some(0),
        "without coherence the other process must serve the old price: {control}"
    );
    assert_eq!(dbsize(&server), 0, "the example cleans its namespace up");
}
