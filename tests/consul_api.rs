//! The Consul-compatible API over real HTTP, against a real server serving `service.consul`:
//! key matching, defaults, Consul's response shapes, check IDs and TTL updates, maintenance,
//! blocking queries, filters, headers, tokens, errors — and one registry shared with the
//! native API and DNS. The real Consul client libraries are driven in `tests/consul_clients.rs`.

mod support;

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{Value, json};
use support::{Reply, TestServer, test_config};

/// A server answering DNS for `service.consul`, as Consul users run it.
async fn consul_server() -> TestServer {
    let mut config = test_config();
    config.domain = srvdns::config::parse_domain("service.consul").unwrap();
    // The example zones are for service.local, without an SOA of their own.
    config.zones = srvdns::config::ZonesSource::None;
    TestServer::start_with(config).await
}

async fn register(server: &TestServer, body: Value) {
    let reply = server.put("/v1/agent/service/register", body.clone()).await;
    assert_eq!(reply.status, 200, "register {body}: {}", reply.json);
    assert_eq!(
        reply.json,
        Value::Null,
        "Consul answers writes with an empty body"
    );
}

async fn put_empty(server: &TestServer, path: &str) -> Reply {
    server
        .send(server.client.put(server.url(path)).body(""))
        .await
}

fn consul_index(reply: &Reply) -> u64 {
    reply
        .headers
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("X-Consul-Index")
}

fn assert_consul_headers(reply: &Reply, what: &str) {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let index: u64 = header("x-consul-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: X-Consul-Index"));
    assert!(index >= 1, "{what}: Consul never answers index 0");
    assert_eq!(
        header("x-consul-knownleader").as_deref(),
        Some("true"),
        "{what}"
    );
    assert_eq!(
        header("x-consul-lastcontact").as_deref(),
        Some("0"),
        "{what}"
    );
}

fn assert_error(reply: &Reply, status: u16, field: Option<&str>, contains: &str) {
    assert_eq!(reply.status, status, "{}", reply.json);
    let message = reply.json["error"].as_str().expect("an error message");
    assert!(
        message.contains(contains),
        "{message:?} does not contain {contains:?}"
    );
    assert_eq!(reply.json["field"].as_str(), field, "{}", reply.json);
    assert_consul_headers(reply, "an error");
}

async fn a_records(server: &TestServer, name: &str) -> (ResponseCode, Vec<String>) {
    let answer = server.query(name, RecordType::A).await;
    let mut ips: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    ips.sort();
    (answer.metadata.response_code, ips)
}

