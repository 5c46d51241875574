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
use super::metrics::DnsMetrics;
use crate::registry::Registry;

/// How long a TCP connection may sit idle between queries (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open TCP connections at most; further ones wait in the accept queue.
pub const MAX_TCP_CONNECTIONS: usize = 512;

/// The DNS side: what it answers with.
#[derive(Clone)]
pub struct DnsService {
    pub authority: Arc<Authority>,
    pub registry: Arc<Registry>,
    /// Counters for `/metrics`, kept by [`DnsMetrics::observe`] around every answer.
    pub metrics: Arc<DnsMetrics>,
}

impl DnsService {
    /// Answers one packet: the fast path when it can, else the reference path. The answer is
    /// left in `scratch` (fast) or returned (reference). Every packet is counted.
    fn answer<'s>(
        &self,
        packet: &[u8],
        transport: Transport,
        rng: &mut SmallRng,
        scratch: &'s mut Scratch,
        reference: &'s mut Vec<u8>,
    ) -> Option<&'s [u8]> {
        self.metrics.observe(packet, transport, || {
            self.answer_uncounted(packet, transport, rng, scratch, reference)
        })
    }

    fn answer_uncounted<'s>(
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
        ) && let Err(e) = socket.send_to(response, peer).await
        {
            tracing::debug!(error = %e, %peer, "udp send failed");
        }
    }
}

/// Accepts TCP connections until `shutdown`; each connection may carry many queries.
pub async fn serve_tcp(listener: TcpListener, service: DnsService, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
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
                result = serve_connection(stream, &service) => {
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

async fn serve_connection(mut stream: TcpStream, service: &DnsService) -> std::io::Result<()> {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut buffer = vec![0u8; 65535];
    let mut scratch = Scratch::default();
    let mut reference = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()), // idle
        }
        let len = usize::from(u16::from_be_bytes(prefix));
        let message = &mut buffer[..len];
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(message)).await {
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
        stream.write_all(&framed).await?;
    }
}
