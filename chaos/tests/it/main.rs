//! The chaos soak, short: the checkers pass on a seeded run with faults,
//! and each negative control (a guarantee broken on purpose in the
//! workers) makes its checker fail, so no checker passes vacuously.

use std::process::Command;

fn soak(out: &std::path::Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_larder-chaos"))
        .arg("run")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("larder-chaos runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// The `start` lines of a run's worker logs: when each incarnation began
/// its operations (a victim killed before its first write loses nothing).
fn starts(out: &std::path::Path, workers: u64) -> String {
    let mut lines = Vec::new();
    for id in 0..workers {
        let Ok(log) = std::fs::read_to_string(out.join(format!("log-{id}.txt"))) else {
            continue;
        };
        lines.extend(
            log.lines()
                .filter(|l| l.starts_with("start "))
                .map(|l| format!("worker {id}: {l}")),
        );
    }
    lines.join("\n")
}

#[test]
fn the_soak_passes_and_each_negative_control_fails_its_checker() {
    let dir = std::env::temp_dir().join(format!("larder-chaos-test-{}", std::process::id()));
    let (ok, out) = soak(&dir.join("soak"), &["--seconds", "30", "--seed", "7"]);
    assert!(ok, "the soak failed:\n{out}");
    for line in [
        "check no panic",
        "check no operation hung",
        "check every acknowledged write is in SQLite",
        "check fencing: no stale token accepted",
        "check L1s converge to Redis",
        "check no L2 value older than SQLite",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(line) && l.contains("PASS")),
            "{line} did not pass:\n{out}"
        );
    }
    assert!(
        out.contains("SIGKILL worker"),
        "the nemesis killed no worker:\n{out}"
    );

    for (name, checker, seconds) in [
        ("ack", "check every acknowledged write is in SQLite", "4"),
        // Plain write-behind and the run's SIGKILL: acknowledged writes
        // lost for real (6 s: the kill comes once the workers wrote).
        (
            "nodurable",
            "check every acknowledged write is in SQLite",
            "6",
        ),
        ("hang", "check no operation hung", "4"),
        ("converge", "check L1s converge to Redis", "4"),
        ("l2behind", "check no L2 value older than SQLite", "4"),
        ("fence", "check fencing: no stale token accepted", "4"),
        ("panic", "check no panic", "4"),
        ("overlap", "check no two valid lock holders overlapped", "4"),
        ("breaker", "check every breaker closed", "4"),
        ("capacity", "check L1 within its capacity", "4"),
        ("exit", "check every process exited cleanly", "4"),
    ] {
        let (ok, out) = soak(
            &dir.join(name),
            &[
                "--seconds",
                seconds,
                "--seed",
                "7",
                "--workers",
                "2",
                "--watchdog",
                "3",
                "--break",
                name,
            ],
        );
        assert!(
            !ok,
            "negative control {name}: the soak passed:\n{out}\nworkers' starts:\n{}",
            starts(&dir.join(name), 2)
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with(checker) && l.contains("FAIL")),
            "negative control {name}: {checker} did not fail:\n{out}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
