//! `cargo xtask bench`: run the benches, then write the report.
//!
//! Each bench writes a manifest (`target/larder-bench/raw/*.tsv`, see
//! `larder_benches::manifest`) naming what it measured and the peer to
//! compare with; criterion writes the times. This joins the two into
//! `report.md` and `report.json`, copies the Markdown to
//! `docs/benchmarks.md`, and refreshes tables between
//! `<!-- bench:GROUP -->` and `<!-- /bench:GROUP -->` in other `docs/` files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::util;

#[derive(Debug, Clone)]
struct Figure {
    group: String,
    id: String,
    value: f64,
    unit: String,
    higher_is_better: bool,
    note: String,
}

#[derive(Debug, Clone)]
struct Comparison {
    group: String,
    subject: String,
    peer: String,
    ratio: f64,
    higher_is_better: bool,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(bad) = args.iter().find(|a| *a != "--quick") {
        return Err(format!("bench: unknown argument {bad:?}"));
    }
    let redis_server = crate::redis::ensure_redis_server()?;
    let root = util::project_root();
    let out = root.join("target/larder-bench");
    let _ = std::fs::remove_dir_all(out.join("raw"));
    std::fs::create_dir_all(out.join("raw")).map_err(|e| e.to_string())?;
    #[allow(clippy::disallowed_methods)] // report metadata, not cache time
    let started = SystemTime::now();

    let mut cmd = util::cargo();
    cmd.args(["bench", "--package", "larder-benches", "--benches", "--"])
        .env("LARDER_BENCH_OUT", &out)
        .env("LARDER_REDIS_SERVER", &redis_server);
    if quick {
        cmd.args([
            "--warm-up-time",
            "0.5",
            "--measurement-time",
            "1.5",
            "--sample-size",
            "10",
        ]);
    }
    util::run(cmd)?;

    // The trace replays (hit ratios), when the traces are at hand.
    let traces = root.join("../shared/traces");
    if traces.is_dir() {
        let mut sim = util::sim_command();
        sim.env("LARDER_BENCH_OUT", &out);
        if quick {
            sim.arg("--quick");
        }
        util::run(sim)?;
    } else {
        println!(
            "xtask bench: no traces at {}: hit-ratio replays skipped",
            traces.display()
        );
    }

    let times = read_criterion(&root.join("target/criterion"), started);
    let (figures, comparisons) = read_manifests(&out.join("raw"), &times)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let meta = Meta::collect(&root, command, started);
    let md = markdown(&meta, &figures, &comparisons);
    std::fs::write(out.join("report.md"), &md).map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.json"), json(&meta, &figures, &comparisons))
        .map_err(|e| e.to_string())?;
    std::fs::write(root.join("docs/benchmarks.md"), &md).map_err(|e| e.to_string())?;
    refresh_doc_tables(&root.join("docs"), &meta, &figures, &comparisons)?;
    println!(
        "xtask bench: {} figures, {} comparisons -> {} and docs/benchmarks.md",
        figures.len(),
        comparisons.len(),
        out.join("report.md").display()
    );
    Ok(())
}

/// Mean nanoseconds per iteration of every criterion benchmark written since `since`.
fn read_criterion(dir: &Path, since: SystemTime) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.file_name().is_none_or(|n| n != "benchmark.json")
                || p.parent()
                    .and_then(Path::file_name)
                    .is_none_or(|n| n != "new")
            {
                continue;
            }
            let fresh = p
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if !fresh {
                continue;
            }
            let (Ok(bench), Ok(est)) = (
                std::fs::read_to_string(&p),
                std::fs::read_to_string(p.with_file_name("estimates.json")),
            ) else {
                continue;
            };
            if let (Some(id), Some(mean)) = (json_string(&bench, "full_id"), mean_estimate(&est)) {
                found.insert(id, mean);
            }
        }
    }
    found
}

