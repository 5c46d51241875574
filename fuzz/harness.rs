//! The DNS fuzz harness: arbitrary bytes into both answer paths — the reference path
//! ([`respond`], hickory-proto's decoder) and the fast path ([`fast::answer`], srvdns's own
//! wire parser) — over UDP and TCP rules, against a small fixed registry and the example
//! zones. It checks nothing of the answers' content, only what must hold for any input: no
//! panic; every packet with a header and QR clear gets an answer (FORMERR at worst); an answer
//! is a response (QR set) to the query's ID; and a UDP answer fits the largest UDP payload
//! srvdns sends (1232 bytes).
//!
//! One file, two users: the cargo-fuzz target (`fuzz/fuzz_targets/dns_packet.rs`, nightly,
//! libFuzzer) and the plain test `tests/dns_fuzz.rs`, which drives it with seeded random and
//! mutated packets on the stable toolchain, in CI.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::rr::Name;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use srvdns::dns::answer::{Authority, Transport, respond};
use srvdns::dns::fast::{self, Scratch};
use srvdns::dns::zones::StaticZones;
use srvdns::registry::model::{Address, InstanceId, Protocol, Registration, ServiceName, Status};
use srvdns::registry::{DnsPolicy, InstanceLimits, Registry, RegistrySettings};

/// The largest UDP answer srvdns sends (EDNS payload cap).
const MAX_UDP_ANSWER: usize = 1232;

/// A fixed registry and authority to answer from.
pub struct Harness {
    authority: Authority,
    registry: Arc<Registry>,
}

impl Harness {
    /// The harness, with the static zones of `zones_dir` (the repository's `zones/`).
    pub fn new(zones_dir: &Path) -> Self {
        let domain = Name::from_ascii("service.local.").expect("domain");
        let zones = StaticZones::load_dir(zones_dir).expect("example zones load");
        let registry = Arc::new(Registry::new(RegistrySettings {
            dns: DnsPolicy {
                domain: domain.clone(),
                only_passing: false,
            },
            static_names: zones.service_labels_taken(&domain),
            limits: InstanceLimits::default(),
        }));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(populate(&registry));
        let authority = Authority::new(
            domain,
            5,
            5,
            None,
            vec!["127.0.0.1".parse().expect("ip")],
            zones,
        );
        Self {
            authority,
            registry,
        }
    }

    /// Feeds one packet to both paths under both transports' rules.
    pub fn run(&self, packet: &[u8]) {
        let snapshot = self.registry.snapshot();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut scratch = Scratch::default();
        for transport in [Transport::Udp, Transport::Tcp] {
            match respond(&self.authority, &snapshot, packet, transport, &mut rng) {
                Some(answer) => check(packet, &answer, transport, "reference"),
                // Silence only for what has no header to answer, or is itself a response.
                None => assert!(
                    packet.len() < 12 || packet[2] & 0x80 != 0,
                    "reference: no answer to a query ({transport:?})"
                ),
            }
            if fast::answer(
                &self.authority,
                &snapshot,
                packet,
                transport,
                &mut rng,
                &mut scratch,
            ) {
                check(packet, scratch.answer(), transport, "fast");
            }
        }
    }
}

fn check(packet: &[u8], answer: &[u8], transport: Transport, path: &str) {
    assert!(answer.len() >= 12, "{path}: answer shorter than a header");
    assert_eq!(answer[..2], packet[..2], "{path}: answer to another ID");
    assert!(answer[2] & 0x80 != 0, "{path}: answer without QR");
    if transport == Transport::Udp {
        assert!(
            answer.len() <= MAX_UDP_ANSWER,
            "{path}: UDP answer of {} bytes",
            answer.len()
        );
    }
}

/// A few services covering every kind of answer: IPv4, IPv6, hostname targets, tags, named
/// ports, UDP, weights and priorities, and unhealthy instances.
async fn populate(registry: &Registry) {
    let specs: [(&str, &str, &str, &[&str]); 9] = [
        ("web", "w1", "10.0.0.1", &["v1", "canary"]),
        ("web", "w2", "10.0.0.2", &["v2"]),
        ("web", "w3", "2001:db8::3", &["v2", "Traefik.enable=true"]),
        ("pg", "d1", "10.0.1.1", &[]),
        ("pg", "d2", "db2.example.com", &["primary"]),
        ("dns", "n1", "10.0.2.1", &[]),
        ("down", "x1", "10.0.3.1", &[]),
        ("drain", "m1", "10.0.4.1", &[]),
        ("warn", "v1", "10.0.5.1", &[]),
    ];
    for (i, (service, id, address, tags)) in specs.into_iter().enumerate() {
        let address = match address.parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Host(address.to_owned()),
        };
        let mut ports = BTreeMap::new();
        ports.insert("metrics".to_owned(), 9100);
        let registration = Registration {
            service: ServiceName::try_from(service).expect("service"),
            id: InstanceId::try_from(id).expect("id"),
            address,
            port: 8000 + i as u16,
            protocol: if service == "dns" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            priority: (i % 3) as u16,
            weight: (i % 4) as u16,
            warning_weight: 1,
            ports,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            meta: BTreeMap::new(),
            checks: vec![],
        };
        registry.register(registration).await.expect("register");
    }
    registry
        .set_status("down", "x1", None, Status::Critical, String::new())
        .await
        .expect("status");
    registry
        .set_status("warn", "v1", None, Status::Warning, String::new())
        .await
        .expect("status");
    registry
        .set_maintenance("drain", "m1", Some("drain".into()))
        .await
        .expect("maintenance");
}
