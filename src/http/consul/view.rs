//! Registry state in Consul's response shapes and field names (`api/agent.go`,
//! `api/health.go`, `api/catalog.go` of Consul's Go client, which every other client mirrors).
//!
//! srvdns is one Consul "node" ([`Agent`]): every instance is a service on it. What srvdns does
//! not track is given Consul's neutral value (`EnableTagOverride: false`, empty `Notes`), and
//! `CreateIndex`/`ModifyIndex` are the index of the service's last change. Two checks that
//! Consul would show are made up from registry state, so that filters such as `?passing` see
//! the same health as DNS: maintenance appears as Consul's critical `_service_maintenance:<id>`
//! check, and an instance without checks whose status was set (native `/status`, or a TTL
//! update on `service:<id>`) shows it as a `service:<id>` check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::registry::ServiceEntry;
use crate::registry::instance::{CheckState, Instance};
use crate::registry::model::{CheckKind, Status};

/// The Consul agent srvdns presents itself as: one node in one datacenter.
#[derive(Debug, Clone)]
pub struct Agent {
    pub node: String,
    pub node_id: String,
    pub datacenter: String,
    /// The node's address: the HTTP listen address, or loopback when that is unspecified.
    pub address: String,
}

impl Agent {
    pub const NODE: &'static str = "srvdns";
    pub const DATACENTER: &'static str = "dc1";
    /// The Consul version reported by `/v1/agent/self`: clients gate features (weights, TTL
    /// check updates with bodies) on it. The API subset srvdns serves is that of this version.
    pub const CONSUL_VERSION: &'static str = "1.17.0";

    /// The agent for an HTTP API listening on `http`.
    pub fn new(http: SocketAddr) -> Self {
        let ip = http.ip();
        let address = if ip.is_unspecified() {
            String::from("127.0.0.1")
        } else {
            ip.to_string()
        };
        Self {
            node: Self::NODE.to_owned(),
            // A fixed, well-formed node ID: there is one node, and it never changes.
            node_id: String::from("5d1e2b1c-0000-4000-8000-000000000001"),
            datacenter: Self::DATACENTER.to_owned(),
            address,
        }
    }

    /// The address Consul clients expect from `/v1/status/leader` (a server RPC address).
    pub fn leader(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:8300", self.address)
        } else {
            format!("{}:8300", self.address)
        }
    }
}

/// Go's `time.Duration.String()`: `10s`, `1m30s`, `1h0m0s`, `1.5s`, `250ms`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return String::from("0s");
    }
    let fraction = |value: u128, unit: u128| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            whole.to_string()
        } else {
            let digits = unit.to_string().len() - 1;
            let frac = format!("{rest:0digits$}");
            format!("{whole}.{}", frac.trim_end_matches('0'))
        }
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", fraction(nanos, 1_000_000));
    }
    let secs = d.as_secs();
    let (hours, minutes) = (secs / 3600, (secs % 3600) / 60);
    let seconds = fraction(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: u16,
    pub warning: u16,
}

impl Weights {
    fn of(instance: &Instance) -> Self {
        Self {
            passing: instance.registration.weight,
            warning: instance.registration.warning_weight,
        }
    }
}

/// `AgentService`: `/v1/agent/services` values and `/v1/agent/service/{id}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub service: &'a str,
    pub tags: &'a [String],
    pub meta: &'a BTreeMap<String, String>,
    pub port: u16,
    pub address: String,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub datacenter: &'a str,
}

impl<'a> AgentService<'a> {
    pub fn new(instance: &'a Instance, agent: &'a Agent) -> Self {
        let reg = &instance.registration;
        Self {
            id: reg.id.as_str(),
            service: reg.service.as_str(),
            tags: &reg.tags,
            meta: &reg.meta,
            port: reg.port,
            address: reg.address.to_string(),
            weights: Weights::of(instance),
            enable_tag_override: false,
            datacenter: &agent.datacenter,
        }
    }
}