async fn passing_ids(server: &TestServer, service: &str) -> Vec<String> {
    let reply = server
        .get(&format!("/v1/health/service/{service}?passing"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let mut ids: Vec<String> = reply
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

// ---- registration: keys, forms, defaults ----

#[tokio::test]
async fn keys_match_in_any_case_in_snake_case_and_in_the_config_file_form() {
    let server = consul_server().await;
    let bodies = [
        // Go and Node clients.
        json!({"Name": "web", "ID": "go-1", "Address": "10.0.0.1", "Port": 80,
               "Tags": ["go"], "Meta": {"Client": "go"}, "Weights": {"Passing": 3, "Warning": 2},
               "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "90s"}}),
        // python-consul.
        json!({"name": "web", "id": "py-1", "address": "10.0.0.2", "port": 80,
               "tags": ["py"], "check": {"ttl": "30s", "DeregisterCriticalServiceAfter": "90s"}}),
        // py-consul, and snake_case as Consul's config files spell keys.
        json!({"name": "web", "id": "snake-1", "address": "10.0.0.3", "port": 80,
               "meta": {"client": "py"}, "weights": {"passing": 3, "warning": 2},
               "checks": [{"ttl": "30s", "deregister_critical_service_after": "90s",
                           "check_id": "snake-check"}]}),
        // The config-file form, as `curl --data @web.json` sends it.
        json!({"service": {"name": "web", "id": "file-1", "address": "10.0.0.4", "port": 80,
               "enable_tag_override": false, "unknown_key": {"ignored": true}}}),
        json!({"Service": {"Name": "web", "ID": "file-2", "Address": "10.0.0.5", "Port": 80}}),
    ];
    for body in bodies {
        register(&server, body).await;
    }
    let services = server.get("/v1/agent/services").await;
    let ids: Vec<&String> = services.json.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["file-1", "file-2", "go-1", "py-1", "snake-1"]);
    let go = &services.json["go-1"];
    assert_eq!(go["Weights"], json!({"Passing": 3, "Warning": 2}));
    assert_eq!(
        go["Meta"],
        json!({"Client": "go"}),
        "meta keys keep their case"
    );
    assert_eq!(services.json["snake-1"]["Weights"], go["Weights"]);

    let checks = server.get("/v1/agent/checks").await;
    let check_ids: Vec<&String> = checks.json.as_object().unwrap().keys().collect();
    assert_eq!(check_ids, ["service:go-1", "service:py-1", "snake-check"]);
    for id in check_ids {
        assert_eq!(
            checks.json[id]["Definition"]["DeregisterCriticalServiceAfter"], "1m30s",
            "{id}"
        );
    }
    let (rcode, ips) = a_records(&server, "web.service.consul.").await;
    assert_eq!(rcode, ResponseCode::NoError);
    // TTL checks start critical, as in Consul: only the instances without checks are served.
    assert_eq!(ips, ["10.0.0.4", "10.0.0.5"]);
    server.stop().await;
}

#[tokio::test]
async fn id_defaults_to_name_address_to_the_requester_and_a_hostname_is_kept() {
    let server = consul_server().await;
    register(&server, json!({"Name": "Payment", "Port": 8080})).await;
    let reply = server.get("/v1/agent/service/Payment").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["ID"], "Payment", "ID defaults to Name as given");
    assert_eq!(
        reply.json["Service"], "payment",
        "service names are DNS labels"
    );
    assert_eq!(
        reply.json["Address"], "127.0.0.1",
        "the requester's address"
    );
    register(
        &server,
        json!({"Name": "db", "Port": 5432, "Address": "DB.Example.com"}),
    )
    .await;
    assert_eq!(
        server.get("/v1/agent/service/db").await.json["Address"],
        "db.example.com"
    );
    let answer = server.query("payment.service.consul.", RecordType::A).await;
    assert_eq!(
        support::rrs(&answer.answers),
        ["payment.service.consul. 5 A 127.0.0.1"]
    );
    let srv = server.query("db.service.consul.", RecordType::SRV).await;
    assert_eq!(
        support::srvs(&srv.answers),
        [(0, 1, 5432, "db.example.com.".to_owned())]
    );
    server.stop().await;
}

#[tokio::test]
async fn consul_check_defaults_are_kept_in_the_one_registry() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "api", "ID": "api-1", "Address": "10.0.0.1", "Port": 80, "Checks": [
            {"TTL": "30s"},
            {"HTTP": "http://10.0.0.1:80/health", "Interval": "5s"},
            {"TCP": "10.0.0.1:80", "Interval": "5s", "Status": "passing",
             "FailuresBeforeCritical": 3, "SuccessBeforePassing": 2}
        ]}),
    )
    .await;
    // The native view of the same instance: Consul's thresholds and no deregister default.
    let native = server.get("/v1/services/api").await;
    let checks = &native.json["instances"][0]["checks"];
    let summary: Vec<Value> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            json!([
                c["name"],
                c["type"],
                c["status"],
                c["failures_before_critical"],
                c["successes_before_passing"],
                c["deregister_after"],
                c["timeout"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!(["service:api-1:1", "ttl", "critical", 1, 1, null, null]),
            json!(["service:api-1:2", "http", "critical", 1, 1, null, "10s"]),
            json!(["service:api-1:3", "tcp", "passing", 3, 2, null, "10s"]),
        ]
    );
    server.stop().await;
}

// ---- shapes ----

#[tokio::test]
async fn agent_views_have_consuls_shapes() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "payment", "ID": "p1", "Address": "10.0.1.5", "Port": 8080,
               "Tags": ["v2"], "Meta": {"version": "2.1.0"},
               "Check": {"TTL": "15s", "Status": "passing"}}),
    )
    .await;
    let service = json!({
        "ID": "p1", "Service": "payment", "Tags": ["v2"], "Meta": {"version": "2.1.0"},
        "Port": 8080, "Address": "10.0.1.5", "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": false, "Datacenter": "dc1"
    });
    let services = server.get("/v1/agent/services").await;
    assert_eq!(services.json, json!({"p1": service}));
    assert_consul_headers(&services, "agent/services");
    let one = server.get("/v1/agent/service/p1").await;
    assert_eq!(one.json, service);

    let checks = server.get("/v1/agent/checks").await;
    let index = checks.json["service:p1"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        checks.json,
        json!({"service:p1": {
            "Node": "srvdns", "CheckID": "service:p1", "Name": "Service 'payment' check",
            "Status": "passing", "Notes": "", "Output": "registered (counts as the first heartbeat)",
            "ServiceID": "p1", "ServiceName": "payment", "ServiceTags": ["v2"], "Type": "ttl",
            "Interval": "", "Timeout": "", "ExposedPort": 0, "Definition": {},
            "CreateIndex": index, "ModifyIndex": index
        }})
    );

    let me = server.get("/v1/agent/self").await;
    assert_eq!(me.json["Config"]["Datacenter"], "dc1");
    assert_eq!(me.json["Config"]["NodeName"], "srvdns");
    assert!(me.json["Config"]["Version"].is_string());
    let leader = server.get("/v1/status/leader").await;
    assert_eq!(leader.json, "127.0.0.1:8300");
    assert_eq!(
        server.get("/v1/status/peers").await.json,
        json!(["127.0.0.1:8300"])
    );
    assert_eq!(
        server.get("/v1/catalog/datacenters").await.json,
        json!(["dc1"])
    );
    server.stop().await;
}

