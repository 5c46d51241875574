//! Answer building: request bytes + snapshot → response bytes. Pure: no I/O, no locks, no
//! clock; randomness (answer order) comes from the caller's RNG.
//!
//! The rules are DESIGN.md's "Names answered" section:
//!
//! | name (domain `D`)                  | types        |
//! |------------------------------------|--------------|
//! | `<service>.D`, `<tag>.<service>.D` | A, AAAA, SRV |
//! | `_<service>._tcp.D`, `_udp`, `_<service>._<tag>.D` | SRV |
//! | `_<port>._<proto>.<service>.D`     | SRV          |
//! | `<addr>.addr.D`                    | A, AAAA      |
//! | `D`                                | SOA, NS      |
//! | static zone names                  | any          |
//!
//! Everything else inside `D` is NXDOMAIN (or NODATA for names that exist with other types,
//! and for empty non-terminals such as `_tcp.D`), everything outside `D` and the static zones
//! is REFUSED. Truncation follows RFC 2181 §9: TC is set when the answer or authority section
//! does not fit; glue in the additional section that does not fit is left out without TC.

use std::net::IpAddr;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use rand::Rng;

use super::zones::{StaticZone, StaticZones};
use crate::registry::model::Protocol;
use crate::registry::snapshot::{Served, ServiceEntry, Snapshot, parse_addr_label};

/// The UDP payload size srvdns offers and the most it sends over UDP (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP size without EDNS (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// The transport a query came over; decides the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Everything that answering needs besides the snapshot; fixed at start.
#[derive(Debug, Clone)]
pub struct Authority {
    /// The served domain: lowercase, fully qualified.
    pub domain: Name,
    /// TTL of dynamic answers.
    pub ttl: u32,
    /// SOA MINIMUM of the generated SOA (negative caching).
    pub negative_ttl: u32,
    /// Cap on A/AAAA/SRV answers (a weighted random subset, without TC).
    pub max_answers: Option<usize>,
    /// Addresses of `ns.addr.D`, the generated NS target.
    pub ns_addresses: Vec<IpAddr>,
    pub zones: StaticZones,
    /// What the fast path precomputes from the above.
    pub fast: super::fast::FastAuthority,
}

impl Authority {
    pub fn new(
        domain: Name,
        ttl: u32,
        negative_ttl: u32,
        max_answers: Option<usize>,
        ns_addresses: Vec<IpAddr>,
        zones: StaticZones,
    ) -> Self {
        let fast = super::fast::FastAuthority::new(&domain, &zones, ttl, negative_ttl);
        Self {
            domain,
            ttl,
            negative_ttl,
            max_answers,
            ns_addresses,
            zones,
            fast,
        }
    }

    fn ns_name(&self) -> Name {
        self.domain
            .prepend_label("addr")
            .and_then(|n| n.prepend_label("ns"))
            .unwrap_or_else(|_| self.domain.clone())
    }

    /// The SOA of the served domain: the static zone's if it has one, else generated with the
    /// registry index as serial.
    fn soa(&self, index: u64) -> Record {
        if let Some(soa) = self.zones.get(&self.domain).and_then(|z| z.soa.clone()) {
            return soa;
        }
        let rname = self
            .domain
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| self.domain.clone());
        Record::from_rdata(
            self.domain.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.ns_name(),
                rname,
                // The serial follows the registry (RFC 1982 arithmetic wraps).
                index as u32,
                3600,
                600,
                86400,
                self.negative_ttl,
            )),
        )
    }
}

/// What a lookup found, before encoding.
#[derive(Debug, Default)]
struct Answer {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Self {
            rcode: ResponseCode::Refused,
            ..Self::default()
        }
    }
}

