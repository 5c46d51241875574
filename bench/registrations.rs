//! Registration throughput over HTTP keep-alive from 32 concurrent clients, with the durable
//! embedded store and memory-only, against the real release binary.
//!
//! Run: `cargo bench --bench registrations` (see bench/README.md). Bounded: each run lasts
//! `SECONDS` after a one-second warm-up, and talks only to 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
const SECONDS: u64 = 5;
/// Instances per client: registrations cycle over them (re-registrations count as writes).
const KEYS: usize = 64;

struct Server {
    child: Child,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_srvdns"))
        .args([
            "serve",
            "--dns-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--zones", "none", "--data-dir", data_dir])
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
        if let Some(http) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .and_then(|v| v.parse().ok())
        {
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Server { child, http };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("srvdns exited before serving");
}

async fn run(http: SocketAddr) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (done, errors, counting, stop) = (
            Arc::clone(&done),
            Arc::clone(&errors),
            Arc::clone(&counting),
            Arc::clone(&stop),
        );
        tasks.push(tokio::spawn(async move {
            let http_client = reqwest::Client::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = n % KEYS;
                n += 1;
                let url = format!(
                    "http://{http}/v1/services/bench{}/instances/c{client}-{key}",
                    client % 8
                );
                let body = format!(
                    r#"{{"address":"10.{}.{}.{}","port":8080,"tags":["v2"],"meta":{{"n":"{n}"}}}}"#,
                    client,
                    key / 250,
                    key % 250 + 1
                );
                let ok = matches!(
                    http_client.put(&url).body(body).send().await,
                    Ok(response) if response.status() == 200
                );
                if counting.load(Ordering::Relaxed) {
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(SECONDS)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    )
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = std::env::temp_dir().join(format!("srvdns-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    println!("| store | registrations/s | errors |");
    println!("|---|---|---|");
    for (name, data_dir) in [
        ("durable (redb, fsync per batch)", dir_arg.as_str()),
        ("memory only", "none"),
    ] {
        let server = start(data_dir);
        let (rate, errors) = runtime.block_on(run(server.http));
        println!("| {name} | {rate:.0} | {errors} |");
        drop(server);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
