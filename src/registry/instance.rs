//! One registered instance and the state of its checks: pure state transitions, no I/O.
//!
//! Everything here takes the current time as an argument, so the rules (TTL expiry, status
//! derivation, `deregister_after`) are unit-tested without clocks or sleeps. The [`Registry`]
//! owns the instances and calls these methods under its lock.
//!
//! [`Registry`]: super::Registry

use std::time::{Duration, Instant, SystemTime};

use super::model::{CheckKind, CheckSpec, InstanceStatus, Registration, Status};
use crate::store::{StoredCheck, StoredInstance};

/// The live state of one check.
#[derive(Debug, Clone)]
pub struct CheckState {
    pub spec: CheckSpec,
    pub status: Status,
    /// The last output: a probe's result, a heartbeat note, or why a TTL expired.
    pub output: String,
    pub last_change: SystemTime,
    /// When a `ttl` check turns critical unless a heartbeat comes first.
    pub ttl_deadline: Option<Instant>,
    /// `ttl` checks: the wall-clock time of the last heartbeat (registration and restore count
    /// as one). Stored, so that in a cluster the server deciding expiry learns of heartbeats
    /// other servers took.
    pub heartbeat_at: Option<SystemTime>,
    /// Since when this check has been critical (for `deregister_after`).
    pub critical_since: Option<Instant>,
    /// Consecutive probe results in the direction opposite to the current status.
    pub streak: u32,
    /// Has an active probe reported on this check yet?
    pub probed: bool,
}

impl CheckState {
    fn new(spec: CheckSpec, now: Instant, wall: SystemTime) -> Self {
        let status = spec.initial_status;
        let output = match (&spec.kind, status) {
            (CheckKind::Ttl { .. }, _) => {
                String::from("registered (counts as the first heartbeat)")
            }
            (_, Status::Critical) => String::from("awaiting the first probe"),
            _ => String::new(),
        };
        let (ttl_deadline, heartbeat_at) = match spec.kind {
            CheckKind::Ttl { ttl } => (Some(now + ttl), Some(wall)),
            _ => (None, None),
        };
        Self {
            critical_since: (status == Status::Critical).then_some(now),
            spec,
            status,
            output,
            last_change: wall,
            ttl_deadline,
            heartbeat_at,
            streak: 0,
            probed: false,
        }
    }

    /// Sets the status and output; returns whether the status changed.
    pub fn set(&mut self, status: Status, output: String, now: Instant, wall: SystemTime) -> bool {
        self.output = output;
        self.streak = 0;
        if self.status == status {
            return false;
        }
        self.status = status;
        self.last_change = wall;
        self.critical_since = (status == Status::Critical).then_some(now);
        true
    }

    /// The instant this check asks to be looked at again (TTL expiry or removal), if any.
    fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .ttl_deadline
            .filter(|_| self.status != Status::Critical);
        let removal = self
            .critical_since
            .zip(self.spec.deregister_after)
            .map(|(since, after)| since + after);
        expiry.into_iter().chain(removal).min()
    }
}

/// A registered instance: its registration, checks, maintenance flag and derived status.
#[derive(Debug, Clone)]
pub struct Instance {
    pub registration: Registration,
    pub checks: Vec<CheckState>,
    /// The status of an instance without checks (set through `/status`; passing by default).
    pub own_status: Status,
    pub own_output: String,
    /// `Some(reason)` while drained.
    pub maintenance: Option<String>,
    /// Derived from the above; kept so readers need not recompute it.
    pub status: InstanceStatus,
    pub last_change: SystemTime,
    pub registered_at: SystemTime,
}

/// What happened to an instance when time passed.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing changed.
    Unchanged,
    /// Some TTL check expired; the instance status may have changed.
    Changed,
    /// A check was critical longer than its `deregister_after`: remove the instance.
    Remove { check: String, after: Duration },
}