/// Answers one request packet. `None` means send nothing: the packet is not a query, or its
/// header is unreadable (there is no ID to answer to).
pub fn respond<R: Rng>(
    authority: &Authority,
    snapshot: &Snapshot,
    packet: &[u8],
    transport: Transport,
    rng: &mut R,
) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        // Too short for a header, or QR set: a response, never answered (RFC 1035 §4.1.1).
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let opcode = (packet[2] >> 3) & 0x0f;
    let recursion_desired = packet[2] & 0x01 != 0;
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(_) => {
            return Some(header_only(
                id,
                OpCode::from_u8(opcode),
                recursion_desired,
                ResponseCode::FormErr,
            ));
        }
    };
    let mut metadata = Metadata::new(id, MessageType::Response, request.metadata.op_code);
    metadata.recursion_desired = request.metadata.recursion_desired;
    metadata.checking_disabled = request.metadata.checking_disabled;
    let mut response = Message::new(id, MessageType::Response, request.metadata.op_code);
    response.metadata = metadata;
    // The question is echoed when there is one; a FORMERR for many questions echoes none (a
    // hundred echoed questions would not fit a UDP answer, and there is nothing to answer).
    if request.queries.len() == 1 {
        response.queries = request.queries.clone();
    }
    response.edns = request.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD).set_version(0);
        edns
    });
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => u16::MAX,
        (Transport::Udp, None) => CLASSIC_UDP_PAYLOAD,
        (Transport::Udp, Some(edns)) => edns
            .max_payload()
            .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
    };

    let answer = if request.metadata.op_code != OpCode::Query {
        Answer {
            rcode: ResponseCode::NotImp,
            ..Answer::default()
        }
    } else if request.queries.len() != 1 {
        Answer {
            rcode: ResponseCode::FormErr,
            ..Answer::default()
        }
    } else if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
        // RFC 6891 §6.1.3: BADVERS, with our highest version (0) in the OPT record.
        Answer {
            rcode: ResponseCode::BADVERS,
            ..Answer::default()
        }
    } else {
        lookup(authority, snapshot, &request.queries[0], rng)
    };

    response.metadata.response_code = answer.rcode;
    response.metadata.authoritative = answer.authoritative;
    response.answers = answer.answers;
    response.authorities = answer.authorities;
    response.additionals = answer.additionals;
    encode(&response, limit).ok()
}

/// A response with only a header: for requests whose question could not be read.
fn header_only(id: u16, opcode: OpCode, recursion_desired: bool, rcode: ResponseCode) -> Vec<u8> {
    let mut metadata = Metadata::new(id, MessageType::Response, opcode);
    metadata.recursion_desired = recursion_desired;
    metadata.response_code = rcode;
    let mut bytes = Vec::with_capacity(12);
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut encoder = BinEncoder::new(&mut bytes);
    match header.emit(&mut encoder) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
}

/// Encodes `message` in at most `limit` bytes. What does not fit is cut at a whole record:
/// answers or authority records that do not fit set TC; additional records are optional
/// (RFC 2181 §9) and are dropped without it. The OPT record always fits.
pub fn encode(message: &Message, limit: u16) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let full = message.to_vec()?;
    if full.len() <= usize::from(limit) {
        return Ok(full);
    }
    let opt = message.edns.as_ref().map(|edns| {
        let mut edns = edns.clone();
        edns.set_rcode_high(message.metadata.response_code.high());
        Record::from(&edns)
    });
    let opt_len = opt
        .as_ref()
        .and_then(|record| record.to_bytes().ok())
        .map_or(0, |bytes| bytes.len());

    let mut bytes = Vec::with_capacity(usize::from(limit));
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(limit.saturating_sub(opt_len as u16));
    let place = encoder.place::<Header>()?;
    let queries = encoder.emit_all(message.queries.iter())?;
    let mut truncated = false;
    let mut counts = HeaderCounts {
        queries: queries as u16,
        ..HeaderCounts::default()
    };
    let emit_section =
        |encoder: &mut BinEncoder<'_>, records: &[Record]| match encoder.emit_all(records.iter()) {
            Ok(n) => Ok((n as u16, false)),
            Err(hickory_proto::ProtoError::NotAllRecordsWritten { count, .. }) => {
                Ok((count as u16, true))
            }
            Err(e) => Err(e),
        };
    let (answers, cut) = emit_section(&mut encoder, &message.answers)?;
    counts.answers = answers;
    truncated |= cut;
    if !truncated {
        let (authorities, cut) = emit_section(&mut encoder, &message.authorities)?;
        counts.authorities = authorities;
        truncated |= cut;
    }
    if !truncated {
        counts.additionals = emit_section(&mut encoder, &message.additionals)?.0;
    }
    encoder.set_max_size(limit);
    if let Some(opt) = &opt {
        opt.emit(&mut encoder)?;
        counts.additionals += 1;
    }
    let mut metadata = message.metadata;
    metadata.truncation = truncated;
    place.replace(&mut encoder, Header { metadata, counts })?;
    // A record that did not fit is rolled back by moving the offset; the bytes it wrote
    // stay in the buffer past it.
    let len = encoder.offset();
    bytes.truncate(len);
    Ok(bytes)
}