#[tokio::test]
async fn health_service_answers_node_service_checks() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "payment", "ID": "p1", "Address": "10.0.1.5", "Port": 8080,
               "Tags": ["v2"], "Meta": {"version": "2.1.0"}, "Weights": {"Passing": 5, "Warning": 1},
               "Check": {"HTTP": "http://10.0.1.5:8080/health", "Interval": "10s",
                         "Method": "HEAD", "Header": {"X-Probe": ["srvdns"]},
                         "DeregisterCriticalServiceAfter": "1m"}}),
    )
    .await;
    let reply = server.get("/v1/health/service/payment").await;
    assert_eq!(reply.status, 200);
    let index = reply.json[0]["Service"]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(consul_index(&reply), index, "the index of the answer");
    assert_eq!(
        reply.json,
        json!([{
            "Node": {
                "ID": "5d1e2b1c-0000-4000-8000-000000000001", "Node": "srvdns",
                "Address": "127.0.0.1", "Datacenter": "dc1",
                "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"}, "Meta": {},
                "CreateIndex": index, "ModifyIndex": index
            },
            "Service": {
                "ID": "p1", "Service": "payment", "Tags": ["v2"], "Address": "10.0.1.5",
                "Meta": {"version": "2.1.0"}, "Port": 8080,
                "Weights": {"Passing": 5, "Warning": 1}, "EnableTagOverride": false,
                "CreateIndex": index, "ModifyIndex": index
            },
            "Checks": [{
                "Node": "srvdns", "CheckID": "service:p1", "Name": "Service 'payment' check",
                "Status": "critical", "Notes": "", "Output": "awaiting the first probe",
                "ServiceID": "p1", "ServiceName": "payment", "ServiceTags": ["v2"],
                "Type": "http", "Interval": "10s", "Timeout": "10s", "ExposedPort": 0,
                "Definition": {
                    "HTTP": "http://10.0.1.5:8080/health", "Header": {"X-Probe": ["srvdns"]},
                    "Method": "HEAD", "TLSSkipVerify": false, "Interval": "10s",
                    "Timeout": "10s", "DeregisterCriticalServiceAfter": "1m0s"
                },
                "CreateIndex": index, "ModifyIndex": index
            }]
        }])
    );
    // An unknown service is an empty list, as in Consul, not a 404.
    let none = server.get("/v1/health/service/nothing").await;
    assert_eq!((none.status.as_u16(), none.json.clone()), (200, json!([])));
    server.stop().await;
}

#[tokio::test]
async fn catalog_views_have_consuls_shapes() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "payment", "ID": "p1", "Address": "10.0.1.5", "Port": 8080,
               "Tags": ["v2", "eu"], "Check": {"TTL": "10s"}}),
    )
    .await;
    register(
        &server,
        json!({"Name": "payment", "ID": "p2", "Address": "10.0.1.6", "Port": 8081, "Tags": ["v1", "eu"]}),
    )
    .await;
    register(&server, json!({"Name": "search", "Port": 9200})).await;

    let services = server.get("/v1/catalog/services").await;
    assert_eq!(
        services.json,
        json!({"payment": ["eu", "v1", "v2"], "search": []})
    );
    let reply = server.get("/v1/catalog/service/payment?tag=v2").await;
    let index = reply.json[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        reply.json,
        json!([{
            "ID": "5d1e2b1c-0000-4000-8000-000000000001", "Node": "srvdns",
            "Address": "127.0.0.1", "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"}, "NodeMeta": {},
            "ServiceKind": "", "ServiceID": "p1", "ServiceName": "payment",
            "ServiceTags": ["v2", "eu"], "ServiceAddress": "10.0.1.5",
            "ServiceWeights": {"Passing": 1, "Warning": 1}, "ServiceMeta": {},
            "ServicePort": 8080, "ServiceEnableTagOverride": false,
            "CreateIndex": index, "ModifyIndex": index
        }]),
        "the catalog lists instances whatever their health"
    );
    let all = server.get("/v1/catalog/service/payment").await;
    let ids: Vec<&str> = all
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ServiceID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
    assert_eq!(
        server.get("/v1/catalog/service/nothing").await.json,
        json!([])
    );
    let nodes = server.get("/v1/catalog/nodes").await;
    assert_eq!(nodes.json[0]["Node"], "srvdns");
    server.stop().await;
}