fn json_string(text: &str, field: &str) -> Option<String> {
    let start = text.find(&format!("\"{field}\":\""))? + field.len() + 4;
    let mut out = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

fn mean_estimate(text: &str) -> Option<f64> {
    let mean = &text[text.find("\"mean\"")?..];
    let at = mean.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let num: String = mean[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse().ok()
}

fn read_manifests(
    raw: &Path,
    times: &BTreeMap<String, f64>,
) -> Result<(Vec<Figure>, Vec<Comparison>), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(raw)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    files.sort();
    let mut figures: Vec<Figure> = Vec::new();
    let mut compares = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| e.to_string())?;
        for line in text.lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            match cols.as_slice() {
                ["time", group, id, ops] => {
                    let ops: f64 = ops.parse().map_err(|_| format!("bad ops in {line:?}"))?;
                    let Some(ns) = times.get(&format!("{group}/{id}")) else {
                        eprintln!("xtask bench: no criterion result for {group}/{id}");
                        continue;
                    };
                    figures.push(Figure {
                        group: group.to_string(),
                        id: id.to_string(),
                        value: ops * 1e9 / ns,
                        unit: "ops/s".into(),
                        higher_is_better: true,
                        note: format!("{:.1} ns/op", ns / ops),
                    });
                }
                ["value", group, id, v, unit, better] => figures.push(Figure {
                    group: group.to_string(),
                    id: id.to_string(),
                    value: v.parse().map_err(|_| format!("bad value in {line:?}"))?,
                    unit: unit.to_string(),
                    higher_is_better: *better == "higher",
                    note: String::new(),
                }),
                ["compare", group, subject, peer] => {
                    compares.push((group.to_string(), subject.to_string(), peer.to_string()))
                }
                _ => return Err(format!("bad manifest line in {}: {line:?}", f.display())),
            }
        }
    }
    let find = |g: &str, id: &str| figures.iter().find(|f| f.group == g && f.id == id);
    let comparisons = compares
        .into_iter()
        .filter_map(|(group, subject, peer)| {
            let (s, p) = (find(&group, &subject)?, find(&group, &peer)?);
            Some(Comparison {
                ratio: s.value / p.value,
                higher_is_better: s.higher_is_better,
                group,
                subject,
                peer,
            })
        })
        .collect();
    Ok((figures, comparisons))
}

struct Meta {
    command: String,
    revision: String,
    date: String,
    host: String,
    cpu: String,
    cores: usize,
    rustc: String,
}

