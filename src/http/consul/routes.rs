//! Handlers of the Consul-compatible API. Each one translates a request into the same
//! [`Registry`] calls the native API makes, and the result into Consul's shapes; none holds
//! state of its own.
//!
//! Reads answer from one snapshot and set `X-Consul-Index` to that snapshot's index, so that a
//! client blocking on it next (`?index=`) cannot miss a change made while it was answered.
//!
//! [`Registry`]: crate::registry::Registry

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::INDEX_HEADER;
use super::decode::{Fields, parse_go_bool, parse_go_duration};
use super::registration;
use super::view::{Agent, AgentService, CatalogService, HealthCheck, HealthEntry, Node, checks_of};
use crate::http::AppState;
use crate::http::auth::Access;
use crate::http::error::ApiError;
use crate::http::routes::{MAX_WAIT, Path, Query, parse_json};
use crate::registry::instance::Instance;
use crate::registry::model::{InstanceStatus, Status};
use crate::registry::{ServiceEntry, Snapshot};

/// The longest check output kept; longer output is cut, as Consul cuts it (`OutputMaxSize`).
const MAX_OUTPUT_BYTES: usize = 4096;

/// Consul's maintenance reason when none is given.
const DEFAULT_MAINTENANCE_REASON: &str = "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";

/// Query parameters as sent (`?passing&tag=a&tag=b`): repeated keys are kept.
type Pairs = Vec<(String, String)>;

/// The query parameters of a read.
struct ReadQuery {
    /// `?passing`: only instances whose every check passes.
    passing: bool,
    /// `?tag=`: only instances with all of these tags (case-insensitive, as in Consul).
    tags: Vec<String>,
    /// `?index=&wait=`: block until a change after `index`, or `wait`.
    block: Option<(u64, Duration)>,
}

impl ReadQuery {
    fn parse(pairs: &Pairs, agent: &Agent) -> Result<Self, ApiError> {
        let mut query = Self {
            passing: false,
            tags: Vec::new(),
            block: None,
        };
        let (mut index, mut wait) = (None, None);
        for (key, value) in pairs {
            match key.as_str() {
                "passing" => {
                    query.passing = parse_go_bool(value).ok_or_else(|| {
                        ApiError::bad_request(
                            "passing",
                            format!("invalid value for ?passing: {value:?} (use 1 or true)"),
                        )
                    })?;
                }
                "tag" => query.tags.push(value.clone()),
                "index" => {
                    index = Some(value.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(
                            "index",
                            format!("index {value:?} is not a whole number"),
                        )
                    })?);
                }
                "wait" => {
                    wait = Some(parse_go_duration(value).ok_or_else(|| {
                        ApiError::bad_request(
                            "wait",
                            format!("wait {value:?} is not a duration such as \"30s\" or \"5m\""),
                        )
                    })?);
                }
                "dc" if !value.is_empty() && *value != agent.datacenter => {
                    return Err(ApiError::bad_request(
                        "dc",
                        format!(
                            "no path to datacenter {value:?}: srvdns serves one datacenter, {:?}",
                            agent.datacenter
                        ),
                    ));
                }
                "filter" | "node-meta" => {
                    return Err(ApiError::bad_request(
                        key.as_str(),
                        format!("?{key}= is not supported by srvdns (see docs/consul-compat.md)"),
                    ));
                }
                // token (read by the middleware), stale, consistent, cached, near, ns…: they
                // change nothing for one node that is its own leader.
                _ => {}
            }
        }
        // Consul: index 0 never blocks; the wait defaults to, and is capped at, the maximum.
        query.block = index
            .filter(|&index| index > 0)
            .map(|index| (index, wait.unwrap_or(MAX_WAIT).min(MAX_WAIT)));
        Ok(query)
    }

    fn wants(&self, instance: &Instance) -> bool {
        (!self.passing || instance.status == InstanceStatus::Passing)
            && self.tags.iter().all(|wanted| {
                instance
                    .registration
                    .tags
                    .iter()
                    .any(|tag| tag.eq_ignore_ascii_case(wanted))
            })
    }
}

/// A JSON answer whose `X-Consul-Index` is the index of the snapshot it was read from.
fn reply<T: Serialize>(index: u64, body: &T) -> Response {
    let mut response = Json(body).into_response();
    // Consul never answers index 0: clients take 0 as "no blocking" and would spin.
    response
        .headers_mut()
        .insert(INDEX_HEADER.clone(), HeaderValue::from(index.max(1)));
    response
}

