//! DNS answers, row by row of DESIGN.md's "Names answered" table, over real UDP and TCP.

mod support;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use serde_json::json;
use support::{TestServer, Transport, query, rrs, srvs, test_config};

/// payment: two tcp instances (one tagged v2, one priority 1 with weight 3 and a named port),
/// one udp IPv6 instance tagged canary, one external hostname instance.
async fn payment_server() -> TestServer {
    let server = TestServer::start().await;
    server
        .register(
            "payment",
            "payment-1",
            json!({"address": "10.0.1.5", "port": 8080, "tags": ["v2", "Traefik.enable=true"]}),
        )
        .await;
    server
        .register(
            "payment",
            "payment-2",
            json!({"address": "10.0.1.6", "port": 8081, "priority": 1, "weight": 3,
                   "ports": {"metrics": 9100}}),
        )
        .await;
    server
        .register(
            "payment",
            "payment-3",
            json!({"address": "2001:db8::7", "port": 8082, "protocol": "udp", "tags": ["canary"]}),
        )
        .await;
    server
        .register(
            "payment",
            "external",
            json!({"address": "pay.example.com", "port": 443, "priority": 2}),
        )
        .await;
    server
}

fn assert_authoritative(answer: &Message, rcode: ResponseCode) {
    assert_eq!(answer.metadata.response_code, rcode);
    assert!(answer.metadata.authoritative, "AA set");
    assert!(!answer.metadata.recursion_available, "RA clear");
    assert!(!answer.metadata.truncation, "TC clear");
}

fn assert_soa_only_authority(answer: &Message) {
    assert!(answer.answers.is_empty(), "{:?}", rrs(&answer.answers));
    assert_eq!(answer.authorities.len(), 1);
    let soa = &answer.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name.to_string(), "service.local.");
    assert_eq!(soa.ttl, 5, "negative TTL is the SOA minimum");
}

