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