/// A write's answer: 200 with an empty body, as Consul's agent answers.
fn written() -> Response {
    StatusCode::OK.into_response()
}

/// The snapshot to answer from: now, or after `service` changes when the read blocks.
async fn service_snapshot(
    state: &AppState,
    service: &str,
    block: Option<(u64, Duration)>,
) -> Arc<Snapshot> {
    if let Some((index, wait)) = block {
        tokio::select! {
            _ = state.registry.wait_for_service(service, index, wait) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    state.registry.view()
}

/// The snapshot to answer from: now, or after anything changes when the read blocks.
async fn any_snapshot(state: &AppState, block: Option<(u64, Duration)>) -> Arc<Snapshot> {
    if let Some((index, wait)) = block {
        tokio::select! {
            _ = state.registry.wait_for_change(index, wait) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
    state.registry.view()
}

/// Service names are DNS labels, case-folded; a path name that is not one names no service.
fn service_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn instances(snapshot: &Snapshot) -> impl Iterator<Item = (&Arc<ServiceEntry>, &Arc<Instance>)> {
    snapshot.services.values().flat_map(|entry| {
        entry
            .instances
            .iter()
            .map(move |instance| (entry, instance))
    })
}

/// The one instance with service ID `id`: IDs are unique on this API, but the native API may
/// have registered the same ID under two services.
fn instance_by_id<'s>(
    snapshot: &'s Snapshot,
    id: &str,
) -> Result<(&'s Arc<ServiceEntry>, &'s Arc<Instance>), ApiError> {
    let mut found = instances(snapshot).filter(|(_, i)| i.registration.id.as_str() == id);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(ApiError::not_found(format!(
            "unknown service ID {id:?}: ensure the service has been registered"
        ))),
        (Some((a, _)), Some((b, _))) => Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "service ID {id:?} is registered under several services ({}, {}) through the \
                 native API: use /v1/services/{{service}}/instances/{id} there",
                a.name, b.name
            ),
            field: Some(String::from("id")),
        }),
    }
}

/// What a check ID designates: an instance, and its check (`None`: the instance's own status,
/// for an instance without checks).
struct CheckTarget {
    service: String,
    id: String,
    check: Option<String>,
}

/// Finds a check by ID: a check stored under that name (every check registered through this
/// API), else Consul's `service:<id>` / `service:<id>:<n>` naming applied to an instance (so
/// that instances registered through the native API can be updated too).
fn find_check(snapshot: &Snapshot, check_id: &str) -> Result<CheckTarget, ApiError> {
    let target = |instance: &Instance, check: Option<String>| CheckTarget {
        service: instance.registration.service.to_string(),
        id: instance.registration.id.to_string(),
        check,
    };
    let mut named = instances(snapshot).filter_map(|(_, instance)| {
        instance
            .checks
            .iter()
            .find(|c| c.spec.name == check_id)
            .map(|c| (instance, c.spec.name.clone()))
    });
    match (named.next(), named.next()) {
        (Some((instance, name)), None) => return Ok(target(instance, Some(name))),
        (Some(_), Some(_)) => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!(
                    "check ID {check_id:?} names checks of several instances (registered \
                     through the native API): update them with the native API"
                ),
                field: Some(String::from("check_id")),
            });
        }
        (None, _) => {}
    }
    let unknown = || ApiError::not_found(format!("unknown check ID {check_id:?}"));
    let rest = check_id.strip_prefix("service:").ok_or_else(unknown)?;
    if let Ok((_, instance)) = instance_by_id(snapshot, rest) {
        return match instance.checks.as_slice() {
            [] => Ok(target(instance, None)),
            [only] => Ok(target(instance, Some(only.spec.name.clone()))),
            _ => Err(unknown()),
        };
    }
    let (id, n) = rest.rsplit_once(':').ok_or_else(unknown)?;
    let n: usize = n.parse().map_err(|_| unknown())?;
    let (_, instance) = instance_by_id(snapshot, id).map_err(|_| unknown())?;
    let check = n
        .checked_sub(1)
        .and_then(|i| instance.checks.get(i))
        .ok_or_else(unknown)?;
    Ok(target(instance, Some(check.spec.name.clone())))
}

