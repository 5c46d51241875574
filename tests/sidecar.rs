//! `srvdns sidecar` as users run it: the real binary, a real in-process registry, a real local
//! app to probe (`support::target::Target`) or a real child process — and DNS answers as the
//! proof of what clients see. Every wait polls with a deadline; nothing sleeps to synchronize.

mod support;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use reqwest::StatusCode;
use serde_json::{Value, json};
use srvdns::config::Config;
use support::target::{Mode, Target};
use support::{TestServer, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_srvdns");

/// A running `srvdns sidecar` and the log lines it printed so far.
struct Sidecar {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

/// A command with no `SRVDNS_*` variables from the test's environment.
fn command() -> Command {
    let mut command = Command::new(BIN);
    command.kill_on_drop(true).env("RUST_LOG", "srvdns=debug");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SRVDNS_") {
            command.env_remove(key);
        }
    }
    command
}

impl Sidecar {
    /// Starts `srvdns sidecar --registry <server> ARGS…` with `envs`.
    fn start(server: &TestServer, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = command()
            .arg("sidecar")
            .args(["--registry", &format!("http://{}", server.http)])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sidecar starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self { child, log }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id().expect("still running")).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill");
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "the sidecar did not exit within {deadline:?}; its log:\n{}",
                self.log().join("\n")
            ),
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Log lines containing `text`.
    fn count(&self, text: &str) -> usize {
        self.log().iter().filter(|l| l.contains(text)).count()
    }

    async fn wait_for_log(&self, text: &str, times: usize, deadline: Duration) {
        let what = format!("{times}× {text:?} in the sidecar's log");
        eventually(deadline, &what, || async {
            (self.count(text) >= times).then_some(())
        })
        .await;
    }
}

/// The A records the server answers for `name`, as `"<name> <ttl> A <address>"`.
async fn a_records(server: &TestServer, name: &str) -> Vec<String> {
    let answer = server.query(name, RecordType::A).await;
    support::rrs(&answer.answers)
}

async fn wait_for_dns(server: &TestServer, name: &str, expected: &[&str], deadline: Duration) {
    let what = format!("{name} A = {expected:?}");
    eventually(deadline, &what, || async {
        (a_records(server, name).await == expected).then_some(())
    })
    .await;
}

