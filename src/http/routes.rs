//! The native HTTP API's handlers. Each one translates a request into one [`Registry`] call
//! and the result into JSON; none holds state of its own.
//!
//! [`Registry`]: crate::registry::Registry

use std::collections::BTreeMap;
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

use super::AppState;
use super::error::ApiError;
use super::registration::{DurationValue, RegistrationBody};
use super::view::{InstanceView, ServiceSummary, ServiceView, StatusView};
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
pub async fn register(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let service = service_name(&service)?;
    let id = instance_id(&id)?;
    let parsed: RegistrationBody = parse_json(&body)?;
    let registration = parsed.validate(service, id, peer.ip().to_canonical(), &state.limits)?;
    let instance = state.registry.register(registration).await?;
    Ok(Json(InstanceView::from(&*instance)).into_response())
}

/// `DELETE /v1/services/{service}/instances/{id}`
pub async fn deregister(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.registry.deregister(&service, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct CheckQuery {
    pub check: Option<String>,
}

/// `PUT /v1/services/{service}/instances/{id}/heartbeat[?check=NAME]`
pub async fn heartbeat(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Query(query): Query<CheckQuery>,
) -> Result<Response, ApiError> {
    let instance = state
        .registry
        .heartbeat(&service, &id, query.check.as_deref())
        .await?;
    Ok(Json(StatusView::from(&*instance)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    output: Option<String>,
}

/// The longest check output kept.
const MAX_OUTPUT_BYTES: usize = 4096;

/// `PUT /v1/services/{service}/instances/{id}/status[?check=NAME]`
pub async fn set_status(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Query(query): Query<CheckQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    enabled: bool,
    reason: Option<String>,
}

/// `PUT /v1/services/{service}/instances/{id}/maintenance`
pub async fn set_maintenance(
    State(state): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
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
pub async fn list_services(State(state): State<AppState>) -> Response {
    let snapshot = state.registry.view();
    let services: Vec<ServiceSummary<'_>> = snapshot
        .services
        .values()
        .map(|entry| ServiceSummary::from(&**entry))
        .collect();
    Json(services).into_response()
}

#[derive(Debug, Deserialize)]
pub struct BlockingQuery {
    pub index: Option<String>,
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
pub async fn health(State(state): State<AppState>) -> Response {
    let snapshot = state.registry.snapshot();
    let instances: usize = snapshot.services.values().map(|s| s.instances.len()).sum();
    let stats = &state.check_stats;
    let body = BTreeMap::from([
        ("status", serde_json::Value::from("ok")),
        ("index", snapshot.index.into()),
        ("services", snapshot.services.len().into()),
        ("instances", instances.into()),
        (
            "checks",
            serde_json::json!({
                "probed_instances": stats.scheduled_instances.load(Ordering::Relaxed),
                "runs": stats.runs.load(Ordering::Relaxed),
                "failures": stats.failures.load(Ordering::Relaxed),
                "lateness_ms": {
                    "p50": stats.lateness_quantile_ms(0.50),
                    "p99": stats.lateness_quantile_ms(0.99),
                    "max": stats.lateness_quantile_ms(1.0),
                },
            }),
        ),
    ]);
    Json(body).into_response()
}
