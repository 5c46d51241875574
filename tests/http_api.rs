//! The native HTTP API over real HTTP: every endpoint's success and error cases.

mod support;

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use support::{TestServer, test_config};

const P1: &str = "/v1/services/payment/instances/payment-1";

fn assert_error(reply: &support::Reply, status: u16, field: Option<&str>, contains: &str) {
    assert_eq!(reply.status, status, "{}", reply.json);
    let message = reply.json["error"].as_str().expect("an error message");
    assert!(
        message.contains(contains),
        "{message:?} does not contain {contains:?}"
    );
    assert_eq!(reply.json["field"].as_str(), field, "{}", reply.json);
    assert!(reply.index.is_some(), "X-Srvdns-Index on errors too");
}

#[tokio::test]
async fn register_answers_the_instance_and_bumps_the_index() {
    let server = TestServer::start().await;
    let before = server.get("/v1/health").await.index.expect("index header");
    let reply = server
        .put(
            P1,
            json!({
                "address": "10.0.1.5", "port": 8080, "protocol": "tcp", "priority": 1,
                "weight": 5, "weights": {"warning": 2}, "ports": {"metrics": 9100},
                "tags": ["v2", "canary"], "meta": {"version": "2.1.0"},
                "checks": [{"name": "beat", "type": "ttl", "ttl": "30s"}]
            }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.index, Some(before + 1));
    let body = &reply.json;
    for (key, expected) in [
        ("service", json!("payment")),
        ("id", json!("payment-1")),
        ("address", json!("10.0.1.5")),
        ("port", json!(8080)),
        ("protocol", json!("tcp")),
        ("priority", json!(1)),
        ("weight", json!(5)),
        ("weights", json!({"warning": 2})),
        ("ports", json!({"metrics": 9100})),
        ("tags", json!(["v2", "canary"])),
        ("meta", json!({"version": "2.1.0"})),
        ("status", json!("passing")),
        ("maintenance", json!({"enabled": false, "reason": null})),
    ] {
        assert_eq!(body[key], expected, "{key}");
    }
    let check = &body["checks"][0];
    assert_eq!(check["name"], "beat");
    assert_eq!(check["type"], "ttl");
    assert_eq!(check["ttl"], "30s");
    assert_eq!(check["status"], "passing");
    assert_eq!(check["deregister_after"], "10m", "default for ttl checks");
    server.stop().await;
}

#[tokio::test]
async fn register_is_idempotent_and_replaces() {
    let server = TestServer::start().await;
    let body = json!({"address": "10.0.1.5", "port": 8080});
    server.register("payment", "payment-1", body.clone()).await;
    server.register("payment", "payment-1", body).await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.7", "port": 9090}),
        )
        .await;
    let reply = server.get("/v1/services/payment").await;
    assert_eq!(reply.status, 200);
    let instances = reply.json["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0]["address"], "10.0.1.7");
    assert_eq!(instances[0]["port"], 9090);
    server.stop().await;
}

#[tokio::test]
async fn an_omitted_address_is_the_requester() {
    let server = TestServer::start().await;
    let body = server.register("self", "s1", json!({"port": 8080})).await;
    assert_eq!(body["address"], "127.0.0.1");
    let answer = server.query("self.service.local.", RecordType::A).await;
    assert_eq!(
        support::rrs(&answer.answers),
        ["self.service.local. 5 A 127.0.0.1"]
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_registrations_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080}),
        )
        .await;
    let listing = server.get("/v1/services/payment").await;
    let index = listing.index;

    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        (
            "/v1/services/Bad_Name/instances/x",
            r#"{"port": 1}"#.into(),
            400,
            Some("service"),
            "not a DNS label",
        ),
        (
            "/v1/services/addr/instances/x",
            r#"{"port": 1}"#.into(),
            400,
            Some("service"),
            "reserved",
        ),
        (
            "/v1/services/payment/instances/a%20b",
            r#"{"port": 1}"#.into(),
            400,
            Some("id"),
            "instance id",
        ),
        (P1, r#"{"port": 1"#.into(), 400, None, "invalid JSON"),
        (P1, "".into(), 400, None, "empty"),
        (
            P1,
            r#"{"port": 1, "chekcs": []}"#.into(),
            400,
            Some("chekcs"),
            "unknown field",
        ),
        (
            P1,
            r#"{"port": "80"}"#.into(),
            400,
            Some("port"),
            "invalid type",
        ),
        (
            P1,
            r#"{"port": 0}"#.into(),
            400,
            Some("port"),
            "between 1 and 65535",
        ),
        (
            P1,
            r#"{"port": 80, "address": "10.0.1.999"}"#.into(),
            400,
            Some("address"),
            "neither",
        ),
        (
            P1,
            r#"{"port": 80, "checks": [{"type": "http"}]}"#.into(),
            400,
            Some("checks[0].url"),
            "need a url",
        ),
        (
            P1,
            r#"{"port": 80, "checks": [{"type": "ttl", "ttl": "soon"}]}"#.into(),
            400,
            Some("checks[0].ttl"),
            "duration",
        ),
        (
            P1,
            r#"{"port": 80, "tags": [1]}"#.into(),
            400,
            Some("tags[0]"),
            "invalid type",
        ),
        (
            P1,
            format!(
                r#"{{"port": 80, "checks": [{}]}}"#,
                vec![r#"{"ttl": "1s"}"#; 17].join(",")
            ),
            400,
            Some("checks"),
            "at most 16",
        ),
        (
            "/v1/services/db/instances/x",
            r#"{"port": 1}"#.into(),
            409,
            Some("service"),
            "clashes with the static record db.service.local.",
        ),
        (
            P1,
            format!(
                r#"{{"port": 80, "meta": {{"k": "{}"}}}}"#,
                "x".repeat(300 * 1024)
            ),
            413,
            None,
            "larger than the limit",
        ),
    ];
    for (path, body, status, field, contains) in cases {
        let reply = server.put_raw(path, &body).await;
        assert_error(&reply, status, field, contains);
    }
    let after = server.get("/v1/services/payment").await;
    assert_eq!(after.index, index, "no failed write bumped the index");
    assert_eq!(
        after.json, listing.json,
        "no failed write changed the registry"
    );
    let services = server.get("/v1/services").await;
    assert_eq!(services.json.as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn deregister_removes_and_404s_after() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080}),
        )
        .await;
    let reply = server.delete(P1).await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.json, Value::Null);
    assert!(reply.index.is_some());
    let again = server.delete(P1).await;
    assert_error(&again, 404, None, "is not registered");
    let gone = server.get("/v1/services/payment").await;
    assert_error(&gone, 404, None, "has no registered instances");
    let answer = server.query("payment.service.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_and_status() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080,
                   "checks": [{"name": "beat", "ttl": "30s"},
                              {"name": "web", "type": "http", "url": "http://127.0.0.1:1/health"}]}),
        )
        .await;
    server
        .register(
            "payment",
            "plain",
            json!({"address": "10.0.1.6", "port": 8080}),
        )
        .await;

    let reply = server.put(&format!("{P1}/heartbeat"), Value::Null).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["service"], "payment");
    assert_eq!(reply.json["id"], "payment-1");
    // The http check probes a closed port: the instance is critical.
    assert_eq!(reply.json["status"], "critical");

    let reply = server
        .put(&format!("{P1}/heartbeat?check=beat"), Value::Null)
        .await;
    assert_eq!(reply.status, 200);
    assert_error(
        &server
            .put(&format!("{P1}/heartbeat?check=nope"), Value::Null)
            .await,
        400,
        Some("check"),
        "no check named",
    );
    assert_error(
        &server
            .put(&format!("{P1}/heartbeat?check=web"), Value::Null)
            .await,
        400,
        Some("check"),
        "not a ttl check",
    );
    assert_error(
        &server
            .put(
                "/v1/services/payment/instances/ghost/heartbeat",
                Value::Null,
            )
            .await,
        404,
        None,
        "is not registered",
    );

    // An instance without checks takes the status as its own.
    let reply = server
        .put(
            "/v1/services/payment/instances/plain/status",
            json!({"status": "warning", "output": "disk 91%"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["status"], "warning");
    assert_eq!(reply.json["output"], "disk 91%");
    let detail = server.get("/v1/services/payment").await;
    let plain = detail.json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "plain")
        .unwrap()
        .clone();
    assert_eq!(plain["status"], "warning");
    assert_eq!(plain["output"], "disk 91%");

    for (body, field, contains) in [
        (json!({"status": "sick"}), Some("status"), "not one of"),
        (json!({"output": "x"}), Some("status"), "missing field"),
        (
            json!({"status": "passing", "extra": 1}),
            Some("extra"),
            "unknown field",
        ),
    ] {
        let reply = server
            .put("/v1/services/payment/instances/plain/status", body)
            .await;
        assert_error(&reply, 400, field, contains);
    }
    assert_error(
        &server
            .put(
                "/v1/services/payment/instances/ghost/status",
                json!({"status": "passing"}),
            )
            .await,
        404,
        None,
        "is not registered",
    );
    server.stop().await;
}

