//! Durability: where the registry keeps what it acknowledged.
//!
//! The [`Registry`](crate::registry::Registry) is the only writer. Every committed change is
//! turned into [`Change`]s (the instance as it now is, or its removal) and handed to the
//! [`Committer`](commit::Committer), which writes batches of them to a [`Store`] in one durable
//! transaction each (group commit) and then acknowledges every change in the batch. The HTTP
//! API answers only after that acknowledgement. At start the registry is rebuilt from
//! [`Store::load`] before DNS and HTTP open.
//!
//! What is stored per instance: the registration (tags, meta, checks…), the maintenance flag,
//! the last known status and output of each check, and the wall-clock time of the last
//! heartbeat of each `ttl` check. What is not: TTL deadlines (a restart counts as a heartbeat)
//! and probe streaks (active checks run again at once).
//!
//! Two stores exist: [`embedded`] (one redb file in the data directory, the default) and, with
//! the cargo feature `etcd`, the cluster store in [`crate::cluster`], where several servers
//! share one registry.

pub mod commit;
pub mod embedded;

use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::registry::model::{InstanceId, Registration, ServiceName, Status};

/// The version of the stored format this build writes and understands.
pub const FORMAT_VERSION: u32 = 1;

/// One instance as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInstance {
    pub registration: Registration,
    pub maintenance: Option<String>,
    pub own_status: Status,
    pub own_output: String,
    pub checks: Vec<StoredCheck>,
    pub registered_at: SystemTime,
    pub last_change: SystemTime,
}

/// The last known state of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheck {
    pub name: String,
    pub status: Status,
    pub output: String,
    pub last_change: SystemTime,
    /// `ttl` checks: when the last heartbeat (or registration) arrived. In a cluster it tells
    /// the server that decides expiry when a heartbeat taken by another server happened.
    /// Absent in stores written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<SystemTime>,
}

/// One change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Box<StoredInstance>),
    Delete {
        service: ServiceName,
        id: InstanceId,
    },
}

/// What a store holds: the registry index of the last write, and every instance.
#[derive(Debug, Default)]
pub struct Restored {
    pub index: u64,
    pub instances: Vec<StoredInstance>,
}

/// Why the store cannot be used; each message says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {} is in use by another srvdns process ({} is locked); \
         stop it or give this one another --data-dir",
        dir.display(), file.display()
    )]
    InUse { dir: PathBuf, file: PathBuf },
    #[error(
        "{} was written in store format {found}, newer than this srvdns understands \
         (up to {supported}); it was left unchanged: run a newer srvdns, or use another --data-dir",
        file.display()
    )]
    NewerFormat {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "{} is corrupt or truncated ({detail}); srvdns left it unchanged: restore it from a \
         backup, or move it aside to start with an empty registry",
        file.display()
    )]
    Corrupt { file: PathBuf, detail: String },
    #[error("cannot open {}: {detail}", file.display())]
    Open { file: PathBuf, detail: String },
    #[error("writing to {} failed: {detail}", file.display())]
    Write { file: PathBuf, detail: String },
    #[error("the etcd cluster did not take the change: {detail}")]
    Cluster { detail: String },
    #[error("the store is shutting down")]
    Closed,
}

/// A place to keep the registry.
pub trait Store: Send + Sync + 'static {
    /// Everything stored.
    fn load(&self) -> Result<Restored, StoreError>;
    /// Applies `changes` in order, records `index`, and makes it all durable at once: after an
    /// `Ok` the batch survives a crash; after an `Err` none of it is stored.
    fn write(&self, index: u64, changes: &[Change]) -> Result<(), StoreError>;
    /// Told of each change when it is queued for [`Store::write`], in registry order and under
    /// the registry lock. The cluster store uses it to know which instances have writes in
    /// flight; other stores ignore it.
    fn queued(&self, _change: &Change) {}
    /// The most changes one [`Store::write`] may be given (etcd limits the operations of one
    /// transaction).
    fn max_batch(&self) -> usize {
        commit::MAX_BATCH
    }
}

impl Change {
    /// The instance this change is about.
    pub fn key(&self) -> (&ServiceName, &InstanceId) {
        match self {
            Change::Put(instance) => (&instance.registration.service, &instance.registration.id),
            Change::Delete { service, id } => (service, id),
        }
    }
}
