//! Health decided by TTL heartbeats: expiry, recovery, `deregister_after`, and what DNS shows
//! at each step. Time-dependent steps poll with deadlines; nothing sleeps to synchronize.

mod support;

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use support::{TestServer, eventually, rrs};

const PATH: &str = "/v1/services/beat/instances/b1";

async fn served(server: &TestServer) -> Vec<String> {
    rrs(&server
        .query("beat.service.local.", RecordType::A)
        .await
        .answers)
}

async fn status(server: &TestServer) -> Value {
    let reply = server.get("/v1/services/beat").await;
    reply.json["instances"][0].clone()
}

#[tokio::test]
async fn a_missed_ttl_leaves_dns_and_a_heartbeat_brings_it_back() {
    let server = TestServer::start().await;
    let registered = Instant::now();
    server
        .register(
            "beat",
            "b1",
            json!({"address": "10.0.3.1", "port": 80, "check": {"type": "ttl", "ttl": "400ms"}}),
        )
        .await;
    // Registration counts as the first heartbeat.
    assert_eq!(served(&server).await, ["beat.service.local. 5 A 10.0.3.1"]);

    eventually(Duration::from_secs(5), "the TTL to expire", || async {
        served(&server).await.is_empty().then_some(())
    })
    .await;
    assert!(
        registered.elapsed() >= Duration::from_millis(400),
        "not before the TTL: {:?}",
        registered.elapsed()
    );
    let instance = status(&server).await;
    assert_eq!(instance["status"], "critical");
    assert!(
        instance["output"]
            .as_str()
            .unwrap()
            .starts_with("TTL expired"),
        "{instance}"
    );
    // Critical but registered: NODATA, not NXDOMAIN.
    let answer = server.query("beat.service.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);

    let reply = server.put(&format!("{PATH}/heartbeat"), Value::Null).await;
    assert_eq!(reply.json["status"], "passing");
    assert_eq!(
        served(&server).await,
        ["beat.service.local. 5 A 10.0.3.1"],
        "back at once"
    );
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_an_instance_in_dns() {
    let server = TestServer::start().await;
    server
        .register(
            "beat",
            "b1",
            json!({"address": "10.0.3.1", "port": 80, "check": {"ttl": "500ms"}}),
        )
        .await;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let reply = server.put(&format!("{PATH}/heartbeat"), Value::Null).await;
        assert_eq!(reply.json["status"], "passing");
        assert_eq!(served(&server).await.len(), 1);
        // Pacing the heartbeats (the scenario), not synchronization.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_named_heartbeat_renews_only_that_check() {
    let server = TestServer::start().await;
    server
        .register(
            "beat",
            "b1",
            json!({"address": "10.0.3.1", "port": 80, "checks": [
                {"name": "fast", "ttl": "300ms"}, {"name": "slow", "ttl": "1h"}
            ]}),
        )
        .await;
    let reply = server
        .put(&format!("{PATH}/heartbeat?check=slow"), Value::Null)
        .await;
    assert_eq!(reply.status, 200);
    eventually(
        Duration::from_secs(5),
        "the fast check to expire",
        || async {
            let instance = status(&server).await;
            (instance["status"] == "critical").then_some(instance)
        },
    )
    .await;
    let instance = status(&server).await;
    assert_eq!(instance["checks"][0]["status"], "critical");
    assert_eq!(instance["checks"][1]["status"], "passing");
    server.stop().await;
}

#[tokio::test]
async fn status_updates_count_as_heartbeats_for_ttl_checks() {
    let server = TestServer::start().await;
    server
        .register(
            "beat",
            "b1",
            json!({"address": "10.0.3.1", "port": 80, "check": {"ttl": "1h"}}),
        )
        .await;
    let reply = server
        .put(
            &format!("{PATH}/status"),
            json!({"status": "critical", "output": "db down"}),
        )
        .await;
    assert_eq!(reply.json["status"], "critical");
    assert_eq!(reply.json["output"], "db down");
    assert!(served(&server).await.is_empty());
    let reply = server
        .put(&format!("{PATH}/status"), json!({"status": "passing"}))
        .await;
    assert_eq!(reply.json["status"], "passing");
    assert_eq!(served(&server).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn deregister_after_removes_a_critical_instance() {
    let server = TestServer::start().await;
    let registered = Instant::now();
    server
        .register(
            "beat",
            "b1",
            json!({"address": "10.0.3.1", "port": 80,
                   "check": {"ttl": "200ms", "deregister_after": "300ms"}}),
        )
        .await;
    eventually(
        Duration::from_secs(5),
        "the instance to be removed",
        || async { (server.get("/v1/services/beat").await.status == 404).then_some(()) },
    )
    .await;
    assert!(registered.elapsed() >= Duration::from_millis(500));
    let answer = server.query("beat.service.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    // The heartbeat of a removed instance gets a 404: the client re-registers.
    let reply = server.put(&format!("{PATH}/heartbeat"), Value::Null).await;
    assert_eq!(reply.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn instances_without_checks_stay_until_deregistered() {
    let server = TestServer::start().await;
    server
        .register("beat", "b1", json!({"address": "10.0.3.1", "port": 80}))
        .await;
    // Any TTL machinery would have run by the time a fresh registration with a short TTL
    // expires: use one as the clock.
    server
        .register(
            "clock",
            "c1",
            json!({"address": "10.0.3.2", "port": 80, "check": {"ttl": "200ms"}}),
        )
        .await;
    eventually(
        Duration::from_secs(5),
        "the clock instance to expire",
        || async {
            let reply = server.get("/v1/services/clock").await;
            (reply.json["instances"][0]["status"] == "critical").then_some(())
        },
    )
    .await;
    assert_eq!(status(&server).await["status"], "passing");
    assert_eq!(served(&server).await.len(), 1);
    server.stop().await;
}

// ---- active checks: real local HTTP and TCP servers ----

use support::target::{Mode, Target};

/// Polls the instance's status until it is `want`; returns the target's hit count then.
async fn await_status(server: &TestServer, service: &str, want: &str, target: &Target) -> u64 {
    eventually(
        Duration::from_secs(10),
        &format!("{service} to turn {want}"),
        || async {
            let reply = server.get(&format!("/v1/services/{service}")).await;
            (reply.json["instances"][0]["status"] == want).then(|| target.hits())
        },
    )
    .await
}

async fn a_count(server: &TestServer, name: &str) -> usize {
    server.query(name, RecordType::A).await.answers.len()
}

/// The status sequence through HTTP and DNS, with the thresholds honoured exactly: the probe
/// interval (400 ms) is far longer than the polling step (10 ms), so each probe's effect is
/// seen before the next probe arrives.
#[tokio::test]
async fn http_checks_follow_the_target_with_exact_thresholds() {
    let server = TestServer::start().await;
    let mut target = Target::start().await;
    server
        .register(
            "web",
            "w1",
            json!({"address": "10.0.4.1", "port": 80, "weight": 10, "weights": {"warning": 1},
                   "check": {"type": "http", "url": target.url("/health"), "interval": "400ms",
                             "timeout": "200ms", "failures_before_critical": 3,
                             "successes_before_passing": 2}}),
        )
        .await;
    // New: critical until the first probe, which runs at once and passes.
    let hits = await_status(&server, "web", "passing", &target).await;
    assert_eq!(hits, 1, "the first success passes");
    assert_eq!(a_count(&server, "web.service.local.").await, 1);

    // 500: critical on exactly the third consecutive failure.
    target.set(Mode::Error);
    let before = target.hits();
    let hits = await_status(&server, "web", "critical", &target).await;
    assert_eq!(hits - before, 3, "critical after exactly 3 failures");
    assert_eq!(
        a_count(&server, "web.service.local.").await,
        0,
        "out of DNS at once"
    );
    let instance = status_of(&server, "web").await;
    let output = instance["output"].as_str().unwrap();
    assert!(
        output.contains("500 Internal Server Error") && output.ends_with(" ms"),
        "{output}"
    );

    // Healthy again: passing on exactly the second success.
    target.set(Mode::Healthy);
    let before = target.hits();
    let hits = await_status(&server, "web", "passing", &target).await;
    assert_eq!(hits - before, 2, "passing after exactly 2 successes");
    assert_eq!(a_count(&server, "web.service.local.").await, 1);

    // 429: warning at once, still served, with the warning weight.
    target.set(Mode::TooMany);
    let before = target.hits();
    let hits = await_status(&server, "web", "warning", &target).await;
    assert_eq!(hits - before, 1);
    let srv = server.query("web.service.local.", RecordType::SRV).await;
    assert_eq!(support::srvs(&srv.answers)[0].1, 1, "warning weight");

    // Slow (timeouts): critical after 3.
    target.set(Mode::Slow);
    let before = target.hits();
    let hits = await_status(&server, "web", "critical", &target).await;
    assert_eq!(hits - before, 3);
    let output = status_of(&server, "web").await["output"].clone();
    assert!(
        output
            .as_str()
            .unwrap()
            .starts_with("timed out after 200ms"),
        "{output}"
    );

    // Down (refused): stays critical, and says why.
    target.down().await;
    eventually(
        Duration::from_secs(5),
        "a refused-connection output",
        || async {
            let output = status_of(&server, "web").await["output"].clone();
            output
                .as_str()
                .is_some_and(|o| o.to_lowercase().contains("connect"))
                .then_some(())
        },
    )
    .await;
    assert_eq!(status_of(&server, "web").await["status"], "critical");

    // Up again: back after 2 successes.
    target.set(Mode::Healthy);
    target.up().await;
    await_status(&server, "web", "passing", &target).await;
    assert_eq!(a_count(&server, "web.service.local.").await, 1);
    server.stop().await;
}

async fn status_of(server: &TestServer, service: &str) -> Value {
    server.get(&format!("/v1/services/{service}")).await.json["instances"][0].clone()
}

#[tokio::test]
async fn tcp_checks_connect_to_the_instance() {
    let server = TestServer::start().await;
    let mut target = Target::start().await;
    server
        .register(
            "cache",
            "tcp1",
            json!({"address": "127.0.0.1", "port": target.addr.port(),
                   "check": {"type": "tcp", "interval": "100ms", "timeout": "500ms",
                             "failures_before_critical": 1, "successes_before_passing": 1}}),
        )
        .await;
    await_status(&server, "cache", "passing", &target).await;
    assert_eq!(a_count(&server, "cache.service.local.").await, 1);
    let output = status_of(&server, "cache").await["output"].clone();
    assert!(
        output.as_str().unwrap().contains("TCP connect 127.0.0.1:"),
        "{output}"
    );

    target.down().await;
    await_status(&server, "cache", "critical", &target).await;
    assert_eq!(a_count(&server, "cache.service.local.").await, 0);

    target.up().await;
    await_status(&server, "cache", "passing", &target).await;
    assert_eq!(a_count(&server, "cache.service.local.").await, 1);
    server.stop().await;
}

#[tokio::test]
async fn deregistration_stops_probing_and_reregistration_replaces_the_schedule() {
    let server = TestServer::start().await;
    let a = Target::start().await;
    let b = Target::start().await;
    let check = |target: &Target| {
        json!({"address": "10.0.4.2", "port": 80,
               "check": {"type": "http", "url": target.url("/"), "interval": "50ms"}})
    };
    server.register("web", "w1", check(&a)).await;
    eventually(Duration::from_secs(5), "a few probes of a", || async {
        (a.hits() >= 3).then_some(())
    })
    .await;

    // Re-registered with another check: a is no longer probed, b is.
    server.register("web", "w1", check(&b)).await;
    eventually(Duration::from_secs(5), "probes of b", || async {
        (b.hits() >= 3).then_some(())
    })
    .await;
    let a_hits = a.hits();

    server.delete("/v1/services/web/instances/w1").await;
    let b_hits = b.hits();
    // Absence needs time to show: ten intervals.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.hits(), a_hits, "the replaced schedule stopped");
    assert!(
        b.hits() <= b_hits + 1,
        "probing stopped at deregistration (one may be in flight)"
    );
    server.stop().await;
}

#[tokio::test]
async fn active_checks_honour_deregister_after() {
    let server = TestServer::start().await;
    let target = Target::start().await;
    target.set(Mode::Error);
    server
        .register(
            "web",
            "w1",
            json!({"address": "10.0.4.3", "port": 80,
                   "check": {"type": "http", "url": target.url("/"), "interval": "100ms",
                             "deregister_after": "300ms"}}),
        )
        .await;
    eventually(Duration::from_secs(5), "removal", || async {
        (server.get("/v1/services/web").await.status == 404).then_some(())
    })
    .await;
    let answer = server.query("web.service.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn the_health_endpoint_reports_probe_counters() {
    let server = TestServer::start().await;
    let target = Target::start().await;
    server
        .register(
            "web",
            "w1",
            json!({"address": "10.0.4.4", "port": 80,
                   "check": {"type": "http", "url": target.url("/"), "interval": "50ms"}}),
        )
        .await;
    let health = eventually(Duration::from_secs(5), "a few probe runs", || async {
        let reply = server.get("/v1/health").await;
        (reply.json["checks"]["runs"].as_u64() >= Some(3)).then_some(reply.json)
    })
    .await;
    assert_eq!(health["checks"]["probed_instances"], 1);
    assert!(health["checks"]["lateness_ms"]["p99"].is_u64(), "{health}");
    assert!(
        health["checks"]["recent_lateness_ms"]["p99"].is_u64(),
        "{health}"
    );
    server.stop().await;
}

/// HTTPS probes (rustls): a real TLS server — a second srvdns serving its API over TLS with a
/// certificate from a generated CA. Verification fails for an unknown CA unless
/// `tls_skip_verify`.
#[tokio::test]
async fn https_checks_verify_certificates_unless_told_not_to() {
    let dir = std::env::temp_dir().join(format!("srvdns-https-check-{}", std::process::id()));
    let (files, _ca) = support::certificates(&dir);
    let mut tls_config = support::test_config();
    tls_config.tls = Some(files);
    let tls_server = TestServer::start_with(tls_config).await;
    let url = format!("https://127.0.0.1:{}/v1/health", tls_server.http.port());

    let server = TestServer::start().await;
    server
        .register(
            "secure",
            "trusting",
            json!({"address": "10.0.6.1", "port": 443,
                   "check": {"type": "http", "url": url, "interval": "100ms",
                             "tls_skip_verify": true}}),
        )
        .await;
    server
        .register(
            "secure",
            "verifying",
            json!({"address": "10.0.6.2", "port": 443,
                   "check": {"type": "http", "url": url, "interval": "100ms"}}),
        )
        .await;
    let instances = eventually(Duration::from_secs(10), "both checks to run", || async {
        let reply = server.get("/v1/services/secure").await;
        let instances = reply.json["instances"].as_array()?.clone();
        instances
            .iter()
            .all(|i| i["checks"][0]["output"] != "awaiting the first probe")
            .then_some(instances)
    })
    .await;
    let by_id = |id: &str| instances.iter().find(|i| i["id"] == id).unwrap().clone();
    let trusting = by_id("trusting");
    assert_eq!(trusting["status"], "passing", "{trusting}");
    assert!(
        trusting["output"].as_str().unwrap().contains("200 OK"),
        "{trusting}"
    );
    let verifying = by_id("verifying");
    assert_eq!(verifying["status"], "critical", "{verifying}");
    assert!(
        verifying["output"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{verifying}"
    );
    assert_eq!(
        rrs(&server
            .query("secure.service.local.", RecordType::A)
            .await
            .answers),
        ["secure.service.local. 5 A 10.0.6.1"]
    );
    server.stop().await;
    tls_server.stop().await;
}
