//! The [`Registry`]: the one owner of services, instances and their health.
//!
//! Every change (register, deregister, heartbeat, status, maintenance, TTL expiry) goes through
//! here. A change takes the state lock, applies a pure transition, bumps the monotonic `index`,
//! rebuilds the changed service's entry and publishes a new [`Snapshot`] *before* the call
//! returns: once an HTTP handler has answered, every DNS query that arrives afterwards reads the
//! new snapshot (read-your-writes). Readers never take the lock: they load the snapshot.
//!
//! The lock is a `std::sync::Mutex` held only for in-memory work, never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use super::instance::{Expiry, Instance};
use super::model::{
    InstanceId, InstanceStatus, Registration, ServiceName, Status, ValidationError,
};
use super::snapshot::{DnsPolicy, ServiceEntry, Snapshot};

/// Why a registry call was refused. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("instance {id:?} of service {service:?} is not registered")]
    InstanceNotFound { service: String, id: String },
    #[error("service {0:?} has no registered instances")]
    ServiceNotFound(String),
    #[error("service name {service:?} clashes with the static record {record} from the zone files")]
    StaticClash { service: String, record: String },
}

/// Fixed settings of a registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub dns: DnsPolicy,
    /// Service labels taken by static records under the served domain, with the record name
    /// that takes each (for the 409 message).
    pub static_names: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    index: u64,
    services: BTreeMap<ServiceName, BTreeMap<InstanceId, Arc<Instance>>>,
    /// The last change index of every service ever seen, removed ones included, so that a
    /// blocking read on a service that disappears still wakes.
    service_index: HashMap<ServiceName, u64>,
    /// The deadline the expiry task sleeps until, if it sleeps on one.
    next_wake: Option<Instant>,
}

