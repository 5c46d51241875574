//! The programs in examples/ run as their README says, against the real `srvdns` binary:
//! each must find, through plain DNS only, exactly the instances that were registered; and the
//! demo app must come and go from DNS under the sidecar.
//!
//! `#[ignore]`d: they need dig, curl, Python with dnspython, Go and Node, which `.ci/run`
//! installs (`cargo test -- --include-ignored`). `$SRVDNS_EXAMPLES_PYTHON` names the Python
//! that has dnspython (`.ci/run` makes a venv under target/; default `python3`). The Rust
//! example is the binary that `cargo test` builds beside the tests
//! (`cargo build --example find_service` when running this file alone).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_srvdns");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command with no `SRVDNS_*` variables from the test's environment.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SRVDNS_") {
            command.env_remove(key);
        }
    }
    command
}

/// `srvdns serve` on ephemeral ports, stopped on drop.
struct Server {
    child: Child,
    dns: SocketAddr,
    http: SocketAddr,
}

impl Server {
    fn start() -> Self {
        let mut child = command(BIN)
            .args([
                "serve",
                "--dns-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(["--data-dir", "none", "--zones", "none"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("srvdns starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let field = |line: &str, key: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .and_then(|value| value.parse().ok())
        };
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
                let _ = child.kill();
                let status = child.wait();
                panic!("srvdns did not log its start line in time (exit: {status:?})");
            };
            if line.contains("srvdns serving") {
                return Self {
                    dns: field(&line, "dns=").expect("dns="),
                    http: field(&line, "http=").expect("http="),
                    child,
                };
            }
        }
    }

    fn registry(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Runs an example with the DNS server and registry in its environment.
    fn example(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str], cwd: &Path) -> Output {
        command(program)
            .args(args)
            .env("SRVDNS_DNS", self.dns.to_string())
            .env("SRVDNS_REGISTRY", self.registry())
            .current_dir(cwd)
            .output()
            .expect("the example runs")
    }

    fn register(&self, args: &[&str]) {
        let output = command(BIN)
            .arg("register")
            .args(args)
            .args(["--registry", &self.registry()])
            .output()
            .unwrap();
        assert!(output.status.success(), "register {args:?}: {output:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The instance lines of an example's output — `target port priority weight address` —
/// sorted; other lines (a weighted pick, notes) are left out.
fn instance_lines(output: &Output, what: &str) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 5 && f[1..4].iter().all(|n| n.parse::<u16>().is_ok()))
        .map(|f| f.join(" "))
        .collect();
    lines.sort();
    lines
}

