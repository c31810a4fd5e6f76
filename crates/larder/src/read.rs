//! The read path's steps outside the in-flight table: the L1 lookup (no
//! I/O), the L2 lookup and promotion, local invalidation, and bulk reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use larder_core::envelope::{self, Freshness};
use larder_core::{Codec, Result};
use larder_memory::Join;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::Inner;
use crate::entry::Entry;
use crate::hot::HotKeys;
use crate::key::CacheKey;
use crate::load::Refresh;

/// What a caller's L2 read tells its load: the key's version ticket when
/// the L2 answered that it holds nothing servable (read with the value in
/// one round trip), and the expired entry it still keeps for
/// stale-if-error, if any.
pub(crate) type Checked<V> = (Option<u64>, Option<Arc<Entry<V>>>);

/// What one L2 read found.
pub(crate) enum L2Read<V> {
    Hit(Arc<Entry<V>>),
    Miss,
    /// Not a valid envelope of this cache's codec and type (counted).
    Corrupt,
    /// The L2 failed (counted).
    Failed,
}

impl<K, V, C> Inner<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The L1's answer: `Some(value)` for a fresh hit, or a stale one within
    /// its grace window (a refresh starts in the background); `None` for a
    /// miss. No I/O on a hit; the value is cloned once.
    #[inline]
    pub(crate) fn l1_lookup(self: &Arc<Self>, key: &K, now: u64) -> Option<Option<V>> {
        let e = self.l1.as_ref()?.get(key)?;
        match e.freshness(now) {
            Freshness::Fresh => {
                if e.refresh_early(now, self.cfg.beta, || 1.0 - self.draw()) {
                    self.refresh(key, Refresh::Early, e.fresh_until_ms);
                } else if let Some(hot) = &self.hot
                    && HotKeys::<K>::sampled()
                    && hot.record(key)
                    && e.fresh_until_ms - now
                        <= self
                            .cfg
                            .hot_ahead
                            .map_or(u64::from(e.fresh_ms / 10), millis)
                {
                    self.refresh(key, Refresh::Hot, e.fresh_until_ms);
                }
            }
            Freshness::Stale => {
                self.stats.stale_served.incr();
                self.refresh(key, Refresh::Stale, e.fresh_until_ms);
            }
            // Expired (perhaps kept for stale-if-error): a miss. It is not
            // removed here (a removal could take a fresher entry a flight
            // just published); the policy evicts it as a cold entry.
            _ => return None,
        }
        self.stats.l1_hits.incr();
        if e.value.is_none() {
            self.stats.negative_hits.incr();
        }
        Some(e.value)
    }

    /// Decodes L2 bytes into an entry; corrupt or foreign bytes are counted.
    pub(crate) fn decode(&self, text: &str, bytes: &[u8]) -> Option<Arc<Entry<V>>> {
        match envelope::decode_value::<C, V>(&self.cfg.codec, bytes) {
            Ok((meta, value)) => {
                let grace = self.grace_for(text, value.is_some());
                Some(Arc::new(Entry::new(&meta, value, grace)))
            }
            Err(_) => {
                self.stats.corrupt.incr();
                None
            }
        }
    }

    /// One L2 read, classified.
    pub(crate) async fn l2_read(&self, text: &str) -> L2Read<V> {
        let Some(l2) = &self.l2 else {
            return L2Read::Miss;
        };
        match l2.get(text).await {
            Ok(bytes) => self.classify(text, bytes),
            Err(_) => {
                self.stats.l2_errors.incr();
                L2Read::Failed
            }
        }
    }

    fn classify(&self, text: &str, bytes: Option<Vec<u8>>) -> L2Read<V> {
        match bytes {
            Some(b) => match self.decode(text, &b) {
                Some(e) => L2Read::Hit(e),
                None => L2Read::Corrupt,
            },
            None => L2Read::Miss,
        }
    }

    /// The L2's answer for a caller that missed the L1: `Ok(value)` for a
    /// fresh hit (or stale in its grace window), promoted to the L1;
    /// otherwise what a load needs to know ([`Checked`]).
    pub(crate) async fn l2_lookup(
        self: &Arc<Self>,
        key: &K,
        text: &str,
        now: u64,
        for_load: bool,
    ) -> std::result::Result<Option<V>, Checked<V>> {
        let Some(l2) = &self.l2 else {
            return Err((None, None));
        };
        let epoch = self.epoch(key);
        let (read, ticket) = if for_load {
            match l2.get_with_version(text).await {
                Ok((bytes, ticket)) => (self.classify(text, bytes), Some(ticket)),
                Err(_) => {
                    self.stats.l2_errors.incr();
                    (L2Read::Failed, None)
                }
            }
        } else {
            (self.l2_read(text).await, None)
        };
        let e = match read {
            L2Read::Hit(e) => e,
            L2Read::Miss => {
                self.stats.l2_misses.incr();
                return Err((ticket, None));
            }
            L2Read::Corrupt | L2Read::Failed => {
                self.stats.l2_misses.incr();
                return Err((None, None));
            }
        };
        match self.serve_from_l2(key, Arc::clone(&e), now, epoch) {
            Some(v) => Ok(v),
            // Expired but kept (stale-if-error): nothing servable, but the
            // ticket holds, and a failed load may serve it.
            None => Err((ticket, Some(e))),
        }
    }

    /// Serves an entry read from the L2: promotes it, and starts a refresh
    /// when XFetch fires or it is stale. `None` if it is expired.
    pub(crate) fn serve_from_l2(
        self: &Arc<Self>,
        key: &K,
        e: Arc<Entry<V>>,
        now: u64,
        epoch: u64,
    ) -> Option<Option<V>> {
        match e.freshness(now) {
            Freshness::Fresh => {
                if e.refresh_early(now, self.cfg.beta, || 1.0 - self.draw()) {
                    self.refresh(key, Refresh::Early, e.fresh_until_ms);
                }
            }
            Freshness::Stale => {
                self.stats.stale_served.incr();
                self.refresh(key, Refresh::Stale, e.fresh_until_ms);
            }
            _ => {
                self.stats.l2_misses.incr();
                return None;
            }
        }
        self.stats.l2_hits.incr();
        if e.value.is_none() {
            self.stats.negative_hits.incr();
        }
        let value = e.value.clone();
        self.promote(key, e, now, epoch);
        Some(value)
    }

    /// The grace window of a key's values (none for negative entries).
    pub(crate) fn grace_for(&self, text: &str, positive: bool) -> Duration {
        if positive {
            self.cfg.ttl.for_key(text).grace()
        } else {
            Duration::ZERO
        }
    }

    /// Inserts into the L1 (no check: the caller holds the key's flight).
    ///
    /// An entry carries its own deadlines, checked on every hit, so the L1
    /// needs no timer of its own: an entry past its lifetime is removed by
    /// the read that finds it, or evicted as a cold entry, and L1 hits skip
    /// the timer wheel. With `memory_ttl_cap`, the L1 also expires the
    /// entry after the cap.
    pub(crate) fn l1_insert(&self, key: &K, e: &Entry<V>, now: u64) {
        self.l1_insert_capped(key, e, now, self.cfg.memory_ttl_cap);
    }

    /// [`Inner::l1_insert`] for a value the L2 did not confirm (it could not
    /// be read, or the value came from this process's write-behind queue):
    /// no invalidation may ever come for it if the L2 holds something else,
    /// so it lives at most `unconfirmed_ttl`.
    /// Without coherence the L1 promises no agreement with the L2 anyway,
    /// and such a value is kept like any other.
    pub(crate) fn l1_insert_unconfirmed(&self, key: &K, e: &Entry<V>, now: u64) {
        let Some(unconfirmed) = self.cfg.unconfirmed_ttl else {
            return self.l1_insert(key, e, now);
        };
        let cap = self
            .cfg
            .memory_ttl_cap
            .map_or(unconfirmed, |cap| cap.min(unconfirmed));
        self.l1_insert_capped(key, e, now, Some(cap));
    }

    fn l1_insert_capped(&self, key: &K, e: &Entry<V>, now: u64, cap: Option<Duration>) {
        let Some(l1) = &self.l1 else { return };
        if e.stale_until_ms() <= now {
            return;
        }
        match cap {
            Some(cap) => {
                let left = Duration::from_millis(e.stale_until_ms() - now);
                l1.insert_with_ttl(key.clone(), e.clone(), left.min(cap));
            }
            None => l1.insert(key.clone(), e.clone()),
        }
    }

    /// Puts an entry read from the L2 outside a flight into the L1, and
    /// takes it out again if an invalidation ran since `epoch` was read
    /// (before the L2 read): either the invalidation's L1 removal comes
    /// after this insert, or its epoch bump is seen here.
    pub(crate) fn promote(&self, key: &K, e: Arc<Entry<V>>, now: u64, epoch: u64) {
        if self.l1.is_none() {
            return;
        }
        self.l1_insert(key, &e, now);
        if self.epoch(key) != epoch
            && let Some(l1) = &self.l1
        {
            l1.remove(key);
        }
    }

    /// Takes `key`'s write lock (its stripe's), for a write that goes to the
    /// source now (`put`, `delete`): a write-behind write of the key still
    /// waiting in the queue is taken out, as this one supersedes it; it
    /// goes back if the direct write fails ([`WriteOrder::written`]).
    pub(crate) async fn write_order(&self, key: &K) -> WriteOrder<K, V> {
        let lock = Arc::clone(&self.write_locks[self.stripe(key)])
            .lock_owned()
            .await;
        WriteOrder {
            superseded: self.queue.as_ref().map(|q| q.supersede(key)),
            acks: None,
            queue: self.queue.clone(),
            _lock: lock,
        }
    }

    /// Invalidates `key` everywhere: this process, then the L2 (versioned),
    /// then this process again (a reader may have read the old value from
    /// the L2 between the first local invalidation and the L2's).
    pub(crate) async fn invalidate(&self, key: &K, text: &str) -> Result<()> {
        self.stats.invalidations.incr();
        self.drop_everywhere(key, text).await
    }

    /// Removes `key` from every level and tells the other instances,
    /// counting nothing (an invalidation counts itself; an oversized
    /// write counts as a write).
    pub(crate) async fn drop_everywhere(&self, key: &K, text: &str) -> Result<()> {
        self.invalidate_local(key);
        if let Some(l2) = &self.l2 {
            l2.invalidate(text, self.cfg.tombstone).await?;
            self.invalidate_local(key);
            self.announce(&[text.to_owned()]).await;
        }
        Ok(())
    }

    /// Invalidates `key` in this process: a promotion that raced is undone,
    /// a running load will not publish, the L1 entry goes.
    pub(crate) fn invalidate_local(&self, key: &K) {
        self.epochs[self.stripe(key)].fetch_add(1, Ordering::SeqCst);
        self.flights.forget(key);
        if let Some(l1) = &self.l1 {
            l1.remove(key);
        }
    }

    /// `get_many` and `get_many_or_load`.
    pub(crate) async fn get_many(
        self: Arc<Self>,
        keys: &[K],
        load: bool,
    ) -> Vec<Result<Option<V>>> {
        let mut out: Vec<Option<Result<Option<V>>>> = (0..keys.len()).map(|_| None).collect();
        if let Err(e) = self.check_open() {
            return keys.iter().map(|_| Err(e.clone())).collect();
        }
        let now = self.now_ms();
        // L1.
        let mut missing: Vec<(usize, String)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if let Some(hit) = self.l1_lookup(key, now) {
                out[i] = Some(Ok(hit));
                continue;
            }
            self.stats.l1_misses.incr();
            match key.key_text() {
                Ok(t) => missing.push((i, t)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        // L2: one bulk read.
        if let (Some(l2), false) = (&self.l2, missing.is_empty()) {
            let epochs: Vec<u64> = missing.iter().map(|(i, _)| self.epoch(&keys[*i])).collect();
            let texts: Vec<&str> = missing.iter().map(|(_, t)| t.as_str()).collect();
            match l2.get_many(&texts).await {
                Ok(values) => {
                    let mut still = Vec::with_capacity(missing.len());
                    for (((i, t), v), epoch) in missing.into_iter().zip(values).zip(epochs) {
                        if v.is_none() {
                            self.stats.l2_misses.incr();
                        }
                        let hit = v
                            .and_then(|b| self.decode(&t, &b))
                            .and_then(|e| self.serve_from_l2(&keys[i], e, now, epoch));
                        match hit {
                            Some(h) => out[i] = Some(Ok(h)),
                            None => still.push((i, t)),
                        }
                    }
                    missing = still;
                }
                Err(_) => {
                    self.stats.l2_errors.incr();
                    self.stats.l2_misses.add(missing.len() as u64);
                }
            }
        }
        if !load {
            for (i, _) in missing {
                out[i] = Some(Ok(None));
            }
            return out.into_iter().map(|r| r.unwrap_or(Ok(None))).collect();
        }
        // Loads: lead the keys nobody is loading, wait for the others.
        let mut leaders = Vec::new();
        let mut waits = Vec::with_capacity(missing.len());
        for (i, text) in missing {
            match self.flights.join(keys[i].clone()) {
                Join::Leader(l) => {
                    waits.push((i, l.wait()));
                    leaders.push((l, keys[i].clone(), text));
                }
                Join::Wait(w) => {
                    self.stats.coalesced.incr();
                    waits.push((i, w));
                }
            }
        }
        if !leaders.is_empty() {
            let me = Arc::clone(&self);
            // Without a runtime the leaders drop: their waits end as abandoned.
            let _ = self.spawn(async move { me.run_bulk(leaders).await });
        }
        let timeout = self.cfg.wait_timeout;
        let answers = futures_util::future::join_all(
            waits
                .into_iter()
                .map(|(i, w)| async move { (i, tokio::time::timeout(timeout, w).await) }),
        )
        .await;
        for (i, answer) in answers {
            out[i] = Some(match answer {
                Ok(Some(r)) => r.map(|e| e.value.clone()),
                // Abandoned (its leader was cancelled): load this one alone.
                Ok(None) => match keys[i].key_text() {
                    Ok(t) => Arc::clone(&self)
                        .load(&keys[i], t, None, None)
                        .await
                        .map(|e| e.value.clone()),
                    Err(e) => Err(e),
                },
                Err(_) => Err(crate::load::wait_timeout(timeout)),
            });
        }
        out.into_iter().map(|r| r.unwrap_or(Ok(None))).collect()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A key's write lock, held by a write to the source, with the
/// write-behind write it superseded (put back if dropped before
/// [`WriteOrder::written`]).
pub(crate) struct WriteOrder<K: std::hash::Hash + Eq + Clone, V> {
    superseded: Option<crate::writer::Superseded<K, V>>,
    /// The superseded write's journal entries, once the write succeeded.
    acks: Option<Vec<(String, String)>>,
    queue: Option<Arc<crate::writer::Queue<K, V>>>,
    _lock: tokio::sync::OwnedMutexGuard<()>,
}

impl<K, V> WriteOrder<K, V>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The direct write reached the source: the superseded write-behind
    /// write is dropped for good. Call it right after the source write
    /// returned, with no await in between, so a caller dropped later cannot
    /// put the older write back.
    pub(crate) fn written(&mut self) {
        self.acks = self
            .superseded
            .take()
            .and_then(crate::writer::Superseded::written);
    }

    /// In the cache's task, after [`WriteOrder::written`]: in durable mode,
    /// acknowledges the superseded write's journal entries and makes every
    /// journalled write of `text` (by any instance, a crashed one's
    /// included) older than this one, so no replay writes it over this
    /// write. The lock stays held until `self` is dropped.
    pub(crate) async fn settle(&mut self, text: &str) {
        if let Some(q) = &self.queue {
            q.settle_superseded(self.acks.take(), text).await;
        }
    }
}
