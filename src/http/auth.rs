//! Who may use the HTTP API: the `--token` (may do anything), the tokens of a `--token-file`
//! (each may write only the services it names, by name or prefix), and whether reads need a
//! token too (`--token-reads`).
//!
//! One middleware ([`authenticate`]) runs before every handler of both APIs: it finds the
//! token (`Authorization: Bearer`, `X-Consul-Token` or `?token=`, the ways Consul clients send
//! it), compares it with every configured token in constant time, refuses what needs a token
//! and has none (401), and hands the handler an [`Access`]. A write handler learns which
//! service it writes only from its path or its body (a Consul registration names its service
//! in the body, a Consul check update only by check ID), so the service check is
//! [`Access::may_write`], which every write handler calls once it knows the service, before it
//! changes anything. A token that may not write a service gets a 403 that says so.
//!
//! Token values never appear in logs or `Debug` output.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// The token file (`--token-file`): tokens and the services each may write.
///
/// ```toml
/// [[token]]
/// name = "payments team"            # for people and logs; optional
/// token = "a long random string"
/// services = ["payments", "payments-*"]   # names, or prefixes ending in "*"; "*" is all
/// ```
#[derive(Clone, Default)]
pub struct TokenFile {
    tokens: Vec<Arc<ScopedToken>>,
}

/// One token of the token file.
pub struct ScopedToken {
    name: String,
    token: String,
    services: Vec<ServicePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ServicePattern {
    Exact(String),
    /// Every service whose name starts with this (`""`: every service).
    Prefix(String),
}

impl ServicePattern {
    fn matches(&self, service: &str) -> bool {
        match self {
            Self::Exact(name) => name.eq_ignore_ascii_case(service),
            Self::Prefix(prefix) => service
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix)),
        }
    }
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.tokens.iter().map(|t| (&t.name, &t.services)))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    #[serde(default)]
    token: Vec<EntryBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryBody {
    name: Option<String>,
    token: String,
    services: Vec<String>,
}

impl TokenFile {
    /// Reads and checks a token file; the error says what is wrong and where.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(&text)
    }

    /// Parses and checks the text of a token file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let body: FileBody = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut tokens: Vec<Arc<ScopedToken>> = Vec::with_capacity(body.token.len());
        for (i, entry) in body.token.into_iter().enumerate() {
            let name = entry.name.unwrap_or_else(|| format!("token #{}", i + 1));
            if entry.token.trim().is_empty() || entry.token.chars().any(char::is_control) {
                return Err(format!(
                    "{name}: the token is empty or has control characters"
                ));
            }
            if tokens
                .iter()
                .any(|t| bool::from(t.token.as_bytes().ct_eq(entry.token.as_bytes())))
            {
                return Err(format!("{name}: the same token appears twice"));
            }
            if entry.services.is_empty() {
                return Err(format!("{name}: services is empty (use [\"*\"] for all)"));
            }
            let services = entry
                .services
                .iter()
                .map(|raw| parse_pattern(raw).map_err(|e| format!("{name}: {e}")))
                .collect::<Result<_, _>>()?;
            tokens.push(Arc::new(ScopedToken {
                name,
                token: entry.token,
                services,
            }));
        }
        Ok(Self { tokens })
    }

    /// How many tokens the file holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn parse_pattern(raw: &str) -> Result<ServicePattern, String> {
    let (text, prefix) = match raw.strip_suffix('*') {
        Some(head) => (head, true),
        None => (raw, false),
    };
    let valid = text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid || (!prefix && text.is_empty()) {
        return Err(format!(
            "{raw:?} is not a service name or a prefix ending in \"*\" (a-z, 0-9, '-')"
        ));
    }
    let text = text.to_ascii_lowercase();
    Ok(if prefix {
        ServicePattern::Prefix(text)
    } else {
        ServicePattern::Exact(text)
    })
}

/// Every token the server accepts, and whether reads need one.
#[derive(Default)]
pub struct Tokens {
    /// `--token`: may do anything.
    pub admin: Option<String>,
    /// `--token-file`.
    pub file: TokenFile,
    /// `--token-reads`.
    pub reads: bool,
}

impl Tokens {
    /// Whether any token is configured (else the API is open).
    fn any(&self) -> bool {
        self.admin.is_some() || !self.file.is_empty()
    }

    /// What a presented token may do. Every configured token is compared, in constant time,
    /// so the time taken does not tell which one (nearly) matched.
    fn access_for(&self, given: &str) -> Access {
        let given = given.as_bytes();
        let mut access = Access::Anonymous;
        if self
            .admin
            .as_ref()
            .is_some_and(|admin| bool::from(given.ct_eq(admin.as_bytes())))
        {
            access = Access::Full;
        }
        for scoped in &self.file.tokens {
            if bool::from(given.ct_eq(scoped.token.as_bytes())) && access == Access::Anonymous {
                access = Access::Services(Arc::clone(scoped));
            }
        }
        access
    }
}