/// Finds the answer to one question.
fn lookup<R: Rng>(
    authority: &Authority,
    snapshot: &Snapshot,
    query: &Query,
    rng: &mut R,
) -> Answer {
    if query.query_class != DNSClass::IN {
        return Answer::refused();
    }
    if matches!(
        query.query_type,
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT
    ) {
        return Answer::refused();
    }
    let qname = query.name.to_lowercase();
    if authority.domain.zone_of(&qname) {
        let mut answer = lookup_domain(authority, snapshot, query, &qname, rng);
        answer.authoritative = true;
        if answer.answers.is_empty() && answer.authorities.is_empty() {
            let soa = authority.soa(snapshot.index);
            let mut soa = soa;
            soa.ttl = StaticZone::negative_ttl(&soa);
            answer.authorities.push(soa);
        }
        return answer;
    }
    match authority.zones.find(&qname) {
        Some(zone) => {
            let mut answer = lookup_static(zone, query, &qname);
            answer.authoritative = true;
            if answer.answers.is_empty()
                && let Some(soa) = &zone.soa
            {
                let mut soa = soa.clone();
                soa.ttl = StaticZone::negative_ttl(&soa);
                answer.authorities.push(soa);
            }
            answer
        }
        None => Answer::refused(),
    }
}

fn nxdomain() -> Answer {
    Answer {
        rcode: ResponseCode::NXDomain,
        ..Answer::default()
    }
}

fn nodata() -> Answer {
    Answer::default()
}

/// Which of a service's instances a name selects.
#[derive(Debug)]
pub(crate) enum Selection<'a> {
    All,
    Tag(&'a str),
    Protocol(Protocol),
    NamedPort(&'a str, Protocol),
}

impl Selection<'_> {
    /// Does the name exist: does any registered instance (healthy or not) match? Only asked
    /// when no served instance matches, so the scan stays off the common path.
    pub(crate) fn exists(&self, entry: &ServiceEntry) -> bool {
        entry.dns.instances.iter().any(|i| match self {
            Self::All => true,
            Self::Tag(tag) => i.tags.iter().any(|t| t == tag),
            Self::Protocol(p) => i.protocol == p.as_str(),
            Self::NamedPort(port, p) => {
                i.protocol == p.as_str() && i.port_names.iter().any(|name| name == port)
            }
        })
    }

    /// The port a served instance matches with, if it matches.
    fn port_of(&self, served: &Served) -> Option<u16> {
        match self {
            Self::All => Some(served.port),
            Self::Tag(tag) => served.tags.iter().any(|t| t == tag).then_some(served.port),
            Self::Protocol(p) => (served.protocol == *p).then_some(served.port),
            Self::NamedPort(port, p) => {
                if served.protocol == *p {
                    served.ports.get(*port).copied()
                } else {
                    None
                }
            }
        }
    }
}

fn protocol_label(label: &str) -> Option<Protocol> {
    match label {
        "_tcp" => Some(Protocol::Tcp),
        "_udp" => Some(Protocol::Udp),
        _ => None,
    }
}

