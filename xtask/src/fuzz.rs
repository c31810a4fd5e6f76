//! `cargo xtask fuzz`: libFuzzer on the stable toolchain.
//!
//! `cargo fuzz` needs nightly for its sanitizer flags; the coverage
//! instrumentation libFuzzer needs is available on stable through `-C`
//! options, so this builds the targets in `fuzz/` (a cargo-fuzz layout, so
//! `cargo +nightly fuzz run envelope_decode` works too) with those flags and
//! runs one for a bounded time.

use std::path::Path;

use crate::util;

const DEFAULT_TARGET: &str = "envelope_decode";
const DEFAULT_SECONDS: u64 = 60;

const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut target = DEFAULT_TARGET.to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a whole number")?;
            }
            "--target" => target = it.next().ok_or("--target takes a name")?.clone(),
            other => return Err(format!("fuzz: unknown argument {other:?}")),
        }
    }
    let fuzz_dir = util::project_root().join("fuzz");
    // An explicit --target keeps RUSTFLAGS off build scripts and proc macros
    // (as cargo-fuzz does).
    let host = host_triple()?;
    let mut build = util::cargo();
    build
        .current_dir(&fuzz_dir)
        .args(["build", "--release", "--target", &host, "--bin", &target])
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", fuzz_dir.join("target"));
    util::run(build)?;

    let corpus = fuzz_dir.join("corpus").join(&target);
    std::fs::create_dir_all(&corpus).map_err(|e| e.to_string())?;
    if target == "config_parse" {
        seed_urls(&corpus).map_err(|e| e.to_string())?;
    } else {
        seed_corpus(&corpus).map_err(|e| e.to_string())?;
    }
    let artifacts = fuzz_dir.join("artifacts").join(&target);
    std::fs::create_dir_all(&artifacts).map_err(|e| e.to_string())?;

    println!("xtask fuzz: running {target} for {seconds} s");
    let mut cmd = std::process::Command::new(
        fuzz_dir
            .join("target")
            .join(&host)
            .join("release")
            .join(&target),
    );
    cmd.arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args([
            "-print_final_stats=1",
            "-max_len=4096",
            "-rss_limit_mb=2048",
            "-timeout=10",
        ]);
    util::run(cmd)
}

fn host_triple() -> Result<String, String> {
    let mut rustc = std::process::Command::new("rustc");
    rustc.arg("-vV");
    util::output(rustc)
        .and_then(|out| {
            out.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        })
        .ok_or_else(|| "could not read the host triple from `rustc -vV`".to_owned())
}

/// A few valid envelopes so the fuzzer starts past the header checks.
fn seed_corpus(dir: &Path) -> std::io::Result<()> {
    let header = |flags: u8, codec: u8| {
        let mut h = vec![0x4C, 1, flags, codec];
        h.extend_from_slice(&1_000u64.to_be_bytes());
        h.extend_from_slice(&2_000u64.to_be_bytes());
        h.extend_from_slice(&3_000u64.to_be_bytes());
        h.extend_from_slice(&25u32.to_be_bytes());
        h.extend_from_slice(&7u64.to_be_bytes());
        h
    };
    let mut postcard = header(0, 1);
    postcard.extend_from_slice(&[
        42, 5, b'h', b'e', b'l', b'l', b'o', 1, 3, b't', b'a', b'g', 0,
    ]);
    let mut json = header(0, 2);
    json.extend_from_slice(br#"{"id":1,"name":"x","tags":["a"],"nested":null}"#);
    let negative = header(1, 1);
    let mut lz4 = header(2, 1);
    lz4.extend_from_slice(&[
        0, 0, 0, 8, 0x80, b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a',
    ]);
    for (name, bytes) in [
        ("postcard", postcard),
        ("json", json),
        ("negative", negative),
        ("lz4", lz4),
    ] {
        let path = dir.join(format!("seed-{name}"));
        if !path.exists() {
            std::fs::write(path, bytes)?;
        }
    }
    Ok(())
}

/// Redis URLs of each shape the client parses, a `\x01` where a password
/// goes (`config_parse` turns it into a marker it looks for in the output).
fn seed_urls(dir: &Path) -> std::io::Result<()> {
    for (name, url) in [
        ("tcp", "redis://app:\x01@127.0.0.1:6379/0"),
        ("password-only", "redis://:\x01@h:1?protocol=resp3"),
        ("tls", "rediss://u:\x01@h:6380/#insecure"),
        ("valkey", "valkey://[::1]:6379/2"),
        ("socket", "redis+unix:///tmp/r.sock?db=1&user=u&pass=\x01"),
        ("unix", "unix:///tmp/r.sock?pass=\x01&protocol=2"),
    ] {
        let path = dir.join(format!("seed-{name}"));
        if !path.exists() {
            std::fs::write(path, url)?;
        }
    }
    Ok(())
}
