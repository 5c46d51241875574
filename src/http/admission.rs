//! Admission control for the HTTP API, so that slow or numerous clients cannot exhaust the
//! server: a cap on request bodies (413), on requests being handled at once (503 with
//! `Retry-After`), and on the time one request may take (408). Every refusal is the API's
//! usual JSON error, naming the option that sets the limit.
//!
//! Why not tower's `ConcurrencyLimit` and tower-http's `Timeout`: the first queues requests
//! instead of refusing them, and counts blocking reads (`?index=…&wait=5m`, held open by
//! design) like any other; the second has one fixed timeout and answers an empty body. Here a
//! blocking read gets its `wait` on top of the timeout and takes no concurrency slot: it is a
//! parked future, and the server's connection cap ([`super::server`]) bounds how many there
//! are.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::AppState;
use super::error::ApiError;
use super::routes::{BlockingQuery, MAX_WAIT};

/// The HTTP server's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The longest one request may take, reading its body included (blocking reads: this
    /// plus their `wait`). Also the time a client has to send a request's headers.
    pub request_timeout: Duration,
    /// Requests handled at once (blocking reads aside); more are refused with 503.
    pub max_concurrent_requests: usize,
    /// Open connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: super::MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            max_connections: 4096,
        }
    }
}

/// The limits and the slots of requests in progress.
pub struct Admission {
    pub limits: HttpLimits,
    requests: Arc<Semaphore>,
}

impl Admission {
    pub fn new(limits: HttpLimits) -> Self {
        Self {
            limits,
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
        }
    }
}

/// How long a blocking read may wait, if the request is one: `?index=` with `wait` (default
/// and cap [`MAX_WAIT`]). A malformed one is not blocking; its handler answers 400.
fn blocking_wait(request: &Request) -> Option<Duration> {
    let query = axum::extract::Query::<BlockingQuery>::try_from_uri(request.uri()).ok()?;
    query
        .0
        .parse()
        .ok()
        .flatten()
        .map(|(_, wait)| wait.min(MAX_WAIT))
}

/// The admission middleware: body size by `Content-Length`, concurrency, time.
pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let admission = &state.admission;
    let limits = admission.limits;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the limit of {} bytes (--max-body-bytes)",
                limits.max_body_bytes
            ),
        )
        .into_response();
    }
    let wait = blocking_wait(&request);
    let _permit = match wait {
        Some(_) => None,
        None => match Arc::clone(&admission.requests).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let mut response = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the server is handling {} requests, its limit \
                         (--max-concurrent-requests): retry shortly",
                        limits.max_concurrent_requests
                    ),
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
        },
    };
    let deadline = limits.request_timeout + wait.unwrap_or_default();
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request took longer than {} (--request-timeout)",
                    humantime::format_duration(limits.request_timeout)
                ),
            )
            .into_response();
            // The body may be half read: this connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}