/// Looks up a name inside the served domain.
fn lookup_domain<R: Rng>(
    authority: &Authority,
    snapshot: &Snapshot,
    query: &Query,
    qname: &Name,
    rng: &mut R,
) -> Answer {
    let qtype = query.query_type;
    let static_zone = authority.zones.get(&authority.domain);
    let depth = usize::from(authority.domain.num_labels());
    let labels: Vec<&[u8]> = qname.iter().collect();
    let relative = &labels[..labels.len() - depth];

    if relative.is_empty() {
        return apex(authority, snapshot, query, static_zone);
    }
    if let Some(zone) = static_zone
        && zone.exists(qname)
    {
        return lookup_static(zone, query, qname);
    }
    let Ok(relative) = relative
        .iter()
        .map(|label| std::str::from_utf8(label))
        .collect::<Result<Vec<&str>, _>>()
    else {
        return nxdomain();
    };
    match classify(&relative) {
        NameKind::Apex => apex(authority, snapshot, query, static_zone),
        NameKind::NonTerminal => nodata(),
        NameKind::NxDomain => nxdomain(),
        NameKind::Address(label) => address(authority, query, label),
        NameKind::BelowService(service) => match snapshot.service(service) {
            Some(_) => nodata(),
            None => nxdomain(),
        },
        NameKind::Service {
            service,
            selection,
            srv_only,
        } => {
            let Some(entry) = snapshot.service(service) else {
                return nxdomain();
            };
            let selected = select(entry, &selection);
            if selected.is_empty() && !selection.exists(entry) {
                return nxdomain();
            }
            match qtype {
                RecordType::SRV => srv_answer(authority, query, selected, rng),
                RecordType::A | RecordType::AAAA | RecordType::ANY if !srv_only => {
                    address_answer(authority, query, &selected, qtype, rng)
                }
                _ => nodata(),
            }
        }
    }
}

/// What a name inside the served domain is, from its labels below the domain (lowercase).
/// Both answer paths (this module and [`super::fast`]) decide with this one function.
#[derive(Debug)]
pub(crate) enum NameKind<'a> {
    /// The domain itself.
    Apex,
    /// An empty non-terminal (`addr.D`, `_tcp.D`): NODATA.
    NonTerminal,
    /// `<label>.addr.D`.
    Address(&'a str),
    /// `_<x>.<service>.D`: an empty non-terminal when the service exists.
    BelowService(&'a str),
    /// Names that select instances of a service.
    Service {
        service: &'a str,
        selection: Selection<'a>,
        srv_only: bool,
    },
    NxDomain,
}

pub(crate) fn classify<'a>(relative: &[&'a str]) -> NameKind<'a> {
    match relative {
        [] => NameKind::Apex,
        ["addr"] => NameKind::NonTerminal,
        [label, "addr"] => NameKind::Address(label),
        [label] if label.starts_with('_') => NameKind::NonTerminal,
        [service] => NameKind::Service {
            service,
            selection: Selection::All,
            srv_only: false,
        },
        [first, second] if first.starts_with('_') && second.starts_with('_') => NameKind::Service {
            service: &first[1..],
            selection: match protocol_label(second) {
                Some(protocol) => Selection::Protocol(protocol),
                None => Selection::Tag(&second[1..]),
            },
            srv_only: true,
        },
        // `_<port>.<service>` or `_<proto>.<service>`: empty non-terminals of named ports.
        [label, service] if label.starts_with('_') => NameKind::BelowService(service),
        [tag, service] => NameKind::Service {
            service,
            selection: Selection::Tag(tag),
            srv_only: false,
        },
        [port, proto, service] if port.starts_with('_') => match protocol_label(proto) {
            Some(protocol) => NameKind::Service {
                service,
                selection: Selection::NamedPort(&port[1..], protocol),
                srv_only: true,
            },
            None => NameKind::NxDomain,
        },
        _ => NameKind::NxDomain,
    }
}

/// The served instances a selection matches, each with the port it is answered on.
pub(crate) fn select<'e>(
    entry: &'e ServiceEntry,
    selection: &Selection<'_>,
) -> Vec<(&'e Served, u16)> {
    entry
        .dns
        .served()
        .filter_map(|served| selection.port_of(served).map(|port| (served, port)))
        .collect()
}

