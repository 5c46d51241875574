//! The fast path: the common questions, answered straight into wire format.
//!
//! A plain query (opcode QUERY, one question of class IN, optionally one EDNS(0) OPT record)
//! for a name inside the served domain is parsed in place and answered by writing records
//! byte by byte into a reused buffer: no `Message` is built, nothing is decoded into owned
//! names, no allocation grows the output. Everything else — the apex, static names, names
//! outside the domain, EDNS versions above 0, odd packets — returns `false`, and the
//! reference path ([`super::answer::respond`]) answers it.
//!
//! There is one set of answer rules: which name means what ([`classify`]), which instances a
//! name selects ([`select`]) and in which order ([`address_order`], [`srv_order`]) are the
//! reference path's own functions. `tests/dns_fast_path.rs` checks the two paths against each
//! other over random registries and questions.
//!
//! Compression matches the reference encoder's: answer owners point at the question (offset
//! 12), SRV targets are written whole (RFC 2782), glue owners point at their SRV target.

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::rr::{Name, RecordType};
use rand::Rng;

use super::answer::{
    Authority, CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD, NameKind, Transport, address_order, classify,
    select, srv_order, wants,
};
use crate::registry::Snapshot;
use crate::registry::snapshot::{parse_addr_label, wire_name};

/// What the fast path precomputes from the [`Authority`].
#[derive(Debug, Clone)]
pub struct FastAuthority {
    /// The served domain in wire format, lowercase.
    domain_wire: Vec<u8>,
    domain_labels: usize,
    /// Lowercase wire names that static zone files own (or that lead to them) inside the
    /// domain: the reference path answers those.
    static_names: HashSet<Vec<u8>>,
    /// The generated SOA's rdata before the serial (mname, rname), when the served domain has
    /// no static SOA; `None` sends negative answers to the reference path.
    soa_names: Option<Vec<u8>>,
    /// refresh, retry, expire, minimum.
    soa_timers: [u8; 16],
    soa_ttl: u32,
}

const OPT_LEN: usize = 11;

impl FastAuthority {
    pub fn new(
        domain: &Name,
        zones: &super::zones::StaticZones,
        ttl: u32,
        negative_ttl: u32,
    ) -> Self {
        let mut static_names = HashSet::new();
        let domain_zone = zones.get(domain);
        for zone in zones.iter().filter(|z| domain.zone_of(&z.origin)) {
            for name in zone.records.keys().chain(zone.nonterminals.iter()) {
                static_names.insert(wire_name(name));
            }
        }
        let has_static_soa = domain_zone.is_some_and(|z| z.soa.is_some());
        let soa_names = (!has_static_soa).then(|| {
            let ns =
                Name::from_ascii(format!("ns.addr.{domain}")).unwrap_or_else(|_| domain.clone());
            let hostmaster =
                Name::from_ascii(format!("hostmaster.{domain}")).unwrap_or_else(|_| domain.clone());
            let mut names = wire_name(&ns);
            names.extend(wire_name(&hostmaster));
            names
        });
        let mut soa_timers = [0u8; 16];
        for (i, value) in [3600u32, 600, 86400, negative_ttl].into_iter().enumerate() {
            soa_timers[i * 4..i * 4 + 4].copy_from_slice(&value.to_be_bytes());
        }
        Self {
            domain_wire: wire_name(domain),
            domain_labels: usize::from(domain.num_labels()),
            static_names,
            soa_names,
            soa_timers,
            // The reference path: the SOA record carries the answer TTL, and negative answers
            // use min(SOA TTL, MINIMUM) (RFC 2308 §5).
            soa_ttl: ttl.min(negative_ttl),
        }
    }
}

/// Reused buffers of one worker.
#[derive(Debug, Default)]
pub struct Scratch {
    out: Vec<u8>,
}

impl Scratch {
    /// The last answer written.
    pub fn answer(&self) -> &[u8] {
        &self.out
    }
}

/// A parsed plain query.
struct Question<'p> {
    id: u16,
    flags: [u8; 2],
    /// The question section as sent (name, type, class).
    section: &'p [u8],
    /// The name, lowercase, wire format.
    name: [u8; 256],
    name_len: usize,
    /// Start offsets of the labels in `name`.
    labels: [u8; 128],
    label_count: usize,
    qtype: u16,
    edns: bool,
    limit: usize,
}

