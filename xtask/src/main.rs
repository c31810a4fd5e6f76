//! Larder's project commands, run as `cargo xtask <command>`.
//!
//! - `test`: installs `redis-server` if it is missing (and it can), then runs
//!   the whole workspace test suite (all features, doc tests included) and
//!   prints one closing summary line.
//! - `bench [--quick]`: runs the criterion benches, then writes
//!   `target/larder-bench/report.md` and `report.json` and copies the report
//!   to `docs/benchmarks.md`.
//! - `fuzz [--seconds N] [--target NAME]`: builds the libFuzzer targets in
//!   `fuzz/` on the stable toolchain and runs one for a bounded time.
//! - `chaos [--seconds N] [--seed S]`: the chaos soak (`chaos/`) in release
//!   mode: worker processes, a seeded nemesis, the checkers.
//! - `profile [l2|facade]`: instructions and cache misses per L1 operation,
//!   Larder against quick_cache, counted under valgrind's cachegrind; with
//!   `l2`, instructions per L2 get, Larder against raw redis-rs; with
//!   `facade`, per facade L1 hit against a bare L1 get.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

mod bench;
mod fuzz;
mod invariants;
mod profile;
mod redis;
mod util;

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test [-- <cargo test args>]   install redis-server if needed, run every test
  bench [--quick]               run benchmarks, write target/larder-bench/report.{md,json}
                                and docs/benchmarks.md
  sim [--trace FILE --format F --sizes A,B] [--traces DIR] [--json] [--quick] [--policies P,Q]
                                replay cache traces through Larder's policies, the
                                peers and Belady's OPT
  fuzz [--seconds N] [--target NAME]
                                fuzz a target in fuzz/ (default envelope_decode, 60 s)
  chaos [--seconds N] [--seed S] [--workers W] [--break NAME]
                                the chaos soak: worker processes, a seeded nemesis,
                                checkers (default 60 s; see docs/chaos.md)
  invariants                    check the crate dependency invariants
  profile [l2|facade]           instructions and cache misses per L1 operation,
                                Larder vs quick_cache; with `l2`, instructions per
                                L2 get, Larder vs raw redis-rs; with `facade`, per
                                facade L1 hit vs a bare L1 get (needs valgrind)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => redis::ensure_redis_server().and_then(|bin| test(&bin, &args[1..])),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("sim") => sim(&args[1..]),
        Some("profile") => profile::run(&args[1..]),
        Some("chaos") => redis::ensure_redis_server().and_then(|bin| chaos(&bin, &args[1..])),
        Some("invariants") => {
            invariants::check_all().map(|n| println!("invariants: {n} passed, 0 failed"))
        }
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask chaos`: the soak in release mode (`chaos/`), its arguments
/// passed on.
fn chaos(redis_server: &std::path::Path, args: &[String]) -> Result<(), String> {
    let mut build = util::cargo();
    build.args(["build", "--release", "--package", "larder-chaos"]);
    util::run(build)?;
    let exe = util::project_root().join("target/release/larder-chaos");
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run")
        .args(args)
        .env("LARDER_REDIS_SERVER", redis_server);
    util::run(cmd)
}

/// `cargo xtask sim`: the trace simulator (benches/src/bin/sim.rs), in release mode.
fn sim(args: &[String]) -> Result<(), String> {
    let mut cmd = util::sim_command();
    cmd.args(args);
    util::run(cmd)
}

/// `cargo xtask test`: the whole suite, with a closing summary line.
fn test(redis_server: &std::path::Path, extra: &[String]) -> Result<(), String> {
    let extra: Vec<&str> = match extra.first().map(String::as_str) {
        Some("--") => extra[1..].iter().map(String::as_str).collect(),
        _ => extra.iter().map(String::as_str).collect(),
    };
    let mut cmd = util::cargo();
    cmd.args(["test", "--workspace", "--all-features", "--no-fail-fast"])
        .arg("--")
        .args(&extra)
        .env("LARDER_REDIS_SERVER", redis_server);
    let oracles = util::project_root().join("../shared/oracles");
    if oracles.join("ketama_oracle.csv").is_file() && oracles.join("keyslot_oracle.csv").is_file() {
        println!(
            "xtask test: oracle tests check the full files in {}",
            oracles.display()
        );
    } else {
        println!(
            "xtask test: NOTE: {} not found: oracle tests check only the samples embedded in the repository",
            oracles.display()
        );
    }
    let (status, mut lines) = util::run_tee_stdout(cmd)?;
    // The loom model of the L1's read ring: its own cfg and target dir, so
    // the main build stays cached.
    let mut loom = util::cargo();
    loom.args([
        "test",
        "--package",
        "larder-memory",
        "--lib",
        "--release",
        "--target-dir",
    ])
    .arg(util::project_root().join("target/loom"))
    .args(["--", "loom_model"])
    .env("RUSTFLAGS", "--cfg loom");
    println!("xtask test: loom model of the L1 read ring (RUSTFLAGS=--cfg loom)");
    let (loom_status, loom_lines) = util::run_tee_stdout(loom)?;
    lines.extend(loom_lines);
    let totals = util::TestTotals::from_lines(&lines);
    println!(
        "\nxtask test: {} suites, {} ignored, {} filtered out",
        totals.suites, totals.ignored, totals.filtered
    );
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    if !status.success() || !loom_status.success() || totals.failed > 0 {
        return Err(format!("cargo test failed ({status})"));
    }
    if totals.passed == 0 {
        return Err("no test ran".into());
    }
    Ok(())
}