/// The addresses of an A/AAAA (or ANY) answer, in answer order: one per address (instances
/// sharing a host share its record, RFC 2181 §5, with their weights added), weighted random,
/// capped at `max`.
pub(crate) fn address_order<R: Rng>(
    selected: &[(&Served, u16)],
    qtype: RecordType,
    max: Option<usize>,
    rng: &mut R,
) -> Vec<IpAddr> {
    let mut addresses: Vec<(IpAddr, u16)> = selected
        .iter()
        .filter_map(|(served, _)| served.ip.map(|ip| (ip, served.weight)))
        .filter(|(ip, _)| wants(qtype, *ip))
        .collect();
    addresses.sort_by_key(|(ip, _)| *ip);
    addresses.dedup_by(|a, b| {
        if a.0 == b.0 {
            b.1 = b.1.saturating_add(a.1);
            true
        } else {
            false
        }
    });
    let keys: Vec<(u16, u16)> = addresses.iter().map(|&(_, weight)| (0, weight)).collect();
    let mut order = weighted_order(&keys, rng);
    if let Some(max) = max {
        order.truncate(max);
    }
    order.into_iter().map(|i| addresses[i].0).collect()
}

/// The SRV answer order over `selected`: by priority, weighted random within a priority
/// (RFC 2782), capped at `max`. Indices into `selected`.
pub(crate) fn srv_order<R: Rng>(
    selected: &[(&Served, u16)],
    max: Option<usize>,
    rng: &mut R,
) -> Vec<usize> {
    let keys: Vec<(u16, u16)> = selected
        .iter()
        .map(|(served, _)| (served.priority, served.weight))
        .collect();
    let mut order = weighted_order(&keys, rng);
    if let Some(max) = max {
        order.truncate(max);
    }
    order
}

/// The apex of the served domain: SOA, NS, and whatever the static file adds there.
fn apex(
    authority: &Authority,
    snapshot: &Snapshot,
    query: &Query,
    static_zone: Option<&StaticZone>,
) -> Answer {
    let qtype = query.query_type;
    let mut answer = Answer::default();
    if let Some(records) = static_zone.and_then(|zone| zone.at(&authority.domain)) {
        answer.answers.extend(
            records
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .map(|r| with_owner(r, &query.name)),
        );
    }
    let has = |answer: &Answer, t: RecordType| answer.answers.iter().any(|r| r.record_type() == t);
    if matches!(qtype, RecordType::SOA | RecordType::ANY) && !has(&answer, RecordType::SOA) {
        answer
            .answers
            .push(with_owner(&authority.soa(snapshot.index), &query.name));
    }
    if matches!(qtype, RecordType::NS | RecordType::ANY) && !has(&answer, RecordType::NS) {
        let ns = authority.ns_name();
        answer.answers.push(Record::from_rdata(
            query.name.clone(),
            authority.ttl,
            RData::NS(NS(ns.clone())),
        ));
        answer.additionals.extend(
            authority
                .ns_addresses
                .iter()
                .map(|ip| address_record(ns.clone(), *ip, authority.ttl)),
        );
    }
    answer
}

/// `<addr>.addr.D` and `ns.addr.D`.
fn address(authority: &Authority, query: &Query, label: &str) -> Answer {
    let ips: Vec<IpAddr> = if label == "ns" {
        authority.ns_addresses.clone()
    } else {
        match parse_addr_label(label) {
            Some(ip) => vec![ip],
            None => return nxdomain(),
        }
    };
    let mut answer = Answer::default();
    answer.answers.extend(
        ips.into_iter()
            .filter(|ip| wants(query.query_type, *ip))
            .map(|ip| address_record(query.name.clone(), ip, authority.ttl)),
    );
    answer
}

pub(crate) fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A | RecordType::ANY, IpAddr::V4(_))
            | (RecordType::AAAA | RecordType::ANY, IpAddr::V6(_))
    )
}

fn address_record(name: Name, ip: IpAddr, ttl: u32) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, ttl, data)
}

fn with_owner(record: &Record, owner: &Name) -> Record {
    let mut record = record.clone();
    record.name = owner.clone();
    record
}

/// A weighted random order of `items`, given as `(group, weight)`: groups ascending (SRV
/// priority), and within a group an item's chance to come first is proportional to its weight
/// (Efraimidis–Spirakis keys). Weight 0 items come after the others of their group in random
/// order, as RFC 2782 asks ("a very small chance of being selected"). Returns the indices of
/// `items` in answer order.
pub(crate) fn weighted_order<R: Rng>(items: &[(u16, u16)], rng: &mut R) -> Vec<usize> {
    let mut keyed: Vec<(u16, bool, f64, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, &(group, weight))| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let key = if weight == 0 {
                u
            } else {
                u.ln() / f64::from(weight)
            };
            (group, weight == 0, key, i)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.total_cmp(&a.2)));
    keyed.into_iter().map(|(_, _, _, i)| i).collect()
}

