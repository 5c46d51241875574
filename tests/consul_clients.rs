//! Real Consul clients, unchanged, against the real `srvdns` binary serving `service.consul`:
//! py-consul, python-consul and the npm `consul` package (scripts in `tests/interop/consul/`),
//! and `curl -X PUT --data @file`. Every registration they leave is then checked over DNS.
//!
//! An `#[ignore]`d interop group (`cargo test -- --include-ignored`): `.ci/run` installs the
//! clients into `target/interop/venv-py-consul`, `target/interop/venv-python-consul` and
//! `tests/interop/consul/node_modules` (override with `SRVDNS_PY_CONSUL_VENV`,
//! `SRVDNS_PYTHON_CONSUL_VENV`, `SRVDNS_NODE_CONSUL_DIR`). A missing client fails the test
//! with the command that installs it, rather than passing without having run.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

const BIN: &str = env!("CARGO_BIN_EXE_srvdns");
const TOKEN: &str = "interop-token";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scripts() -> PathBuf {
    root().join("tests/interop/consul")
}

/// A `srvdns serve --domain service.consul` child process and the addresses it logged.
struct Running {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
}

impl Drop for Running {
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

fn start(token: Option<&str>) -> Running {
    let mut command = Command::new(BIN);
    command.args([
        "serve",
        "--dns-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--domain",
        "service.consul",
        "--zones",
        "none",
        "--data-dir",
        "none",
    ]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("srvdns starts");
    let stdout = child.stdout.take().expect("stdout");
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
            // Keep draining the log so the child never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Running {
                dns: field(&line, "dns=").expect("dns= in the start line"),
                http: field(&line, "http=").expect("http= in the start line"),
                child,
            };
        }
    }
}

/// The path of an installed client, or a failure that says how to install it.
fn installed(env: &str, default: PathBuf, probe: &str, install: &str) -> PathBuf {
    let dir = std::env::var_os(env).map_or(default, PathBuf::from);
    assert!(
        dir.join(probe).exists(),
        "{} is missing ({env} or the default path): install it with `{install}` (bash .ci/run \
         does), or leave out the interop group",
        dir.join(probe).display()
    );
    dir
}

fn python(venv_env: &str, venv: &str, package: &str) -> PathBuf {
    let dir = installed(
        venv_env,
        root().join("target/interop").join(venv),
        "bin/python",
        &format!(
            "python3 -m venv target/interop/{venv} && target/interop/{venv}/bin/pip install {package}"
        ),
    );
    dir.join("bin/python")
}

