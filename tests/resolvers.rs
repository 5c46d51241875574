//! Real resolvers in front of srvdns, as docs/resolvers.md configures them: unbound with a
//! `stub-zone`, dnsmasq with `server=/service.local/…`. Each test registers an instance,
//! resolves it through the resolver with `dig`, deregisters it, and checks that the resolver
//! stops answering it within the TTL (its cache may hold the answer that long, no longer).
//!
//! `#[ignore]`d interop group: needs `unbound`, `dnsmasq` and `dig` (Debian: unbound,
//! dnsmasq, dnsutils; `.ci/run` installs them). Resolvers run in the foreground as the
//! current user, on loopback ports picked here, with configuration files written here.

mod support;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::process::{Srvdns, temp_dir};

/// The TTL srvdns serves in these tests: the longest a resolver may keep a stale answer.
const TTL: Duration = Duration::from_secs(2);

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A resolver child process, killed when dropped.
struct Resolver {
    child: Child,
    port: u16,
    name: &'static str,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` must be installed: the interop group says how to get it.
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{program} is missing: install it (Debian: apt-get install {package}; bash .ci/run \
         does), or leave out the interop group"
    );
}

fn spawn(name: &'static str, port: u16, command: &mut Command) -> Resolver {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let mut resolver = Resolver { child, port, name };
    // Ready when it answers at all (any status).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig(&resolver, "ready.service.local", "A").is_none() {
        if let Ok(Some(status)) = resolver.child.try_wait() {
            panic!("{name} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{name} did not answer in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    resolver
}

/// unbound with a stub-zone for the service domain (docs/resolvers.md).
fn unbound(dir: &Path, srvdns: SocketAddr) -> Resolver {
    require("unbound", "unbound");
    let port = free_port();
    let config = dir.join("unbound.conf");
    std::fs::write(
        &config,
        format!(
            r#"server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  # srvdns is on loopback: let unbound query it.
  do-not-query-localhost: no
  # The service domain is not signed.
  domain-insecure: "service.local"
  module-config: "iterator"
  # Foreground, as the current user, everything in this directory.
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  directory: "{dir}"
  use-syslog: no
  logfile: ""
  verbosity: 0
remote-control:
  control-enable: no
stub-zone:
  name: "service.local"
  stub-addr: {ip}@{srvdns_port}
"#,
            dir = dir.display(),
            ip = srvdns.ip(),
            srvdns_port = srvdns.port(),
        ),
    )
    .expect("write unbound.conf");
    spawn(
        "unbound",
        port,
        Command::new("unbound").arg("-d").arg("-c").arg(&config),
    )
}

/// dnsmasq forwarding the service domain to srvdns (docs/resolvers.md).
fn dnsmasq(dir: &Path, srvdns: SocketAddr) -> Resolver {
    require("dnsmasq", "dnsmasq");
    let port = free_port();
    let user = String::from_utf8(
        Command::new("id")
            .arg("-un")
            .output()
            .expect("id -un")
            .stdout,
    )
    .expect("a user name");
    let config = dir.join("dnsmasq.conf");
    std::fs::write(
        &config,
        format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             server=/service.local/{ip}#{srvdns_port}\n\
             # Foreground, as the current user, no pid file.\n\
             keep-in-foreground\nuser={user}\npid-file=\n",
            ip = srvdns.ip(),
            srvdns_port = srvdns.port(),
            user = user.trim(),
        ),
    )
    .expect("write dnsmasq.conf");
    spawn(
        "dnsmasq",
        port,
        Command::new("dnsmasq").arg(format!("--conf-file={}", config.display())),
    )
}

/// What the resolver answers: `(status, answer records)`, or `None` when it does not answer.
fn dig(resolver: &Resolver, name: &str, rtype: &str) -> Option<(String, Vec<String>)> {
    require("dig", "dnsutils");
    let output = Command::new("dig")
        .args(["@127.0.0.1", "-p", &resolver.port.to_string()])
        .args([
            "+tries=1",
            "+time=1",
            "+noall",
            "+comments",
            "+answer",
            name,
            rtype,
        ])
        .output()
        .expect("dig runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let status = text.split("status: ").nth(1)?.split(',').next()?.to_owned();
    let mut records: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(|l| {
            // Drop the TTL, which counts down in a cache.
            let fields: Vec<&str> = l.split_whitespace().collect();
            [&fields[..1], &fields[2..]].concat().join(" ")
        })
        .collect();
    records.sort();
    Some((status, records))
}

/// Polls the resolver until it answers `expected`; returns how long that took.
fn until(
    resolver: &Resolver,
    name: &str,
    rtype: &str,
    expected: &(String, Vec<String>),
    deadline: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let answer = dig(resolver, name, rtype);
        if answer.as_ref() == Some(expected) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{} still answers {answer:?} for {name} {rtype} after {deadline:?}, expected \
             {expected:?}",
            resolver.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn answer(status: &str, records: &[&str]) -> (String, Vec<String>) {
    (
        status.to_owned(),
        records.iter().map(|r| r.to_string()).collect(),
    )
}

/// Register, resolve through `resolver`, deregister, and see the resolver follow within
/// the TTL.
async fn resolver_follows_registrations(srvdns: &Srvdns, resolver: &Resolver) {
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/services/web/instances/w1", srvdns.http);
    let response = client
        .put(&url)
        .json(&json!({"address": "10.0.7.1", "port": 8080}))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 200);

    // Never asked before: the resolver asks srvdns at once.
    let registered = answer("NOERROR", &["web.service.local. IN A 10.0.7.1"]);
    until(
        resolver,
        "web.service.local",
        "A",
        &registered,
        Duration::from_secs(2),
    );
    let srv = dig(resolver, "_web._tcp.service.local", "SRV").expect("an SRV answer");
    assert_eq!(
        srv,
        answer(
            "NOERROR",
            &["_web._tcp.service.local. IN SRV 0 1 8080 10-0-7-1.addr.service.local."]
        )
    );

    let response = client.delete(&url).send().await.expect("deregister");
    assert_eq!(response.status(), 204);
    // The cached answer may live out its TTL; then the resolver must ask again. Margin: one
    // second of clock granularity in resolver caches, plus polling.
    let gone = answer("NXDOMAIN", &[]);
    let took = until(
        resolver,
        "web.service.local",
        "A",
        &gone,
        TTL + Duration::from_millis(1500),
    );
    eprintln!(
        "{} followed the deregistration after {took:?}",
        resolver.name
    );
}

fn start_srvdns(dir: &Path) -> Srvdns {
    let ttl = format!("{}s", TTL.as_secs());
    Srvdns::start(
        dir,
        &["--zones", "none", "--ttl", &ttl, "--negative-ttl", &ttl],
    )
}

#[tokio::test]
#[ignore = "interop: needs unbound and dig (installed by .ci/run)"]
async fn unbound_with_a_stub_zone_follows_registrations_within_the_ttl() {
    let dir = temp_dir("unbound");
    let srvdns = start_srvdns(&dir);
    let resolver = unbound(&dir, srvdns.dns);
    resolver_follows_registrations(&srvdns, &resolver).await;
}

#[tokio::test]
#[ignore = "interop: needs dnsmasq and dig (installed by .ci/run)"]
async fn dnsmasq_forwarding_the_domain_follows_registrations_within_the_ttl() {
    let dir = temp_dir("dnsmasq");
    let srvdns = start_srvdns(&dir);
    let resolver = dnsmasq(&dir, srvdns.dns);
    resolver_follows_registrations(&srvdns, &resolver).await;
}
