//! Shared test support: a real srvdns server on ephemeral loopback ports, a DNS client
//! (hickory-proto messages over real UDP and TCP sockets) and an HTTP client (reqwest).
//! `target` is a flippable local HTTP/TCP server for health checks to probe.
#![allow(dead_code)]

pub mod process;
pub mod target;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use reqwest::StatusCode;
use serde_json::Value;
use srvdns::config::{Config, ZonesSource};
use srvdns::serve::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long any single network exchange may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The repository's example zones.
pub fn example_zones() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("zones")
}

/// A configuration for tests: loopback, ephemeral ports, memory only, the example zones.
pub fn test_config() -> Config {
    Config {
        dns_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        zones: ZonesSource::Dir(example_zones()),
        data_dir: None,
        ..Config::default()
    }
}

/// A running server plus clients for it.
pub struct TestServer {
    pub server: Option<Server>,
    pub dns: SocketAddr,
    pub http: SocketAddr,
    pub client: reqwest::Client,
}

/// An HTTP answer: status, the index header, and the body as JSON (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub index: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let server = Server::start(config).await.expect("server starts");
        Self {
            dns: server.dns_addr,
            http: server.http_addr,
            server: Some(server),
            client: reqwest::Client::new(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Stops the server and starts a new, empty one on the same DNS and HTTP addresses, as
    /// a registry restart looks to its clients.
    pub async fn restart(self) -> Self {
        let (dns, http) = (self.dns, self.http);
        self.stop().await;
        Self::start_with(Config {
            dns_listen: dns,
            http_listen: http,
            ..test_config()
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = tokio::time::timeout(IO_TIMEOUT, request.send())
            .await
            .expect("HTTP answer in time")
            .expect("HTTP request");
        let status = response.status();
        let headers = response.headers().clone();
        let index = headers
            .get("x-srvdns-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.bytes().await.expect("HTTP body");
        let json = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("body is not JSON ({e}): {body:?}"))
        };
        Reply {
            status,
            index,
            headers,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(self.client.put(self.url(path)).json(&body)).await
    }

    pub async fn put_raw(&self, path: &str, body: &str) -> Reply {
        self.send(self.client.put(self.url(path)).body(body.to_owned()))
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Registers an instance and asserts it was accepted.
    pub async fn register(&self, service: &str, id: &str, body: Value) -> Value {
        let reply = self
            .put(&format!("/v1/services/{service}/instances/{id}"), body)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "register: {}", reply.json);
        reply.json
    }

    /// A UDP query without EDNS.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Message {
        self.query_message(&query(name, rtype, None), Transport::Udp)
            .await
    }

    /// A TCP query without EDNS.
    pub async fn query_tcp(&self, name: &str, rtype: RecordType) -> Message {
        self.query_message(&query(name, rtype, None), Transport::Tcp)
            .await
    }

    pub async fn query_message(&self, message: &Message, transport: Transport) -> Message {
        let bytes = message.to_vec().expect("encode query");
        let answer = match transport {
            Transport::Udp => self.exchange_udp(&bytes).await,
            Transport::Tcp => self.exchange_tcp(&bytes).await,
        }
        .expect("an answer");
        let response = Message::from_vec(&answer).expect("a well-formed answer");
        assert_eq!(response.metadata.id, message.metadata.id, "answer ID");
        response
    }

    /// Sends raw bytes over UDP; `None` when no answer comes within a second.
    pub async fn exchange_udp(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        udp_exchange(self.dns, bytes, Duration::from_secs(1)).await
    }

    /// Sends one length-prefixed message over a new TCP connection.
    pub async fn exchange_tcp(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut stream = TcpStream::connect(self.dns).await.expect("tcp connect");
        tcp_exchange(&mut stream, bytes).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub async fn udp_exchange(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
    socket.send_to(bytes, server).await.expect("udp send");
    let mut buffer = vec![0u8; 65535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await {
        Ok(Ok((len, _))) => Some(buffer[..len].to_vec()),
        _ => None,
    }
}

pub async fn tcp_exchange(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.ok()?;
    let mut prefix = [0u8; 2];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut prefix))
        .await
        .ok()?
        .ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(answer)
}

/// A query message with a random ID, RD clear, optional EDNS payload size.
pub fn query(name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = false;
    message
        .queries
        .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.edns = Some(edns);
    }
    message
}

/// Records of a section as `"<name> <ttl> <type> <data>"` strings, sorted, for whole-answer
/// assertions.
pub fn rrs(records: &[Record]) -> Vec<String> {
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    lines.sort();
    lines
}

/// SRV records of a section in answer order, as `(priority, weight, port, target)`.
pub fn srvs(records: &[Record]) -> Vec<(u16, u16, u16, String)> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.priority, srv.weight, srv.port, srv.target.to_string())),
            _ => None,
        })
        .collect()
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A CA, and a server certificate it signed for localhost and 127.0.0.1, as PEM files.
pub fn certificates(dir: &std::path::Path) -> (srvdns::config::TlsFiles, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "srvdns test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let files = srvdns::config::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (files, ca.pem())
}
