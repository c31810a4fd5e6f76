//! The L1 (`larder_memory::MemoryCache`) against a model: a map from key to
//! (value, hard deadline, effective deadline) kept in nanoseconds on a
//! `MockClock`, driven by a fuzzed sequence of operations over 8 keys, with
//! a fuzzed capacity, policy, shard count, weigher, time to live and time
//! to idle.
//!
//! The crate's documented semantics, which the model follows: a deadline is
//! `now + d` (at least `now + 1 ns`); an entry is expired once
//! `now >= deadline` (`expires_at <= now`); the time to live runs from the
//! last write, the time to idle from the last `get` or write and never past
//! the time to live; `peek`, `contains_key`, `iter` and `remove` do not
//! touch; expired entries are never returned, not even by `remove`;
//! `run_pending_tasks` expires everything due before the wheel's current
//! tick (2^30 ns); the total never exceeds the
//! capacity; the eviction listener hears every departure.
//!
//! Eviction is the policy's choice, so the model does not predict it: it
//! learns of it from the listener (`Evicted`). What is checked:
//! - a read returns the model's value, never an older or expired one, and
//!   misses only when the model has no live entry (every departure is
//!   announced, so a silent loss is a failure);
//! - `Expired` is announced only for entries past their deadline,
//!   `Replaced` only for a live value being overwritten, and each departure
//!   once;
//! - `entry_count` and `weighted_size` equal the model's (expired entries
//!   not yet removed included) and stay within capacity after every step;
//!   `iter` lists exactly the model's live entries;
//! - `hits + misses` equals the number of `get`s.

#![no_main]

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder_core::MockClock;
use larder_memory::{MemoryCache, PolicyKind, RemovalCause};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

const KEYS: u8 = 8;
const MAX_OPS: usize = 512;

#[derive(Arbitrary, Debug)]
struct Setup {
    capacity: u8,
    policy: u8,
    shards: u8,
    weighted: bool,
    ttl_ms: Option<u8>,
    tti_ms: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { k: u8 },
    InsertWithTtl { k: u8, ttl_ms: u8 },
    InsertWithTtlNanos { k: u8, ttl_ns: u32 },
    Get { k: u8 },
    Peek { k: u8 },
    ContainsKey { k: u8 },
    Remove { k: u8 },
    Advance { ms: u8 },
    AdvanceNanos { ns: u32 },
    RunPendingTasks,
    Clear,
    Iter,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: u64,
    hard: u64,
    expires_at: u64,
}

type Events = Arc<Mutex<Vec<(u8, u64, RemovalCause)>>>;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The crate's deadline: `now + d`, at least `now + 1 ns`; none without `d`.
fn deadline(now: u64, d: Option<Duration>) -> u64 {
    d.map_or(u64::MAX, |d| now.saturating_add(nanos(d)).max(now + 1))
}

fn weight(value: u64) -> u64 {
    1 + value % 3
}

struct Model {
    entries: HashMap<u8, Entry>,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    weighted: bool,
}

impl Model {
    fn live(&self, k: u8, now: u64) -> Option<Entry> {
        self.entries.get(&k).copied().filter(|e| e.expires_at > now)
    }

