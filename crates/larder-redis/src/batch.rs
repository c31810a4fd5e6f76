//! Automatic batching: concurrent single-key `get`s become one `MGET`.
//!
//! One background task owns the queue. It takes everything waiting (up to
//! `max_batch` keys), sends one `MGET`, hands each caller its answer, and
//! repeats: a batch is sent as soon as the previous one has returned ("flush
//! when the connection is free"), after one scheduler yield so that callers
//! being polled at that moment join it. A lone caller pays one yield; many
//! concurrent callers share round trips. The task is spawned by the first
//! `get` (on that caller's runtime), so a store can be built outside a
//! runtime. It stops when the last clone of the store is dropped; callers
//! whose batch was in flight then get an `ErrorKind::Closed` error, never a
//! hang. It lives on that first runtime: a store shared by several runtimes
//! gets `Closed` errors from its batched gets once that runtime stops (use
//! one store per runtime with auto-batching, or none).
//!
//! Each caller waits at most the worst case of one call of its own
//! ([`Node::call_deadline`]), queueing included: behind a slow `MGET` and a
//! long queue, it gets `ErrorKind::Timeout` rather than waiting for every
//! batch ahead of it. A caller that gave up is left out of the next batch.

use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use larder_core::{Error, ErrorKind, Result};
use tokio::sync::{mpsc, oneshot};

use crate::node::Node;

type Reply = oneshot::Sender<Result<Option<Vec<u8>>>>;

type Request = (String, Reply);

/// The batching task's state before it is spawned: node, queue, batch size.
type Pending = (Arc<Node>, mpsc::Receiver<Request>, usize);

#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Request>,
    /// How long one caller waits, queueing included.
    deadline: Duration,
    /// What the task needs, until the first `get` spawns it.
    pending: StdMutex<Option<Pending>>,
    /// Set once the task runs (one atomic load per `get` after that).
    started: OnceLock<()>,
}

impl Batcher {
    /// A batcher whose task starts with the first `get`.
    pub(crate) fn new(node: Arc<Node>, max_batch: usize) -> Batcher {
        let (tx, rx) = mpsc::channel::<Request>(max_batch.saturating_mul(16).max(64));
        Batcher {
            tx,
            deadline: node.call_deadline(),
            pending: StdMutex::new(Some((node, rx, max_batch))),
            started: OnceLock::new(),
        }
    }

    fn start(&self) {
        self.started.get_or_init(|| {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((node, rx, max_batch)) = pending.take() {
                tokio::spawn(Self::run(node, rx, max_batch));
            }
        });
    }

    async fn run(node: Arc<Node>, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while rx.recv_many(&mut batch, max_batch).await > 0 {
            if batch.len() < max_batch {
                // Let callers that are being polled right now enqueue too,
                // so a burst goes out as one MGET rather than 1 + the rest.
                tokio::task::yield_now().await;
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(req) => batch.push(req),
                        Err(_) => break,
                    }
                }
            }
            // Callers that gave up (their deadline passed) are left out.
            let (keys, replies): (Vec<String>, Vec<Reply>) =
                batch.drain(..).filter(|(_, r)| !r.is_closed()).unzip();
            if keys.is_empty() {
                continue;
            }
            // Split by master on a Cluster: a dead master fails only its callers.
            let answers = node.mget(&keys, "batched MGET").await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        }
    }

    pub(crate) async fn get(&self, key: String) -> Result<Option<Vec<u8>>> {
        self.start();
        let wait = async {
            let (reply, answer) = oneshot::channel();
            self.tx
                .send((key, reply))
                .await
                .map_err(|_| Error::new(ErrorKind::Closed, "the batching task has stopped"))?;
            answer.await.map_err(|_| {
                Error::new(
                    ErrorKind::Closed,
                    "the batching task stopped before answering",
                )
            })?
        };
        tokio::time::timeout(self.deadline, wait)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("batched get: no answer within {:?}", self.deadline),
                ))
            })
    }
}
