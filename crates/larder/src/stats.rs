//! The facade's figures: recorders on the hot paths, [`Stats`] snapshots.

use larder_core::{CacheStats, Counter, LatencyHistogram, LatencySnapshot};

/// Lock-free recorders (striped counters).
#[derive(Debug, Default)]
pub(crate) struct Recorders {
    pub(crate) l1_hits: Counter,
    pub(crate) l1_misses: Counter,
    pub(crate) l2_hits: Counter,
    pub(crate) l2_misses: Counter,
    pub(crate) l2_errors: Counter,
    pub(crate) loads_ok: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) load_time: LatencyHistogram,
    pub(crate) coalesced: Counter,
    pub(crate) stale_served: Counter,
    pub(crate) stale_if_error: Counter,
    pub(crate) early_refreshes: Counter,
    pub(crate) background_refreshes: Counter,
    pub(crate) negative_hits: Counter,
    pub(crate) corrupt: Counter,
    pub(crate) fills_refused: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) encode_errors: Counter,
    pub(crate) oversized: Counter,
    pub(crate) lease_waits: Counter,
    pub(crate) hot_refreshes: Counter,
    pub(crate) writes: Counter,
    pub(crate) lease_takeovers: Counter,
}

/// A snapshot of a [`Cache`](crate::Cache)'s figures. Subtract two
/// snapshots' counters to get an interval's.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Reads answered by the L1 (fresh, or stale within the grace window).
    pub l1_hits: u64,
    /// Reads the L1 could not answer (or L1 is off).
    pub l1_misses: u64,
    /// Reads answered by the L2.
    pub l2_hits: u64,
    /// Reads the L2 could not answer (missing or expired).
    pub l2_misses: u64,
    /// L2 calls that failed (down, slow, breaker open): the read went on to
    /// the loader, the write to the L1 only.
    pub l2_errors: u64,
    /// Loads from the source of truth that succeeded.
    pub loads_ok: u64,
    /// Loads that failed, timed out or panicked (never cached).
    pub load_errors: u64,
    /// How long loads took (successful and failed).
    pub load_time: LatencySnapshot,
    /// Callers that waited on another caller's load instead of loading.
    pub coalesced: u64,
    /// Stale values served within the grace window (each starts a
    /// background refresh if none runs and a Tokio runtime is there to run
    /// it).
    pub stale_served: u64,
    /// Stale values served because the load failed (stale-if-error).
    pub stale_if_error: u64,
    /// Refreshes started early by XFetch (counted when the refresh begins,
    /// which may be just after the call that set it off returned).
    pub early_refreshes: u64,
    /// Refreshes of hot keys started ahead of their expiry.
    pub hot_refreshes: u64,
    /// Background refreshes started (early, stale-while-revalidate, hot
    /// keys). A refresh asked for a value already replaced by a newer one
    /// (a load that ended just before) does not start.
    pub background_refreshes: u64,
    /// Reads answered by a cached "not found".
    pub negative_hits: u64,
    /// Values in the L2 that were not valid envelopes of this cache's codec
    /// and type: counted, treated as misses, overwritten by the next load.
    pub corrupt: u64,
    /// Loaded values the L2 refused because the key was invalidated or
    /// written while they loaded (handed to the callers, not cached).
    pub fills_refused: u64,
    /// Keys invalidated by this instance.
    pub invalidations: u64,
    /// Values written through (`put`) by this instance.
    pub writes: u64,
    /// Values the codec could not encode (served, kept out of the L2).
    pub encode_errors: u64,
    /// Values above `max_value_bytes`, kept out of the L2.
    pub oversized: u64,
    /// Loads this instance did not run because another process held the
    /// key's load lease (it waited for that process's value instead).
    pub lease_waits: u64,
    /// Leases taken over after the holder's lease expired without a value.
    pub lease_takeovers: u64,
    /// The L1's own figures (evictions, expirations, size), when it is on.
    pub l1: Option<CacheStats>,
    /// Entries in the L1.
    pub l1_entries: u64,
    /// Loads or refreshes running now.
    pub in_flight: usize,
    /// The write-behind queue's figures, when write-behind is on.
    pub write_behind: Option<crate::WriteBehindStats>,
    /// Each Redis node's circuit breaker (`redis` feature, Redis L2).
    #[cfg(feature = "redis")]
    pub breakers: Vec<(String, larder_redis::BreakerState)>,
    /// Coherence across instances (`redis` feature), when on.
    #[cfg(feature = "redis")]
    pub coherence: Option<crate::CoherenceStats>,
}

impl Stats {
    /// Hits at either level over all reads, or 1.0 with no reads.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.l1_hits + self.l1_misses;
        if reads == 0 {
            return 1.0;
        }
        (self.l1_hits + self.l2_hits) as f64 / reads as f64
    }
}

impl Recorders {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            l1_hits: self.l1_hits.get(),
            l1_misses: self.l1_misses.get(),
            l2_hits: self.l2_hits.get(),
            l2_misses: self.l2_misses.get(),
            l2_errors: self.l2_errors.get(),
            loads_ok: self.loads_ok.get(),
            load_errors: self.load_errors.get(),
            load_time: self.load_time.snapshot(),
            coalesced: self.coalesced.get(),
            stale_served: self.stale_served.get(),
            stale_if_error: self.stale_if_error.get(),
            early_refreshes: self.early_refreshes.get(),
            background_refreshes: self.background_refreshes.get(),
            negative_hits: self.negative_hits.get(),
            corrupt: self.corrupt.get(),
            fills_refused: self.fills_refused.get(),
            invalidations: self.invalidations.get(),
            writes: self.writes.get(),
            encode_errors: self.encode_errors.get(),
            oversized: self.oversized.get(),
            lease_waits: self.lease_waits.get(),
            hot_refreshes: self.hot_refreshes.get(),
            lease_takeovers: self.lease_takeovers.get(),
            l1: None,
            l1_entries: 0,
            in_flight: 0,
            write_behind: None,
            #[cfg(feature = "redis")]
            breakers: Vec::new(),
            #[cfg(feature = "redis")]
            coherence: None,
        }
    }
}
