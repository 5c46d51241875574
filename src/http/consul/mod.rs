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
use axum::routing::{MethodRouter, get, put};

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

/// The Consul routes: method, path, summary for the OpenAPI document, handler. One table,
/// so the router and the document list the same routes.
fn routes() -> Vec<(Method, &'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        (
            Method::PUT,
            "/v1/agent/service/register",
            "Register or replace a service instance (Consul's body)",
            put(routes::register),
        ),
        (
            Method::PUT,
            "/v1/agent/service/deregister/{id}",
            "Deregister a service instance",
            put(routes::deregister),
        ),
        (
            Method::PUT,
            "/v1/agent/service/maintenance/{id}",
            "Maintenance on or off (`?enable=&reason=`)",
            put(routes::maintenance),
        ),
        (
            Method::PUT,
            "/v1/agent/check/pass/{check_id}",
            "Set a TTL check passing (`?note=`)",
            put(routes::check_pass),
        ),
        (
            Method::PUT,
            "/v1/agent/check/warn/{check_id}",
            "Set a TTL check warning (`?note=`)",
            put(routes::check_warn),
        ),
        (
            Method::PUT,
            "/v1/agent/check/fail/{check_id}",
            "Set a TTL check critical (`?note=`)",
            put(routes::check_fail),
        ),
        (
            Method::PUT,
            "/v1/agent/check/update/{check_id}",
            "Set a TTL check's status and output",
            put(routes::check_update),
        ),
        (
            Method::GET,
            "/v1/agent/services",
            "The registered services, by ID",
            get(routes::agent_services),
        ),
        (
            Method::GET,
            "/v1/agent/service/{id}",
            "One registered service",
            get(routes::agent_service),
        ),
        (
            Method::GET,
            "/v1/agent/checks",
            "The checks, by ID",
            get(routes::agent_checks),
        ),
        (
            Method::GET,
            "/v1/agent/self",
            "The agent's (minimal) self-description",
            get(routes::agent_self),
        ),
        (
            Method::GET,
            "/v1/health/service/{name}",
            "Instances with their checks (`?passing&tag=&index=&wait=`)",
            get(routes::health_service),
        ),
        (
            Method::GET,
            "/v1/health/checks/{name}",
            "A service's checks",
            get(routes::health_checks),
        ),
        (
            Method::GET,
            "/v1/health/state/{state}",
            "Checks in a state",
            get(routes::health_state),
        ),
        (
            Method::GET,
            "/v1/catalog/services",
            "Service names with their tags",
            get(routes::catalog_services),
        ),
        (
            Method::GET,
            "/v1/catalog/service/{name}",
            "A service's instances (`?tag=`)",
            get(routes::catalog_service),
        ),
        (
            Method::GET,
            "/v1/catalog/datacenters",
            "The one datacenter",
            get(routes::catalog_datacenters),
        ),
        (
            Method::GET,
            "/v1/catalog/nodes",
            "The one node",
            get(routes::catalog_nodes),
        ),
        (
            Method::GET,
            "/v1/status/leader",
            "The leader (srvdns itself)",
            get(routes::status_leader),
        ),
        (
            Method::GET,
            "/v1/status/peers",
            "The peers (srvdns itself)",
            get(routes::status_peers),
        ),
    ]
}

/// The Consul routes.
pub fn router() -> Router<AppState> {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, _, handler)| {
            router.route(path, handler)
        })
}

/// The Consul routes for the OpenAPI document, coarsely: method, path parameters, and JSON
/// answers in Consul's shapes (not described field by field; see docs/consul-compat.md).
pub fn openapi_paths() -> utoipa::openapi::path::Paths {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
    use utoipa::openapi::request_body::RequestBodyBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
    use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};

    let any = || {
        Schema::Object(
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .build(),
        )
    };
    let string = || Schema::Object(ObjectBuilder::new().schema_type(Type::String).build());
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build()
    };
    let mut paths = utoipa::openapi::path::Paths::new();
    for (method, path, summary, _) in routes() {
        let method = if method == Method::PUT {
            HttpMethod::Put
        } else {
            HttpMethod::Get
        };
        let parameters = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(string()))
                    .build()
            });
        let mut operation = OperationBuilder::new()
            .tag("consul")
            .summary(Some(summary))
            .operation_id(Some(format!(
                "consul{}",
                path.replace(['/', '{', '}'], "_")
            )))
            .parameters(Some(parameters))
            .response("400", error("invalid request; `field` names what"))
            .response("404", error("no such service, instance or check"))
            .response(
                "409",
                error("a clash: the ID names instances of several services, or a static name"),
            );
        operation = if method == HttpMethod::Put {
            if path.ends_with("/register") || path.contains("/check/update/") {
                operation = operation.request_body(Some(
                    RequestBodyBuilder::new()
                        .content(
                            "application/json",
                            ContentBuilder::new().schema(Some(any())).build(),
                        )
                        .build(),
                ));
            }
            operation
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("Done; an empty body, as Consul's agent answers")
                        .build(),
                )
                .response(
                    "401",
                    error("a token is configured and the request has none, or a wrong one"),
                )
                .response(
                    "503",
                    error("the store could not write the change; it was undone"),
                )
        } else {
            operation.response(
                "200",
                ResponseBuilder::new()
                    .description("Consul's JSON answer")
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(any())).build(),
                    )
                    .build(),
            )
        };
        paths.add_path_operation(path, vec![method], operation.build());
    }
    paths
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