// ---- checks ----

#[tokio::test]
async fn check_ids_and_ttl_updates() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "worker", "ID": "w1", "Address": "10.0.2.1", "Port": 1,
               "Checks": [{"TTL": "30s"}, {"TTL": "30s", "CheckID": "w1-queue"}, {"TTL": "30s"}]}),
    )
    .await;
    let status_of = |checks: &Value, id: &str| {
        (
            checks[id]["Status"].as_str().unwrap_or("absent").to_owned(),
            checks[id]["Output"].as_str().unwrap_or("").to_owned(),
        )
    };
    let checks = server.get("/v1/agent/checks").await.json;
    let ids: Vec<&String> = checks.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["service:w1:1", "service:w1:3", "w1-queue"]);

    for (path, check, status, output) in [
        (
            "/v1/agent/check/pass/service:w1:1?note=ok",
            "service:w1:1",
            "passing",
            "ok",
        ),
        ("/v1/agent/check/pass/w1-queue", "w1-queue", "passing", ""),
        (
            "/v1/agent/check/warn/service%3Aw1%3A3?note=slow",
            "service:w1:3",
            "warning",
            "slow",
        ),
        (
            "/v1/agent/check/fail/w1-queue?note=stuck",
            "w1-queue",
            "critical",
            "stuck",
        ),
    ] {
        let reply = put_empty(&server, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.json);
        assert_eq!(reply.json, Value::Null);
        let checks = server.get("/v1/agent/checks").await.json;
        assert_eq!(
            status_of(&checks, check),
            (status.into(), output.into()),
            "{path}"
        );
    }
    let critical = server.get("/v1/health/state/critical").await.json;
    let ids: Vec<&str> = critical
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w1-queue"]);
    assert_eq!(
        server
            .get("/v1/health/state/any")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let reply = server
        .put(
            "/v1/agent/check/update/w1-queue",
            json!({"Status": "passing", "Output": "drained"}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let reply = server
        .put(
            "/v1/agent/check/update/service:w1:3",
            json!({"status": "passing", "output": "x".repeat(5000)}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let checks = server.get("/v1/health/checks/worker").await.json;
    let summary: Vec<(String, String, usize)> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["CheckID"].as_str().unwrap().to_owned(),
                c["Status"].as_str().unwrap().to_owned(),
                c["Output"].as_str().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("service:w1:1".into(), "passing".into(), 2),
            ("w1-queue".into(), "passing".into(), 7),
            ("service:w1:3".into(), "passing".into(), 4096),
        ],
        "long output is cut at 4 KiB, as Consul cuts it"
    );
    assert_eq!(passing_ids(&server, "worker").await, ["w1"]);
    server.stop().await;
}

#[tokio::test]
async fn a_missed_ttl_turns_critical_and_deregister_critical_service_after_removes() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "batch", "ID": "b1", "Address": "10.0.3.1", "Port": 1,
               "Check": {"TTL": "300ms", "Status": "passing",
                         "DeregisterCriticalServiceAfter": "700ms"}}),
    )
    .await;
    register(
        &server,
        json!({"Name": "batch", "ID": "b2", "Address": "10.0.3.2", "Port": 1,
               "Check": {"TTL": "300ms", "Status": "passing"}}),
    )
    .await;
    assert_eq!(passing_ids(&server, "batch").await, ["b1", "b2"]);
    support::eventually(Duration::from_secs(3), "both TTLs expire", || async {
        passing_ids(&server, "batch").await.is_empty().then_some(())
    })
    .await;
    support::eventually(Duration::from_secs(3), "b1 is removed", || async {
        let ids: Vec<String> = server
            .get("/v1/agent/services")
            .await
            .json
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        (ids == ["b2"]).then_some(())
    })
    .await;
    let checks = server.get("/v1/health/checks/batch").await.json;
    assert_eq!(checks[0]["Status"], "critical");
    assert!(
        checks[0]["Output"]
            .as_str()
            .unwrap()
            .starts_with("TTL expired"),
        "{checks}"
    );
    server.stop().await;
}

// ---- maintenance and deregistration, over HTTP and DNS ----

