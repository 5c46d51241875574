//! The active health-check engine: one task per instance that has `http` or `tcp` checks.
//!
//! The engine follows the registry: after every committed change it compares the services that
//! changed (by snapshot entry identity) against what it schedules, starts a task for each new
//! instance, replaces the task of an instance whose probe plan changed (re-registration with
//! other checks or another address), and cancels the task of a removed instance at once — an
//! in-flight probe is dropped, not awaited.
//!
//! Scheduling: a new instance is probed at once; its next probe is placed at a random point of
//! the following interval, and then every interval, so thousands of checks registered together
//! spread out instead of firing in lockstep. One task runs an instance's checks one after
//! another, so one instance never has two probes in flight. Lateness (start time − scheduled
//! time) is recorded in [`CheckStats`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probe::{Prober, Target};
use crate::registry::instance::Instance;
use crate::registry::model::{Address, CheckKind, CheckSpec, InstanceId, ServiceName};
use crate::registry::{Registry, Snapshot};

/// Counters of the engine, shared with readers (the HTTP health endpoint, benchmarks).
#[derive(Debug)]
pub struct CheckStats {
    pub scheduled_instances: AtomicU64,
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    /// Lateness histogram since start: bucket `i` counts probes that started `i` ms late;
    /// the last bucket counts everything from [`LATENESS_BUCKETS`] − 1 ms on.
    lateness_ms: Vec<AtomicU64>,
    /// The same over rotating windows of [`RECENT_WINDOW`]: the current one fills while the
    /// other holds the last complete window ("recent" lateness, free of start-up bursts).
    recent: [Vec<AtomicU64>; 2],
    current: AtomicU64,
    window_started_ms: AtomicU64,
    created: std::time::Instant,
    /// Sum of all lateness, in microseconds.
    lateness_sum_us: AtomicU64,
}

/// The length of the "recent" lateness window.
pub const RECENT_WINDOW: Duration = Duration::from_secs(10);

/// Buckets of the lateness histogram (1 ms each).
pub const LATENESS_BUCKETS: usize = 1001;

