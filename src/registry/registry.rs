//! The [`Registry`]: the one owner of services, instances and their health.
//!
//! Every change (register, deregister, heartbeat, status, maintenance, TTL expiry) goes through
//! here. A change takes the state lock, applies a pure transition, bumps the monotonic `index`,
//! rebuilds the changed service's entry and publishes a new [`Snapshot`] *before* the call
//! returns: once an HTTP handler has answered, every DNS query that arrives afterwards reads the
//! new snapshot (read-your-writes). Readers never take the lock: they load the snapshot.
//!
//! The lock is a `std::sync::Mutex` held only for in-memory work, never across an `.await`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use super::instance::{Expiry, Instance};
use super::model::{
    CheckSpec, InstanceId, InstanceStatus, Registration, ServiceName, Status, ValidationError,
};
use super::snapshot::{DnsPolicy, ServiceEntry, Snapshot};
use crate::health::transitions::{self, Outcome, ProbeState};
use crate::store::commit::{Committer, Ticket};
use crate::store::{Change, Store, StoreError};

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
    #[error("the change could not be made durable, so it was not applied: {0}")]
    Store(Arc<StoreError>),
    #[error("{message}")]
    LimitReached {
        /// The option that sets the limit (`max-instances-per-service`).
        limit: &'static str,
        message: String,
    },
}

/// Caps on how many instances the registry holds, so that no client can grow it without
/// bound. Replacing an instance never counts against them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Instances one service may have.
    pub per_service: usize,
    /// Instances in all.
    pub total: usize,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        Self {
            per_service: 10_000,
            total: 100_000,
        }
    }
}

/// Fixed settings of a registry.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub dns: DnsPolicy,
    /// Service labels taken by static records under the served domain, with the record name
    /// that takes each (for the 409 message).
    pub static_names: BTreeMap<String, String>,
    /// Caps on the number of instances.
    pub limits: InstanceLimits,
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
    /// Services whose check outputs changed without a status change: republished (without a
    /// new index) when an HTTP reader asks, not on every probe.
    stale_outputs: BTreeSet<ServiceName>,
}

/// The registry. Cheap to share: wrap it in an `Arc`.
pub struct Registry {
    state: Mutex<State>,
    snapshot: ArcSwap<Snapshot>,
    changes: watch::Sender<u64>,
    /// Wakes the expiry task when a deadline earlier than the one it sleeps on appears.
    deadline_moved: Notify,
    settings: RegistrySettings,
    /// Makes changes durable; `None` for a memory-only registry, and after [`Registry::close`].
    committer: Mutex<Option<Committer>>,
}

impl Registry {
    /// A memory-only registry.
    pub fn new(settings: RegistrySettings) -> Self {
        Self {
            state: Mutex::new(State::default()),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changes: watch::channel(0).0,
            deadline_moved: Notify::new(),
            settings,
            committer: Mutex::new(None),
        }
    }

    /// A durable registry: restored from `store`, and acknowledging changes only once the
    /// store has them.
    pub fn open(
        settings: RegistrySettings,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, StoreError> {
        let restored = store.load()?;
        let registry = Arc::new(Self::new(settings));
        {
            let mut state = registry.lock();
            registry.restore(&mut state, restored);
        }
        let weak: Weak<Self> = Arc::downgrade(&registry);
        let committer = Committer::start(
            store,
            Box::new(move |store, fail_queued| match weak.upgrade() {
                Some(registry) => registry.revert_to_store(store, fail_queued),
                None => fail_queued(),
            }),
        )
        .map_err(|e| StoreError::Open {
            file: "the store thread".into(),
            detail: e.to_string(),
        })?;
        *registry
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(committer);
        Ok(registry)
    }

    /// Writes what is queued and closes the store. Later changes are kept in memory only.
    pub fn close(&self) {
        let committer = self
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(committer) = committer {
            committer.close();
        }
    }

    /// Replaces the in-memory state with what the store holds, and publishes it.
    fn restore(&self, state: &mut State, restored: crate::store::Restored) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let before: Vec<ServiceName> = state.services.keys().cloned().collect();
        state.services.clear();
        state.index = state.index.max(restored.index);
        let mut next = None;
        for stored in restored.instances {
            let instance = Instance::from_stored(stored, now, wall);
            next = next.into_iter().chain(instance.next_deadline()).min();
            let reg = &instance.registration;
            state
                .services
                .entry(reg.service.clone())
                .or_default()
                .insert(reg.id.clone(), Arc::new(instance));
        }
        let mut services: BTreeSet<ServiceName> = before.into_iter().collect();
        services.extend(state.services.keys().cloned());
        let services: Vec<ServiceName> = services.into_iter().collect();
        self.rebuild(state, &services, true);
        state.next_wake = None;
        self.watch_deadline(state, next);
    }