#[tokio::test]
async fn maintenance_on_and_off() {
    let server = consul_server().await;
    for (id, address) in [("p1", "10.0.1.5"), ("p2", "10.0.1.6")] {
        register(
            &server,
            json!({"Name": "payment", "ID": id, "Address": address, "Port": 8080}),
        )
        .await;
    }
    let reply = put_empty(
        &server,
        "/v1/agent/service/maintenance/p1?enable=true&reason=deploy%2042",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(passing_ids(&server, "payment").await, ["p2"]);
    let checks = server.get("/v1/health/checks/payment").await.json;
    assert_eq!(
        checks,
        json!([{
            "Node": "srvdns", "CheckID": "_service_maintenance:p1",
            "Name": "Service Maintenance Mode", "Status": "critical", "Notes": "deploy 42",
            "Output": "", "ServiceID": "p1", "ServiceName": "payment", "ServiceTags": [],
            "Type": "maintenance", "Interval": "", "Timeout": "", "ExposedPort": 0,
            "Definition": {}, "CreateIndex": checks[0]["CreateIndex"],
            "ModifyIndex": checks[0]["ModifyIndex"]
        }])
    );
    assert_eq!(
        a_records(&server, "payment.service.consul.").await.1,
        ["10.0.1.6"]
    );
    // Still registered: the catalog lists it.
    assert_eq!(
        server
            .get("/v1/catalog/service/payment")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let reply = put_empty(&server, "/v1/agent/service/maintenance/p1?enable=false").await;
    assert_eq!(reply.status, 200);
    assert_eq!(passing_ids(&server, "payment").await, ["p1", "p2"]);
    assert_eq!(
        a_records(&server, "payment.service.consul.").await.1,
        ["10.0.1.5", "10.0.1.6"]
    );
    // Without a reason, Consul's default one.
    put_empty(&server, "/v1/agent/service/maintenance/p2?enable=1").await;
    let notes = server.get("/v1/health/checks/payment").await.json[0]["Notes"].clone();
    assert!(
        notes
            .as_str()
            .unwrap()
            .starts_with("Maintenance mode is enabled"),
        "{notes}"
    );
    server.stop().await;
}

#[tokio::test]
async fn deregister_removes_from_every_view_and_from_dns() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "payment", "ID": "p1", "Address": "10.0.1.5", "Port": 8080, "Tags": ["v2"]}),
    )
    .await;
    assert_eq!(
        a_records(&server, "payment.service.consul.").await,
        (ResponseCode::NoError, vec!["10.0.1.5".to_owned()])
    );
    assert_eq!(
        a_records(&server, "v2.payment.service.consul.").await.1,
        ["10.0.1.5"]
    );
    let srv = server
        .query("_payment._tcp.service.consul.", RecordType::SRV)
        .await;
    assert_eq!(
        support::srvs(&srv.answers),
        [(0, 1, 8080, "10-0-1-5.addr.service.consul.".to_owned())]
    );

    let reply = put_empty(&server, "/v1/agent/service/deregister/p1").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(server.get("/v1/agent/services").await.json, json!({}));
    assert_eq!(
        server.get("/v1/health/service/payment").await.json,
        json!([])
    );
    assert_eq!(server.get("/v1/catalog/services").await.json, json!({}));
    assert_error(
        &server.get("/v1/agent/service/p1").await,
        404,
        None,
        "unknown service ID \"p1\"",
    );
    assert_eq!(
        a_records(&server, "payment.service.consul.").await.0,
        ResponseCode::NXDomain
    );
    assert_error(
        &put_empty(&server, "/v1/agent/service/deregister/p1").await,
        404,
        None,
        "unknown service ID",
    );
    server.stop().await;
}

// ---- reads: filters and blocking ----

