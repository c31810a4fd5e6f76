//! Automatic batching: concurrent single-key `get`s become one `MGET`.
//!
//! No background task: the batches are sent by the callers themselves. A
//! caller that finds no batch being led becomes the leader: it yields once
//! (so that callers being polled at that moment join its batch), takes the
//! oldest batch (up to `max_batch` keys, its own key among them), sends one
//! `MGET` from its own task, and hands each waiter its answer. Callers that
//! arrive meanwhile queue for the next batch; when the leader's batch
//! returns, it names the first live caller of the next batch as the new
//! leader and wakes it, so that batch goes out as soon as the connection is
//! free ("flush when the connection is free"), without a task hop. A lone
//! caller pays one yield; many concurrent callers share round trips.
//!
//! No `String` per key and no channel per caller: keys are written into
//! the batch's one string buffer (`{namespace}:{{key}}`), and each caller
//! waits in a slot of a reused slab (its waker and, later, its answer).
//! Each batch sent still allocates its key list and its boxed `MGET` (a
//! lone caller is a batch of one).
//!
//! Cancellation: a caller dropped while it waits is left out of the next
//! `MGET` (its answer, if already on the way, is discarded). A leader
//! dropped before or while its `MGET` is in flight puts its batch back at
//! the head of the queue and hands the lead to a live caller of that batch,
//! who sends it again (`MGET` is idempotent); a batch with no live caller
//! left is dropped. Nobody waits on a future that no longer exists.
//!
//! Each caller waits at most the worst case of one call of its own
//! ([`Node::call_deadline`]), queueing included, on one timer of its own
//! (the batch has none; the `MGET`'s attempts have the node's per-attempt
//! deadline), so behind a slow `MGET` and a long queue a caller gets
//! `ErrorKind::Timeout` rather than waiting for every batch ahead of it.
//!
//! A leader whose future is kept but no longer polled (held in a `select!`
//! that stopped polling it), or whose `MGET` is slow, would hold up the
//! batches behind it: once the leader has not got on for [`LEAD_STALL`], a
//! caller whose batch waits in the queue takes the lead and sends from the
//! head of the queue until its own key is answered. The callers of a batch
//! already sent by a leader that is never polled again wait for their
//! deadline (`Timeout`): their keys are in that leader's hands.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use larder_core::{Error, ErrorKind, Result, validate_key};
use tokio::time::Instant;

use crate::node::Node;

/// How long a leader may go without getting on (sending its batch, or
/// getting the answer back) before a caller whose batch waits takes the
/// lead: a leader whose future is kept but no longer polled stalls the
/// batches behind it no longer than this.
const LEAD_STALL: Duration = Duration::from_millis(20);

type Answer = Result<Option<Vec<u8>>>;

/// One caller's place in the slab.
enum Slot {
    Free,
    /// Queued or sent; the waker of its caller once polled.
    Waiting(Option<Waker>),
    /// Leading: sending the head batch, or named to and not yet polled.
    Lead,
    Done(Answer),
    /// Its caller is gone; freed when its batch is answered or dropped.
    Abandoned,
}

/// Keys waiting for one `MGET`, and whose they are.
#[derive(Default)]
struct Batch {
    /// The Redis keys, end to end.
    keys: String,
    /// Where each key ends in `keys`.
    ends: Vec<usize>,
    /// Each key's caller (index into the slab).
    slots: Vec<usize>,
}

impl Batch {
    fn key(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.keys[start..self.ends[i]]
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.ends.clear();
        self.slots.clear();
    }
}

/// What the batcher has counted since it was built.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// `MGET`s sent (a Cluster splits each further by master).
    pub batches: u64,
    /// Keys sent in them (callers that gave up before the send not included).
    pub keys: u64,
}

impl BatchStats {
    /// Keys per batch, on average (0 before the first batch).
    pub fn mean_batch_size(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.keys as f64 / self.batches as f64
        }
    }
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Batches waiting to be sent, oldest first; the last one fills up.
    queue: VecDeque<Batch>,
    /// Emptied batches, kept for their buffers.
    spare: Vec<Batch>,
    /// The slot of the caller leading now, if any. None means the queue is empty.
    leader: Option<usize>,
    /// When the leader was named (or took the lead, or began its next
    /// batch): a leader that has not got on within [`LEAD_STALL`] can be
    /// replaced by a caller whose batch waits.
    lead_since: Option<Instant>,
    /// Per slot: its key waits in a queued batch (not one in flight).
    queued: Vec<bool>,
    stats: BatchStats,
}