fn parse(packet: &[u8], transport: Transport) -> Option<Question<'_>> {
    if packet.len() < 12 + 5 {
        return None;
    }
    let flags = [packet[2], packet[3]];
    // QR, opcode, TC must all be zero.
    if flags[0] & 0xfa != 0 {
        return None;
    }
    let counts = |i: usize| u16::from_be_bytes([packet[4 + 2 * i], packet[5 + 2 * i]]);
    if counts(0) != 1 || counts(1) != 0 || counts(2) != 0 || counts(3) > 1 {
        return None;
    }
    let mut q = Question {
        id: u16::from_be_bytes([packet[0], packet[1]]),
        flags,
        section: &[],
        name: [0; 256],
        name_len: 0,
        labels: [0; 128],
        label_count: 0,
        qtype: 0,
        edns: false,
        limit: 0,
    };
    let mut pos = 12;
    loop {
        let len = usize::from(*packet.get(pos)?);
        if len == 0 {
            q.name[q.name_len] = 0;
            q.name_len += 1;
            pos += 1;
            break;
        }
        // Compression in a question, or a label over 63: the reference path decides.
        if len > 63 || q.name_len + len + 2 > 255 || q.label_count == 128 {
            return None;
        }
        let label = packet.get(pos + 1..pos + 1 + len)?;
        q.labels[q.label_count] = q.name_len as u8;
        q.label_count += 1;
        q.name[q.name_len] = len as u8;
        for (i, b) in label.iter().enumerate() {
            q.name[q.name_len + 1 + i] = b.to_ascii_lowercase();
        }
        q.name_len += 1 + len;
        pos += 1 + len;
    }
    let fixed = packet.get(pos..pos + 4)?;
    q.qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    if u16::from_be_bytes([fixed[2], fixed[3]]) != 1 {
        return None; // not class IN
    }
    pos += 4;
    q.section = &packet[12..pos];
    let mut payload = None;
    if counts(3) == 1 {
        let opt = packet.get(pos..pos + 11)?;
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        // Root owner, type OPT, version 0, and nothing after it.
        if opt[0] != 0
            || u16::from_be_bytes([opt[1], opt[2]]) != 41
            || opt[6] != 0
            || pos + 11 + rdlen != packet.len()
        {
            return None;
        }
        payload = Some(u16::from_be_bytes([opt[3], opt[4]]));
        q.edns = true;
    } else if pos != packet.len() {
        return None;
    }
    q.limit = match (transport, payload) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => usize::from(CLASSIC_UDP_PAYLOAD),
        (Transport::Udp, Some(size)) => {
            usize::from(size.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD))
        }
    };
    Some(q)
}

const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;

