use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::Result;

/// A TCP proxy on a loopback port that sits between a client and a server
/// and injects network faults: latency, stalls, cut connections, refused
/// connections. It runs on its own thread and runtime, so it works from sync
/// and async tests alike, and stops when dropped.
///
/// Latency is added per chunk and per direction, like a slow link: a
/// request/response round trip through a proxy with latency `d` takes at
/// least `2 * d`.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct State {
    latency_us: AtomicU64,
    refuse: AtomicBool,
    stalled: watch::Sender<bool>,
    replies_stalled: watch::Sender<bool>,
    held_replies: watch::Sender<u64>,
    cut: watch::Sender<u64>,
    live: AtomicUsize,
    accepted: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port.
    pub fn start(target: SocketAddr) -> Result<Self> {
        let std_listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State {
            latency_us: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            stalled: watch::channel(false).0,
            replies_stalled: watch::channel(false).0,
            held_replies: watch::channel(0).0,
            cut: watch::channel(0).0,
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _runtime = rt.enter();
            TcpListener::from_std(std_listener)?
        };
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || rt.block_on(accept_loop(listener, target, st, shutdown_rx)))?;
        Ok(FaultProxy {
            addr,
            target,
            state,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The proxy's own address: point clients here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// `redis://127.0.0.1:port/` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// Delays every forwarded chunk by `latency`, in each direction.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.state.latency_us.store(us, Ordering::SeqCst);
    }

    /// While stalled, bytes are read but held, not forwarded: the peer sees a
    /// connection that is open but silent. Unstalling delivers what was held.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.send_replace(stalled);
    }

    /// While set, requests still reach the server but its replies are held:
    /// the server has done the work and the client has not heard of it.
    /// Together with [`FaultProxy::wait_held_replies`] and
    /// [`FaultProxy::cut_all`], this loses the reply of a command that ran.
    /// Unsetting delivers what was held (unless the connection was cut).
    pub fn set_replies_stalled(&self, stalled: bool) {
        self.state.replies_stalled.send_replace(stalled);
    }

    /// Reply chunks held back by [`FaultProxy::set_replies_stalled`] so far.
    pub fn held_replies(&self) -> u64 {
        *self.state.held_replies.borrow()
    }

    /// Waits until at least `n` reply chunks have been held back (a gate,
    /// not a sleep): the server has answered those requests.
    pub async fn wait_held_replies(&self, n: u64) {
        let mut rx = self.state.held_replies.subscribe();
        // The sender lives as long as `self`.
        let _ = rx.wait_for(|held| *held >= n).await;
    }

    /// Closes every open connection through the proxy now.
    pub fn cut_all(&self) {
        self.state.cut.send_modify(|g| *g += 1);
    }

    /// While refusing, new connections are accepted and closed at once.
    pub fn set_refusing(&self, refuse: bool) {
        self.state.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Connections open through the proxy now.
    pub fn live_connections(&self) -> usize {
        self.state.live.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted_connections(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                state.accepted.fetch_add(1, Ordering::SeqCst);
                if state.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let st = Arc::clone(&state);
                tasks.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    st.live.fetch_add(1, Ordering::SeqCst);
                    relay(client, server, &st).await;
                    st.live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        }
    }
    tasks.shutdown().await;
}

/// Relays both directions until either side closes or the connection is cut.
async fn relay(client: TcpStream, server: TcpStream, state: &State) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut cut = state.cut.subscribe();
    let generation = *cut.borrow_and_update();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pipe(cr, sw, state, false, generation);
    let down = pipe(sr, cw, state, true, generation);
    tokio::select! {
        biased;
        _ = cut.changed() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
}

/// One direction: a reader stamps chunks, a writer releases each chunk once
/// its latency has passed and the proxy is not stalled.
/// Bytes held while stalled are never delivered once the connection has been
/// cut (`generation` is the cut count when the connection was opened).
async fn pipe<R, W>(mut from: R, mut to: W, state: &State, replies: bool, generation: u64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let mut stalled = state.stalled.subscribe();
    let mut replies_stalled = state.replies_stalled.subscribe();
    let writer = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            let latency = Duration::from_micros(state.latency_us.load(Ordering::SeqCst));
            tokio::time::sleep_until(read_at + latency).await;
            if stalled.wait_for(|s| !*s).await.is_err() {
                break;
            }
            if replies && *replies_stalled.borrow_and_update() {
                state.held_replies.send_modify(|n| *n += 1);
                if replies_stalled.wait_for(|s| !*s).await.is_err() {
                    break;
                }
            }
            if *state.cut.borrow() != generation {
                break;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
