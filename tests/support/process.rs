//! The real `srvdns serve` binary as a child process, on ephemeral loopback ports, for tests
//! that drive it with outside programs (schemathesis, unbound, dnsmasq, dig).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `srvdns serve` and the addresses from its start line.
pub struct Srvdns {
    child: Child,
    pub dns: SocketAddr,
    pub http: SocketAddr,
    /// Log lines after the start line.
    pub lines: mpsc::Receiver<String>,
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.parse().ok())
}

impl Srvdns {
    /// Starts `srvdns serve --dns-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 ARGS…`,
    /// memory-only, in `cwd`, and waits for its start line.
    pub fn start(cwd: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_srvdns"))
            .args(["serve", "--dns-listen", "127.0.0.1:0"])
            .args(["--http-listen", "127.0.0.1:0", "--data-dir", "none"])
            .args(args)
            .env("RUST_LOG", "info")
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("srvdns starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                let status = child.wait();
                panic!("srvdns did not log its start line in time (exit: {status:?})");
            };
            if line.contains("srvdns serving") {
                return Self {
                    dns: field(&line, "dns=").expect("dns= in the start line"),
                    http: field(&line, "http=").expect("http= in the start line"),
                    child,
                    lines: rx,
                };
            }
        }
    }
}

impl Drop for Srvdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory under the system's temp dir, emptied first.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("srvdns-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
