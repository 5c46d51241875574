//! The health engine: decides who is healthy. [`ttl`] turns instances whose heartbeats stopped
//! critical and removes them after `deregister_after`. Active HTTP/TCP probing builds on the
//! same registry calls.

pub mod ttl;
