//! The listening socket, bounded: at most `max_connections` open connections
//! (and `max_per_ip` from one address), each closed when its peer has sent
//! nothing for `idle`. A live HTTP/2 client is never idle that long: the
//! coordinator pings every connection (`KEEPALIVE`) and the client's answer
//! counts. A socket that connects and stays silent, or a peer that stopped
//! answering, is dropped, so idle connections cannot pile up until the process
//! runs out of file descriptors and every legitimate client is locked out.
//!
//! Each connection also carries a `Closer` in its `ConnInfo` (in every
//! request's extensions): a handler that finds its client misbehaving (a
//! download it stopped reading) closes the whole connection, which is the one
//! way to free what HTTP/2 keeps for a stream its peer never reads again.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How often the coordinator pings each HTTP/2 connection, and how long it waits for the answer.
pub const KEEPALIVE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// A connection whose peer sent nothing for this long is closed.
    pub idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { max_connections: 4096, max_per_ip: 512, idle: Duration::from_secs(60) }
    }
}

impl ConnectionLimits {
    /// The dashboard's share: its own count of connections, and a longer
    /// silence (a page's live-update stream only receives; it ends itself
    /// after a few minutes and the browser opens another).
    pub fn for_dashboard(self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: (self.max_connections / 4).max(16),
            max_per_ip: self.max_per_ip.min(64),
            idle: self.idle.max(Duration::from_secs(360)),
        }
    }
}

/// Raises this process's open-file limit to its hard limit, and returns the
/// most connections it can hold besides the database pool and the rest.
pub fn raise_fd_limit() -> u64 {
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    soft.saturating_sub(64)
}

/// Accepted connections within the limits; those beyond them are closed at once.
pub fn incoming(listener: TcpListener, limits: ConnectionLimits) -> impl Stream<Item = Result<Conn, io::Error>> {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    async_stream::stream! {
        let mut refused_since_log = 0u64;
        let mut last_log = Instant::now() - Duration::from_secs(60);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or a transient error): wait instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let permit = open.clone().try_acquire_owned().ok();
            let ip = IpGuard::take(&per_ip, peer.ip(), limits.max_per_ip);
            let (Some(permit), Some(ip)) = (permit, ip) else {
                refused_since_log += 1;
                if last_log.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(
                        refused = refused_since_log,
                        max = limits.max_connections,
                        max_per_ip = limits.max_per_ip,
                        "connection limit reached; closing new connections"
                    );
                    (refused_since_log, last_log) = (0, Instant::now());
                }
                continue;
            };
            // Small replies (claims, acks) must not wait for Nagle's algorithm.
            let _ = stream.set_nodelay(true);
            yield Ok(Conn::new(stream, limits.idle, permit, ip));
        }
    }
}

/// One address's share of the connections.
struct IpGuard {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl IpGuard {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<IpGuard> {
        let mut map = counts.lock().expect("connection counts");
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpGuard { counts: counts.clone(), ip })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut map = self.counts.lock().expect("connection counts");
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Closes one connection from elsewhere (a handler of one of its calls).
#[derive(Debug, Clone, Default)]
pub struct Closer(Arc<CloseState>);

#[derive(Debug, Default)]
struct CloseState {
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Closer {
    /// Ends the connection: its next read fails, and the server drops it with all its streams.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::SeqCst);
        self.0.waker.wake();
    }

    fn is_closed(&self, cx: &mut Context<'_>) -> bool {
        self.0.waker.register(cx.waker());
        self.0.closed.load(Ordering::SeqCst)
    }
}

/// What a request knows of its connection (in its extensions): the addresses,
/// and the means to close it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub closer: Closer,
}

/// A TCP connection that fails its reads once its peer has been silent for
/// `idle`, or once its `Closer` was used.
pub struct Conn {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    closer: Closer,
    _permit: OwnedSemaphorePermit,
    _ip: IpGuard,
}

impl Conn {
    fn new(inner: TcpStream, idle: Duration, permit: OwnedSemaphorePermit, ip: IpGuard) -> Self {
        Conn { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), closer: Closer::default(), _permit: permit, _ip: ip }
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { tcp: self.inner.connect_info(), closer: self.closer.clone() }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed by the coordinator")
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.closer.is_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "peer idle: connection closed"))),
                Poll::Pending => Poll::Pending,
            },
            error => error,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.closer.is_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.closer.is_closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn silent_peers_are_dropped_and_the_cap_holds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits { max_connections: 2, max_per_ip: 2, idle: Duration::from_millis(200) };
        let mut conns = Box::pin(incoming(listener, limits));
        let _a = TcpStream::connect(addr).await.unwrap();
        let mut first = conns.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _second = conns.next().await.unwrap().unwrap();
        // A third is closed by the coordinator at once: its read sees the end.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                n = third.read(&mut byte) => n.unwrap_or(0),
                _ = conns.next() => panic!("a connection over the cap was accepted"),
            }
        })
        .await
        .unwrap();
        assert_eq!(n, 0);
        // The silent first peer: its connection fails its read after `idle`.
        let started = Instant::now();
        let err = first.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_closer_ends_a_connection_that_waits_to_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits { idle: Duration::from_secs(60), ..ConnectionLimits::default() };
        let mut conns = Box::pin(incoming(listener, limits));
        let _peer = TcpStream::connect(addr).await.unwrap();
        let mut conn = conns.next().await.unwrap().unwrap();
        let closer = conn.connect_info().closer;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            closer.close();
        });
        let mut byte = [0u8; 1];
        let err = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte)).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
}