    fn write(&mut self, k: u8, value: u64, now: u64, explicit: Option<Duration>) -> Option<Entry> {
        let after = match (explicit, self.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let hard = deadline(now, after);
        let idle = deadline(now, self.tti);
        self.entries.insert(
            k,
            Entry {
                value,
                hard,
                expires_at: hard.min(idle),
            },
        )
    }

    /// Applies the listener's events of one step. `replaced`: the entry an
    /// insert of this step overwrote in the model.
    fn apply(
        &mut self,
        events: Vec<(u8, u64, RemovalCause)>,
        now: u64,
        replaced: Option<(u8, Entry)>,
    ) {
        let mut old_heard = false;
        for (k, v, cause) in events {
            if let Some((rk, old)) = replaced
                && rk == k
                && old.value == v
            {
                assert!(!old_heard, "two departures of {k}={v}");
                old_heard = true;
                match cause {
                    RemovalCause::Replaced => {
                        assert!(
                            old.expires_at > now,
                            "{k}={v} replaced after expiry {old:?} now {now}"
                        )
                    }
                    RemovalCause::Expired => {
                        assert!(
                            old.expires_at <= now,
                            "{k}={v} expired early {old:?} now {now}"
                        )
                    }
                    other => panic!("the overwritten {k}={v} left as {other:?}"),
                }
                continue;
            }
            let e =
                self.entries.get(&k).copied().unwrap_or_else(|| {
                    panic!("{cause:?} for {k}={v}, which the model does not hold")
                });
            assert_eq!(e.value, v, "{cause:?} for {k}={v}, the model holds {e:?}");
            match cause {
                RemovalCause::Expired => {
                    assert!(e.expires_at <= now, "{k}={v} expired early {e:?} now {now}")
                }
                RemovalCause::Evicted | RemovalCause::Removed => {}
                RemovalCause::Replaced => panic!("the current value {k}={v} was replaced"),
                other => panic!("unknown cause {other:?}"),
            }
            self.entries.remove(&k);
        }
        if let Some((k, old)) = replaced {
            assert!(old_heard, "the overwritten {k}={old:?} left silently");
        }
    }

    fn weighted_size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| if self.weighted { weight(e.value) } else { 1 })
            .sum()
    }
}

type Cache = MemoryCache<u8, u64, BuildHasherDefault<DefaultHasher>>;

fn build(setup: &Setup, clock: &MockClock, events: &Events) -> Cache {
    let policy = match setup.policy % 4 {
        0 => PolicyKind::TinyLfu,
        1 => PolicyKind::Lru,
        2 => PolicyKind::Lfu,
        _ => PolicyKind::Ttl,
    };
    let log = Arc::clone(events);
    let mut b = MemoryCache::<u8, u64>::builder(u64::from(setup.capacity % 16))
        .hasher(BuildHasherDefault::<DefaultHasher>::default())
        .policy(policy)
        .shards(1 << (setup.shards % 3))
        .clock(clock.shared())
        .eviction_listener(move |k, v, cause| log.lock().unwrap().push((k, v, cause)));
    if setup.weighted {
        b = b.weigher(|_, v| weight(*v) as u32);
    }
    if let Some(ms) = setup.ttl_ms {
        b = b.time_to_live(Duration::from_millis(ms.into()));
    }
    if let Some(ms) = setup.tti_ms {
        b = b.time_to_idle(Duration::from_millis(ms.into()));
    }
    b.build()
}

