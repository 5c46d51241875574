//! The one error type of the HTTP API, and the one place it becomes a response:
//! `{"error": "<what is wrong>", "field": "<which field, when one>"}` with a fitting status.
//!
//! Extractor rejections (bad JSON, oversized bodies, bad query strings) are mapped here too,
//! so that no endpoint can answer an error in another shape.

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::registry::RegistryError;
use crate::registry::model::ValidationError;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

/// The body of every error answer (`Error` in the OpenAPI document).
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct Body<'a> {
    /// What is wrong, for people.
    error: &'a str,
    /// Which field of the request, when one: a JSON path such as `checks[1].interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "this server requires a token for writes: send \"Authorization: Bearer <token>\" \
             (or, from Consul clients, \"X-Consul-Token: <token>\" or ?token=<token>)",
        )
    }

    /// A read without a token on a server started with `--token-reads`.
    pub fn unauthorized_read() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "this server requires a token for reads too (--token-reads): send \
             \"Authorization: Bearer <token>\" (or \"X-Consul-Token: <token>\" or ?token=<token>)",
        )
    }

    /// A valid token that may not write this service.
    pub fn forbidden(service: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "this token may not write service {service:?}: the token file gives it other \
                 services"
            ),
            field: Some(String::from("service")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self.message,
            field: self.field.as_deref().filter(|f| !f.is_empty()),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::bad_request(e.field, e.message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(invalid) => invalid.into(),
            RegistryError::InstanceNotFound { .. } | RegistryError::ServiceNotFound(_) => {
                Self::not_found(e.to_string())
            }
            RegistryError::Store(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            RegistryError::StaticClash { .. } => Self {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
                field: Some("service".into()),
            },
            // The registry is full for this service, or in all: a conflict with its state
            // that deregistering resolves (the message names the option that sets it).
            RegistryError::LimitReached { .. } => Self::new(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            String::from("request body is larger than the limit set by --max-body-bytes")
        } else {
            format!("cannot read the request body: {}", rejection.body_text())
        };
        Self::new(status, message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("bad query string: {}", rejection.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("bad path: {}", rejection.body_text()),
        )
    }
}
