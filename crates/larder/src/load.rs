//! Loads: the in-flight table's leaders, the tasks that run them, and
//! background refreshes.
//!
//! A load runs in a task of its own that owns the flight's [`Leader`]; the
//! callers (the one that started it included) wait on the flight with their
//! own timeouts. So a caller that gives up (a timeout, a `select!`) never
//! stops the load its waiters need, a panicking loader becomes a
//! `SourcePanicked` error for every waiter, and a task that is aborted
//! drops its leader, which abandons the flight: waiters retry, one leads.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use larder_core::envelope::{self, EnvelopeMeta, Freshness};
use larder_core::{Codec, Error, ErrorKind, Result};
use larder_memory::{Join, Leader};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{Inner, LeaseConfig, Outcome};
use crate::entry::Entry;
use crate::key::CacheKey;
use crate::read::L2Read;

/// How many times a caller joins a flight whose leader abandoned it.
const MAX_ATTEMPTS: usize = 3;

/// Why a flight runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A caller missed: look again, then load. `Some(ticket)`: the caller
    /// read the L2 (nothing servable) and the key's version just before
    /// joining, so with an L1 the leader does not read the L2 again (a
    /// flight that ended in between put its value in the L1, which the
    /// leader checks).
    Miss(Option<u64>),
    /// A background refresh of a value fresh until `seen` (Unix ms): take
    /// a newer value from the L2 if another instance refreshed it, else
    /// load.
    Refresh(u64),
}

/// What started a background refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// XFetch fired on a fresh value.
    Early,
    /// A stale value was served within its grace window.
    Stale,
    /// A hot key nears its expiry.
    Hot,
}

/// What taking a load lease came to.
enum Lease<V> {
    /// This process holds it (the token releases it).
    Held(String),
    /// Another process loaded the value (or a refresh was left to it).
    Answered(Fetched<V>),
    /// The L2 failed, or the lease kept being renewed: load without it.
    Unavailable,
}

/// What a flight's work produced.
pub(crate) struct Fetched<V> {
    pub(crate) entry: Arc<Entry<V>>,
    /// Whether to put it in the L1 (not for refused fills or uncached answers).
    pub(crate) cache: bool,
    /// Refresh right after answering, and why (the value came from the L2
    /// stale, or XFetch fired).
    pub(crate) then_refresh: Option<Refresh>,
    /// Remove the key from the L1 (the source no longer has it).
    pub(crate) evict: bool,
    /// The L2 did not confirm it (unreachable, or the value is this
    /// process's queued write): the L1 keeps it at most `unconfirmed_ttl`.
    pub(crate) unconfirmed: bool,
}

impl<V> Fetched<V> {
    fn new(entry: Arc<Entry<V>>, cache: bool) -> Self {
        Fetched {
            entry,
            cache,
            then_refresh: None,
            evict: false,
            unconfirmed: false,
        }
    }

    /// The same, for a value the L2 did not confirm.
    fn unconfirmed(entry: Arc<Entry<V>>) -> Self {
        Fetched {
            unconfirmed: true,
            ..Fetched::new(entry, true)
        }
    }
}

pub(crate) fn wait_timeout(d: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no answer from the load within the wait timeout ({d:?})"),
    )
}

fn panicked() -> Error {
    Error::new(ErrorKind::SourcePanicked, "the loader panicked")
}

fn load_timeout(d: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("the loader did not answer within the load timeout ({d:?})"),
    )
}