/// Writes the answer to a plain query into `scratch` and returns `true`, or returns `false`
/// for the reference path to answer.
pub fn answer<R: Rng>(
    authority: &Authority,
    snapshot: &Snapshot,
    packet: &[u8],
    transport: Transport,
    rng: &mut R,
    scratch: &mut Scratch,
) -> bool {
    let fast = &authority.fast;
    let Some(q) = parse(packet, transport) else {
        return false;
    };
    let name = &q.name[..q.name_len];
    // Inside the served domain, below its apex, and not a static name.
    if q.label_count <= fast.domain_labels {
        return false;
    }
    let suffix_start = usize::from(q.labels[q.label_count - fast.domain_labels]);
    if name[suffix_start..] != fast.domain_wire[..] || fast.static_names.contains(name) {
        return false;
    }
    let mut relative: [&str; 4] = [""; 4];
    let relative_count = q.label_count - fast.domain_labels;
    if relative_count > relative.len() {
        return write_negative(fast, snapshot, &q, suffix_start, NXDOMAIN, scratch);
    }
    for (i, slot) in relative.iter_mut().take(relative_count).enumerate() {
        let start = usize::from(q.labels[i]) + 1;
        let end = start + usize::from(name[start - 1]);
        match std::str::from_utf8(&name[start..end]) {
            Ok(label) => *slot = label,
            Err(_) => return false,
        }
    }
    let qtype = RecordType::from(q.qtype);
    match classify(&relative[..relative_count]) {
        NameKind::Apex => false,
        NameKind::NonTerminal => write_negative(fast, snapshot, &q, suffix_start, NOERROR, scratch),
        NameKind::NxDomain => write_negative(fast, snapshot, &q, suffix_start, NXDOMAIN, scratch),
        NameKind::Address(label) => {
            if label == "ns" {
                return false;
            }
            match parse_addr_label(label) {
                Some(ip) if wants(qtype, ip) => {
                    let mut w = Writer::start(&q, scratch);
                    w.address(ip, authority.ttl);
                    w.finish(NOERROR, 0);
                    true
                }
                Some(_) => write_negative(fast, snapshot, &q, suffix_start, NOERROR, scratch),
                None => write_negative(fast, snapshot, &q, suffix_start, NXDOMAIN, scratch),
            }
        }
        NameKind::BelowService(service) => {
            let rcode = if snapshot.service(service).is_some() {
                NOERROR
            } else {
                NXDOMAIN
            };
            write_negative(fast, snapshot, &q, suffix_start, rcode, scratch)
        }
        NameKind::Service {
            service,
            selection,
            srv_only,
        } => {
            let Some(entry) = snapshot.service(service) else {
                return write_negative(fast, snapshot, &q, suffix_start, NXDOMAIN, scratch);
            };
            let selected = select(entry, &selection);
            if selected.is_empty() && !selection.exists(entry) {
                return write_negative(fast, snapshot, &q, suffix_start, NXDOMAIN, scratch);
            }
            match qtype {
                RecordType::SRV => {
                    let order = srv_order(&selected, authority.max_answers, rng);
                    if order.is_empty() {
                        return write_negative(fast, snapshot, &q, suffix_start, NOERROR, scratch);
                    }
                    let mut w = Writer::start(&q, scratch);
                    // (address, offset of its SRV target) for glue.
                    let mut glue: Vec<(IpAddr, u16)> = Vec::new();
                    for i in order {
                        let (served, port) = selected[i];
                        let Some(target_at) = w.srv(
                            served.priority,
                            served.weight,
                            port,
                            &served.target_wire,
                            authority.ttl,
                        ) else {
                            break;
                        };
                        if let Some(ip) = served.ip
                            && !glue.iter().any(|(g, _)| *g == ip)
                        {
                            glue.push((ip, target_at));
                        }
                    }
                    if !w.truncated {
                        for (ip, target_at) in glue {
                            if !w.glue(ip, target_at, authority.ttl) {
                                break;
                            }
                        }
                    }
                    w.finish(NOERROR, 0);
                    true
                }
                RecordType::A | RecordType::AAAA | RecordType::ANY if !srv_only => {
                    let ips = address_order(&selected, qtype, authority.max_answers, rng);
                    if ips.is_empty() {
                        return write_negative(fast, snapshot, &q, suffix_start, NOERROR, scratch);
                    }
                    let mut w = Writer::start(&q, scratch);
                    for ip in ips {
                        if !w.address(ip, authority.ttl) {
                            break;
                        }
                    }
                    w.finish(NOERROR, 0);
                    true
                }
                _ => write_negative(fast, snapshot, &q, suffix_start, NOERROR, scratch),
            }
        }
    }
}

/// NXDOMAIN or NODATA with the generated SOA in the authority section.
fn write_negative(
    fast: &FastAuthority,
    snapshot: &Snapshot,
    q: &Question<'_>,
    suffix_start: usize,
    rcode: u8,
    scratch: &mut Scratch,
) -> bool {
    let Some(soa_names) = &fast.soa_names else {
        return false;
    };
    let mut w = Writer::start(q, scratch);
    // The owner: a pointer to the domain inside the question when it is spelled the same
    // there (the reference encoder compresses only exact matches), else the name itself.
    let asked = &q.section[suffix_start..suffix_start + fast.domain_wire.len()];
    let rdlen = soa_names.len() + 4 + 16;
    if asked == fast.domain_wire {
        w.put(&(0xC000 | (12 + suffix_start) as u16).to_be_bytes());
    } else {
        w.put(&fast.domain_wire);
    }
    w.put(&[0, 6, 0, 1]);
    w.put(&fast.soa_ttl.to_be_bytes());
    w.put(&(rdlen as u16).to_be_bytes());
    w.put(soa_names);
    w.put(&(snapshot.index as u32).to_be_bytes());
    w.put(&fast.soa_timers);
    w.finish(rcode, 1);
    true
}

/// Writes one response into the scratch buffer, respecting the size limit.
struct Writer<'s> {
    out: &'s mut Vec<u8>,
    /// The most the sections may take (the limit less the OPT record).
    room: usize,
    answers: u16,
    additionals: u16,
    truncated: bool,
    id: u16,
    flags: [u8; 2],
    edns: bool,
}

