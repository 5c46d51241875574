//! The HTTP API (axum): the native `/v1/services/…` routes and the Consul-compatible subset
//! ([`consul`]), both over the one [`Registry`].
//!
//! Cross-cutting rules live here, once: every response carries `X-Srvdns-Index` and the
//! `X-Consul-*` headers; requests pass admission control ([`admission`]: body size,
//! concurrency, time) and authentication ([`auth`]: writes need a token when one is
//! configured, reads too with `--token-reads`, and token-file tokens write only their
//! services); unknown routes and methods answer JSON errors. [`server`] runs the router on
//! its socket (TCP or TLS).

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
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, put};
use tokio_util::sync::CancellationToken;

use crate::health::engine::CheckStats;
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
}

/// The API's router.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.admission.limits.max_body_bytes;
    let instance = "/v1/services/{service}/instances/{id}";
    Router::new()
        .route("/v1/health", get(routes::health))
        .route("/v1/services", get(routes::list_services))
        .route("/v1/services/{service}", get(routes::get_service))
        .route(instance, put(routes::register).delete(routes::deregister))
        .route(&format!("{instance}/heartbeat"), put(routes::heartbeat))
        .route(&format!("{instance}/status"), put(routes::set_status))
        .route(
            &format!("{instance}/maintenance"),
            put(routes::set_maintenance),
        )
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
        .with_state(state)
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
