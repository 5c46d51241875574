//! The HTTP API (axum): the native `/v1/services/…` routes and the Consul-compatible subset
//! ([`consul`]), both over the one [`Registry`].
//!
//! Cross-cutting rules live here, once: every response carries `X-Srvdns-Index` and the
//! `X-Consul-*` headers; requests pass admission control ([`admission`]: body size,
//! concurrency, time) and authentication ([`auth`]: writes need a token when one is
//! configured, reads too with `--token-reads`, and token-file tokens write only their
//! services); unknown routes and methods answer JSON errors. [`server`] runs the router on
//! its socket (TCP or TLS).
//! Every request is counted for `/metrics` by its route template.
//!
//! The native routes are registered from their OpenAPI annotations ([`api_routes`]), so the
//! router and the document at `/v1/openapi.json` ([`openapi`]) come from one list and cannot
//! drift apart. The Consul-compatible routes are listed in the document coarsely (paths and
//! methods, see [`consul::openapi_paths`]).

pub mod admission;
pub mod auth;
pub mod consul;
pub mod error;
pub mod registration;
pub mod routes;
pub mod server;
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::health::engine::CheckStats;
use crate::metrics::Metrics;
use crate::registry::Registry;
use error::ApiError;
use registration::Limits;

/// The largest request body accepted by default (`--max-body-bytes`).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The registry index header on every response.
pub static INDEX_HEADER: HeaderName = HeaderName::from_static("x-srvdns-index");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub limits: Limits,
    /// The tokens accepted, and whether reads need one.
    pub tokens: Arc<auth::Tokens>,
    /// Body size, concurrency and time limits.
    pub admission: Arc<admission::Admission>,
    /// Counters of the active health checks, for `/v1/health`.
    pub check_stats: Arc<CheckStats>,
    /// The Consul node srvdns presents on the Consul-compatible API.
    pub consul: Arc<consul::view::Agent>,
    /// Ends blocking reads when the server stops.
    pub shutdown: CancellationToken,
    /// What `/metrics` renders; HTTP requests are counted into it.
    pub metrics: Arc<Metrics>,
}

/// The document's fixed parts; the paths come from [`api_routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "srvdns",
        description = "Service-discovery DNS server: the registry's HTTP API. Every response \
                       carries the registry index in `X-Srvdns-Index`. Writes need \
                       `Authorization: Bearer <token>` when the server has a token.",
    ),
    tags(
        (name = "services", description = "The native registry API"),
        (name = "operations", description = "Liveness, metrics, this document"),
        (name = "consul", description = "The Consul-compatible subset (docs/consul-compat.md)"),
    ),
)]
struct ApiDoc;

/// The native routes, each registered from its `#[utoipa::path]` annotation.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::openapi))
        .routes(routes!(routes::health))
        .routes(routes!(routes::list_services))
        .routes(routes!(routes::get_service))
        .routes(routes!(routes::register, routes::deregister))
        .routes(routes!(routes::heartbeat))
        .routes(routes!(routes::set_status))
        .routes(routes!(routes::set_maintenance))
}

/// The OpenAPI 3.1 document of the HTTP API, as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = api_routes().into_openapi();
    document.paths.merge(consul::openapi_paths());
    document
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.admission.limits.max_body_bytes;
    let (native, _) = api_routes().split_for_parts();
    native
        .merge(consul::router())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            admission::admit,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), add_index))
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Counts every request for `/metrics` by method, route template and final status (a 401 from
/// the token check included). Requests no route takes count as route `unmatched`.
async fn count_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.count_http(
        &method,
        route.as_deref().unwrap_or("unmatched"),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    let message = consul::unsupported_endpoint(&method, uri.path())
        .unwrap_or_else(|| format!("no such endpoint: {method} {}", uri.path()));
    ApiError::not_found(message)
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Adds `X-Srvdns-Index` (the registry index after the request) and the `X-Consul-*` headers
/// to every response.
async fn add_index(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let index = state.registry.index();
    let headers = response.headers_mut();
    headers.insert(INDEX_HEADER.clone(), HeaderValue::from(index));
    consul::add_headers(headers, index);
    response
}
