//! Hostile DNS clients, over real UDP and TCP sockets: malformed and unusual packets answered
//! as the RFCs say (or not at all, where they say so), TCP connections that lie about lengths,
//! drip bytes, sit idle or never stop asking, and floods met by response-rate limiting. After
//! every hostile input the server must still answer a normal query correctly.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::json;
use support::{TestServer, Transport, query, rrs, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const ID: [u8; 2] = [0xBE, 0xEF];

/// A header: ID 0xBEEF, the two flag bytes, and the four counts.
fn header(flags: [u8; 2], counts: [u16; 4]) -> Vec<u8> {
    let mut h = vec![ID[0], ID[1], flags[0], flags[1]];
    for count in counts {
        h.extend_from_slice(&count.to_be_bytes());
    }
    h
}

fn name(name: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.push(0);
    bytes
}

fn question(qname: &str, rtype: u16, class: u16) -> Vec<u8> {
    let mut q = name(qname);
    q.extend_from_slice(&rtype.to_be_bytes());
    q.extend_from_slice(&class.to_be_bytes());
    q
}

/// An OPT record: payload size, extended rcode 0, `version`, no options.
fn opt(version: u8) -> Vec<u8> {
    vec![0, 0, 41, 0x04, 0xd0, 0, version, 0, 0, 0, 0]
}

/// A query for payment.service.local A, with `flags`, and `extra` after the question.
fn a_query(flags: [u8; 2], counts: [u16; 4], extra: &[u8]) -> Vec<u8> {
    let mut p = header(flags, counts);
    p.extend(question("payment.service.local", 1, 1));
    p.extend_from_slice(extra);
    p
}

/// What the server must do with a packet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// No answer at all (RFC 1035 §4.1.1: responses and headerless packets).
    Silence,
    /// A header-level answer with this rcode, ID echoed, QR set, no records.
    Rcode(ResponseCode),
    /// A normal answer with this many A records.
    Answers(usize),
}

