//! The `srvdns` binary as users run it: flags, environment, errors, signals — and, in the
//! `#[ignore]`d interop group (`cargo test -- --include-ignored`, run by `.ci/run`), `dig` and
//! the README walk-through executed as written.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_srvdns");

/// A `srvdns serve` child process and the addresses it logged.
struct Running {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
    /// Log lines after the start line.
    lines: mpsc::Receiver<String>,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("srvdns-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key))
        .and_then(|value| value.parse().ok())
}

/// Starts `srvdns serve` with `args` (and `envs`) in `cwd`; waits for its start line.
fn start(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Running {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "info")
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("srvdns starts");
    let stdout = child.stdout.take().unwrap();
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
            return Running {
                child,
                dns: field(&line, "dns=").expect("dns= in the start line"),
                http: field(&line, "http=").expect("http= in the start line"),
                lines: rx,
            };
        }
    }
}

fn ephemeral() -> [&'static str; 4] {
    [
        "--dns-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]
}

impl Running {
    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits for the process to exit; panics after `deadline`.
    fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < end,
                "srvdns did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn a_records(dns: SocketAddr, name: &str) -> Vec<String> {
    let message = support::query(name, RecordType::A, None);
    let bytes = support::udp_exchange(dns, &message.to_vec().unwrap(), Duration::from_secs(5))
        .await
        .expect("a DNS answer");
    let answer = hickory_proto::op::Message::from_vec(&bytes).unwrap();
    support::rrs(&answer.answers)
}

#[tokio::test]
async fn sigterm_and_sigint_stop_the_server_gracefully() {
    let dir = temp_dir("signals");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = start(&dir, &ephemeral(), &[("SRVDNS_DATA_DIR", "none")]);
        // A blocking read in flight must not hold the shutdown up.
        let url = format!("http://{}/v1/services/x?index=1000&wait=5m", server.http);
        let waiter = tokio::spawn(async move { reqwest::get(url).await });
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "exit status {status:?}");
        let lines: Vec<String> = server.lines.try_iter().collect();
        assert!(
            lines.iter().any(|l| l.contains("srvdns stopped")),
            "{lines:?}"
        );
        let _ = waiter.await;
    }
}

#[tokio::test]
async fn flags_and_environment_configure_the_server() {
    let dir = temp_dir("env");
    let data = dir.join("data");
    let server = start(
        &dir,
        &ephemeral(),
        &[
            ("SRVDNS_DOMAIN", "Service.Consul"),
            ("SRVDNS_TTL", "30s"),
            ("SRVDNS_DATA_DIR", data.to_str().unwrap()),
        ],
    );
    assert!(data.is_dir(), "--data-dir is created");
    let client = reqwest::Client::new();
    let response = client
        .put(format!(
            "http://{}/v1/services/payment/instances/p1",
            server.http
        ))
        .json(&json!({"address": "10.0.1.5", "port": 8080}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        a_records(server.dns, "payment.service.consul.").await,
        ["payment.service.consul. 30 A 10.0.1.5"]
    );
}

#[tokio::test]
async fn a_config_file_sets_options_and_flags_win() {
    let dir = temp_dir("config");
    let config = dir.join("srvdns.toml");
    std::fs::write(
        &config,
        "domain = \"svc.example\"\nttl = \"20s\"\ndata_dir = \"none\"\nzones = \"none\"\n",
    )
    .unwrap();
    let server = start(
        &dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--ttl",
            "7s",
            "--dns-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}/v1/services/web/instances/w1",
            server.http
        ))
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        a_records(server.dns, "web.svc.example.").await,
        ["web.svc.example. 7 A 10.0.0.1"]
    );
}

