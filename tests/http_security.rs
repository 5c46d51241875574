//! The HTTP API on a shared network: tokens (the admin token, `--token-reads`, per-service
//! tokens from a token file) on the native and the Consul-compatible endpoints, the refusal
//! to serve a non-loopback address without a token, TLS with a generated certificate and a
//! real client, the limits on what clients send, and admission control against slow and
//! numerous clients. Everything over real sockets.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use srvdns::config::{Config, ServeArgs, TlsFiles};
use srvdns::http::auth::TokenFile;
use support::{Reply, TestServer, certificates, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN_FILE: &str = r#"
[[token]]
name = "payments team"
token = "pay-token-0123456789"
services = ["payments", "pay-*"]

[[token]]
name = "web team"
token = "web-token-0123456789"
services = ["web"]
"#;
const ADMIN: &str = "admin-token-0123456789";
const PAY: &str = "pay-token-0123456789";
const WEB: &str = "web-token-0123456789";

fn assert_error(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.json);
    let message = reply.json["error"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

async fn with_token(server: &TestServer, request: reqwest::RequestBuilder, token: &str) -> Reply {
    server.send(request.bearer_auth(token)).await
}

async fn token_server(reads: bool) -> TestServer {
    let mut config = test_config();
    config.token = Some(ADMIN.into());
    config.token_file = Some(TokenFile::parse(TOKEN_FILE).unwrap());
    config.token_reads = reads;
    TestServer::start_with(config).await
}

fn instance(service: &str, id: &str) -> String {
    format!("/v1/services/{service}/instances/{id}")
}

#[tokio::test]
async fn per_service_tokens_on_the_native_api() {
    let server = token_server(false).await;
    let c = &server.client;
    let body = json!({"address": "10.0.0.1", "port": 80, "check": {"ttl": "30s"}});
    // Each token writes its own services, by name or prefix, in any case.
    for (service, token) in [("payments", PAY), ("pay-eu", PAY), ("web", WEB)] {
        let reply = with_token(
            &server,
            c.put(server.url(&instance(service, "i1"))).json(&body),
            token,
        )
        .await;
        assert_eq!(reply.status, 200, "{service}: {}", reply.json);
    }
    let reply = with_token(
        &server,
        c.put(server.url(&instance("PAYMENTS", "i2"))).json(&body),
        PAY,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    // …and no other: every write endpoint says 403, naming the service, and changes nothing.
    let web = instance("web", "i1");
    let writes = [
        c.put(server.url(&instance("web", "i9"))).json(&body),
        c.put(server.url(&instance("payment", "i9"))).json(&body),
        c.delete(server.url(&web)),
        c.put(server.url(&format!("{web}/heartbeat"))),
        c.put(server.url(&format!("{web}/status")))
            .json(&json!({"status": "critical"})),
        c.put(server.url(&format!("{web}/maintenance")))
            .json(&json!({"enabled": true})),
    ];
    for request in writes {
        let reply = with_token(&server, request, PAY).await;
        assert_error(&reply, 403, "may not write service");
        assert_eq!(reply.json["field"], "service");
    }
    let view = server.get("/v1/services/web").await;
    assert_eq!(
        view.json["instances"][0]["status"], "passing",
        "{}",
        view.json
    );
    // No token, or an unknown one: 401.
    assert_error(
        &server.put(&web, body.clone()).await,
        401,
        "requires a token",
    );
    let reply = with_token(&server, c.put(server.url(&web)).json(&body), "pay-token").await;
    assert_error(&reply, 401, "requires a token");
    // The admin token writes everything; reads stay open without --token-reads.
    let reply = with_token(
        &server,
        c.delete(server.url(&instance("pay-eu", "i1"))),
        ADMIN,
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_eq!(server.get("/v1/services").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn per_service_tokens_on_the_consul_api() {
    let server = token_server(false).await;
    let c = &server.client;
    let register = |name: &str, id: &str| {
        json!({"Name": name, "ID": id, "Address": "10.0.0.2", "Port": 80,
               "Check": {"TTL": "30s"}})
    };
    let url = server.url("/v1/agent/service/register");
    // Consul clients send the token as X-Consul-Token or ?token=.
    let reply = server
        .send(
            c.put(&url)
                .header("X-Consul-Token", WEB)
                .json(&register("web", "web-1")),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let reply = server
        .send(
            c.put(format!("{url}?token={PAY}"))
                .json(&register("payments", "pay-1")),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    // The service is in the body: a token for another service is refused.
    let reply = server
        .send(
            c.put(&url)
                .header("X-Consul-Token", PAY)
                .json(&register("web", "web-2")),
        )
        .await;
    assert_error(&reply, 403, "\"web\"");
    // Registering web's ID under payments would deregister it from web: refused too.
    let reply = server
        .send(
            c.put(&url)
                .header("X-Consul-Token", PAY)
                .json(&register("payments", "web-1")),
        )
        .await;
    assert_error(&reply, 403, "\"web\"");
    // Writes by ID or check ID find the service first, then check it.
    for path in [
        "/v1/agent/service/deregister/web-1",
        "/v1/agent/service/maintenance/web-1?enable=true",
        "/v1/agent/check/pass/service:web-1",
        "/v1/agent/check/warn/service:web-1",
        "/v1/agent/check/fail/service:web-1",
    ] {
        let reply = server
            .send(c.put(server.url(path)).header("X-Consul-Token", PAY))
            .await;
        assert_error(&reply, 403, "\"web\"");
    }
    let reply = server
        .send(
            c.put(server.url("/v1/agent/check/update/service:web-1"))
                .header("X-Consul-Token", PAY)
                .json(&json!({"Status": "critical"})),
        )
        .await;
    assert_error(&reply, 403, "\"web\"");
    // web-1 is untouched and still under web.
    let health = server.get("/v1/health/service/web").await;
    assert_eq!(
        health.json.as_array().map(Vec::len),
        Some(1),
        "{}",
        health.json
    );
    // Its own token may.
    let reply = server
        .send(
            c.put(server.url("/v1/agent/check/fail/service:pay-1"))
                .header("X-Consul-Token", PAY),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let reply = server
        .send(
            c.put(server.url("/v1/agent/service/deregister/web-1"))
                .header("X-Consul-Token", WEB),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    server.stop().await;
}

#[tokio::test]
async fn token_reads_guards_reads_but_not_liveness() {
    let server = token_server(true).await;
    let c = &server.client;
    for path in [
        "/v1/services",
        "/v1/services/web",
        "/v1/agent/services",
        "/v1/catalog/services",
    ] {
        assert_error(&server.get(path).await, 401, "for reads too");
        let reply = with_token(&server, c.get(server.url(path)), ADMIN).await;
        assert_ne!(reply.status, 401, "{path}");
        // Any valid token reads everything.
        let reply = server
            .send(c.get(server.url(path)).header("X-Consul-Token", PAY))
            .await;
        assert_ne!(reply.status, 401, "{path}");
    }
    assert_eq!(server.get("/v1/health").await.status, 200);
    server.stop().await;
}

#[test]
fn a_network_address_without_a_token_refuses_to_start() {
    let args = |extra: &[&str]| {
        let mut args = ServeArgs {
            http_listen: Some("0.0.0.0:8500".parse().unwrap()),
            zones: Some("none".into()),
            ..ServeArgs::default()
        };
        for flag in extra {
            match *flag {
                "token" => args.token = Some("t".into()),
                "insecure" => args.insecure_http = Some(true),
                "reads" => args.token_reads = Some(true),
                _ => unreachable!(),
            }
        }
        args
    };
    let error = Config::resolve(args(&[])).unwrap_err().to_string();
    for needle in [
        "--http-listen",
        "0.0.0.0:8500",
        "not a loopback",
        "--token",
        "--insecure-http",
    ] {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
    assert!(Config::resolve(args(&["token"])).is_ok());
    assert!(Config::resolve(args(&["insecure"])).is_ok());
    let error = Config::resolve(args(&["insecure", "reads"]))
        .unwrap_err()
        .to_string();
    assert!(error.contains("--token-reads"), "{error}");
    // Loopback needs nothing.
    assert!(
        Config::resolve(ServeArgs {
            http_listen: Some("[::1]:8500".parse().unwrap()),
            ..ServeArgs::default()
        })
        .is_ok()
    );
}

#[test]
fn a_bad_token_file_names_itself() {
    let dir = std::env::temp_dir().join(format!("srvdns-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tokens.toml");
    std::fs::write(&path, "[[token]]\ntoken = \"x\"\nservices = [\"no way\"]\n").unwrap();
    let error = Config::resolve(ServeArgs {
        token_file: Some(path.clone()),
        ..ServeArgs::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("--token-file") && error.contains("tokens.toml"),
        "{error}"
    );
    assert!(error.contains("\"no way\""), "{error}");
    // The example in the repository is valid.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/tokens.toml");
    assert!(TokenFile::load(&example).unwrap().len() >= 2);
}

#[tokio::test]
async fn tls_with_a_generated_certificate() {
    let dir = std::env::temp_dir().join(format!("srvdns-tls-{}", std::process::id()));
    let (files, ca_pem) = certificates(&dir);
    let mut config = test_config();
    config.tls = Some(files.clone());
    config.token = Some(ADMIN.into());
    let server = TestServer::start_with(config).await;
    let port = server.http.port();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", server.http)
        .build()
        .unwrap();
    for base in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ] {
        let reply = server.send(client.get(format!("{base}/v1/health"))).await;
        assert_eq!(reply.status, 200, "{base}");
        assert!(reply.index.is_some());
    }
    let reply = server
        .send(
            client
                .put(format!("https://localhost:{port}{}", instance("web", "w1")))
                .bearer_auth(ADMIN)
                .json(&json!({"address": "10.0.0.1", "port": 80})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    // A client that does not trust the CA is refused; plain HTTP gets no answer.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    let refused = untrusting
        .get(format!("https://127.0.0.1:{port}/v1/health"))
        .send()
        .await;
    assert!(refused.is_err());
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        reqwest::get(format!("http://127.0.0.1:{port}/v1/health")),
    )
    .await
    .expect("plain HTTP gets an error in time");
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));
    // The server still serves TLS after the failed handshakes.
    let reply = server
        .send(client.get(format!("https://localhost:{port}/v1/services")))
        .await;
    assert_eq!(reply.status, 200);
    server.stop().await;

    // A key that is not the certificate's stops the start, naming the flag.
    let (other, _) = certificates(&dir.join("other"));
    let mut config = test_config();
    config.tls = Some(TlsFiles {
        cert: files.cert.clone(),
        key: other.key,
    });
    let error = srvdns::serve::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("--tls-key"), "{error}");
    let mut config = test_config();
    config.tls = Some(TlsFiles {
        cert: dir.join("missing.pem"),
        key: files.key,
    });
    let error = srvdns::serve::Server::start(config)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("--tls-cert"), "{error}");
}

fn limited_config() -> Config {
    let mut config = test_config();
    config.limits.max_tags = 2;
    config.limits.max_meta = 2;
    config.limits.max_meta_key_bytes = 8;
    config.limits.max_meta_value_bytes = 16;
    config.http_limits.max_body_bytes = 2048;
    config.instance_limits.per_service = 2;
    config.instance_limits.total = 3;
    config
}

#[tokio::test]
async fn limits_are_refused_naming_the_limit() {
    let server = TestServer::start_with(limited_config()).await;
    let path = instance("web", "w1");
    let base = json!({"address": "10.0.0.1", "port": 80});
    let with = |key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    for (body, field, needle) in [
        (
            with("tags", json!(["a", "b", "c"])),
            "tags",
            "at most 2 tags",
        ),
        (
            with("meta", json!({"a": "1", "b": "2", "c": "3"})),
            "meta",
            "at most 2 meta",
        ),
        (
            with("meta", json!({"muchtoolong": "1"})),
            "meta.muchtoolong",
            "1-8 characters",
        ),
        (
            with("meta", json!({"k": "x".repeat(17)})),
            "meta.k",
            "at most 16 bytes",
        ),
    ] {
        let reply = server.put(&path, body).await;
        assert_error(&reply, 400, needle);
        assert_eq!(reply.json["field"], field);
    }
    // A body over the limit: 413, by its declared length or as it streams in.
    let reply = server
        .put(&path, with("tags", json!(["x".repeat(3000)])))
        .await;
    assert_error(&reply, 413, "--max-body-bytes");
    let chunk = " ".repeat(1500);
    let mut chunked = half_request(
        server.http,
        &format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             5dc\r\n{chunk}\r\n5dc\r\n{chunk}\r\n0\r\n\r\n"
        ),
    )
    .await;
    let answer = read_all(&mut chunked, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("--max-body-bytes"), "{answer}");
    // Instances per service, then in all; replacing one is always allowed.
    server.register("web", "w1", base.clone()).await;
    server.register("web", "w2", base.clone()).await;
    server.register("web", "w2", with("port", json!(81))).await;
    let reply = server.put(&instance("web", "w3"), base.clone()).await;
    assert_error(&reply, 409, "--max-instances-per-service");
    server.register("pg", "d1", base.clone()).await;
    let reply = server.put(&instance("pg", "d2"), base.clone()).await;
    assert_error(&reply, 409, "--max-instances");
    // Through the Consul API too.
    let consul = json!({"Name": "cache", "ID": "c1", "Address": "10.0.0.9", "Port": 1});
    let reply = server
        .put("/v1/agent/service/register", consul.clone())
        .await;
    assert_error(&reply, 409, "(--max-instances)");
    // Moving an ID between services does not grow the total.
    let moved = json!({"Name": "pg", "ID": "w2", "Address": "10.0.0.9", "Port": 1});
    assert_eq!(
        server.put("/v1/agent/service/register", moved).await.status,
        200
    );
    // Room again after a deregistration.
    assert_eq!(server.delete(&instance("pg", "d1")).await.status, 204);
    assert_eq!(
        server
            .put("/v1/agent/service/register", consul)
            .await
            .status,
        200
    );
    server.stop().await;
}

/// Sends `head` (and nothing more) on a new connection; returns the connection.
async fn half_request(addr: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads what the server sends until it closes or `wait` passes.
async fn read_all(stream: &mut TcpStream, wait: Duration) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn slow_clients_time_out_and_overload_is_refused() {
    let mut config = test_config();
    config.http_limits.request_timeout = Duration::from_millis(800);
    config.http_limits.max_concurrent_requests = 1;
    let server = TestServer::start_with(config).await;
    // A body that never comes holds the one request slot…
    let started = Instant::now();
    let mut slow = half_request(
        server.http,
        "PUT /v1/services/web/instances/w1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …so another request is refused at once, as JSON, with Retry-After…
    let reply = server.get("/v1/services").await;
    assert_error(&reply, 503, "--max-concurrent-requests");
    assert_eq!(reply.headers["retry-after"], "1");
    // …but a blocking read takes no slot (it waits, then answers).
    let reply = server.get("/v1/services/web?index=5&wait=100ms").await;
    assert_eq!(reply.status, 404);
    // The slow request ends with a JSON 408 after the timeout, and the connection closes.
    let answer = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--request-timeout"), "{answer}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(server.get("/v1/services").await.status, 200);

    // Headers that never end: the connection is closed after the timeout.
    let started = Instant::now();
    let mut slowloris = half_request(server.http, "GET /v1/services HTTP/1.1\r\nHost: x\r\n").await;
    let answer = read_all(&mut slowloris, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}: {answer}");
    assert_eq!(server.get("/v1/services").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn open_connections_are_capped() {
    let mut config = test_config();
    config.http_limits.max_connections = 2;
    config.http_limits.request_timeout = Duration::from_secs(30);
    let server = TestServer::start_with(config).await;
    let idle_a = TcpStream::connect(server.http).await.unwrap();
    let idle_b = TcpStream::connect(server.http).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third connection waits in the accept queue: no answer while both are open.
    let pending = server.client.get(server.url("/v1/health")).send();
    let pending = tokio::spawn(pending);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    drop(idle_a);
    let answer = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("answered once a connection closed")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 200);
    drop(idle_b);
    server.stop().await;
}