/// `Node` of `/v1/health/service/{name}` entries and `/v1/catalog/nodes`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub node: &'a str,
    pub address: &'a str,
    pub datacenter: &'a str,
    pub tagged_addresses: BTreeMap<&'static str, &'a str>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> Node<'a> {
    pub fn new(agent: &'a Agent, index: u64) -> Self {
        Self {
            id: &agent.node_id,
            node: &agent.node,
            address: &agent.address,
            datacenter: &agent.datacenter,
            tagged_addresses: BTreeMap::from([("lan", &*agent.address), ("wan", &*agent.address)]),
            meta: BTreeMap::new(),
            create_index: index,
            modify_index: index,
        }
    }
}

/// `Service` of `/v1/health/service/{name}` entries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthService<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub service: &'a str,
    pub tags: &'a [String],
    pub address: String,
    pub meta: &'a BTreeMap<String, String>,
    pub port: u16,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One `[{Node, Service, Checks}]` entry of `/v1/health/service/{name}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry<'a> {
    pub node: Node<'a>,
    pub service: HealthService<'a>,
    pub checks: Vec<HealthCheck<'a>>,
}

impl<'a> HealthEntry<'a> {
    pub fn new(entry: &'a ServiceEntry, instance: &'a Instance, agent: &'a Agent) -> Self {
        let reg = &instance.registration;
        Self {
            node: Node::new(agent, entry.index),
            service: HealthService {
                id: reg.id.as_str(),
                service: reg.service.as_str(),
                tags: &reg.tags,
                address: reg.address.to_string(),
                meta: &reg.meta,
                port: reg.port,
                weights: Weights::of(instance),
                enable_tag_override: false,
                create_index: entry.index,
                modify_index: entry.index,
            },
            checks: checks_of(instance, entry.index, agent),
        }
    }
}

/// `Definition` of a check: how it probes, with Go durations.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition<'a> {
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<&'a str, [&'a str; 1]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    #[serde(rename = "TLSSkipVerify", skip_serializing_if = "Option::is_none")]
    pub tls_skip_verify: Option<bool>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
}

/// `HealthCheck` (and `AgentCheck`, the same fields): `/v1/health/checks/{name}`,
/// `/v1/health/state/{state}`, `/v1/agent/checks` values, and `Checks` of health entries.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck<'a> {
    pub node: &'a str,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: &'static str,
    pub notes: String,
    pub output: &'a str,
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub service_tags: &'a [String],
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub interval: String,
    pub timeout: String,
    pub exposed_port: u16,
    pub definition: CheckDefinition<'a>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> HealthCheck<'a> {
    fn base(instance: &'a Instance, index: u64, agent: &'a Agent) -> Self {
        let reg = &instance.registration;
        Self {
            node: &agent.node,
            check_id: format!("service:{}", reg.id),
            name: format!("Service '{}' check", reg.service),
            status: Status::Passing.as_str(),
            notes: String::new(),
            output: "",
            service_id: reg.id.as_str(),
            service_name: reg.service.as_str(),
            service_tags: &reg.tags,
            kind: "",
            interval: String::new(),
            timeout: String::new(),
            exposed_port: 0,
            definition: CheckDefinition::default(),
            create_index: index,
            modify_index: index,
        }
    }

    fn of_check(
        instance: &'a Instance,
        check: &'a CheckState,
        index: u64,
        agent: &'a Agent,
    ) -> Self {
        let spec = &check.spec;
        let mut view = Self::base(instance, index, agent);
        view.check_id = spec.name.clone();
        view.status = check.status.as_str();
        view.output = &check.output;
        view.kind = spec.kind.type_name();
        view.definition.deregister_critical_service_after = spec.deregister_after.map(go_duration);
        if !spec.kind.is_ttl() {
            view.interval = go_duration(spec.interval);
            view.timeout = go_duration(spec.timeout);
            view.definition.interval = Some(view.interval.clone());
            view.definition.timeout = Some(view.timeout.clone());
        }
        match &spec.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                tls_skip_verify,
            } => {
                view.definition.http = Some(url);
                view.definition.method = Some(method);
                view.definition.tls_skip_verify = Some(*tls_skip_verify);
                view.definition.header = (!headers.is_empty()).then(|| {
                    headers
                        .iter()
                        .map(|(name, value)| (name.as_str(), [value.as_str()]))
                        .collect()
                });
            }
            CheckKind::Tcp { target } => {
                let reg = &instance.registration;
                view.definition.tcp = Some(
                    target
                        .clone()
                        .unwrap_or_else(|| format!("{}:{}", reg.address, reg.port)),
                );
            }
            CheckKind::Ttl { .. } => {}
        }
        view
    }
}

/// Consul's check ID for a service in maintenance.
pub fn maintenance_check_id(id: &str) -> String {
    format!("_service_maintenance:{id}")
}

/// The checks Consul would show for an instance (see the module docs).
pub fn checks_of<'a>(instance: &'a Instance, index: u64, agent: &'a Agent) -> Vec<HealthCheck<'a>> {
    let mut checks: Vec<HealthCheck<'a>> = instance
        .checks
        .iter()
        .map(|check| HealthCheck::of_check(instance, check, index, agent))
        .collect();
    if instance.checks.is_empty() && instance.own_status != Status::Passing {
        let mut own = HealthCheck::base(instance, index, agent);
        own.status = instance.own_status.as_str();
        own.output = &instance.own_output;
        own.kind = "ttl";
        checks.push(own);
    }
    if let Some(reason) = &instance.maintenance {
        let mut maintenance = HealthCheck::base(instance, index, agent);
        maintenance.check_id = maintenance_check_id(instance.registration.id.as_str());
        maintenance.name = String::from("Service Maintenance Mode");
        maintenance.notes = reason.clone();
        maintenance.status = Status::Critical.as_str();
        maintenance.kind = "maintenance";
        checks.push(maintenance);
    }
    checks
}

/// One entry of `/v1/catalog/service/{name}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub node: &'a str,
    pub address: &'a str,
    pub datacenter: &'a str,
    pub tagged_addresses: BTreeMap<&'static str, &'a str>,
    pub node_meta: BTreeMap<String, String>,
    pub service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub service_tags: &'a [String],
    pub service_address: String,
    pub service_weights: Weights,
    pub service_meta: &'a BTreeMap<String, String>,
    pub service_port: u16,
    pub service_enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> CatalogService<'a> {
    pub fn new(entry: &'a ServiceEntry, instance: &'a Instance, agent: &'a Agent) -> Self {
        let reg = &instance.registration;
        Self {
            id: &agent.node_id,
            node: &agent.node,
            address: &agent.address,
            datacenter: &agent.datacenter,
            tagged_addresses: BTreeMap::from([("lan", &*agent.address), ("wan", &*agent.address)]),
            node_meta: BTreeMap::new(),
            service_kind: "",
            service_id: reg.id.as_str(),
            service_name: reg.service.as_str(),
            service_tags: &reg.tags,
            service_address: reg.address.to_string(),
            service_weights: Weights::of(instance),
            service_meta: &reg.meta,
            service_port: reg.port,
            service_enable_tag_override: false,
            create_index: entry.index,
            modify_index: entry.index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_does() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_nanos(7), "7ns"),
        ] {
            assert_eq!(go_duration(d), text);
        }
    }

    #[test]
    fn the_agent_names_one_node() {
        let agent = Agent::new("0.0.0.0:8500".parse().unwrap());
        assert_eq!(agent.address, "127.0.0.1");
        assert_eq!(agent.leader(), "127.0.0.1:8300");
        let agent = Agent::new("[::1]:8500".parse().unwrap());
        assert_eq!(agent.leader(), "[::1]:8300");
    }
}
