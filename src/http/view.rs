//! JSON views of registry state for the native API. The field names here are the contract in
//! DESIGN.md's registration body, plus state (`status`, `output`, `last_change`).
//!
//! Each view also derives its OpenAPI schema (utoipa), so `/v1/openapi.json` describes exactly
//! what is serialized.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use utoipa::ToSchema;

use crate::registry::ServiceEntry;
use crate::registry::instance::{CheckState, Instance};
use crate::registry::model::{CheckKind, InstanceStatus};

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[derive(Serialize, ToSchema)]
pub struct InstanceView<'a> {
    pub service: &'a str,
    pub id: &'a str,
    pub address: String,
    pub port: u16,
    #[schema(value_type = String, pattern = "^(tcp|udp)$")]
    pub protocol: &'static str,
    pub priority: u16,
    pub weight: u16,
    pub weights: Weights,
    #[schema(value_type = BTreeMap<String, u16>)]
    pub ports: &'a BTreeMap<String, u16>,
    #[schema(value_type = Vec<String>)]
    pub tags: &'a [String],
    #[schema(value_type = BTreeMap<String, String>)]
    pub meta: &'a BTreeMap<String, String>,
    /// The instance's status: the worst of its checks, or `maintenance`.
    #[schema(value_type = String, pattern = "^(passing|warning|critical|maintenance)$")]
    pub status: &'static str,
    /// The output of the check that decided the status.
    pub output: &'a str,
    /// When the status last changed (RFC 3339).
    pub last_change: String,
    /// When the instance was (last) registered (RFC 3339).
    pub registered_at: String,
    pub maintenance: Maintenance<'a>,
    pub checks: Vec<CheckView<'a>>,
}

#[derive(Serialize, ToSchema)]
pub struct Weights {
    pub warning: u16,
}

#[derive(Serialize, ToSchema)]
pub struct Maintenance<'a> {
    pub enabled: bool,
    pub reason: Option<&'a str>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckView<'a> {
    pub name: &'a str,
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^(http|tcp|ttl)$")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub headers: Option<&'a BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub failures_before_critical: u32,
    pub successes_before_passing: u32,
    pub deregister_after: Option<String>,
    #[schema(value_type = String, pattern = "^(passing|warning|critical)$")]
    pub status: &'static str,
    pub output: &'a str,
    pub last_change: String,
}

impl<'a> From<&'a CheckState> for CheckView<'a> {
    fn from(check: &'a CheckState) -> Self {
        let spec = &check.spec;
        let active = !spec.kind.is_ttl();
        let mut view = CheckView {
            name: &spec.name,
            kind: spec.kind.type_name(),
            url: None,
            method: None,
            headers: None,
            tls_skip_verify: None,
            target: None,
            ttl: None,
            interval: active.then(|| duration(spec.interval)),
            timeout: active.then(|| duration(spec.timeout)),
            failures_before_critical: spec.failures_before_critical,
            successes_before_passing: spec.successes_before_passing,
            deregister_after: spec.deregister_after.map(duration),
            status: check.status.as_str(),
            output: &check.output,
            last_change: rfc3339(check.last_change),
        };
        match &spec.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                tls_skip_verify,
            } => {
                view.url = Some(url);
                view.method = Some(method);
                view.headers = Some(headers);
                view.tls_skip_verify = Some(*tls_skip_verify);
            }
            CheckKind::Tcp { target } => view.target = target.as_deref(),
            CheckKind::Ttl { ttl } => view.ttl = Some(duration(*ttl)),
        }
        view
    }
}

impl<'a> From<&'a Instance> for InstanceView<'a> {
    fn from(instance: &'a Instance) -> Self {
        let reg = &instance.registration;
        InstanceView {
            service: reg.service.as_str(),
            id: reg.id.as_str(),
            address: reg.address.to_string(),
            port: reg.port,
            protocol: reg.protocol.as_str(),
            priority: reg.priority,
            weight: reg.weight,
            weights: Weights {
                warning: reg.warning_weight,
            },
            ports: &reg.ports,
            tags: &reg.tags,
            meta: &reg.meta,
            status: instance.status.as_str(),
            output: instance.output(),
            last_change: rfc3339(instance.last_change),
            registered_at: rfc3339(instance.registered_at),
            maintenance: Maintenance {
                enabled: instance.maintenance.is_some(),
                reason: instance.maintenance.as_deref(),
            },
            checks: instance.checks.iter().map(CheckView::from).collect(),
        }
    }
}

/// `PUT …/heartbeat` and `…/status` answer with this.
#[derive(Serialize, ToSchema)]
pub struct StatusView<'a> {
    pub service: &'a str,
    pub id: &'a str,
    #[schema(value_type = String, pattern = "^(passing|warning|critical|maintenance)$")]
    pub status: &'static str,
    pub output: &'a str,
}

impl<'a> From<&'a Instance> for StatusView<'a> {
    fn from(instance: &'a Instance) -> Self {
        StatusView {
            service: instance.registration.service.as_str(),
            id: instance.registration.id.as_str(),
            status: instance.status.as_str(),
            output: instance.output(),
        }
    }
}

/// `GET /v1/health`: liveness of srvdns itself, and its health-check engine's counters.
#[derive(Serialize, ToSchema)]
pub struct HealthView {
    /// Always `ok` while srvdns answers.
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: &'static str,
    pub index: u64,
    pub services: usize,
    pub instances: usize,
    pub checks: CheckEngineView,
}

/// Counters of the active health checks.
#[derive(Serialize, ToSchema)]
pub struct CheckEngineView {
    pub probed_instances: u64,
    pub runs: u64,
    pub failures: u64,
    /// Since start.
    pub lateness_ms: LatenessView,
    /// Over the last complete 10 s window: the steady state, free of start-up bursts.
    pub recent_lateness_ms: LatenessView,
}

/// Probe lateness percentiles in milliseconds; `null` before the first probe.
#[derive(Serialize, ToSchema)]
pub struct LatenessView {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

/// One row of `GET /v1/services`.
#[derive(Serialize, ToSchema)]
pub struct ServiceSummary<'a> {
    pub name: &'a str,
    pub instances: usize,
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    pub maintenance: usize,
}

impl<'a> From<&'a ServiceEntry> for ServiceSummary<'a> {
    fn from(entry: &'a ServiceEntry) -> Self {
        let mut summary = ServiceSummary {
            name: entry.name.as_str(),
            instances: entry.instances.len(),
            passing: 0,
            warning: 0,
            critical: 0,
            maintenance: 0,
        };
        for instance in &entry.instances {
            *match instance.status {
                InstanceStatus::Passing => &mut summary.passing,
                InstanceStatus::Warning => &mut summary.warning,
                InstanceStatus::Critical => &mut summary.critical,
                InstanceStatus::Maintenance => &mut summary.maintenance,
            } += 1;
        }
        summary
    }
}

/// `GET /v1/services/{service}`.
#[derive(Serialize, ToSchema)]
pub struct ServiceView<'a> {
    pub name: &'a str,
    /// The registry index of the last change to this service.
    pub index: u64,
    pub instances: Vec<InstanceView<'a>>,
}

impl<'a> From<&'a ServiceEntry> for ServiceView<'a> {
    fn from(entry: &'a ServiceEntry) -> Self {
        ServiceView {
            name: entry.name.as_str(),
            index: entry.index,
            instances: entry
                .instances
                .iter()
                .map(|i| InstanceView::from(&**i))
                .collect(),
        }
    }
}
