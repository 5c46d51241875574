//! The native HTTP API's handlers. Each one translates a request into one [`Registry`] call
//! and the result into JSON; none holds state of its own.
//!
//! Each handler carries its OpenAPI description (`#[utoipa::path]`): its route, parameters,
//! body and answers. The router is built from these same annotations (`super::api_routes`),
//! so `/v1/openapi.json` lists exactly the routes served.
//!
//! [`Registry`]: crate::registry::Registry

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::auth::Access;
use super::error::{ApiError, Body as ErrorBody};
use super::registration::{DurationValue, RegistrationBody};
use super::view::{
    CheckEngineView, HealthView, InstanceView, LatenessView, ServiceSummary, ServiceView,
    StatusView,
};
use crate::registry::model::{InstanceId, ServiceName, Status};

/// The longest a blocking read may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// `Path` whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// `Query` whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Parses a JSON body, naming the offending field on error. Any content type is accepted:
/// `curl -d` sends `application/x-www-form-urlencoded` unless told otherwise.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "request body is empty: expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON body: {inner}"),
            );
        }
        let mut field = if path == "." { String::new() } else { path };
        // serde reports a missing field at its parent's path; name the field itself.
        let message = inner.to_string();
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            field = if field.is_empty() {
                missing.to_owned()
            } else {
                format!("{field}.{missing}")
            };
        }
        ApiError::bad_request(field, format!("invalid JSON body: {message}"))
    })
}

fn service_name(raw: &str) -> Result<ServiceName, ApiError> {
    Ok(ServiceName::try_from(raw)?)
}

fn instance_id(raw: &str) -> Result<InstanceId, ApiError> {
    Ok(InstanceId::try_from(raw)?)
}