#[test]
fn bad_configuration_fails_with_a_message_that_names_it() {
    let dir = temp_dir("bad");
    let bad_zone_dir = dir.join("zones-bad");
    std::fs::create_dir_all(&bad_zone_dir).unwrap();
    std::fs::write(bad_zone_dir.join("broken.zone"), "www IN A 1.2.3\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--domain".into(), "a..b".into()], "--domain"),
        (
            vec!["--zones".into(), "/nonexistent/zones".into()],
            "--zones",
        ),
        (vec!["--ttl".into(), "soon".into()], "--ttl"),
        (
            vec!["--dns-listen".into(), "nowhere".into()],
            "--dns-listen",
        ),
        (
            vec!["--zones".into(), bad_zone_dir.to_str().unwrap().into()],
            "broken.zone",
        ),
        (
            vec!["--config".into(), "/nonexistent/srvdns.toml".into()],
            "srvdns.toml",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(BIN)
            .arg("serve")
            .args(&args)
            .args(["--data-dir", "none"])
            .args(ephemeral())
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn version_and_help() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("srvdns "));
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--dns-listen",
        "--http-listen",
        "--domain",
        "--ttl",
        "--zones",
        "--data-dir",
        "--only-passing",
        "--token",
        "--config",
        "SRVDNS_DNS_LISTEN",
    ] {
        assert!(help.contains(flag), "{flag} missing from serve --help");
    }
}

// ---- interop: outside programs (dig, curl), installed by .ci/run ----

fn run_shell(script: &str, cwd: &Path) -> String {
    let output = Command::new("bash")
        .args(["-c", script])
        .current_dir(cwd)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{script}\nfailed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Record lines of dig output (or any output): non-empty lines that are not comments, with
/// whitespace folded, sorted.
fn record_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
#[ignore = "interop: needs dig (installed by .ci/run)"]
async fn dig_sees_srv_answers_with_glue_over_udp_and_tcp() {
    let dir = temp_dir("dig");
    let server = start(&dir, &ephemeral(), &[("SRVDNS_DATA_DIR", "none")]);
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}/v1/services/payment/instances/p1",
            server.http
        ))
        .json(&json!({"address": "10.0.1.5", "port": 8080}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let port = server.dns.port();
    for transport in ["+notcp", "+tcp"] {
        let out = run_shell(
            &format!("dig @127.0.0.1 -p {port} {transport} payment.service.local SRV"),
            &dir,
        );
        assert!(out.contains("status: NOERROR"), "{out}");
        assert!(out.contains("flags: qr aa"), "{out}");
        assert_eq!(
            record_lines(&out),
            [
                "10-0-1-5.addr.service.local. 5 IN A 10.0.1.5",
                "payment.service.local. 5 IN SRV 0 1 8080 10-0-1-5.addr.service.local.",
            ]
        );
    }
    let out = run_shell(
        &format!("dig @127.0.0.1 -p {port} nothing.service.local"),
        &dir,
    );
    assert!(out.contains("status: NXDOMAIN"), "{out}");
}

/// Runs the README's walk-through as written: every ```sh block in the "Walk-through"
/// section, in order, against a server on the default ports started from the repository
/// root; each ```text block that follows a command block must list the same records.
#[tokio::test]
#[ignore = "interop: needs dig and curl, and the default ports 8500/8600 free"]
async fn the_readme_walkthrough_works_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## Walk-through")
        .nth(1)
        .expect("a Walk-through section")
        .split("\n## ")
        .next()
        .unwrap();
    let data = temp_dir("walkthrough");
    let _server = start(&root, &[], &[("SRVDNS_DATA_DIR", data.to_str().unwrap())]);

    let mut last_output: Option<String> = None;
    let mut checked = 0;
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let fence = line.trim();
        if fence != "```sh" && fence != "```text" {
            continue;
        }
        let block: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        if fence == "```sh" {
            last_output = Some(run_shell(&block, &root));
        } else {
            let output = last_output
                .take()
                .expect("a ```text block follows a ```sh block");
            assert_eq!(
                record_lines(&output),
                record_lines(&block),
                "README output differs for the block before:\n{block}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "the walk-through shows at least three outputs"
    );
}

#[tokio::test]
async fn another_domain_starts_from_the_repository_root() {
    // zones/service.local.zone (no SOA) is an example for the default domain: with another
    // domain it is skipped with a warning, not a reason to refuse to start.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let server = start(
        &root,
        &ephemeral(),
        &[
            ("SRVDNS_DATA_DIR", "none"),
            ("SRVDNS_DOMAIN", "service.consul"),
        ],
    );
    let response = reqwest::Client::new()
        .put(format!(
            "http://{}/v1/services/web/instances/w1",
            server.http
        ))
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        a_records(server.dns, "web.service.consul.").await,
        ["web.service.consul. 5 A 10.0.0.1"]
    );
}

