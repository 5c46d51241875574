//! The client commands — `srvdns services`, `instances`, `register`, `deregister`, `watch` —
//! run as the real binary against a real in-process server: what they print, what they
//! say when the registry is unreachable or answers an error, and their exit codes
//! (0 ok, 1 error answer, 2 usage, 3 unreachable, 4 not found).

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use srvdns::config::Config;
use support::TestServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_srvdns");

/// What one command run printed, and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A command with no `SRVDNS_*` variables from the test's environment.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SRVDNS_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `srvdns ARGS… --registry URL` to completion.
async fn srvdns(registry: &str, args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        command(args).args(["--registry", registry]).output(),
    )
    .await
    .expect("the command finishes in time")
    .expect("the command runs");
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn registry(server: &TestServer) -> String {
    format!("http://{}", server.http)
}

/// A loopback URL where nothing listens.
async fn nowhere() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Splits a table row at the column starts of its header line.
fn columns(header: &str, row: &str) -> Vec<String> {
    let starts: Vec<usize> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts
                .get(n + 1)
                .copied()
                .unwrap_or(row.len())
                .min(row.len());
            let cell = &row[start.min(row.len())..end];
            if n + 1 < starts.len() {
                assert!(
                    cell.ends_with(' ') || end == row.len(),
                    "column {n} of {row:?} is not aligned under {header:?}"
                );
            }
            cell.trim().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn services_and_instances_print_aligned_tables() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080, "tags": ["v2"]}),
        )
        .await;
    server
        .register(
            "payment",
            "payment-2",
            json!({"address": "10.0.1.6", "port": 9090, "weight": 30,
                   "check": {"type": "ttl", "ttl": "1m", "status": "critical"}}),
        )
        .await;
    let reply = server
        .put(
            "/v1/services/payment/instances/payment-2/status",
            json!({"status": "critical", "output": "HTTP GET /health: 500 in 3 ms"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    server
        .register("web", "w1", json!({"address": "10.0.2.1", "port": 80}))
        .await;

    let run = srvdns(&registry(&server), &["services"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "NAME     INSTANCES  PASSING  WARNING  CRITICAL  MAINTENANCE\n\
         payment  2          1        0        1         0\n\
         web      1          1        0        0         0\n"
    );

    let run = srvdns(&registry(&server), &["instances", "payment"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(
        lines[0], "ID         STATUS    ADDRESS   PORT  WEIGHT  OUTPUT",
        "{}",
        run.stdout
    );
    assert_eq!(
        columns(lines[0], lines[1]),
        ["payment-1", "passing", "10.0.1.5", "8080", "1", "-"]
    );
    assert_eq!(
        columns(lines[0], lines[2]),
        [
            "payment-2",
            "critical",
            "10.0.1.6",
            "9090",
            "30",
            "HTTP GET /health: 500 in 3 ms"
        ]
    );
    assert_eq!(run.stderr, "");
    server.stop().await;
}

#[tokio::test]
async fn json_flags_print_the_registry_json() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080, "meta": {"zone": "a"}}),
        )
        .await;
    let run = srvdns(&registry(&server), &["instances", "payment", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let printed: Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(printed, server.get("/v1/services/payment").await.json);
    assert_eq!(printed["instances"][0]["meta"]["zone"], "a");

    let run = srvdns(&registry(&server), &["services", "--json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let printed: Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(
        printed,
        json!([{"name": "payment", "instances": 1, "passing": 1, "warning": 0,
                "critical": 0, "maintenance": 0}])
    );
    server.stop().await;
}

#[tokio::test]
async fn register_and_deregister_round_trip() {
    let server = TestServer::start().await;
    let url = registry(&server);
    let run = srvdns(
        &url,
        &[
            "register",
            "payment",
            "payment-1",
            "--address",
            "10.0.1.5",
            "--port",
            "8080",
            "--tag",
            "v2",
            "--tag",
            "canary",
            "--meta",
            "version=2.1.0",
            "--meta",
            "zone=us-east-1a",
            "--weight",
            "3",
            "--priority",
            "1",
            "--check-ttl",
            "30s",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "registered payment/payment-1 at 10.0.1.5:8080 (passing)\n"
    );
    let instance = &server.get("/v1/services/payment").await.json["instances"][0];
    assert_eq!(instance["tags"], json!(["v2", "canary"]));
    assert_eq!(
        instance["meta"],
        json!({"version": "2.1.0", "zone": "us-east-1a"})
    );
    assert_eq!(instance["weight"], 3);
    assert_eq!(instance["priority"], 1);
    assert_eq!(instance["checks"][0]["type"], "ttl");
    assert_eq!(instance["checks"][0]["ttl"], "30s");

    // Active checks, with --json output.
    let run = srvdns(
        &url,
        &[
            "register",
            "payment",
            "payment-2",
            "--address",
            "10.0.1.6",
            "--port",
            "8080",
            "--check-http",
            "http://10.0.1.6:8080/health",
            "--check-tcp",
            "10.0.1.6:8080",
            "--interval",
            "7s",
            "--timeout",
            "2s",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let printed: Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(printed["id"], "payment-2");
    let checks = &printed["checks"];
    assert_eq!(checks[0]["type"], "http");
    assert_eq!(checks[0]["url"], "http://10.0.1.6:8080/health");
    assert_eq!(checks[0]["interval"], "7s");
    assert_eq!(checks[0]["timeout"], "2s");
    assert_eq!(checks[1]["type"], "tcp");
    assert_eq!(checks[1]["target"], "10.0.1.6:8080");

    let run = srvdns(&url, &["deregister", "payment", "payment-1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "deregistered payment/payment-1\n");
    let ids: Vec<Value> = server.get("/v1/services/payment").await.json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].clone())
        .collect();
    assert_eq!(ids, [json!("payment-2")]);

    // Gone already: not found, exit code 4, the registry's message.
    let run = srvdns(&url, &["deregister", "payment", "payment-1"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "srvdns: instance \"payment-1\" of service \"payment\" is not registered\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn error_answers_show_the_registry_message_and_field() {
    let server = TestServer::start().await;
    let url = registry(&server);
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["register", "Pay_Ment", "p1", "--port", "80"],
            "is not a DNS label",
            "(field: service)",
        ),
        (
            &[
                "register",
                "payment",
                "p1",
                "--port",
                "80",
                "--address",
                "10.0.1.999",
            ],
            "10.0.1.999",
            "(field: address)",
        ),
        (
            &["register", "payment", "p1", "--port", "0"],
            "port",
            "(field: port)",
        ),
    ];
    for (args, message, field) in cases {
        let run = srvdns(&url, args).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {run:?}");
        assert!(
            lines[0].starts_with("srvdns: the registry answered 400 Bad Request: "),
            "{run:?}"
        );
        assert!(
            lines[0].contains(message) && lines[0].ends_with(field),
            "{args:?}: {run:?}"
        );
    }

    let run = srvdns(&url, &["instances", "nothing"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(
        run.stderr,
        "srvdns: service \"nothing\" has no registered instances\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_token_is_sent_from_the_flag_or_the_environment() {
    let server = TestServer::start_with(Config {
        token: Some("s3cret".into()),
        ..support::test_config()
    })
    .await;
    let url = registry(&server);
    let register = ["register", "payment", "p1", "--port", "80"];
    let run = srvdns(&url, &register).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.starts_with(
            "srvdns: the registry answered 401 Unauthorized: this server requires a token"
        ),
        "{run:?}"
    );
    let run = srvdns(&url, &[&register[..], &["--token", "s3cret"]].concat()).await;
    assert_eq!(run.code, 0, "{run:?}");
    let output = command(&["deregister", "payment", "p1", "--registry", &url])
        .env("SRVDNS_TOKEN", "s3cret")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_registry_is_one_clear_line_and_exit_code_3() {
    let url = nowhere().await;
    for args in [
        &["services"][..],
        &["instances", "payment"],
        &["register", "payment", "p1", "--port", "80"],
        &["deregister", "payment", "p1"],
        &["watch", "payment"],
    ] {
        let run = srvdns(&url, args).await;
        assert_eq!(run.code, 3, "{args:?}: {run:?}");
        assert_eq!(run.stdout, "");
        assert_eq!(
            run.stderr,
            format!(
                "srvdns: cannot reach the registry at {url}: Connection refused (os error 111)\n"
            ),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn bad_usage_exits_with_code_2() {
    let run = srvdns("localhost:8500", &["services"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .starts_with("srvdns: registry URL \"localhost:8500\" is not usable"),
        "{run:?}"
    );
    let run = srvdns("http://127.0.0.1:8500", &["register", "payment", "p1"]).await;
    assert_eq!(run.code, 2, "missing --port: {run:?}");
    assert!(run.stderr.contains("--port"), "{run:?}");
    let run = srvdns(
        "http://127.0.0.1:8500",
        &[
            "register", "payment", "p1", "--port", "80", "--meta", "novalue",
        ],
    )
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("KEY=VALUE"), "{run:?}");
}

#[tokio::test]
async fn the_registry_flag_has_an_environment_variable_and_a_default() {
    let server = TestServer::start().await;
    let output = command(&["services"])
        .env("SRVDNS_REGISTRY", registry(&server))
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let output = command(&["services", "--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for text in [
        "--registry",
        "SRVDNS_REGISTRY",
        "http://127.0.0.1:8500",
        "--token",
        "SRVDNS_TOKEN",
    ] {
        assert!(help.contains(text), "{text} missing from services --help");
    }
    let output = command(&["--help"]).output().await.unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for subcommand in [
        "serve",
        "sidecar",
        "services",
        "instances",
        "register",
        "deregister",
        "watch",
    ] {
        assert!(
            help.contains(subcommand),
            "{subcommand} missing from --help"
        );
    }
    server.stop().await;
}

/// Reads lines from a running `watch`, failing if the next one takes longer than `within`.
struct Watch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watch {
    async fn start(registry: &str, service: &str) -> Self {
        let mut child = command(&["watch", service, "--registry", registry])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("watch starts");
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next line without its timestamp.
    async fn next(&mut self, within: Duration) -> String {
        let line = tokio::time::timeout(within, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no watch line within {within:?}"))
            .expect("read")
            .expect("watch still running");
        let (time, rest) = line.split_once(' ').expect("a timestamp first");
        assert!(
            humantime::parse_rfc3339(time).is_ok(),
            "{line:?} starts with a timestamp"
        );
        rest.to_owned()
    }
}

#[tokio::test]
async fn watch_prints_each_change_within_a_second() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080}),
        )
        .await;
    let mut watch = Watch::start(&registry(&server), "payment").await;
    let second = Duration::from_secs(1);
    assert_eq!(
        watch.next(Duration::from_secs(10)).await,
        "payment/payment-1 present status=passing address=10.0.1.5:8080 priority=0 weight=1"
    );

    server
        .register(
            "payment",
            "payment-2",
            json!({"address": "10.0.1.6", "port": 8080, "weight": 3, "tags": ["v2"]}),
        )
        .await;
    assert_eq!(
        watch.next(second).await,
        "payment/payment-2 registered status=passing address=10.0.1.6:8080 priority=0 \
         weight=3 tags=v2"
    );

    let reply = server
        .put(
            "/v1/services/payment/instances/payment-1/maintenance",
            json!({"enabled": true, "reason": "deploy"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        watch.next(second).await,
        "payment/payment-1 changed (was passing) status=maintenance address=10.0.1.5:8080 \
         priority=0 weight=1 output=\"deploy\""
    );

    let reply = server
        .delete("/v1/services/payment/instances/payment-2")
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(watch.next(second).await, "payment/payment-2 deregistered");
    let reply = server
        .delete("/v1/services/payment/instances/payment-1")
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(watch.next(second).await, "payment/payment-1 deregistered");

    // A service that comes back after having no instances at all.
    server
        .register(
            "payment",
            "payment-3",
            json!({"address": "10.0.1.7", "port": 80}),
        )
        .await;
    assert_eq!(
        watch.next(second).await,
        "payment/payment-3 registered status=passing address=10.0.1.7:80 priority=0 weight=1"
    );
    let _ = watch.child.kill().await;
    server.stop().await;
}

#[tokio::test]
async fn watch_waits_for_a_service_that_does_not_exist_yet_and_survives_a_restart() {
    let server = TestServer::start().await;
    let mut watch = Watch::start(&registry(&server), "later").await;
    server
        .register("later", "l1", json!({"address": "10.0.3.1", "port": 80}))
        .await;
    // "registered" once the watcher waits; "present" if the registration beat its first read.
    let first = watch.next(Duration::from_secs(10)).await;
    assert!(
        [
            "later/l1 registered status=passing address=10.0.3.1:80 priority=0 weight=1",
            "later/l1 present status=passing address=10.0.3.1:80 priority=0 weight=1",
        ]
        .contains(&first.as_str()),
        "{first}"
    );
    // The registry restarts empty on the same address: the watcher notices the instance is
    // gone, then sees the new registration.
    let server = server.restart().await;
    assert_eq!(
        watch.next(Duration::from_secs(10)).await,
        "later/l1 deregistered"
    );
    server
        .register("later", "l2", json!({"address": "10.0.3.2", "port": 80}))
        .await;
    assert_eq!(
        watch.next(Duration::from_secs(5)).await,
        "later/l2 registered status=passing address=10.0.3.2:80 priority=0 weight=1"
    );
    let _ = watch.child.kill().await;
    server.stop().await;
}
