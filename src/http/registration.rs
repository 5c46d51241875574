//! The native registration body (`PUT /v1/services/{service}/instances/{id}`) and its
//! validation into a [`Registration`]. Unknown keys are refused, so that a typo
//! (`"chekcs"`) is an error rather than an instance silently registered without checks.
//!
//! Every error names the field by its JSON path (`checks[1].interval`).
//!
//! The bodies derive their OpenAPI schema (utoipa) from these same types; the ranges in the
//! schema attributes are the ones [`RegistrationBody::validate`] enforces.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::registry::model::{
    Address, CheckKind, CheckSpec, InstanceId, Protocol, Registration, ServiceName, Status,
    ValidationError, is_dns_label,
};

/// Limits on what one registration may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_checks: usize,
    pub max_tags: usize,
    pub max_tag_bytes: usize,
    pub max_meta: usize,
    pub max_meta_key_bytes: usize,
    pub max_meta_value_bytes: usize,
    pub max_ports: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_checks: 16,
            max_tags: 64,
            max_tag_bytes: 255,
            max_meta: 64,
            max_meta_key_bytes: 128,
            max_meta_value_bytes: 512,
            max_ports: 32,
        }
    }
}

/// A duration as text (`"10s"`, `"1m30s"`, `"250ms"`) or a number of seconds.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationValue {
    Text(String),
    Seconds(f64),
}

impl DurationValue {
    pub fn parse(&self, field: &str) -> Result<Duration, ValidationError> {
        let invalid = || {
            ValidationError::new(
                field,
                format!("{field} must be a duration such as \"10s\", \"500ms\" or \"1m\""),
            )
        };
        let duration = match self {
            Self::Text(text) => humantime::parse_duration(text.trim()).map_err(|_| invalid())?,
            Self::Seconds(secs) if secs.is_finite() && *secs >= 0.0 && *secs < 1e9 => {
                Duration::from_secs_f64(*secs)
            }
            Self::Seconds(_) => return Err(invalid()),
        };
        if duration.is_zero() {
            return Err(ValidationError::new(
                field,
                format!("{field} must be more than 0"),
            ));
        }
        Ok(duration)
    }
}

/// The registration body as sent.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationBody {
    /// IPv4 or IPv6 literal, or a hostname; default: the address the request came from.
    pub address: Option<String>,
    /// Required.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<String>,
    #[schema(minimum = 0, maximum = 65535)]
    pub priority: Option<i64>,
    #[schema(minimum = 0, maximum = 65535)]
    pub weight: Option<i64>,
    pub weights: Option<WeightsBody>,
    /// Named ports (DNS labels) for `_<port>._<proto>.<service>.D` SRV lookups.
    pub ports: Option<BTreeMap<String, i64>>,
    pub tags: Option<Vec<String>>,
    pub meta: Option<BTreeMap<String, String>>,
    /// At most 16 (configurable).
    pub checks: Option<Vec<CheckBody>>,
    /// Shorthand for `checks: [check]`.
    pub check: Option<CheckBody>,
}

/// SRV weights by status.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    /// The SRV weight of a `warning` instance (default 1).
    #[schema(minimum = 0, maximum = 65535)]
    pub warning: Option<i64>,
}

/// One check as sent.
#[derive(Debug, Default, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    pub name: Option<String>,
    /// `http`, `tcp` or `ttl`; default from which of `url`, `target`, `ttl` is given.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub url: Option<String>,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub tls_skip_verify: Option<bool>,
    pub target: Option<String>,
    pub ttl: Option<DurationValue>,
    pub interval: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
    pub failures_before_critical: Option<i64>,
    pub successes_before_passing: Option<i64>,
    pub deregister_after: Option<DurationValue>,
    /// The initial status (default: `critical` for active checks, `passing` for `ttl`).
    pub status: Option<String>,
}

fn in_range(value: i64, min: i64, max: i64, field: &str) -> Result<u16, ValidationError> {
    if (min..=max).contains(&value) {
        // max ≤ 65535 at every call site.
        Ok(value as u16)
    } else {
        Err(ValidationError::new(
            field,
            format!("{field} must be between {min} and {max}, not {value}"),
        ))
    }
}

