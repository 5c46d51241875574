//! The registry's vocabulary: validated names, registrations, checks and statuses.
//!
//! Every type here is built once at the boundary (HTTP, config) through `TryFrom` or
//! [`Registration::validate`]; deeper code never re-validates. A value of one of these types is
//! always valid: a [`ServiceName`] is always a DNS label, a [`CheckSpec`] always has the fields
//! its kind needs.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A field that failed validation, and why. Becomes a 400 with `{"error", "field"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The JSON path of the offending field (`checks[0].interval`), empty when none applies.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Is `s` a lowercase DNS label: `[a-z0-9-]`, 1–63 bytes, no leading or trailing `-`?
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A service name: a DNS label, case-folded. `addr` is reserved for address names.
///
/// Shared (`Arc<str>`): every snapshot holds every service's name, and publishing a snapshot
/// copies the map of services, so a clone must not allocate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(std::sync::Arc<str>);

impl ServiceName {
    /// The label reserved for `<addr>.addr.<domain>` target names.
    pub const RESERVED: &'static str = "addr";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ServiceName {
    type Error = ValidationError;

    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        let folded = raw.to_ascii_lowercase();
        if !is_dns_label(&folded) {
            return Err(ValidationError::new(
                "service",
                format!(
                    "service name {raw:?} is not a DNS label: use 1-63 characters of a-z, 0-9 \
                     and '-', not starting or ending with '-'"
                ),
            ));
        }
        if folded == Self::RESERVED {
            return Err(ValidationError::new(
                "service",
                "service name \"addr\" is reserved for address names (<ip>.addr.<domain>)",
            ));
        }
        Ok(Self(folded.into()))
    }
}

impl TryFrom<String> for ServiceName {
    type Error = ValidationError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::try_from(raw.as_str())
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> Self {
        name.0.to_string()
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance ID: 1–128 characters of `[A-Za-z0-9._:-]`. Case is kept; IDs never appear in DNS.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for InstanceId {
    type Error = ValidationError;

    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !ok {
            return Err(ValidationError::new(
                "id",
                format!(
                    "instance id {raw:?} must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'"
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }
}

impl TryFrom<String> for InstanceId {
    type Error = ValidationError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::try_from(raw.as_str())
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> Self {
        id.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an instance is reached: an IP literal, or a hostname for external services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Address {
    Ip(IpAddr),
    /// An RFC 1123 hostname, lowercased and without a trailing dot. Served as an SRV target
    /// (no glue) and left out of A/AAAA answers.
    Host(String),
}

impl Address {
    /// Parses an address field; `field` names it in the error.
    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationError> {
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let host = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
        let labels_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        // A name whose last label is all digits is a mistyped IPv4 literal (10.0.1.999), not
        // a hostname (RFC 1123 §2.1 and RFC 3696 §2: top-level labels are never numeric).
        let numeric_tld = host
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
        if !labels_ok || numeric_tld {
            return Err(ValidationError::new(
                field,
                format!("address {raw:?} is neither an IPv4/IPv6 literal nor a valid hostname"),
            ));
        }
        Ok(Self::Host(host))
    }
}

impl TryFrom<String> for Address {
    type Error = ValidationError;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw, "address")
    }
}

impl From<Address> for String {
    fn from(address: Address) -> Self {
        address.to_string()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Host(host) => f.write_str(host),
        }
    }
}

/// The transport an instance serves, for `_<service>._tcp` / `_udp` SRV names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A check's or an instance's health. Ordered from best to worst, so `max` is "the worst of".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    pub fn parse(raw: &str, field: &str) -> Result<Self, ValidationError> {
        match raw.to_ascii_lowercase().as_str() {
            "passing" => Ok(Self::Passing),
            "warning" => Ok(Self::Warning),
            "critical" => Ok(Self::Critical),
            _ => Err(ValidationError::new(
                field,
                format!("status {raw:?} is not one of passing, warning, critical"),
            )),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an instance looks like from outside: its checks' verdict, or maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceStatus {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Maintenance => "maintenance",
        }
    }
}

impl From<Status> for InstanceStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Passing => Self::Passing,
            Status::Warning => Self::Warning,
            Status::Critical => Self::Critical,
        }
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a check decides health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    /// GET (or `method`) the URL: 2xx passing, 429 warning, anything else a failure.
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        tls_skip_verify: bool,
    },
    /// Connect to `target` (`host:port`); `None` means the instance's address and port.
    Tcp { target: Option<String> },
    /// Passing while heartbeats arrive at least every `ttl`.
    Ttl { ttl: Duration },
}

