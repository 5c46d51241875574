//! Probes: one HTTP request or one TCP connect, with a timeout, turned into an [`Outcome`] and
//! a one-line output for operators (`HTTP 200 OK in 3 ms`, `timed out after 1s`).
//!
//! HTTP probes share one connection pool (keep-alive), so a target probed every second does
//! not pay a new connection each time. The body is read (up to a cap) so the connection can be
//! reused; its content is not judged.

use std::time::{Duration, Instant};

use reqwest::Method;
use tokio::io::AsyncWriteExt;

use super::transitions::Outcome;

/// The most of a response body read for connection reuse; larger bodies close the connection.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    pub output: String,
    pub latency: Duration,
}

/// What to probe, resolved from a check and its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        tls_skip_verify: bool,
    },
    /// `host:port`.
    Tcp { address: String },
}

/// Runs probes. Cheap to clone; clones share the connection pools.
#[derive(Debug, Clone)]
pub struct Prober {
    verified: reqwest::Client,
    unverified: reqwest::Client,
}

impl Prober {
    pub fn new() -> Result<Self, reqwest::Error> {
        let build = |skip_verify: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("srvdns-health-check/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(8)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
                .danger_accept_invalid_certs(skip_verify)
                .build()
        };
        Ok(Self {
            verified: build(false)?,
            unverified: build(true)?,
        })
    }

    /// Runs one probe within `timeout`.
    pub async fn probe(&self, target: &Target, timeout: Duration) -> ProbeResult {
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, self.run(target)).await;
        let latency = started.elapsed();
        let (outcome, output) = match result {
            Ok((outcome, output)) => (outcome, format!("{output} in {} ms", latency.as_millis())),
            Err(_) => (
                Outcome::Failure,
                format!("timed out after {}", humantime::format_duration(timeout)),
            ),
        };
        ProbeResult {
            outcome,
            output,
            latency,
        }
    }

    async fn run(&self, target: &Target) -> (Outcome, String) {
        match target {
            Target::Http {
                url,
                method,
                headers,
                tls_skip_verify,
            } => self.http(url, method, headers, *tls_skip_verify).await,
            Target::Tcp { address } => tcp(address).await,
        }
    }

    async fn http(
        &self,
        url: &str,
        method: &str,
        headers: &[(String, String)],
        tls_skip_verify: bool,
    ) -> (Outcome, String) {
        let client = if tls_skip_verify {
            &self.unverified
        } else {
            &self.verified
        };
        let method = match Method::from_bytes(method.as_bytes()) {
            Ok(method) => method,
            Err(_) => return (Outcome::Failure, format!("bad HTTP method {method:?}")),
        };
        let mut request = client.request(method.clone(), url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                return (
                    Outcome::Failure,
                    format!("HTTP {method} {url}: {}", error_chain(&e)),
                );
            }
        };
        let status = response.status();
        // Drain the body (bounded) so the pooled connection can be reused.
        let mut read = 0usize;
        while read <= MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        let outcome = if status.is_success() {
            Outcome::Success
        } else if status.as_u16() == 429 {
            Outcome::Warning
        } else {
            Outcome::Failure
        };
        (outcome, format!("HTTP {method} {url}: {status}"))
    }
}

/// The error and its causes on one line (reqwest's top-level message alone is vague).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn tcp(address: &str) -> (Outcome, String) {
    match tokio::net::TcpStream::connect(address).await {
        Ok(mut stream) => {
            let _ = stream.shutdown().await;
            (Outcome::Success, format!("TCP connect {address}: ok"))
        }
        Err(e) => (Outcome::Failure, format!("TCP connect {address}: {e}")),
    }
}
