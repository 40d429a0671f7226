//! Bounds on what gRPC clients may hold: connections (in total and per peer
//! address), an accept loop that backs off when file descriptors run out
//! instead of spinning, HTTP/2 settings that cap what one connection may
//! buffer, and counters of what was refused or dropped (AgentHealth and
//! `/metrics`). docs/grpc.md lists every bound.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Open connections per listener.
pub const MAX_CONNECTIONS: usize = 256;
/// Open TCP connections from one IP address (loopback is one address: a
/// local user cannot take every connection of the listener).
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// Concurrent HTTP/2 streams (RPCs) on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Flow-control windows we grant clients: requests are small (at most
/// 1 MiB), so these only bound what a client can make us buffer.
pub const STREAM_WINDOW: u32 = 64 << 10;
pub const CONNECTION_WINDOW: u32 = 256 << 10;
/// Largest HTTP/2 frame we accept (the protocol's minimum).
pub const MAX_FRAME: u32 = 16 << 10;
/// HTTP/2 ping interval and how long a peer may take to answer: a peer that
/// stopped reading (or vanished) is disconnected after about a minute.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// First and longest pause of the accept loop when accept() fails for want
/// of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often freed heap is handed back to the kernel after streams closed.
const TRIM_EVERY: Duration = Duration::from_secs(10);

static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);
static STREAM_MESSAGES_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Slots given back: when this moves, there may be heap to return.
static RELEASED: AtomicU64 = AtomicU64::new(0);

/// Connections closed at accept because a limit was reached (process-wide:
/// one agent per process).
pub fn connections_refused() -> u64 {
    CONNECTIONS_REFUSED.load(Ordering::Relaxed)
}

/// Stream messages (Watch snapshots) not sent to slow readers.
pub fn stream_messages_dropped() -> u64 {
    STREAM_MESSAGES_DROPPED.load(Ordering::Relaxed)
}

pub fn count_dropped_message() {
    STREAM_MESSAGES_DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// Who is on the other end: a TCP peer's address, or a Unix-socket peer's
/// process (from SO_PEERCRED), so one process flooding the socket cannot
/// take every connection from the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    Ip(IpAddr),
    Pid(i32),
}

impl From<IpAddr> for Peer {
    fn from(ip: IpAddr) -> Self {
        Peer::Ip(ip)
    }
}

/// Slots (open connections of one listener, or open streams) in total and
/// per peer.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    per_peer: usize,
    open: Mutex<(usize, HashMap<Peer, usize>)>,
}

impl Slots {
    pub fn new(max: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_peer,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for `peer` (None: a Unix socket peer, counted in the total
    /// only), or None when a limit is reached.
    pub fn admit(self: &Arc<Self>, peer: Option<Peer>) -> Option<Slot> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 >= self.max {
            return None;
        }
        if let Some(ip) = peer {
            let n = g.1.entry(ip).or_insert(0);
            if *n >= self.per_peer {
                return None;
            }
            *n += 1;
        }
        g.0 += 1;
        Some(Slot {
            limit: self.clone(),
            peer,
        })
    }

    /// Slots taken now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn per_peer(&self) -> usize {
        self.per_peer
    }
}

/// Held while a connection or stream is open; given back on drop.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<Slots>,
    peer: Option<Peer>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        RELEASED.fetch_add(1, Ordering::Relaxed);
        let mut g = self.limit.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(ip) = self.peer
            && let Some(n) = g.1.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.1.remove(&ip);
            }
        }
    }
}

/// A connection that holds a [`Slot`] while open.
pub struct Counted<T> {
    io: T,
    _slot: Slot,
}

impl<T: Connected> Connected for Counted<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A listener the limited accept loop can take connections from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and its peer (its IP address, or for a Unix
    /// socket its process when the kernel says).
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Option<Peer>)>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<(Self::Io, Option<Peer>)> {
        let (s, a) = tokio::net::TcpListener::accept(self).await?;
        // Latency over throughput, as tonic's own listener does.
        let _ = s.set_nodelay(true);
        Ok((s, Some(Peer::Ip(a.ip()))))
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&self) -> std::io::Result<(Self::Io, Option<Peer>)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        let pid = s.peer_cred().ok().and_then(|c| c.pid());
        Ok((s, pid.map(Peer::Pid)))
    }
}

/// accept() failed for want of a resource: waiting may help, retrying at
/// once cannot (the pending connection stays in the backlog and fails the
/// same way).
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Connections from `listener` within `limit`: over the limit they are
/// closed at once (and counted); when accept() fails for want of file
/// descriptors the loop sleeps with exponential back-off instead of
/// spinning. Never yields an error, so tonic never sees one.
pub fn incoming<L: Listener>(
    listener: L,
    limit: Arc<Slots>,
) -> impl Stream<Item = std::io::Result<Counted<L::Io>>> + Send + 'static {
    futures_util::stream::unfold(
        (listener, limit, ACCEPT_BACKOFF_MIN),
        |(listener, limit, mut backoff)| async move {
            loop {
                match listener.accept().await {
                    Ok((io, peer)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        match limit.admit(peer) {
                            Some(slot) => {
                                let c = Counted { io, _slot: slot };
                                return Some((Ok(c), (listener, limit, backoff)));
                            }
                            None => {
                                CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(
                                    "gRPC connection from {peer:?} refused: connection limit"
                                );
                                drop(io);
                            }
                        }
                    }
                    Err(e) if out_of_resources(&e) => {
                        tracing::warn!(
                            "gRPC accept failed ({e}); pausing {} ms",
                            backoff.as_millis()
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                    // Per-connection failures (ECONNABORTED, EPROTO...).
                    Err(e) => tracing::debug!("gRPC accept: {e}"),
                }
            }
        },
    )
}

/// Hands freed heap back to the kernel after connections or streams closed: glibc keeps
/// freed memory of its arenas mapped, so the RSS that a burst of Watch
/// streams took stayed after they ended. Runs until the process exits.
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static STARTED: std::sync::Once = std::sync::Once::new();
        STARTED.call_once(|| {
            tokio::spawn(async {
                let mut seen = RELEASED.load(Ordering::Relaxed);
                let mut tick = tokio::time::interval(TRIM_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let now = RELEASED.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        // SAFETY: malloc_trim has no preconditions; it only
                        // returns free pages of the allocator to the kernel.
                        unsafe {
                            libc::malloc_trim(0);
                        }
                    }
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_total_and_per_peer() {
        let l = Slots::new(3, 2);
        let a = Peer::Ip("10.0.0.1".parse().expect("ip"));
        let b = Peer::Pid(42);
        let s1 = l.admit(Some(a)).expect("1");
        let s2 = l.admit(Some(a)).expect("2");
        assert!(l.admit(Some(a)).is_none(), "per-peer limit");
        let s3 = l.admit(Some(b)).expect("other peer");
        assert!(l.admit(Some(b)).is_none(), "total limit");
        assert!(l.admit(None).is_none(), "total limit for Unix peers too");
        drop(s1);
        assert_eq!(l.open(), 2);
        let _s4 = l.admit(Some(a)).expect("slot given back");
        drop((s2, s3));
        assert_eq!(l.open(), 1);
    }
}