/// Runs an interop script with the Consul client's environment; panics with its output on
/// failure, returns its stdout on success.
fn run_script(program: &Path, script: &str, args: &[&str], envs: &[(&str, String)]) -> String {
    let output = Command::new(program)
        .arg(scripts().join(script))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(scripts())
        .output()
        .expect("the interop script runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    print!("{stdout}");
    stdout
}

async fn records(dns: SocketAddr, name: &str, rtype: RecordType) -> Vec<String> {
    let message = support::query(name, rtype, None);
    let bytes = support::udp_exchange(dns, &message.to_vec().unwrap(), Duration::from_secs(5))
        .await
        .expect("a DNS answer");
    let answer = Message::from_vec(&bytes).unwrap();
    let mut data: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    data
}

/// What every client script leaves behind: instances 1 (`v2`) and 2 (`v1`) of `service`,
/// instance 3 deregistered.
async fn assert_left_in_dns(dns: SocketAddr, service: &str, net: &str) {
    let (one, two) = (format!("{net}.1"), format!("{net}.2"));
    assert_eq!(
        records(dns, &format!("{service}.service.consul."), RecordType::A).await,
        [one.clone(), two.clone()]
    );
    assert_eq!(
        records(dns, &format!("v2.{service}.service.consul."), RecordType::A).await,
        [one.as_str()]
    );
    let targets = |ip: &str| format!("0 1 8080 {}.addr.service.consul.", ip.replace('.', "-"));
    assert_eq!(
        records(
            dns,
            &format!("_{service}._tcp.service.consul."),
            RecordType::SRV
        )
        .await,
        [targets(&one), targets(&two)]
    );
}

fn client_env(server: &Running, token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut envs = vec![("CONSUL_HTTP_ADDR", server.http.to_string())];
    if let Some(token) = token {
        envs.push(("CONSUL_HTTP_TOKEN", token.to_owned()));
    }
    envs
}

#[tokio::test]
#[ignore = "interop: needs py-consul in target/interop/venv-py-consul (installed by .ci/run)"]
async fn py_consul_works_unchanged() {
    let python = python("SRVDNS_PY_CONSUL_VENV", "venv-py-consul", "py-consul");
    // py-consul sends the token as X-Consul-Token on every call.
    let server = start(Some(TOKEN));
    let env = client_env(&server, Some(TOKEN));
    let out = run_script(&python, "python_client.py", &["orders", "10.0.3"], &env);
    assert!(out.contains("OK py-consul"), "{out}");
    assert_left_in_dns(server.dns, "orders", "10.0.3").await;
}

#[tokio::test]
#[ignore = "interop: needs python-consul in target/interop/venv-python-consul (installed by .ci/run)"]
async fn python_consul_works_unchanged() {
    let python = python(
        "SRVDNS_PYTHON_CONSUL_VENV",
        "venv-python-consul",
        "python-consul",
    );
    // python-consul sends no token on TTL updates and deregistration (a Consul agent would use
    // its default token): it runs against a server without one.
    let server = start(None);
    let env = client_env(&server, None);
    let out = run_script(&python, "python_client.py", &["billing", "10.0.4"], &env);
    assert!(out.contains("OK python-consul"), "{out}");
    assert_left_in_dns(server.dns, "billing", "10.0.4").await;
}

fn node() -> (PathBuf, PathBuf) {
    let modules = installed(
        "SRVDNS_NODE_CONSUL_DIR",
        scripts(),
        "node_modules/consul/package.json",
        "npm ci --prefix tests/interop/consul",
    );
    (PathBuf::from("node"), modules)
}

#[tokio::test]
#[ignore = "interop: needs node and the npm consul package in tests/interop/consul (installed by .ci/run)"]
async fn npm_consul_works_unchanged() {
    let (node, modules) = node();
    let server = start(Some(TOKEN));
    let mut env = client_env(&server, Some(TOKEN));
    env.push((
        "NODE_PATH",
        modules.join("node_modules").display().to_string(),
    ));
    let out = run_script(&node, "node_client.js", &["shop", "10.0.5"], &env);
    assert!(out.contains("OK npm consul"), "{out}");
    assert_left_in_dns(server.dns, "shop", "10.0.5").await;
}

/// Runs `curl` in `dir`; returns (exit success, stdout).
fn curl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("curl runs (installed by .ci/run)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
#[ignore = "interop: needs curl (installed by .ci/run)"]
async fn curl_puts_service_definition_files() {
    let dir = std::env::temp_dir().join(format!("srvdns-consul-curl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("payment.json"),
        r#"{"ID": "payment-1", "Name": "payment", "Address": "10.0.6.1", "Port": 8080,
            "Tags": ["v2"], "Check": {"TTL": "30s", "Status": "passing"}}"#,
    )
    .unwrap();
    // The config-file form, as kept in /etc/consul.d/.
    std::fs::write(
        dir.join("search.json"),
        r#"{"service": {"name": "search", "id": "search-1", "address": "10.0.6.2",
            "port": 9200, "tags": ["primary"], "enable_tag_override": false}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("bad.json"), r#"{"Name": "bad_name", "Port": 1}"#).unwrap();

    let server = start(None);
    let register = format!("http://{}/v1/agent/service/register", server.http);
    for file in ["@payment.json", "@search.json"] {
        let (ok, out) = curl(&dir, &["-f", "-X", "PUT", "--data", file, &register]);
        assert!(ok, "curl --data {file} failed: {out}");
        assert_eq!(out, "", "Consul answers a registration with an empty body");
    }
    let (_, out) = curl(&dir, &["-X", "PUT", "--data", "@bad.json", &register]);
    assert!(
        out.contains(r#""field":"Name""#) && out.contains("not a DNS label"),
        "{out}"
    );
    let (ok, out) = curl(
        &dir,
        &[
            "-f",
            &format!("http://{}/v1/health/service/search?passing", server.http),
        ],
    );
    assert!(ok && out.contains(r#""ID":"search-1""#), "{out}");

    assert_eq!(
        records(server.dns, "v2.payment.service.consul.", RecordType::A).await,
        ["10.0.6.1"]
    );
    assert_eq!(
        records(server.dns, "_search._tcp.service.consul.", RecordType::SRV).await,
        ["0 1 9200 10-0-6-2.addr.service.consul."]
    );
    let (ok, _) = curl(
        &dir,
        &[
            "-f",
            "-X",
            "PUT",
            &format!(
                "http://{}/v1/agent/service/deregister/search-1",
                server.http
            ),
        ],
    );
    assert!(ok);
    assert_eq!(
        records(server.dns, "search.service.consul.", RecordType::A).await,
        Vec::<String>::new()
    );
}

/// A local HTTP server answering 200 on `/health`, for HTTP checks.
async fn health_endpoint() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_see_an_http_check_pass() {
    let target = health_endpoint().await;
    let url = format!("http://{target}/health");
    let cases: [(&str, &str, &str); 3] = [
        ("py-consul", "orders", "10.0.3"),
        ("python-consul", "billing", "10.0.4"),
        ("npm", "shop", "10.0.5"),
    ];
    for (client, service, net) in cases {
        let server = start(None);
        let mut env = client_env(&server, None);
        env.push(("HTTP_CHECK_URL", url.clone()));
        let out = match client {
            "py-consul" => {
                let python = python("SRVDNS_PY_CONSUL_VENV", "venv-py-consul", "py-consul");
                run_script(&python, "python_client.py", &[service, net], &env)
            }
            "python-consul" => {
                let python = python(
                    "SRVDNS_PYTHON_CONSUL_VENV",
                    "venv-python-consul",
                    "python-consul",
                );
                run_script(&python, "python_client.py", &[service, net], &env)
            }
            _ => {
                let (node, modules) = node();
                env.push((
                    "NODE_PATH",
                    modules.join("node_modules").display().to_string(),
                ));
                run_script(&node, "node_client.js", &[service, net], &env)
            }
        };
        assert!(out.contains("OK"), "{client}: {out}");
        assert_eq!(
            records(
                server.dns,
                &format!("{service}-http.service.consul."),
                RecordType::A
            )
            .await,
            ["127.0.0.1"],
            "{client}"
        );
    }
}