impl Instance {
    pub fn new(registration: Registration, now: Instant, wall: SystemTime) -> Self {
        let checks = registration
            .checks
            .iter()
            .map(|spec| CheckState::new(spec.clone(), now, wall))
            .collect();
        let mut instance = Self {
            registration,
            checks,
            own_status: Status::Passing,
            own_output: String::new(),
            maintenance: None,
            status: InstanceStatus::Passing,
            last_change: wall,
            registered_at: wall,
        };
        instance.status = instance.derive_status();
        instance
    }

    /// Replaces the registration, keeping what is known about unchanged checks, the
    /// maintenance flag and the own status. Registering again counts as a heartbeat.
    pub fn reregister(&mut self, registration: Registration, now: Instant, wall: SystemTime) {
        let mut old = std::mem::take(&mut self.checks);
        self.checks = registration
            .checks
            .iter()
            .map(|spec| match old.iter().position(|c| c.spec == *spec) {
                Some(i) => {
                    let mut kept = old.swap_remove(i);
                    if let CheckKind::Ttl { ttl } = spec.kind {
                        kept.ttl_deadline = Some(now + ttl);
                        kept.heartbeat_at = Some(wall);
                        kept.set(
                            Status::Passing,
                            String::from("registered again (counts as a heartbeat)"),
                            now,
                            wall,
                        );
                    }
                    kept
                }
                None => CheckState::new(spec.clone(), now, wall),
            })
            .collect();
        self.registration = registration;
        self.refresh_status(wall);
    }

    /// The worst of the checks, the own status without checks, or maintenance.
    pub fn derive_status(&self) -> InstanceStatus {
        if self.maintenance.is_some() {
            return InstanceStatus::Maintenance;
        }
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(self.own_status)
            .into()
    }

    /// Recomputes the derived status; returns the previous one if it changed.
    pub fn refresh_status(&mut self, wall: SystemTime) -> Option<InstanceStatus> {
        let status = self.derive_status();
        if status == self.status {
            return None;
        }
        let previous = std::mem::replace(&mut self.status, status);
        self.last_change = wall;
        Some(previous)
    }

    /// The last output worth showing: the worst check's, or the own one.
    pub fn output(&self) -> &str {
        self.checks
            .iter()
            .max_by_key(|c| c.status)
            .map_or(self.own_output.as_str(), |c| c.output.as_str())
    }

    /// Applies the passage of time: expires TTL checks whose deadline passed and reports a
    /// check critical for longer than its `deregister_after`.
    pub fn expire(&mut self, now: Instant, wall: SystemTime) -> Expiry {
        let mut changed = false;
        for check in &mut self.checks {
            let (Some(deadline), CheckKind::Ttl { ttl }) = (check.ttl_deadline, &check.spec.kind)
            else {
                continue;
            };
            if deadline <= now && check.status != Status::Critical {
                let output = format!(
                    "TTL expired: no heartbeat for {}",
                    humantime::format_duration(*ttl)
                );
                changed |= check.set(Status::Critical, output, now, wall);
            }
        }
        for check in &self.checks {
            if let (Some(since), Some(after)) = (check.critical_since, check.spec.deregister_after)
                && now >= since + after
            {
                return Expiry::Remove {
                    check: check.spec.name.clone(),
                    after,
                };
            }
        }
        if changed {
            Expiry::Changed
        } else {
            Expiry::Unchanged
        }
    }

    /// What the store keeps of this instance.
    pub fn to_stored(&self) -> StoredInstance {
        StoredInstance {
            registration: self.registration.clone(),
            maintenance: self.maintenance.clone(),
            own_status: self.own_status,
            own_output: self.own_output.clone(),
            checks: self
                .checks
                .iter()
                .map(|c| StoredCheck {
                    name: c.spec.name.clone(),
                    status: c.status,
                    output: c.output.clone(),
                    last_change: c.last_change,
                    heartbeat_at: c.heartbeat_at,
                })
                .collect(),
            registered_at: self.registered_at,
            last_change: self.last_change,
        }
    }