// ---- serve --check-config ----

fn check_config(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(["serve", "--check-config"])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_reports_what_would_be_served_without_opening_sockets() {
    let dir = temp_dir("check-config");
    let zones = dir.join("zones");
    std::fs::create_dir_all(&zones).unwrap();
    std::fs::write(
        zones.join("svc.example.zone"),
        "$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 5\ndb IN A 10.0.9.10\n",
    )
    .unwrap();
    let data = dir.join("data");
    let config = dir.join("srvdns.toml");
    std::fs::write(
        &config,
        format!(
            "domain = \"svc.example\"\nzones = {:?}\ndata_dir = {:?}\n",
            zones.to_str().unwrap(),
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let (ok, out, err) = check_config(&dir, &["--config", config]);
    assert!(ok, "{err}");
    assert!(out.starts_with("srvdns: configuration OK\n"), "{out}");
    for expected in [
        "  dns        127.0.0.1:8600 (UDP and TCP)",
        "  domain     svc.example. (ttl 5s, negative ttl 5s)",
        "svc.example.zone  svc.example.: 1 record and the SOA",
        "registry.redb: new, created on start",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    assert!(
        !data.exists(),
        "--check-config must not create the data dir"
    );

    // A server on that data dir, on the very ports the check names: the check neither binds
    // them nor takes the store's lock.
    let mut server = start(&dir, &["--config", config], &[]);
    let client = reqwest::Client::new();
    let mut index = String::new();
    for id in ["a1", "a2"] {
        let response = client
            .put(format!(
                "http://{}/v1/services/api/instances/{id}",
                server.http
            ))
            .json(&json!({"address": "10.0.0.1", "port": 80}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        index = response.headers()["x-srvdns-index"]
            .to_str()
            .unwrap()
            .to_owned();
    }
    let http = server.http.to_string();
    let dns = server.dns.to_string();
    let (ok, out, err) = check_config(
        &dir,
        &[
            "--config",
            config,
            "--http-listen",
            &http,
            "--dns-listen",
            &dns,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("in use by a running srvdns (not read)"),
        "{out}"
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());

    let (ok, out, err) = check_config(&dir, &["--config", config]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "registry.redb: 2 instances of 1 services, index {index}\n"
        )),
        "{out}"
    );

    // Errors: the message names what is wrong, the exit code is 1.
    std::fs::write(zones.join("broken.zone"), "www IN A 1.2.3\n").unwrap();
    let (ok, out, err) = check_config(&dir, &["--config", config]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("broken.zone"), "{err}");
    std::fs::remove_file(zones.join("broken.zone")).unwrap();
    std::fs::write(data.join("registry.redb"), b"not a database, not at all").unwrap();
    let (ok, _, err) = check_config(&dir, &["--config", config]);
    assert!(!ok, "a corrupt store must fail the check");
    assert!(err.contains("registry.redb"), "{err}");
}

// ---- logs ----

#[tokio::test]
async fn default_logs_have_one_line_per_state_change_and_none_per_query() {
    let dir = temp_dir("logs");
    let mut server = start(&dir, &ephemeral(), &[("SRVDNS_DATA_DIR", "none")]);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/services/web/instances/w1", server.http);
    let response = client
        .put(&url)
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for name in [
        "web.service.local.",
        "nothing.service.local.",
        "example.com.",
    ] {
        for _ in 0..50 {
            a_records(server.dns, name).await;
        }
    }
    let response = client.delete(&url).send().await.unwrap();
    assert_eq!(response.status(), 204);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    let lines: Vec<String> = server.lines.try_iter().collect();
    let changes: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains("shutting down") && !l.contains("srvdns stopped"))
        .collect();
    assert_eq!(changes.len(), 2, "one line per state change: {lines:#?}");
    assert!(changes[0].contains("instance registered"), "{lines:#?}");
    assert!(changes[1].contains("instance deregistered"), "{lines:#?}");
}
