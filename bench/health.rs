//! Active health checks at scale (health-check issue): 10,000 instances with HTTP checks at a
//! 1 s interval against local HTTP servers, and the time from a target starting to fail to
//! DNS no longer returning it.
//!
//! Run: `cargo bench --bench health` (see bench/README.md). It starts the release `srvdns`
//! (`--data-dir none`), four local HTTP targets in this process, registers the instances over
//! HTTP, lets the checks run for `SECONDS`, and reports: probes per second, srvdns CPU (share
//! of one core, from /proc), probe lateness p50/p99/max (from `/v1/health`, cumulative since
//! start, registration burst included), and the detection time of a failing target. Bounded
//! in time, loopback only.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

const INSTANCES: usize = 10_000;
const SERVICES: usize = 100;
const TARGETS: usize = 4;
const SECONDS: u64 = 20;
const INTERVAL: &str = "1s";
const TIMEOUT: &str = "2s";
const FAILURES_BEFORE_CRITICAL: u64 = 3;

struct Server {
    child: Child,
    http: SocketAddr,
    dns: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_srvdns() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_srvdns"))
        .args([
            "serve",
            "--dns-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--zones",
            "none",
            "--data-dir",
            "none",
            "--dns-workers",
            "1",
        ])
        .env("RUST_LOG", "warn,srvdns::serve=info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start srvdns");
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no stdout");
    };
    let mut lines = BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        if let (Some(http), Some(dns)) = (field("http="), field("dns=")) {
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Server { child, http, dns };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("srvdns exited before serving");
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

#[derive(Default)]
struct Targets {
    failing: RwLock<HashSet<usize>>,
    hits: AtomicU64,
}

async fn health(State(targets): State<Arc<Targets>>, Path(i): Path<usize>) -> StatusCode {
    targets.hits.fetch_add(1, Ordering::Relaxed);
    let failing = targets
        .failing
        .read()
        .map(|set| set.contains(&i))
        .unwrap_or(false);
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// The A records of `name`, over TCP (a service of 100 instances does not fit in UDP).
async fn a_records(dns: SocketAddr, name: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.queries.push(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let bytes = message.to_vec().expect("encode");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(dns).await.ok()?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await.ok()?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await.ok()?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut answer).await.ok()?;
        Message::from_vec(&answer).ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(Some(answer)) => answer.answers.iter().map(|r| r.data.to_string()).collect(),
        _ => Vec::new(),
    }
}

async fn run() {
    let targets = Arc::new(Targets::default());
    let mut ports = Vec::new();
    for _ in 0..TARGETS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind target");
        ports.push(listener.local_addr().expect("addr").port());
        let app = Router::new()
            .route("/health/{i}", get(health))
            .with_state(Arc::clone(&targets));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let server = start_srvdns();
    let (http, dns) = (server.http, server.dns);

    // Register over 32 keep-alive connections.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..32 {
        let ports = ports.clone();
        tasks.push(tokio::spawn(async move {
            let http_client = reqwest::Client::new();
            for i in (client..INSTANCES).step_by(32) {
                let service = format!("hc{:03}", i % SERVICES);
                let port = ports[i % ports.len()];
                let body = format!(
                    r#"{{"address":"10.{}.{}.{}","port":80,"check":{{"type":"http","url":"http://127.0.0.1:{port}/health/{i}","interval":"{INTERVAL}","timeout":"{TIMEOUT}"}}}}"#,
                    i / 62500,
                    (i / 250) % 250,
                    i % 250 + 1
                );
                let response = http_client
                    .put(format!("http://{http}/v1/services/{service}/instances/i{i}"))
                    .body(body)
                    .send()
                    .await
                    .expect("register");
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.expect("registration task");
    }
    let registered_in = started.elapsed();

    // Steady state.
    let pid = server.child.id();
    let cpu_before = cpu_seconds(pid);
    let hits_before = targets.hits.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    let elapsed = window.elapsed().as_secs_f64();
    let cpu_share = (cpu_seconds(pid) - cpu_before) / elapsed;
    let probes_per_second = (targets.hits.load(Ordering::Relaxed) - hits_before) as f64 / elapsed;
    let health: serde_json::Value = reqwest::get(format!("http://{http}/v1/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("health json");

    // Detection: instance 0 of service hc000 starts failing.
    let victim_address = "10.0.0.1";
    let name = "hc000.service.local.";
    assert!(
        a_records(dns, name)
            .await
            .iter()
            .any(|a| a == victim_address)
    );
    let failing_since = Instant::now();
    if let Ok(mut failing) = targets.failing.write() {
        failing.insert(0);
    }
    let detection = loop {
        if !a_records(dns, name)
            .await
            .iter()
            .any(|a| a == victim_address)
        {
            break failing_since.elapsed();
        }
        if failing_since.elapsed() > Duration::from_secs(30) {
            panic!("the failing instance never left DNS");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let bound = 1.0 * FAILURES_BEFORE_CRITICAL as f64 + 2.0;

    let lateness = &health["checks"]["lateness_ms"];
    let recent = &health["checks"]["recent_lateness_ms"];
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| instances with HTTP checks (1 s interval) | {INSTANCES} ({} probed) |",
        health["checks"]["probed_instances"]
    );
    println!("| registered in | {:.2} s |", registered_in.as_secs_f64());
    println!("| probes/s served by the targets | {probes_per_second:.0} |");
    println!("| srvdns CPU | {:.0}% of one core |", cpu_share * 100.0);
    println!(
        "| probe lateness p50 / p99 / max, steady state (last 10 s window) | {} / {} / {} ms |",
        recent["p50"], recent["p99"], recent["max"]
    );
    println!(
        "| probe lateness p50 / p99 / max, since start (registration burst included) | {} / {} / {} ms |",
        lateness["p50"], lateness["p99"], lateness["max"]
    );
    println!(
        "| detection time (interval 1 s × failures_before_critical 3 + timeout 2 s = {bound:.0} s bound) | {:.2} s |",
        detection.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}