    /// An instance restored from the store at `now`: statuses as stored, TTL deadlines and
    /// `deregister_after` clocks restarted, active checks not yet probed (they run at once).
    pub fn from_stored(stored: StoredInstance, now: Instant, wall: SystemTime) -> Self {
        let mut instance = Self::new(stored.registration, now, wall);
        for check in &mut instance.checks {
            if let Some(saved) = stored.checks.iter().find(|s| s.name == check.spec.name) {
                check.set(saved.status, saved.output.clone(), now, saved.last_change);
                check.last_change = saved.last_change;
            }
        }
        instance.maintenance = stored.maintenance;
        instance.own_status = stored.own_status;
        instance.own_output = stored.own_output;
        instance.registered_at = stored.registered_at;
        instance.status = instance.derive_status();
        instance.last_change = stored.last_change;
        instance
    }

    /// An instance as another server of a cluster stored it, merged with what this server
    /// knows of it (`local`), at `now`.
    ///
    /// The stored form has no deadlines, so they are rebuilt: a `ttl` check's deadline counts
    /// from its stored heartbeat time (a heartbeat taken by any server renews it here, minus the
    /// time it took to arrive; clocks are assumed to agree within a fraction of the TTL), and a
    /// check that turned critical elsewhere counts its `deregister_after` from its stored last
    /// change. A check whose status did not change keeps this server's probe streak and
    /// clocks.
    pub fn merge_remote(
        local: Option<&Instance>,
        stored: StoredInstance,
        now: Instant,
        wall: SystemTime,
    ) -> Self {
        let age = |at: SystemTime| wall.duration_since(at).unwrap_or(Duration::ZERO);
        let saved_checks = stored.checks.clone();
        let mut merged = Self::from_stored(stored, now, wall);
        for check in &mut merged.checks {
            let saved = saved_checks.iter().find(|s| s.name == check.spec.name);
            let known = local.and_then(|l| l.checks.iter().find(|c| c.spec == check.spec));
            if let CheckKind::Ttl { ttl } = check.spec.kind {
                match (saved.and_then(|s| s.heartbeat_at), known) {
                    (Some(at), _) => {
                        check.heartbeat_at = Some(at);
                        check.ttl_deadline = Some(now + ttl.saturating_sub(age(at)));
                    }
                    (None, Some(known)) => {
                        check.heartbeat_at = known.heartbeat_at;
                        check.ttl_deadline = known.ttl_deadline;
                    }
                    (None, None) => {}
                }
            }
            match known {
                Some(known) if known.status == check.status => {
                    check.critical_since = known.critical_since;
                    check.streak = known.streak;
                    check.probed = known.probed;
                }
                _ if check.status == Status::Critical => {
                    check.critical_since =
                        Some(now.checked_sub(age(check.last_change)).unwrap_or(now));
                }
                _ => {}
            }
        }
        merged
    }

    /// The earliest instant at which [`Instance::expire`] may change something.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.checks
            .iter()
            .filter_map(CheckState::next_deadline)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{Address, InstanceId, Protocol, ServiceName};

    fn ttl_check(name: &str, ttl_ms: u64, deregister_ms: Option<u64>) -> CheckSpec {
        CheckSpec {
            name: name.into(),
            kind: CheckKind::Ttl {
                ttl: Duration::from_millis(ttl_ms),
            },
            interval: CheckSpec::DEFAULT_INTERVAL,
            timeout: CheckSpec::DEFAULT_TIMEOUT,
            failures_before_critical: 1,
            successes_before_passing: 1,
            deregister_after: deregister_ms.map(Duration::from_millis),
            initial_status: Status::Passing,
        }
    }

    fn registration(checks: Vec<CheckSpec>) -> Registration {
        Registration {
            service: ServiceName::try_from("web").unwrap(),
            id: InstanceId::try_from("web-1").unwrap(),
            address: Address::Ip("10.0.0.1".parse().unwrap()),
            port: 80,
            protocol: Protocol::Tcp,
            priority: 0,
            weight: 1,
            warning_weight: 1,
            ports: Default::default(),
            tags: vec![],
            meta: Default::default(),
            checks,
        }
    }

    #[test]
    fn without_checks_an_instance_is_passing() {
        let t0 = Instant::now();
        let i = Instance::new(registration(vec![]), t0, SystemTime::now());
        assert_eq!(i.status, InstanceStatus::Passing);
        assert_eq!(i.next_deadline(), None);
    }