#[tokio::test]
async fn maintenance_drains_and_restores() {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080}),
        )
        .await;
    let reply = server
        .put(
            &format!("{P1}/maintenance"),
            json!({"enabled": true, "reason": "deploy 42"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["status"], "maintenance");
    assert_eq!(
        reply.json["maintenance"],
        json!({"enabled": true, "reason": "deploy 42"})
    );
    let answer = server.query("payment.service.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty(), "out of DNS at once");

    let reply = server
        .put(&format!("{P1}/maintenance"), json!({"enabled": false}))
        .await;
    assert_eq!(reply.json["status"], "passing");
    let answer = server.query("payment.service.local.", RecordType::A).await;
    assert_eq!(answer.answers.len(), 1, "back in DNS at once");

    assert_error(
        &server.put(&format!("{P1}/maintenance"), json!({})).await,
        400,
        Some("enabled"),
        "missing field",
    );
    assert_error(
        &server
            .put(
                "/v1/services/payment/instances/ghost/maintenance",
                json!({"enabled": true}),
            )
            .await,
        404,
        None,
        "is not registered",
    );
    server.stop().await;
}

#[tokio::test]
async fn listings_count_by_status() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/v1/services").await.json, json!([]));
    server
        .register("payment", "p1", json!({"address": "10.0.1.5", "port": 80}))
        .await;
    server
        .register("payment", "p2", json!({"address": "10.0.1.6", "port": 80}))
        .await;
    server
        .register("web", "w1", json!({"address": "10.0.2.1", "port": 80}))
        .await;
    server
        .put(
            "/v1/services/payment/instances/p2/maintenance",
            json!({"enabled": true}),
        )
        .await;
    let reply = server.get("/v1/services").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json,
        json!([
            {"name": "payment", "instances": 2, "passing": 1, "warning": 0, "critical": 0, "maintenance": 1},
            {"name": "web", "instances": 1, "passing": 1, "warning": 0, "critical": 0, "maintenance": 0}
        ])
    );
    let detail = server.get("/v1/services/payment").await;
    assert_eq!(detail.json["name"], "payment");
    let ids: Vec<&str> = detail.json["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
    assert_error(
        &server.get("/v1/services/Bad_Name").await,
        400,
        Some("service"),
        "not a DNS label",
    );
    server.stop().await;
}

#[tokio::test]
async fn blocking_reads_return_on_change_or_after_wait() {
    let server = TestServer::start().await;
    server
        .register("payment", "p1", json!({"address": "10.0.1.5", "port": 80}))
        .await;
    let index = server.get("/v1/services/payment").await.index.unwrap();

    // Nothing changes: returns after `wait`, with the same data.
    let started = Instant::now();
    let reply = server
        .get(&format!("/v1/services/payment?index={index}&wait=300ms"))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["instances"].as_array().unwrap().len(), 1);

    // A change to another service does not wake it; a change to this one does.
    let waiter = {
        let url = server.url(&format!("/v1/services/payment?index={index}&wait=30s"));
        let client = server.client.clone();
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            let index: u64 = response.headers()["x-srvdns-index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            (index, response.json::<Value>().await.unwrap())
        })
    };
    server
        .register("other", "o1", json!({"address": "10.0.9.9", "port": 80}))
        .await;
    assert!(!waiter.is_finished());
    let started = Instant::now();
    server
        .register("payment", "p2", json!({"address": "10.0.1.6", "port": 80}))
        .await;
    let (new_index, body) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the change")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(new_index > index);
    assert_eq!(body["instances"].as_array().unwrap().len(), 2);

    // An index already behind returns at once.
    let started = Instant::now();
    let reply = server
        .get(&format!("/v1/services/payment?index={index}&wait=30s"))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reply.json["instances"].as_array().unwrap().len(), 2);

    assert_error(
        &server.get("/v1/services/payment?index=abc").await,
        400,
        Some("index"),
        "whole number",
    );
    assert_error(
        &server
            .get("/v1/services/payment?index=1&wait=forever")
            .await,
        400,
        Some("wait"),
        "duration",
    );
    server.stop().await;
}