#[tokio::test]
async fn passing_and_tag_filters() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "web", "ID": "a", "Address": "10.0.0.1", "Port": 80, "Tags": ["V2", "eu"]}),
    )
    .await;
    register(&server, json!({"Name": "web", "ID": "b", "Address": "10.0.0.2", "Port": 80, "Tags": ["v2"], "Check": {"TTL": "1m", "Status": "warning"}})).await;
    register(&server, json!({"Name": "web", "ID": "c", "Address": "10.0.0.3", "Port": 80, "Tags": ["v1"], "Check": {"TTL": "1m"}})).await;
    let ids = |reply: Reply| -> Vec<String> {
        reply
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, expected) in [
        ("", vec!["a", "b", "c"]),
        ("?passing", vec!["a"]),
        ("?passing=1", vec!["a"]),
        ("?passing=true", vec!["a"]),
        ("?passing=false", vec!["a", "b", "c"]),
        ("?tag=v2", vec!["a", "b"]),
        ("?tag=v2&passing", vec!["a"]),
        ("?tag=v2&tag=eu", vec!["a"]),
        ("?tag=nope", vec![]),
    ] {
        let reply = server.get(&format!("/v1/health/service/web{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.json);
        assert_eq!(ids(reply), expected, "{query}");
    }
    assert_error(
        &server.get("/v1/health/service/web?passing=maybe").await,
        400,
        Some("passing"),
        "invalid value for ?passing",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_blocking_query_returns_as_soon_as_the_service_changes() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "web", "ID": "w1", "Address": "10.0.0.1", "Port": 80}),
    )
    .await;
    let first = server.get("/v1/health/service/web").await;
    let index = consul_index(&first);

    // A change to another service does not wake it; a change to this one does, at once.
    let url = server.url(&format!("/v1/health/service/web?index={index}&wait=30s"));
    let client = server.client.clone();
    let started = Instant::now();
    let blocked = tokio::spawn(async move {
        let response = client.get(url).send().await.unwrap();
        (Instant::now(), response)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    register(&server, json!({"Name": "other", "Port": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !blocked.is_finished(),
        "another service's change does not wake it"
    );
    let changed_at = Instant::now();
    register(
        &server,
        json!({"Name": "web", "ID": "w2", "Address": "10.0.0.2", "Port": 80}),
    )
    .await;
    let (woke_at, response) = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("the blocking query returns")
        .unwrap();
    assert!(
        woke_at.duration_since(changed_at) < Duration::from_secs(1),
        "woke {:?} after the change",
        woke_at.duration_since(changed_at)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let new_index: u64 = response.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(new_index > index, "{new_index} > {index}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 2);

    // Without a change, it returns when the wait ends, with the same answer.
    let started = Instant::now();
    let reply = server
        .get(&format!(
            "/v1/health/service/web?index={new_index}&wait=300ms"
        ))
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(consul_index(&reply), new_index);

    // Whole-registry views block too.
    let catalog = server.get("/v1/catalog/services").await;
    let index = consul_index(&catalog);
    let url = server.url(&format!("/v1/catalog/services?index={index}&wait=10s"));
    let client = server.client.clone();
    let blocked = tokio::spawn(async move { client.get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished());
    register(&server, json!({"Name": "third", "Port": 1})).await;
    let response = tokio::time::timeout(Duration::from_secs(2), blocked)
        .await
        .expect("catalog/services wakes")
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body.get("third").is_some(), "{body}");
    server.stop().await;
}

// ---- one registry ----

#[tokio::test]
async fn one_registry_for_both_apis() {
    let server = consul_server().await;
    // Native → Consul views, and Consul TTL updates by Consul's check naming.
    server
        .register(
            "payment",
            "native-1",
            json!({"address": "10.0.1.5", "port": 8080, "checks": [{"type": "ttl", "ttl": "1m"}]}),
        )
        .await;
    let entry = &server.get("/v1/health/service/payment").await.json[0];
    assert_eq!(entry["Service"]["ID"], "native-1");
    assert_eq!(
        entry["Checks"][0]["CheckID"], "ttl",
        "the native check name"
    );
    let reply = put_empty(&server, "/v1/agent/check/fail/service:native-1?note=down").await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let native = server.get("/v1/services/payment").await.json;
    assert_eq!(native["instances"][0]["status"], "critical");
    assert_eq!(native["instances"][0]["output"], "down");
    assert_eq!(
        a_records(&server, "payment.service.consul.").await.1,
        Vec::<String>::new()
    );

    // Consul → native views and native deregistration.
    register(
        &server,
        json!({"Name": "payment", "ID": "consul-1", "Address": "10.0.1.6", "Port": 8080}),
    )
    .await;
    let native = server.get("/v1/services/payment").await.json;
    let ids: Vec<&str> = native["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["consul-1", "native-1"]);
    assert_eq!(
        a_records(&server, "payment.service.consul.").await.1,
        ["10.0.1.6"]
    );
    let reply = server
        .delete("/v1/services/payment/instances/consul-1")
        .await;
    assert_eq!(reply.status, 204);
    assert_eq!(passing_ids(&server, "payment").await, Vec::<String>::new());
    // And the native maintenance shows in the Consul view.
    let reply = server
        .put(
            "/v1/services/payment/instances/native-1/maintenance",
            json!({"enabled": true, "reason": "drain"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let checks = server.get("/v1/health/checks/payment").await.json;
    assert_eq!(checks[1]["CheckID"], "_service_maintenance:native-1");
    assert_eq!(checks[1]["Notes"], "drain");
    server.stop().await;
}

#[tokio::test]
async fn service_ids_are_unique_across_services() {
    let server = consul_server().await;
    register(
        &server,
        json!({"Name": "alpha", "ID": "x1", "Address": "10.0.0.1", "Port": 1}),
    )
    .await;
    let before = consul_index(&server.get("/v1/agent/services").await);
    register(
        &server,
        json!({"Name": "beta", "ID": "x1", "Address": "10.0.0.2", "Port": 2}),
    )
    .await;
    let services = server.get("/v1/agent/services").await;
    assert_eq!(consul_index(&services), before + 1, "one change");
    assert_eq!(services.json.as_object().unwrap().len(), 1);
    assert_eq!(services.json["x1"]["Service"], "beta");
    assert_eq!(
        server.get("/v1/catalog/services").await.json,
        json!({"beta": []})
    );
    assert_eq!(
        a_records(&server, "alpha.service.consul.").await.0,
        ResponseCode::NXDomain
    );
    // The native API keeps IDs per service; the Consul API then refuses to guess.
    server
        .register("gamma", "x1", json!({"address": "10.0.0.3", "port": 3}))
        .await;
    assert_error(
        &put_empty(&server, "/v1/agent/service/deregister/x1").await,
        409,
        Some("id"),
        "several services",
    );
    server.stop().await;
}

// ---- headers, tokens, errors ----

#[tokio::test]
async fn consul_headers_on_every_response() {
    let server = consul_server().await;
    register(&server, json!({"Name": "web", "Port": 80})).await;
    let requests = [
        ("GET", "/v1/agent/services"),
        ("GET", "/v1/agent/service/web"),
        ("GET", "/v1/agent/checks"),
        ("GET", "/v1/agent/self"),
        ("GET", "/v1/health/service/web"),
        ("GET", "/v1/health/checks/web"),
        ("GET", "/v1/health/state/any"),
        ("GET", "/v1/catalog/services"),
        ("GET", "/v1/catalog/service/web"),
        ("GET", "/v1/status/leader"),
        ("GET", "/v1/agent/service/nope"),
        ("GET", "/v1/kv/key"),
        ("GET", "/v1/services"),
        ("GET", "/v1/health"),
        ("PUT", "/v1/agent/check/pass/nope"),
        ("PUT", "/v1/agent/service/deregister/web"),
    ];
    for (method, path) in requests {
        let request = match method {
            "GET" => server.client.get(server.url(path)),
            _ => server.client.put(server.url(path)).body(""),
        };
        let reply = server.send(request).await;
        assert_consul_headers(&reply, path);
    }
    server.stop().await;
}

#[tokio::test]
async fn tokens_as_bearer_consul_header_or_query() {
    let mut config = test_config();
    config.token = Some("s3cret".into());
    let server = TestServer::start_with(config).await;
    let body = json!({"Name": "web", "Port": 80});
    let path = "/v1/agent/service/register";
    let refused = server.put(path, body.clone()).await;
    assert_error(&refused, 401, None, "X-Consul-Token");
    let wrong = server
        .send(
            server
                .client
                .put(server.url(path))
                .header("X-Consul-Token", "nope")
                .json(&body),
        )
        .await;
    assert_eq!(wrong.status, 401);
    for request in [
        server.client.put(server.url(path)).bearer_auth("s3cret"),
        server
            .client
            .put(server.url(path))
            .header("X-Consul-Token", "s3cret"),
        server
            .client
            .put(server.url(&format!("{path}?token=s3cret"))),
    ] {
        let reply = server.send(request.json(&body)).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
    }
    // Reads stay open, as on the native API.
    assert_eq!(server.get("/v1/health/service/web").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn errors_are_400s_naming_the_field() {
    let server = consul_server().await;
    let path = "/v1/agent/service/register";
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (r#"{"Port": 80}"#.into(), Some("Name"), "Name is required"),
        (
            r#"{"Name": "my_service", "Port": 80}"#.into(),
            Some("Name"),
            "not a DNS label",
        ),
        (
            r#"{"Name": "web"}"#.into(),
            Some("Port"),
            "Port is required",
        ),
        (
            r#"{"Name": "web", "Port": "80"}"#.into(),
            Some("Port"),
            "whole number",
        ),
        (
            r#"{"Name": "web", "ID": "a b", "Port": 80}"#.into(),
            Some("ID"),
            "instance id",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Address": "10.0.1.999"}"#.into(),
            Some("Address"),
            "neither",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Check": {"Interval": "10s"}}"#.into(),
            Some("Check"),
            "one of HTTP, TCP or TTL",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Check": {"HTTP": "http://x/"}}"#.into(),
            Some("Check.Interval"),
            "required",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Checks": [{"TTL": "1s"}, {"TTL": "soon"}]}"#.into(),
            Some("Checks[1].TTL"),
            "duration",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Check": {"Args": ["/bin/true"], "Interval": "1s"}}"#
                .into(),
            Some("Check.Args"),
            "script checks",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Check": {"GRPC": "x:1", "Interval": "1s"}}"#.into(),
            Some("Check.GRPC"),
            "gRPC",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Kind": "connect-proxy"}"#.into(),
            Some("Kind"),
            "not supported",
        ),
        (
            r#"{"Name": "web", "Port": 80, "Tags": "v1"}"#.into(),
            Some("Tags"),
            "list of strings",
        ),
        (r#"{"Name": "web", "Port": 80"#.into(), None, "invalid JSON"),
        ("".into(), None, "empty"),
        ("[]".into(), None, "JSON object"),
    ];
    for (body, field, contains) in cases {
        let reply = server.put_raw(path, &body).await;
        assert_error(&reply, 400, field, contains);
    }
    assert_eq!(
        server.get("/v1/agent/services").await.json,
        json!({}),
        "nothing registered"
    );

    register(&server, json!({"Name": "web", "Port": 80, "Check": {"HTTP": "http://127.0.0.1:80/", "Interval": "10s"}})).await;
    for (path, body, status, field, contains) in [
        (
            "/v1/agent/check/update/service:web",
            json!({"Output": "x"}),
            400,
            Some("Status"),
            "required",
        ),
        (
            "/v1/agent/check/update/service:web",
            json!({"Status": "fine"}),
            400,
            Some("Status"),
            "not one of",
        ),
        (
            "/v1/agent/check/update/service:web",
            json!({"Status": "passing"}),
            400,
            Some("check"),
            "not a ttl check",
        ),
        (
            "/v1/agent/check/update/nope",
            json!({"Status": "passing"}),
            404,
            None,
            "unknown check ID",
        ),
        (
            "/v1/agent/service/maintenance/web",
            json!(null),
            400,
            Some("enable"),
            "missing value",
        ),
        (
            "/v1/agent/service/maintenance/web?enable=maybe",
            json!(null),
            400,
            Some("enable"),
            "invalid value",
        ),
        (
            "/v1/agent/service/maintenance/nope?enable=true",
            json!(null),
            404,
            None,
            "unknown service ID",
        ),
    ] {
        let reply = server.put(path, body).await;
        assert_error(&reply, status, field, contains);
    }
    for (path, field) in [
        ("/v1/health/service/web?index=x", "index"),
        ("/v1/health/service/web?index=1&wait=30", "wait"),
        ("/v1/health/service/web?dc=dc2", "dc"),
        (
            "/v1/catalog/service/web?filter=ServiceTags%20contains%20v1",
            "filter",
        ),
        ("/v1/health/state/fine", "state"),
    ] {
        assert_error(&server.get(path).await, 400, Some(field), "");
    }
    server.stop().await;
}

#[tokio::test]
async fn unsupported_consul_endpoints_are_404s_that_name_them() {
    let server = consul_server().await;
    for (method, path) in [
        ("GET", "/v1/kv/config/app"),
        ("PUT", "/v1/kv/config/app"),
        ("PUT", "/v1/agent/check/register"),
        ("GET", "/v1/health/node/srvdns"),
        ("PUT", "/v1/catalog/register"),
        ("PUT", "/v1/session/create"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/connect/ca/roots"),
        ("PUT", "/v1/agent/maintenance"),
    ] {
        let request = match method {
            "GET" => server.client.get(server.url(path)),
            _ => server.client.put(server.url(path)).body("{}"),
        };
        let reply = server.send(request).await;
        assert_error(
            &reply,
            404,
            None,
            &format!("{method} {path} is a Consul endpoint that srvdns does not support"),
        );
    }
    server.stop().await;
}

// ---- active checks: need the health engine ----

/// A local HTTP server answering 200 on `/health`, for HTTP checks.
async fn health_endpoint() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    addr
}

#[tokio::test]
async fn an_http_check_turns_passing_on_its_first_success() {
    let server = consul_server().await;
    let target = health_endpoint().await;
    register(
        &server,
        json!({"Name": "web", "ID": "w1", "Address": "127.0.0.1", "Port": target.port(),
               "Check": {"HTTP": format!("http://{target}/health"), "Interval": "200ms"}}),
    )
    .await;
    support::eventually(Duration::from_secs(3), "w1 passes", || async {
        (passing_ids(&server, "web").await == ["w1"]).then_some(())
    })
    .await;
    assert_eq!(
        a_records(&server, "web.service.consul.").await.1,
        ["127.0.0.1"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_check_without_thresholds_turns_critical_on_its_first_failure() {
    let server = consul_server().await;
    // A TCP check against a port that answers, then stops answering.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    register(
        &server,
        json!({"Name": "tcp", "ID": "t1", "Address": "127.0.0.1", "Port": target.port(),
               "Check": {"TCP": target.to_string(), "Interval": "200ms", "Timeout": "100ms"}}),
    )
    .await;
    support::eventually(Duration::from_secs(3), "t1 passes", || async {
        (passing_ids(&server, "tcp").await == ["t1"]).then_some(())
    })
    .await;
    drop(listener);
    // Consul's threshold is 1: the first failed probe (within ~one interval) turns it critical.
    support::eventually(Duration::from_secs(1), "t1 is critical", || async {
        passing_ids(&server, "tcp").await.is_empty().then_some(())
    })
    .await;
    server.stop().await;
}
