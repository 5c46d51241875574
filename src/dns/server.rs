//! DNS over UDP and TCP: sockets and framing around [`answer::respond`](super::answer::respond).
//!
//! Why not hickory-server's `ServerFuture`: it spawns a task and builds a `MessageRequest` per
//! UDP query, and its encoder decides truncation on its own. srvdns answers from an immutable
//! snapshot with no await on the query path, so a plain receive–answer–send loop per socket
//! is both simpler and faster, and keeps the truncation rules (RFC 2181 §9) in one pure
//! function. hickory-proto still does all wire parsing and encoding.
//!
//! The query path never awaits the registry or the store: it loads the current snapshot
//! (lock-free) and answers.
//!
//! Hostile clients: UDP answers pass the response-rate limiter ([`super::rrl`]) when one is
//! configured; TCP connections are capped in number, in idle time and in queries each
//! ([`TcpLimits`]), so that slow or endless connections cannot starve the others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{Authority, Transport, respond};
use super::fast::{self, Scratch};
use super::rrl::{RateLimiter, SlipBuffer};
use crate::registry::Registry;

/// How long a TCP connection may sit idle between queries (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open TCP connections at most; further ones wait in the accept queue.
pub const MAX_TCP_CONNECTIONS: usize = 512;

/// Limits on DNS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// How long a connection may sit idle between queries, or take to send one; then it is
    /// closed (RFC 7766 §6.2.3).
    pub idle_timeout: Duration,
    /// Open connections at most; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Queries one connection may carry; then it is closed after the last answer.
    pub max_queries_per_connection: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            idle_timeout: TCP_IDLE_TIMEOUT,
            max_connections: MAX_TCP_CONNECTIONS,
            max_queries_per_connection: 1000,
        }
    }
}

/// The DNS side: what it answers with.
#[derive(Clone)]
pub struct DnsService {
    pub authority: Arc<Authority>,
    pub registry: Arc<Registry>,
    /// Response-rate limiting for UDP answers; `None`: off.
    pub rrl: Option<Arc<RateLimiter>>,
}

impl DnsService {
    /// Answers one packet: the fast path when it can, else the reference path. The answer is
    /// left in `scratch` (fast) or returned (reference).
    fn answer<'s>(
        &self,
        packet: &[u8],
        transport: Transport,
        rng: &mut SmallRng,
        scratch: &'s mut Scratch,
        reference: &'s mut Vec<u8>,
    ) -> Option<&'s [u8]> {
        let snapshot = self.registry.snapshot_ref();
        if fast::answer(&self.authority, &snapshot, packet, transport, rng, scratch) {
            return Some(scratch.answer());
        }
        *reference = respond(&self.authority, &snapshot, packet, transport, rng)?;
        Some(reference)
    }

    /// Passes a UDP answer for `peer` through the response-rate limiter: the answer, its
    /// truncated form (built in `slip`), or nothing.
    fn rate_limit<'a>(
        &self,
        peer: SocketAddr,
        response: &'a [u8],
        slip: &'a mut SlipBuffer,
    ) -> Option<&'a [u8]> {
        match &self.rrl {
            Some(rrl) => rrl.apply(peer.ip(), response, slip),
            None => Some(response),
        }
    }
}

/// Binds UDP and TCP on the same address. With port 0, picks a port free for both.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

/// Answers UDP queries until `shutdown`.
pub async fn serve_udp(socket: Arc<UdpSocket>, service: DnsService, shutdown: CancellationToken) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut buffer = vec![0u8; 65535];
    let mut scratch = Scratch::default();
    let mut reference = Vec::new();
    let mut slip = SlipBuffer::default();
    loop {
        let (len, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(e) => {
                    // Per-datagram errors (ICMP feedback and the like) concern one peer only.
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        if let Some(response) = service.answer(
            &buffer[..len],
            Transport::Udp,
            &mut rng,
            &mut scratch,
            &mut reference,
        ) && let Some(response) = service.rate_limit(peer, response, &mut slip)
            && let Err(e) = socket.send_to(response, peer).await
        {
            tracing::debug!(error = %e, %peer, "udp send failed");
        }
    }
}

/// Accepts TCP connections until `shutdown`; each connection may carry many queries.
pub async fn serve_tcp(
    listener: TcpListener,
    service: DnsService,
    limits: TcpLimits,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = service.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = serve_connection(stream, &service, limits) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "tcp connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    mut stream: TcpStream,
    service: &DnsService,
    limits: TcpLimits,
) -> std::io::Result<()> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut buffer = vec![0u8; 65535];
    let mut scratch = Scratch::default();
    let mut reference = Vec::new();
    for _ in 0..limits.max_queries_per_connection {
        let mut prefix = [0u8; 2];
        match tokio::time::timeout(limits.idle_timeout, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle
        }
        let len = usize::from(u16::from_be_bytes(prefix));
        let message = &mut buffer[..len];
        match tokio::time::timeout(limits.idle_timeout, stream.read_exact(message)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // a length prefix that lies, or a slow sender
        }
        let Some(response) = service.answer(
            message,
            Transport::Tcp,
            &mut rng,
            &mut scratch,
            &mut reference,
        ) else {
            continue;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(response);
        // A client that does not read its answers holds the connection no longer than an
        // idle one.
        match tokio::time::timeout(limits.idle_timeout, stream.write_all(&framed)).await {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        }
    }
    // The last query's answer is written: close (RFC 7766 §6.2.3 lets a server end a
    // connection at any time; clients reconnect).
    stream.shutdown().await
}
