//! Durability: restart, crash (SIGKILL) and the store's refusals, against real servers.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use srvdns::serve::Server;
use support::target::Target;
use support::{TestServer, rrs, test_config};

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("srvdns-durability-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start_on(dir: &Path) -> TestServer {
    let mut config = test_config();
    config.data_dir = Some(dir.to_owned());
    TestServer::start_with(config).await
}

/// The registry as HTTP shows it, without what legitimately changes across a restart: the
/// outputs of active probes (they run again at once).
async fn listing(server: &TestServer) -> Value {
    let services = server.get("/v1/services").await.json;
    let mut all = BTreeMap::new();
    for service in services.as_array().unwrap() {
        let name = service["name"].as_str().unwrap().to_owned();
        let mut detail = server.get(&format!("/v1/services/{name}")).await.json;
        detail.as_object_mut().unwrap().remove("index");
        for instance in detail["instances"].as_array_mut().unwrap() {
            for check in instance["checks"].as_array_mut().unwrap() {
                if check["type"] != "ttl" {
                    check.as_object_mut().unwrap().remove("output");
                }
            }
            if instance["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] != "ttl")
            {
                instance.as_object_mut().unwrap().remove("output");
            }
        }
        all.insert(name, detail);
    }
    json!({"services": services, "details": all})
}

async fn dns_view(server: &TestServer) -> Vec<Vec<String>> {
    let mut answers = Vec::new();
    for name in [
        "plain.service.local.",
        "v2.plain.service.local.",
        "beat.service.local.",
        "probed.service.local.",
        "drained.service.local.",
    ] {
        for rtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
            let answer = server.query_tcp(name, rtype).await;
            let mut lines = vec![format!("{name} {rtype} {}", answer.metadata.response_code)];
            lines.extend(rrs(&answer.answers));
            lines.extend(rrs(&answer.additionals));
            answers.push(lines);
        }
    }
    answers
}