    #[test]
    fn a_missed_ttl_turns_critical_and_removal_follows() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut i = Instance::new(
            registration(vec![ttl_check("ttl", 100, Some(1000))]),
            t0,
            wall,
        );
        assert_eq!(i.status, InstanceStatus::Passing);
        assert_eq!(i.next_deadline(), Some(t0 + Duration::from_millis(100)));

        assert_eq!(
            i.expire(t0 + Duration::from_millis(99), wall),
            Expiry::Unchanged
        );
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(i.expire(t1, wall), Expiry::Changed);
        assert_eq!(i.refresh_status(wall), Some(InstanceStatus::Passing));
        assert_eq!(i.status, InstanceStatus::Critical);
        assert!(i.output().starts_with("TTL expired"), "{}", i.output());
        assert_eq!(i.next_deadline(), Some(t1 + Duration::from_millis(1000)));
        assert!(matches!(
            i.expire(t1 + Duration::from_millis(1000), wall),
            Expiry::Remove { .. }
        ));
    }

    #[test]
    fn maintenance_overrides_and_the_worst_check_wins() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut i = Instance::new(
            registration(vec![ttl_check("a", 1000, None), ttl_check("b", 1000, None)]),
            t0,
            wall,
        );
        i.checks[1].set(Status::Warning, "slow".into(), t0, wall);
        i.refresh_status(wall);
        assert_eq!(i.status, InstanceStatus::Warning);
        assert_eq!(i.output(), "slow");
        i.maintenance = Some("deploy".into());
        i.refresh_status(wall);
        assert_eq!(i.status, InstanceStatus::Maintenance);
    }

    #[test]
    fn a_remote_heartbeat_renews_the_deadline_from_its_own_time() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let local = Instance::new(registration(vec![ttl_check("a", 10_000, None)]), t0, wall);
        // Another server took a heartbeat 2 s after registration; it arrives 3 s after it.
        let mut stored = local.to_stored();
        stored.checks[0].heartbeat_at = Some(wall + Duration::from_secs(2));
        let t1 = t0 + Duration::from_secs(3);
        let merged =
            Instance::merge_remote(Some(&local), stored, t1, wall + Duration::from_secs(3));
        assert_eq!(
            merged.checks[0].ttl_deadline,
            Some(t1 + Duration::from_secs(9))
        );
        // Without a stored heartbeat time, the local deadline stands.
        let mut stored = local.to_stored();
        stored.checks[0].heartbeat_at = None;
        let merged = Instance::merge_remote(Some(&local), stored, t1, wall);
        assert_eq!(merged.checks[0].ttl_deadline, local.checks[0].ttl_deadline);
    }

    #[test]
    fn a_check_turned_critical_elsewhere_counts_deregister_after_from_its_change() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let local = Instance::new(
            registration(vec![ttl_check("a", 100, Some(60_000))]),
            t0,
            wall,
        );
        let mut stored = local.to_stored();
        stored.checks[0].status = Status::Critical;
        stored.checks[0].last_change = wall + Duration::from_secs(1);
        let t1 = t0 + Duration::from_secs(11);
        let merged =
            Instance::merge_remote(Some(&local), stored, t1, wall + Duration::from_secs(11));
        assert_eq!(merged.status, InstanceStatus::Critical);
        assert_eq!(
            merged.checks[0].critical_since,
            Some(t1 - Duration::from_secs(10))
        );
    }

    #[test]
    fn reregistering_keeps_unchanged_checks_and_renews_ttls() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut i = Instance::new(registration(vec![ttl_check("a", 100, None)]), t0, wall);
        let t1 = t0 + Duration::from_millis(150);
        i.expire(t1, wall);
        i.refresh_status(wall);
        assert_eq!(i.status, InstanceStatus::Critical);
        i.reregister(registration(vec![ttl_check("a", 100, None)]), t1, wall);
        assert_eq!(i.status, InstanceStatus::Passing);
        assert_eq!(i.next_deadline(), Some(t1 + Duration::from_millis(100)));
    }
}
