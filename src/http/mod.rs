//! The HTTP API (axum): the native `/v1/services/…` routes over the [`Registry`].
//!
//! Cross-cutting rules live here, once: every response carries `X-Srvdns-Index`; writes need
//! the bearer token when one is configured; unknown routes and methods answer JSON errors;
//! bodies are capped at [`MAX_BODY_BYTES`].

pub mod error;
pub mod registration;
pub mod routes;
pub mod view;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::health::engine::CheckStats;
use crate::registry::Registry;
use error::ApiError;
use registration::Limits;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The registry index header on every response.
pub static INDEX_HEADER: HeaderName = HeaderName::from_static("x-srvdns-index");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub limits: Limits,
    /// Bearer token required for writes, if any.
    pub token: Option<Arc<str>>,
    /// Counters of the active health checks, for `/v1/health`.
    pub check_stats: Arc<CheckStats>,
    /// Ends blocking reads when the server stops.
    pub shutdown: CancellationToken,
}

/// The API's router.
pub fn router(state: AppState) -> Router {
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
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(state.clone(), add_index))
        .with_state(state)
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Adds `X-Srvdns-Index` (the registry index after the request) to every response.
async fn add_index(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        INDEX_HEADER.clone(),
        HeaderValue::from(state.registry.index()),
    );
    response
}

/// Refuses writes without the configured bearer token. Reads stay open.
async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.token else {
        return next.run(request).await;
    };
    let is_write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if is_write {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}
