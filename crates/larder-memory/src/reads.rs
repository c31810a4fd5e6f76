//! The read side of a shard: how reads reach the policy without a write
//! lock.
//!
//! A read takes its shard's lock shared, finds the entry and clones the
//! value. What the policy must learn goes here:
//! - a miss only adds to `misses` (the statistics count it, and so does
//!   W-TinyLFU's hill climber, in a weighted cache; W-TinyLFU's sketch
//!   learns of the key when it is inserted);
//! - a hit on an entry the policy called quiet (see `Policy::on_hit`: for
//!   W-TinyLFU, an entry whose estimated frequency is already high) only adds to
//!   `quiet_hits`, until the policy's epoch moves on;
//! - any other hit is an event in a fixed ring of atomic words, applied in
//!   order under the shard's upkeep lock (the shard itself held shared) by
//!   whoever fills the ring (if that lock is free) and before every write
//!   to the shard.
//!
//! A single thread therefore sees the policy order of an unbuffered cache
//! (the simulator relies on this). Under contention the ring is lossy, like
//! Caffeine's read buffers: an event that finds it full while another
//! thread holds the lock is dropped and counted in `lost_hits`, so the
//! statistics stay complete; the policy merely misses one access.
//!
//! An event is `(slot + 1) << 32 | low 32 bits of the hash`: never zero,
//! and the applier can tell a slot that was freed or reused since.

// Under `--cfg loom` (`cargo xtask test` runs it) the ring is model-checked
// with loom's atomics: see `loom_model` below.
#[cfg(loom)]
use loom::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// Events per shard between two applications.
pub(crate) const CAPACITY: usize = 64;

/// The counters of one stripe, alone on their cache lines.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Counts {
    /// Reads of quiet entries, counted here only.
    quiet_hits: AtomicU64,
    /// Misses, counted here only.
    misses: AtomicU64,
}

/// Counter stripes per shard: one per [`larder_core::Stripe`], so a thread
/// that owns its stripe counts with a plain load and store, no locked
/// instruction (on x86 a `lock xadd` cost as much as taking the shard's
/// read lock, a third of a hit on a hot key).
pub(crate) const STRIPES: usize = larder_core::Stripe::COUNT;

/// The epoch's mark and the ring's head first, on the shard's hot cache line; the
/// counter stripes and the events elsewhere.
#[repr(C)]
pub(crate) struct ReadBuffer {
    /// The quiet mark of the policy's epoch ([`ReadBuffer::quiet_mark`]),
    /// published after every application; an entry marked quiet in an
    /// earlier epoch is reported again.
    mark: AtomicU8,
    head: AtomicUsize,
    /// Reported hits dropped because the ring was full and busy.
    pub(crate) lost_hits: AtomicU64,
    events: Box<[AtomicU64; CAPACITY]>,
    stripes: Box<[Counts; STRIPES]>,
}

pub(crate) fn hit(slot: u32, hash: u64) -> u64 {
    ((u64::from(slot) + 1) << 32) | u64::from(tag(hash))
}

/// The bits of a hash that an event carries.
pub(crate) fn tag(hash: u64) -> u32 {
    hash as u32
}

/// `(slot, tag)` of an event.
pub(crate) fn decode(ev: u64) -> (u32, u32) {
    (((ev >> 32) - 1) as u32, ev as u32)
}

/// What [`ReadBuffer::push`] asks of its caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// Recorded; nothing else to do.
    Done,
    /// Recorded, and the ring is now full: apply it if the lock is free.
    Full,
    /// Not recorded (full): apply the ring and this event if the lock is
    /// free, else count the event as lost.
    Rejected,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            mark: AtomicU8::new(Self::quiet_mark(0)),
            head: AtomicUsize::new(0),
            lost_hits: AtomicU64::new(0),
            events: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            stripes: Box::new(std::array::from_fn(|_| Counts::default())),
        }
    }
}

impl ReadBuffer {
    #[inline]
    pub(crate) fn push(&self, ev: u64) -> Push {
        let i = self.head.fetch_add(1, Ordering::AcqRel);
        if i >= CAPACITY {
            return Push::Rejected;
        }
        // A place claimed before a drain reset the ring but written after
        // the drain passed it still holds its event: that one is lost, but
        // counted.
        if self.events[i].swap(ev, Ordering::AcqRel) != 0 {
            self.lost_hits.fetch_add(1, Ordering::Relaxed);
        }
        if i == CAPACITY - 1 {
            Push::Full
        } else {
            Push::Done
        }
    }

