//! srvdns: a service-discovery DNS server.
//!
//! Services register over HTTP ([`http`]), the [`registry`] keeps them and their health, the
//! [`health`] engine decides who is healthy, and [`dns`] answers plain DNS from immutable
//! registry snapshots. [`serve`] wires the parts together; [`config`] holds the one
//! configuration struct; [`metrics`] renders `/metrics`. [`client`] is a client of the HTTP
//! API, which the command-line commands ([`cli`]) and the [`sidecar`] use. With the cargo
//! feature `etcd`, `cluster` lets several servers share one registry through etcd. See
//! DESIGN.md for the contracts.

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
#[cfg(feature = "etcd")]
pub mod cluster;
pub mod config;
pub mod dns;
pub mod health;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod serve;
pub mod sidecar;
mod signals;
pub mod store;
