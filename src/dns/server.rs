//! DNS over UDP and TCP: sockets and framing around the two answer paths — [`fast`] for
//! plain queries, [`respond`] (the reference path) for everything else.
//!
//! Why not hickory-server's `ServerFuture`: it spawns a task and builds a `MessageRequest` per
//! UDP query, and its encoder decides truncation on its own. srvdns answers from an immutable
//! snapshot with no await on the query path: UDP runs on dedicated threads with batched system
//! calls ([`super::udp`]), TCP on the async runtime here, both through
//! [`DnsService::answer_into`]. hickory-proto still does the reference path's wire parsing
//! and encoding.
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{Authority, Transport, respond};
use super::fast::{self, Scratch};
use super::metrics::DnsMetrics;
use super::rrl::{RateLimiter, SlipBuffer};
use crate::registry::{Registry, Snapshot};

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
    /// Counters for `/metrics`, kept around every answer ([`DnsService::answer_into`]).
    pub metrics: Arc<DnsMetrics>,
}

/// Where one answer is written: reused from query to query.
#[derive(Debug, Default)]
pub struct Slot {
    scratch: Scratch,
    reference: Vec<u8>,
    fast: bool,
    /// The truncated form of a rate-limited answer.
    slip: SlipBuffer,
}

impl Slot {
    /// The last answer written.
    pub fn bytes(&self) -> &[u8] {
        if self.fast {
            self.scratch.answer()
        } else {
            &self.reference
        }
    }
}

impl DnsService {
    /// Answers one packet into `slot`: the fast path when it can, else the reference path.
    /// `false`: send nothing (not a query, or no readable header).
    /// Every packet is counted for `/metrics` (query type, response code, time taken).
    pub fn answer_into(
        &self,
        snapshot: &Snapshot,
        packet: &[u8],
        transport: Transport,
        rng: &mut SmallRng,
        slot: &mut Slot,
    ) -> bool {
        self.metrics
            .observe(packet, transport, || {
                self.answer_uncounted(snapshot, packet, transport, rng, slot)
                    .then(|| slot.bytes())
            })
            .is_some()
    }

    fn answer_uncounted(
        &self,
        snapshot: &Snapshot,
        packet: &[u8],
        transport: Transport,
        rng: &mut SmallRng,
        slot: &mut Slot,
    ) -> bool {
        if fast::answer(
            &self.authority,
            snapshot,
            packet,
            transport,
            rng,
            &mut slot.scratch,
        ) {
            slot.fast = true;
            return true;
        }
        match respond(&self.authority, snapshot, packet, transport, rng) {
            Some(bytes) => {
                slot.reference = bytes;
                slot.fast = false;
                true
            }
            None => false,
        }
    }

    /// The answer in `slot` as it may go to `peer` over UDP, through the response-rate
    /// limiter: the answer, its truncated form, or nothing.
    pub fn rate_limited<'s>(&self, peer: std::net::IpAddr, slot: &'s mut Slot) -> Option<&'s [u8]> {
        let Slot {
            scratch,
            reference,
            fast,
            slip,
        } = slot;
        let answer: &[u8] = if *fast { scratch.answer() } else { reference };
        match &self.rrl {
            Some(rrl) => rrl.apply(peer, answer, slip),
            None => Some(answer),
        }
    }
}

/// Binds `workers` UDP sockets and one TCP listener on the same address. With port 0, picks
/// a port free for both.
pub fn bind(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    let mut last_error = None;
    for _ in 0..16 {
        let udp = super::udp::bind(addr, workers)?;
        let bound = match udp.first() {
            Some(socket) => socket.local_addr()?,
            None => return Err(std::io::Error::other("no UDP socket")),
        };
        match std::net::TcpListener::bind(bound) {
            Ok(tcp) => {
                tcp.set_nonblocking(true)?;
                return Ok((udp, TcpListener::from_std(tcp)?));
            }
            Err(e) if addr.port() == 0 => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
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
    let mut slot = Slot::default();
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
        let answered = {
            let snapshot = service.registry.snapshot_ref();
            service.answer_into(&snapshot, message, Transport::Tcp, &mut rng, &mut slot)
        };
        if !answered {
            continue;
        }
        let response = slot.bytes();
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