fn hostile_table() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let mut cases: Vec<(&'static str, Vec<u8>, Expect)> = vec![
        ("empty packet", vec![], Silence),
        ("truncated header", vec![0xBE, 0xEF, 0, 0, 0], Silence),
        ("eleven bytes", vec![0xBE; 11], Silence),
        (
            "QR set (a response)",
            a_query([0x80, 0], [1, 0, 0, 0], &[]),
            Silence,
        ),
        (
            "QR set, no question",
            header([0x80, 0], [0, 0, 0, 0]),
            Silence,
        ),
        (
            "no question",
            header([0, 0], [0, 0, 0, 0]),
            Rcode(ResponseCode::FormErr),
        ),
        (
            "promised question missing",
            header([0, 0], [1, 0, 0, 0]),
            Rcode(ResponseCode::FormErr),
        ),
        (
            "promised answers missing",
            a_query([0, 0], [1, 3, 0, 0], &[]),
            Rcode(ResponseCode::FormErr),
        ),
        (
            "promised additional missing",
            a_query([0, 0], [1, 0, 0, 2], &[]),
            Rcode(ResponseCode::FormErr),
        ),
        (
            "question cut short",
            {
                let mut p = a_query([0, 0], [1, 0, 0, 0], &[]);
                p.truncate(p.len() - 3);
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "compression loop",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "two-step compression loop",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend_from_slice(&[1, b'a', 0xC0, 16, 1, b'b', 0xC0, 12, 0, 1, 0, 1]);
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "pointer past the end",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend_from_slice(&[0xC1, 0xFF, 0, 1, 0, 1]);
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "label of 64 bytes (reserved label type)",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.push(64);
                p.extend_from_slice(&[b'a'; 64]);
                p.extend(name("service.local"));
                p.extend_from_slice(&[0, 1, 0, 1]);
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "name longer than 255 bytes",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                for _ in 0..5 {
                    p.push(63);
                    p.extend_from_slice(&[b'a'; 63]);
                }
                p.extend(name("service.local"));
                p.extend_from_slice(&[0, 1, 0, 1]);
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "unknown class 42",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend(question("payment.service.local", 1, 42));
                p
            },
            Rcode(ResponseCode::Refused),
        ),
        (
            "class CH (version.bind)",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend(question("version.bind", 16, 3));
                p
            },
            Rcode(ResponseCode::Refused),
        ),
        (
            "class ANY",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend(question("payment.service.local", 1, 255));
                p
            },
            Rcode(ResponseCode::Refused),
        ),
        (
            "opcode IQUERY (1)",
            a_query([1 << 3, 0], [1, 0, 0, 0], &[]),
            Rcode(ResponseCode::NotImp),
        ),
        (
            "opcode 3 (unassigned)",
            a_query([3 << 3, 0], [1, 0, 0, 0], &[]),
            Rcode(ResponseCode::NotImp),
        ),
        (
            "opcode NOTIFY (4)",
            a_query([4 << 3, 0], [1, 0, 0, 0], &[]),
            Rcode(ResponseCode::NotImp),
        ),
        (
            "opcode 15",
            a_query([15 << 3, 0], [1, 0, 0, 0], &[]),
            Rcode(ResponseCode::NotImp),
        ),
        (
            "EDNS version 1",
            a_query([0, 0], [1, 0, 0, 1], &opt(1)),
            Rcode(ResponseCode::BADVERS),
        ),
        (
            "EDNS version 255",
            a_query([0, 0], [1, 0, 0, 1], &opt(255)),
            Rcode(ResponseCode::BADVERS),
        ),
        (
            "two OPT records",
            a_query([0, 0], [1, 0, 0, 2], &[opt(0), opt(0)].concat()),
            Rcode(ResponseCode::FormErr),
        ),
        (
            "two questions",
            {
                let mut p = a_query([0, 0], [2, 0, 0, 0], &[]);
                p.extend(question("payment.service.local", 28, 1));
                p
            },
            Rcode(ResponseCode::FormErr),
        ),
        (
            "a zone transfer (AXFR)",
            {
                let mut p = header([0, 0], [1, 0, 0, 0]);
                p.extend(question("service.local", 252, 1));
                p
            },
            Rcode(ResponseCode::Refused),
        ),
        // Bits a query should not carry are ignored: TC, Z, AD, an rcode, RA.
        (
            "TC, Z, AD, RA and an rcode set",
            a_query([0x02, 0xF5], [1, 0, 0, 0], &[]),
            Answers(2),
        ),
        (
            "recursion desired",
            a_query([0x01, 0], [1, 0, 0, 0], &[]),
            Answers(2),
        ),
        (
            "EDNS version 0",
            a_query([0, 0], [1, 0, 0, 1], &opt(0)),
            Answers(2),
        ),
    ];
    // Many questions: the count alone, and the questions really there.
    let mut many = header([0, 0], [100, 0, 0, 0]);
    for _ in 0..100 {
        many.extend(question("payment.service.local", 1, 1));
    }
    cases.push(("a hundred questions", many, Rcode(ResponseCode::FormErr)));
    let mut counted = a_query([0, 0], [65535, 0, 0, 0], &[]);
    counted.extend_from_slice(&[0; 40]);
    cases.push((
        "question count 65535",
        counted,
        Rcode(ResponseCode::FormErr),
    ));
    cases
}

async fn payment_server(config: srvdns::config::Config) -> TestServer {
    let server = TestServer::start_with(config).await;
    for (id, address) in [("payment-1", "10.0.1.5"), ("payment-2", "10.0.1.6")] {
        server
            .register("payment", id, json!({"address": address, "port": 8080}))
            .await;
    }
    server
}

/// A normal query is answered in full, over both transports.
async fn still_answers(server: &TestServer, after: &str) {
    for transport in [Transport::Udp, Transport::Tcp] {
        let answer = server
            .query_message(
                &query("payment.service.local.", RecordType::A, None),
                transport,
            )
            .await;
        assert_eq!(
            rrs(&answer.answers),
            [
                "payment.service.local. 5 A 10.0.1.5",
                "payment.service.local. 5 A 10.0.1.6"
            ],
            "after {after}"
        );
    }
}

