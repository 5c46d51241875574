//! DNS over UDP: dedicated worker threads, one `SO_REUSEPORT` socket each, batched system
//! calls.
//!
//! Each worker receives up to [`BATCH`] datagrams with one `recvmmsg(2)` (returning as soon
//! as one is there), answers them all from one snapshot load, and sends the answers with one
//! `sendmmsg(2)`. The kernel spreads clients over the workers' sockets. Nothing here awaits:
//! the workers are plain threads, so the query path never waits behind HTTP or health work on
//! the async runtime, and costs no task wake-ups.
//!
//! Workers poll a stop flag between batches (the socket has a short read timeout), so
//! stopping the server ends them within [`POLL`].

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use socket2::{Domain, Protocol, Socket, Type};

use super::server::DnsService;

/// Datagrams handled per system call at most.
pub const BATCH: usize = 32;
/// The largest query read; longer datagrams are cut (and then answered FORMERR or not at all).
const MAX_QUERY: usize = 4096;
/// How often an idle worker looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// `workers` UDP sockets bound to `addr` with `SO_REUSEPORT` (with port 0, the first one picks
/// the port and the others share it).
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(workers.max(1));
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.set_read_timeout(Some(POLL))?;
        // The receive buffer stays at the system default (208 KiB on Linux): a 4 MiB buffer
        // was measured to turn load bursts into queueing delay (p99 1.17 ms instead of
        // 0.47 ms at half the maximum rate, bench/RESULTS.md) with no gain in throughput.
        let socket: UdpSocket = socket.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Starts one worker thread per socket; they run until `stop` is set.
pub fn spawn(
    sockets: Vec<UdpSocket>,
    service: DnsService,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let service = service.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("srvdns-udp-{i}"))
                .spawn(move || worker(&socket, &service, &stop))
        })
        .collect()
}

fn worker(socket: &UdpSocket, service: &DnsService, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut buffers: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_QUERY]).collect();
    let mut slots: Vec<super::server::Slot> = (0..BATCH).map(|_| Default::default()).collect();
    let mut received: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut receive_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    while !stop.load(Ordering::Relaxed) {
        received.clear();
        {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|buffer| [IoSliceMut::new(buffer)])
                .collect();
            match recvmmsg(
                fd,
                &mut receive_headers,
                slices.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(messages) => {
                    received.extend(messages.map(|m| (m.bytes, m.address)));
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    continue;
                }
            }
        }
        // Answer the batch from one snapshot.
        let mut answered = [false; BATCH];
        {
            let snapshot = service.registry.snapshot_ref();
            for (i, (len, _)) in received.iter().enumerate() {
                let query = &buffers[i][..(*len).min(MAX_QUERY)];
                answered[i] = service.answer_into(
                    &snapshot,
                    query,
                    super::answer::Transport::Udp,
                    &mut rng,
                    &mut slots[i],
                );
            }
        }
        // Through the response-rate limiter, per source: the answer, its truncated form, or
        // nothing.
        let mut addresses: Vec<Option<SockaddrStorage>> = Vec::with_capacity(received.len());
        let mut slices: Vec<[IoSlice<'_>; 1]> = Vec::with_capacity(received.len());
        for ((slot, (_, address)), answered) in slots.iter_mut().zip(received.iter()).zip(answered)
        {
            let Some(peer) = address.as_ref().and_then(peer_ip).filter(|_| answered) else {
                continue;
            };
            if let Some(bytes) = service.rate_limited(peer, slot) {
                slices.push([IoSlice::new(bytes)]);
                addresses.push(*address);
            }
        }
        if slices.is_empty() {
            continue;
        }
        let mut sent = 0;
        // sendmmsg may send fewer than asked (a full socket buffer): send the rest.
        while sent < slices.len() {
            match sendmmsg(
                fd,
                &mut send_headers,
                slices[sent..].iter(),
                &addresses[sent..],
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let n = results.count();
                    if n == 0 {
                        break;
                    }
                    sent += n;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // One unreachable peer must not stop the others' answers.
                    tracing::debug!(error = %e, "udp send failed");
                    sent += 1;
                }
            }
        }
    }
}

fn peer_ip(address: &SockaddrStorage) -> Option<std::net::IpAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(std::net::IpAddr::V4(v4.ip()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| std::net::IpAddr::V6(v6.ip()))
}