    /// [`ReadBuffer::take`] with each event handed to `apply` (tests).
    #[cfg(test)]
    pub(crate) fn drain(&self, mut apply: impl FnMut(u64)) {
        let mut events = Vec::with_capacity(CAPACITY);
        self.take(&mut events);
        for ev in events {
            apply(ev);
        }
    }

    /// Takes every recorded event, oldest first, appending them to `out`
    /// (the caller reuses one buffer: nothing to zero or allocate per
    /// drain), and empties the ring. Call with the shard's upkeep lock held
    /// (one drainer at a time). An event whose writer has claimed a place
    /// but not yet stored it is left for the next drain, or counted as
    /// lost if a later push takes its place first (the race that makes the
    /// ring lossy).
    pub(crate) fn take(&self, out: &mut Vec<u64>) {
        let n = self.head.load(Ordering::Acquire).min(CAPACITY);
        if n == 0 {
            return;
        }
        for e in &self.events[..n] {
            let ev = e.swap(0, Ordering::AcqRel);
            if ev != 0 {
                out.push(ev);
            }
        }
        self.head.store(0, Ordering::Release);
    }

    /// Events recorded and not yet taken (exact while nobody pushes; call
    /// with the upkeep lock held, so nobody takes them meanwhile). The
    /// whole ring, not only the places below the head: an event stored
    /// after a drain passed its place sits above the reset head until a
    /// later drain takes it or a later push counts it lost, and until then
    /// it is pending like any other.
    pub(crate) fn pending(&self) -> u64 {
        self.events
            .iter()
            .filter(|e| e.load(Ordering::Acquire) != 0)
            .count() as u64
    }

    /// Counts a read of a quiet entry.
    #[inline]
    pub(crate) fn count_quiet_hit(&self) {
        self.add_one(|c| &c.quiet_hits);
    }

    /// Counts a miss.
    #[inline]
    pub(crate) fn count_miss(&self) {
        self.add_one(|c| &c.misses);
    }

    /// Adds one to a counter of the calling thread's stripe.
    #[inline]
    fn add_one(&self, counter: impl Fn(&Counts) -> &AtomicU64) {
        #[cfg(not(loom))]
        {
            let me = larder_core::Stripe::current();
            me.add(counter(&self.stripes[me.index()]), 1);
        }
        // Loom's threads share one OS thread's locals (and its own atomics
        // are not std's): every thread counts in one stripe.
        #[cfg(loom)]
        counter(&self.stripes[0]).fetch_add(1, Ordering::Relaxed);
    }

