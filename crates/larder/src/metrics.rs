//! `metrics` feature: the cache's figures published through the `metrics`
//! crate, for whatever exporter the service installed (Prometheus, StatsD).

use metrics::{counter, gauge};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Cache;
use crate::key::CacheKey;
use larder_core::Codec;

impl<K, V, C> Cache<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Publishes this cache's figures, labelled `cache = name`, to the
    /// installed `metrics` recorder: call it where the exporter scrapes (a
    /// `/metrics` handler) or on a timer. Counters are set to their totals
    /// (`absolute`), gauges to their current value. Names:
    ///
    /// | metric | kind | labels |
    /// |---|---|---|
    /// | `larder_requests_total` | counter | `level` (`l1`, `l2`), `result` (`hit`, `miss`) |
    /// | `larder_loads_total` | counter | `result` (`ok`, `error`) |
    /// | `larder_load_duration_microseconds_sum`, `larder_load_duration_microseconds_count` | counter | |
    /// | `larder_coalesced_total`, `larder_stale_served_total`, `larder_stale_if_error_total`, `larder_early_refreshes_total`, `larder_hot_refreshes_total`, `larder_background_refreshes_total`, `larder_negative_hits_total`, `larder_corrupt_total`, `larder_l2_errors_total`, `larder_fills_refused_total`, `larder_invalidations_total`, `larder_writes_total`, `larder_lease_waits_total`, `larder_lease_takeovers_total` | counter | |
    /// | `larder_l1_entries`, `larder_in_flight` | gauge | |
    /// | `larder_write_behind_queued`, `larder_write_behind_oldest_seconds` | gauge | (write-behind on) |
    /// | `larder_write_behind_flushed_total`, `_retries_total`, `_dead_letters_total`, `_coalesced_total`, `_journalled_total`, `_replayed_total`, `_superseded_total`, `_journal_errors_total` | counter | (write-behind on) |
    /// | `larder_coherence_connected` (`redis` feature) | gauge (1 up, 0 down) | (coherence on) |
    /// | `larder_coherence_received_total`, `_sent_total`, `_send_errors_total`, `_evicted_total`, `_l1_flushes_total`, `_disconnects_total`, `_reconnects_total` (`redis` feature) | counter | (coherence on) |
    /// | `larder_breaker_open` (`redis` feature) | gauge (1 open, 0.5 half-open, 0 closed) | `node` |
    pub fn export_metrics(&self, name: &str) {
        let s = self.stats();
        let cache = name.to_owned();
        for (level, result, v) in [
            ("l1", "hit", s.l1_hits),
            ("l1", "miss", s.l1_misses),
            ("l2", "hit", s.l2_hits),
            ("l2", "miss", s.l2_misses),
        ] {
            counter!("larder_requests_total", "cache" => cache.clone(), "level" => level, "result" => result)
                .absolute(v);
        }
        counter!("larder_loads_total", "cache" => cache.clone(), "result" => "ok")
            .absolute(s.loads_ok);
        counter!("larder_loads_total", "cache" => cache.clone(), "result" => "error")
            .absolute(s.load_errors);
        // One summary, in whole microseconds (a counter is an integer).
        counter!("larder_load_duration_microseconds_count", "cache" => cache.clone())
            .absolute(s.load_time.count);
        counter!("larder_load_duration_microseconds_sum", "cache" => cache.clone())
            .absolute(s.load_time.sum_nanos / 1_000);
        for (metric, v) in [
            ("larder_coalesced_total", s.coalesced),
            ("larder_stale_served_total", s.stale_served),
            ("larder_stale_if_error_total", s.stale_if_error),
            ("larder_early_refreshes_total", s.early_refreshes),
            ("larder_hot_refreshes_total", s.hot_refreshes),
            ("larder_negative_hits_total", s.negative_hits),
            ("larder_corrupt_total", s.corrupt),
            ("larder_l2_errors_total", s.l2_errors),
            ("larder_fills_refused_total", s.fills_refused),
            ("larder_invalidations_total", s.invalidations),
            ("larder_lease_waits_total", s.lease_waits),
            ("larder_lease_takeovers_total", s.lease_takeovers),
            ("larder_background_refreshes_total", s.background_refreshes),
            ("larder_writes_total", s.writes),
        ] {
            counter!(metric, "cache" => cache.clone()).absolute(v);
        }
        gauge!("larder_l1_entries", "cache" => cache.clone()).set(s.l1_entries as f64);
        gauge!("larder_in_flight", "cache" => cache.clone()).set(s.in_flight as f64);
        if let Some(wb) = &s.write_behind {
            gauge!("larder_write_behind_queued", "cache" => cache.clone()).set(wb.queued as f64);
            gauge!("larder_write_behind_oldest_seconds", "cache" => cache.clone())
                .set(wb.oldest_ms as f64 / 1e3);
            for (metric, v) in [
                ("larder_write_behind_flushed_total", wb.flushed),
                ("larder_write_behind_retries_total", wb.retries),
                ("larder_write_behind_dead_letters_total", wb.dead_letters),
                ("larder_write_behind_coalesced_total", wb.coalesced),
                ("larder_write_behind_journalled_total", wb.journalled),
                ("larder_write_behind_replayed_total", wb.replayed),
                ("larder_write_behind_superseded_total", wb.superseded),
                (
                    "larder_write_behind_journal_errors_total",
                    wb.journal_errors,
                ),
            ] {
                counter!(metric, "cache" => cache.clone()).absolute(v);
            }
        }
        #[cfg(feature = "redis")]
        if let Some(co) = &s.coherence {
            gauge!("larder_coherence_connected", "cache" => cache.clone()).set(if co.connected {
                1.0
            } else {
                0.0
            });
            for (metric, v) in [
                ("larder_coherence_received_total", co.received),
                ("larder_coherence_sent_total", co.sent),
                ("larder_coherence_send_errors_total", co.send_errors),
                ("larder_coherence_evicted_total", co.evicted),
                ("larder_coherence_l1_flushes_total", co.l1_flushes),
                ("larder_coherence_disconnects_total", co.disconnects),
                ("larder_coherence_reconnects_total", co.reconnects),
            ] {
                counter!(metric, "cache" => cache.clone()).absolute(v);
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis() {
            for (node, state) in redis.breaker_states() {
                let v = match state {
                    larder_redis::BreakerState::Closed => 0.0,
                    larder_redis::BreakerState::HalfOpen => 0.5,
                    _ => 1.0,
                };
                gauge!("larder_breaker_open", "cache" => cache.clone(), "node" => node).set(v);
            }
        }
    }
}
