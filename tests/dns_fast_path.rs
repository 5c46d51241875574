//! The fast path against the reference path: for random registries and thousands of random
//! questions, both must give the same answer — byte for byte where the reference encoder's
//! name compression allows, record for record everywhere. Both paths draw the same random
//! numbers (same seed), so even the weighted order must match.

use std::collections::BTreeMap;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use srvdns::dns::answer::{Authority, Transport, respond};
use srvdns::dns::fast::{self, Scratch};
use srvdns::dns::zones::StaticZones;
use srvdns::registry::model::{Address, InstanceId, Protocol, Registration, ServiceName, Status};
use srvdns::registry::{DnsPolicy, Registry, RegistrySettings};

const TAGS: [&str; 5] = ["v1", "V2", "canary", "Traefik.enable=true", "blue-green"];

fn domain() -> Name {
    Name::from_ascii("service.local.").unwrap()
}

async fn random_registry(rng: &mut SmallRng, only_passing: bool) -> (Arc<Registry>, Vec<String>) {
    let registry = Arc::new(Registry::new(RegistrySettings {
        dns: DnsPolicy {
            domain: domain(),
            only_passing,
        },
        static_names: BTreeMap::new(),
        limits: Default::default(),
    }));
    let mut services = Vec::new();
    for s in 0..12 {
        let service = format!("svc{s}");
        services.push(service.clone());
        let count = if s == 0 { 70 } else { rng.random_range(1..8) };
        for i in 0..count {
            let address = match rng.random_range(0..10) {
                0..=5 => Address::Ip(
                    format!("10.{s}.{}.{}", i / 200, rng.random_range(1..5))
                        .parse()
                        .unwrap(),
                ),
                6..=8 => Address::Ip(
                    format!("2001:db8:{s}::{:x}", rng.random_range(1..6))
                        .parse()
                        .unwrap(),
                ),
                _ => Address::Host(format!("host{i}.example.com")),
            };
            let tags = TAGS
                .iter()
                .filter(|_| rng.random_bool(0.4))
                .map(|t| t.to_string())
                .collect();
            let mut ports = BTreeMap::new();
            if rng.random_bool(0.3) {
                ports.insert("metrics".to_owned(), 9100);
            }
            let registration = Registration {
                service: ServiceName::try_from(service.as_str()).unwrap(),
                id: InstanceId::try_from(format!("i{i}").as_str()).unwrap(),
                address,
                port: 8000 + i as u16,
                protocol: if rng.random_bool(0.2) {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                priority: rng.random_range(0..3),
                weight: rng.random_range(0..6),
                warning_weight: rng.random_range(0..3),
                ports,
                tags,
                meta: BTreeMap::new(),
                checks: vec![],
            };
            registry.register(registration).await.unwrap();
            let id = format!("i{i}");
            match rng.random_range(0..10) {
                0 => {
                    registry
                        .set_maintenance(&service, &id, Some("drain".into()))
                        .await
                        .unwrap();
                }
                1 => {
                    registry
                        .set_status(&service, &id, None, Status::Critical, String::new())
                        .await
                        .unwrap();
                }
                2 => {
                    registry
                        .set_status(&service, &id, None, Status::Warning, String::new())
                        .await
                        .unwrap();
                }
                _ => {}
            }
        }
    }
    // A service whose every instance is down.
    services.push("gone".into());
    (registry, services)
}

fn random_case(rng: &mut SmallRng, name: &str) -> String {
    name.chars()
        .map(|c| {
            if rng.random_bool(0.2) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

fn random_question(rng: &mut SmallRng, services: &[String]) -> (String, RecordType) {
    let service = &services[rng.random_range(0..services.len())];
    let tag = ["v1", "v2", "canary", "blue-green", "nope"][rng.random_range(0..5)];
    let name = match rng.random_range(0..14) {
        0..=3 => format!("{service}.service.local."),
        4 => format!("{tag}.{service}.service.local."),
        5 => format!("_{service}._tcp.service.local."),
        6 => format!("_{service}._udp.service.local."),
        7 => format!("_{service}._{tag}.service.local."),
        8 => format!("_metrics._tcp.{service}.service.local."),
        9 => format!(
            "10-{}-0-{}.addr.service.local.",
            rng.random_range(0..12),
            rng.random_range(0..5)
        ),
        10 => [
            "2001-db8-3--2.addr.service.local.",
            "10-0-0-999.addr.service.local.",
            "addr.service.local.",
            "_tcp.service.local.",
            "_x.svc1.service.local.",
        ][rng.random_range(0..5)]
        .to_owned(),
        11 => format!("a.b.c.{service}.service.local."),
        12 => format!("nope{}.service.local.", rng.random_range(0..100)),
        _ => "service.local.".to_owned(),
    };
    let rtype = [
        RecordType::A,
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::SRV,
        RecordType::ANY,
        RecordType::TXT,
        RecordType::MX,
        RecordType::SOA,
    ][rng.random_range(0..9)];
    (random_case(rng, &name), rtype)
}

fn query_bytes(rng: &mut SmallRng, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(rng.random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = rng.random_bool(0.5);
    message.metadata.checking_disabled = rng.random_bool(0.1);
    message
        .queries
        .push(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if rng.random_bool(0.5) {
        let mut edns = Edns::new();
        edns.set_max_payload([512, 1232, 4096, 300][rng.random_range(0..4)]);
        message.edns = Some(edns);
    }
    message.to_vec().unwrap()
}

#[tokio::test]
async fn the_fast_path_answers_exactly_like_the_reference_path() {
    let mut fast_answers = 0;
    let mut byte_identical = 0;
    let mut positives = 0;
    let mut total = 0;
    for (round, only_passing) in [(1u64, false), (2, true), (3, false)] {
        let mut rng = SmallRng::seed_from_u64(round);
        let (registry, services) = random_registry(&mut rng, only_passing).await;
        let authority = Authority::new(
            domain(),
            5,
            5,
            if round == 3 { Some(3) } else { None },
            vec!["127.0.0.1".parse().unwrap()],
            StaticZones::default(),
        );
        let snapshot = registry.snapshot();
        let mut scratch = Scratch::default();
        for q in 0..2000 {
            let (name, rtype) = random_question(&mut rng, &services);
            let packet = query_bytes(&mut rng, &name, rtype);
            let transport = if rng.random_bool(0.8) {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            let seed = rng.random();
            let reference = respond(
                &authority,
                &snapshot,
                &packet,
                transport,
                &mut SmallRng::seed_from_u64(seed),
            )
            .expect("the reference answers every query");
            total += 1;
            if !fast::answer(
                &authority,
                &snapshot,
                &packet,
                transport,
                &mut SmallRng::seed_from_u64(seed),
                &mut scratch,
            ) {
                continue;
            }
            fast_answers += 1;
            let ours = scratch.answer();
            let context = format!("round {round} query {q}: {name} {rtype} {transport:?}");
            let negative = ours[8..10] != [0, 0];
            if !negative {
                positives += 1;
            }
            if ours == reference.as_slice() {
                if !negative {
                    byte_identical += 1;
                }
                continue;
            }
            let a = Message::from_vec(ours)
                .unwrap_or_else(|e| panic!("{context}: fast answer does not parse: {e}"));
            let b = Message::from_vec(&reference).unwrap();
            assert_eq!(a.metadata, b.metadata, "{context}: header");
            assert_eq!(a.queries, b.queries, "{context}: question");
            assert_eq!(a.answers, b.answers, "{context}: answers");
            assert_eq!(a.authorities, b.authorities, "{context}: authority");
            assert_eq!(a.additionals, b.additionals, "{context}: additional");
            assert_eq!(a.edns, b.edns, "{context}: EDNS");
            // Where bytes differ, only name compression does: the reference compresses SOA
            // names against the question, and past its table of compression candidates
            // (large TCP answers) points glue at name suffixes instead of SRV targets.
            assert!(
                !a.authorities.is_empty() || ours.len() > 1232,
                "{context}: a small answer without an SOA differs in bytes"
            );
        }
    }
    // The fast path must be the common path, and positive answers (no SOA) byte-identical
    // but for the large TCP ones.
    assert!(
        fast_answers * 10 >= total * 7,
        "fast path answered {fast_answers} of {total}"
    );
    assert!(
        byte_identical * 10 >= positives * 9,
        "{byte_identical} of {positives} positive answers byte-identical"
    );
}