impl CheckKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Http { .. } => "http",
            Self::Tcp { .. } => "tcp",
            Self::Ttl { .. } => "ttl",
        }
    }

    pub fn is_ttl(&self) -> bool {
        matches!(self, Self::Ttl { .. })
    }
}

/// One validated check of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    /// Unique within the instance.
    pub name: String,
    pub kind: CheckKind,
    /// Time between active probes (unused by `ttl` checks).
    pub interval: Duration,
    /// How long one active probe may take.
    pub timeout: Duration,
    /// Consecutive failures that turn a passing check critical.
    pub failures_before_critical: u32,
    /// Consecutive successes that turn a critical check passing.
    pub successes_before_passing: u32,
    /// An instance critical this long is removed; `None`: never.
    pub deregister_after: Option<Duration>,
    /// The status the check starts in.
    pub initial_status: Status,
}

impl CheckSpec {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_FAILURES_BEFORE_CRITICAL: u32 = 3;
    pub const DEFAULT_SUCCESSES_BEFORE_PASSING: u32 = 2;
    /// Default `deregister_after` for `ttl` checks: a client that stopped heartbeating for
    /// this long is gone, not slow.
    pub const DEFAULT_TTL_DEREGISTER_AFTER: Duration = Duration::from_secs(600);
}

/// A validated registration: everything a client said about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub service: ServiceName,
    pub id: InstanceId,
    pub address: Address,
    pub port: u16,
    pub protocol: Protocol,
    pub priority: u16,
    pub weight: u16,
    /// The SRV weight used while the instance is `warning`.
    pub warning_weight: u16,
    /// Named extra ports, for `_<port>._<proto>.<service>` SRV names.
    pub ports: BTreeMap<String, u16>,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub checks: Vec<CheckSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_folded_dns_labels() {
        assert_eq!(
            ServiceName::try_from("Payment").unwrap().as_str(),
            "payment"
        );
        assert!(ServiceName::try_from("a-b-1").is_ok());
        for bad in ["", "-a", "a-", "a_b", "a.b", "addr", &"x".repeat(64)] {
            let err = ServiceName::try_from(bad).unwrap_err();
            assert_eq!(err.field, "service", "{bad:?}");
        }
    }

    #[test]
    fn instance_ids_allow_registrator_style() {
        assert!(InstanceId::try_from("host:container:8080").is_ok());
        assert!(InstanceId::try_from("Payment_1.a-b").is_ok());
        assert!(InstanceId::try_from("").is_err());
        assert!(InstanceId::try_from("a/b").is_err());
        assert!(InstanceId::try_from(&*"x".repeat(129)).is_err());
    }

    #[test]
    fn addresses_are_ips_or_hostnames() {
        assert_eq!(
            Address::parse("10.0.1.5", "address").unwrap(),
            Address::Ip("10.0.1.5".parse().unwrap())
        );
        assert_eq!(
            Address::parse("2001:db8::1", "address").unwrap(),
            Address::Ip("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            Address::parse("DB.Example.com.", "address").unwrap(),
            Address::Host("db.example.com".into())
        );
        assert_eq!(
            Address::parse("localhost", "address").unwrap(),
            Address::Host("localhost".into())
        );
        for bad in ["10.0.1.999", "", "a..b", "-a.com", "a b", "1.2.3"] {
            assert!(Address::parse(bad, "address").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_order_from_best_to_worst() {
        assert_eq!(
            [Status::Passing, Status::Critical, Status::Warning]
                .into_iter()
                .max(),
            Some(Status::Critical)
        );
        assert_eq!(Status::parse("WARNING", "status").unwrap(), Status::Warning);
        assert_eq!(Status::parse("ok", "status").unwrap_err().field, "status");
    }
}
