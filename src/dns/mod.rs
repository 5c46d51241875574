//! The DNS side: answers for the service domain from registry snapshots, static zones from
//! zone files, REFUSED for everything else. [`answer`] is pure; [`server`] owns the sockets.

pub mod answer;
pub mod server;
pub mod zones;