/// The registry. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    snapshot: ArcSwap<Snapshot>,
    changes: watch::Sender<u64>,
    /// Wakes the expiry task when a deadline earlier than the one it sleeps on appears.
    deadline_moved: Notify,
    settings: RegistrySettings,
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Self {
        Self {
            state: Mutex::new(State::default()),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changes: watch::channel(0).0,
            deadline_moved: Notify::new(),
            settings,
        }
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// The current snapshot. Lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current registry index. Lock-free.
    pub fn index(&self) -> u64 {
        self.snapshot.load().index
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves state that was valid before the panicking
        // call (transitions are applied to copies and swapped in): keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers an instance, or replaces its registration (idempotent).
    pub fn register(&self, registration: Registration) -> Result<Arc<Instance>, RegistryError> {
        self.register_inner(registration, false)
    }

    /// Registers an instance whose ID is unique across services, as on a Consul agent: an
    /// instance with the same ID under another service is removed in the same change (one
    /// index bump, one snapshot), so no reader ever sees the ID twice, or not at all. The
    /// Consul-compatible API registers through this; the native API keeps IDs per service.
    pub fn register_replacing_id(
        &self,
        registration: Registration,
    ) -> Result<Arc<Instance>, RegistryError> {
        self.register_inner(registration, true)
    }

    fn register_inner(
        &self,
        registration: Registration,
        replace_id_elsewhere: bool,
    ) -> Result<Arc<Instance>, RegistryError> {
        if let Some(record) = self
            .settings
            .static_names
            .get(registration.service.as_str())
        {
            return Err(RegistryError::StaticClash {
                service: registration.service.to_string(),
                record: record.clone(),
            });
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        let service = registration.service.clone();
        let id = registration.id.clone();
        let mut changed = Vec::new();
        if replace_id_elsewhere {
            for (other, instances) in &mut state.services {
                if *other != service && instances.remove(&id).is_some() {
                    tracing::info!(
                        service = %other, instance = %id, moved_to = %service,
                        "instance deregistered: its ID was registered under another service"
                    );
                    changed.push(other.clone());
                }
            }
        }
        let instances = state.services.entry(service.clone()).or_default();
        let instance = match instances.get(&id) {
            Some(existing) => {
                let mut instance = Instance::clone(existing);
                let before = instance.status;
                instance.reregister(registration, now, wall);
                log_status(&instance, before, "registered again");
                instance
            }
            None => {
                let instance = Instance::new(registration, now, wall);
                tracing::info!(
                    service = %service, instance = %id, status = %instance.status,
                    address = %instance.registration.address, port = instance.registration.port,
                    "instance registered"
                );
                instance
            }
        };
        let instance = Arc::new(instance);
        instances.insert(id, Arc::clone(&instance));
        self.watch_deadline(&mut state, instance.next_deadline());
        changed.push(service);
        self.publish(state, &changed);
        Ok(instance)
    }

    /// Removes an instance.
    pub fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let mut state = self.lock();
        let (service_name, removed) = remove_instance(&mut state, service, id)?;
        tracing::info!(service = %service_name, instance = %removed.registration.id, "instance deregistered");
        self.publish(state, &[service_name]);
        Ok(())
    }

    /// A TTL heartbeat: renews every `ttl` check of the instance, or the one named `check`.
    pub fn heartbeat(
        &self,
        service: &str,
        id: &str,
        check: Option<&str>,
    ) -> Result<Arc<Instance>, RegistryError> {
        self.update_ttl_checks(service, id, check, Status::Passing, None)
    }

    /// Sets the status of the instance's `ttl` checks (or the one named `check`); an instance
    /// without checks takes it as its own status. Counts as a heartbeat for those checks.
    pub fn set_status(
        &self,
        service: &str,
        id: &str,
        check: Option<&str>,
        status: Status,
        output: String,
    ) -> Result<Arc<Instance>, RegistryError> {
        self.update_ttl_checks(service, id, check, status, Some(output))
    }

    fn update_ttl_checks(
        &self,
        service: &str,
        id: &str,
        check: Option<&str>,
        status: Status,
        output: Option<String>,
    ) -> Result<Arc<Instance>, RegistryError> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        let (service_name, mut instance) = find_instance(&state, service, id)?;
        let output = output.unwrap_or_else(|| String::from("heartbeat"));
        let selected: Vec<usize> = match check {
            Some(name) => {
                let Some(i) = instance.checks.iter().position(|c| c.spec.name == name) else {
                    return Err(ValidationError::new(
                        "check",
                        format!("instance {id:?} has no check named {name:?}"),
                    )
                    .into());
                };
                if !instance.checks[i].spec.kind.is_ttl() {
                    return Err(ValidationError::new(
                        "check",
                        format!("check {name:?} is not a ttl check: srvdns probes it itself"),
                    )
                    .into());
                }
                vec![i]
            }
            None => (0..instance.checks.len())
                .filter(|&i| instance.checks[i].spec.kind.is_ttl())
                .collect(),
        };
        let before = instance.status;
        if instance.checks.is_empty() {
            instance.own_status = status;
            instance.own_output = output;
        } else if selected.is_empty() {
            return Err(ValidationError::new(
                "check",
                format!(
                    "instance {id:?} has no ttl check: its status comes from its active checks"
                ),
            )
            .into());
        } else {
            for i in selected {
                let check = &mut instance.checks[i];
                if let super::model::CheckKind::Ttl { ttl } = check.spec.kind {
                    check.ttl_deadline = Some(now + ttl);
                }
                check.set(status, output.clone(), now, wall);
            }
        }
        instance.refresh_status(wall);
        log_status(&instance, before, "update over the API");
        let instance = Arc::new(instance);
        let deadline = instance.next_deadline();
        put_instance(&mut state, &service_name, Arc::clone(&instance));
        self.watch_deadline(&mut state, deadline);
        self.publish(state, &[service_name]);
        Ok(instance)
    }

    /// Puts an instance in maintenance (out of DNS, still registered) or takes it out.
    pub fn set_maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<Arc<Instance>, RegistryError> {
        let wall = SystemTime::now();
        let mut state = self.lock();
        let (service_name, mut instance) = find_instance(&state, service, id)?;
        let before = instance.status;
        instance.maintenance = reason;
        instance.refresh_status(wall);
        log_status(&instance, before, "maintenance over the API");
        let instance = Arc::new(instance);
        put_instance(&mut state, &service_name, Arc::clone(&instance));
        self.publish(state, &[service_name]);
        Ok(instance)
    }

    /// Applies the passage of time: expires missed TTLs and removes instances critical for
    /// longer than their `deregister_after`. Returns the next instant worth waking for.
    pub fn expire_due(&self) -> Option<Instant> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        let mut changed = Vec::new();
        let mut next: Option<Instant> = None;
        for (service, instances) in &mut state.services {
            let mut service_changed = false;
            instances.retain(|id, instance| {
                let mut updated = Instance::clone(instance);
                let before = updated.status;
                match updated.expire(now, wall) {
                    Expiry::Unchanged => {}
                    Expiry::Changed => {
                        updated.refresh_status(wall);
                        log_status(&updated, before, "ttl expired");
                        *instance = Arc::new(updated);
                        service_changed = true;
                    }
                    Expiry::Remove { check, after } => {
                        tracing::info!(
                            service = %service, instance = %id, check = %check,
                            after = %humantime::format_duration(after),
                            "instance deregistered: critical for longer than deregister_after"
                        );
                        service_changed = true;
                        return false;
                    }
                }
                next = next.into_iter().chain(instance.next_deadline()).min();
                true
            });
            if service_changed {
                changed.push(service.clone());
            }
        }
        state.next_wake = next;
        if !changed.is_empty() {
            self.publish(state, &changed);
        }
        next
    }

    /// Waits until the expiry task should run again: the deadline passed, or an earlier one
    /// appeared.
    pub async fn deadline_moved(&self) {
        self.deadline_moved.notified().await
    }

    /// Waits until `service` changes after `index`, or `wait` passes; returns the snapshot
    /// then current.
    pub async fn wait_for_service(
        &self,
        service: &str,
        index: u64,
        wait: Duration,
    ) -> Arc<Snapshot> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let snapshot = self.snapshot();
            if self.service_index(service) > index {
                return snapshot;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the registry is shutting down.
                _ => return self.snapshot(),
            }
        }
    }

    /// Waits until anything changes after `index`, or `wait` passes; returns the snapshot then
    /// current. For blocking reads of whole-registry views (Consul's `/v1/catalog/services`).
    pub async fn wait_for_change(&self, index: u64, wait: Duration) -> Arc<Snapshot> {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let snapshot = self.snapshot();
            if snapshot.index > index {
                return snapshot;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the registry is shutting down.
                _ => return self.snapshot(),
            }
        }
    }

    /// The index of the last change to `service`, 0 if it was never seen.
    pub fn service_index(&self, service: &str) -> u64 {
        let state = self.lock();
        state.service_index.get(service).copied().unwrap_or(0)
    }

    fn watch_deadline(&self, state: &mut State, deadline: Option<Instant>) {
        if let Some(deadline) = deadline
            && state.next_wake.is_none_or(|wake| deadline < wake)
        {
            state.next_wake = Some(deadline);
            self.deadline_moved.notify_one();
        }
    }

    /// Commits a change to `services`: bumps the index, rebuilds their entries and publishes
    /// the new snapshot before the lock is released.
    fn publish(&self, mut state: MutexGuard<'_, State>, services: &[ServiceName]) {
        state.index += 1;
        let index = state.index;
        let previous = self.snapshot.load();
        let mut map = BTreeMap::clone(&previous.services);
        for service in services {
            state.service_index.insert(service.clone(), index);
            let instances: Vec<Arc<Instance>> = state
                .services
                .get(service)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            if instances.is_empty() {
                state.services.remove(service);
                map.remove(service);
            } else {
                let entry =
                    ServiceEntry::build(service.clone(), index, instances, &self.settings.dns);
                map.insert(service.clone(), Arc::new(entry));
            }
        }
        self.snapshot.store(Arc::new(Snapshot {
            index,
            services: Arc::new(map),
        }));
        drop(state);
        self.changes.send_replace(index);
    }
}