#[tokio::test]
async fn service_names_answer_a_aaaa_and_srv_with_glue() {
    let server = payment_server().await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = server
            .query_message(
                &query("payment.service.local.", RecordType::A, None),
                transport,
            )
            .await;
        assert_authoritative(&a, ResponseCode::NoError);
        assert_eq!(
            rrs(&a.answers),
            [
                "payment.service.local. 5 A 10.0.1.5",
                "payment.service.local. 5 A 10.0.1.6"
            ]
        );
        assert!(a.authorities.is_empty() && a.additionals.is_empty());

        let aaaa = server
            .query_message(
                &query("payment.service.local.", RecordType::AAAA, None),
                transport,
            )
            .await;
        assert_authoritative(&aaaa, ResponseCode::NoError);
        assert_eq!(
            rrs(&aaaa.answers),
            ["payment.service.local. 5 AAAA 2001:db8::7"]
        );

        let srv = server
            .query_message(
                &query("payment.service.local.", RecordType::SRV, None),
                transport,
            )
            .await;
        assert_authoritative(&srv, ResponseCode::NoError);
        let mut records = srvs(&srv.answers);
        // RFC 2782 order: by priority.
        let priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
        assert_eq!(priorities, [0, 0, 1, 2]);
        records.sort();
        assert_eq!(
            records,
            [
                (0, 1, 8080, "10-0-1-5.addr.service.local.".to_owned()),
                (0, 1, 8082, "2001-db8--7.addr.service.local.".to_owned()),
                (1, 3, 8081, "10-0-1-6.addr.service.local.".to_owned()),
                (2, 1, 443, "pay.example.com.".to_owned()),
            ]
        );
        assert_eq!(
            rrs(&srv.additionals),
            [
                "10-0-1-5.addr.service.local. 5 A 10.0.1.5",
                "10-0-1-6.addr.service.local. 5 A 10.0.1.6",
                "2001-db8--7.addr.service.local. 5 AAAA 2001:db8::7",
            ]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn tag_protocol_and_named_port_names() {
    let server = payment_server().await;
    let a = server
        .query("v2.payment.service.local.", RecordType::A)
        .await;
    assert_authoritative(&a, ResponseCode::NoError);
    assert_eq!(rrs(&a.answers), ["v2.payment.service.local. 5 A 10.0.1.5"]);

    let srv = server
        .query("canary.payment.service.local.", RecordType::SRV)
        .await;
    assert_eq!(
        srvs(&srv.answers),
        [(0, 1, 8082, "2001-db8--7.addr.service.local.".to_owned())]
    );

    let tcp = server
        .query("_payment._tcp.service.local.", RecordType::SRV)
        .await;
    assert_authoritative(&tcp, ResponseCode::NoError);
    let mut ports: Vec<u16> = srvs(&tcp.answers).iter().map(|r| r.2).collect();
    ports.sort();
    assert_eq!(ports, [443, 8080, 8081]);

    let udp = server
        .query("_payment._udp.service.local.", RecordType::SRV)
        .await;
    assert_eq!(
        srvs(&udp.answers),
        [(0, 1, 8082, "2001-db8--7.addr.service.local.".to_owned())]
    );
    assert_eq!(
        rrs(&udp.additionals),
        ["2001-db8--7.addr.service.local. 5 AAAA 2001:db8::7"]
    );

    let tagged = server
        .query("_payment._v2.service.local.", RecordType::SRV)
        .await;
    assert_eq!(
        srvs(&tagged.answers),
        [(0, 1, 8080, "10-0-1-5.addr.service.local.".to_owned())]
    );

    let metrics = server
        .query("_metrics._tcp.payment.service.local.", RecordType::SRV)
        .await;
    assert_authoritative(&metrics, ResponseCode::NoError);
    assert_eq!(
        srvs(&metrics.answers),
        [(1, 3, 9100, "10-0-1-6.addr.service.local.".to_owned())]
    );

    // SRV-only names have no addresses: NODATA.
    let a = server
        .query("_payment._tcp.service.local.", RecordType::A)
        .await;
    assert_authoritative(&a, ResponseCode::NoError);
    assert_soa_only_authority(&a);
    server.stop().await;
}

#[tokio::test]
async fn address_names_resolve_srv_targets() {
    let server = payment_server().await;
    let a = server
        .query("10-0-1-5.addr.service.local.", RecordType::A)
        .await;
    assert_authoritative(&a, ResponseCode::NoError);
    assert_eq!(
        rrs(&a.answers),
        ["10-0-1-5.addr.service.local. 5 A 10.0.1.5"]
    );

    let aaaa = server
        .query("2001-db8--7.addr.service.local.", RecordType::AAAA)
        .await;
    assert_eq!(
        rrs(&aaaa.answers),
        ["2001-db8--7.addr.service.local. 5 AAAA 2001:db8::7"]
    );

    let wrong_type = server
        .query("10-0-1-5.addr.service.local.", RecordType::AAAA)
        .await;
    assert_authoritative(&wrong_type, ResponseCode::NoError);
    assert_soa_only_authority(&wrong_type);

    let bad = server
        .query("10-0-1-999.addr.service.local.", RecordType::A)
        .await;
    assert_authoritative(&bad, ResponseCode::NXDomain);
    assert_soa_only_authority(&bad);
    server.stop().await;
}

#[tokio::test]
async fn the_apex_has_soa_and_ns() {
    let server = TestServer::start().await;
    let soa = server.query("service.local.", RecordType::SOA).await;
    assert_authoritative(&soa, ResponseCode::NoError);
    assert_eq!(soa.answers.len(), 1);
    let RData::SOA(data) = &soa.answers[0].data else {
        panic!("not an SOA: {:?}", soa.answers[0]);
    };
    assert_eq!(data.mname.to_string(), "ns.addr.service.local.");
    assert_eq!(data.minimum, 5);

    let ns = server.query("service.local.", RecordType::NS).await;
    assert_authoritative(&ns, ResponseCode::NoError);
    assert_eq!(
        rrs(&ns.answers),
        ["service.local. 5 NS ns.addr.service.local."]
    );
    assert_eq!(
        rrs(&ns.additionals),
        ["ns.addr.service.local. 5 A 127.0.0.1"]
    );

    // The example zone file adds a TXT record at the apex.
    let txt = server.query("service.local.", RecordType::TXT).await;
    assert_eq!(
        rrs(&txt.answers),
        ["service.local. 60 TXT srvdns example zone"]
    );

    // The SOA serial follows the registry index.
    server
        .register("web", "w1", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    let later = server.query("service.local.", RecordType::SOA).await;
    let RData::SOA(later) = &later.answers[0].data else {
        panic!("not an SOA");
    };
    assert!(later.serial > data.serial);
    server.stop().await;
}

#[tokio::test]
async fn static_zone_records_are_served() {
    let server = TestServer::start().await;
    let db = server.query("db.service.local.", RecordType::A).await;
    assert_authoritative(&db, ResponseCode::NoError);
    assert_eq!(rrs(&db.answers), ["db.service.local. 60 A 10.0.9.10"]);

    let alias = server.query("postgres.service.local.", RecordType::A).await;
    assert_eq!(
        rrs(&alias.answers),
        [
            "db.service.local. 60 A 10.0.9.10",
            "postgres.service.local. 60 CNAME db.service.local."
        ]
    );

    let srv = server
        .query("_postgres._tcp.service.local.", RecordType::SRV)
        .await;
    assert_eq!(
        rrs(&srv.answers),
        ["_postgres._tcp.service.local. 60 SRV 0 1 5432 db.service.local."]
    );
    assert_eq!(
        rrs(&srv.additionals),
        [
            "db.service.local. 60 A 10.0.9.10",
            "db.service.local. 60 AAAA 2001:db8::10"
        ]
    );

    let www = server.query("www.example.internal.", RecordType::A).await;
    assert_authoritative(&www, ResponseCode::NoError);
    assert_eq!(
        rrs(&www.answers),
        ["www.example.internal. 300 A 192.0.2.10"]
    );

    let mx = server.query("example.internal.", RecordType::MX).await;
    assert_eq!(
        rrs(&mx.answers),
        ["example.internal. 300 MX 10 mail.example.internal."]
    );
    assert_eq!(
        rrs(&mx.additionals),
        ["mail.example.internal. 300 A 192.0.2.25"]
    );

    let missing = server.query("nope.example.internal.", RecordType::A).await;
    assert_authoritative(&missing, ResponseCode::NXDomain);
    assert_eq!(missing.authorities.len(), 1);
    assert_eq!(missing.authorities[0].name.to_string(), "example.internal.");
    assert_eq!(missing.authorities[0].ttl, 60, "min(SOA TTL, MINIMUM)");

    let nodata = server
        .query("www.example.internal.", RecordType::AAAA)
        .await;
    assert_authoritative(&nodata, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);
    server.stop().await;
}

#[tokio::test]
async fn names_outside_the_zones_are_refused() {
    let server = TestServer::start().await;
    for name in ["example.com.", "local.", ".", "service.local.example.com."] {
        let answer = server.query(name, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(!answer.metadata.authoritative, "{name}: no AA on REFUSED");
        assert!(!answer.metadata.recursion_available);
        assert!(answer.answers.is_empty() && answer.authorities.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn nxdomain_and_nodata_carry_the_soa() {
    let server = payment_server().await;
    server
        .register("drained", "d1", json!({"address": "10.0.2.1", "port": 80}))
        .await;
    let reply = server
        .put(
            "/v1/services/drained/instances/d1/maintenance",
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(reply.status, 200);

    for name in [
        "unknown.service.local.",
        "v9.payment.service.local.",
        "_unknown._tcp.service.local.",
        "_payment._nope.service.local.",
        "_grpc._tcp.payment.service.local.",
        "a.b.c.payment.service.local.",
    ] {
        let answer = server.query(name, RecordType::A).await;
        assert_authoritative(&answer, ResponseCode::NXDomain);
        assert_soa_only_authority(&answer);
    }
    for (name, rtype) in [
        ("payment.service.local.", RecordType::TXT),
        ("payment.service.local.", RecordType::MX),
        // A service that exists but has no healthy instance.
        ("drained.service.local.", RecordType::A),
        ("drained.service.local.", RecordType::SRV),
        // Empty non-terminals must not be NXDOMAIN (RFC 8020).
        ("_tcp.service.local.", RecordType::SRV),
        ("addr.service.local.", RecordType::A),
        ("_tcp.payment.service.local.", RecordType::SRV),
    ] {
        let answer = server.query(name, rtype).await;
        assert_authoritative(&answer, ResponseCode::NoError);
        assert_soa_only_authority(&answer);
    }
    server.stop().await;
}

#[tokio::test]
async fn names_are_case_insensitive_and_echoed_as_asked() {
    let server = payment_server().await;
    let answer = server.query("PayMent.SERVICE.Local.", RecordType::A).await;
    assert_authoritative(&answer, ResponseCode::NoError);
    assert_eq!(answer.queries[0].name.to_string(), "PayMent.SERVICE.Local.");
    assert_eq!(answer.answers.len(), 2);
    assert!(
        answer
            .answers
            .iter()
            .all(|r| r.name.to_string() == "PayMent.SERVICE.Local.")
    );
    server.stop().await;
}

async fn big_server(instances: usize) -> TestServer {
    let server = TestServer::start().await;
    for i in 0..instances {
        server
            .register(
                "big",
                &format!("big-{i}"),
                json!({"address": format!("10.1.{}.{}", i / 200, i % 200 + 1), "port": 8000 + i}),
            )
            .await;
    }
    server
}

#[tokio::test]
async fn answers_that_do_not_fit_are_truncated_and_tcp_gives_all() {
    let server = big_server(60).await;

    // No EDNS: 512 bytes, cut at a whole record, TC set.
    let message = query("big.service.local.", RecordType::A, None);
    let bytes = server
        .exchange_udp(&message.to_vec().unwrap())
        .await
        .expect("answer");
    assert!(bytes.len() <= 512, "{} bytes", bytes.len());
    let answer = Message::from_vec(&bytes).unwrap();
    assert!(answer.metadata.truncation);
    assert!(answer.metadata.authoritative);
    assert!(!answer.answers.is_empty() && answer.answers.len() < 60);

    // EDNS with a large buffer: capped at 1232 bytes.
    let message = query("big.service.local.", RecordType::SRV, Some(4096));
    let bytes = server
        .exchange_udp(&message.to_vec().unwrap())
        .await
        .expect("answer");
    assert!(bytes.len() <= 1232, "{} bytes", bytes.len());
    let answer = Message::from_vec(&bytes).unwrap();
    assert!(answer.metadata.truncation);
    assert!(answer.edns.is_some(), "OPT kept in a truncated answer");
    assert!(answer.answers.len() < 60);

    // A small EDNS buffer below 512 is raised to 512 (RFC 6891 §6.2.5).
    let message = query("big.service.local.", RecordType::A, Some(200));
    let bytes = server
        .exchange_udp(&message.to_vec().unwrap())
        .await
        .expect("answer");
    assert!(bytes.len() > 200 && bytes.len() <= 512);

    // TCP: the full answer.
    for rtype in [RecordType::A, RecordType::SRV] {
        let full = server.query_tcp("big.service.local.", rtype).await;
        assert!(!full.metadata.truncation);
        assert_eq!(full.answers.len(), 60, "{rtype}");
        if rtype == RecordType::SRV {
            assert_eq!(full.additionals.len(), 60, "glue for every target");
        }
    }

    server.stop().await;
}

#[tokio::test]
async fn glue_that_does_not_fit_is_dropped_without_tc() {
    // 8 SRV records (~47 bytes each) fit in 512 bytes; their 8 glue records (~16 bytes each)
    // do not all fit.
    let server = big_server(8).await;
    let answer = server.query("big.service.local.", RecordType::SRV).await;
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 8);
    assert!(answer.additionals.len() < 8, "{}", answer.additionals.len());
    server.stop().await;
}

#[tokio::test]
async fn max_answers_caps_without_truncation() {
    let mut config = test_config();
    config.max_answers = Some(3);
    let server = TestServer::start_with(config).await;
    for i in 0..10 {
        server
            .register(
                "web",
                &format!("w{i}"),
                json!({"address": format!("10.0.0.{}", i + 1), "port": 80}),
            )
            .await;
    }
    for rtype in [RecordType::A, RecordType::SRV] {
        let answer = server.query_tcp("web.service.local.", rtype).await;
        assert_authoritative(&answer, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 3, "{rtype}");
    }
    server.stop().await;
}

#[tokio::test]
async fn weights_decide_who_comes_first() {
    let server = TestServer::start().await;
    server
        .register(
            "w",
            "light",
            json!({"address": "10.0.0.1", "port": 80, "weight": 1}),
        )
        .await;
    server
        .register(
            "w",
            "heavy",
            json!({"address": "10.0.0.2", "port": 80, "weight": 9}),
        )
        .await;
    let mut heavy_first_srv = 0;
    let mut heavy_first_a = 0;
    let rounds = 400;
    for _ in 0..rounds {
        let srv = server.query("w.service.local.", RecordType::SRV).await;
        heavy_first_srv +=
            usize::from(srvs(&srv.answers)[0].2 == 80 && srvs(&srv.answers)[0].1 == 9);
        let a = server.query("w.service.local.", RecordType::A).await;
        heavy_first_a += usize::from(a.answers[0].data.to_string() == "10.0.0.2");
    }
    // Expected 90%; the bounds are > 6 standard deviations wide, and a fixed order fails.
    for (what, count) in [("SRV", heavy_first_srv), ("A", heavy_first_a)] {
        assert!(
            (rounds * 80 / 100..rounds * 98 / 100).contains(&count),
            "{what}: heavy first {count}/{rounds}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn warning_instances_use_the_warning_weight_and_only_passing_drops_them() {
    for only_passing in [false, true] {
        let mut config = test_config();
        config.only_passing = only_passing;
        let server = TestServer::start_with(config).await;
        server
            .register(
                "api",
                "a1",
                json!({"address": "10.0.0.1", "port": 80, "weight": 10, "weights": {"warning": 2}}),
            )
            .await;
        server
            .register(
                "api",
                "a2",
                json!({"address": "10.0.0.2", "port": 80, "weight": 10}),
            )
            .await;
        let reply = server
            .put(
                "/v1/services/api/instances/a1/status",
                json!({"status": "warning", "output": "slow"}),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        let srv = server.query("api.service.local.", RecordType::SRV).await;
        let mut records = srvs(&srv.answers);
        records.sort();
        if only_passing {
            assert_eq!(
                records,
                [(0, 10, 80, "10-0-0-2.addr.service.local.".to_owned())]
            );
        } else {
            assert_eq!(
                records,
                [
                    (0, 2, 80, "10-0-0-1.addr.service.local.".to_owned()),
                    (0, 10, 80, "10-0-0-2.addr.service.local.".to_owned())
                ]
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn edns_versions_above_zero_get_badvers() {
    let server = payment_server().await;
    let mut message = query("payment.service.local.", RecordType::A, Some(1232));
    let mut edns = Edns::new();
    edns.set_version(1).set_max_payload(1232);
    message.edns = Some(edns);
    let answer = server.query_message(&message, Transport::Udp).await;
    // BADVERS is 16, which hickory decodes under its other name, BADSIG.
    assert_eq!(u16::from(answer.metadata.response_code), 16);
    let opt = answer.edns.expect("OPT in a BADVERS answer");
    assert_eq!(opt.version(), 0);
    assert!(answer.answers.is_empty());

    // Version 0 is answered normally and the OPT is echoed with our payload size.
    let message = query("payment.service.local.", RecordType::A, Some(4096));
    let answer = server.query_message(&message, Transport::Udp).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.edns.expect("OPT").max_payload(), 1232);
    server.stop().await;
}

/// A raw query header: ID 0xBEEF, the given flags byte 2, QDCOUNT.
fn header(flags: u8, qdcount: u16) -> Vec<u8> {
    let mut h = vec![0xBE, 0xEF, flags, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    h[4..6].copy_from_slice(&qdcount.to_be_bytes());
    h
}

fn question(name: &str, rtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&rtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

#[tokio::test]
async fn malformed_and_unusual_packets() {
    let server = payment_server().await;
    // Too short for a header: no answer.
    assert_eq!(server.exchange_udp(&[1, 2, 3, 4, 5]).await, None);
    // A response (QR set): no answer.
    let mut response = header(0x80, 1);
    response.extend(question("payment.service.local", 1));
    assert_eq!(server.exchange_udp(&response).await, None);

    // A header that promises a question that is not there: FORMERR with the same ID.
    let bytes = server
        .exchange_udp(&header(0x00, 1))
        .await
        .expect("FORMERR");
    let answer = Message::from_vec(&bytes).unwrap();
    assert_eq!(answer.metadata.id, 0xBEEF);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);

    // A compression loop in the question name: FORMERR.
    let mut looped = header(0x00, 1);
    looped.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let bytes = server.exchange_udp(&looped).await.expect("FORMERR");
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );

    // Two questions: FORMERR.
    let mut two = header(0x00, 2);
    two.extend(question("payment.service.local", 1));
    two.extend(question("payment.service.local", 28));
    let bytes = server.exchange_udp(&two).await.expect("FORMERR");
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );

    // No question: FORMERR.
    let bytes = server
        .exchange_udp(&header(0x00, 0))
        .await
        .expect("FORMERR");
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );

    // Opcode STATUS (2) and UPDATE (5): NOTIMP.
    for opcode in [2u8, 5] {
        let mut packet = header(opcode << 3, 1);
        packet.extend(question("payment.service.local", 1));
        let bytes = server.exchange_tcp(&packet).await.expect("NOTIMP");
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NotImp,
            "opcode {opcode}"
        );
    }

    // Class CH (version.bind): REFUSED.
    let mut chaos = header(0x00, 1);
    let mut q = question("version.bind", 16);
    let len = q.len();
    q[len - 1] = 3;
    chaos.extend(q);
    let bytes = server.exchange_udp(&chaos).await.expect("REFUSED");
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::Refused
    );

    // The server still answers normally.
    let answer = server.query("payment.service.local.", RecordType::A).await;
    assert_eq!(answer.answers.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn tcp_connections_carry_several_queries() {
    let server = payment_server().await;
    let mut stream = tokio::net::TcpStream::connect(server.dns).await.unwrap();
    for rtype in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
        let message = query("payment.service.local.", rtype, None);
        let bytes = support::tcp_exchange(&mut stream, &message.to_vec().unwrap())
            .await
            .expect("answer on the same connection");
        let answer = Message::from_vec(&bytes).unwrap();
        assert_eq!(answer.metadata.id, message.metadata.id);
        assert!(!answer.answers.is_empty());
    }
    server.stop().await;
}

#[tokio::test]
async fn read_your_writes() {
    let server = TestServer::start().await;
    for round in 0..40 {
        let id = format!("r{round}");
        let address = format!("10.9.{}.{}", round / 200, round % 200 + 1);
        server
            .register("ryw", &id, json!({"address": address, "port": 80}))
            .await;
        // No sleep, no retry: the very next query must see the registration…
        let transport = if round % 2 == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let answer = server
            .query_message(&query("ryw.service.local.", RecordType::A, None), transport)
            .await;
        assert_eq!(
            rrs(&answer.answers),
            [format!("ryw.service.local. 5 A {address}")]
        );
        // …and the very next query after a deregistration must not.
        let reply = server
            .delete(&format!("/v1/services/ryw/instances/{id}"))
            .await;
        assert_eq!(reply.status, 204);
        let answer = server
            .query_message(&query("ryw.service.local.", RecordType::A, None), transport)
            .await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "round {round}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn another_domain_can_be_served() {
    let mut config = test_config();
    config.domain = srvdns::config::parse_domain("service.consul").unwrap();
    config.zones = srvdns::config::ZonesSource::None;
    let server = TestServer::start_with(config).await;
    server
        .register(
            "payment",
            "p1",
            json!({"address": "10.0.1.5", "port": 8080, "tags": ["v2"]}),
        )
        .await;
    let answer = server
        .query("v2.payment.service.consul.", RecordType::A)
        .await;
    assert_authoritative(&answer, ResponseCode::NoError);
    assert_eq!(
        rrs(&answer.answers),
        ["v2.payment.service.consul. 5 A 10.0.1.5"]
    );
    let srv = server
        .query("_payment._tcp.service.consul.", RecordType::SRV)
        .await;
    assert_eq!(
        srvs(&srv.answers),
        [(0, 1, 8080, "10-0-1-5.addr.service.consul.".to_owned())]
    );
    let refused = server.query("payment.service.local.", RecordType::A).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    server.stop().await;
}
