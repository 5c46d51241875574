//! The Consul-compatible HTTP API: the subset of a Consul agent's API that service-discovery
//! clients use (python-consul / py-consul, the npm `consul` package, Consul's Go `api`
//! package, `curl` scripts), on the same router and over the same [`Registry`] as the native
//! API. See docs/consul-compat.md for what is supported and what differs.
//!
//! This module only translates: Consul requests into the Registry calls the native API makes
//! (validated by the same rules, [`registration`]), registry snapshots into Consul's shapes
//! ([`view`]). It must never keep state of its own, nor answer a Consul endpoint it does not
//! implement with a success: those get a 404 that names the endpoint
//! ([`unsupported_endpoint`]).
//!
//! The cross-cutting parts live in the HTTP module's middleware, once for both APIs: the
//! `X-Consul-*` headers on every response ([`add_headers`]) and the token check, which also
//! accepts `X-Consul-Token` and `?token=`.
//!
//! [`Registry`]: crate::registry::Registry

pub mod decode;
pub mod registration;
pub mod routes;
pub mod view;

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::routing::{get, put};

use super::AppState;

/// The registry index, on every response; reads set it from the snapshot they answered from.
pub static INDEX_HEADER: HeaderName = HeaderName::from_static("x-consul-index");
static KNOWN_LEADER_HEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
static LAST_CONTACT_HEADER: HeaderName = HeaderName::from_static("x-consul-lastcontact");
/// The token header Consul clients send.
pub static TOKEN_HEADER: HeaderName = HeaderName::from_static("x-consul-token");

/// Path prefixes of Consul's HTTP API: a request under one of them that no route takes is a
/// Consul endpoint srvdns does not support.
const CONSUL_PREFIXES: &[&str] = &[
    "/v1/acl",
    "/v1/agent",
    "/v1/catalog",
    "/v1/config",
    "/v1/connect",
    "/v1/coordinate",
    "/v1/discovery-chain",
    "/v1/event",
    "/v1/exported-services",
    "/v1/health/",
    "/v1/internal",
    "/v1/kv",
    "/v1/namespace",
    "/v1/operator",
    "/v1/partition",
    "/v1/peering",
    "/v1/query",
    "/v1/session",
    "/v1/snapshot",
    "/v1/status",
    "/v1/txn",
];

/// The Consul routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/service/register", put(routes::register))
        .route("/v1/agent/service/deregister/{id}", put(routes::deregister))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(routes::maintenance),
        )
        .route("/v1/agent/check/pass/{check_id}", put(routes::check_pass))
        .route("/v1/agent/check/warn/{check_id}", put(routes::check_warn))
        .route("/v1/agent/check/fail/{check_id}", put(routes::check_fail))
        .route(
            "/v1/agent/check/update/{check_id}",
            put(routes::check_update),
        )
        .route("/v1/agent/services", get(routes::agent_services))
        .route("/v1/agent/service/{id}", get(routes::agent_service))
        .route("/v1/agent/checks", get(routes::agent_checks))
        .route("/v1/agent/self", get(routes::agent_self))
        .route("/v1/health/service/{name}", get(routes::health_service))
        .route("/v1/health/checks/{name}", get(routes::health_checks))
        .route("/v1/health/state/{state}", get(routes::health_state))
        .route("/v1/catalog/services", get(routes::catalog_services))
        .route("/v1/catalog/service/{name}", get(routes::catalog_service))
        .route("/v1/catalog/datacenters", get(routes::catalog_datacenters))
        .route("/v1/catalog/nodes", get(routes::catalog_nodes))
        .route("/v1/status/leader", get(routes::status_leader))
        .route("/v1/status/peers", get(routes::status_peers))
}

/// The message for a request no route takes, if its path is Consul's.
pub fn unsupported_endpoint(method: &Method, path: &str) -> Option<String> {
    CONSUL_PREFIXES
        .iter()
        .any(|prefix| path.starts_with(prefix))
        .then(|| {
            format!(
                "{method} {path} is a Consul endpoint that srvdns does not support; the \
                 supported subset is listed in docs/consul-compat.md"
            )
        })
}

/// Adds the `X-Consul-*` headers: the index (unless the handler set it from its snapshot),
/// a known leader (srvdns is its own), and no replication lag.
pub fn add_headers(headers: &mut HeaderMap, index: u64) {
    if !headers.contains_key(&INDEX_HEADER) {
        headers.insert(INDEX_HEADER.clone(), HeaderValue::from(index.max(1)));
    }
    headers.insert(
        KNOWN_LEADER_HEADER.clone(),
        HeaderValue::from_static("true"),
    );
    headers.insert(LAST_CONTACT_HEADER.clone(), HeaderValue::from_static("0"));
}
