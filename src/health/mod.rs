//! The health engine: decides who is healthy.
//!
//! - [`engine`] probes `http` and `tcp` checks on their schedule ([`probe`] runs one probe,
//!   [`transitions`] turns results into statuses — pure);
//! - [`ttl`] turns instances whose heartbeats stopped critical, and removes instances critical
//!   for longer than their `deregister_after`.
//!
//! Both report to the [`Registry`](crate::registry::Registry); neither keeps health state of
//! its own.

pub mod engine;
pub mod probe;
pub mod transitions;
pub mod ttl;