fn python() -> String {
    std::env::var("SRVDNS_EXAMPLES_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The Rust example, built by `cargo test` next to this test's own binary.
fn rust_example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let example = profile_dir.join("examples").join("find_service");
    assert!(
        example.exists(),
        "{} is missing: `cargo build --example find_service` (a plain `cargo test` builds it)",
        example.display()
    );
    example
}

#[test]
#[ignore = "interop: needs dig, curl, Python+dnspython, Go and Node (installed by .ci/run)"]
fn every_example_finds_the_registered_instances() {
    let server = Server::start();
    server.register(&[
        "payment",
        "payment-1",
        "--address",
        "10.0.1.5",
        "--port",
        "8080",
    ]);
    server.register(&[
        "payment",
        "payment-2",
        "--address",
        "10.0.1.6",
        "--port",
        "8081",
        "--weight",
        "3",
    ]);
    server.register(&[
        "payment",
        "payment-3",
        "--address",
        "10.0.1.8",
        "--port",
        "8083",
        "--priority",
        "1",
    ]);
    // Not healthy: no example may list it.
    server.register(&[
        "payment",
        "payment-4",
        "--address",
        "10.0.1.9",
        "--port",
        "8084",
        "--check-ttl",
        "1h",
    ]);
    let output = command(BIN)
        .args([
            "register",
            "other",
            "o1",
            "--address",
            "10.0.2.1",
            "--port",
            "80",
        ])
        .args(["--registry", &server.registry()])
        .output()
        .unwrap();
    assert!(output.status.success());
    let failing = http_put(
        server.http,
        "/v1/services/payment/instances/payment-4/status",
        r#"{"status": "critical", "output": "down for the test"}"#,
    );
    assert!(failing.starts_with("HTTP/1.1 200"), "{failing}");

    let examples = root().join("examples");
    // The shell example registers one more instance (with curl) before it looks.
    let shell = server.example("sh", &["shell/register_and_find.sh", "payment"], &examples);
    let expected = [
        "10-0-1-5.addr.service.local 8080 0 1 10.0.1.5",
        "10-0-1-6.addr.service.local 8081 0 3 10.0.1.6",
        "10-0-1-8.addr.service.local 8083 1 1 10.0.1.8",
        "10-0-1-99.addr.service.local 8080 0 1 10.0.1.99",
    ];
    assert_eq!(instance_lines(&shell, "shell"), expected);

    let runs = [
        (
            "python",
            server.example(python(), &["python/find_service.py", "payment"], &examples),
        ),
        (
            "node",
            server.example("node", &["node/find_service.js", "payment"], &examples),
        ),
        (
            "go",
            server.example("go", &["run", ".", "payment"], &examples.join("go")),
        ),
        (
            "rust",
            server.example(rust_example(), &["payment"], &examples),
        ),
    ];
    for (name, output) in &runs {
        assert_eq!(instance_lines(output, name), expected, "{name}");
    }
    // The Python example also picks one, by weight, from the lowest priority.
    let python_out = String::from_utf8_lossy(&runs[0].1.stdout);
    let picked = python_out
        .lines()
        .find_map(|l| l.strip_prefix("picked: "))
        .expect("a picked: line");
    assert!(
        ["10.0.1.5:8080", "10.0.1.6:8081", "10.0.1.99:8080"].contains(&picked),
        "{picked}"
    );

    // A service that does not exist: each example fails with a message, not a traceback.
    for (program, args, cwd) in [
        (
            python(),
            vec!["python/find_service.py", "nothing"],
            examples.clone(),
        ),
        (
            "node".into(),
            vec!["node/find_service.js", "nothing"],
            examples.clone(),
        ),
        (
            "go".into(),
            vec!["run", ".", "nothing"],
            examples.join("go"),
        ),
    ] {
        let output = server.example(&program, &args, &cwd);
        assert!(!output.status.success(), "{program} {args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with("find_service: ") && !stderr.contains("Traceback"),
            "{program}: {stderr}"
        );
    }
}

/// One HTTP/1.1 request with a body over a plain socket; returns the raw answer.
fn http_put(addr: SocketAddr, path: &str, body: &str) -> String {
    http_request(
        addr,
        &format!(
            "PUT {path} HTTP/1.1\r\nhost: srvdns\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n"),
    )
}

fn http_request(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// Polls `check` every 50 ms until it returns true; panics after `deadline`.
fn eventually(deadline: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "interop: needs Python with dnspython (installed by .ci/run)"]
fn the_demo_app_runs_under_the_sidecar_and_leaves_dns_before_it_stops() {
    let server = Server::start();
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let app: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let port = port.to_string();
    let mut sidecar = command(BIN)
        .args([
            "sidecar",
            "--service",
            "demo",
            "--id",
            "demo-1",
            "--address",
            "127.0.0.1",
        ])
        .args([
            "--port",
            &port,
            "--check-http",
            &format!("http://{app}/health"),
        ])
        .args([
            "--interval",
            "200ms",
            "--drain",
            "500ms",
            "--registry",
            &server.registry(),
        ])
        .args(["--", "python3", "examples/demo_app.py", "--port", &port])
        .current_dir(root())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the sidecar starts");
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = sidecar.stdout.take().unwrap();
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let examples = root().join("examples");
    let find = || server.example(python(), &["python/find_service.py", "demo"], &examples);
    let found = format!("127-0-0-1.addr.service.local {port} 0 1 127.0.0.1");
    eventually(Duration::from_secs(20), "the demo app in DNS", || {
        let output = find();
        output.status.success() && instance_lines(&output, "python") == [found.as_str()]
    });

    assert!(http_get(app, "/fail").starts_with("HTTP/1.0 200"));
    eventually(
        Duration::from_secs(5),
        "the failing demo app out of DNS",
        || {
            let output = find();
            String::from_utf8_lossy(&output.stderr).contains("no healthy instance")
        },
    );
    assert!(http_get(app, "/recover").starts_with("HTTP/1.0 200"));
    eventually(Duration::from_secs(5), "the demo app back in DNS", || {
        let output = find();
        output.status.success() && instance_lines(&output, "python") == [found.as_str()]
    });

    let pid = i32::try_from(sidecar.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = sidecar.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "the sidecar did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "the demo app exits 0 on SIGTERM: {status}"
    );
    // Give the reader thread the last lines.
    eventually(Duration::from_secs(5), "the app's last words", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("the app exited"))
    });
    let log = log.lock().unwrap().clone();
    let position = |text: &str| {
        log.iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text:?} not in {log:#?}"))
    };
    assert!(
        position("deregistered") < position("demo app: SIGTERM, stopping"),
        "the app is stopped after deregistration: {log:#?}"
    );
}
