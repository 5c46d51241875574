//! The etcd [`Store`]: writes the registry's changes to etcd, and keeps the mirror of what
//! etcd holds.
//!
//! **Writes.** The registry's commit thread hands over batches (at most [`MAX_TXN_OPS`]
//! instances, etcd's default limit of operations per transaction); each batch is one etcd
//! transaction of puts and deletes, so it is committed whole or not at all. The write returns
//! — and the HTTP call is answered — only after etcd committed it (a quorum of members has it
//! on disk). If etcd does not answer within [`REQUEST_TIMEOUT`], the write fails, the caller
//! gets 503, and the registry reverts to the mirror. (Within that time a failed attempt is
//! retried, so losing one member of a cluster costs a retry, not an error.)
//!
//! **The mirror** is etcd's registry as this server last saw it: fed by the listing and the
//! watch ([`super::follow`]), never by this server's own writes (those come back through the
//! watch like anyone's). [`Store::load`] returns it, so reverting after a failed write goes back
//! to what etcd is known to hold.
//!
//! **Ordering with the watch.** This server applies its own changes at once (read-your-writes)
//! and writes them in the background; meanwhile the watch delivers other servers' changes. The
//! per-instance rules of [`Shared::accept`] keep the two consistent:
//! - while a change of this server to an instance is in flight, changes to that instance from
//!   the watch are held back (its change is about to overwrite them in etcd anyway); when the
//!   write is committed at revision R, the mirror's state of the instance is applied if it is
//!   newer than R;
//! - a change from the watch is applied only if its revision is newer than the last one this
//!   server applied or wrote for that instance, so the echo of a server's own write, and
//!   anything older, change nothing.
//!
//! Two servers changing one instance at the same moment: the later transaction in etcd wins
//! whole (last writer wins per instance), and every server converges to it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use etcd_client::{Client, Txn, TxnOp};
use tokio::sync::mpsc::UnboundedSender;

use super::{REQUEST_TIMEOUT, instance_key};
use crate::registry::model::{InstanceId, ServiceName};
use crate::store::{Change, Restored, Store, StoreError, StoredInstance};

/// The pause between two attempts of one write.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// An instance: its service and id.
pub type Key = (ServiceName, InstanceId);

/// One instance in the mirror: the etcd revision of its last change, and its value (`None`
/// once deleted, so that older events for it are recognised).
#[derive(Debug, Clone)]
pub struct Mirrored {
    pub revision: i64,
    pub instance: Option<StoredInstance>,
}

/// What the store, the watch task and the registry's `accept` callback share. Lock order:
/// the registry's lock first, then this one; never call the registry while holding it.
#[derive(Debug, Default)]
pub struct Shared {
    mirror: HashMap<Key, Mirrored>,
    /// The highest etcd revision seen.
    pub revision: i64,
    /// Changes of this server queued or being written, per instance.
    pending: HashMap<Key, u32>,
    /// The newest revision this server applied or wrote, per instance.
    applied: HashMap<Key, i64>,
    /// Instances whose watch changes were held back while a write was in flight.
    deferred: HashSet<Key>,
}

impl Shared {
    /// The registry's `accept` rule for a change of `key` at `revision` from the watch.
    pub fn accept(&mut self, key: &Key, revision: i64) -> bool {
        if self.pending.get(key).is_some_and(|n| *n > 0) {
            self.deferred.insert(key.clone());
            return false;
        }
        if self.applied.get(key).is_some_and(|r| *r >= revision) {
            return false;
        }
        self.applied.insert(key.clone(), revision);
        true
    }

    /// Records a change seen in etcd.
    pub fn observe(&mut self, key: Key, revision: i64, instance: Option<StoredInstance>) {
        self.revision = self.revision.max(revision);
        let newer = self
            .mirror
            .get(&key)
            .is_none_or(|known| known.revision <= revision);
        if newer {
            self.mirror.insert(key, Mirrored { revision, instance });
        }
    }

    /// The mirror's state of one instance.
    pub fn mirrored(&self, key: &Key) -> Option<&Mirrored> {
        self.mirror.get(key)
    }

    /// Starts the mirror from the local cache (revisions unknown: any listing is newer).
    pub fn restore_cache(&mut self, restored: Restored) {
        self.revision = i64::try_from(restored.index).unwrap_or(0);
        for instance in restored.instances {
            let key = (
                instance.registration.service.clone(),
                instance.registration.id.clone(),
            );
            self.mirror.insert(
                key,
                Mirrored {
                    revision: 0,
                    instance: Some(instance),
                },
            );
        }
    }

    /// Replaces the mirror with a complete listing at `revision`. Returns the changes that
    /// bring the local cache from the old mirror to the new one.
    pub fn replace_with_listing(
        &mut self,
        revision: i64,
        listed: &[(Key, i64, StoredInstance)],
    ) -> Vec<Change> {
        let mut cache_changes = Vec::new();
        let mut mirror = HashMap::with_capacity(listed.len());
        for (key, modified, instance) in listed {
            let unchanged = self
                .mirror
                .get(key)
                .and_then(|m| m.instance.as_ref())
                .is_some_and(|known| known == instance);
            if !unchanged {
                cache_changes.push(Change::Put(Box::new(instance.clone())));
            }
            mirror.insert(
                key.clone(),
                Mirrored {
                    revision: *modified,
                    instance: Some(instance.clone()),
                },
            );
        }
        for (key, known) in &self.mirror {
            if known.instance.is_some() && !mirror.contains_key(key) {
                cache_changes.push(Change::Delete {
                    service: key.0.clone(),
                    id: key.1.clone(),
                });
                mirror.insert(
                    key.clone(),
                    Mirrored {
                        revision,
                        instance: None,
                    },
                );
            }
        }
        self.mirror = mirror;
        self.revision = self.revision.max(revision);
        cache_changes
    }
}