#[tokio::test]
async fn health_unknown_routes_and_methods() {
    let server = TestServer::start().await;
    let reply = server.get("/v1/health").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["status"], "ok");
    assert_error(
        &server.get("/v1/nope").await,
        404,
        None,
        "no such endpoint: GET /v1/nope",
    );
    let reply = server.delete("/v1/services").await;
    assert_error(&reply, 405, None, "DELETE is not allowed");
    server.stop().await;
}

#[tokio::test]
async fn a_token_guards_writes_but_not_reads() {
    let mut config = test_config();
    config.token = Some("s3cret".into());
    let server = TestServer::start_with(config).await;
    let body = json!({"address": "10.0.1.5", "port": 80});

    let reply = server.put(P1, body.clone()).await;
    assert_error(&reply, 401, None, "requires a token");
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
    let reply = server
        .send(
            server
                .client
                .put(server.url(P1))
                .bearer_auth("wrong")
                .json(&body),
        )
        .await;
    assert_error(&reply, 401, None, "requires a token");
    assert_error(&server.delete(P1).await, 401, None, "requires a token");
    assert_eq!(
        server.get("/v1/services").await.json,
        json!([]),
        "nothing written"
    );

    let reply = server
        .send(
            server
                .client
                .put(server.url(P1))
                .bearer_auth("s3cret")
                .json(&body),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.get("/v1/services/payment").await.status, 200);
    server.stop().await;
}