    /// After a failed store write: fails every queued change and goes back to the stored
    /// registry, so that nothing unacknowledged stays.
    fn revert_to_store(&self, store: &dyn Store, fail_queued: &dyn Fn()) {
        let mut state = self.lock();
        // Under the lock no new change can be queued: fail what is queued now.
        fail_queued();
        match store.load() {
            Ok(restored) => self.restore(&mut state, restored),
            Err(error) => {
                tracing::error!(%error, "cannot reload the store after a failed write; serving the last state");
            }
        }
        let index = state.index;
        drop(state);
        self.changes.send_replace(index);
    }

    /// The store commit thread's measurements; `None` for a memory-only registry.
    pub fn commit_stats(&self) -> Option<Arc<crate::store::commit::CommitStats>> {
        self.committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map(Committer::stats)
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// The current snapshot. Lock-free. Statuses are always current; the last outputs of
    /// active checks may lag (see [`Registry::view`]).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current snapshot with every check output current, for HTTP readers. Probe outputs
    /// that changed without a status change are folded in here, on demand, so that thousands
    /// of probes a second do not each rebuild a snapshot. Does not change the index.
    pub fn view(&self) -> Arc<Snapshot> {
        {
            let mut state = self.lock();
            if !state.stale_outputs.is_empty() {
                let services = std::mem::take(&mut state.stale_outputs);
                let services: Vec<ServiceName> = services.into_iter().collect();
                self.rebuild(&mut state, &services, false);
            }
        }
        self.snapshot()
    }

    /// Notified with the new index after every committed change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The current snapshot without touching its reference count: the DNS hot path holds it
    /// only while answering one query.
    pub fn snapshot_ref(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
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

    /// Registers an instance, or replaces its registration (idempotent). Returns once durable.
    pub async fn register(
        &self,
        registration: Registration,
    ) -> Result<Arc<Instance>, RegistryError> {
        let (instance, ticket) = self.apply_register(registration, false)?;
        ticket.wait().await.map_err(RegistryError::Store)?;
        Ok(instance)
    }

    /// Registers an instance whose ID is unique across services, as on a Consul agent: an
    /// instance with the same ID under another service is removed in the same change (one
    /// index bump, one snapshot), so no reader ever sees the ID twice, or not at all. The
    /// Consul-compatible API registers through this; the native API keeps IDs per service.
    pub async fn register_replacing_id(
        &self,
        registration: Registration,
    ) -> Result<Arc<Instance>, RegistryError> {
        let (instance, ticket) = self.apply_register(registration, true)?;
        ticket.wait().await.map_err(RegistryError::Store)?;
        Ok(instance)
    }

    fn apply_register(
        &self,
        registration: Registration,
        replace_id_elsewhere: bool,
    ) -> Result<(Arc<Instance>, Ticket), RegistryError> {
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
        // A new instance must fit the limits: checked before anything changes, under the lock
        // the change is made under. Moving an ID here removes it elsewhere in the same change.
        let elsewhere = if replace_id_elsewhere {
            state
                .services
                .iter()
                .filter(|(other, instances)| **other != service && instances.contains_key(&id))
                .count()
        } else {
            0
        };
        self.check_limits(&state, &service, &id, elsewhere)?;
        if replace_id_elsewhere {
            for (other, instances) in &mut state.services {
                if *other != service && instances.remove(&id).is_some() {
                    tracing::info!(
                        service = %other, instance = %id, moved_to = %service,
                        "instance deregistered: its ID was registered under another service"
                    );
                    changed.push((other.clone(), id.clone()));
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
        instances.insert(id.clone(), Arc::clone(&instance));
        self.watch_deadline(&mut state, instance.next_deadline());
        changed.push((service, id));
        let ticket = self.commit(state, &changed, true);
        Ok((instance, ticket))
    }

    /// Refuses a registration that would add an instance beyond the limits; `removed_elsewhere`
    /// instances leave in the same change.
    fn check_limits(
        &self,
        state: &State,
        service: &ServiceName,
        id: &InstanceId,
        removed_elsewhere: usize,
    ) -> Result<(), RegistryError> {
        let here = state.services.get(service);
        if here.is_some_and(|instances| instances.contains_key(id)) {
            return Ok(()); // a replacement
        }
        let limits = self.settings.limits;
        if here.map_or(0, BTreeMap::len) >= limits.per_service {
            return Err(RegistryError::LimitReached {
                limit: "max-instances-per-service",
                message: format!(
                    "service {:?} already has {} instances, the most allowed \
                     (--max-instances-per-service)",
                    service.as_str(),
                    limits.per_service
                ),
            });
        }
        let total: usize = state.services.values().map(BTreeMap::len).sum();
        if total.saturating_sub(removed_elsewhere) >= limits.total {
            return Err(RegistryError::LimitReached {
                limit: "max-instances",
                message: format!(
                    "the registry already holds {} instances, the most allowed (--max-instances)",
                    limits.total
                ),
            });
        }
        Ok(())
    }

    /// Removes an instance. Returns once durable.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), RegistryError> {
        let ticket = {
            let mut state = self.lock();
            let (service_name, removed) = remove_instance(&mut state, service, id)?;
            let id = removed.registration.id.clone();
            tracing::info!(service = %service_name, instance = %id, "instance deregistered");
            self.commit(state, &[(service_name, id)], true)
        };
        ticket.wait().await.map_err(RegistryError::Store)
    }

    /// A TTL heartbeat: renews every `ttl` check of the instance, or the one named `check`.
    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
        check: Option<&str>,
    ) -> Result<Arc<Instance>, RegistryError> {
        let (instance, ticket) =
            self.update_ttl_checks(service, id, check, Status::Passing, None)?;
        ticket.wait().await.map_err(RegistryError::Store)?;
        Ok(instance)
    }

    /// Sets the status of the instance's `ttl` checks (or the one named `check`); an instance
    /// without checks takes it as its own status. Counts as a heartbeat for those checks.
    pub async fn set_status(
        &self,
        service: &str,
        id: &str,
        check: Option<&str>,
        status: Status,
        output: String,
    ) -> Result<Arc<Instance>, RegistryError> {
        let (instance, ticket) =
            self.update_ttl_checks(service, id, check, status, Some(output))?;
        ticket.wait().await.map_err(RegistryError::Store)?;
        Ok(instance)
    }

    fn update_ttl_checks(
        &self,
        service: &str,
        id: &str,
        check: Option<&str>,
        status: Status,
        output: Option<String>,
    ) -> Result<(Arc<Instance>, Ticket), RegistryError> {
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
                    check.heartbeat_at = Some(wall);
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
        let key = (service_name, instance.registration.id.clone());
        let ticket = self.commit(state, &[key], true);
        Ok((instance, ticket))
    }

    /// Puts an instance in maintenance (out of DNS, still registered) or takes it out.
    pub async fn set_maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<Arc<Instance>, RegistryError> {
        let (instance, ticket) = self.apply_maintenance(service, id, reason)?;
        ticket.wait().await.map_err(RegistryError::Store)?;
        Ok(instance)
    }

    fn apply_maintenance(
        &self,
        service: &str,
        id: &str,
        reason: Option<String>,
    ) -> Result<(Arc<Instance>, Ticket), RegistryError> {
        let wall = SystemTime::now();
        let mut state = self.lock();
        let (service_name, mut instance) = find_instance(&state, service, id)?;
        let before = instance.status;
        instance.maintenance = reason;
        instance.refresh_status(wall);
        log_status(&instance, before, "maintenance over the API");
        let instance = Arc::new(instance);
        put_instance(&mut state, &service_name, Arc::clone(&instance));
        let key = (service_name, instance.registration.id.clone());
        let ticket = self.commit(state, &[key], true);
        Ok((instance, ticket))
    }

    /// Applies one active probe result to the check `spec` of an instance. A result for a
    /// check that no longer exists as probed (deregistered, or re-registered with another
    /// check) is dropped: `Ok(false)`. Returns whether the instance is still registered.
    pub fn record_probe(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        spec: &CheckSpec,
        outcome: Outcome,
        output: String,
    ) -> bool {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        let Some(current) = state.services.get(service).and_then(|m| m.get(id)) else {
            return false;
        };
        let Some(i) = current.checks.iter().position(|c| c.spec == *spec) else {
            return true;
        };
        let mut instance = Instance::clone(current);
        let check = &mut instance.checks[i];
        let before = ProbeState {
            status: check.status,
            streak: check.streak,
            probed: check.probed,
        };
        let after = transitions::next(before, outcome, spec);
        check.set(after.status, output, now, wall);
        check.streak = after.streak;
        check.probed = true;
        let previous = instance.status;
        let status_changed = instance.refresh_status(wall).is_some();
        let instance = Arc::new(instance);
        let deadline = instance.next_deadline();
        put_instance(&mut state, service, Arc::clone(&instance));
        if after.status != before.status || status_changed {
            log_status(&instance, previous, "active check");
            self.watch_deadline(&mut state, deadline);
            self.commit(state, &[(service.clone(), id.clone())], false);
        } else {
            state.stale_outputs.insert(service.clone());
        }
        true
    }

    /// Applies the passage of time: expires missed TTLs and removes instances critical for
    /// longer than their `deregister_after`. Returns the next instant worth waking for.
    pub fn expire_due(&self) -> Option<Instant> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        let mut changed: Vec<(ServiceName, InstanceId)> = Vec::new();
        let mut next: Option<Instant> = None;
        for (service, instances) in &mut state.services {
            instances.retain(|id, instance| {
                let mut updated = Instance::clone(instance);
                let before = updated.status;
                match updated.expire(now, wall) {
                    Expiry::Unchanged => {}
                    Expiry::Changed => {
                        updated.refresh_status(wall);
                        log_status(&updated, before, "ttl expired");
                        *instance = Arc::new(updated);
                        changed.push((service.clone(), id.clone()));
                    }
                    Expiry::Remove { check, after } => {
                        tracing::info!(
                            service = %service, instance = %id, check = %check,
                            after = %humantime::format_duration(after),
                            "instance deregistered: critical for longer than deregister_after"
                        );
                        changed.push((service.clone(), id.clone()));
                        return false;
                    }
                }
                next = next.into_iter().chain(instance.next_deadline()).min();
                true
            });
        }
        state.next_wake = next;
        if !changed.is_empty() {
            self.commit(state, &changed, false);
        }
        next
    }

    /// Applies changes that another server of a cluster committed to the shared store, as the
    /// cluster store's watch saw them, *without* writing them back: the store already has them.
    ///
    /// `accept` is asked, under the registry lock, about each instance before its change is
    /// applied; the cluster store refuses changes that are older than what this server already
    /// shows, or that would overwrite a change of its own still in flight (see
    /// `cluster::store`). With `complete`, `changes` is the whole registry (a fresh listing):
    /// instances it does not mention are removed too, if `accept` agrees.
    ///
    /// A change equal to what this server holds (the echo of its own write) changes nothing.
    /// Anything else is published like a local change: a new index, a new snapshot, blocking
    /// readers woken, the active check engine reconciled. Returns whether anything changed.
    pub fn apply_remote(
        &self,
        changes: Vec<Change>,
        complete: bool,
        accept: &mut dyn FnMut(&ServiceName, &InstanceId) -> bool,
    ) -> bool {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut state = self.lock();
        let mut changes = changes;
        if complete {
            let listed: BTreeSet<(ServiceName, InstanceId)> = changes
                .iter()
                .map(|c| {
                    let (service, id) = c.key();
                    (service.clone(), id.clone())
                })
                .collect();
            for (service, instances) in &state.services {
                for id in instances.keys() {
                    if !listed.contains(&(service.clone(), id.clone())) {
                        changes.push(Change::Delete {
                            service: service.clone(),
                            id: id.clone(),
                        });
                    }
                }
            }
        }
        let mut touched: Vec<(ServiceName, InstanceId)> = Vec::new();
        let mut next: Option<Instant> = None;
        for change in changes {
            let (service, id) = change.key();
            let (service, id) = (service.clone(), id.clone());
            let local = state
                .services
                .get(&service)
                .and_then(|m| m.get(&id))
                .cloned();
            match change {
                Change::Put(stored) => {
                    if local.as_ref().is_some_and(|l| l.to_stored() == *stored) {
                        continue;
                    }
                    if !accept(&service, &id) {
                        continue;
                    }
                    let instance = Instance::merge_remote(local.as_deref(), *stored, now, wall);
                    match &local {
                        Some(before) => {
                            log_status(&instance, before.status, "change from the cluster")
                        }
                        None => tracing::info!(
                            service = %service, instance = %id, status = %instance.status,
                            address = %instance.registration.address,
                            port = instance.registration.port,
                            origin = "cluster",
                            "instance registered"
                        ),
                    }
                    next = next.into_iter().chain(instance.next_deadline()).min();
                    put_instance(&mut state, &service, Arc::new(instance));
                }
                Change::Delete { .. } => {
                    if local.is_none() || !accept(&service, &id) {
                        continue;
                    }
                    if let Some(instances) = state.services.get_mut(&service) {
                        instances.remove(&id);
                    }
                    tracing::info!(
                        service = %service, instance = %id, origin = "cluster",
                        "instance deregistered"
                    );
                }
            }
            touched.push((service, id));
        }
        if touched.is_empty() {
            return false;
        }
        self.watch_deadline(&mut state, next);
        let services: Vec<ServiceName> = touched
            .iter()
            .map(|(service, _)| service.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index = self.rebuild(&mut state, &services, true);
        drop(state);
        self.changes.send_replace(index);
        true
    }

    /// Waits until the expiry task should run again: the deadline passed, or an earlier one
    /// appeared.
    pub async fn deadline_moved(&self) {
        self.deadline_moved.notified().await
    }

    /// Waits until `service` changes after `index`, or `wait` passes.
    pub async fn wait_for_service(&self, service: &str, index: u64, wait: Duration) {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            if self.service_index(service) > index {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the registry is shutting down.
                _ => return,
            }
        }
    }

    /// Waits until anything changes after `index`, or `wait` passes; returns the snapshot then
    /// current. For blocking reads of whole-registry views (Consul's `/v1/catalog/services`).
    pub async fn wait_for_change(&self, index: u64, wait: Duration) {
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            if self.index() > index {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the registry is shutting down.
                _ => return,
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

    /// Commits a change to the instances `touched`: bumps the index, queues each instance's
    /// new state (or its removal) for the store, rebuilds the services' entries and publishes
    /// the new snapshot before the lock is released, then wakes blocking readers. The ticket
    /// resolves when the change is durable (`wait`), at once otherwise.
    fn commit(
        &self,
        mut state: MutexGuard<'_, State>,
        touched: &[(ServiceName, InstanceId)],
        wait: bool,
    ) -> Ticket {
        let services: Vec<ServiceName> = touched
            .iter()
            .map(|(service, _)| service.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index = self.rebuild(&mut state, &services, true);
        let mut ticket = Ticket::done();
        let committer = self
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(committer) = committer.as_ref() {
            for (i, (service, id)) in touched.iter().enumerate() {
                let change = match state.services.get(service).and_then(|m| m.get(id)) {
                    Some(instance) => Change::Put(Box::new(instance.to_stored())),
                    None => Change::Delete {
                        service: service.clone(),
                        id: id.clone(),
                    },
                };
                // Changes are queued in order; the last one's ticket resolves after all the
                // others (they share its batch or an earlier one).
                if wait && i + 1 == touched.len() {
                    ticket = committer.submit(index, change);
                } else {
                    committer.submit_detached(index, change);
                }
            }
        }
        drop(committer);
        drop(state);
        self.changes.send_replace(index);
        ticket
    }

    /// Rebuilds the entries of `services` and stores a new snapshot; with `bump`, under a new
    /// index (a change), else under the current one (fresher outputs only). Returns the index.
    fn rebuild(&self, state: &mut State, services: &[ServiceName], bump: bool) -> u64 {
        if bump {
            state.index += 1;
        }
        let index = state.index;
        let previous = self.snapshot.load();
        let mut map = BTreeMap::clone(&previous.services);
        for service in services {
            if bump {
                state.service_index.insert(service.clone(), index);
                state.stale_outputs.remove(service);
            }
            let entry_index = state.service_index.get(service).copied().unwrap_or(index);
            let instances: Vec<Arc<Instance>> = state
                .services
                .get(service)
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            if instances.is_empty() {
                state.services.remove(service);
                map.remove(service);
            } else {
                let entry = ServiceEntry::build(
                    service.clone(),
                    entry_index,
                    instances,
                    &self.settings.dns,
                    previous.services.get(service).map(|e| &**e),
                );
                map.insert(service.clone(), Arc::new(entry));
            }
        }
        self.snapshot.store(Arc::new(Snapshot {
            index,
            services: Arc::new(map),
        }));
        index
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
