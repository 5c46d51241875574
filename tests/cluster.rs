//! Clusters: several `srvdns serve --store etcd` processes (the real binary) sharing one
//! registry through real `etcd` processes on loopback ports.
//!
//! Needs the `etcd` binary (Debian: `etcd-server`); without it every test here says loudly that
//! it did not run. Run with `cargo test --features etcd --test cluster`.
#![cfg(feature = "etcd")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::{Value, json};
use support::target::{Mode, Target};
use support::{eventually, query, udp_exchange};

const BIN: &str = env!("CARGO_BIN_EXE_srvdns");
/// The lease TTL the tests run with: it bounds the handover of the health checks.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// How fast a change made on one server must show on every other.
const PROPAGATION: Duration = Duration::from_secs(1);

/// `true` if etcd is installed; otherwise says loudly that the test did not run.
fn etcd_installed(test: &str) -> bool {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!(
            "\n!!!!! {test}: NOT RUN — the `etcd` binary is not installed \
             (Debian: apt-get install etcd-server). The cluster tests did not test anything. !!!!!\n"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("srvdns-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ---- etcd ----

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// An etcd cluster of one or more members on loopback, data under /tmp, killed on drop.
struct Etcd {
    dir: PathBuf,
    members: Vec<Member>,
    token: String,
}

impl Etcd {
    fn start(name: &str, size: usize) -> Self {
        let dir = temp_dir(&format!("etcd-{name}"));
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut etcd = Self {
            dir,
            members,
            token: format!("srvdns-test-{name}-{}", std::process::id()),
        };
        for i in 0..size {
            etcd.start_member(i);
        }
        etcd
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts, on its data) member `i`.
    fn start_member(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", member.name)))
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.join(&member.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[i].child = Some(child);
    }

    /// Kills member `i` with SIGKILL.
    fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the cluster takes writes.
    async fn ready(&self) {
        let endpoints: Vec<String> = self.endpoints().split(',').map(String::from).collect();
        eventually(Duration::from_secs(20), "etcd to take writes", || {
            let endpoints = endpoints.clone();
            async move {
                let mut client = etcd_client::Client::connect(&endpoints, None).await.ok()?;
                tokio::time::timeout(
                    Duration::from_secs(1),
                    client.put("/srvdns-test/ready", "yes", None),
                )
                .await
                .ok()?
                .ok()
                .map(|_| ())
            }
        })
        .await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- srvdns ----

/// A `srvdns serve --store etcd` process, killed on drop.
struct Node {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
    data_dir: PathBuf,
    endpoints: String,
    /// Every log line so far.
    log: Arc<Mutex<Vec<String>>>,
    client: reqwest::Client,
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.parse().ok())
}

impl Node {
    fn start(endpoints: &str, data_dir: PathBuf) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--store", "etcd", "--etcd-endpoints", endpoints])
            .args(["--etcd-lease-ttl", &format!("{}s", LEASE_TTL.as_secs())])
            .args([
                "--dns-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--zones", "none"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("srvdns starts");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("srvdns serving") {
                    let _ = tx.send(line.clone());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("srvdns did not log its start line in time");
        };
        Self {
            child,
            dns: field(&line, "dns=").expect("dns= in the start line"),
            http: field(&line, "http=").expect("http= in the start line"),
            data_dir,
            endpoints: endpoints.to_owned(),
            log,
            client: reqwest::Client::new(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills this server and starts it again on the same data directory.
    fn restart(mut self) -> Self {
        self.kill();
        Node::start(&self.endpoints, self.data_dir.clone())
    }

    fn logged(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Does this server run the health checks now?
    fn leads(&self) -> bool {
        self.logged("cluster leadership gained") > self.logged("cluster leadership lost")
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.http))
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP answer");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("HTTP body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn register(&self, service: &str, id: &str, body: Value) {
        let (status, json) = self
            .put(&format!("/v1/services/{service}/instances/{id}"), body)
            .await;
        assert_eq!(status, 200, "register {service}/{id}: {json}");
    }

    /// The A records of `name` (sorted), or the rcode when it is not NOERROR.
    async fn addresses(&self, name: &str) -> Result<Vec<String>, ResponseCode> {
        let message = query(name, RecordType::A, None);
        let bytes = message.to_vec().expect("encode");
        let answer = udp_exchange(self.dns, &bytes, Duration::from_secs(1))
            .await
            .expect("a DNS answer");
        let answer = Message::from_vec(&answer).expect("a well-formed answer");
        if answer.metadata.response_code != ResponseCode::NoError {
            return Err(answer.metadata.response_code);
        }
        let mut addresses: Vec<String> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect();
        addresses.sort();
        Ok(addresses)
    }

    async fn status_of(&self, service: &str, id: &str) -> Option<String> {
        let (status, json) = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/services/{service}"),
                None,
            )
            .await;
        if status != 200 {
            return None;
        }
        json["instances"]
            .as_array()?
            .iter()
            .find(|i| i["id"] == id)
            .and_then(|i| i["status"].as_str())
            .map(String::from)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_nodes(etcd: &Etcd, name: &str, count: usize) -> Vec<Node> {
    (0..count)
        .map(|i| Node::start(&etcd.endpoints(), temp_dir(&format!("{name}-node{i}"))))
        .collect()
}

/// Waits until every node in `nodes` answers `name` with `expected`.
async fn all_answer(
    nodes: &[&Node],
    name: &str,
    expected: Result<Vec<String>, ResponseCode>,
    within: Duration,
    what: &str,
) {
    for node in nodes {
        eventually(within, &format!("{what} (node {})", node.http), || {
            let expected = expected.clone();
            async move { (node.addresses(name).await == expected).then_some(()) }
        })
        .await;
    }
}

async fn all_status(nodes: &[&Node], service: &str, id: &str, status: &str, within: Duration) {
    for node in nodes {
        eventually(
            within,
            &format!("{service}/{id} to be {status} on {}", node.http),
            || async move {
                (node.status_of(service, id).await.as_deref() == Some(status)).then_some(())
            },
        )
        .await;
    }
}

async fn one_leader(nodes: &[&Node], within: Duration) -> usize {
    eventually(
        within,
        "exactly one server to run the health checks",
        || async move {
            let leaders: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].leads()).collect();
            (leaders.len() == 1).then(|| leaders[0])
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_share_one_registry() {
    if !etcd_installed("three_servers_share_one_registry") {
        return;
    }
    let etcd = Etcd::start("share", 1);
    etcd.ready().await;
    let nodes = start_nodes(&etcd, "share", 3);
    let all: Vec<&Node> = nodes.iter().collect();
    one_leader(&all, Duration::from_secs(10)).await;

    // Register on the first: it answers at once (read-your-writes), the others within 1 s.
    nodes[0]
        .register(
            "pay",
            "p1",
            json!({"address": "10.0.9.1", "port": 80, "check": {"type": "ttl", "ttl": "3s"}}),
        )
        .await;
    assert_eq!(
        nodes[0].addresses("pay.service.local.").await,
        Ok(vec!["10.0.9.1".to_owned()])
    );
    all_answer(
        &all,
        "pay.service.local.",
        Ok(vec!["10.0.9.1".into()]),
        PROPAGATION,
        "the registration everywhere",
    )
    .await;

    // Heartbeats to the second keep it passing everywhere well past its TTL, whichever server
    // decides expiry.
    for _ in 0..5 {
        let (status, json) = nodes[1]
            .put("/v1/services/pay/instances/p1/heartbeat", Value::Null)
            .await;
        assert_eq!(status, 200, "heartbeat: {json}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for node in &nodes {
        assert_eq!(
            node.status_of("pay", "p1").await.as_deref(),
            Some("passing")
        );
    }
    // Without heartbeats, the TTL expires everywhere.
    all_status(
        &all,
        "pay",
        "p1",
        "critical",
        Duration::from_secs(3) + PROPAGATION * 2,
    )
    .await;
    all_answer(
        &all,
        "pay.service.local.",
        Ok(vec![]),
        PROPAGATION,
        "the expired instance to leave DNS",
    )
    .await;
    // A heartbeat at the third brings it back everywhere.
    let (status, _) = nodes[2]
        .put("/v1/services/pay/instances/p1/heartbeat", Value::Null)
        .await;
    assert_eq!(status, 200);
    all_answer(
        &all,
        "pay.service.local.",
        Ok(vec!["10.0.9.1".into()]),
        PROPAGATION,
        "the instance back",
    )
    .await;

    // Deregister on the third: gone everywhere within 1 s.
    let (status, json) = nodes[2]
        .request(
            reqwest::Method::DELETE,
            "/v1/services/pay/instances/p1",
            None,
        )
        .await;
    assert_eq!(status, 204, "deregister: {json}");
    all_answer(
        &all,
        "pay.service.local.",
        Err(ResponseCode::NXDomain),
        PROPAGATION,
        "the deregistration everywhere",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_server_running_the_checks_dies_another_takes_over() {
    if !etcd_installed("when_the_server_running_the_checks_dies_another_takes_over") {
        return;
    }
    let etcd = Etcd::start("handover", 1);
    etcd.ready().await;
    let mut nodes = start_nodes(&etcd, "handover", 3);
    let target = Target::start().await;
    let interval = Duration::from_millis(300);
    nodes[0]
        .register(
            "api",
            "a1",
            json!({"address": "10.0.9.2", "port": 80, "check": {
                "type": "http", "url": target.url("/health"), "interval": "300ms",
                "timeout": "1s", "failures_before_critical": 1, "successes_before_passing": 1}}),
        )
        .await;
    {
        let all: Vec<&Node> = nodes.iter().collect();
        all_status(&all, "api", "a1", "passing", Duration::from_secs(10)).await;
        one_leader(&all, Duration::from_secs(10)).await;
    }
    // Only one server probes: the target sees about one probe per interval, not three.
    let before = target.hits();
    tokio::time::sleep(interval * 10).await;
    let probes = target.hits() - before;
    assert!(
        probes <= 14,
        "{probes} probes in 10 intervals: more than one server probes"
    );

    let leader = {
        let all: Vec<&Node> = nodes.iter().collect();
        one_leader(&all, Duration::from_secs(1)).await
    };
    nodes[leader].kill();
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, n)| n)
        .collect();
    // The target fails: a survivor takes the checks over within the lease TTL, and its first
    // probe turns the instance critical everywhere.
    target.set(Mode::Error);
    let bound = LEASE_TTL + interval + PROPAGATION + Duration::from_millis(500);
    all_status(&survivors, "api", "a1", "critical", bound).await;
    one_leader(&survivors, Duration::from_secs(1)).await;
    target.set(Mode::Healthy);
    all_status(
        &survivors,
        "api",
        "a1",
        "passing",
        interval * 2 + PROPAGATION,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_etcd_cluster_keeps_working_without_one_member() {
    if !etcd_installed("a_three_member_etcd_cluster_keeps_working_without_one_member") {
        return;
    }
    let mut etcd = Etcd::start("members", 3);
    etcd.ready().await;
    let nodes = start_nodes(&etcd, "members", 3);
    let all: Vec<&Node> = nodes.iter().collect();
    nodes[0]
        .register("db", "d1", json!({"address": "10.0.9.3", "port": 5432}))
        .await;
    all_answer(
        &all,
        "db.service.local.",
        Ok(vec!["10.0.9.3".into()]),
        PROPAGATION,
        "d1",
    )
    .await;

    etcd.kill_member(0);
    // Writes keep being acknowledged (a client connected to the dead member moves to another
    // within a few seconds), on every server.
    for (i, node) in nodes.iter().enumerate() {
        let id = format!("d{}", i + 2);
        eventually(
            Duration::from_secs(10),
            "a write after losing a member",
            || {
                let id = id.clone();
                async move {
                    let (status, _) = node
                        .put(
                            &format!("/v1/services/db/instances/{id}"),
                            json!({"address": format!("10.0.9.{}", 10 + i), "port": 5432}),
                        )
                        .await;
                    (status == 200).then_some(())
                }
            },
        )
        .await;
    }
    let expected: Vec<String> = vec!["10.0.9.10", "10.0.9.11", "10.0.9.12", "10.0.9.3"]
        .into_iter()
        .map(String::from)
        .collect();
    all_answer(
        &all,
        "db.service.local.",
        Ok(expected),
        Duration::from_secs(5),
        "every write everywhere",
    )
    .await;
    // And once settled, a change reaches every server within 1 s again.
    let (status, _) = nodes[2]
        .request(
            reqwest::Method::DELETE,
            "/v1/services/db/instances/d1",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let expected: Vec<String> = vec!["10.0.9.10", "10.0.9.11", "10.0.9.12"]
        .into_iter()
        .map(String::from)
        .collect();
    all_answer(
        &all,
        "db.service.local.",
        Ok(expected),
        PROPAGATION,
        "the deregistration",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_dns_answers_writes_get_503_and_everything_converges_after() {
    if !etcd_installed("with_etcd_down_dns_answers_writes_get_503_and_everything_converges_after") {
        return;
    }
    let mut etcd = Etcd::start("outage", 1);
    etcd.ready().await;
    let mut nodes = start_nodes(&etcd, "outage", 3);
    nodes[0]
        .register("web", "w1", json!({"address": "10.0.9.4", "port": 80}))
        .await;
    {
        let all: Vec<&Node> = nodes.iter().collect();
        all_answer(
            &all,
            "web.service.local.",
            Ok(vec!["10.0.9.4".into()]),
            PROPAGATION,
            "w1",
        )
        .await;
    }

    etcd.kill_member(0);
    // DNS keeps answering from the snapshot; writes are refused with 503 and a clear error.
    for node in &nodes {
        assert_eq!(
            node.addresses("web.service.local.").await,
            Ok(vec!["10.0.9.4".into()])
        );
    }
    let (status, json) = nodes[1]
        .put(
            "/v1/services/web/instances/w2",
            json!({"address": "10.0.9.5", "port": 80}),
        )
        .await;
    assert_eq!(status, 503, "{json}");
    let error = json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("etcd") && error.contains("unreachable"),
        "{error}"
    );
    // The refused write is not served.
    assert_eq!(
        nodes[1].addresses("web.service.local.").await,
        Ok(vec!["10.0.9.4".into()])
    );

    // A server restarted while etcd is down serves the last registry it saw.
    let restarted = nodes.remove(2).restart();
    assert_eq!(
        restarted.addresses("web.service.local.").await,
        Ok(vec!["10.0.9.4".into()])
    );
    nodes.push(restarted);

    // etcd comes back: writes work again and every server converges.
    etcd.start_member(0);
    etcd.ready().await;
    eventually(
        Duration::from_secs(10),
        "writes to be accepted again",
        || async {
            let (status, _) = nodes[1]
                .put(
                    "/v1/services/web/instances/w2",
                    json!({"address": "10.0.9.5", "port": 80}),
                )
                .await;
            (status == 200).then_some(())
        },
    )
    .await;
    let all: Vec<&Node> = nodes.iter().collect();
    all_answer(
        &all,
        "web.service.local.",
        Ok(vec!["10.0.9.4".into(), "10.0.9.5".into()]),
        Duration::from_secs(5),
        "every server to converge after the outage",
    )
    .await;
    let (status, _) = nodes[2]
        .request(
            reqwest::Method::DELETE,
            "/v1/services/web/instances/w1",
            None,
        )
        .await;
    assert_eq!(status, 204);
    all_answer(
        &all,
        "web.service.local.",
        Ok(vec!["10.0.9.5".into()]),
        PROPAGATION,
        "w1 gone",
    )
    .await;
}