#[tokio::test]
async fn a_restart_restores_every_registration() {
    let dir = data_dir("restart");
    let target = Target::start().await;
    let server = start_on(&dir).await;
    server
        .register(
            "plain",
            "p1",
            json!({"address": "10.0.5.1", "port": 80, "tags": ["v2", "env=prod"],
                   "meta": {"version": "2.1.0"}, "ports": {"metrics": 9100}, "weight": 7}),
        )
        .await;
    server
        .register(
            "plain",
            "p2",
            json!({"address": "2001:db8::5", "port": 81, "protocol": "udp", "priority": 3}),
        )
        .await;
    server
        .put(
            "/v1/services/plain/instances/p2/status",
            json!({"status": "warning", "output": "degraded"}),
        )
        .await;
    server
        .register(
            "beat",
            "b1",
            json!({"address": "10.0.5.2", "port": 80,
                   "checks": [{"name": "beat", "ttl": "1h"}, {"name": "other", "ttl": "1h"}]}),
        )
        .await;
    server
        .put(
            "/v1/services/beat/instances/b1/status?check=other",
            json!({"status": "critical", "output": "db down"}),
        )
        .await;
    server
        .register(
            "probed",
            "h1",
            json!({"address": "10.0.5.3", "port": 80, "checks": [
                {"type": "http", "url": target.url("/health"), "interval": "1h"},
                {"type": "tcp", "target": target.addr.to_string(), "interval": "1h"}
            ]}),
        )
        .await;
    server
        .register("drained", "d1", json!({"address": "10.0.5.4", "port": 80}))
        .await;
    server
        .put(
            "/v1/services/drained/instances/d1/maintenance",
            json!({"enabled": true, "reason": "deploy 7"}),
        )
        .await;
    support::eventually(
        Duration::from_secs(5),
        "the probed instance to pass",
        || async {
            let reply = server.get("/v1/services/probed").await;
            (reply.json["instances"][0]["status"] == "passing").then_some(())
        },
    )
    .await;
    let before_http = listing(&server).await;
    let before_dns = dns_view(&server).await;
    let index = server.get("/v1/health").await.index.unwrap();
    server.stop().await;

    let server = start_on(&dir).await;
    assert_eq!(listing(&server).await, before_http);
    assert_eq!(dns_view(&server).await, before_dns);
    assert!(
        server.get("/v1/health").await.index.unwrap() > index,
        "the index keeps growing across restarts"
    );
    // TTL deadlines restart from the restore: the TTL check is passing and renewable.
    let reply = server
        .put(
            "/v1/services/beat/instances/b1/heartbeat?check=beat",
            Value::Null,
        )
        .await;
    assert_eq!(reply.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = data_dir("twice");
    let first = start_on(&dir).await;
    let mut config = test_config();
    config.data_dir = Some(dir.clone());
    let error = match Server::start(config).await {
        Ok(_) => panic!("a second server started on the same data dir"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("in use by another srvdns"), "{error}");
    assert!(error.contains(&dir.display().to_string()), "{error}");
    // The first one is unharmed.
    first
        .register("web", "w1", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    first.stop().await;
}

fn store_file(dir: &Path) -> PathBuf {
    dir.join("registry.redb")
}

async fn start_error(dir: &Path) -> String {
    let mut config = test_config();
    config.data_dir = Some(dir.to_owned());
    match Server::start(config).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_newer_store_format_is_refused_and_left_unchanged() {
    let dir = data_dir("newer");
    let server = start_on(&dir).await;
    server
        .register("web", "w1", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    server.stop().await;
    {
        let db = redb::Database::open(store_file(&dir)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let bytes = std::fs::read(store_file(&dir)).unwrap();
    let error = start_error(&dir).await;
    assert!(
        error.contains("format 99") && error.contains("newer"),
        "{error}"
    );
    assert!(error.contains("registry.redb"), "{error}");
    assert!(
        std::fs::read(store_file(&dir)).unwrap() == bytes,
        "left unchanged"
    );
}

#[tokio::test]
async fn a_corrupt_or_truncated_store_is_reported_not_emptied() {
    // Garbage.
    let dir = data_dir("garbage");
    std::fs::write(store_file(&dir), vec![0x5a; 8192]).unwrap();
    let error = start_error(&dir).await;
    assert!(error.contains("registry.redb"), "{error}");
    assert!(
        error.contains("corrupt") || error.contains("cannot open"),
        "{error}"
    );
    assert!(
        std::fs::read(store_file(&dir)).unwrap() == vec![0x5a; 8192],
        "left unchanged"
    );

    // Truncated.
    let dir = data_dir("truncated");
    let server = start_on(&dir).await;
    for i in 0..50 {
        server
            .register(
                "web",
                &format!("w{i}"),
                json!({"address": "10.0.0.1", "port": 80 + i}),
            )
            .await;
    }
    server.stop().await;
    let bytes = std::fs::read(store_file(&dir)).unwrap();
    std::fs::write(store_file(&dir), &bytes[..bytes.len() / 3]).unwrap();
    let error = start_error(&dir).await;
    assert!(error.contains("registry.redb"), "{error}");
    assert!(
        std::fs::read(store_file(&dir)).unwrap() == bytes[..bytes.len() / 3],
        "left as it was"
    );
}

// ---- crash: the real binary, killed with SIGKILL under concurrent writes ----

struct Process {
    child: Child,
    http: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(dir: &Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_srvdns"))
        .args([
            "serve",
            "--dns-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--zones", "none"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("srvdns serving")
            && let Some(http) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http="))
                .and_then(|v| v.parse().ok())
        {
            // Keep draining stdout so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Process { child, http };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("srvdns did not start");
}

/// What one client did to one key: the last acknowledged operation and, if the crash cut it
/// off, the operation in flight. `Some(seq)` registers with sequence number `seq`, `None`
/// deregisters.
#[derive(Debug, Default, Clone)]
struct KeyLog {
    acked: Option<Option<u32>>,
    in_flight: Option<Option<u32>>,
}

#[tokio::test]
async fn acknowledged_changes_survive_sigkill() {
    let dir = data_dir("crash");
    let mut rng = rand::rng();
    for round in 0..4 {
        let server = spawn_server(&dir);
        let http = server.http;
        let logs: Arc<Mutex<BTreeMap<String, KeyLog>>> = Arc::default();
        let mut clients = Vec::new();
        for client in 0..8 {
            let logs = Arc::clone(&logs);
            clients.push(tokio::spawn(async move {
                let http_client = reqwest::Client::new();
                let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
                for seq in 0u32.. {
                    let key = format!("c{client}-k{}", rng.random_range(0..6));
                    let register = rng.random_bool(0.7);
                    let op = register.then_some(seq);
                    logs.lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .in_flight = Some(op);
                    let url = format!("http://{http}/v1/services/crash/instances/{key}");
                    let result = if register {
                        http_client
                            .put(&url)
                            .json(&json!({"address": "10.0.0.1", "port": 1000 + seq % 60000,
                                          "tags": [format!("seq-{seq}")],
                                          "meta": {"seq": seq.to_string()}}))
                            .send()
                            .await
                    } else {
                        http_client.delete(&url).send().await
                    };
                    let Ok(response) = result else { return };
                    let status = response.status().as_u16();
                    let mut logs = logs.lock().unwrap();
                    let log = logs.get_mut(&key).unwrap();
                    log.in_flight = None;
                    match status {
                        200 | 204 => log.acked = Some(op),
                        // Deregistering what is not there: acknowledged as absent.
                        404 => log.acked = Some(None),
                        other => panic!("unexpected status {other}"),
                    }
                }
            }));
        }
        let run_for = Duration::from_millis(rng.random_range(150..600));
        tokio::time::sleep(run_for).await;
        // SAFETY: kill(2) on our own child.
        let killed = unsafe { libc::kill(server.child.id() as i32, libc::SIGKILL) };
        assert_eq!(killed, 0);
        for client in clients {
            let _ = client.await;
        }
        drop(server);

        let server = spawn_server(&dir);
        let reply = reqwest::get(format!("http://{}/v1/services/crash", server.http))
            .await
            .unwrap();
        let present: BTreeMap<String, Value> = if reply.status() == 404 {
            BTreeMap::new()
        } else {
            let body: Value = reply.json().await.unwrap();
            body["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| (i["id"].as_str().unwrap().to_owned(), i.clone()))
                .collect()
        };
        let logs = logs.lock().unwrap().clone();
        for key in present.keys() {
            assert!(
                logs.contains_key(key),
                "round {round}: {key} was never written"
            );
        }
        let mut acked_ops = 0;
        for (key, log) in &logs {
            let found = present.get(key);
            // Whole, never half: port, tag and meta come from one registration.
            let found_seq = found.map(|instance| {
                let seq: u32 = instance["meta"]["seq"].as_str().unwrap().parse().unwrap();
                assert_eq!(
                    instance["tags"],
                    json!([format!("seq-{seq}")]),
                    "{instance}"
                );
                assert_eq!(instance["port"], 1000 + seq % 60000, "{instance}");
                seq
            });
            let mut allowed = Vec::new();
            if let Some(acked) = log.acked {
                acked_ops += 1;
                allowed.push(acked);
            }
            if let Some(in_flight) = log.in_flight {
                allowed.push(in_flight);
            }
            if log.acked.is_none() {
                // Never acknowledged: absent, or the in-flight registration.
                allowed.push(None);
            }
            assert!(
                allowed.contains(&found_seq),
                "round {round}, {key}: found {found_seq:?}, allowed {allowed:?} ({log:?})"
            );
        }
        assert!(acked_ops > 0, "round {round}: the load ran");
        // Keys nobody touched in this round but present from earlier rounds: clean up so the
        // next round starts from a known state.
        let client = reqwest::Client::new();
        for key in present.keys() {
            let response = client
                .delete(format!(
                    "http://{}/v1/services/crash/instances/{key}",
                    server.http
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 204);
        }
        drop(server);
    }
}