impl Meta {
    fn collect(root: &Path, command: &str, started: SystemTime) -> Meta {
        let git = |args: &[&str]| {
            let mut c = std::process::Command::new("git");
            c.current_dir(root).args(args);
            util::output(c)
        };
        let mut revision =
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
        if git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()) {
            revision.push_str(" (with uncommitted changes)");
        }
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let mut rustc = std::process::Command::new("rustc");
        rustc.arg("--version");
        Meta {
            command: command.into(),
            revision,
            date: utc_date(started),
            host: std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rustc: util::output(rustc).unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` without a date crate (Howard Hinnant's civil_from_days).
fn utc_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

fn fmt_value(v: f64, unit: &str) -> String {
    if unit == "ops/s" || unit == "keys/s" {
        if v >= 1e6 {
            format!("{:.2} M", v / 1e6)
        } else if v >= 1e3 {
            format!("{:.1} k", v / 1e3)
        } else {
            format!("{v:.1}")
        }
    } else if v.fract() == 0.0 || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn group_table(group: &str, figures: &[Figure], comparisons: &[Comparison]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| {group} | figure | unit | note |\n|---|--:|---|---|");
    for f in figures.iter().filter(|f| f.group == group) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            f.id,
            fmt_value(f.value, &f.unit),
            f.unit,
            f.note
        );
    }
    let cs: Vec<&Comparison> = comparisons.iter().filter(|c| c.group == group).collect();
    if !cs.is_empty() {
        let _ = writeln!(
            s,
            "\n| subject | peer | subject / peer | better |\n|---|---|--:|---|"
        );
        for c in cs {
            let better = if c.higher_is_better {
                "higher"
            } else {
                "lower"
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.2}x | {better} |",
                c.subject, c.peer, c.ratio
            );
        }
    }
    s
}

fn groups(figures: &[Figure]) -> Vec<String> {
    let mut gs: Vec<String> = Vec::new();
    for f in figures {
        if !gs.contains(&f.group) {
            gs.push(f.group.clone());
        }
    }
    gs
}

/// Which way a goal's ratio must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// `ratio >= target`.
    AtLeast,
    /// `ratio <= target`.
    AtMost,
}

/// What a goal's ratio divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Of {
    /// The figures as measured (ops/s, bytes, µs): `subject / peer`.
    Figure,
    /// Time per operation, from ops/s: `peer / subject` of the figures.
    TimePerOp,
    /// The subject's figure itself against an absolute target (no peer):
    /// the subject is a `*` glob over the group's ids.
    Value,
}

/// A goal from the issues: in `group` (a `*` glob: one row per group of the
/// run that matches), `subject` against `peer` of the same run.
#[derive(Debug, Clone, Copy)]
struct Goal {
    /// What the goal is, for the reader.
    what: &'static str,
    group: &'static str,
    subject: &'static str,
    peer: &'static str,
    of: Of,
    direction: Direction,
    target: f64,
}

const fn goal(
    what: &'static str,
    group: &'static str,
    subject: &'static str,
    peer: &'static str,
    direction: Direction,
    target: f64,
) -> Goal {
    Goal {
        what,
        group,
        subject,
        peer,
        of: Of::Figure,
        direction,
        target,
    }
}

/// A goal on one of the simulator's summary figures itself (no peer).
const fn value_goal(
    what: &'static str,
    subject: &'static str,
    direction: Direction,
    target: f64,
) -> Goal {
    Goal {
        of: Of::Value,
        ..goal(what, "sim/summary", subject, "", direction, target)
    }
}

/// The goals the report opens with (issues #14 and the L1, facade and
/// write-behind issues), each with its target ratio.
const GOALS: &[Goal] = &[
    goal(
        "L1 get, 100% reads, 1 thread, vs quick_cache",
        "l1/100% get zipf/1 thread",
        "larder",
        "quick_cache",
        Direction::AtLeast,
        1.0,
    ),
    goal(
        "L1 get, 100% reads, 2 threads, vs quick_cache",
        "l1/100% get zipf/2 threads",
        "larder",
        "quick_cache",
        Direction::AtLeast,
        1.0,
    ),
    goal(
        "L1 get, 95% reads 5% inserts, 1 thread, vs quick_cache",
        "l1/95% get 5% insert zipf/1 thread",
        "larder",
        "quick_cache",
        Direction::AtLeast,
        1.0,
    ),
    goal(
        "L1 get, 95% reads 5% inserts, 2 threads, vs quick_cache",
        "l1/95% get 5% insert zipf/2 threads",
        "larder",
        "quick_cache",
        Direction::AtLeast,
        1.0,
    ),
    goal(
        "L1 hot keys vs quick_cache",
        "l1/*hot*",
        "larder",
        "quick_cache",
        Direction::AtLeast,
        1.0,
    ),
    goal(
        "L1 memory per entry vs quick_cache",
        "l1/memory per entry*",
        "larder",
        "quick_cache",
        Direction::AtMost,
        1.0,
    ),
    goal(
        "L2 plain gets, 64 concurrent, vs raw redis-rs (`Store::get` through `dyn Store`, the facade's path)",
        "l2/get/64 concurrent, interleaved",
        "larder RedisStore as dyn Store",
        "redis-rs multiplexed",
        Direction::AtLeast,
        0.95,
    ),
    goal(
        "L2 auto-batched gets vs raw MGET of the same batch size (keys/s)",
        "l2/get/64 concurrent, interleaved",
        "larder RedisStore auto-batch",
        "redis-rs MGET at the batcher's mean batch size",
        Direction::AtLeast,
        0.8,
    ),
    goal(
        "L2 p99 latency, auto-batched vs plain gets",
        "l2/get/64 concurrent p99",
        "larder RedisStore auto-batch",
        "larder RedisStore",
        Direction::AtMost,
        2.0,
    ),
    Goal {
        of: Of::TimePerOp,
        ..goal(
            "Facade L1 hit vs bare larder-memory (time per get)",
            "facade/l1 hit",
            "larder Cache get (L1 hit)",
            "larder-memory get",
            Direction::AtMost,
            1.3,
        )
    },
    goal(
        "Write-behind vs write-through",
        "facade/write modes",
        "write-behind into SQLite",
        "write-through into SQLite",
        Direction::AtLeast,
        10.0,
    ),
    value_goal(
        "Hit ratio, 1 shard: mean % of OPT over the traces README's rows",
        "larder TinyLfu: mean % of OPT",
        Direction::AtLeast,
        85.0,
    ),
    value_goal(
        "Hit ratio, default shards: mean % of OPT over the traces README's rows",
        "larder sharded TinyLfu: mean % of OPT",
        Direction::AtLeast,
        85.0,
    ),
    value_goal(
        "Hit ratio, 1 shard: points below the best peer, worst row",
        "points below the best peer, worst row*",
        Direction::AtMost,
        2.0,
    ),
    value_goal(
        "Hit ratio, default shards: points below the best peer, worst row",
        "points below the best peer, sharded, worst row*",
        Direction::AtMost,
        2.0,
    ),
    goal(
        "Flash sale, larder vs moka + redis-rs (throughput)",
        "facade/flash sale",
        "larder L1 + L2 throughput",
        "moka + redis-rs throughput",
        Direction::AtLeast,
        1.0,
    ),
];

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One row of the summary: a goal on one group, measured or not.
#[derive(Debug, Clone, PartialEq)]
struct GoalRow {
    what: String,
    /// (subject, peer) figures as shown, and the ratio (none for a goal on
    /// a value); None if not measured.
    measured: Option<(String, String, Option<f64>)>,
    target: String,
    met: Option<bool>,
}

fn goal_rows(goals: &[Goal], figures: &[Figure]) -> Vec<GoalRow> {
    let mut rows = Vec::new();
    for g in goals {
        let target = format!(
            "{} {:.2}{}",
            match g.direction {
                Direction::AtLeast => ">=",
                Direction::AtMost => "<=",
            },
            g.target,
            if g.of == Of::Value { "" } else { "x" }
        );
        let find = |group: &str, id: &str| {
            figures
                .iter()
                .find(|f| f.group == group && f.id == id)
                .cloned()
        };
        let wildcard = g.group.contains('*');
        let mut matched = 0;
        for group in groups(figures) {
            if !glob(g.group, &group) {
                continue;
            }
            let show = |f: &Figure| match g.of {
                Of::Figure | Of::Value => format!("{} {}", fmt_value(f.value, &f.unit), f.unit),
                Of::TimePerOp => format!("{:.1} ns/op", 1e9 / f.value),
            };
            let meets = |x: f64| match g.direction {
                Direction::AtLeast => x >= g.target,
                Direction::AtMost => x <= g.target,
            };
            if g.of == Of::Value {
                // One row per figure the subject's glob matches; the row
                // names what the glob's `*` stood for (a trace's row).
                let fixed = g.subject.split('*').next().unwrap_or("");
                for f in figures
                    .iter()
                    .filter(|f| f.group == group && glob(g.subject, &f.id))
                {
                    matched += 1;
                    let rest = f.id.strip_prefix(fixed).unwrap_or(&f.id).trim();
                    rows.push(GoalRow {
                        what: if rest.is_empty() {
                            g.what.to_owned()
                        } else {
                            format!("{} {rest}", g.what)
                        },
                        measured: Some((show(f), "–".to_owned(), None)),
                        target: format!("{target} {}", f.unit),
                        met: Some(meets(f.value)),
                    });
                }
                continue;
            }
            let (Some(s), Some(p)) = (find(&group, g.subject), find(&group, g.peer)) else {
                continue;
            };
            matched += 1;
            let ratio = match g.of {
                Of::Figure | Of::Value => s.value / p.value,
                Of::TimePerOp => p.value / s.value,
            };
            let what = if wildcard {
                format!("{} ({group})", g.what)
            } else {
                g.what.to_owned()
            };
            rows.push(GoalRow {
                what,
                measured: Some((show(&s), show(&p), Some(ratio))),
                target: target.clone(),
                met: Some(meets(ratio)),
            });
        }
        if matched == 0 {
            rows.push(GoalRow {
                what: g.what.to_owned(),
                measured: None,
                target,
                met: None,
            });
        }
    }
    rows
}

/// The report's opening: each goal, the figure, the peer's figure from the
/// same run, the ratio, the target, and the verdict.
fn summary(goals: &[Goal], figures: &[Figure]) -> String {
    let rows = goal_rows(goals, figures);
    let met = rows.iter().filter(|r| r.met == Some(true)).count();
    let missed = rows.iter().filter(|r| r.met == Some(false)).count();
    let unmeasured = rows.len() - met - missed;
    let mut s = format!(
        "## Summary: goals\n\n{met} met, {missed} not met, {unmeasured} not measured in this run. \
         Each ratio divides two figures of this run (time per op where the goal says so); \
         a goal without a peer holds a figure of this run against its target.\n\n\
         | goal | figure | peer's figure | ratio | target | verdict |\n|---|--:|--:|--:|--:|---|\n"
    );
    for r in rows {
        let verdict = match r.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        match &r.measured {
            Some((a, b, ratio)) => {
                let ratio = ratio.map_or_else(|| "–".to_owned(), |x| format!("{x:.2}x"));
                let _ = writeln!(
                    s,
                    "| {} | {a} | {b} | {ratio} | {} | {verdict} |",
                    r.what, r.target
                );
            }
            None => {
                let _ = writeln!(s, "| {} | – | – | – | {} | {verdict} |", r.what, r.target);
            }
        }
    }
    s
}

fn header(meta: &Meta) -> String {
    format!(
        "- command: `{}`\n- revision: {}\n- date: {}\n- host: {} ({}, {} cores)\n- toolchain: {}\n",
        meta.command, meta.revision, meta.date, meta.host, meta.cpu, meta.cores, meta.rustc
    )
}

fn markdown(meta: &Meta, figures: &[Figure], comparisons: &[Comparison]) -> String {
    let mut s = String::from(
        "# Larder benchmark report\n\nGenerated by `cargo xtask bench`; do not edit by hand. \
         Every ratio compares two figures measured in the same run on the same machine. \
         Throughput is operations per second (criterion's mean time per iteration); \
         `subject / peer` above 1 means Larder's figure is larger.\n\n",
    );
    s.push_str(&summary(GOALS, figures));
    s.push_str("\n## Run\n\n");
    s.push_str(&header(meta));
    for g in groups(figures) {
        let _ = write!(s, "\n## {g}\n\n{}", group_table(&g, figures, comparisons));
    }
    s
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

fn json(meta: &Meta, figures: &[Figure], comparisons: &[Comparison]) -> String {
    let mut s = format!(
        "{{\n  \"command\": \"{}\",\n  \"revision\": \"{}\",\n  \"date\": \"{}\",\n  \"host\": \"{}\",\n  \"cpu\": \"{}\",\n  \"cores\": {},\n  \"toolchain\": \"{}\",\n  \"figures\": [\n",
        esc(&meta.command),
        esc(&meta.revision),
        esc(&meta.date),
        esc(&meta.host),
        esc(&meta.cpu),
        meta.cores,
        esc(&meta.rustc)
    );
    let fs: Vec<String> = figures
        .iter()
        .map(|f| {
            format!(
                "    {{\"group\": \"{}\", \"id\": \"{}\", \"value\": {}, \"unit\": \"{}\", \"better\": \"{}\"}}",
                esc(&f.group), esc(&f.id), f.value, esc(&f.unit), if f.higher_is_better { "higher" } else { "lower" }
            )
        })
        .collect();
    s.push_str(&fs.join(",\n"));
    s.push_str("\n  ],\n  \"comparisons\": [\n");
    let cs: Vec<String> = comparisons
        .iter()
        .map(|c| {
            format!(
                "    {{\"group\": \"{}\", \"subject\": \"{}\", \"peer\": \"{}\", \"ratio\": {}, \"better\": \"{}\"}}",
                esc(&c.group), esc(&c.subject), esc(&c.peer), c.ratio, if c.higher_is_better { "higher" } else { "lower" }
            )
        })
        .collect();
    s.push_str(&cs.join(",\n"));
    s.push_str("\n  ]\n}\n");
    s
}

/// Replaces the text between `<!-- bench:G -->` and `<!-- /bench:G -->` in
/// `docs/*.md` (other than the report itself) with group G's fresh table.
fn refresh_doc_tables(
    docs: &Path,
    meta: &Meta,
    figures: &[Figure],
    comparisons: &[Comparison],
) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(docs) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "md")
            || p.file_name().is_some_and(|n| n == "benchmarks.md")
        {
            continue;
        }
        let Ok(mut text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let mut changed = false;
        for g in groups(figures) {
            let (open, close) = (
                format!("<!-- bench:{g} -->"),
                format!("<!-- /bench:{g} -->"),
            );
            let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
                continue;
            };
            if b < a {
                continue;
            }
            let body = format!(
                "{open}\n_Measured by `{}` at {} on {} ({} cores)._\n\n{}{close}",
                meta.command,
                meta.revision,
                meta.cpu,
                meta.cores,
                group_table(&g, figures, comparisons)
            );
            text.replace_range(a..b + close.len(), &body);
            changed = true;
        }
        if changed {
            std::fs::write(&p, text).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(group: &str, id: &str, value: f64, unit: &str) -> Figure {
        Figure {
            group: group.into(),
            id: id.into(),
            value,
            unit: unit.into(),
            higher_is_better: unit != "bytes",
            note: String::new(),
        }
    }

    #[test]
    fn globs_match_with_stars_only() {
        assert!(glob("l1/*hot*", "l1/hot keys, every thread/2 threads"));
        assert!(glob("l1/*hot*", "l1/get a hot key"));
        assert!(!glob("l1/*hot*", "l2/hot"));
        assert!(glob("a", "a"));
        assert!(!glob("a", "ab"));
        assert!(glob("a*c", "abc"));
        assert!(!glob("a*c", "ab"));
        assert!(glob(
            "l1/memory per entry*",
            "l1/memory per entry at 1M entries"
        ));
    }

    /// The summary's verdicts: met, not met, not measured, one row per
    /// group a glob matches, time per op taken from ops/s.
    #[test]
    fn the_summary_gives_each_goal_its_verdict() {
        let goals = [
            goal("up", "g/up", "s", "p", Direction::AtLeast, 1.0),
            goal("down", "g/down", "s", "p", Direction::AtMost, 1.0),
            goal("hot", "l1/*hot*", "s", "p", Direction::AtLeast, 1.0),
            goal("absent", "g/none", "s", "p", Direction::AtLeast, 1.0),
            goal("half", "g/up", "s", "missing peer", Direction::AtLeast, 1.0),
            Goal {
                of: Of::TimePerOp,
                ..goal("time", "g/time", "s", "p", Direction::AtMost, 1.3)
            },
            Goal {
                of: Of::Value,
                ..goal("mean", "sim/summary", "mean*", "", Direction::AtLeast, 85.0)
            },
            Goal {
                of: Of::Value,
                ..goal("gap", "sim/summary", "gap*", "", Direction::AtMost, 2.0)
            },
        ];
        let figures = [
            fig("g/up", "s", 90.0, "ops/s"),
            fig("g/up", "p", 100.0, "ops/s"),
            fig("g/down", "s", 90.0, "bytes"),
            fig("g/down", "p", 100.0, "bytes"),
            fig("l1/hot a", "s", 2.0, "ops/s"),
            fig("l1/hot a", "p", 1.0, "ops/s"),
            fig("l1/b hot", "s", 1.0, "ops/s"),
            fig("l1/b hot", "p", 2.0, "ops/s"),
            // 1 M ops/s = 1000 ns/op against 2 M ops/s = 500 ns/op: 2x the time.
            fig("g/time", "s", 1e6, "ops/s"),
            fig("g/time", "p", 2e6, "ops/s"),
            fig("sim/summary", "mean % of OPT", 83.5, "%"),
            fig("sim/summary", "gap (row a)", 1.5, "points"),
            fig("sim/summary", "gap (row b)", 2.5, "points"),
        ];
        let rows = goal_rows(&goals, &figures);
        let verdicts: Vec<(&str, Option<bool>)> =
            rows.iter().map(|r| (r.what.as_str(), r.met)).collect();
        assert_eq!(
            verdicts,
            [
                ("up", Some(false)),
                ("down", Some(true)),
                ("hot (l1/hot a)", Some(true)),
                ("hot (l1/b hot)", Some(false)),
                ("absent", None),
                ("half", None),
                ("time", Some(false)),
                ("mean % of OPT", Some(false)),
                ("gap (row a)", Some(true)),
                ("gap (row b)", Some(false)),
            ]
        );
        let ratio = |i: usize| rows[i].measured.as_ref().unwrap().2.unwrap();
        assert!((ratio(0) - 0.9).abs() < 1e-9);
        assert!((ratio(6) - 2.0).abs() < 1e-9, "time per op, not ops/s");
        assert_eq!(rows[6].measured.as_ref().unwrap().0, "1000.0 ns/op");
        let md = summary(&goals, &figures);
        assert!(md.starts_with("## Summary: goals\n\n3 met, 5 not met, 2 not measured"));
        assert!(
            md.contains("| mean % of OPT | 83.50 % | – | – | >= 85.00 % | **not met** |"),
            "{md}"
        );
        assert!(md.contains("| absent | – | – | – | >= 1.00x | not measured |"));
        assert!(md.contains("| up | 90.0 ops/s | 100.0 ops/s | 0.90x | >= 1.00x | **not met** |"));
    }

    /// Every goal names a group glob and two ids: a typo would read
    /// "not measured" for good.
    #[test]
    fn the_goals_are_well_formed() {
        for g in GOALS {
            assert!(!g.group.is_empty() && !g.subject.is_empty());
            // A goal on a value has no peer; every other goal has one.
            assert_eq!(g.peer.is_empty(), g.of == Of::Value, "{}", g.what);
            assert_ne!(g.subject, g.peer, "{}", g.what);
            assert!(g.target > 0.0, "{}", g.what);
        }
    }

    #[test]
    fn parses_criterion_json() {
        let bench = r#"{"group_id":"codec/encode","function_id":"postcard","full_id":"codec/encode/postcard","directory_name":"x"}"#;
        assert_eq!(
            json_string(bench, "full_id").as_deref(),
            Some("codec/encode/postcard")
        );
        let est = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.5e3,"standard_error":0.1},"median":{"point_estimate":9.0}}"#;
        assert_eq!(mean_estimate(est), Some(2500.0));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_745_400);
        assert_eq!(utc_date(t), "2026-11-27 02:10 UTC");
    }
}
