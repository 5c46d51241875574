//! The registry: the model of services and instances, their state, and the snapshots that
//! readers use. See [`Registry`] for the rules every change follows.

pub mod instance;
pub mod model;
#[allow(clippy::module_inception)]
mod registry;
pub mod snapshot;

pub use registry::{InstanceLimits, Registry, RegistryError, RegistrySettings};
pub use snapshot::{DnsPolicy, ServiceEntry, Snapshot};