fn truncated(mut output: String) -> String {
    if output.len() > MAX_OUTPUT_BYTES {
        let mut end = MAX_OUTPUT_BYTES;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
    }
    output
}

// ---- writes ----

/// `PUT /v1/agent/service/register`
pub async fn register(
    State(state): State<AppState>,
    access: Access,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse_json(&body?)?;
    let registration = registration::parse(&body, peer.ip().to_canonical(), &state.limits)?;
    // The service is named in the body. Registering an ID that another service holds
    // deregisters it there (IDs are unique on this API): that is a write to it as well.
    access.may_write(registration.service.as_str())?;
    let snapshot = state.registry.snapshot();
    for (entry, _) in instances(&snapshot).filter(|(_, i)| i.registration.id == registration.id) {
        access.may_write(entry.name.as_str())?;
    }
    drop(snapshot);
    state.registry.register_replacing_id(registration).await?;
    Ok(written())
}

/// `PUT /v1/agent/service/deregister/{id}`
pub async fn deregister(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = state.registry.snapshot();
    let (entry, instance) = instance_by_id(&snapshot, &id)?;
    access.may_write(entry.name.as_str())?;
    state
        .registry
        .deregister(entry.name.as_str(), instance.registration.id.as_str())
        .await?;
    Ok(written())
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=…`
pub async fn maintenance(
    State(state): State<AppState>,
    access: Access,
    Path(id): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let value = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let enable = value("enable")
        .ok_or_else(|| ApiError::bad_request("enable", "missing value for ?enable"))?;
    let enable = parse_go_bool(enable)
        .filter(|_| !enable.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "enable",
                format!("invalid value for ?enable: {enable:?} (use true or false)"),
            )
        })?;
    let reason = enable.then(|| {
        truncated(
            value("reason")
                .filter(|r| !r.is_empty())
                .unwrap_or(DEFAULT_MAINTENANCE_REASON)
                .to_owned(),
        )
    });
    let snapshot = state.registry.snapshot();
    let (entry, instance) = instance_by_id(&snapshot, &id)?;
    access.may_write(entry.name.as_str())?;
    state
        .registry
        .set_maintenance(
            entry.name.as_str(),
            instance.registration.id.as_str(),
            reason,
        )
        .await?;
    Ok(written())
}

async fn update_check(
    state: &AppState,
    access: &Access,
    check_id: &str,
    status: Status,
    output: String,
) -> Result<Response, ApiError> {
    let snapshot = state.registry.snapshot();
    let target = find_check(&snapshot, check_id)?;
    access.may_write(&target.service)?;
    state
        .registry
        .set_status(
            &target.service,
            &target.id,
            target.check.as_deref(),
            status,
            truncated(output),
        )
        .await?;
    Ok(written())
}

fn note(pairs: &Pairs) -> String {
    pairs
        .iter()
        .find(|(k, _)| k == "note")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// `PUT /v1/agent/check/pass/{check_id}?note=…`
pub async fn check_pass(
    State(state): State<AppState>,
    access: Access,
    Path(check_id): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    update_check(&state, &access, &check_id, Status::Passing, note(&pairs)).await
}

/// `PUT /v1/agent/check/warn/{check_id}?note=…`
pub async fn check_warn(
    State(state): State<AppState>,
    access: Access,
    Path(check_id): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    update_check(&state, &access, &check_id, Status::Warning, note(&pairs)).await
}

/// `PUT /v1/agent/check/fail/{check_id}?note=…`
pub async fn check_fail(
    State(state): State<AppState>,
    access: Access,
    Path(check_id): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    update_check(&state, &access, &check_id, Status::Critical, note(&pairs)).await
}

/// `PUT /v1/agent/check/update/{check_id}` with `{"Status": "passing", "Output": "…"}`
pub async fn check_update(
    State(state): State<AppState>,
    access: Access,
    Path(check_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Value = parse_json(&body?)?;
    let fields = Fields::new(&body, "")?;
    let status = fields
        .non_empty_string("Status")?
        .ok_or_else(|| ApiError::bad_request("Status", "Status is required"))?;
    let status = Status::parse(status, "Status")?;
    let output = fields.string("Output")?.unwrap_or_default().to_owned();
    update_check(&state, &access, &check_id, status, output).await
}

// ---- agent reads ----

/// `GET /v1/agent/services`: every instance, by service ID.
pub async fn agent_services(
    State(state): State<AppState>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let query = ReadQuery::parse(&pairs, &state.consul)?;
    let snapshot = state.registry.snapshot();
    let services: BTreeMap<&str, AgentService<'_>> = instances(&snapshot)
        .filter(|(_, instance)| query.wants(instance))
        .map(|(_, instance)| {
            (
                instance.registration.id.as_str(),
                AgentService::new(instance, &state.consul),
            )
        })
        .collect();
    Ok(reply(snapshot.index, &services))
}

/// `GET /v1/agent/service/{id}`
pub async fn agent_service(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snapshot = state.registry.snapshot();
    let (_, instance) = instance_by_id(&snapshot, &id)?;
    Ok(reply(
        snapshot.index,
        &AgentService::new(instance, &state.consul),
    ))
}

/// `GET /v1/agent/checks`: every check, by check ID.
pub async fn agent_checks(State(state): State<AppState>) -> Response {
    let snapshot = state.registry.snapshot();
    let checks: BTreeMap<String, HealthCheck<'_>> = snapshot
        .services
        .values()
        .flat_map(|entry| {
            entry
                .instances
                .iter()
                .flat_map(|instance| checks_of(instance, entry.index, &state.consul))
        })
        .map(|check| (check.check_id.clone(), check))
        .collect();
    reply(snapshot.index, &checks)
}

/// `GET /v1/agent/self`: what clients probe for (node name, datacenter, version).
pub async fn agent_self(State(state): State<AppState>) -> Response {
    let agent = &state.consul;
    let body = json!({
        "Config": {
            "Datacenter": agent.datacenter,
            "NodeName": agent.node,
            "NodeID": agent.node_id,
            "Server": false,
            "Version": Agent::CONSUL_VERSION,
            "Revision": format!("srvdns {}", env!("CARGO_PKG_VERSION")),
        },
        "Member": {
            "Name": agent.node,
            "Addr": agent.address,
            "Port": 8301,
            "Tags": {"dc": agent.datacenter, "role": "node"},
            "Status": 1,
        },
        "Meta": {},
    });
    reply(state.registry.index(), &body)
}

// ---- health ----

/// `GET /v1/health/service/{name}?passing&tag=&index=&wait=`: `[{Node, Service, Checks}]`.
pub async fn health_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let query = ReadQuery::parse(&pairs, &state.consul)?;
    let name = service_key(&name);
    let snapshot = service_snapshot(&state, &name, query.block).await;
    let entries: Vec<HealthEntry<'_>> = match snapshot.service(&name) {
        Some(entry) => entry
            .instances
            .iter()
            .filter(|instance| query.wants(instance))
            .map(|instance| HealthEntry::new(entry, instance, &state.consul))
            .collect(),
        None => Vec::new(),
    };
    Ok(reply(snapshot.index, &entries))
}

/// `GET /v1/health/checks/{name}`: the checks of a service's instances.
pub async fn health_checks(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let query = ReadQuery::parse(&pairs, &state.consul)?;
    let name = service_key(&name);
    let snapshot = service_snapshot(&state, &name, query.block).await;
    let checks: Vec<HealthCheck<'_>> = match snapshot.service(&name) {
        Some(entry) => entry
            .instances
            .iter()
            .flat_map(|instance| checks_of(instance, entry.index, &state.consul))
            .collect(),
        None => Vec::new(),
    };
    Ok(reply(snapshot.index, &checks))
}

/// `GET /v1/health/state/{state}`: every check in a state (`any` for all).
pub async fn health_state(
    State(state): State<AppState>,
    Path(wanted): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let wanted = match wanted.as_str() {
        "any" => None,
        other => Some(Status::parse(other, "state").map_err(|_| {
            ApiError::bad_request(
                "state",
                format!("state {other:?} is not one of any, passing, warning, critical"),
            )
        })?),
    };
    let query = ReadQuery::parse(&pairs, &state.consul)?;
    let snapshot = any_snapshot(&state, query.block).await;
    let checks: Vec<HealthCheck<'_>> = snapshot
        .services
        .values()
        .flat_map(|entry| {
            entry
                .instances
                .iter()
                .flat_map(|instance| checks_of(instance, entry.index, &state.consul))
        })
        .filter(|check| wanted.is_none_or(|status| check.status == status.as_str()))
        .collect();
    Ok(reply(snapshot.index, &checks))
}

// ---- catalog ----

/// `GET /v1/catalog/services`: every service with the tags its instances carry.
pub async fn catalog_services(
    State(state): State<AppState>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let query = ReadQuery::parse(&pairs, &state.consul)?;
    let snapshot = any_snapshot(&state, query.block).await;
    let services: BTreeMap<&str, BTreeSet<&str>> = snapshot
        .services
        .values()
        .map(|entry| {
            let tags = entry
                .instances
                .iter()
                .flat_map(|i| i.registration.tags.iter().map(String::as_str))
                .collect();
            (entry.name.as_str(), tags)
        })
        .collect();
    Ok(reply(snapshot.index, &services))
}

/// `GET /v1/catalog/service/{name}?tag=`: the service's instances, healthy or not.
pub async fn catalog_service(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(pairs): Query<Pairs>,
) -> Result<Response, ApiError> {
    let mut query = ReadQuery::parse(&pairs, &state.consul)?;
    // The catalog lists instances whatever their health.
    query.passing = false;
    let name = service_key(&name);
    let snapshot = service_snapshot(&state, &name, query.block).await;
    let services: Vec<CatalogService<'_>> = match snapshot.service(&name) {
        Some(entry) => entry
            .instances
            .iter()
            .filter(|instance| query.wants(instance))
            .map(|instance| CatalogService::new(entry, instance, &state.consul))
            .collect(),
        None => Vec::new(),
    };
    Ok(reply(snapshot.index, &services))
}

/// `GET /v1/catalog/datacenters`
pub async fn catalog_datacenters(State(state): State<AppState>) -> Response {
    reply(state.registry.index(), &[&state.consul.datacenter])
}

/// `GET /v1/catalog/nodes`
pub async fn catalog_nodes(State(state): State<AppState>) -> Response {
    let index = state.registry.index();
    reply(index, &[Node::new(&state.consul, index.max(1))])
}

// ---- status ----

/// `GET /v1/status/leader`: srvdns is its own leader.
pub async fn status_leader(State(state): State<AppState>) -> Response {
    reply(state.registry.index(), &state.consul.leader())
}

/// `GET /v1/status/peers`
pub async fn status_peers(State(state): State<AppState>) -> Response {
    reply(state.registry.index(), &[state.consul.leader()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Pairs {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn read_queries_follow_consul() {
        let agent = Agent::new("127.0.0.1:8500".parse().unwrap());
        for (given, passing) in [("", true), ("1", true), ("true", true), ("false", false)] {
            let query = ReadQuery::parse(&pairs(&[("passing", given)]), &agent).unwrap();
            assert_eq!(query.passing, passing, "{given:?}");
        }
        let query = ReadQuery::parse(
            &pairs(&[
                ("tag", "a"),
                ("tag", "B"),
                ("index", "7"),
                ("wait", "30s"),
                ("dc", "dc1"),
            ]),
            &agent,
        )
        .unwrap();
        assert_eq!(query.tags, ["a", "B"]);
        assert_eq!(query.block, Some((7, Duration::from_secs(30))));
        let query = ReadQuery::parse(&pairs(&[("index", "0"), ("wait", "1s")]), &agent).unwrap();
        assert_eq!(query.block, None, "index 0 never blocks");
        let query = ReadQuery::parse(&pairs(&[("index", "3"), ("wait", "1h")]), &agent).unwrap();
        assert_eq!(query.block, Some((3, MAX_WAIT)), "the wait is capped");
        for (bad, field) in [
            (("passing", "yes"), "passing"),
            (("index", "x"), "index"),
            (("wait", "30"), "wait"),
            (("dc", "dc2"), "dc"),
            (("filter", "Service == web"), "filter"),
        ] {
            let err = ReadQuery::parse(&pairs(&[bad]), &agent).err().unwrap();
            assert_eq!(err.field.as_deref(), Some(field));
        }
    }

    #[test]
    fn long_output_is_cut_at_a_character() {
        let output = "é".repeat(MAX_OUTPUT_BYTES);
        let cut = truncated(output);
        assert!(cut.len() <= MAX_OUTPUT_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