    /// Quiet hits and misses counted so far (sums over the stripes).
    pub(crate) fn counted(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(h, m), s| {
            (
                h.wrapping_add(s.quiet_hits.load(Ordering::Relaxed)),
                m.wrapping_add(s.misses.load(Ordering::Relaxed)),
            )
        })
    }

    /// Whether an entry marked `quiet` needs no report now.
    #[inline]
    pub(crate) fn is_quiet(&self, quiet: u8) -> bool {
        quiet == self.mark.load(Ordering::Relaxed)
    }

    /// The mark for an entry that is quiet in `epoch`: one byte, never 0
    /// (the mark of a new entry), repeating every 128 epochs (a period
    /// that divides 2^32, so consecutive epochs differ also where the
    /// epoch wraps). An old mark never meets its repeat: the shard clears
    /// the marks of earlier epochs when it publishes a new one
    /// (`Shard::publish_epoch`).
    pub(crate) fn quiet_mark(epoch: u32) -> u8 {
        (epoch & 0x7F) as u8 + 1
    }

    /// Publishes the policy's epoch (under the upkeep lock).
    pub(crate) fn set_epoch(&self, epoch: u32) {
        self.mark.store(Self::quiet_mark(epoch), Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let h = 0xDEAD_BEEF_1234_5677u64;
        assert_eq!(decode(hit(41, h)), (41, tag(h)));
        assert_ne!(hit(0, 0), 0);
        assert_eq!(decode(hit(u32::MAX - 1, h)), (u32::MAX - 1, tag(h)));
    }

    #[test]
    fn fills_then_rejects_and_drains_in_order() {
        let b = ReadBuffer::default();
        for i in 0..CAPACITY as u32 - 1 {
            assert_eq!(b.push(hit(i, 0)), Push::Done);
        }
        assert_eq!(b.push(hit(999, 0)), Push::Full);
        assert_eq!(b.push(hit(5, 0)), Push::Rejected);
        let mut seen = Vec::new();
        b.drain(|e| seen.push(e));
        assert_eq!(seen.len(), CAPACITY);
        assert_eq!(seen[0], hit(0, 0));
        assert_eq!(seen[CAPACITY - 1], hit(999, 0));
        assert_eq!(b.push(hit(2, 0)), Push::Done);
        let mut again = Vec::new();
        b.drain(|e| again.push(e));
        assert_eq!(again, [hit(2, 0)]);
    }

    #[test]
    fn quiet_marks_follow_the_epoch() {
        let b = ReadBuffer::default();
        assert!(!b.is_quiet(0), "a new entry is never quiet");
        let mark = ReadBuffer::quiet_mark(0);
        assert!(b.is_quiet(mark));
        b.set_epoch(1);
        assert!(!b.is_quiet(mark));
        // A byte per mark: never 0, and epochs 128 apart share one, also across the wrap.
        for epoch in [0, 1, 126, 127, 128, 255, 1 << 20, u32::MAX - 1, u32::MAX] {
            let mark = ReadBuffer::quiet_mark(epoch);
            let next = epoch.wrapping_add(1);
            assert_ne!(mark, 0, "epoch {epoch}");
            assert_ne!(mark, ReadBuffer::quiet_mark(next), "epoch {epoch}");
            assert_eq!(
                mark,
                ReadBuffer::quiet_mark(epoch.wrapping_add(128)),
                "epoch {epoch}"
            );
        }
    }
}

/// Every interleaving of two readers pushing while a writer drains (loom
/// explores them all, up to its preemption bound): each event is applied
/// exactly once or counted lost, never applied twice, never silently gone.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::{Arc, Mutex};

    #[test]
    fn every_event_is_applied_once_or_counted_lost() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let buf = Arc::new(ReadBuffer::default());
            // The shard's upkeep lock, and what was applied under it.
            let applied = Arc::new(Mutex::new(Vec::new()));
            let readers: Vec<_> = (0..2u32)
                .map(|t| {
                    let buf = Arc::clone(&buf);
                    loom::thread::spawn(move || {
                        for i in 0..2u32 {
                            // A full ring would ask for a drain; with two
                            // events per reader it never fills.
                            assert_eq!(buf.push(hit(t * 10 + i, 7)), Push::Done);
                        }
                    })
                })
                .collect();
            let drainer = {
                let (buf, applied) = (Arc::clone(&buf), Arc::clone(&applied));
                loom::thread::spawn(move || {
                    let mut a = applied.lock().unwrap();
                    buf.drain(|ev| a.push(ev));
                })
            };
            for r in readers {
                r.join().unwrap();
            }
            drainer.join().unwrap();
            let mut a = applied.lock().unwrap();
            // At rest, every event is applied, pending or counted lost:
            // what the statistics add up.
            let at_rest = a.len() as u64 + buf.pending() + buf.lost_hits.load(Ordering::Relaxed);
            assert_eq!(at_rest, 4, "applied {a:?}, pending {}", buf.pending());
            buf.drain(|ev| a.push(ev));
            // Events left in the ring (claimed before a reset, written
            // after the drain passed them) are applied by a later drain
            // or counted lost when their place is taken: push over them.
            for i in 0..CAPACITY as u32 {
                let _ = buf.push(hit(1000 + i, 7));
            }
            let lost = buf.lost_hits.load(Ordering::Relaxed);
            let mine: Vec<u64> = a.iter().copied().filter(|&e| decode(e).0 < 1000).collect();
            let mut sorted = mine.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), mine.len(), "an event applied twice: {mine:?}");
            assert_eq!(mine.len() as u64 + lost, 4, "applied {mine:?}, lost {lost}");
        });
    }
}
