//! The DNS fuzz harness (`fuzz/harness.rs`) on the stable toolchain: seeded random packets
//! and mutations of well-formed queries, fed to both answer paths, plus every saved crash
//! input (`fuzz/regressions/`) as a regression test.
//!
//! `cargo test` runs a short, fixed budget; the `#[ignore]`d `fuzz_for_a_minute` runs for 60 s
//! (`SRVDNS_FUZZ_SECONDS` overrides), which CI's `cargo test -- --include-ignored` includes.
//! With a nightly toolchain and cargo-fuzz, the same harness runs under libFuzzer:
//! `cargo +nightly fuzz run dns_packet` (see fuzz/).

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::Harness;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn harness() -> Harness {
    Harness::new(&repository().join("zones"))
}

/// Well-formed queries over the names srvdns answers, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "web.service.local.",
        "V2.web.service.local.",
        "_web._tcp.service.local.",
        "_dns._udp.service.local.",
        "_web._v1.service.local.",
        "_metrics._tcp.pg.service.local.",
        "db.service.local.",
        "10-0-0-1.addr.service.local.",
        "2001-db8--3.addr.service.local.",
        "service.local.",
        "nope.service.local.",
        "down.service.local.",
        "www.example.internal.",
        "example.com.",
        ".",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::SOA,
        RecordType::NS,
        RecordType::TXT,
        RecordType::ANY,
    ];
    let mut seeds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for (j, rtype) in types.iter().enumerate() {
            let mut message = Message::new((i * 16 + j) as u16, MessageType::Query, OpCode::Query);
            message
                .queries
                .push(Query::query(Name::from_ascii(name).unwrap(), *rtype));
            if (i + j) % 2 == 0 {
                let mut edns = Edns::new();
                edns.set_max_payload(if j % 3 == 0 { 4096 } else { 1232 });
                edns.set_dnssec_ok(j % 4 == 0);
                message.edns = Some(edns);
            }
            seeds.push(message.to_vec().unwrap());
        }
    }
    seeds
}

/// A random change to a packet: the kinds of damage a hostile or broken client does.
fn mutate(rng: &mut SmallRng, packet: &mut Vec<u8>) {
    const INTERESTING: [u8; 9] = [0, 1, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xfe, 0xff];
    for _ in 0..rng.random_range(1..6) {
        let len = packet.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                packet[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                packet[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 if len > 0 => packet.truncate(rng.random_range(0..len)),
            3 => {
                let i = rng.random_range(0..=len);
                let extra: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                packet.splice(i..i, extra);
            }
            4 if len >= 12 => {
                // A count in the header set to something else.
                let field = 4 + 2 * rng.random_range(0..4);
                let value: u16 = if rng.random_bool(0.5) {
                    rng.random_range(0..4)
                } else {
                    rng.random()
                };
                packet[field..field + 2].copy_from_slice(&value.to_be_bytes());
            }
            5 if len > 14 => {
                // A compression pointer somewhere in the body.
                let i = rng.random_range(12..len - 1);
                let target = rng.random_range(0..len as u16);
                packet[i] = 0xc0 | (target >> 8) as u8;
                packet[i + 1] = target as u8;
            }
            7 if len > 16 => {
                // The question (or whatever follows the header) many times, counted.
                let body = packet[12..].to_vec();
                let times = rng.random_range(2..300u16);
                for _ in 1..times {
                    packet.extend_from_slice(&body);
                }
                packet[4..6].copy_from_slice(&times.to_be_bytes());
            }
            6 if len > 12 => {
                // A chunk of the body repeated (more questions, records, labels).
                let start = rng.random_range(12..len);
                let end = rng.random_range(start..=len);
                let chunk = packet[start..end].to_vec();
                packet.extend_from_slice(&chunk);
            }
            _ if len >= 4 => {
                // The flags: opcode, QR, TC, Z bits, rcode.
                packet[2] = rng.random();
                packet[3] = rng.random();
            }
            _ => packet.push(rng.random()),
        }
        // No DNS message is longer (a TCP length prefix is 16 bits); capping each step also
        // keeps repeated growth from eating memory.
        packet.truncate(65535);
    }
}

/// Runs random and mutated packets until `budget` passes or `max` packets, from `seed`.
fn fuzz(seed: u64, budget: Duration, max: usize) -> usize {
    let harness = harness();
    let seeds = seeds();
    let mut rng = SmallRng::seed_from_u64(seed);
    let start = Instant::now();
    let mut count = 0;
    while count < max && start.elapsed() < budget {
        let packet = if rng.random_bool(0.2) {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut packet = seeds[rng.random_range(0..seeds.len())].clone();
            mutate(&mut rng, &mut packet);
            packet
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| harness.run(&packet)));
        if let Err(panic) = outcome {
            let path = save_crash(&packet);
            std::panic::resume_unwind(Box::new(format!(
                "the harness panicked on a packet saved as {} ({:?}): {:?}",
                path.display(),
                packet,
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
            )));
        }
        count += 1;
    }
    count
}

/// Saves a crash input where the regression test below picks it up.
fn save_crash(packet: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join("srvdns-fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let name: String = packet.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("crash-{}-{name}.bin", packet.len()));
    let _ = std::fs::write(&path, packet);
    path
}

#[test]
fn random_and_mutated_packets_never_panic() {
    let count = fuzz(1, Duration::from_secs(5), 20_000);
    assert!(count > 1000, "only {count} packets in the budget");
}

#[test]
#[ignore = "runs for a minute; CI includes it"]
fn fuzz_for_a_minute() {
    let seconds: u64 = std::env::var("SRVDNS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed = std::env::var("SRVDNS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fuzzing for {seconds}s with SRVDNS_FUZZ_SEED={seed}");
    let count = fuzz(seed, Duration::from_secs(seconds), usize::MAX);
    eprintln!("{count} packets, no panic");
}

/// Every input that once crashed a path (kept in fuzz/regressions/, one file each, as
/// cargo-fuzz writes them) is answered without panicking.
#[test]
fn saved_crash_inputs_stay_fixed() {
    let harness = harness();
    let dir = repository().join("fuzz").join("regressions");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    inputs.retain(|path| path.extension().is_some_and(|e| e == "bin"));
    inputs.sort();
    for path in &inputs {
        let packet = std::fs::read(path).unwrap();
        harness.run(&packet);
    }
    // The seeds themselves, and the edge cases every parser gets wrong once.
    for packet in seeds() {
        harness.run(&packet);
    }
    for packet in [
        &[][..],
        &[0; 11],
        &[0; 12],
        &[0xff; 12],
        &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
        &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0],
        &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63],
        &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 64, b'a'],
    ] {
        harness.run(packet);
    }
}