fn count(value: i64, field: &str) -> Result<u32, ValidationError> {
    if (1..=1000).contains(&value) {
        Ok(value as u32)
    } else {
        Err(ValidationError::new(
            field,
            format!("{field} must be between 1 and 1000, not {value}"),
        ))
    }
}

impl RegistrationBody {
    /// Validates the body for `service`/`id`; `source` is the requester's address, used when
    /// `address` is omitted.
    pub fn validate(
        self,
        service: ServiceName,
        id: InstanceId,
        source: IpAddr,
        limits: &Limits,
    ) -> Result<Registration, ValidationError> {
        let address = match &self.address {
            Some(raw) => Address::parse(raw, "address")?,
            None => Address::Ip(source),
        };
        let port = match self.port {
            Some(port) => in_range(port, 1, 65535, "port")?,
            None => return Err(ValidationError::new("port", "port is required (1-65535)")),
        };
        let protocol = match self
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                return Err(ValidationError::new(
                    "protocol",
                    format!("protocol {other:?} is not tcp or udp"),
                ));
            }
        };
        let priority = in_range(self.priority.unwrap_or(0), 0, 65535, "priority")?;
        let weight = in_range(self.weight.unwrap_or(1), 0, 65535, "weight")?;
        let warning_weight = match self.weights.and_then(|w| w.warning) {
            Some(w) => in_range(w, 0, 65535, "weights.warning")?,
            None => 1,
        };

        let mut ports = BTreeMap::new();
        let raw_ports = self.ports.unwrap_or_default();
        if raw_ports.len() > limits.max_ports {
            return Err(ValidationError::new(
                "ports",
                format!("at most {} named ports", limits.max_ports),
            ));
        }
        for (name, port) in raw_ports {
            let field = format!("ports.{name}");
            let folded = name.to_ascii_lowercase();
            if !is_dns_label(&folded) {
                return Err(ValidationError::new(
                    field,
                    format!("port name {name:?} is not a DNS label (a-z, 0-9, '-')"),
                ));
            }
            ports.insert(folded, in_range(port, 1, 65535, &field)?);
        }

        let tags = self.tags.unwrap_or_default();
        if tags.len() > limits.max_tags {
            return Err(ValidationError::new(
                "tags",
                format!("at most {} tags", limits.max_tags),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > limits.max_tag_bytes {
                return Err(ValidationError::new(
                    format!("tags[{i}]"),
                    format!("tags must be 1-{} bytes", limits.max_tag_bytes),
                ));
            }
        }

        let meta = self.meta.unwrap_or_default();
        if meta.len() > limits.max_meta {
            return Err(ValidationError::new(
                "meta",
                format!("at most {} meta entries", limits.max_meta),
            ));
        }
        for (key, value) in &meta {
            let key_ok = !key.is_empty()
                && key.len() <= limits.max_meta_key_bytes
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !key_ok {
                return Err(ValidationError::new(
                    format!("meta.{key}"),
                    format!(
                        "meta keys must be 1-{} characters of A-Z, a-z, 0-9, '_' and '-'",
                        limits.max_meta_key_bytes
                    ),
                ));
            }
            if value.len() > limits.max_meta_value_bytes {
                return Err(ValidationError::new(
                    format!("meta.{key}"),
                    format!(
                        "meta values must be at most {} bytes",
                        limits.max_meta_value_bytes
                    ),
                ));
            }
        }

        let (bodies, prefix) = match (self.checks, self.check) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "check",
                    "give either \"check\" or \"checks\", not both",
                ));
            }
            (Some(checks), None) => (checks, "checks"),
            (None, Some(check)) => (vec![check], "check"),
            (None, None) => (Vec::new(), "checks"),
        };
        if bodies.len() > limits.max_checks {
            return Err(ValidationError::new(
                prefix,
                format!("at most {} checks per instance", limits.max_checks),
            ));
        }
        let mut checks: Vec<CheckSpec> = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let field = if prefix == "check" {
                String::from("check")
            } else {
                format!("checks[{i}]")
            };
            let check = body.validate(&field)?;
            checks.push(check);
        }
        name_checks(&mut checks, prefix)?;

        Ok(Registration {
            service,
            id,
            address,
            port,
            protocol,
            priority,
            weight,
            warning_weight,
            ports,
            tags,
            meta,
            checks,
        })
    }
}