fn check(what: &str, transport: Transport, answer: Option<Vec<u8>>, expect: Expect) {
    let context = format!("{what} over {transport:?}");
    match (expect, answer) {
        (Expect::Silence, None) => {}
        (Expect::Silence, Some(bytes)) => panic!("{context}: expected silence, got {bytes:?}"),
        (_, None) => panic!("{context}: expected {expect:?}, got no answer"),
        (Expect::Rcode(rcode), Some(bytes)) => {
            assert_eq!(bytes[..2], ID, "{context}: ID");
            assert!(bytes[2] & 0x80 != 0, "{context}: QR");
            let message = Message::from_vec(&bytes)
                .unwrap_or_else(|e| panic!("{context}: unreadable answer ({e}): {bytes:?}"));
            // By number: 16 is both BADVERS (with OPT) and BADSIG (with TSIG) to hickory.
            assert_eq!(
                u16::from(message.metadata.response_code),
                u16::from(rcode),
                "{context}: {:?}",
                message.metadata.response_code
            );
            assert!(message.answers.is_empty(), "{context}: {message:?}");
            assert!(!message.metadata.recursion_available, "{context}: RA");
            if rcode == ResponseCode::BADVERS {
                let edns = message.edns.as_ref().expect("BADVERS carries OPT");
                assert_eq!(edns.version(), 0, "{context}: our version");
            }
        }
        (Expect::Answers(count), Some(bytes)) => {
            let message = Message::from_vec(&bytes).expect("a readable answer");
            assert_eq!(
                message.metadata.response_code,
                ResponseCode::NoError,
                "{context}"
            );
            assert_eq!(message.answers.len(), count, "{context}");
            assert!(message.metadata.authoritative, "{context}: AA");
            assert!(!message.metadata.truncation, "{context}: TC");
        }
    }
}

#[tokio::test]
async fn hostile_packets_over_udp_and_tcp() {
    let server = payment_server(test_config()).await;
    for (what, packet, expect) in hostile_table() {
        let answer = server.exchange_udp(&packet).await;
        check(what, Transport::Udp, answer, expect);
        // Over TCP, a packet that gets no answer leaves the connection open: the next query
        // on it is answered.
        let mut stream = TcpStream::connect(server.dns).await.unwrap();
        let answer = match expect {
            Expect::Silence => {
                let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&packet);
                stream.write_all(&framed).await.unwrap();
                let follow_up = query("payment.service.local.", RecordType::A, None);
                let bytes = support::tcp_exchange(&mut stream, &follow_up.to_vec().unwrap())
                    .await
                    .expect("the connection still answers");
                let message = Message::from_vec(&bytes).unwrap();
                assert_eq!(
                    message.metadata.id, follow_up.metadata.id,
                    "{what} over TCP"
                );
                None
            }
            _ => support::tcp_exchange(&mut stream, &packet).await,
        };
        check(what, Transport::Tcp, answer, expect);
        still_answers(&server, what).await;
    }
    server.stop().await;
}

