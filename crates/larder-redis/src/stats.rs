//! Per-command figures of a store.

use std::time::Duration;

use larder_core::{CommandStats, Counter, LatencyHistogram, StoreStats};

/// The commands a store counts separately. The discriminant indexes the
/// recorders; the order is the order of names in snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmd {
    Del,
    Get,
    MGet,
    Other,
    Pipeline,
    Script,
    Set,
    /// Reading a Cluster's slot map (`CLUSTER SLOTS`).
    Topology,
}

/// Snapshot names, indexed like [`Cmd`].
const NAMES: [&str; 8] = [
    "DEL", "GET", "MGET", "OTHER", "PIPELINE", "SCRIPT", "SET", "TOPOLOGY",
];

#[derive(Debug, Default)]
struct Rec {
    calls: Counter,
    errors: Counter,
    timeouts: Counter,
    latency: LatencyHistogram,
}

/// Lock-free recorders, one per command kind.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    recs: [Rec; 8],
    pub(crate) breaker_rejections: Counter,
    pub(crate) corrupt: Counter,
}

impl Stats {
    fn rec(&self, cmd: Cmd) -> &Rec {
        &self.recs[cmd as usize]
    }

    pub(crate) fn record(&self, cmd: Cmd, took: Duration, error: bool, timeout: bool) {
        let r = self.rec(cmd);
        r.calls.incr();
        r.latency.record(took);
        if error {
            r.errors.incr();
        }
        if timeout {
            r.timeouts.incr();
        }
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for (r, name) in self.recs.iter().zip(NAMES) {
            let calls = r.calls.get();
            if calls == 0 {
                continue;
            }
            let mut c = CommandStats::default();
            c.calls = calls;
            c.errors = r.errors.get();
            c.timeouts = r.timeouts.get();
            c.latency = r.latency.snapshot();
            s.commands.push((name, c));
        }
        s.breaker_rejections = self.breaker_rejections.get();
        s.corrupt = self.corrupt.get();
        s
    }

    /// Adds another store's figures (for a sharded store's total).
    pub(crate) fn merge(into: &mut StoreStats, other: StoreStats) {
        for (name, c) in other.commands {
            match into.commands.iter_mut().find(|(n, _)| *n == name) {
                Some((_, t)) => {
                    t.calls += c.calls;
                    t.errors += c.errors;
                    t.timeouts += c.timeouts;
                    t.latency.count += c.latency.count;
                    t.latency.sum_nanos += c.latency.sum_nanos;
                    t.latency.max_nanos = t.latency.max_nanos.max(c.latency.max_nanos);
                    for (a, b) in t.latency.buckets.iter_mut().zip(c.latency.buckets) {
                        *a += b;
                    }
                }
                None => into.commands.push((name, c)),
            }
        }
        into.commands.sort_by_key(|(n, _)| *n);
        into.breaker_rejections += other.breaker_rejections;
        into.corrupt += other.corrupt;
    }
}
