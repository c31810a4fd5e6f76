//! `cargo xtask profile`: where an L1 operation's time goes, counted, not
//! timed. Runs `benches/src/bin/l1_ops.rs` under valgrind's cachegrind,
//! Larder's L1 and quick_cache, 100% gets, 95/5 and 16 hot keys, each twice: after the
//! same warm-up with no operations and with `OPS` operations. The
//! difference divided by `OPS` is the count per operation of
//! instructions, first-level data cache misses and last-level data misses
//! (a simulated 4 MiB last level, the L2 of the 2-core VM the project's
//! figures come from). Deterministic: the L1 workload's hashers are
//! seeded, so the same build gives the same counts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util;

const OPS: u64 = 1_000_000;

/// Per-operation counts: instructions, D1 misses, last-level data misses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PerOp {
    instructions: f64,
    d1_misses: f64,
    ll_misses: f64,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let what = match args {
        [] => "l1",
        [w] if w == "l2" || w == "facade" => w.as_str(),
        _ => {
            return Err(format!(
                "profile takes no argument, `l2` or `facade` (got {args:?})"
            ));
        }
    };
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|o| o.status.success()) {
        return Err("profile needs valgrind (e.g. `apt-get install valgrind`)".into());
    }
    match what {
        "l2" => crate::redis::find_or_install_redis_server().and_then(|bin| self::l2(&bin)),
        "facade" => per_op("facade_ops", &["hit"], ["facade", "bare"]),
        _ => per_op(
            "l1_ops",
            &["get", "mixed", "hot"],
            ["larder", "quick_cache"],
        ),
    }
}

/// Rounds in the two L2 runs.
const L2_ROUNDS: [u64; 2] = [100, 600];
/// Gets per round: `CONCURRENCY` in `benches/src/bin/l2_ops.rs`.
const L2_CONCURRENCY: u64 = 64;
/// Runs of each subject; the median is reported.
const L2_REPEATS: usize = 3;

/// Builds the workload `bin` of `benches/src/bin` in release mode: its
/// executable, and the folder for the profiles' files.
fn build(bin: &str) -> Result<(PathBuf, PathBuf), String> {
    let mut cargo = util::cargo();
    cargo.args([
        "build",
        "--release",
        "--package",
        "larder-benches",
        "--bin",
        bin,
    ]);
    util::run(cargo)?;
    let root = util::project_root();
    let out = root.join("target/larder-profile");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((root.join("target/release").join(bin), out))
}

fn l2(redis_server: &Path) -> Result<(), String> {
    let (exe, out) = build("l2_ops")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let log = out.join("redis-server.log");
    let mut server = Server(
        Command::new(redis_server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--logfile")
            .arg(&log)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", redis_server.display()))?,
    );
    let url = format!("redis://127.0.0.1:{port}");
    server
        .wait_for(port)
        .map_err(|e| format!("{e} (its log: {})", log.display()))?;
    println!("| client | instructions / get (median of {L2_REPEATS}) | spread |\n|---|--:|--:|");
    // `larder` is `RedisStore::get` (the facade's `dyn Store` get is the
    // same boxed future); `batched` the same with auto-batching, against
    // raw `MGET`s of the 64 keys (one task's `join_all` makes one batch).
    let mut larder = 0.0;
    let mut batched = 0.0;
    for subject in ["larder", "manager", "multiplexed", "batched", "mget:64"] {
        let [few, many] = L2_ROUNDS;
        let mut runs = Vec::with_capacity(L2_REPEATS);
        for run in 0..L2_REPEATS {
            let name = subject.replace(':', "");
            let file = |rounds: u64| out.join(format!("l2-{name}-{rounds}-{run}.out"));
            let base = cachegrind(&exe, &file(few), &[subject, &url, &few.to_string()])?;
            let with = cachegrind(&exe, &file(many), &[subject, &url, &many.to_string()])?;
            runs.push((with[0] as f64 - base[0] as f64) / ((many - few) * L2_CONCURRENCY) as f64);
        }
        runs.sort_by(f64::total_cmp);
        let per = runs[L2_REPEATS / 2];
        let spread = runs[L2_REPEATS - 1] - runs[0];
        println!("| {subject} | {per:.0} | {spread:.0} |");
        match subject {
            "larder" => larder = per,
            "batched" => batched = per,
            "mget:64" => println!("| batched / mget:64 | {:.3}x | |", batched / per),
            _ => println!("| larder / {subject} | {:.3}x | |", larder / per),
        }
    }
    drop(server);
    Ok(())
}

/// A redis-server child, killed on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Waits (10 s at most, trying every 20 ms, each try a second at most)
    /// until the server answers `PING` on `port`; fails at once if
    /// it exits (another process took the port, say), and does not take
    /// another program on the port for it.
    #[allow(clippy::disallowed_methods)] // a tool's deadline, not a test's
    fn wait_for(&mut self, port: u16) -> Result<(), String> {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("redis-server exited: {status}"));
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let second = std::time::Duration::from_secs(1);
            if let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, second)
                && c.set_read_timeout(Some(second)).is_ok()
                && c.set_write_timeout(Some(second)).is_ok()
            {
                let mut reply = [0u8; 7];
                // No answer within the second: not ready yet, ask again.
                if c.write_all(b"PING\r\n").is_ok() && c.read_exact(&mut reply).is_ok() {
                    if &reply == b"+PONG\r\n" {
                        return Ok(());
                    }
                    return Err(format!("port {port} answers, but not as redis-server"));
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(format!(
            "redis-server did not answer PING on port {port} within 10 s"
        ))
    }
}