fn log_status(instance: &Instance, before: InstanceStatus, reason: &str) {
    if instance.status != before {
        tracing::info!(
            service = %instance.registration.service,
            instance = %instance.registration.id,
            from = %before,
            to = %instance.status,
            reason,
            output = instance.output(),
            "instance status changed"
        );
    }
}

fn lookup_names(service: &str, id: &str) -> Result<(ServiceName, InstanceId), RegistryError> {
    let not_found = || RegistryError::InstanceNotFound {
        service: service.to_owned(),
        id: id.to_owned(),
    };
    let service = ServiceName::try_from(service).map_err(|_| not_found())?;
    let id = InstanceId::try_from(id).map_err(|_| not_found())?;
    Ok((service, id))
}

/// A copy of an instance to change, with its service name.
fn find_instance(
    state: &State,
    service: &str,
    id: &str,
) -> Result<(ServiceName, Instance), RegistryError> {
    let (service_name, instance_id) = lookup_names(service, id)?;
    state
        .services
        .get(&service_name)
        .and_then(|instances| instances.get(&instance_id))
        .map(|instance| (service_name, Instance::clone(instance)))
        .ok_or_else(|| RegistryError::InstanceNotFound {
            service: service.to_owned(),
            id: id.to_owned(),
        })
}

fn put_instance(state: &mut State, service: &ServiceName, instance: Arc<Instance>) {
    state
        .services
        .entry(service.clone())
        .or_default()
        .insert(instance.registration.id.clone(), instance);
}

fn remove_instance(
    state: &mut State,
    service: &str,
    id: &str,
) -> Result<(ServiceName, Arc<Instance>), RegistryError> {
    let (service_name, instance_id) = lookup_names(service, id)?;
    state
        .services
        .get_mut(&service_name)
        .and_then(|instances| instances.remove(&instance_id))
        .map(|removed| (service_name, removed))
        .ok_or_else(|| RegistryError::InstanceNotFound {
            service: service.to_owned(),
            id: id.to_owned(),
        })
}
