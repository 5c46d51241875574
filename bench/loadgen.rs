//! Load helpers for `bench/dns_vs_knot.py`, in Rust so that they cost the load core little:
//!
//! - `churn --http ADDR --dns ADDR --rate N --seconds S`: registers and deregisters instances
//!   of 50 churn services at N operations/s over HTTP keep-alive; after every acknowledged
//!   deregistration it asks DNS at once, and counts an answer that still shows the removed
//!   address as stale.
//! - `latency --dns ADDR --rate N --seconds S --names FILE`: sends queries from FILE (one
//!   `name type` per line) at N/s on one socket and measures each answer's round trip.
//!
//! Both print one JSON object. Bounded by `--seconds`; loopback only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

fn arg(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message
        .queries
        .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
    message.to_vec().expect("encode")
}

async fn addresses(socket: &UdpSocket, dns: SocketAddr, name: &str) -> Option<Vec<String>> {
    let id: u16 = rand::random();
    socket
        .send_to(&query(id, name, RecordType::A), dns)
        .await
        .ok()?;
    let mut buffer = vec![0u8; 4096];
    loop {
        let (len, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
        let answer = Message::from_vec(&buffer[..len]).ok()?;
        if answer.metadata.id != id {
            continue;
        }
        return Some(
            answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0.to_string()),
                    _ => None,
                })
                .collect(),
        );
    }
}

async fn churn(http: SocketAddr, dns: SocketAddr, rate: f64, seconds: f64) {
    let client = reqwest::Client::new();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let (mut ops, mut stale, mut checked, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut present: Vec<(String, u64, String)> = Vec::new();
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        if present.len() < 200 && (n % 2 == 1 || present.is_empty()) {
            let service = format!("churn{:02}", n % 50);
            let address = format!("10.200.{}.{}", (n / 250) % 250, n % 250 + 1);
            let ok = client
                .put(format!(
                    "http://{http}/v1/services/{service}/instances/c{n}"
                ))
                .body(format!(r#"{{"address":"{address}","port":80}}"#))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                present.push((service, n, address));
            } else {
                errors += 1;
            }
        } else {
            let (service, i, address) = present.swap_remove((n as usize * 7919) % present.len());
            let ok = client
                .delete(format!(
                    "http://{http}/v1/services/{service}/instances/c{i}"
                ))
                .send()
                .await
                .is_ok_and(|r| r.status() == 204);
            if !ok {
                errors += 1;
            }
            if let Some(answer) =
                addresses(&socket, dns, &format!("{service}.service.local.")).await
            {
                checked += 1;
                if answer.contains(&address) {
                    stale += 1;
                }
            }
        }
        ops += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    println!(
        r#"{{"ops": {ops}, "stale": {stale}, "checked": {checked}, "errors": {errors}, "seconds": {seconds}}}"#
    );
}

async fn latency(dns: SocketAddr, rate: f64, seconds: f64, names: &str) {
    let list: Vec<(String, RecordType)> = std::fs::read_to_string(names)
        .expect("names file")
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?.to_owned();
            let rtype = match parts.next()? {
                "AAAA" => RecordType::AAAA,
                "SRV" => RecordType::SRV,
                _ => RecordType::A,
            };
            Some((name, rtype))
        })
        .collect();
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let sent: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
    let rtts: Arc<Mutex<Vec<f64>>> = Arc::default();
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (socket, sent, rtts, received) = (
            Arc::clone(&socket),
            Arc::clone(&sent),
            Arc::clone(&rtts),
            Arc::clone(&received),
        );
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok((len, _)) = socket.recv_from(&mut buffer).await {
                let now = Instant::now();
                if len < 2 {
                    continue;
                }
                let id = u16::from_be_bytes([buffer[0], buffer[1]]);
                if let Some(at) = sent.lock().await.remove(&id) {
                    rtts.lock().await.push((now - at).as_secs_f64() * 1000.0);
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut count = 0u64;
    while Instant::now() < end {
        let (name, rtype) = &list[count as usize % list.len()];
        let id = (count % 65536) as u16;
        let packet = query(id, name, *rtype);
        sent.lock().await.insert(id, Instant::now());
        let _ = socket.send_to(&packet, dns).await;
        count += 1;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.abort();
    let mut rtts = rtts.lock().await.clone();
    rtts.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        r#"{{"sent": {count}, "answered": {}, "p50_ms": {:.4}, "p99_ms": {:.4}, "max_ms": {:.4}}}"#,
        received.load(Ordering::Relaxed),
        pick(0.50),
        pick(0.99),
        pick(1.0)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mode = args.get(1).map(String::as_str).unwrap_or_default();
    let rate: f64 = arg(&args, "--rate").parse().expect("--rate");
    let seconds: f64 = arg(&args, "--seconds").parse().expect("--seconds");
    let dns: SocketAddr = arg(&args, "--dns").parse().expect("--dns");
    match mode {
        "churn" => {
            let http: SocketAddr = arg(&args, "--http").parse().expect("--http");
            runtime.block_on(churn(http, dns, rate, seconds));
        }
        "latency" => runtime.block_on(latency(dns, rate, seconds, &arg(&args, "--names"))),
        other => panic!("unknown mode {other:?}: churn or latency"),
    }
}