impl Default for CheckStats {
    fn default() -> Self {
        Self {
            scheduled_instances: AtomicU64::new(0),
            runs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            lateness_ms: (0..LATENESS_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            recent: [
                (0..LATENESS_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                (0..LATENESS_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            ],
            current: AtomicU64::new(0),
            window_started_ms: AtomicU64::new(0),
            created: std::time::Instant::now(),
            lateness_sum_us: AtomicU64::new(0),
        }
    }
}

impl CheckStats {
    fn record_lateness(&self, late: Duration) {
        let bucket = (late.as_millis() as usize).min(LATENESS_BUCKETS - 1);
        self.lateness_ms[bucket].fetch_add(1, Ordering::Relaxed);
        let now_ms = self.created.elapsed().as_millis() as u64;
        let started = self.window_started_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(started) >= RECENT_WINDOW.as_millis() as u64
            && self
                .window_started_ms
                .compare_exchange(started, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // This caller rotates: the other window is cleared and becomes the current one.
            let next = 1 - self.current.load(Ordering::Relaxed);
            for count in &self.recent[next as usize] {
                count.store(0, Ordering::Relaxed);
            }
            self.current.store(next, Ordering::Relaxed);
        }
        let current = self.current.load(Ordering::Relaxed) as usize;
        self.recent[current][bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.lateness_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// The lateness histogram with buckets ending at `bounds_ms` (ascending, whole
    /// milliseconds, below [`LATENESS_BUCKETS`]), then everything above: per-bucket counts
    /// (not cumulative), the total count, and the sum in seconds. A probe `n` ms and a bit
    /// late counts in the bucket whose bound is above `n`.
    pub fn lateness_histogram(&self, bounds_ms: &[usize]) -> (Vec<u64>, u64, f64) {
        let mut buckets = vec![0; bounds_ms.len() + 1];
        for (ms, count) in self.lateness_ms.iter().enumerate() {
            let bucket = bounds_ms
                .iter()
                .position(|&bound| ms < bound)
                .unwrap_or(bounds_ms.len());
            buckets[bucket] += count.load(Ordering::Relaxed);
        }
        let count = buckets.iter().sum();
        let sum = self.lateness_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, count, sum)
    }

    /// The lateness quantile `q` (0–1) since start, in whole milliseconds; `None` before
    /// any run.
    pub fn lateness_quantile_ms(&self, q: f64) -> Option<u64> {
        quantile(&self.lateness_ms, q)
    }

    /// The lateness quantile `q` over the last complete [`RECENT_WINDOW`] (or the current one
    /// before the first window completes).
    pub fn recent_lateness_quantile_ms(&self, q: f64) -> Option<u64> {
        let current = self.current.load(Ordering::Relaxed) as usize;
        quantile(&self.recent[1 - current], q).or_else(|| quantile(&self.recent[current], q))
    }
}

fn quantile(histogram: &[AtomicU64], q: f64) -> Option<u64> {
    {
        let counts: Vec<u64> = histogram
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(LATENESS_BUCKETS as u64 - 1)
    }
}

/// What one instance's task probes; a change replaces the task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    checks: Vec<(CheckSpec, Target)>,
}

impl Plan {
    fn of(instance: &Instance) -> Option<Self> {
        let reg = &instance.registration;
        let checks: Vec<(CheckSpec, Target)> = reg
            .checks
            .iter()
            .filter_map(|spec| {
                let target = match &spec.kind {
                    CheckKind::Http {
                        url,
                        method,
                        headers,
                        tls_skip_verify,
                    } => Target::Http {
                        url: url.clone(),
                        method: method.clone(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        tls_skip_verify: *tls_skip_verify,
                    },
                    CheckKind::Tcp { target } => Target::Tcp {
                        address: target
                            .clone()
                            .unwrap_or_else(|| host_port(&reg.address, reg.port)),
                    },
                    CheckKind::Ttl { .. } => return None,
                };
                Some((spec.clone(), target))
            })
            .collect();
        (!checks.is_empty()).then_some(Self { checks })
    }
}

fn host_port(address: &Address, port: u16) -> String {
    match address {
        Address::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
        Address::Host(host) => format!("{host}:{port}"),
    }
}

struct Scheduled {
    plan: Plan,
    cancel: CancellationToken,
}

type Key = (ServiceName, InstanceId);

/// Runs the engine until `shutdown`.
pub async fn run(
    registry: Arc<Registry>,
    prober: Prober,
    stats: Arc<CheckStats>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let mut scheduled: HashMap<Key, Scheduled> = HashMap::new();
    let mut changes = registry.subscribe();
    let mut last: Arc<Snapshot> = Arc::new(Snapshot::default());
    loop {
        changes.borrow_and_update();
        let snapshot = registry.snapshot();
        reconcile(&last, &snapshot, &mut scheduled, |key, plan, cancel| {
            tasks.spawn(probe_instance(
                Arc::clone(&registry),
                prober.clone(),
                Arc::clone(&stats),
                key,
                plan,
                cancel,
            ));
        });
        stats
            .scheduled_instances
            .store(scheduled.len() as u64, Ordering::Relaxed);
        last = snapshot;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    for task in scheduled.values() {
        task.cancel.cancel();
    }
    tasks.close();
    tasks.wait().await;
}

/// Brings `scheduled` in line with `snapshot`, looking only at services whose entry changed
/// since `last`.
fn reconcile(
    last: &Snapshot,
    snapshot: &Snapshot,
    scheduled: &mut HashMap<Key, Scheduled>,
    mut spawn: impl FnMut(Key, Plan, CancellationToken),
) {
    // Both maps are sorted by name and share the entries of unchanged services: walk them
    // side by side, comparing pointers, so a change costs one pass of pointer compares rather
    // than a lookup per service.
    let mut changed: Vec<&ServiceName> = Vec::new();
    let mut removed: Vec<&ServiceName> = Vec::new();
    let mut old = last.services.iter().peekable();
    let mut new = snapshot.services.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (Some((_, a)), Some((_, b))) if Arc::ptr_eq(a, b) => {
                old.next();
                new.next();
            }
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Equal => {
                    changed.push(b);
                    old.next();
                    new.next();
                }
                std::cmp::Ordering::Less => {
                    removed.push(a);
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    changed.push(b);
                    new.next();
                }
            },
            (Some((a, _)), None) => {
                removed.push(a);
                old.next();
            }
            (None, Some((b, _))) => {
                changed.push(b);
                new.next();
            }
            (None, None) => break,
        }
    }

    for service in removed {
        scheduled.retain(|(s, _), task| {
            let keep = s != service;
            if !keep {
                task.cancel.cancel();
            }
            keep
        });
    }
    for service in changed {
        let Some(entry) = snapshot.services.get(service) else {
            continue;
        };
        let mut present: Vec<&InstanceId> = Vec::with_capacity(entry.instances.len());
        for instance in &entry.instances {
            let id = &instance.registration.id;
            present.push(id);
            let key = (service.clone(), id.clone());
            let plan = Plan::of(instance);
            match (scheduled.get(&key), plan) {
                (Some(task), Some(plan)) if task.plan == plan => {}
                (existing, Some(plan)) => {
                    if let Some(task) = existing {
                        task.cancel.cancel();
                    }
                    let cancel = CancellationToken::new();
                    spawn(key.clone(), plan.clone(), cancel.clone());
                    scheduled.insert(key, Scheduled { plan, cancel });
                }
                (Some(task), None) => {
                    task.cancel.cancel();
                    scheduled.remove(&key);
                }
                (None, None) => {}
            }
        }
        scheduled.retain(|(s, id), task| {
            let keep = s != service || present.contains(&id);
            if !keep {
                task.cancel.cancel();
            }
            keep
        });
    }
}

/// Probes one instance's checks on their schedule until cancelled or deregistered.
async fn probe_instance(
    registry: Arc<Registry>,
    prober: Prober,
    stats: Arc<CheckStats>,
    (service, id): Key,
    plan: Plan,
    cancel: CancellationToken,
) {
    let start = Instant::now();
    // When each check is due next; every check is due at once.
    let mut due: Vec<Instant> = vec![start; plan.checks.len()];
    let mut first = vec![true; plan.checks.len()];
    loop {
        let Some((i, at)) = due.iter().copied().enumerate().min_by_key(|&(_, at)| at) else {
            return;
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
        }
        stats.record_lateness(Instant::now().saturating_duration_since(at));
        let (spec, target) = &plan.checks[i];
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            result = prober.probe(target, spec.timeout) => result,
        };
        stats.runs.fetch_add(1, Ordering::Relaxed);
        if result.outcome != super::transitions::Outcome::Success {
            stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        if cancel.is_cancelled() {
            return;
        }
        if !registry.record_probe(&service, &id, spec, result.outcome, result.output) {
            return;
        }
        let next = if std::mem::replace(&mut first[i], false) {
            // Spread: the second probe lands at a random point of the next interval.
            at + spec.interval + spec.interval.mul_f64(rand::rng().random::<f64>())
        } else {
            at + spec.interval
        };
        // A probe that overran its interval does not cause a burst of catch-up probes.
        let now = Instant::now();
        due[i] = if next < now {
            let behind = now - next;
            let skip = behind.as_nanos() / spec.interval.as_nanos().max(1) + 1;
            next + spec.interval * u32::try_from(skip).unwrap_or(u32::MAX)
        } else {
            next
        };
    }
}