/// What the request's token allows, for handlers to check writes against.
#[derive(Clone)]
pub enum Access {
    /// The admin token, or a server without tokens.
    Full,
    /// A token-file token: it may write the services it names.
    Services(Arc<ScopedToken>),
    /// No valid token: reads only (when reads are open).
    Anonymous,
}

impl PartialEq for Access {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Full, Self::Full) | (Self::Anonymous, Self::Anonymous) => true,
            (Self::Services(a), Self::Services(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Access {
    /// Refuses (403) a write to `service` that this token may not make.
    pub fn may_write(&self, service: &str) -> Result<(), ApiError> {
        match self {
            Self::Full => Ok(()),
            Self::Services(scoped) if scoped.services.iter().any(|p| p.matches(service)) => Ok(()),
            Self::Services(scoped) => {
                tracing::debug!(token = %scoped.name, service, "write refused: not this token's service");
                Err(ApiError::forbidden(service))
            }
            Self::Anonymous => Err(ApiError::unauthorized()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no access decision for this request",
            )
        })
    }
}

/// The token a request carries, in any of the ways clients send one.
fn presented_token(request: &Request) -> Option<String> {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let consul = headers
        .get(&super::consul::TOKEN_HEADER)
        .and_then(|value| value.to_str().ok());
    bearer.or(consul).map(str::to_owned).or_else(|| {
        axum::extract::Query::<TokenQuery>::try_from_uri(request.uri())
            .ok()
            .and_then(|query| query.0.token)
    })
}

/// The `?token=` of a request, as Consul clients may send it.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Decides what the request may do: refuses writes without a valid token (401), and reads
/// too with `--token-reads` (except `GET /v1/health`, srvdns's own liveness, which probes
/// call without credentials); passes the [`Access`] on to the handler.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let tokens = &state.tokens;
    let access = if !tokens.any() {
        Access::Full
    } else {
        match presented_token(&request) {
            Some(given) => tokens.access_for(&given),
            None => Access::Anonymous,
        }
    };
    if access == Access::Anonymous && tokens.any() {
        let is_read = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        );
        if !is_read {
            return ApiError::unauthorized().into_response();
        }
        if tokens.reads && request.uri().path() != "/v1/health" {
            return ApiError::unauthorized_read().into_response();
        }
    }
    request.extensions_mut().insert(access);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[token]]
        name = "payments"
        token = "pay-secret"
        services = ["payments", "Pay-*"]

        [[token]]
        token = "all-secret"
        services = ["*"]
    "#;

    #[test]
    fn tokens_write_their_services_only() {
        let tokens = Tokens {
            admin: Some("admin-secret".into()),
            file: TokenFile::parse(FILE).unwrap(),
            reads: false,
        };
        let pay = tokens.access_for("pay-secret");
        assert!(pay.may_write("payments").is_ok());
        assert!(pay.may_write("pay-eu").is_ok());
        assert!(pay.may_write("PAY-us").is_ok());
        let refused = pay.may_write("web").unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(refused.message.contains("\"web\""), "{}", refused.message);
        assert!(pay.may_write("payment").is_err());
        assert!(tokens.access_for("all-secret").may_write("web").is_ok());
        assert!(tokens.access_for("admin-secret") == Access::Full);
        assert!(tokens.access_for("pay-secre") == Access::Anonymous);
        assert!(tokens.access_for("") == Access::Anonymous);
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        for (text, expected) in [
            ("[[token]]\ntoken = \"\"\nservices = [\"a\"]\n", "empty"),
            (
                "[[token]]\ntoken = \"t\"\nservices = []\n",
                "services is empty",
            ),
            (
                "[[token]]\ntoken = \"t\"\nservices = [\"a b\"]\n",
                "not a service name",
            ),
            (
                "[[token]]\ntoken = \"t\"\nservices = [\"a\"]\n[[token]]\ntoken = \"t\"\nservices = [\"b\"]\n",
                "twice",
            ),
            (
                "[[token]]\ntoken = \"t\"\nservice = [\"a\"]\n",
                "unknown field",
            ),
        ] {
            let err = TokenFile::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        // Debug output shows names and services, never tokens.
        let debug = format!("{:?}", TokenFile::parse(FILE).unwrap());
        assert!(
            !debug.contains("secret") && debug.contains("payments"),
            "{debug}"
        );
    }
}
