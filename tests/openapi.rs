//! `GET /v1/openapi.json`: the OpenAPI document is generated from the handlers, lists every
//! route the server answers, and — in the `#[ignore]`d interop group, run by `.ci/run` —
//! schemathesis fuzzes the running binary with it: no 5xx, every answer as documented.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use support::TestServer;
use support::process::{Srvdns, root, temp_dir};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `(METHOD, path)` of every operation in the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

#[tokio::test]
async fn the_document_lists_every_native_route_with_its_schemas() {
    let server = TestServer::start().await;
    let reply = server.get("/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let document = reply.json;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document,
        serde_json::to_value(srvdns::http::openapi()).unwrap()
    );

    let native: Vec<(String, String)> = operations(&document)
        .into_iter()
        .filter(|(_, path)| !path.starts_with("/v1/agent") && !path.contains("/catalog/"))
        .filter(|(_, path)| !path.starts_with("/v1/status") && !path.starts_with("/v1/health/"))
        .collect();
    let expected = [
        ("DELETE", "/v1/services/{service}/instances/{id}"),
        ("GET", "/metrics"),
        ("GET", "/v1/health"),
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/services"),
        ("GET", "/v1/services/{service}"),
        ("PUT", "/v1/services/{service}/instances/{id}"),
        ("PUT", "/v1/services/{service}/instances/{id}/heartbeat"),
        ("PUT", "/v1/services/{service}/instances/{id}/maintenance"),
        ("PUT", "/v1/services/{service}/instances/{id}/status"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(native, expected);

    // The registration body is the contract's, field for field.
    let registration = &document["components"]["schemas"]["RegistrationBody"]["properties"];
    let fields: BTreeSet<&str> = registration
        .as_object()
        .expect("RegistrationBody properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "address", "check", "checks", "meta", "port", "ports", "priority", "protocol", "tags",
            "weight", "weights"
        ])
    );
    let error = &document["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let register = &document["paths"]["/v1/services/{service}/instances/{id}"]["put"];
    let statuses: Vec<&str> = register["responses"]
        .as_object()
        .expect("responses")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(statuses, ["200", "400", "401", "409", "413", "503"]);

    // Every documented operation is routed: none falls through to "no such endpoint".
    for (method, path) in operations(&document) {
        let concrete = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = server
            .client
            .request(method.clone(), server.url(&concrete))
            .send()
            .await
            .expect("an answer");
        let status = response.status();
        let body = response.text().await.expect("a body");
        assert!(
            status != 404 || !body.contains("endpoint"),
            "{method} {path} is documented but not routed: {body}"
        );
        assert_ne!(status, 405, "{method} {path}: {body}");
    }
    server.stop().await;
}

/// schemathesis, from `target/interop/venv-schemathesis` (or `$SRVDNS_SCHEMATHESIS_VENV`).
fn schemathesis() -> std::path::PathBuf {
    let venv = std::env::var_os("SRVDNS_SCHEMATHESIS_VENV").map_or_else(
        || root().join("target/interop/venv-schemathesis"),
        Into::into,
    );
    let program = venv.join("bin/schemathesis");
    assert!(
        program.exists(),
        "{} is missing: install it with `python3 -m venv target/interop/venv-schemathesis && \
         target/interop/venv-schemathesis/bin/pip install schemathesis` (bash .ci/run does), \
         or leave out the interop group",
        program.display()
    );
    program
}

#[test]
#[ignore = "interop: needs schemathesis in target/interop/venv-schemathesis (installed by .ci/run)"]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let program = schemathesis();
    let dir = temp_dir("schemathesis");
    let server = Srvdns::start(&dir, &["--zones", "none"]);
    let output = Command::new(program)
        .args(["--config-file"])
        .arg(root().join("tests/interop/schemathesis.toml"))
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", server.http))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            // One worker: CPython 3.11 can fail parsing in parallel threads (SystemError).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .current_dir(&dir)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Guard against a run that tested nothing and passed.
    assert!(stdout.contains("Tested: 30"), "{stdout}");
    drop(server);
}
