//! A small typed client of the native HTTP API (DESIGN.md, "HTTP API"), used by the command
//! line (`srvdns services`, `instances`, `register`, `deregister`, `watch`) and the sidecar.
//!
//! It talks HTTP like any other client and holds no state but the registry's URL and the
//! token. Every failure is a [`ClientError`] that tells the three cases a caller handles
//! differently apart: the registry could not be reached, it answered "not found", or it
//! answered another error (with its `error` message and `field`).
//!
//! The views it reads keep statuses as strings rather than enums: a client must still list
//! instances of a newer server that knows a status this one does not.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::health::probe::error_chain;
use crate::registry::model::Status;

/// How long a request (other than a blocking read) may take before the registry counts as
/// unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: connection refused, DNS failure, timeout, connection reset.
    #[error("cannot reach the registry at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The registry answered 404: no such service or instance (or endpoint).
    #[error("{message}")]
    NotFound {
        message: String,
        /// The registry index the answer carried (`X-Srvdns-Index`), if any.
        index: Option<u64>,
    },
    /// The registry answered another error.
    #[error("the registry answered {status}: {message}{}", field.as_deref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Api {
        status: StatusCode,
        message: String,
        field: Option<String>,
    },
    /// The registry answered something this client cannot read (not srvdns at that URL?).
    #[error("unexpected answer from {url}: {cause}")]
    BadAnswer { url: String, cause: String },
    /// The registry URL itself is unusable.
    #[error("registry URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
}

impl ClientError {
    /// Is this worth retrying later — the registry is down, restarting or overloaded?
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Api { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            Self::NotFound { .. } | Self::BadAnswer { .. } | Self::BadUrl { .. } => false,
        }
    }
}

/// `{"error": "…", "field": "…"}`
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    field: Option<String>,
}

/// One row of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
    #[serde(default)]
    pub passing: usize,
    #[serde(default)]
    pub warning: usize,
    #[serde(default)]
    pub critical: usize,
    #[serde(default)]
    pub maintenance: usize,
}

/// `GET /v1/services/{service}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Service {
    pub name: String,
    /// The registry index of the service's last change.
    pub index: u64,
    pub instances: Vec<Instance>,
}

/// An instance as the registry shows it (the fields the client uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub priority: u16,
    #[serde(default)]
    pub weight: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub status: String,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub last_change: String,
    #[serde(default)]
    pub maintenance: Maintenance,
}

impl Instance {
    /// What an operator wants to read about the instance's state: the maintenance reason
    /// while in maintenance, the last check output otherwise.
    pub fn shown_output(&self) -> &str {
        match &self.maintenance {
            Maintenance {
                enabled: true,
                reason: Some(reason),
            } => reason,
            _ => &self.output,
        }
    }
}

/// An instance's maintenance mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Maintenance {
    pub enabled: bool,
    pub reason: Option<String>,
}

/// `PUT …/heartbeat` and `…/status` answer with this.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusReply {
    pub status: String,
    #[serde(default)]
    pub output: String,
}

/// The registration body (DESIGN.md, "Registration body"); `None` fields are left to the
/// registry's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Registration {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// One check of a [`Registration`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Check {
    /// The registry GETs `url`.
    Http {
        url: String,
        #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
        interval: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
        timeout: Option<Duration>,
    },
    /// The registry connects to `target` (default: the instance's address and port).
    Tcp {
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
        interval: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
        timeout: Option<Duration>,
    },
    /// Heartbeats must arrive every `ttl`.
    Ttl {
        #[serde(with = "millis_required")]
        ttl: Duration,
        /// The status before the first heartbeat (the registry's default: passing).
        #[serde(skip_serializing_if = "Option::is_none", with = "status_name")]
        status: Option<Status>,
        #[serde(skip_serializing_if = "Option::is_none", with = "millis")]
        deregister_after: Option<Duration>,
    },
}

/// Durations go over the wire as `"1500ms"`: exact, and readable in logs.
mod millis {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }
}

mod millis_required {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", value.as_millis()))
    }
}

mod status_name {
    use serde::Serializer;

    use crate::registry::model::Status;

    pub fn serialize<S: Serializer>(value: &Option<Status>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(status) => s.serialize_str(status.as_str()),
            None => s.serialize_none(),
        }
    }
}