/// Gives unnamed checks their default names (the type, then `-2`, `-3`…) and refuses
/// duplicate names.
fn name_checks(checks: &mut [CheckSpec], prefix: &str) -> Result<(), ValidationError> {
    let mut used: Vec<String> = Vec::new();
    for (i, check) in checks.iter_mut().enumerate() {
        if check.name.is_empty() {
            let base = check.kind.type_name();
            let mut n = 1;
            let mut name = base.to_owned();
            while used.contains(&name) {
                n += 1;
                name = format!("{base}-{n}");
            }
            check.name = name;
        } else if used.contains(&check.name) {
            let field = if prefix == "check" {
                String::from("check.name")
            } else {
                format!("checks[{i}].name")
            };
            return Err(ValidationError::new(
                field,
                format!("check name {:?} is used twice", check.name),
            ));
        }
        used.push(check.name.clone());
    }
    Ok(())
}

impl CheckBody {
    /// Validates one check; `field` is its JSON path (`checks[0]`).
    pub fn validate(self, field: &str) -> Result<CheckSpec, ValidationError> {
        let f = |name: &str| format!("{field}.{name}");
        let kind_name = match (&self.kind, &self.url, &self.ttl, &self.target) {
            (Some(kind), _, _, _) => kind.to_ascii_lowercase(),
            (None, Some(_), None, None) => "http".into(),
            (None, None, Some(_), None) => "ttl".into(),
            (None, None, None, Some(_)) => "tcp".into(),
            _ => {
                return Err(ValidationError::new(
                    f("type"),
                    "check type is required: http, tcp or ttl",
                ));
            }
        };
        let kind = match kind_name.as_str() {
            "http" => {
                let url = self
                    .url
                    .clone()
                    .ok_or_else(|| ValidationError::new(f("url"), "http checks need a url"))?;
                let lower = url.to_ascii_lowercase();
                let rest = lower
                    .strip_prefix("http://")
                    .or_else(|| lower.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) || url.contains(' ') {
                    return Err(ValidationError::new(
                        f("url"),
                        format!("{url:?} is not an http:// or https:// URL"),
                    ));
                }
                let method = self
                    .method
                    .clone()
                    .unwrap_or_else(|| "GET".into())
                    .to_ascii_uppercase();
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ValidationError::new(
                        f("method"),
                        format!("{method:?} is not an HTTP method"),
                    ));
                }
                CheckKind::Http {
                    url,
                    method,
                    headers: self.headers.clone().unwrap_or_default(),
                    tls_skip_verify: self.tls_skip_verify.unwrap_or(false),
                }
            }
            "tcp" => {
                if let Some(target) = &self.target {
                    let valid = target.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !valid {
                        return Err(ValidationError::new(
                            f("target"),
                            format!("{target:?} is not host:port"),
                        ));
                    }
                }
                CheckKind::Tcp {
                    target: self.target.clone(),
                }
            }
            "ttl" => {
                let ttl = self
                    .ttl
                    .as_ref()
                    .ok_or_else(|| ValidationError::new(f("ttl"), "ttl checks need a ttl"))?
                    .parse(&f("ttl"))?;
                CheckKind::Ttl { ttl }
            }
            other => {
                return Err(ValidationError::new(
                    f("type"),
                    format!("check type {other:?} is not http, tcp or ttl"),
                ));
            }
        };
        let duration = |value: &Option<DurationValue>, name: &str, default: Duration| {
            value.as_ref().map_or(Ok(default), |v| v.parse(&f(name)))
        };
        let interval = duration(&self.interval, "interval", CheckSpec::DEFAULT_INTERVAL)?;
        let timeout = duration(&self.timeout, "timeout", CheckSpec::DEFAULT_TIMEOUT)?;
        let deregister_after = match &self.deregister_after {
            Some(value) => Some(value.parse(&f("deregister_after"))?),
            None if kind.is_ttl() => Some(CheckSpec::DEFAULT_TTL_DEREGISTER_AFTER),
            None => None,
        };
        let failures_before_critical = match self.failures_before_critical {
            Some(n) => count(n, &f("failures_before_critical"))?,
            None => CheckSpec::DEFAULT_FAILURES_BEFORE_CRITICAL,
        };
        let successes_before_passing = match self.successes_before_passing {
            Some(n) => count(n, &f("successes_before_passing"))?,
            None => CheckSpec::DEFAULT_SUCCESSES_BEFORE_PASSING,
        };
        let initial_status = match &self.status {
            Some(raw) => Status::parse(raw, &f("status"))?,
            None if kind.is_ttl() => Status::Passing,
            None => Status::Critical,
        };
        let name = self.name.unwrap_or_default();
        if name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                f("name"),
                "check names are at most 128 characters, without control characters",
            ));
        }
        Ok(CheckSpec {
            name,
            kind,
            interval,
            timeout,
            failures_before_critical,
            successes_before_passing,
            deregister_after,
            initial_status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(json: &str) -> Result<Registration, ValidationError> {
        let body: RegistrationBody = serde_json::from_str(json).unwrap();
        body.validate(
            ServiceName::try_from("web").unwrap(),
            InstanceId::try_from("web-1").unwrap(),
            "192.0.2.1".parse().unwrap(),
            &Limits::default(),
        )
    }

    #[test]
    fn defaults_fill_what_is_omitted() {
        let reg = validate(r#"{"port": 80}"#).unwrap();
        assert_eq!(reg.address, Address::Ip("192.0.2.1".parse().unwrap()));
        assert_eq!((reg.priority, reg.weight, reg.warning_weight), (0, 1, 1));
        assert_eq!(reg.protocol, Protocol::Tcp);
        assert!(reg.checks.is_empty());
    }

    #[test]
    fn checks_get_default_names_and_kinds() {
        let reg = validate(
            r#"{"port": 80, "checks": [
                {"type": "http", "url": "http://127.0.0.1:80/health"},
                {"url": "http://127.0.0.1:80/ready", "interval": 1.5},
                {"ttl": "30s"}
            ]}"#,
        )
        .unwrap();
        let names: Vec<&str> = reg.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["http", "http-2", "ttl"]);
        assert_eq!(reg.checks[1].interval, Duration::from_millis(1500));
        assert_eq!(reg.checks[0].initial_status, Status::Critical);
        assert_eq!(reg.checks[2].initial_status, Status::Passing);
        assert_eq!(
            reg.checks[2].deregister_after,
            Some(CheckSpec::DEFAULT_TTL_DEREGISTER_AFTER)
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (json, field) in [
            (r#"{}"#, "port"),
            (r#"{"port": 0}"#, "port"),
            (r#"{"port": 70000}"#, "port"),
            (r#"{"port": 1, "address": "10.0.1.999"}"#, "address"),
            (r#"{"port": 1, "protocol": "sctp"}"#, "protocol"),
            (r#"{"port": 1, "weight": -1}"#, "weight"),
            (
                r#"{"port": 1, "weights": {"warning": 70000}}"#,
                "weights.warning",
            ),
            (r#"{"port": 1, "ports": {"My_Port": 1}}"#, "ports.My_Port"),
            (r#"{"port": 1, "tags": ["ok", ""]}"#, "tags[1]"),
            (r#"{"port": 1, "meta": {"a b": "c"}}"#, "meta.a b"),
            (
                r#"{"port": 1, "checks": [{"ttl": "1s"}, {"type": "http"}]}"#,
                "checks[1].url",
            ),
            (
                r#"{"port": 1, "checks": [{"type": "ttl", "ttl": "soon"}]}"#,
                "checks[0].ttl",
            ),
            (r#"{"port": 1, "check": {"type": "ping"}}"#, "check.type"),
            (
                r#"{"port": 1, "check": {"ttl": "1s", "interval": "0s"}}"#,
                "check.interval",
            ),
            (
                r#"{"port": 1, "checks": [{"ttl": "1s", "name": "a"}, {"ttl": "2s", "name": "a"}]}"#,
                "checks[1].name",
            ),
            (
                r#"{"port": 1, "check": {"ttl": "1s"}, "checks": []}"#,
                "check",
            ),
            (
                r#"{"port": 1, "check": {"type": "tcp", "target": "nohost"}}"#,
                "check.target",
            ),
        ] {
            let err = validate(json).unwrap_err();
            assert_eq!(err.field, field, "{json}: {}", err.message);
        }
    }
}