/// The one instance of `service`, as the registry shows it.
async fn instance(server: &TestServer, service: &str) -> Option<Value> {
    let reply = server.get(&format!("/v1/services/{service}")).await;
    match reply.status {
        StatusCode::OK => Some(reply.json["instances"][0].clone()),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET /v1/services/{service}: {other}"),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("srvdns-sidecar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SECOND: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(10);
const WEB_A: &str = "web.service.local. 5 A 127.0.0.1";

/// A shell loop that stands for a long-running app, but ends by itself after a minute so that
/// a failed test leaves nothing behind.
const APP_LOOP: &str = "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";

#[tokio::test]
async fn registers_the_app_from_flags_and_environment_and_keeps_it_in_dns() {
    let server = TestServer::start().await;
    let app = Target::start().await;
    let port = app.addr.port().to_string();
    let health = app.url("/health");
    let mut sidecar = Sidecar::start(
        &server,
        &["--address", "127.0.0.1", "--tag", "v2", "--meta", "zone=a"],
        &[
            ("SRVDNS_SERVICE", "web"),
            ("SRVDNS_ID", "web-1"),
            ("SRVDNS_PORT", &port),
            ("SRVDNS_CHECK_HTTP", &health),
            ("SRVDNS_INTERVAL", "1s"),
            ("SRVDNS_WEIGHT", "7"),
            ("SRVDNS_DRAIN", "100ms"),
        ],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    let registered = instance(&server, "web").await.expect("registered");
    assert_eq!(registered["id"], "web-1");
    assert_eq!(registered["port"], app.addr.port());
    assert_eq!(registered["weight"], 7);
    assert_eq!(registered["tags"], json!(["v2"]));
    assert_eq!(registered["meta"], json!({"zone": "a"}));
    // One ttl check, three intervals long; the sidecar probes the app itself.
    let checks = registered["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0]["type"], "ttl");
    assert_eq!(checks[0]["ttl"], "3s");
    assert!(app.hits() >= 1, "the app was probed locally");
    // Heartbeats keep coming: the app is probed again a second later.
    let hits = app.hits();
    eventually(DEADLINE, "another probe", || async {
        (app.hits() > hits).then_some(())
    })
    .await;
    assert_eq!(instance(&server, "web").await.unwrap()["status"], "passing");
    sidecar.signal(libc::SIGTERM);
    sidecar.wait_exit(DEADLINE).await;
    server.stop().await;
}

#[tokio::test]
async fn app_health_flips_take_the_instance_out_of_dns_and_back() {
    let server = TestServer::start().await;
    let app = Target::start().await;
    let port = app.addr.port().to_string();
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--check-http",
            &app.url("/health"),
            "--interval",
            "200ms",
            "--drain",
            "100ms",
            "--check-ttl",
            "10s",
        ],
        &[],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;

    app.set(Mode::Error);
    wait_for_dns(&server, "web.service.local.", &[], 2 * SECOND).await;
    let failing = instance(&server, "web").await.unwrap();
    assert_eq!(failing["status"], "critical");
    let output = failing["output"].as_str().unwrap();
    assert!(
        output.contains("500 Internal Server Error"),
        "the probe's output is reported: {output}"
    );

    app.set(Mode::Healthy);
    wait_for_dns(&server, "web.service.local.", &[WEB_A], 2 * SECOND).await;
    assert_eq!(instance(&server, "web").await.unwrap()["status"], "passing");

    // A 429 is a warning: still served (warning instances are, by default).
    app.set(Mode::TooMany);
    eventually(DEADLINE, "status warning", || async {
        (instance(&server, "web").await?["status"] == "warning").then_some(())
    })
    .await;
    assert_eq!(a_records(&server, "web.service.local.").await, [WEB_A]);

    // Each change was logged once, though the app was probed many times meanwhile.
    assert_eq!(
        sidecar.count("the app's health changed"),
        2,
        "{:#?}",
        sidecar.log()
    );
    assert_eq!(
        sidecar.count("the app is healthy again"),
        1,
        "{:#?}",
        sidecar.log()
    );
    sidecar.signal(libc::SIGTERM);
    sidecar.wait_exit(DEADLINE).await;
    server.stop().await;
}

#[tokio::test]
async fn an_app_that_is_not_ready_never_shows_up_in_dns_until_it_is() {
    let server = TestServer::start().await;
    let mut app = Target::start().await;
    app.down().await;
    let port = app.addr.port().to_string();
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--check-tcp",
            &app.addr.to_string(),
            "--interval",
            "200ms",
            "--drain",
            "100ms",
        ],
        &[],
    );
    // Registered critical from the first moment, with the probe's output.
    let registered = eventually(DEADLINE, "registered", || async {
        instance(&server, "web").await
    })
    .await;
    assert_eq!(registered["status"], "critical");
    assert_eq!(
        a_records(&server, "web.service.local.").await,
        Vec::<String>::new()
    );
    eventually(DEADLINE, "the refused connection is the output", || async {
        let output = instance(&server, "web").await?["output"]
            .as_str()?
            .to_owned();
        output.contains("TCP connect").then_some(())
    })
    .await;
    app.up().await;
    wait_for_dns(&server, "web.service.local.", &[WEB_A], 2 * SECOND).await;
    sidecar.signal(libc::SIGTERM);
    sidecar.wait_exit(DEADLINE).await;
    server.stop().await;
}

#[tokio::test]
async fn the_registration_is_restored_when_the_registry_comes_back() {
    let server = TestServer::start().await;
    let app = Target::start().await;
    let port = app.addr.port().to_string();
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--check-http",
            &app.url("/health"),
            "--interval",
            "200ms",
            "--drain",
            "100ms",
            "--check-ttl",
            "10s",
        ],
        &[],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;

    // A quick restart: the new registry is empty; the next heartbeat is a 404.
    let server = server.restart().await;
    wait_for_dns(&server, "web.service.local.", &[WEB_A], 2 * SECOND).await;
    sidecar
        .wait_for_log("the registry does not know the instance", 1, SECOND)
        .await;

    // A longer outage: the sidecar retries with backoff, says so once, and registers again
    // as soon as a registry answers on the same address.
    let (dns, http) = (server.dns, server.http);
    server.stop().await;
    sidecar
        .wait_for_log("retrying after a pause", 3, DEADLINE)
        .await;
    assert_eq!(
        sidecar.count("the registry is unavailable"),
        1,
        "{:#?}",
        sidecar.log()
    );
    let server = TestServer::start_with(Config {
        dns_listen: dns,
        http_listen: http,
        ..support::test_config()
    })
    .await;
    // The backoff is at most a few seconds at this point.
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    sidecar
        .wait_for_log("the registry answers again", 1, SECOND)
        .await;
    assert_eq!(instance(&server, "web").await.unwrap()["status"], "passing");
    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait_exit(DEADLINE).await.success());
    server.stop().await;
}