/// `PUT /v1/services/{service}/instances/{id}`
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}",
    tag = "services",
    summary = "Register or replace an instance (idempotent)",
    params(
        ("service" = String, Path, pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "The service: a DNS label ([a-z0-9-], case-folded; `addr` is reserved)"),
        ("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$",
            description = "The instance: 1-128 characters of [A-Za-z0-9._:-]"),
    ),
    request_body(content = RegistrationBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Registered: the instance as stored", body = InstanceView),
        (status = 400, description = "invalid path or body; `field` names what", body = ErrorBody),
        (status = 401, description = "a token is configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 409, description = "the service name clashes with a static zone record", body = ErrorBody),
        (status = 413, description = "the body is larger than 256 KiB", body = ErrorBody),
        (status = 503, description = "the store could not write the change; it was undone", body = ErrorBody),
    ),
)]
pub async fn register(
    State(state): State<AppState>,
    access: Access,
    Path((service, id)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let service = service_name(&service)?;
    access.may_write(service.as_str())?;
    let body = body?;
    let id = instance_id(&id)?;
    let parsed: RegistrationBody = parse_json(&body)?;
    let registration = parsed.validate(service, id, peer.ip().to_canonical(), &state.limits)?;
    let instance = state.registry.register(registration).await?;
    Ok(Json(InstanceView::from(&*instance)).into_response())
}

/// `DELETE /v1/services/{service}/instances/{id}`
#[utoipa::path(
    delete,
    path = "/v1/services/{service}/instances/{id}",
    tag = "services",
    summary = "Deregister an instance",
    params(
        ("service" = String, Path, pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "The service: a DNS label ([a-z0-9-], case-folded; `addr` is reserved)"),
        ("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$",
            description = "The instance: 1-128 characters of [A-Za-z0-9._:-]"),
    ),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 400, description = "invalid path", body = ErrorBody),
        (status = 401, description = "a token is configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 404, description = "no such instance", body = ErrorBody),
        (status = 503, description = "the store could not write the change; it was undone", body = ErrorBody),
    ),
)]
pub async fn deregister(
    State(state): State<AppState>,
    access: Access,
    Path((service, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    access.may_write(&service)?;
    state.registry.deregister(&service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// Only the `ttl` check with this name (default: every `ttl` check of the instance).
    pub check: Option<String>,
}

/// `PUT /v1/services/{service}/instances/{id}/heartbeat[?check=NAME]`
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/heartbeat",
    tag = "services",
    summary = "Renew the instance's `ttl` checks: they turn passing",
    params(
        ("service" = String, Path, pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "The service: a DNS label ([a-z0-9-], case-folded; `addr` is reserved)"),
        ("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$",
            description = "The instance: 1-128 characters of [A-Za-z0-9._:-]"),
        CheckQuery,
    ),
    responses(
        (status = 200, description = "Renewed: the instance's status", body = StatusView),
        (status = 400, description = "invalid path or query", body = ErrorBody),
        (status = 401, description = "a token is configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 404, description = "no such instance (re-register it) or check", body = ErrorBody),
        (status = 503, description = "the store could not write the change; it was undone", body = ErrorBody),
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    access: Access,
    Path((service, id)): Path<(String, String)>,
    Query(query): Query<CheckQuery>,
) -> Result<Response, ApiError> {
    access.may_write(&service)?;
    let instance = state
        .registry
        .heartbeat(&service, &id, query.check.as_deref())
        .await?;
    Ok(Json(StatusView::from(&*instance)).into_response())
}

/// The body of `PUT …/status`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    /// `passing`, `warning` or `critical`.
    status: String,
    /// What the instance reports with it (at most 4096 bytes).
    output: Option<String>,
}

/// The longest check output kept.
const MAX_OUTPUT_BYTES: usize = 4096;

/// `PUT /v1/services/{service}/instances/{id}/status[?check=NAME]`
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/status",
    tag = "services",
    summary = "Set the status of the instance's `ttl` checks (or its own, without checks)",
    params(
        ("service" = String, Path, pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "The service: a DNS label ([a-z0-9-], case-folded; `addr` is reserved)"),
        ("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$",
            description = "The instance: 1-128 characters of [A-Za-z0-9._:-]"),
        CheckQuery,
    ),
    request_body(content = StatusBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Set: the instance's status", body = StatusView),
        (status = 400, description = "invalid path, query or body", body = ErrorBody),
        (status = 401, description = "a token is configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 404, description = "no such instance or check", body = ErrorBody),
        (status = 413, description = "the body is larger than 256 KiB", body = ErrorBody),
        (status = 503, description = "the store could not write the change; it was undone", body = ErrorBody),
    ),
)]
pub async fn set_status(
    State(state): State<AppState>,
    access: Access,
    Path((service, id)): Path<(String, String)>,
    Query(query): Query<CheckQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    access.may_write(&service)?;
    let body: StatusBody = parse_json(&body?)?;
    let status = Status::parse(&body.status, "status")?;
    let output = body.output.unwrap_or_default();
    if output.len() > MAX_OUTPUT_BYTES {
        return Err(ApiError::bad_request(
            "output",
            format!("output must be at most {MAX_OUTPUT_BYTES} bytes"),
        ));
    }
    let instance = state
        .registry
        .set_status(&service, &id, query.check.as_deref(), status, output)
        .await?;
    Ok(Json(StatusView::from(&*instance)).into_response())
}

/// The body of `PUT …/maintenance`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    /// `true`: out of DNS, still registered; `false`: back.
    enabled: bool,
    /// Shown as the instance's output (at most 4096 bytes; default `maintenance`).
    reason: Option<String>,
}

/// `PUT /v1/services/{service}/instances/{id}/maintenance`
#[utoipa::path(
    put,
    path = "/v1/services/{service}/instances/{id}/maintenance",
    tag = "services",
    summary = "Drain an instance (out of DNS, still registered), or undrain it",
    params(
        ("service" = String, Path, pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "The service: a DNS label ([a-z0-9-], case-folded; `addr` is reserved)"),
        ("id" = String, Path, pattern = r"^[A-Za-z0-9._:-]{1,128}$",
            description = "The instance: 1-128 characters of [A-Za-z0-9._:-]"),
    ),
    request_body(content = MaintenanceBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Set: the instance", body = InstanceView),
        (status = 400, description = "invalid path or body", body = ErrorBody),
        (status = 401, description = "a token is configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 404, description = "no such instance", body = ErrorBody),
        (status = 413, description = "the body is larger than 256 KiB", body = ErrorBody),
        (status = 503, description = "the store could not write the change; it was undone", body = ErrorBody),
    ),
)]
pub async fn set_maintenance(
    State(state): State<AppState>,
    access: Access,
    Path((service, id)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    access.may_write(&service)?;
    let body: MaintenanceBody = parse_json(&body?)?;
    let reason = body.enabled.then(|| {
        body.reason
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| String::from("maintenance"))
    });
    if reason.as_ref().is_some_and(|r| r.len() > MAX_OUTPUT_BYTES) {
        return Err(ApiError::bad_request(
            "reason",
            format!("reason must be at most {MAX_OUTPUT_BYTES} bytes"),
        ));
    }
    let instance = state
        .registry
        .set_maintenance(&service, &id, reason)
        .await?;
    Ok(Json(InstanceView::from(&*instance)).into_response())
}

