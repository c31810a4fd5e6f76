//! `cargo xtask profile`: where an L1 operation's time goes, counted, not
//! timed. Runs `benches/src/bin/l1_ops.rs` under valgrind's cachegrind,
//! Larder's L1 and quick_cache, 100% gets, 95/5 and 16 hot keys, each twice: after the
//! same warm-up with no operations and with `OPS` operations. The
//! difference divided by `OPS` is the count per operation of
//! instructions, first-level data cache misses and last-level data misses
//! (a simulated 4 MiB last level, the L2 of the 2-core VM the project's
//! figures come from). Deterministic: the hashers are seeded, so the same
//! build gives the same counts.

use std::path::Path;
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
    if let Some(bad) = args.first() {
        return Err(format!("profile takes no arguments (got {bad:?})"));
    }
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|o| o.status.success()) {
        return Err("profile needs valgrind (e.g. `apt-get install valgrind`)".into());
    }
    let mut build = util::cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "larder-benches",
        "--bin",
        "l1_ops",
    ]);
    util::run(build)?;
    let root = util::project_root();
    let exe = root.join("target/release/l1_ops");
    let out = root.join("target/larder-profile");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "| workload | subject | instructions / op | D1 misses / op | LL data misses / op |\n|---|---|--:|--:|--:|"
    );
    for mode in ["get", "mixed", "hot"] {
        let mut larder = None;
        for subject in ["larder", "quick_cache"] {
            let base = counts(&exe, &out, subject, mode, 0)?;
            let with = counts(&exe, &out, subject, mode, OPS)?;
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
                "| {mode} | {subject} | {:.1} | {:.2} | {:.3} |",
                p.instructions, p.d1_misses, p.ll_misses
            );
            if subject == "larder" {
                larder = Some(p);
            } else if let Some(l) = larder {
                println!(
                    "| {mode} | larder / quick_cache | {:.2}x | {:.2}x | {:.2}x |",
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
        .args([subject, mode, &ops.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("could not run valgrind: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cachegrind run of {subject} {mode} {ops} failed: {status}"
        ));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
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