fn address_answer<R: Rng>(
    authority: &Authority,
    query: &Query,
    selected: &[(&Served, u16)],
    qtype: RecordType,
    rng: &mut R,
) -> Answer {
    Answer {
        answers: address_order(selected, qtype, authority.max_answers, rng)
            .into_iter()
            .map(|ip| address_record(query.name.clone(), ip, authority.ttl))
            .collect(),
        ..Answer::default()
    }
}

fn srv_answer<R: Rng>(
    authority: &Authority,
    query: &Query,
    selected: Vec<(&Served, u16)>,
    rng: &mut R,
) -> Answer {
    let mut answer = Answer::default();
    let mut glued: Vec<IpAddr> = Vec::new();
    for i in srv_order(&selected, authority.max_answers, rng) {
        let (served, port) = selected[i];
        answer.answers.push(Record::from_rdata(
            query.name.clone(),
            authority.ttl,
            RData::SRV(SRV::new(
                served.priority,
                served.weight,
                port,
                served.target.clone(),
            )),
        ));
        if let Some(ip) = served.ip
            && !glued.contains(&ip)
        {
            glued.push(ip);
            answer
                .additionals
                .push(address_record(served.target.clone(), ip, authority.ttl));
        }
    }
    answer
}

/// Answers from a static zone: exact records, CNAME (followed once inside the zone), NODATA
/// for existing names and empty non-terminals, NXDOMAIN otherwise.
fn lookup_static(zone: &StaticZone, query: &Query, qname: &Name) -> Answer {
    let qtype = query.query_type;
    let Some(records) = zone.at(qname) else {
        return if zone.exists(qname) {
            nodata()
        } else {
            nxdomain()
        };
    };
    let mut answer = Answer::default();
    let cname = records
        .iter()
        .find(|r| r.record_type() == RecordType::CNAME);
    match cname {
        Some(cname) if qtype != RecordType::CNAME && qtype != RecordType::ANY => {
            answer.answers.push(with_owner(cname, &query.name));
            if let RData::CNAME(target) = &cname.data
                && let Some(target_records) = zone.at(&target.0.to_lowercase())
            {
                answer.answers.extend(
                    target_records
                        .iter()
                        .filter(|r| r.record_type() == qtype)
                        .cloned(),
                );
            }
        }
        _ => answer.answers.extend(
            records
                .iter()
                .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
                .map(|r| with_owner(r, &query.name)),
        ),
    }
    // Glue for targets inside the zone.
    let targets: Vec<Name> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.target.to_lowercase()),
            RData::MX(mx) => Some(mx.exchange.to_lowercase()),
            RData::NS(ns) => Some(ns.0.to_lowercase()),
            _ => None,
        })
        .collect();
    for target in targets {
        if let Some(records) = zone.at(&target) {
            answer.additionals.extend(
                records
                    .iter()
                    .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
                    .cloned(),
            );
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn weighted_order_puts_heavier_items_first_proportionally() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut b_first = 0u32;
        for _ in 0..30_000 {
            // a: weight 1, b: weight 3, c: weight 0.
            let order = weighted_order(&[(0, 1), (0, 3), (0, 0)], &mut rng);
            assert_eq!(order[2], 2, "weight 0 goes last");
            b_first += u32::from(order[0] == 1);
        }
        // b has 3/4 of the weight: it should come first about 75% of the time.
        let share = f64::from(b_first) / 30_000.0;
        assert!((0.72..0.78).contains(&share), "share {share}");
    }

    #[test]
    fn weighted_order_respects_priority_groups() {
        let mut rng = SmallRng::seed_from_u64(1);
        let items = [(10, 100), (0, 1), (5, 1), (0, 50)];
        for _ in 0..100 {
            let order = weighted_order(&items, &mut rng);
            let groups: Vec<u16> = order.iter().map(|&i| items[i].0).collect();
            assert_eq!(groups, [0, 0, 5, 10]);
        }
    }
}
