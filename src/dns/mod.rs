//! The DNS side: answers for the service domain from registry snapshots, static zones from
//! zone files, REFUSED for everything else. [`answer`] is the reference path (pure, through
//! hickory-proto messages); [`fast`] answers the common questions straight into wire format
//! with the same rules; [`server`] owns the sockets; [`metrics`] counts what it answers.

pub mod answer;
pub mod fast;
pub mod metrics;
pub mod rrl;
pub mod server;
pub mod udp;
pub mod zones;