#[tokio::test]
async fn sigterm_and_sigint_drain_the_instance_out_of_dns_then_deregister_it() {
    let server = TestServer::start().await;
    let app = Target::start().await;
    let port = app.addr.port().to_string();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut sidecar = Sidecar::start(
            &server,
            &[
                "--service",
                "web",
                "--id",
                "web-1",
                "--address",
                "127.0.0.1",
                "--port",
                &port,
                "--check-http",
                &app.url("/health"),
                "--interval",
                "200ms",
                "--drain",
                "2s",
            ],
            &[],
        );
        wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
        sidecar.signal(signal);
        // Out of DNS at once, while the sidecar (and so the app) is still up, draining.
        wait_for_dns(&server, "web.service.local.", &[], SECOND).await;
        assert!(sidecar.is_running(), "out of DNS before the process exits");
        let draining = instance(&server, "web").await.expect("still registered");
        assert_eq!(draining["status"], "maintenance");
        let status = sidecar.wait_exit(DEADLINE).await;
        assert_eq!(status.code(), Some(0), "{:#?}", sidecar.log());
        assert_eq!(instance(&server, "web").await, None, "deregistered");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_second_signal_cuts_the_drain_short() {
    let server = TestServer::start().await;
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            "80",
            "--interval",
            "200ms",
            "--drain",
            "1h",
        ],
        &[],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    sidecar.signal(libc::SIGTERM);
    wait_for_dns(&server, "web.service.local.", &[], SECOND).await;
    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait_exit(DEADLINE).await.success());
    assert_eq!(instance(&server, "web").await, None, "deregistered");
    server.stop().await;
}

/// A child that, on SIGTERM (or SIGINT), records what `srvdns instances web` says at that
/// moment and exits with `code`.
fn recording_child(server: &TestServer, out: &std::path::Path, trap: &str, code: u8) -> String {
    format!(
        "trap '\"{BIN}\" instances web --registry http://{} > \"{}\" 2>&1; echo \"rc=$?\" >> \"{}\"; exit {code}' {trap}; {APP_LOOP}",
        server.http,
        out.display(),
        out.display(),
    )
}