impl<'s> Writer<'s> {
    fn start(q: &Question<'_>, scratch: &'s mut Scratch) -> Self {
        let out = &mut scratch.out;
        out.clear();
        out.extend_from_slice(&[0; 12]);
        out.extend_from_slice(q.section);
        Self {
            out,
            room: q.limit - if q.edns { OPT_LEN } else { 0 },
            answers: 0,
            additionals: 0,
            truncated: false,
            id: q.id,
            flags: q.flags,
            edns: q.edns,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn fits(&self, len: usize) -> bool {
        self.out.len() + len <= self.room
    }

    fn rr_head(&mut self, owner: u16, rtype: u16, ttl: u32, rdlen: usize) {
        self.put(&(0xC000 | owner).to_be_bytes());
        self.put(&rtype.to_be_bytes());
        self.put(&[0, 1]);
        self.put(&ttl.to_be_bytes());
        self.put(&(rdlen as u16).to_be_bytes());
    }

    /// An A/AAAA answer owned by the question name; `false` (and TC) when it does not fit.
    fn address(&mut self, ip: IpAddr, ttl: u32) -> bool {
        let (rtype, len) = match ip {
            IpAddr::V4(_) => (1, 4),
            IpAddr::V6(_) => (28, 16),
        };
        if !self.fits(12 + len) {
            self.truncated = true;
            return false;
        }
        self.rr_head(12, rtype, ttl, len);
        match ip {
            IpAddr::V4(v4) => self.put(&v4.octets()),
            IpAddr::V6(v6) => self.put(&v6.octets()),
        }
        self.answers += 1;
        true
    }

    /// An SRV answer; returns the offset of its target, `None` (and TC) when it does not fit.
    fn srv(
        &mut self,
        priority: u16,
        weight: u16,
        port: u16,
        target: &[u8],
        ttl: u32,
    ) -> Option<u16> {
        let rdlen = 6 + target.len();
        if !self.fits(12 + rdlen) {
            self.truncated = true;
            return None;
        }
        self.rr_head(12, 33, ttl, rdlen);
        self.put(&priority.to_be_bytes());
        self.put(&weight.to_be_bytes());
        self.put(&port.to_be_bytes());
        let at = self.out.len();
        self.put(target);
        self.answers += 1;
        // Pointers reach 14 bits; beyond that, glue is written without compression.
        u16::try_from(at)
            .ok()
            .filter(|at| *at < 0x3FFF)
            .or(Some(u16::MAX))
    }

    /// Glue for an SRV target; `false` when it does not fit (glue is optional: no TC).
    fn glue(&mut self, ip: IpAddr, target_at: u16, ttl: u32) -> bool {
        if target_at == u16::MAX {
            return false;
        }
        let (rtype, len) = match ip {
            IpAddr::V4(_) => (1, 4),
            IpAddr::V6(_) => (28, 16),
        };
        if !self.fits(12 + len) {
            return false;
        }
        self.rr_head(target_at, rtype, ttl, len);
        match ip {
            IpAddr::V4(v4) => self.put(&v4.octets()),
            IpAddr::V6(v6) => self.put(&v6.octets()),
        }
        self.additionals += 1;
        true
    }

    fn finish(mut self, rcode: u8, authorities: u16) {
        if self.edns {
            // Root owner, OPT, our payload size, no extended rcode, version 0, no flags.
            self.put(&[0, 0, 41]);
            self.put(&MAX_UDP_PAYLOAD.to_be_bytes());
            self.put(&[0, 0, 0, 0, 0, 0]);
            self.additionals += 1;
        }
        let flags0 = 0x80 | 0x04 | if self.truncated { 0x02 } else { 0 } | (self.flags[0] & 0x01);
        let flags1 = (self.flags[1] & 0x10) | rcode;
        let header = &mut self.out[..12];
        header[0..2].copy_from_slice(&self.id.to_be_bytes());
        header[2] = flags0;
        header[3] = flags1;
        header[4..6].copy_from_slice(&1u16.to_be_bytes());
        header[6..8].copy_from_slice(&self.answers.to_be_bytes());
        header[8..10].copy_from_slice(&authorities.to_be_bytes());
        header[10..12].copy_from_slice(&self.additionals.to_be_bytes());
    }
}