fuzz_target!(|input: Input| {
    if std::env::var_os("L1_MODEL_TRACE").is_some() {
        eprintln!("{input:#?}");
    }
    let setup = &input.setup;
    let clock = MockClock::new();
    let events: Events = Arc::default();
    let cache = build(setup, &clock, &events);
    let capacity = u64::from(setup.capacity % 16);
    let mut model = Model {
        entries: HashMap::new(),
        ttl: setup.ttl_ms.map(|ms| Duration::from_millis(ms.into())),
        tti: setup.tti_ms.map(|ms| Duration::from_millis(ms.into())),
        weighted: setup.weighted,
    };
    // Whether anything can expire yet (the cache reads its clock only then).
    let mut timed = model.ttl.is_some() || model.tti.is_some();
    let mut next_value = 0u64;
    let (mut gets, mut hits) = (0u64, 0u64);

    for op in input.ops.iter().take(MAX_OPS) {
        let now = nanos(clock.elapsed());
        let mut replaced = None;
        match *op {
            Op::Insert { k } => {
                let k = k % KEYS;
                next_value += 1;
                cache.insert(k, next_value);
                replaced = model.write(k, next_value, now, None).map(|e| (k, e));
            }
            Op::InsertWithTtl { k, ttl_ms } => {
                let k = k % KEYS;
                next_value += 1;
                let ttl = Duration::from_millis(ttl_ms.into());
                timed = true;
                cache.insert_with_ttl(k, next_value, ttl);
                replaced = model.write(k, next_value, now, Some(ttl)).map(|e| (k, e));
            }
            Op::InsertWithTtlNanos { k, ttl_ns } => {
                let k = k % KEYS;
                next_value += 1;
                let ttl = Duration::from_nanos(ttl_ns.into());
                timed = true;
                cache.insert_with_ttl(k, next_value, ttl);
                replaced = model.write(k, next_value, now, Some(ttl)).map(|e| (k, e));
            }
            Op::Get { k } => {
                let k = k % KEYS;
                gets += 1;
                let got = cache.get(&k);
                let want = model.live(k, now);
                assert_eq!(
                    got,
                    want.map(|e| e.value),
                    "get({k}) at {now}: model {:?}",
                    model.entries.get(&k)
                );
                if got.is_some() {
                    hits += 1;
                    if let Some(e) = model.entries.get_mut(&k) {
                        e.expires_at = e.hard.min(deadline(now, model.tti));
                    }
                }
            }
            Op::Peek { k } => {
                let k = k % KEYS;
                let want = model.live(k, now).map(|e| e.value);
                assert_eq!(cache.peek(&k), want, "peek({k}) at {now}");
            }
            Op::ContainsKey { k } => {
                let k = k % KEYS;
                let want = model.live(k, now).is_some();
                assert_eq!(cache.contains_key(&k), want, "contains_key({k}) at {now}");
            }
            Op::Remove { k } => {
                let k = k % KEYS;
                let want = model.live(k, now).map(|e| e.value);
                assert_eq!(cache.remove(&k), want, "remove({k}) at {now}");
                if want.is_some() {
                    // Its `Removed` event must come; `apply` checks it.
                    assert!(
                        events.lock().unwrap().iter().any(|&(ek, ev, c)| ek == k
                            && Some(ev) == want
                            && c == RemovalCause::Removed),
                        "remove({k}) was not heard"
                    );
                }
            }
            Op::Advance { ms } => clock.advance(Duration::from_millis(ms.into())),
            Op::AdvanceNanos { ns } => clock.advance(Duration::from_nanos(ns.into())),
            Op::RunPendingTasks => cache.run_pending_tasks(),
            Op::Clear => cache.clear(),
            Op::Iter => {
                let mut got: Vec<(u8, u64)> = cache.iter().collect();
                got.sort_unstable();
                let mut want: Vec<(u8, u64)> = model
                    .entries
                    .iter()
                    .filter(|(_, e)| e.expires_at > now)
                    .map(|(&k, e)| (k, e.value))
                    .collect();
                want.sort_unstable();
                assert_eq!(got, want, "iter at {now}");
            }
        }
        let step = std::mem::take(&mut *events.lock().unwrap());
        model.apply(step, now, replaced);
        match *op {
            Op::Clear => assert!(model.entries.is_empty(), "clear left {:?}", model.entries),
            // The wheel reaps in ticks of 2^30 ns: what was due before the
            // current tick is gone.
            Op::RunPendingTasks if timed => assert!(
                model
                    .entries
                    .values()
                    .all(|e| e.expires_at > now || e.expires_at >> 30 == now >> 30),
                "run_pending_tasks at {now} left expired entries: {:?}",
                model.entries
            ),
            _ => {}
        }
        assert_eq!(
            cache.entry_count(),
            model.entries.len() as u64,
            "{:?}",
            model.entries
        );
        assert_eq!(cache.weighted_size(), model.weighted_size());
        assert!(
            cache.weighted_size() <= capacity,
            "over capacity {capacity}"
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, gets, "{stats:?}");
    assert_eq!(stats.hits, hits, "{stats:?}");
});