impl State {
    /// Puts a caller's key in the last batch (a new one if it is full);
    /// the caller's slot, and whether it leads.
    fn join(&mut self, prefix: &str, key: &str, max_batch: usize) -> (usize, bool) {
        let lead = self.leader.is_none();
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::Free);
                self.queued.push(false);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = if lead {
            self.leader = Some(slot);
            self.lead_since = Some(Instant::now());
            Slot::Lead
        } else {
            Slot::Waiting(None)
        };
        if self.queue.back().is_none_or(|b| b.slots.len() >= max_batch) {
            let b = self.spare.pop().unwrap_or_default();
            self.queue.push_back(b);
        }
        let b = self.queue.back_mut().expect("a batch was just pushed");
        b.keys.push_str(prefix);
        b.keys.push('{');
        b.keys.push_str(key);
        b.keys.push('}');
        b.ends.push(b.keys.len());
        b.slots.push(slot);
        self.queued[slot] = true;
        (slot, lead)
    }

    fn free_slot(&mut self, slot: usize) {
        self.slots[slot] = Slot::Free;
        self.queued[slot] = false;
        self.free.push(slot);
    }

    /// Puts a batch taken for sending back at the head of the queue, and
    /// wakes its waiters: their keys wait again, so each resumes watching
    /// for a stalled leader.
    fn requeue(&mut self, b: Batch) {
        for &i in &b.slots {
            // Every live caller's key is queued again, its leader's too.
            match &mut self.slots[i] {
                Slot::Waiting(w) => {
                    self.queued[i] = true;
                    if let Some(w) = w.take() {
                        w.wake();
                    }
                }
                Slot::Lead => self.queued[i] = true,
                Slot::Free | Slot::Done(_) | Slot::Abandoned => {}
            }
        }
        self.queue.push_front(b);
    }

    /// Takes the head batch for sending: its keys are no longer queued.
    /// Its live callers' indices in it (`None`: no queued batch).
    fn take_head(&mut self) -> Option<(Batch, Vec<usize>)> {
        let b = self.queue.pop_front()?;
        for &i in &b.slots {
            self.queued[i] = false;
        }
        let live = (0..b.slots.len())
            .filter(|&i| matches!(self.slots[b.slots[i]], Slot::Waiting(_) | Slot::Lead))
            .collect();
        Some((b, live))
    }

    fn recycle(&mut self, mut b: Batch) {
        b.clear();
        self.spare.push(b);
    }

    /// Names the first live caller of the oldest batch the leader and wakes
    /// it; batches with no live caller are dropped on the way. No leader
    /// (and an empty queue) if nobody is left.
    fn hand_off(&mut self) {
        self.leader = None;
        self.lead_since = None;
        while let Some(b) = self.queue.pop_front() {
            let next = b
                .slots
                .iter()
                .copied()
                .find(|&i| matches!(self.slots[i], Slot::Waiting(_)));
            if let Some(i) = next {
                self.queue.push_front(b);
                if let Slot::Waiting(Some(w)) = std::mem::replace(&mut self.slots[i], Slot::Lead) {
                    w.wake();
                }
                self.leader = Some(i);
                self.lead_since = Some(Instant::now());
                return;
            }
            for &i in &b.slots {
                self.free_slot(i);
            }
            self.recycle(b);
        }
    }

    /// Makes `slot` the leader if the leader has not got on for
    /// [`LEAD_STALL`] (its future is kept but no longer polled, or its
    /// `MGET` is slow) and `slot`'s key waits in a queued batch. Otherwise
    /// `Err(when)`: when to look again (`None`: never, the key is on its
    /// way in a batch already sent).
    fn take_lead(&mut self, slot: usize, now: Instant) -> Result<(), Option<Instant>> {
        if self.leader == Some(slot) {
            return Ok(());
        }
        if !self.queued[slot] {
            return Err(None);
        }
        if let (Some(_), Some(since)) = (self.leader, self.lead_since)
            && now < since + LEAD_STALL
        {
            return Err(Some(since + LEAD_STALL));
        }
        if let Some(old) = self.leader
            && matches!(self.slots[old], Slot::Lead)
        {
            // The old leader waits for its answer like anyone else (if its
            // batch is in flight, it still answers it).
            self.slots[old] = Slot::Waiting(None);
        }
        self.leader = Some(slot);
        self.slots[slot] = Slot::Lead;
        self.lead_since = Some(now);
        Ok(())
    }

    /// Gives each caller of `b` its answer (`answers` matches `live`, the
    /// indices of the keys that were sent; the others were abandoned).
    fn answer(&mut self, b: &Batch, live: &[usize], answers: Vec<Answer>) {
        let mut answers = answers.into_iter();
        let mut live = live.iter().copied().peekable();
        for (i, &slot) in b.slots.iter().enumerate() {
            let answer = if live.next_if_eq(&i).is_some() {
                answers.next()
            } else {
                None
            };
            match std::mem::replace(&mut self.slots[slot], Slot::Free) {
                Slot::Waiting(waker) => {
                    self.slots[slot] = Slot::Done(answer.unwrap_or_else(|| {
                        Err(Error::new(ErrorKind::Backend, "batched MGET: no answer"))
                    }));
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
                Slot::Lead => {
                    self.slots[slot] = Slot::Done(answer.unwrap_or_else(|| {
                        Err(Error::new(ErrorKind::Backend, "batched MGET: no answer"))
                    }));
                }
                // Abandoned (or, defensively, anything else): its caller is gone.
                _ => self.free.push(slot),
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Batcher {
    node: Arc<Node>,
    max_batch: usize,
    /// How long one caller waits, queueing included.
    deadline: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("queued_batches", &self.queue.len())
            .field("leader", &self.leader)
            .field("stats", &self.stats)
            .finish()
    }
}

/// A caller's claim on its slot (and, while it leads, on the batch it
/// sends): dropped early, it hands its part on instead of wedging others.
struct Claim<'a> {
    batcher: &'a Batcher,
    slot: Option<usize>,
    /// The batch this caller is sending.
    sending: Option<Batch>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let mut s = self.batcher.lock();
        let leads = s.leader == Some(slot);
        if let Some(b) = self.sending.take() {
            // Cancelled mid-flight: the batch goes back to the head of the
            // queue for a live caller of it to send again. Its waiters look
            // again whether its new leader gets on.
            s.requeue(b);
        }
        if matches!(s.slots[slot], Slot::Done(_)) {
            s.free_slot(slot);
        } else {
            // A batch still names this slot: freed when that batch is done.
            s.slots[slot] = Slot::Abandoned;
        }
        // A batch put back with nobody leading (this caller had lost the
        // lead) needs a leader too.
        if leads || (s.leader.is_none() && !s.queue.is_empty()) {
            s.hand_off();
        }
    }
}

/// What a caller's wait came to.
enum Step {
    Answer(Answer),
    Lead,
    TimedOut,
}

impl Batcher {
    pub(crate) fn new(node: Arc<Node>, max_batch: usize) -> Batcher {
        Batcher {
            deadline: node.call_deadline(),
            node,
            max_batch: max_batch.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> BatchStats {
        self.lock().stats
    }

    /// The value under the Redis key `{prefix}{{key}}`.
    pub(crate) async fn get(&self, prefix: &str, key: &str) -> Answer {
        validate_key(key)?;
        self.wait(prefix, key).await
    }

    fn timed_out(&self) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!("batched get: no answer within {:?}", self.deadline),
        )
    }

    async fn wait(&self, prefix: &str, key: &str) -> Answer {
        // One timer per caller: its deadline, and before it the moments to
        // look whether the leader stalled.
        let start = Instant::now();
        let deadline = start + self.deadline;
        let (slot, leads) = self.lock().join(prefix, key, self.max_batch);
        let mut claim = Claim {
            batcher: self,
            slot: Some(slot),
            sending: None,
        };
        if leads {
            // Let callers being polled right now join this batch, so a
            // burst goes out as one MGET rather than 1 + the rest.
            tokio::task::yield_now().await;
        }
        // From the start, not from after the yield: one clock read fewer
        // per get, and the stall watch starts at most one yield early.
        let timer = tokio::time::sleep_until(deadline.min(start + LEAD_STALL));
        tokio::pin!(timer);
        // Whether the timer watches for a stalled leader (else it is set to
        // the deadline: the key is in flight).
        let mut watching = true;
        loop {
            let step = poll_fn(|cx| {
                let mut s = self.lock();
                match &mut s.slots[slot] {
                    Slot::Waiting(w) => match w {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *w = Some(cx.waker().clone()),
                    },
                    Slot::Lead => return Poll::Ready(Step::Lead),
                    Slot::Done(_) => {
                        let Slot::Done(a) = std::mem::replace(&mut s.slots[slot], Slot::Free)
                        else {
                            unreachable!("matched Done above")
                        };
                        s.free.push(slot);
                        return Poll::Ready(Step::Answer(a));
                    }
                    Slot::Free | Slot::Abandoned => {
                        return Poll::Ready(Step::Answer(Err(Error::new(
                            ErrorKind::Backend,
                            "batched get: lost its place",
                        ))));
                    }
                }
                // Waiting: the deadline, or a leader that does not get on.
                if !watching && s.queued[slot] {
                    // Its batch came back to the queue (its sender dropped).
                    watching = true;
                    let since = s.lead_since.unwrap_or_else(Instant::now);
                    timer.as_mut().reset((since + LEAD_STALL).min(deadline));
                }
                while timer.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    if now >= deadline {
                        return Poll::Ready(Step::TimedOut);
                    }
                    match s.take_lead(slot, now) {
                        Ok(()) => return Poll::Ready(Step::Lead),
                        Err(next) => {
                            watching = next.is_some();
                            timer
                                .as_mut()
                                .reset(next.map_or(deadline, |t| t.min(deadline)));
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            match step {
                Step::Answer(a) => {
                    claim.slot = None;
                    return a;
                }
                // The claim marks the slot abandoned: its batch, queued or
                // in flight, skips it.
                Step::TimedOut => return Err(self.timed_out()),
                Step::Lead => {}
            }
            // Leading: send batches from the head of the queue until this
            // caller's key is answered (a caller that took the lead over
            // may find its key behind others). The claim holds the batch
            // in flight, to put it back if this future is dropped.
            loop {
                let live = {
                    let mut s = self.lock();
                    if s.leader != Some(slot) {
                        // Replaced: wait again.
                        break;
                    }
                    let Some((b, live)) = s.take_head() else {
                        // This caller's key is on its way in a batch another
                        // caller sent: wait for it, leading nobody.
                        s.slots[slot] = Slot::Waiting(None);
                        s.hand_off();
                        break;
                    };
                    if live.is_empty() {
                        // Every caller of it gave up: nothing to send.
                        for &i in &b.slots {
                            s.free_slot(i);
                        }
                        s.recycle(b);
                        continue;
                    }
                    s.stats.batches += 1;
                    s.stats.keys += live.len() as u64;
                    claim.sending = Some(b);
                    live
                };
                let batch = claim.sending.as_ref().expect("set just above");
                let keys: Vec<&str> = live.iter().map(|&i| batch.key(i)).collect();
                timer.as_mut().reset(deadline);
                // On the heap: once per batch, and every caller's future
                // stays small (it is boxed per get for `dyn Store`).
                let mget = Box::pin(self.node.mget(&keys, "batched MGET"));
                let answers = tokio::select! {
                    biased;
                    answers = mget => answers,
                    // The claim puts the batch back for its other callers.
                    () = &mut timer => return Err(self.timed_out()),
                };
                drop(keys);
                let batch = claim.sending.take().expect("taken only here");
                let mut s = self.lock();
                s.answer(&batch, &live, answers);
                s.recycle(batch);
                let leads = s.leader == Some(slot);
                match std::mem::replace(&mut s.slots[slot], Slot::Free) {
                    Slot::Done(a) => {
                        s.free.push(slot);
                        claim.slot = None;
                        if leads {
                            s.hand_off();
                        }
                        return a;
                    }
                    other => {
                        // Still leading toward its own batch, or replaced.
                        s.slots[slot] = other;
                        if leads {
                            s.lead_since = Some(Instant::now());
                        } else {
                            break;
                        }
                    }
                }
            }
            watching = true;
            timer
                .as_mut()
                .reset(deadline.min(Instant::now() + LEAD_STALL));
        }
    }
}