#[tokio::test]
async fn child_mode_stops_the_app_only_after_draining_and_exits_with_its_status() {
    let server = TestServer::start().await;
    let dir = temp_dir("child");
    for (signal, trap, code) in [(libc::SIGTERM, "TERM", 7), (libc::SIGINT, "INT", 8)] {
        let out = dir.join(format!("{trap}.out"));
        let script = recording_child(&server, &out, trap, code);
        let mut sidecar = Sidecar::start(
            &server,
            &[
                "--service",
                "web",
                "--id",
                "web-1",
                "--address",
                "127.0.0.1",
                "--port",
                "80",
                "--interval",
                "200ms",
                "--drain",
                "1s",
                "--",
                "sh",
                "-c",
                &script,
            ],
            &[],
        );
        wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
        sidecar.signal(signal);
        wait_for_dns(&server, "web.service.local.", &[], SECOND).await;
        assert!(!out.exists(), "the app is not stopped while draining");
        let status = sidecar.wait_exit(DEADLINE).await;
        assert_eq!(status.code(), Some(code.into()), "{:#?}", sidecar.log());
        // When the app got the signal, the instance was already deregistered.
        let recorded = std::fs::read_to_string(&out).expect("the app's trap ran");
        assert_eq!(
            recorded,
            "srvdns: service \"web\" has no registered instances\nrc=4\n"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_app_killed_by_the_passed_signal_gives_128_plus_the_signal() {
    let server = TestServer::start().await;
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            "80",
            "--interval",
            "200ms",
            "--drain",
            "0s",
            "--",
            "sleep",
            "60",
        ],
        &[],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    sidecar.signal(libc::SIGTERM);
    let status = sidecar.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(instance(&server, "web").await, None);
    server.stop().await;
}

#[tokio::test]
async fn when_the_app_exits_on_its_own_the_sidecar_deregisters_and_exits_with_its_status() {
    let server = TestServer::start().await;
    let dir = temp_dir("exit");
    let stop = dir.join("stop");
    let script = format!(
        "i=0; while [ ! -e \"{}\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 3",
        stop.display()
    );
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            "80",
            "--interval",
            "200ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    std::fs::write(&stop, "").unwrap();
    let status = sidecar.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(3), "{:#?}", sidecar.log());
    assert_eq!(instance(&server, "web").await, None, "deregistered");
    server.stop().await;
}

#[tokio::test]
async fn sighup_is_passed_on_to_the_app_at_once() {
    let server = TestServer::start().await;
    let dir = temp_dir("hup");
    let out = dir.join("hup.out");
    let script = format!("trap 'echo hup >> \"{}\"' HUP; {APP_LOOP}", out.display());
    let mut sidecar = Sidecar::start(
        &server,
        &[
            "--service",
            "web",
            "--id",
            "web-1",
            "--address",
            "127.0.0.1",
            "--port",
            "80",
            "--interval",
            "200ms",
            "--drain",
            "0s",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    );
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    sidecar.signal(libc::SIGHUP);
    eventually(DEADLINE, "the app got SIGHUP", || async {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|text| text == "hup\n")
    })
    .await;
    assert!(sidecar.is_running());
    assert_eq!(a_records(&server, "web.service.local.").await, [WEB_A]);
    sidecar.signal(libc::SIGTERM);
    sidecar.wait_exit(DEADLINE).await;
    server.stop().await;
}

#[tokio::test]
async fn a_refused_registration_stops_the_sidecar_with_the_registry_message() {
    let server = TestServer::start_with(Config {
        token: Some("s3cret".into()),
        ..support::test_config()
    })
    .await;
    let args = [
        "--service",
        "web",
        "--id",
        "web-1",
        "--address",
        "127.0.0.1",
        "--port",
        "80",
        "--interval",
        "200ms",
        "--drain",
        "100ms",
    ];
    let mut sidecar = Sidecar::start(&server, &args, &[]);
    let status = sidecar.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(1));
    sidecar
        .wait_for_log(
            "srvdns sidecar: the registry refused the instance",
            1,
            SECOND,
        )
        .await;
    assert!(
        sidecar.count("401 Unauthorized") >= 1,
        "{:#?}",
        sidecar.log()
    );

    // With the token (from the environment) it registers.
    let mut sidecar = Sidecar::start(&server, &args, &[("SRVDNS_TOKEN", "s3cret")]);
    wait_for_dns(&server, "web.service.local.", &[WEB_A], DEADLINE).await;
    sidecar.signal(libc::SIGTERM);
    assert!(sidecar.wait_exit(DEADLINE).await.success());
    assert_eq!(instance(&server, "web").await, None);
    server.stop().await;
}

#[tokio::test]
async fn bad_flags_and_a_missing_command_fail_at_once() {
    let server = TestServer::start().await;
    let base = ["--service", "web", "--id", "web-1", "--port", "80"];
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["--interval", "1s", "--check-ttl", "500ms"],
            2,
            "--check-ttl",
        ),
        (&["--check-http", "localhost:80/health"], 2, "--check-http"),
        (&["--check-tcp", "localhost"], 2, "--check-tcp"),
        (
            &["--", "/nonexistent/app"],
            127,
            "cannot start /nonexistent/app",
        ),
        (&["--interval", "soon"], 2, "--interval"),
    ];
    for (args, code, message) in cases {
        let mut sidecar = Sidecar::start(&server, &[&base[..], args].concat(), &[]);
        let status = sidecar.wait_exit(DEADLINE).await;
        assert_eq!(status.code(), Some(code), "{args:?}: {:#?}", sidecar.log());
        sidecar.wait_for_log(message, 1, SECOND).await;
    }
    let mut sidecar = Sidecar::start(
        &server,
        &["--service", "Web_1", "--id", "x", "--port", "80"],
        &[],
    );
    assert_eq!(sidecar.wait_exit(DEADLINE).await.code(), Some(2));
    sidecar.wait_for_log("--service: ", 1, SECOND).await;
    assert_eq!(instance(&server, "web").await, None, "nothing registered");
    server.stop().await;
}