/// The answer to a read that may block: the registry index it carried and the service, or
/// `None` when the service has no instances (404).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// The index to pass to the next blocking read.
    pub index: u64,
    pub service: Option<Service>,
}

/// A client of one registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the registry at `registry` (`http://127.0.0.1:8500`), sending `token` as
    /// a bearer token when given.
    pub fn new(registry: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: registry.to_owned(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(registry).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad(
                "expected an http:// or https:// URL such as http://127.0.0.1:8500",
            ));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(bad("expected a URL such as http://127.0.0.1:8500"));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("srvdns/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| bad(&error_chain(&e)))?;
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The registry's base URL.
    pub fn registry(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `PUT /v1/services/{service}/instances/{id}`: registers or replaces an instance.
    /// Returns the instance as registered, as JSON.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> Result<serde_json::Value, ClientError> {
        let url = self.instance_url(service, id, None);
        let request = self.request(Method::PUT, &url).json(registration);
        let response = self.send(request, &url, REQUEST_TIMEOUT).await?;
        read_json(response, &url).await
    }

    /// `DELETE /v1/services/{service}/instances/{id}`.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        let url = self.instance_url(service, id, None);
        let request = self.request(Method::DELETE, &url);
        self.send(request, &url, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// `PUT …/{id}/heartbeat`: renews the instance's `ttl` checks.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<StatusReply, ClientError> {
        let url = self.instance_url(service, id, Some("heartbeat"));
        let request = self.request(Method::PUT, &url);
        let response = self.send(request, &url, REQUEST_TIMEOUT).await?;
        read_json(response, &url).await
    }

    /// `PUT …/{id}/status`: sets the status (and output) of the instance's `ttl` checks.
    pub async fn set_status(
        &self,
        service: &str,
        id: &str,
        status: Status,
        output: &str,
    ) -> Result<StatusReply, ClientError> {
        let url = self.instance_url(service, id, Some("status"));
        let body = serde_json::json!({"status": status.as_str(), "output": output});
        let request = self.request(Method::PUT, &url).json(&body);
        let response = self.send(request, &url, REQUEST_TIMEOUT).await?;
        read_json(response, &url).await
    }

    /// `PUT …/{id}/maintenance`: takes the instance out of DNS (`Some(reason)`) or puts it
    /// back (`None`).
    pub async fn set_maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        let url = self.instance_url(service, id, Some("maintenance"));
        let body = serde_json::json!({"enabled": reason.is_some(), "reason": reason});
        let request = self.request(Method::PUT, &url).json(&body);
        self.send(request, &url, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Vec<ServiceSummary>, ClientError> {
        let url = self.url(&["v1", "services"]);
        let response = self
            .send(self.request(Method::GET, &url), &url, REQUEST_TIMEOUT)
            .await?;
        read_json(response, &url).await
    }

    /// `GET /v1/services/{service}`, typed.
    pub async fn service(&self, service: &str) -> Result<Service, ClientError> {
        let url = self.url(&["v1", "services", service]);
        let response = self
            .send(self.request(Method::GET, &url), &url, REQUEST_TIMEOUT)
            .await?;
        read_json(response, &url).await
    }

    /// `GET /v1/services/{service}` as the registry wrote it (for `--json`).
    pub async fn service_json(&self, service: &str) -> Result<serde_json::Value, ClientError> {
        let url = self.url(&["v1", "services", service]);
        let response = self
            .send(self.request(Method::GET, &url), &url, REQUEST_TIMEOUT)
            .await?;
        read_json(response, &url).await
    }

    /// `GET /v1/services/{service}?index=N&wait=W`: returns as soon as the service changes
    /// after `index`, or when `wait` ends. Without `index`, returns at once. A service with
    /// no instances is `service: None`, not an error.
    pub async fn watch_service(
        &self,
        service: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<ServiceState, ClientError> {
        let mut url = self.url(&["v1", "services", service]);
        let mut timeout = REQUEST_TIMEOUT;
        if let Some(index) = index {
            url.query_pairs_mut()
                .append_pair("index", &index.to_string())
                .append_pair("wait", &format!("{}ms", wait.as_millis()));
            timeout += wait;
        }
        match self
            .send(self.request(Method::GET, &url), &url, timeout)
            .await
        {
            Ok(response) => {
                let header_index = index_header(&response);
                let service: Service = read_json(response, &url).await?;
                Ok(ServiceState {
                    index: header_index.unwrap_or(service.index).max(service.index),
                    service: Some(service),
                })
            }
            Err(ClientError::NotFound {
                index: Some(index), ..
            }) => Ok(ServiceState {
                index,
                service: None,
            }),
            Err(e) => Err(e),
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn instance_url(&self, service: &str, id: &str, action: Option<&str>) -> Url {
        let mut segments = vec!["v1", "services", service, "instances", id];
        segments.extend(action);
        self.url(&segments)
    }

    fn request(&self, method: Method, url: &Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url.clone());
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request; any answer but a 2xx becomes the matching [`ClientError`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let unreachable = |cause: String| ClientError::Unreachable {
            url: self.base.as_str().trim_end_matches('/').to_owned(),
            cause,
        };
        let response = request.timeout(timeout).send().await.map_err(|e| {
            if e.is_timeout() {
                unreachable(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            } else {
                unreachable(root_cause(&e))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let index = index_header(&response);
        let body = response.bytes().await.unwrap_or_default();
        let (message, field) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(parsed) => (parsed.error, parsed.field),
            Err(_) => {
                let text = String::from_utf8_lossy(&body).trim().to_owned();
                if text.is_empty() {
                    (format!("{status} from {url}"), None)
                } else {
                    (text, None)
                }
            }
        };
        Err(if status == StatusCode::NOT_FOUND {
            ClientError::NotFound { message, index }
        } else {
            ClientError::Api {
                status,
                message,
                field,
            }
        })
    }
}

/// The innermost cause of an error: for a refused connection, "Connection refused (os error
/// 111)" says all, where reqwest's chain repeats the URL and its layers.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn index_header(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-srvdns-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn read_json<T: DeserializeOwned>(
    response: reqwest::Response,
    url: &Url,
) -> Result<T, ClientError> {
    let bad = |cause: String| ClientError::BadAnswer {
        url: url.to_string(),
        cause,
    };
    let body = response.bytes().await.map_err(|e| bad(error_chain(&e)))?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_serialize_as_the_contract_says() {
        let registration = Registration {
            address: Some("10.0.1.5".into()),
            port: 8080,
            weight: Some(3),
            tags: vec!["v2".into()],
            checks: vec![Check::Ttl {
                ttl: Duration::from_millis(1500),
                status: Some(Status::Critical),
                deregister_after: None,
            }],
            ..Registration::default()
        };
        assert_eq!(
            serde_json::to_value(&registration).unwrap(),
            serde_json::json!({
                "address": "10.0.1.5",
                "port": 8080,
                "weight": 3,
                "tags": ["v2"],
                "checks": [{"type": "ttl", "ttl": "1500ms", "status": "critical"}],
            })
        );
        let http = Check::Http {
            url: "http://127.0.0.1:8080/health".into(),
            interval: Some(Duration::from_secs(5)),
            timeout: None,
        };
        assert_eq!(
            serde_json::to_value(&http).unwrap(),
            serde_json::json!({"type": "http", "url": "http://127.0.0.1:8080/health",
                               "interval": "5000ms"})
        );
    }

    #[test]
    fn urls_escape_path_segments_and_keep_a_base_path() {
        let client = Client::new("http://127.0.0.1:8500/", None).unwrap();
        assert_eq!(
            client
                .instance_url("pay", "a/b c", Some("heartbeat"))
                .as_str(),
            "http://127.0.0.1:8500/v1/services/pay/instances/a%2Fb%20c/heartbeat"
        );
        let client = Client::new("http://proxy.example/srvdns", None).unwrap();
        assert_eq!(
            client.url(&["v1", "services"]).as_str(),
            "http://proxy.example/srvdns/v1/services"
        );
        for bad in ["127.0.0.1:8500", "ftp://host", "not a url", "mailto:x@y"] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_read_well_on_one_line() {
        let api = ClientError::Api {
            status: StatusCode::BAD_REQUEST,
            message: "service name must be a DNS label".into(),
            field: Some("service".into()),
        };
        assert_eq!(
            api.to_string(),
            "the registry answered 400 Bad Request: service name must be a DNS label \
             (field: service)"
        );
        assert!(!api.is_transient());
        let busy = ClientError::Api {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "busy".into(),
            field: None,
        };
        assert!(busy.is_transient());
    }
}
