//! Every example runs, so none can rot: `cargo test` builds them, and these
//! tests run the binaries (against a real redis-server from the testkit
//! where they take one) and check what they print.

use std::path::PathBuf;
use std::process::Command;

use larder_testkit::RedisServer;

mod patterns;
mod tutorial;

/// The built example `name`, beside this test binary's directory
/// (`target/<profile>/deps/it-*` -> `target/<profile>/examples/name`).
fn example(name: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir: PathBuf = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: `cargo test` builds the examples",
        path.display()
    );
    Command::new(path)
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn envelope_prints_the_bytes_and_refuses_foreign_ones() {
    let out = run(example("envelope"));
    assert!(out.contains("header"), "{out}");
}

#[test]
fn flash_sale_serves_no_wrong_price_with_l1_and_with_redis() {
    let server = RedisServer::start().unwrap();
    let chart = std::env::temp_dir().join(format!("flash-sale-{}.svg", std::process::id()));
    let mut cmd = example("flash_sale");
    cmd.args(["--seconds", "1", "--products", "60000", "--shoppers", "8"])
        .args(["--redis", &server.url()])
        .arg("--chart")
        .arg(&chart);
    let out = run(cmd);
    assert!(
        out.contains("SQLite's stock matches the orders for 5 of 5 products"),
        "write-behind lost or doubled an order:\n{out}"
    );
    for phase in [
        "| database only |",
        "| larder L1 |",
        "| larder L1 + L2 |",
        "| + write-behind (durable) |",
    ] {
        assert!(out.contains(phase), "no {phase} row:\n{out}");
    }
    assert!(out.contains(": 0 (expected 0)"), "{out}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    let _ = std::fs::remove_file(chart);
}

#[test]
fn flash_sale_refuses_bad_options_with_a_message() {
    let out = example("flash_sale")
        .args(["--shoppers", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoppers"));
}
