//! A real local HTTP (and TCP) server for health checks to probe, which a test flips between
//! healthy, slow, 429, 500 and down, and which counts the requests it receives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Healthy = 0,
    /// Answers after 2 s (longer than any test timeout).
    Slow = 1,
    TooMany = 2,
    Error = 3,
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    hits: AtomicU64,
}

/// The server. Dropping it stops it.
pub struct Target {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

/// A minimal HTTP/1.1 server: reads request heads (no bodies: probes send none), answers by
/// mode, keeps connections alive. Written by hand so that going down closes every connection,
/// pooled keep-alive ones included.
fn serve(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = Arc::clone(&shared);
            connections.spawn(async move {
                let _ = connection(stream, shared).await;
            });
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
        // The JoinSet aborts every connection when this task is aborted and it is dropped.
    })
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        shared.hits.fetch_add(1, Ordering::SeqCst);
        let (status, body) = match shared.mode.load(Ordering::SeqCst) {
            0 => ("200 OK", "ok"),
            1 => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                ("200 OK", "late")
            }
            2 => ("429 Too Many Requests", "slow down"),
            _ => ("500 Internal Server Error", "broken"),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        reader.get_mut().write_all(response.as_bytes()).await?;
    }
}

impl Target {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let task = Some(serve(listener, Arc::clone(&shared)));
        Self { addr, shared, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are refused.
    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        if self.task.is_none() {
            let listener = TcpListener::bind(self.addr).await.expect("rebind target");
            self.task = Some(serve(listener, Arc::clone(&self.shared)));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
