//! `GET /metrics`: after known traffic, the exact counter lines Prometheus would scrape.

mod support;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;
use srvdns::config::Config;
use support::{TestServer, eventually, test_config};

/// The scrape, as text; asserts the content type Prometheus negotiates.
async fn scrape(server: &TestServer) -> String {
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.expect("metrics text");
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// Sample lines whose name starts with `prefix`, in output order.
fn samples<'t>(text: &'t str, prefix: &str) -> Vec<&'t str> {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
        .collect()
}

fn sorted(mut lines: Vec<&str>) -> Vec<&str> {
    lines.sort_unstable();
    lines
}

#[tokio::test]
async fn dns_http_and_registry_metrics_count_known_traffic() {
    let server = TestServer::start().await;
    server
        .register("web", "w1", json!({"address": "10.0.1.5", "port": 80}))
        .await;
    // Enough distinct addresses that a plain UDP A answer overflows 512 bytes.
    for i in 1..=40 {
        server
            .register(
                "big",
                &format!("b{i}"),
                json!({"address": format!("10.0.2.{i}"), "port": 80}),
            )
            .await;
    }
    let reply = server
        .put(
            "/v1/services/big/instances/b40/maintenance",
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.get("/v1/services/nothing").await.status, 404);
    assert_eq!(server.get("/no/such/endpoint").await.status, 404);

    for _ in 0..3 {
        let answer = server.query("web.service.local.", RecordType::A).await;
        assert_eq!(answer.answers.len(), 1);
    }
    let answer = server
        .query_tcp("web.service.local.", RecordType::SRV)
        .await;
    assert_eq!(answer.answers.len(), 1);
    let answer = server.query("nothing.service.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    let answer = server.query("example.com.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    let answer = server.query("big.service.local.", RecordType::A).await;
    assert!(
        answer.metadata.truncation,
        "39 A records do not fit 512 bytes"
    );
    // Too short for a header: no reply, counted as dropped.
    let reply = support::udp_exchange(server.dns, &[0, 1, 2], Duration::from_millis(200)).await;
    assert_eq!(reply, None);

    // The dropped packet is counted after the server read it: poll for it.
    let text = eventually(
        Duration::from_secs(5),
        "the dropped packet counted",
        || async {
            let text = scrape(&server).await;
            text.contains("srvdns_dns_dropped_total{transport=\"udp\"} 1\n")
                .then_some(text)
        },
    )
    .await;

    assert_eq!(
        sorted(samples(&text, "srvdns_dns_queries_total")),
        [
            r#"srvdns_dns_queries_total{transport="tcp",qtype="SRV",rcode="NOERROR"} 1"#,
            r#"srvdns_dns_queries_total{transport="udp",qtype="A",rcode="NOERROR"} 4"#,
            r#"srvdns_dns_queries_total{transport="udp",qtype="A",rcode="NXDOMAIN"} 1"#,
            r#"srvdns_dns_queries_total{transport="udp",qtype="A",rcode="REFUSED"} 1"#,
        ]
    );
    assert_eq!(
        samples(&text, "srvdns_dns_truncated_total"),
        [
            r#"srvdns_dns_truncated_total{transport="udp"} 1"#,
            r#"srvdns_dns_truncated_total{transport="tcp"} 0"#,
        ]
    );
    assert_eq!(
        samples(&text, "srvdns_dns_refused_total"),
        ["srvdns_dns_refused_total 1"]
    );
    assert_eq!(
        samples(&text, "srvdns_dns_answer_duration_seconds_count"),
        ["srvdns_dns_answer_duration_seconds_count 7"]
    );
    assert_eq!(
        samples(
            &text,
            "srvdns_dns_answer_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        ["srvdns_dns_answer_duration_seconds_bucket{le=\"+Inf\"} 7"]
    );

    assert_eq!(
        sorted(samples(&text, "srvdns_http_requests_total")),
        [
            r#"srvdns_http_requests_total{method="GET",route="/v1/services/{service}",status="404"} 1"#,
            r#"srvdns_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
            r#"srvdns_http_requests_total{method="PUT",route="/v1/services/{service}/instances/{id}",status="200"} 41"#,
            r#"srvdns_http_requests_total{method="PUT",route="/v1/services/{service}/instances/{id}/maintenance",status="200"} 1"#,
        ]
    );
    assert!(
        text.contains(
            "srvdns_http_request_duration_seconds_count{method=\"PUT\",route=\"/v1/services/{service}/instances/{id}\"} 41\n"
        ),
        "{text}"
    );

    assert_eq!(
        samples(&text, "srvdns_registry_instances"),
        [
            r#"srvdns_registry_instances{status="passing"} 40"#,
            r#"srvdns_registry_instances{status="warning"} 0"#,
            r#"srvdns_registry_instances{status="critical"} 0"#,
            r#"srvdns_registry_instances{status="maintenance"} 1"#,
        ]
    );
    assert_eq!(
        samples(&text, "srvdns_registry_services"),
        ["srvdns_registry_services 2"]
    );
    assert_eq!(
        samples(&text, "srvdns_build_info"),
        [format!(
            "srvdns_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )]
    );
    // A memory-only server has no store to measure.
    assert_eq!(samples(&text, "srvdns_store_"), Vec::<&str>::new());
    server.stop().await;
}

#[tokio::test]
async fn store_commits_are_measured() {
    let dir = std::env::temp_dir().join(format!("srvdns-metrics-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = TestServer::start_with(Config {
        data_dir: Some(dir.clone()),
        ..test_config()
    })
    .await;
    // Acknowledged one after the other: one transaction each.
    for id in ["a1", "a2"] {
        server
            .register("api", id, json!({"address": "10.0.3.1", "port": 80}))
            .await;
    }
    let text = scrape(&server).await;
    for line in [
        "srvdns_store_commit_batch_size_count 2",
        "srvdns_store_commit_batch_size_sum 2.0",
        "srvdns_store_commit_duration_seconds_count 2",
        "srvdns_store_commit_failures_total 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn health_check_runs_failures_and_lateness_are_counted() {
    let server = TestServer::start().await;
    // Nothing listens on port 1: the first probe (run at once) fails; the next is an hour away.
    server
        .register(
            "queue",
            "q1",
            json!({"address": "127.0.0.1", "port": 1,
                   "check": {"type": "tcp", "interval": "1h", "timeout": "1s"}}),
        )
        .await;
    let text = eventually(Duration::from_secs(5), "the probe counted", || async {
        let text = scrape(&server).await;
        text.contains("srvdns_check_failures_total 1\n")
            .then_some(text)
    })
    .await;
    for line in [
        "srvdns_check_runs_total 1",
        "srvdns_check_probed_instances 1",
        "srvdns_check_lateness_seconds_count 1",
        "srvdns_check_lateness_seconds_bucket{le=\"+Inf\"} 1",
        "srvdns_registry_instances{status=\"critical\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    server.stop().await;
}
