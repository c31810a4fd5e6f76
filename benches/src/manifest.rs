//! The bench manifest: tab-separated lines in
//! `$LARDER_BENCH_OUT/raw/<bench>.tsv` that `cargo xtask bench` turns into
//! the report.
//!
//! | line | meaning |
//! |---|---|
//! | `time <group> <id> <ops per iteration>` | criterion benchmark `<group>/<id>`, reported as ops/s |
//! | `value <group> <id> <number> <unit> <higher or lower>` | a figure measured by the bench itself; which way is better |
//! | `compare <group> <subject id> <peer id>` | report `subject / peer` for that pair |
//!
//! When `LARDER_BENCH_OUT` is not set (a plain `cargo bench`), nothing is written.

use std::fmt::Display;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;

/// Which way a plain figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Larger is better (throughput, hit ratio).
    Higher,
    /// Smaller is better (bytes, latency).
    Lower,
}

/// Writes one bench's manifest.
#[derive(Debug)]
pub struct Manifest {
    out: Option<File>,
}

impl Manifest {
    /// Opens (truncates) the manifest of the bench named `bench`.
    pub fn create(bench: &str) -> Self {
        let out = std::env::var_os("LARDER_BENCH_OUT").and_then(|dir| {
            let raw = PathBuf::from(dir).join("raw");
            fs::create_dir_all(&raw).ok()?;
            File::create(raw.join(format!("{bench}.tsv"))).ok()
        });
        Manifest { out }
    }

    fn line(&mut self, fields: &[&dyn Display]) {
        if let Some(out) = self.out.as_mut() {
            let text: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            // A failed write only loses the report line; the bench still runs.
            let _ = writeln!(out, "{}", text.join("\t"));
        }
    }

    /// Declares criterion benchmark `group/id`, doing `ops` operations per iteration.
    pub fn time(&mut self, group: &str, id: &str, ops: u64) {
        self.line(&[&"time", &group, &id, &ops]);
    }

    /// Records a figure measured outside criterion.
    pub fn value(&mut self, group: &str, id: &str, value: f64, unit: &str, better: Better) {
        let b = match better {
            Better::Higher => "higher",
            Better::Lower => "lower",
        };
        self.line(&[&"value", &group, &id, &value, &unit, &b]);
    }

    /// Asks the report for `subject / peer` in `group`.
    pub fn compare(&mut self, group: &str, subject: &str, peer: &str) {
        self.line(&[&"compare", &group, &subject, &peer]);
    }
}

/// Whether a command-line filter (criterion's, e.g. `-- "l2/get/64"`)
/// leaves `group` in: figures measured outside criterion honour it too.
pub fn wanted(group: &str) -> bool {
    // Criterion's options that take a value: their values are not filters.
    const WITH_VALUE: [&str; 14] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--profile-time",
        "--save-baseline",
        "--baseline",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let takes_value = |i: usize| i > 0 && WITH_VALUE.contains(&args[i - 1].as_str());
    let filter = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && !takes_value(*i));
    filter.is_none_or(|(_, f)| group.contains(f.as_str()) || f.contains(group))
}
