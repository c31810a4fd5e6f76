//! Waking waiters by the holder's release message: one subscriber
//! connection per manager, shared by every waiter of every lock, opened
//! only when a wait is contended and bounded by the waiter's deadline.
//! Messages are hints: waiters poll as well, because messages get lost
//! and connections drop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The manager's subscriber: at most one live connection, and per channel
/// the number of waiters and a counter bumped by each message.
#[derive(Default)]
pub(crate) struct Subscriber {
    live: tokio::sync::Mutex<Option<Live>>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

struct Channel {
    waiters: usize,
    messages: watch::Sender<u64>,
}

struct Live {
    sink: PubSubSink,
    reader: JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(live) = self.live.get_mut().take() {
            live.reader.abort();
        }
    }
}

/// A waiter's registration: its receiver of wake-ups; unsubscribes the
/// channel when the last waiter on it goes.
pub(crate) struct Wake {
    pub(crate) messages: watch::Receiver<u64>,
    channel: String,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    sink: PubSubSink,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Wake {
    fn drop(&mut self) {
        let mut channels = lock(&self.channels);
        let last = channels.get_mut(&self.channel).is_some_and(|c| {
            c.waiters -= 1;
            c.waiters == 0
        });
        if last {
            channels.remove(&self.channel);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut sink = self.sink.clone();
                let channel = std::mem::take(&mut self.channel);
                rt.spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.unsubscribe(channel))
                        .await;
                });
            }
        }
    }
}

impl Subscriber {
    /// Registers interest in `channel`, connecting (to the first of
    /// `clients` that answers) if no connection is live; every network wait
    /// bounded by `within`. `None` if that failed: the waiter polls.
    pub(crate) async fn wake_on(
        &self,
        clients: &[redis::Client],
        channel: &str,
        within: Duration,
    ) -> Option<Wake> {
        tokio::time::timeout(within, self.register(clients, channel))
            .await
            .ok()
            .flatten()
    }

    async fn register(&self, clients: &[redis::Client], channel: &str) -> Option<Wake> {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.reader.is_finished()) {
            *live = None;
        }
        if live.is_none() {
            *live = self.connect(clients).await;
        }
        let l = live.as_mut()?;
        let (messages, first) = {
            let mut channels = lock(&self.channels);
            let c = channels
                .entry(channel.to_owned())
                .or_insert_with(|| Channel {
                    waiters: 0,
                    messages: watch::channel(0).0,
                });
            c.waiters += 1;
            (c.messages.subscribe(), c.waiters == 1)
        };
        let wake = Wake {
            messages,
            channel: channel.to_owned(),
            channels: Arc::clone(&self.channels),
            sink: l.sink.clone(),
        };
        if first && l.sink.subscribe(channel).await.is_err() {
            l.reader.abort();
            *live = None;
            return None;
        }
        Some(wake)
    }

    async fn connect(&self, clients: &[redis::Client]) -> Option<Live> {
        for client in clients {
            let Ok(ps) = client.get_async_pubsub().await else {
                continue;
            };
            let (mut sink, mut stream) = ps.split();
            // Channels that already have waiters (a connection that
            // dropped): subscribe them again.
            let known: Vec<String> = lock(&self.channels).keys().cloned().collect();
            if !known.is_empty() && sink.subscribe(known).await.is_err() {
                continue;
            }
            let channels = Arc::clone(&self.channels);
            let reader = tokio::spawn(async move {
                while let Some(msg) = stream.next().await {
                    if let Some(c) = lock(&channels).get(msg.get_channel_name()) {
                        c.messages.send_modify(|n| *n += 1);
                    }
                }
                // The connection is gone: wake everyone (they poll on).
                for c in lock(&channels).values() {
                    c.messages.send_modify(|n| *n += 1);
                }
            });
            return Some(Live { sink, reader });
        }
        None
    }
}