impl<K, V, C> Inner<K, V, C>
where
    K: CacheKey,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Joins the key's flight (leading it in a new task if none runs) and
    /// waits for its outcome, within the wait timeout.
    pub(crate) async fn load(
        self: Arc<Self>,
        key: &K,
        text: String,
        checked: Option<u64>,
        kept: Option<Arc<Entry<V>>>,
    ) -> Outcome<V> {
        tokio::runtime::Handle::try_current().map_err(|_| crate::cache::no_runtime())?;
        for _ in 0..MAX_ATTEMPTS {
            let wait = match self.flights.join(key.clone()) {
                Join::Leader(leader) => {
                    let wait = leader.wait();
                    let me = Arc::clone(&self);
                    let (k, t, kept) = (key.clone(), text.clone(), kept.clone());
                    let mode = Mode::Miss(checked);
                    self.spawn(async move { me.run_flight(leader, k, t, mode, kept).await })?;
                    wait
                }
                Join::Wait(w) => {
                    self.stats.coalesced.incr();
                    w
                }
            };
            match tokio::time::timeout(self.cfg.wait_timeout, wait).await {
                Ok(Some(outcome)) => return outcome,
                Ok(None) => continue,
                Err(_) => return Err(wait_timeout(self.cfg.wait_timeout)),
            }
        }
        Err(Error::new(
            ErrorKind::Cancelled,
            format!("the load of {text:?} was abandoned {MAX_ATTEMPTS} times"),
        ))
    }

    /// Starts a background refresh of `key` unless one runs already.
    pub(crate) fn refresh(self: &Arc<Self>, key: &K, why: Refresh, seen: u64) {
        if self.loader.is_none() || self.check_open().is_err() {
            return;
        }
        // Every hit in a grace window lands here: while a refresh runs this
        // costs one lock, no clone and no allocation.
        if let Some(leader) = self.flights.lead(key) {
            // The leader drops, nothing waits on it yet.
            if self.replaced_since(key, seen) {
                return;
            }
            let Ok(text) = key.key_text() else { return };
            let me = Arc::clone(self);
            let k = key.clone();
            // Without a runtime the leader drops here: nothing waits on it.
            let mode = Mode::Refresh(seen);
            if self
                .spawn(async move { me.run_flight(leader, k, text, mode, None).await })
                .is_ok()
            {
                self.count_refresh(why);
            }
        }
    }

    /// Whether the L1 holds a fresh entry of `key` newer than the one whose
    /// fresh time was `seen`. Asked by a refresh once it holds the key's
    /// flight: a flight that ended since `seen` was read put its value in
    /// the L1 before it left the flight table, so a refresh of the entry it
    /// replaced has nothing to do.
    fn replaced_since(&self, key: &K, seen: u64) -> bool {
        let now = self.now_ms();
        self.l1.as_ref().is_some_and(|l1| {
            l1.peek(key)
                .is_some_and(|e| e.fresh_until_ms > seen && e.freshness(now) == Freshness::Fresh)
        })
    }

    /// Counts a background refresh that started, and why.
    fn count_refresh(&self, why: Refresh) {
        match why {
            Refresh::Early => self.stats.early_refreshes.incr(),
            Refresh::Hot => self.stats.hot_refreshes.incr(),
            Refresh::Stale => {}
        }
        self.stats.background_refreshes.incr();
    }

    /// The task of one flight: fetch, publish, and refresh right after if
    /// the answer asked for it.
    async fn run_flight(
        self: Arc<Self>,
        leader: Leader<K, Outcome<V>>,
        key: K,
        text: String,
        mode: Mode,
        kept: Option<Arc<Entry<V>>>,
    ) {
        let fetched = self.fetch_caught(&key, &text, mode, kept).await;
        let then_refresh = self.publish(leader, &key, fetched);
        if let Some((seen, why)) = then_refresh
            && let Some(leader) = self.flights.lead(&key)
            && !self.replaced_since(&key, seen)
        {
            self.count_refresh(why);
            let fetched = self
                .fetch_caught(&key, &text, Mode::Refresh(seen), None)
                .await;
            self.publish(leader, &key, fetched);
        }
    }

    /// [`Inner::fetch`], with a panic in it counted as a failed load.
    async fn fetch_caught(
        &self,
        key: &K,
        text: &str,
        mode: Mode,
        kept: Option<Arc<Entry<V>>>,
    ) -> Result<Fetched<V>> {
        std::panic::AssertUnwindSafe(self.fetch(key, text, mode, kept))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                self.stats.load_errors.incr();
                Err(panicked())
            })
    }

    /// Ends a flight; `Some((fresh_until, why))` of its value if a refresh
    /// should follow.
    fn publish(
        &self,
        leader: Leader<K, Outcome<V>>,
        key: &K,
        fetched: Result<Fetched<V>>,
    ) -> Option<(u64, Refresh)> {
        match fetched {
            Ok(f) => {
                let now = self.now_ms();
                let entry = Arc::clone(&f.entry);
                leader.finish_with(Ok(entry), |_| {
                    if f.cache && f.unconfirmed {
                        self.l1_insert_unconfirmed(key, &f.entry, now);
                    } else if f.cache {
                        self.l1_insert(key, &f.entry, now);
                    } else if f.evict
                        && let Some(l1) = &self.l1
                    {
                        l1.remove(key);
                    }
                });
                f.then_refresh.map(|why| (f.entry.fresh_until_ms, why))
            }
            Err(e) => {
                leader.finish(Err(e));
                None
            }
        }
    }

    /// A flight's work: look again, then load and store.
    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(name = "larder::load::fetch", skip_all, fields(key = text, mode = ?mode))
    )]
    async fn fetch(
        &self,
        key: &K,
        text: &str,
        mode: Mode,
        kept: Option<Arc<Entry<V>>>,
    ) -> Result<Fetched<V>> {
        let now = self.now_ms();
        // What the L1 holds: for a miss, a value another flight put there
        // since the caller looked; for a refresh, the value being refreshed
        // (stale-if-error serves it when the load fails). Else what the
        // caller found kept in the L2.
        let mut current = self
            .l1
            .as_ref()
            .and_then(|l1| l1.peek(key))
            .map(Arc::new)
            .or(kept);
        // A miss that another flight filled since the caller looked:
        // nothing is left to load. (A refresh of an entry already replaced
        // never starts: `refresh` looks before it spawns.)
        if let Some(e) = &current
            && matches!(mode, Mode::Miss(_))
            && e.freshness(now) == Freshness::Fresh
        {
            return Ok(Fetched::new(Arc::clone(e), false));
        }
        let mut ticket = None;
        let mut l2_up = self.l2.is_some();
        let read = match mode {
            Mode::Miss(Some(t)) if self.l1.is_some() => {
                ticket = Some(t);
                L2Read::Miss
            }
            _ => self.l2_read(text).await,
        };
        match read {
            L2Read::Hit(e) => {
                let fresh = e.freshness(now);
                match (mode, fresh) {
                    (Mode::Miss(_), Freshness::Fresh) => {
                        let early = e.refresh_early(now, self.cfg.beta, || 1.0 - self.draw());
                        return Ok(Fetched {
                            then_refresh: early.then_some(Refresh::Early),
                            ..Fetched::new(e, true)
                        });
                    }
                    (Mode::Miss(_), Freshness::Stale) => {
                        self.stats.stale_served.incr();
                        return Ok(Fetched {
                            then_refresh: Some(Refresh::Stale),
                            ..Fetched::new(e, true)
                        });
                    }
                    // Another instance refreshed it: take that.
                    (Mode::Refresh(seen), Freshness::Fresh)
                        if e.fresh_until_ms > seen
                            && current
                                .as_ref()
                                .is_none_or(|c| e.fresh_until_ms > c.fresh_until_ms) =>
                    {
                        return Ok(Fetched::new(e, true));
                    }
                    // Kept for stale-if-error while the load runs.
                    _ => {
                        if current.is_none() {
                            current = Some(e);
                        }
                    }
                }
            }
            L2Read::Corrupt => {
                // Its version may be anything: invalidate it, and load
                // with the version the invalidation allocated.
                if let Some(l2) = &self.l2 {
                    match l2.invalidate(text, self.cfg.tombstone).await {
                        Ok(v) => ticket = Some(v),
                        Err(_) => {
                            self.stats.l2_errors.incr();
                            l2_up = false;
                        }
                    }
                }
            }
            L2Read::Failed => l2_up = false,
            L2Read::Miss => {}
        }
        if l2_up
            && ticket.is_none()
            && let Some(l2) = &self.l2
        {
            match l2.version(text).await {
                Ok(v) => ticket = Some(v),
                Err(_) => {
                    self.stats.l2_errors.incr();
                    l2_up = false;
                }
            }
        }
        if let Some(f) = self.pending_write(key, text, now) {
            return Ok(f);
        }
        let loader = self.loader.as_ref().ok_or_else(crate::cache::no_loader)?;
        let lease = match (self.cfg.lease, l2_up) {
            (Some(lc), true) => match self.take_lease(text, lc, mode, &current).await {
                Lease::Held(token) => Some(token),
                Lease::Answered(f) => return Ok(f),
                Lease::Unavailable => None,
            },
            _ => None,
        };
        let result = self
            .load_and_store(
                key,
                text,
                loader.as_ref(),
                ticket.filter(|_| l2_up),
                current,
            )
            .await
            .map(|mut f| {
                // The source no longer has it: what this instance held goes.
                if f.entry.value.is_none() && !f.cache {
                    f.evict = true;
                }
                f
            });
        // A refresh found the key gone at the source (and not negatively
        // cached): the L2's old value goes too.
        if let (Mode::Refresh(_), Ok(f), Some(l2)) = (mode, &result, &self.l2)
            && f.evict
            && l2.invalidate(text, self.cfg.tombstone).await.is_err()
        {
            self.stats.l2_errors.incr();
        }
        if let (Some(token), Some(l2)) = (lease, &self.l2) {
            // Best effort: a lease that is not released expires.
            let _ = l2.release_lease(text, token.as_bytes()).await;
        }
        result
    }

    /// Runs the loader (within the load timeout) and stores its answer.
    async fn load_and_store(
        &self,
        key: &K,
        text: &str,
        loader: &dyn crate::source::DynLoader<K, V>,
        ticket: Option<u64>,
        current: Option<Arc<Entry<V>>>,
    ) -> Result<Fetched<V>> {
        let started = self.clock.now();
        let load = std::panic::AssertUnwindSafe(async { loader.load(key).await }).catch_unwind();
        let loaded = tokio::time::timeout(self.cfg.load_timeout, load).await;
        let took = self.clock.now().saturating_duration_since(started);
        self.stats.load_time.record(took);
        let value = match loaded {
            Ok(Ok(Ok(v))) => {
                self.stats.loads_ok.incr();
                v
            }
            Ok(Ok(Err(e))) => return self.load_failed(e, current),
            // A panic is a failed load too: stale-if-error applies.
            Ok(Err(_)) => return self.load_failed(panicked(), current),
            Err(_) => return self.load_failed(load_timeout(self.cfg.load_timeout), current),
        };
        self.store_loaded(text, value, took, ticket).await
    }

    /// Takes the key's load lease, or waits for the holder's value.
    async fn take_lease(
        &self,
        text: &str,
        lc: LeaseConfig,
        mode: Mode,
        current: &Option<Arc<Entry<V>>>,
    ) -> Lease<V> {
        let Some(l2) = &self.l2 else {
            return Lease::Unavailable;
        };
        let token = format!("{:032x}", fastrand::u128(..));
        let per_lease = (lc.ttl.as_nanos() / lc.poll.as_nanos().max(1)).max(1);
        // Bounded: a holder that keeps renewing cannot hold this task
        // forever (three leases' worth of polls, then load without one).
        let polls = per_lease.saturating_mul(MAX_ATTEMPTS as u128);
        let mut i: u128 = 0;
        loop {
            // Every poll tries the lease too: a holder that ends without a
            // value (its load failed, or its fill was refused) releases it,
            // and the next poll takes over at once.
            match l2.acquire_lease(text, token.as_bytes(), lc.ttl).await {
                Ok(true) => {
                    // The last holder may have filled and released since
                    // this flight looked: look once more before loading.
                    if let L2Read::Hit(e) = self.l2_read(text).await
                        && e.freshness(self.now_ms()) == Freshness::Fresh
                    {
                        let _ = l2.release_lease(text, token.as_bytes()).await;
                        return Lease::Answered(Fetched::new(e, true));
                    }
                    if i > 0 {
                        self.stats.lease_takeovers.incr();
                    }
                    return Lease::Held(token);
                }
                Ok(false) => {}
                Err(_) => {
                    self.stats.l2_errors.incr();
                    return Lease::Unavailable;
                }
            }
            if i == 0 {
                self.stats.lease_waits.incr();
                // Another process is loading. A refresh leaves it to them
                // and keeps serving what this instance has.
                if matches!(mode, Mode::Refresh(_))
                    && let Some(c) = current
                {
                    return Lease::Answered(Fetched::new(Arc::clone(c), false));
                }
            }
            if i >= polls {
                return Lease::Unavailable;
            }
            i += 1;
            tokio::time::sleep(lc.poll).await;
            if let L2Read::Hit(e) = self.l2_read(text).await
                && e.freshness(self.now_ms()) == Freshness::Fresh
            {
                return Lease::Answered(Fetched::new(e, true));
            }
        }
    }

    /// A failed load: the stale value if stale-if-error allows it, else the error.
    fn load_failed(&self, e: Error, current: Option<Arc<Entry<V>>>) -> Result<Fetched<V>> {
        self.stats.load_errors.incr();
        let now = self.now_ms();
        if let (Some(max), Some(c)) = (self.cfg.stale_if_error, current)
            && c.value.is_some()
            && now
                < c.fresh_until_ms
                    .saturating_add(u64::try_from(max.as_millis()).unwrap_or(u64::MAX))
        {
            self.stats.stale_if_error.incr();
            return Ok(Fetched::new(c, false));
        }
        Err(e)
    }

    /// Turns a loaded value into an entry, writes it to the L2 (a fill with
    /// `ticket`, refused if the key was invalidated since), and says whether
    /// the L1 may hold it.
    pub(crate) async fn store_loaded(
        &self,
        text: &str,
        value: Option<V>,
        took: Duration,
        ticket: Option<u64>,
    ) -> Result<Fetched<V>> {
        let now = self.now_ms();
        let (fresh, grace) = match (&value, self.cfg.negative_ttl) {
            (Some(_), _) => {
                let ttl = self.cfg.ttl.for_key(text);
                (ttl.fresh_for(self.draw()), ttl.grace())
            }
            (None, Some(neg)) => (neg, Duration::ZERO),
            (None, None) => {
                return Ok(Fetched::new(Arc::new(Entry::uncached_none(now)), false));
            }
        };
        // Kept past the grace window as long as stale-if-error may serve it.
        let keep = match (&value, self.cfg.stale_if_error) {
            (Some(_), Some(sie)) => grace.max(sie),
            _ => grace,
        };
        let meta = EnvelopeMeta::starting_at(now, fresh, keep)
            .with_delta(took)
            .with_version(ticket.unwrap_or(0));
        let entry = Arc::new(Entry::new(&meta, value, grace));
        let Some(l2) = &self.l2 else {
            return Ok(Fetched::new(entry, true));
        };
        if ticket.is_none() {
            // The L2 could not be read: it may hold a newer value.
            return Ok(Fetched::unconfirmed(entry));
        }
        let bytes = match envelope::encode_value(
            &self.cfg.codec,
            meta,
            entry.value.as_ref(),
            self.cfg.compression,
        ) {
            Ok(b) => b,
            Err(_) => {
                self.stats.encode_errors.incr();
                return Ok(Fetched::new(entry, true));
            }
        };
        if self.oversized(&bytes) {
            // Served, and kept in this instance's L1 only.
            return Ok(Fetched::new(entry, true));
        }
        let Some(ttl) = meta.store_ttl(now) else {
            return Ok(Fetched::new(entry, true));
        };
        match l2.fill(text, &bytes, ttl).await {
            Ok(true) => Ok(Fetched::new(entry, true)),
            Ok(false) => {
                // Invalidated or written while it loaded: answer the
                // callers who asked before that, cache nothing.
                self.stats.fills_refused.incr();
                Ok(Fetched::new(entry, false))
            }
            Err(_) => {
                self.stats.l2_errors.incr();
                Ok(Fetched::unconfirmed(entry))
            }
        }
    }

    /// Write-through's cache half: the L2 with a new version, then the L1.
    pub(crate) async fn store_written(
        self: Arc<Self>,
        key: &K,
        text: &str,
        value: V,
    ) -> Result<()> {
        // An invalidation between here and the L1 insert (another
        // instance's write, seen through coherence) must win over this
        // value: see `insert_written`.
        let epoch = self.epoch(key);
        let (now, meta, entry, fresh) = self.written_entry(text, value);
        if let Some(l2) = &self.l2 {
            let written = match self.encode_written(meta, &entry) {
                Ok(bytes) if self.oversized(&bytes) => {
                    // The source has it; the cache must not keep the old
                    // value: dropped from both levels instead. A write,
                    // counted once it took effect; not an invalidation.
                    self.drop_everywhere(key, text).await?;
                    self.stats.writes.incr();
                    return Ok(());
                }
                Ok(bytes) => {
                    let ttl = meta.store_ttl(now).unwrap_or(fresh);
                    l2.set_versioned(text, &bytes, ttl, self.cfg.tombstone)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                self.unwrite(key, text, l2, &e).await;
                return Err(e);
            }
        }
        self.insert_written(key, &entry, now, epoch);
        self.stats.writes.incr();
        if self.l2.is_some() {
            self.announce(&[text.to_owned()]).await;
        }
        Ok(())
    }

    /// The L1 half of a write, after its L2 half: the value goes in unless
    /// the key was invalidated since `epoch` was read (then the newer state
    /// is in the L2, and the next read takes it from there).
    fn insert_written(&self, key: &K, entry: &Entry<V>, now: u64, epoch: u64) {
        self.invalidate_local(key);
        let Some(l1) = &self.l1 else { return };
        if self.epoch(key) != epoch.wrapping_add(1) {
            return;
        }
        self.l1_insert(key, entry, now);
        if self.epoch(key) != epoch.wrapping_add(1) {
            l1.remove(key);
        }
    }

    /// Whether encoded `bytes` are above `max_value_bytes` (counted).
    fn oversized(&self, bytes: &[u8]) -> bool {
        let over = self
            .cfg
            .max_value_bytes
            .is_some_and(|max| bytes.len() > max);
        if over {
            self.stats.oversized.incr();
        }
        over
    }

    /// A written value's entry: (now, its metadata, the entry, fresh time).
    fn written_entry(&self, text: &str, value: V) -> (u64, EnvelopeMeta, Entry<V>, Duration) {
        let now = self.now_ms();
        let ttl = self.cfg.ttl.for_key(text);
        let (fresh, grace) = (ttl.fresh_for(self.draw()), ttl.grace());
        let keep = self.cfg.stale_if_error.map_or(grace, |sie| grace.max(sie));
        let meta = EnvelopeMeta::starting_at(now, fresh, keep);
        (now, meta, Entry::new(&meta, Some(value), grace), fresh)
    }

    fn encode_written(&self, meta: EnvelopeMeta, entry: &Entry<V>) -> Result<Vec<u8>> {
        envelope::encode_value(
            &self.cfg.codec,
            meta,
            entry.value.as_ref(),
            self.cfg.compression,
        )
        .inspect_err(|_| self.stats.encode_errors.incr())
    }

    /// A write's cache half failed after the source changed (or may have):
    /// the cache must not serve the old value from here.
    async fn unwrite(&self, key: &K, text: &str, l2: &Arc<dyn larder_core::Store>, e: &Error) {
        self.invalidate_local(key);
        if !e.is_backend_unavailable() {
            let _ = l2.invalidate(text, self.cfg.tombstone).await;
        }
    }

    /// The task of a durable `put_behind`: the journal entry and the L2
    /// value in one script, then the queue and the L1. On error the write
    /// is not queued (the caller learns it) and the key is invalidated here.
    #[cfg(feature = "redis")]
    pub(crate) async fn journal_written(
        self: Arc<Self>,
        key: &K,
        text: &str,
        value: V,
        slot: crate::writer::Slot<K, V>,
    ) -> Result<()> {
        let not_durable = || Error::new(ErrorKind::InvalidConfig, "durable write-behind is off");
        let queue = self.queue.as_ref().ok_or_else(not_durable)?;
        let durable = queue.durable.as_ref().ok_or_else(not_durable)?;
        let l2 = self.l2.as_ref().ok_or_else(not_durable)?;
        let payload = (durable.encode)(key, &value)?;
        let epoch = self.epoch(key);
        let (now, meta, entry, fresh) = self.written_entry(text, value.clone());
        let appended = match self.encode_written(meta, &entry) {
            Ok(bytes) if self.oversized(&bytes) => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "a value of {} bytes is above max_value_bytes: durable write-behind refuses it",
                    bytes.len()
                ),
            )),
            Ok(bytes) => {
                let ttl = meta.store_ttl(now).unwrap_or(fresh);
                durable
                    .journal
                    .append(text, &payload, &bytes, ttl, self.cfg.tombstone)
                    .await
            }
            Err(e) => Err(e),
        };
        let (id, _) = match appended {
            Ok(a) => a,
            Err(e) => {
                self.unwrite(key, text, l2, &e).await;
                return Err(e);
            }
        };
        queue.journalled.incr();
        queue.fill(
            slot,
            key.clone(),
            value,
            Some(crate::writer::Journalled::new(text.to_owned(), id)),
        );
        self.insert_written(key, &entry, now, epoch);
        self.stats.writes.incr();
        self.announce(&[text.to_owned()]).await;
        Ok(())
    }

    /// The task of a bulk load (`get_many_or_load`): one L2 look, one
    /// ticket per key, one `load_many`, then one fill per key.
    pub(crate) async fn run_bulk(
        self: Arc<Self>,
        leaders: Vec<(Leader<K, Outcome<V>>, K, String)>,
    ) {
        let keys: Vec<K> = leaders.iter().map(|(_, k, _)| k.clone()).collect();
        let texts: Vec<String> = leaders.iter().map(|(_, _, t)| t.clone()).collect();
        let fetched = std::panic::AssertUnwindSafe(self.fetch_many(&keys, &texts))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                self.stats.load_errors.add(keys.len() as u64);
                keys.iter().map(|_| Err(panicked())).collect()
            });
        for ((leader, key, _), f) in leaders.into_iter().zip(fetched) {
            self.publish(leader, &key, f);
        }
    }

    /// Read your writes: a write-behind write of `key` waiting or being
    /// written in this process's queue is newer than what the source holds.
    fn pending_write(&self, key: &K, text: &str, now: u64) -> Option<Fetched<V>> {
        let v = self.queue.as_ref()?.pending(key)?;
        let ttl = self.cfg.ttl.for_key(text);
        let meta = EnvelopeMeta::starting_at(now, ttl.fresh_for(self.draw()), ttl.grace());
        let e = Entry::new(&meta, Some(v), ttl.grace());
        // The L2 holds this write too, unless its cache half failed (then
        // the L2 may hold something newer, or older).
        Some(Fetched::unconfirmed(Arc::new(e)))
    }

    /// `fetch_many` for the keys without a write-behind write in this
    /// process; those are answered from the queue.
    #[cfg_attr(
        feature = "tracing",
        tracing::instrument(name = "larder::load::fetch_many", skip_all, fields(keys = keys.len()))
    )]
    async fn fetch_many(&self, keys: &[K], texts: &[String]) -> Vec<Result<Fetched<V>>> {
        let now = self.now_ms();
        let mut out: Vec<Option<Result<Fetched<V>>>> = keys
            .iter()
            .zip(texts)
            .map(|(k, t)| self.pending_write(k, t, now).map(Ok))
            .collect();
        let rest: Vec<usize> = (0..keys.len()).filter(|i| out[*i].is_none()).collect();
        if !rest.is_empty() {
            let (ks, ts): (Vec<K>, Vec<String>) = rest
                .iter()
                .map(|&i| (keys[i].clone(), texts[i].clone()))
                .unzip();
            for (i, r) in rest.into_iter().zip(self.load_many(&ks, &ts).await) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(crate::cache::no_loader())))
            .collect()
    }

    /// One ticket per key, one `load_many`, one fill per key.
    async fn load_many(&self, keys: &[K], texts: &[String]) -> Vec<Result<Fetched<V>>> {
        let l2_up = self.l2.is_some();
        let tickets: Vec<Option<u64>> = match &self.l2 {
            Some(l2) => futures_util::future::join_all(texts.iter().map(|t| l2.version(t)))
                .await
                .into_iter()
                .map(|r| match r {
                    Ok(v) => Some(v),
                    Err(_) => {
                        self.stats.l2_errors.incr();
                        None
                    }
                })
                .collect(),
            None => vec![None; keys.len()],
        };
        let Some(loader) = self.loader.as_ref() else {
            return keys
                .iter()
                .map(|_| Err(crate::cache::no_loader()))
                .collect();
        };
        let started = self.clock.now();
        let loaded = tokio::time::timeout(self.cfg.load_timeout, loader.load_many(keys)).await;
        let took = self.clock.now().saturating_duration_since(started);
        self.stats.load_time.record(took);
        let values = match loaded {
            Ok(Ok(v)) if v.len() == keys.len() => v,
            Ok(Ok(v)) => {
                let e = Error::new(
                    ErrorKind::Source,
                    format!(
                        "load_many answered {} values for {} keys",
                        v.len(),
                        keys.len()
                    ),
                );
                self.stats.load_errors.add(keys.len() as u64);
                return keys.iter().map(|_| Err(e.clone())).collect();
            }
            Ok(Err(e)) => {
                self.stats.load_errors.add(keys.len() as u64);
                return keys.iter().map(|_| Err(e.clone())).collect();
            }
            Err(_) => {
                self.stats.load_errors.add(keys.len() as u64);
                let e = load_timeout(self.cfg.load_timeout);
                return keys.iter().map(|_| Err(e.clone())).collect();
            }
        };
        self.stats.loads_ok.add(keys.len() as u64);
        futures_util::future::join_all(
            values
                .into_iter()
                .zip(texts)
                .zip(tickets)
                .map(|((v, t), ticket)| self.store_loaded(t, v, took, ticket.filter(|_| l2_up))),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use larder_core::{Error, FnLoader, MockClock};

    use super::Refresh;
    use crate::{Cache, Ttl};

    /// A hit that read an entry just before a refresh's flight replaced it
    /// asks for a refresh of the old entry once that flight has ended: the
    /// late refresh finds the newer entry and neither starts nor loads (it
    /// used to load the key a second time).
    #[tokio::test]
    async fn a_refresh_of_an_entry_already_replaced_loads_nothing() {
        let clock = MockClock::new();
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let cache: Cache<u64, String> = Cache::builder()
            .clock(clock.shared())
            .ttl(Ttl::fixed(Duration::from_secs(100)))
            .loader(FnLoader::new(move |k: u64| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Error>(Some(k.to_string())) }
            }))
            .build()
            .unwrap();
        cache.get_or_load(&1).await.unwrap();
        let fresh_until = |c: &Cache<u64, String>| {
            c.inner
                .l1
                .as_ref()
                .and_then(|l1| l1.peek(&1))
                .map(|e| e.fresh_until_ms)
        };
        let seen = fresh_until(&cache).expect("loaded into the L1");
        clock.advance(Duration::from_secs(95));
        cache.inner.refresh(&1, Refresh::Hot, seen);
        // The current-thread runtime runs the flight while this task yields.
        for _ in 0..10_000 {
            if fresh_until(&cache) > Some(seen) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            fresh_until(&cache) > Some(seen),
            "the first refresh never published"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The late refresh of the entry that was replaced.
        cache.inner.refresh(&1, Refresh::Hot, seen);
        cache.close().await;
        assert_eq!(
            cache.stats().background_refreshes,
            1,
            "the late refresh started"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the replaced entry was loaded again"
        );
    }
}