/// `GET /v1/services`
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "services",
    summary = "Services with their instance counts by status",
    responses((status = 200, description = "Every service", body = Vec<ServiceSummary>)),
)]
pub async fn list_services(State(state): State<AppState>) -> Response {
    let snapshot = state.registry.view();
    let services: Vec<ServiceSummary<'_>> = snapshot
        .services
        .values()
        .map(|entry| ServiceSummary::from(&**entry))
        .collect();
    Json(services).into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BlockingQuery {
    /// Block until the service changes after this registry index (`index` of an earlier
    /// answer, or the `X-Srvdns-Index` header).
    #[param(value_type = Option<u64>)]
    pub index: Option<String>,
    /// How long to block at most: `"30s"`, `"5m"`, or seconds (default and maximum 5 min).
    pub wait: Option<String>,
}

impl BlockingQuery {
    /// `Some((index, wait))` for a blocking read. `wait` defaults to, and is capped at,
    /// [`MAX_WAIT`].
    pub fn parse(&self) -> Result<Option<(u64, Duration)>, ApiError> {
        let wait = match &self.wait {
            Some(raw) => Some(
                DurationValue::Text(raw.clone())
                    .parse("wait")
                    .or_else(|_| match raw.parse::<f64>() {
                        Ok(secs) => DurationValue::Seconds(secs).parse("wait"),
                        Err(_) => Err(crate::registry::model::ValidationError::new(
                            "wait",
                            "wait must be a duration such as \"30s\" or \"5m\"",
                        )),
                    })?
                    .min(MAX_WAIT),
            ),
            None => None,
        };
        let index = match &self.index {
            Some(raw) => Some(raw.parse::<u64>().map_err(|_| {
                ApiError::bad_request("index", format!("index {raw:?} is not a whole number"))
            })?),
            None => None,
        };
        Ok(index.map(|index| (index, wait.unwrap_or(MAX_WAIT))))
    }
}

/// `GET /v1/services/{service}[?index=N&wait=30s]`
#[utoipa::path(
    get,
    path = "/v1/services/{service}",
    tag = "services",
    summary = "A service's instances; with `index`, a blocking read",
    params(
        ("service" = String, Path, pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
            description = "The service: a DNS label ([a-z0-9-], case-folded; `addr` is reserved)"),
        BlockingQuery,
    ),
    responses(
        (status = 200, description = "The service and its instances", body = ServiceView),
        (status = 400, description = "invalid service name, index or wait", body = ErrorBody),
        (status = 404, description = "the service has no registered instances", body = ErrorBody),
    ),
)]
pub async fn get_service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(query): Query<BlockingQuery>,
) -> Result<Response, ApiError> {
    let name = service_name(&service)?;
    let snapshot = match query.parse()? {
        Some((index, wait)) => {
            tokio::select! {
                _ = state.registry.wait_for_service(name.as_str(), index, wait) => {}
                _ = state.shutdown.cancelled() => {}
            }
            state.registry.view()
        }
        None => state.registry.view(),
    };
    match snapshot.service(name.as_str()) {
        Some(entry) => Ok(Json(ServiceView::from(&**entry)).into_response()),
        None => Err(ApiError::not_found(format!(
            "service {:?} has no registered instances",
            name.as_str()
        ))),
    }
}

/// `GET /metrics`: Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Metrics in the Prometheus (OpenMetrics) text format",
    responses((
        status = 200,
        description = "Every metric (names in the README, \"Metrics\")",
        body = String,
        content_type = "application/openmetrics-text",
    )),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/health`: liveness of srvdns itself.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "operations",
    summary = "Liveness of srvdns, with registry size and health-check counters",
    responses((status = 200, description = "srvdns is up", body = HealthView)),
)]
pub async fn health(State(state): State<AppState>) -> Response {
    let snapshot = state.registry.snapshot();
    let instances: usize = snapshot.services.values().map(|s| s.instances.len()).sum();
    let stats = &state.check_stats;
    Json(HealthView {
        status: "ok",
        index: snapshot.index,
        services: snapshot.services.len(),
        instances,
        checks: CheckEngineView {
            probed_instances: stats.scheduled_instances.load(Ordering::Relaxed),
            runs: stats.runs.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            lateness_ms: LatenessView {
                p50: stats.lateness_quantile_ms(0.50),
                p99: stats.lateness_quantile_ms(0.99),
                max: stats.lateness_quantile_ms(1.0),
            },
            recent_lateness_ms: LatenessView {
                p50: stats.recent_lateness_quantile_ms(0.50),
                p99: stats.recent_lateness_quantile_ms(0.99),
                max: stats.recent_lateness_quantile_ms(1.0),
            },
        },
    })
    .into_response()
}

/// `GET /v1/openapi.json`: this API's OpenAPI document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    summary = "This document: the OpenAPI 3.1 description of the HTTP API",
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
pub async fn openapi() -> Response {
    static DOCUMENT: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        Bytes::from(super::openapi().to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialize the OpenAPI document");
            String::from("{}")
        }))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}
