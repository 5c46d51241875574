//! A bounded soak: the real `srvdns serve` binary (durable store) under mixed load for
//! `SRVDNS_SOAK_SECONDS` (default 60 s): UDP and TCP queries, registration churn, health
//! flips and blocking reads, all at once. It passes when
//!
//! - every DNS query got a well-formed answer (NOERROR or NXDOMAIN, the query's ID) in time;
//! - every HTTP write was acknowledged (2xx);
//! - the server's resident memory (VmRSS in /proc/PID/status) grew by at most
//!   [`RSS_GROWTH_BOUND_MIB`] between the end of the warm-up (a fifth of the run) and the end:
//!   the registry's size is bounded by the key pool, so memory must level off;
//! - every acknowledged write is present at the end, and again after a restart on the same
//!   data directory.
//!
//! `#[ignore]`d (it takes a minute); CI's `cargo test -- --include-ignored` runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How much the server's RSS may grow after the warm-up, in MiB.
const RSS_GROWTH_BOUND_MIB: u64 = 48;
/// Services with registration churn, and instance IDs per service.
const CHURN_SERVICES: usize = 8;
const CHURN_IDS: usize = 25;

struct Server {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.parse().ok())
}

fn start(data_dir: &Path, dns: &str, http: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_srvdns"))
        .args([
            "serve",
            "--zones",
            "none",
            "--dns-listen",
            dns,
            "--http-listen",
            http,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn,srvdns::serve=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("srvdns starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let status = child.wait();
            panic!("srvdns did not log its start line in time (exit: {status:?})");
        };
        if line.contains("srvdns serving") {
            return Server {
                dns: field(&line, "dns=").expect("dns="),
                http: field(&line, "http=").expect("http="),
                child,
            };
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

#[derive(Default)]
struct Errors {
    dns: AtomicU64,
    http: AtomicU64,
    queries: AtomicU64,
    writes: AtomicU64,
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message
        .queries
        .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
    message
}

fn answer_ok(message: &Message, bytes: &[u8]) -> bool {
    match Message::from_vec(bytes) {
        Ok(answer) => {
            answer.metadata.id == message.metadata.id
                && matches!(
                    answer.metadata.response_code,
                    ResponseCode::NoError | ResponseCode::NXDomain
                )
        }
        Err(_) => false,
    }
}

async fn dns_load(dns: SocketAddr, errors: Arc<Errors>, until: Instant, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    let mut buffer = vec![0u8; 4096];
    let mut tcp: Option<TcpStream> = None;
    while Instant::now() < until {
        let service = if rng.random_bool(0.5) {
            format!("stable{}", rng.random_range(0..4))
        } else {
            format!("churn{}", rng.random_range(0..CHURN_SERVICES))
        };
        let (name, rtype) = match rng.random_range(0..3) {
            0 => (format!("{service}.service.local."), RecordType::A),
            1 => (format!("_{service}._tcp.service.local."), RecordType::SRV),
            _ => (format!("{service}.service.local."), RecordType::AAAA),
        };
        let message = query(&name, rtype);
        let bytes = message.to_vec().expect("encode");
        let ok = if rng.random_bool(0.9) {
            socket.send_to(&bytes, dns).await.expect("send");
            match tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer)).await
            {
                Ok(Ok((len, _))) => answer_ok(&message, &buffer[..len]),
                _ => false,
            }
        } else {
            // TCP, on a connection kept between queries (reopened when the server closes it).
            let mut attempt = 0;
            loop {
                attempt += 1;
                if tcp.is_none() {
                    tcp = TcpStream::connect(dns).await.ok();
                }
                let Some(stream) = tcp.as_mut() else {
                    break false;
                };
                match tcp_exchange(stream, &bytes).await {
                    Some(answer) => break answer_ok(&message, &answer),
                    None if attempt < 2 => tcp = None,
                    None => break false,
                }
            }
        };
        errors.queries.fetch_add(1, Ordering::Relaxed);
        if !ok {
            errors.dns.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn tcp_exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.ok()?;
    let mut prefix = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut prefix))
        .await
        .ok()?
        .ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut answer).await.ok()?;
    Some(answer)
}

/// Registers and deregisters instances of `services`; returns what it was told is there.
async fn churn(
    http: SocketAddr,
    services: Vec<usize>,
    errors: Arc<Errors>,
    until: Instant,
    seed: u64,
) -> BTreeMap<String, BTreeSet<String>> {
    let client = reqwest::Client::new();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut present: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while Instant::now() < until {
        let service = format!("churn{}", services[rng.random_range(0..services.len())]);
        let id = format!("i{}", rng.random_range(0..CHURN_IDS));
        let url = format!("http://{http}/v1/services/{service}/instances/{id}");
        let ids = present.entry(service).or_default();
        let register = !ids.contains(&id) || rng.random_bool(0.3);
        let result = if register {
            let body = json!({
                "address": format!("10.{}.{}.{}", rng.random_range(0..4), rng.random_range(0..250), rng.random_range(1..250)),
                "port": rng.random_range(1..65535),
                "tags": ["soak", format!("t{}", rng.random_range(0..5))],
                "meta": {"round": rng.random::<u32>().to_string()},
            });
            client.put(&url).json(&body).send().await
        } else {
            client.delete(&url).send().await
        };
        errors.writes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(response) if response.status().is_success() => {
                if register {
                    ids.insert(id);
                } else {
                    ids.remove(&id);
                }
            }
            Ok(response) => {
                eprintln!(
                    "write refused: {} {:?}",
                    response.status(),
                    response.text().await
                );
                errors.http.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("write failed: {e}");
                errors.http.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    present
}

/// Flips the status of the stable instances between passing, warning and critical.
async fn health_flips(http: SocketAddr, errors: Arc<Errors>, until: Instant, seed: u64) {
    let client = reqwest::Client::new();
    let mut rng = SmallRng::seed_from_u64(seed);
    while Instant::now() < until {
        let service = format!("stable{}", rng.random_range(0..4));
        // Instance 0 of each stable service stays passing, so the service never vanishes.
        let id = format!("s{}", rng.random_range(1..5));
        let status = ["passing", "warning", "critical"][rng.random_range(0..3)];
        let url = format!("http://{http}/v1/services/{service}/instances/{id}/status");
        let result = client
            .put(&url)
            .json(&json!({"status": status, "output": format!("flip {}", rng.random::<u16>())}))
            .send()
            .await;
        errors.writes.fetch_add(1, Ordering::Relaxed);
        if !result.is_ok_and(|r| r.status().is_success()) {
            errors.http.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Blocking reads on a churning service, as watchers (consul-template, the CLI) do.
async fn watcher(http: SocketAddr, errors: Arc<Errors>, until: Instant) {
    let client = reqwest::Client::new();
    let mut index = 0u64;
    while Instant::now() < until {
        let url = format!("http://{http}/v1/services/churn0?index={index}&wait=2s");
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() || response.status() == 404 => {
                index = response
                    .headers()
                    .get("x-srvdns-index")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(index);
            }
            _ => {
                errors.http.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn registered(http: SocketAddr) -> BTreeMap<String, BTreeSet<String>> {
    let client = reqwest::Client::new();
    let mut all = BTreeMap::new();
    for s in 0..CHURN_SERVICES {
        let service = format!("churn{s}");
        let response = client
            .get(format!("http://{http}/v1/services/{service}"))
            .send()
            .await
            .expect("read");
        let ids: BTreeSet<String> = if response.status() == 404 {
            BTreeSet::new()
        } else {
            let body: Value = response.json().await.expect("json");
            body["instances"]
                .as_array()
                .expect("instances")
                .iter()
                .map(|i| i["id"].as_str().expect("id").to_owned())
                .collect()
        };
        all.insert(service, ids);
    }
    all
}

fn data_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("srvdns-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute of load; CI includes it"]
async fn soak_mixed_load() {
    let seconds: u64 = std::env::var("SRVDNS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = data_dir();
    let server = start(&dir, "127.0.0.1:0", "127.0.0.1:0");
    let (dns, http) = (server.dns, server.http);
    let client = reqwest::Client::new();
    for s in 0..4 {
        for i in 0..5 {
            let response = client
                .put(format!(
                    "http://{http}/v1/services/stable{s}/instances/s{i}"
                ))
                .json(&json!({"address": format!("10.200.{s}.{}", i + 1), "port": 80}))
                .send()
                .await
                .expect("register");
            assert!(response.status().is_success());
        }
    }

    let start_time = Instant::now();
    let until = start_time + Duration::from_secs(seconds);
    let errors = Arc::new(Errors::default());
    let mut load = Vec::new();
    for seed in 0..3 {
        load.push(tokio::spawn(dns_load(
            dns,
            Arc::clone(&errors),
            until,
            seed,
        )));
    }
    load.push(tokio::spawn(health_flips(
        http,
        Arc::clone(&errors),
        until,
        10,
    )));
    load.push(tokio::spawn(watcher(http, Arc::clone(&errors), until)));
    // Each churn task owns its services, so what it was told is the truth for them.
    let halves = [
        (0..CHURN_SERVICES / 2).collect::<Vec<_>>(),
        (CHURN_SERVICES / 2..CHURN_SERVICES).collect(),
    ];
    let churners: Vec<_> = halves
        .into_iter()
        .enumerate()
        .map(|(n, services)| {
            tokio::spawn(churn(
                http,
                services,
                Arc::clone(&errors),
                until,
                20 + n as u64,
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(seconds / 5)).await;
    let pid = server.child.id();
    let rss_warm = rss_kib(pid);
    let mut rss_peak = rss_warm;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    for task in load {
        task.await.expect("load task");
    }
    let mut expected = BTreeMap::new();
    for task in churners {
        expected.extend(task.await.expect("churn task"));
    }
    let rss_end = rss_kib(pid);
    let queries = errors.queries.load(Ordering::Relaxed);
    let writes = errors.writes.load(Ordering::Relaxed);
    eprintln!(
        "soak {seconds}s: {queries} queries, {writes} writes; RSS {} MiB after warm-up, {} MiB \
         peak, {} MiB at the end",
        rss_warm / 1024,
        rss_peak / 1024,
        rss_end / 1024
    );
    assert!(queries > 1000 && writes > 500, "too little load");
    assert_eq!(errors.dns.load(Ordering::Relaxed), 0, "DNS errors");
    assert_eq!(errors.http.load(Ordering::Relaxed), 0, "HTTP errors");
    let growth_mib = rss_peak.saturating_sub(rss_warm) / 1024;
    assert!(
        growth_mib <= RSS_GROWTH_BOUND_MIB,
        "RSS grew by {growth_mib} MiB (bound {RSS_GROWTH_BOUND_MIB} MiB)"
    );
    for s in 0..CHURN_SERVICES {
        expected.entry(format!("churn{s}")).or_default();
    }
    assert_eq!(registered(http).await, expected, "acknowledged writes");

    // Every acknowledged write survives a restart on the same data directory.
    drop(server);
    let server = start(&dir, "127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(
        registered(server.http).await,
        expected,
        "acknowledged writes after a restart"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