/// Counts per operation of `bin` (a workload of `benches/src/bin` taking
/// `SUBJECT MODE OPS`) in each mode, for the subject and its peer.
fn per_op(bin: &str, modes: &[&str], [subject, peer]: [&str; 2]) -> Result<(), String> {
    let (exe, out) = build(bin)?;
    println!(
        "| workload | subject | instructions / op | D1 misses / op | LL data misses / op |\n|---|---|--:|--:|--:|"
    );
    for &mode in modes {
        let mut first = None;
        for who in [subject, peer] {
            let base = counts(&exe, &out, who, mode, 0)?;
            let with = counts(&exe, &out, who, mode, OPS)?;
            let per = |event: &str| {
                let i = EVENTS.iter().position(|e| *e == event).unwrap_or(0);
                (with[i] as f64 - base[i] as f64) / OPS as f64
            };
            let p = PerOp {
                instructions: per("Ir"),
                d1_misses: per("D1mr") + per("D1mw"),
                ll_misses: per("DLmr") + per("DLmw"),
            };
            println!(
                "| {mode} | {who} | {:.1} | {:.2} | {:.3} |",
                p.instructions, p.d1_misses, p.ll_misses
            );
            if who == subject {
                first = Some(p);
            } else if let Some(l) = first {
                println!(
                    "| {mode} | {subject} / {peer} | {:.2}x | {:.2}x | {:.2}x |",
                    l.instructions / p.instructions,
                    l.d1_misses / p.d1_misses,
                    l.ll_misses / p.ll_misses
                );
            }
        }
    }
    Ok(())
}

/// The events cachegrind counts with `--cache-sim=yes`, in the order of
/// its `events:` line (checked when a file is read).
const EVENTS: [&str; 9] = [
    "Ir", "I1mr", "ILmr", "Dr", "D1mr", "DLmr", "Dw", "D1mw", "DLmw",
];

/// Cachegrind's totals, in [`EVENTS`] order, for one run.
fn counts(exe: &Path, out: &Path, subject: &str, mode: &str, ops: u64) -> Result<Vec<u64>, String> {
    let file = out.join(format!("{subject}-{mode}-{ops}.out"));
    cachegrind(exe, &file, &[subject, mode, &ops.to_string()])
}

/// Runs `exe args` under cachegrind into `file`: its totals, in
/// [`EVENTS`] order. On failure, the error ends with the last lines of the
/// program's and valgrind's messages (kept in `file` + `.log`).
fn cachegrind(exe: &Path, file: &Path, args: &[&str]) -> Result<Vec<u64>, String> {
    let log = file.with_extension("log");
    let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let status = Command::new("valgrind")
        .args([
            "--tool=cachegrind",
            "--cache-sim=yes",
            "--LL=4194304,16,64",
            "--D1=49152,12,64",
            "--I1=32768,8,64",
        ])
        .arg(format!("--cachegrind-out-file={}", file.display()))
        .arg(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(|e| format!("could not run valgrind: {e}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        return Err(format!(
            "cachegrind run of {args:?} failed: {status}\n{tail}"
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    summary(&text).ok_or_else(|| {
        format!(
            "{}: no summary line, or events other than {EVENTS:?}",
            file.display()
        )
    })
}

/// The `summary:` line of a cachegrind output file whose `events:` line
/// names [`EVENTS`].
fn summary(text: &str) -> Option<Vec<u64>> {
    let events: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("events:"))?
        .split_whitespace()
        .collect();
    if events != EVENTS {
        return None;
    }
    let line = text.lines().find_map(|l| l.strip_prefix("summary:"))?;
    let counts: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    (counts.len() == 9).then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary_line() {
        let text = "desc: I1 cache: 32768 B\ncmd: x\nevents: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw\nfl=a\n1 2 3\nsummary: 10 0 0 4 2 1 3 1 0\n";
        assert_eq!(summary(text), Some(vec![10, 0, 0, 4, 2, 1, 3, 1, 0]));
        let events = "events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw\n";
        assert_eq!(
            summary(&format!("{events}summary: 1 2\n")),
            None,
            "a short line is no summary"
        );
        assert_eq!(summary("nothing"), None);
        assert_eq!(
            summary("events: Ir Dr\nsummary: 1 2 3 4 5 6 7 8 9\n"),
            None,
            "other events, other columns"
        );
    }
}