fn tcp_limited_config() -> srvdns::config::Config {
    let mut config = test_config();
    config.tcp_limits.idle_timeout = Duration::from_millis(600);
    config.tcp_limits.max_connections = 4;
    config.tcp_limits.max_queries_per_connection = 3;
    config
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut sink = [0u8; 512];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

#[tokio::test]
async fn tcp_lengths_that_lie_and_slow_clients_are_cut_off() {
    let server = payment_server(tcp_limited_config()).await;
    let good = query("payment.service.local.", RecordType::A, None)
        .to_vec()
        .unwrap();

    // A prefix that promises more than is sent: closed after the idle timeout.
    let mut liar = TcpStream::connect(server.dns).await.unwrap();
    liar.write_all(&[0x01, 0x00]).await.unwrap();
    liar.write_all(&good).await.unwrap();
    still_answers(&server, "a long length prefix").await;
    let took = closed_within(&mut liar, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A prefix that promises less: the header alone is FORMERR; the rest is read as the next
    // (bogus) frame, and the connection ends in time.
    let mut short = TcpStream::connect(server.dns).await.unwrap();
    short.write_all(&[0x00, 12]).await.unwrap();
    short.write_all(&good).await.unwrap();
    let mut prefix = [0u8; 2];
    short.read_exact(&mut prefix).await.unwrap();
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    short.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        Message::from_vec(&answer).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    closed_within(&mut short, Duration::from_secs(5)).await;

    // A zero-length frame is no query: nothing is answered, the connection goes on.
    let mut empty = TcpStream::connect(server.dns).await.unwrap();
    empty.write_all(&[0, 0]).await.unwrap();
    let answer = support::tcp_exchange(&mut empty, &good).await;
    assert!(answer.is_some());

    // Slowloris: one byte every 250 ms never completes a query in time.
    let mut drip = TcpStream::connect(server.dns).await.unwrap();
    let start = Instant::now();
    let mut framed = (good.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&good);
    for byte in framed {
        if drip.write_all(&[byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if start.elapsed() > Duration::from_secs(5) {
            panic!("a dripping client was served for 5 s");
        }
    }
    closed_within(&mut drip, Duration::from_secs(5)).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    still_answers(&server, "a dripping client").await;
    server.stop().await;
}

#[tokio::test]
async fn tcp_connections_are_capped_in_number_and_queries() {
    let server = payment_server(tcp_limited_config()).await;
    let good = query("payment.service.local.", RecordType::A, None);

    // Three queries answered on one connection, then it is closed.
    let mut stream = TcpStream::connect(server.dns).await.unwrap();
    for _ in 0..3 {
        assert!(
            support::tcp_exchange(&mut stream, &good.to_vec().unwrap())
                .await
                .is_some()
        );
    }
    let fourth = support::tcp_exchange(&mut stream, &good.to_vec().unwrap()).await;
    assert!(fourth.is_none(), "a fourth query on the connection");

    // Four idle connections fill every slot: a fifth waits until the idle ones are cut,
    // while UDP goes on being answered.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(server.dns).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    let dns = server.dns;
    let waiting = tokio::spawn(async move {
        let mut stream = TcpStream::connect(dns).await.unwrap();
        support::tcp_exchange(&mut stream, &good.to_vec().unwrap()).await
    });
    let answer = server.query("payment.service.local.", RecordType::A).await;
    assert_eq!(answer.answers.len(), 2);
    let answer = waiting.await.unwrap().expect("answered once a slot frees");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "{took:?}: not held back"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(!Message::from_vec(&answer).unwrap().answers.is_empty());
    drop(idle);
    server.stop().await;
}

/// Sends `count` queries from `socket` as fast as it can, and collects the answers.
async fn flood(socket: &UdpSocket, server: SocketAddr, count: usize) -> Vec<Message> {
    let mut answers = Vec::new();
    let mut buffer = vec![0u8; 2048];
    for _ in 0..count {
        let message = query("payment.service.local.", RecordType::A, None);
        socket
            .send_to(&message.to_vec().unwrap(), server)
            .await
            .unwrap();
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer)).await
        {
            let answer = Message::from_vec(&buffer[..len]).unwrap();
            assert_eq!(answer.metadata.id, message.metadata.id);
            answers.push(answer);
        }
    }
    answers
}

fn rrl_config(limit_loopback: bool) -> srvdns::config::Config {
    let mut config = test_config();
    config.rrl.rate = 5;
    config.rrl.burst = 10;
    config.rrl.slip = 1;
    config.rrl.limit_loopback = limit_loopback;
    config
}

#[tokio::test]
async fn a_flood_from_one_prefix_gets_truncated_answers() {
    let server = payment_server(rrl_config(true)).await;
    let flooder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answers = flood(&flooder, server.dns, 60).await;
    // Every query is answered: the burst in full, the rest truncated (TC, no records, the
    // question echoed) so that a real client retries over TCP. A second or so of flooding
    // refills a few.
    assert_eq!(answers.len(), 60);
    let full = answers.iter().filter(|a| !a.metadata.truncation).count();
    assert!((10..=20).contains(&full), "{full} full answers");
    for answer in answers.iter().filter(|a| a.metadata.truncation) {
        assert!(answer.answers.is_empty() && answer.additionals.is_empty());
        assert_eq!(answer.queries.len(), 1);
        assert_eq!(answer.queries[0].name.to_string(), "payment.service.local.");
    }
    assert!(answers[..10].iter().all(|a| !a.metadata.truncation));
    assert!(answers[40..].iter().any(|a| a.metadata.truncation));
    // Another /24 is unaffected.
    let other = UdpSocket::bind("127.0.1.7:0").await.unwrap();
    let answers = flood(&other, server.dns, 5).await;
    assert!(
        answers
            .iter()
            .all(|a| !a.metadata.truncation && a.answers.len() == 2)
    );
    // TCP is never limited: the retry a TC answer asks for gets the full answer.
    let answer = server
        .query_tcp("payment.service.local.", RecordType::A)
        .await;
    assert_eq!(answer.answers.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn loopback_is_exempt_from_rate_limiting_by_default() {
    let server = payment_server(rrl_config(false)).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answers = flood(&socket, server.dns, 60).await;
    assert_eq!(answers.len(), 60);
    assert!(
        answers
            .iter()
            .all(|a| !a.metadata.truncation && a.answers.len() == 2)
    );
    server.stop().await;
}