/// Locks the shared state; a panic elsewhere leaves it usable (every update is one step).
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The store. Its writes run on the registry's commit thread, which blocks on the runtime.
pub struct EtcdStore {
    client: Client,
    runtime: tokio::runtime::Handle,
    instances_prefix: String,
    endpoints: String,
    shared: Arc<Mutex<Shared>>,
    /// Tells the watch task about instances whose held-back changes are now due.
    redo: UnboundedSender<Key>,
}

impl EtcdStore {
    pub fn new(
        client: Client,
        runtime: tokio::runtime::Handle,
        instances_prefix: String,
        endpoints: String,
        shared: Arc<Mutex<Shared>>,
        redo: UnboundedSender<Key>,
    ) -> Self {
        Self {
            client,
            runtime,
            instances_prefix,
            endpoints,
            shared,
            redo,
        }
    }

    fn key_of(change: &Change) -> Key {
        let (service, id) = change.key();
        (service.clone(), id.clone())
    }

    /// Runs one transaction; returns the revision etcd committed it at.
    fn commit(&self, changes: &[Change]) -> Result<i64, String> {
        // etcd refuses a transaction that names a key twice: keep each instance's last change.
        let mut seen = HashSet::new();
        let mut operations = Vec::with_capacity(changes.len());
        for change in changes.iter().rev() {
            let (service, id) = change.key();
            let key = instance_key(&self.instances_prefix, service.as_str(), id.as_str());
            if !seen.insert(key.clone()) {
                continue;
            }
            operations.push(match change {
                Change::Put(instance) => {
                    let value = serde_json::to_vec(instance).map_err(|e| e.to_string())?;
                    TxnOp::put(key, value, None)
                }
                Change::Delete { .. } => TxnOp::delete(key, None),
            });
        }
        operations.reverse();
        let mut kv = self.client.kv_client();
        let txn = Txn::new().and_then(operations);
        // Retried within the time budget: with several endpoints, a request may first be sent
        // to a member that just died. Repeating the transaction is harmless (it sets the same
        // values again).
        self.runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
            loop {
                let error = match tokio::time::timeout_at(deadline, kv.txn(txn.clone())).await {
                    Ok(Ok(response)) => return Ok(response.header().map_or(0, |h| h.revision())),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => return Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
                };
                let retry_at = tokio::time::Instant::now() + RETRY_PAUSE;
                if retry_at >= deadline {
                    return Err(error);
                }
                tracing::debug!(%error, "etcd write failed; retrying");
                tokio::time::sleep_until(retry_at).await;
            }
        })
    }
}

impl Store for EtcdStore {
    /// The mirror. Called at start and, under the registry lock on the commit thread, after a
    /// failed write once every queued change has been failed: nothing is in flight then.
    fn load(&self) -> Result<Restored, StoreError> {
        let mut shared = lock(&self.shared);
        shared.pending.clear();
        shared.deferred.clear();
        let applied = shared
            .mirror
            .iter()
            .map(|(key, m)| (key.clone(), m.revision))
            .collect();
        shared.applied = applied;
        Ok(Restored {
            index: u64::try_from(shared.revision).unwrap_or(0),
            instances: shared
                .mirror
                .values()
                .filter_map(|m| m.instance.clone())
                .collect(),
        })
    }

    fn write(&self, _index: u64, changes: &[Change]) -> Result<(), StoreError> {
        let committed = self.commit(changes);
        let mut shared = lock(&self.shared);
        for change in changes {
            let key = Self::key_of(change);
            if let Some(n) = shared.pending.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    shared.pending.remove(&key);
                }
            }
        }
        match committed {
            Ok(revision) => {
                for change in changes {
                    let key = Self::key_of(change);
                    let applied = shared.applied.entry(key.clone()).or_default();
                    *applied = (*applied).max(revision);
                    if !shared.pending.contains_key(&key) && shared.deferred.remove(&key) {
                        let _ = self.redo.send(key);
                    }
                }
                Ok(())
            }
            Err(detail) => Err(StoreError::Cluster {
                detail: format!(
                    "etcd at {} is unreachable or refused the write ({detail}); \
                     nothing was changed: retry when etcd answers",
                    self.endpoints
                ),
            }),
        }
    }

    fn queued(&self, change: &Change) {
        let mut shared = lock(&self.shared);
        *shared.pending.entry(Self::key_of(change)).or_default() += 1;
    }

    fn max_batch(&self) -> usize {
        MAX_TXN_OPS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        (
            ServiceName::try_from("web").unwrap(),
            InstanceId::try_from(id).unwrap(),
        )
    }

    #[test]
    fn the_watch_never_overwrites_a_newer_or_in_flight_change() {
        let mut shared = Shared::default();
        let k = key("w1");
        // A change from the watch.
        assert!(shared.accept(&k, 5));
        // Its repetition, or anything older, changes nothing.
        assert!(!shared.accept(&k, 5));
        assert!(!shared.accept(&k, 4));
        // While this server's own change is in flight, watch changes are held back.
        shared.pending.insert(k.clone(), 1);
        assert!(!shared.accept(&k, 7));
        assert!(shared.deferred.contains(&k));
        // Written at revision 9: the echo (9) and older changes are not applied again.
        shared.pending.clear();
        shared.applied.insert(k.clone(), 9);
        assert!(!shared.accept(&k, 9));
        assert!(shared.accept(&k, 10));
    }
}
