//! DNS counters for `/metrics`: answers by transport, query type and response code, the answer
//! latency histogram, truncated answers and packets dropped without a reply.
//!
//! The query path pays for this with one call, [`DnsMetrics::observe`], from
//! `DnsService::answer`: two clock reads, a few byte reads of the packets it already holds,
//! and three or four relaxed atomic additions. No lock, no allocation, no string or hash.
//! Counters are striped: each thread picks one of [`STRIPES`] cache-line-aligned stripes
//! once, so threads answering in parallel do not fight over cache lines. Totals are summed
//! over the stripes only when `/metrics` is scraped ([`DnsMetrics::totals`]).
//!
//! This module knows nothing about Prometheus; `crate::metrics` names and encodes the totals.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::answer::Transport;

/// Query types counted on their own (type code, name); every other type is `other`.
pub const QTYPES: [(u16, &str); 11] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (6, "SOA"),
    (2, "NS"),
    (5, "CNAME"),
    (12, "PTR"),
    (15, "MX"),
    (16, "TXT"),
    (65, "HTTPS"),
    (255, "ANY"),
];
const QTYPE_SLOTS: usize = QTYPES.len() + 1;

/// Response codes counted (`other` last). BADVERS is the extended code 16 (RFC 6891).
pub const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];
const BADVERS: usize = 6;
const OTHER_RCODE: usize = 7;

/// Transports, by [`transport_slot`].
pub const TRANSPORTS: [&str; 2] = ["udp", "tcp"];

/// Upper bounds of the latency histogram buckets, in nanoseconds (then `+Inf`). Answers take
/// microseconds; the upper buckets catch stalls.
pub const LATENCY_BOUNDS_NS: [u64; 12] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Counter stripes; threads beyond this share stripes (still correct, atomics).
pub const STRIPES: usize = 16;

const QUERY_SLOTS: usize = TRANSPORTS.len() * QTYPE_SLOTS * RCODES.len();

#[repr(align(128))]
struct Stripe {
    answers: [AtomicU64; QUERY_SLOTS],
    latency: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    latency_sum_ns: AtomicU64,
    truncated: [AtomicU64; TRANSPORTS.len()],
    dropped: [AtomicU64; TRANSPORTS.len()],
}

impl Default for Stripe {
    fn default() -> Self {
        Self {
            answers: [const { AtomicU64::new(0) }; QUERY_SLOTS],
            latency: [const { AtomicU64::new(0) }; LATENCY_BOUNDS_NS.len() + 1],
            latency_sum_ns: AtomicU64::new(0),
            truncated: [const { AtomicU64::new(0) }; TRANSPORTS.len()],
            dropped: [const { AtomicU64::new(0) }; TRANSPORTS.len()],
        }
    }
}

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's stripe, the same for every server in the process.
    static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
}

/// The DNS counters of one server.
pub struct DnsMetrics {
    stripes: Box<[Stripe]>,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }
}

impl std::fmt::Debug for DnsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsMetrics").finish_non_exhaustive()
    }
}

impl DnsMetrics {
    /// Runs `answer` for the packet `query` and counts the outcome: its response code and
    /// query type, the time taken, whether it was truncated, or that no reply is sent.
    #[inline]
    pub fn observe<'s>(
        &self,
        query: &[u8],
        transport: Transport,
        answer: impl FnOnce() -> Option<&'s [u8]>,
    ) -> Option<&'s [u8]> {
        let started = Instant::now();
        let response = answer();
        self.record(query, transport, response, started.elapsed());
        response
    }

    fn record(&self, query: &[u8], transport: Transport, response: Option<&[u8]>, took: Duration) {
        let stripe = &self.stripes[STRIPE.with(|s| *s)];
        let transport = transport_slot(transport);
        let Some(response) = response else {
            stripe.dropped[transport].fetch_add(1, Relaxed);
            return;
        };
        let slot =
            (transport * QTYPE_SLOTS + qtype_slot(query)) * RCODES.len() + rcode_slot(response);
        stripe.answers[slot].fetch_add(1, Relaxed);
        if response.get(2).is_some_and(|flags| flags & 0x02 != 0) {
            stripe.truncated[transport].fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        stripe.latency[bucket].fetch_add(1, Relaxed);
        stripe.latency_sum_ns.fetch_add(nanos, Relaxed);
    }

    /// The counters summed over all stripes.
    pub fn totals(&self) -> DnsTotals {
        let sum = |f: &dyn Fn(&Stripe) -> &AtomicU64| -> u64 {
            self.stripes.iter().map(|s| f(s).load(Relaxed)).sum()
        };
        DnsTotals {
            answers: std::array::from_fn(|i| sum(&|s| &s.answers[i])),
            latency: std::array::from_fn(|i| sum(&|s| &s.latency[i])),
            latency_sum: Duration::from_nanos(sum(&|s| &s.latency_sum_ns)),
            truncated: std::array::from_fn(|i| sum(&|s| &s.truncated[i])),
            dropped: std::array::from_fn(|i| sum(&|s| &s.dropped[i])),
        }
    }
}

/// [`DnsMetrics`] summed at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTotals {
    answers: [u64; QUERY_SLOTS],
    /// Per bucket (not cumulative), the last one `+Inf`.
    pub latency: [u64; LATENCY_BOUNDS_NS.len() + 1],
    pub latency_sum: Duration,
    /// By transport ([`TRANSPORTS`]).
    pub truncated: [u64; TRANSPORTS.len()],
    /// By transport: packets that got no reply (shorter than a header, or responses).
    pub dropped: [u64; TRANSPORTS.len()],
}

impl DnsTotals {
    /// `(transport, qtype, rcode, count)` for every non-zero count.
    pub fn answers(&self) -> impl Iterator<Item = (&'static str, &'static str, &'static str, u64)> {
        self.answers
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(slot, count)| {
                let rcode = slot % RCODES.len();
                let qtype = slot / RCODES.len() % QTYPE_SLOTS;
                let transport = slot / RCODES.len() / QTYPE_SLOTS;
                let qtype = QTYPES.get(qtype).map_or("other", |(_, name)| name);
                (TRANSPORTS[transport], qtype, RCODES[rcode], *count)
            })
    }

    /// Answers with response code REFUSED, over every transport and type.
    pub fn refused(&self) -> u64 {
        self.answers()
            .filter(|(_, _, rcode, _)| *rcode == "REFUSED")
            .map(|(_, _, _, count)| count)
            .sum()
    }
}

fn transport_slot(transport: Transport) -> usize {
    match transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

/// The slot of the query's (first) question type; `other` when the packet has none.
fn qtype_slot(query: &[u8]) -> usize {
    let other = QTYPES.len();
    if query.len() < 12 || query[4..6] == [0, 0] {
        return other;
    }
    let Some(end) = skip_name(query, 12) else {
        return other;
    };
    let Some(&[high, low]) = query.get(end..end + 2) else {
        return other;
    };
    let qtype = u16::from_be_bytes([high, low]);
    QTYPES
        .iter()
        .position(|(code, _)| *code == qtype)
        .unwrap_or(other)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(packet: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *packet.get(at)?;
        match len & 0xC0 {
            0xC0 => return Some(at + 2),
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// The slot of the response's code; the extended code BADVERS needs a look at the OPT record,
/// which is then the only record (RFC 6891 §6.1.3), so only those answers are parsed further.
fn rcode_slot(response: &[u8]) -> usize {
    let Some(&flags) = response.get(3) else {
        return OTHER_RCODE;
    };
    let low = usize::from(flags & 0x0F);
    if low == 0
        && response.get(6..10) == Some(&[0, 0, 0, 0])
        && response.get(10..12) == Some(&[0, 1])
    {
        let question = if response[4..6] == [0, 0] {
            Some(12)
        } else {
            skip_name(response, 12).map(|end| end + 4)
        };
        let opt = question.and_then(|at| {
            let end = skip_name(response, at)?;
            response.get(end..end + 5)
        });
        if let Some(&[0, 41, _, _, extended]) = opt {
            return if extended == 1 { BADVERS } else { OTHER_RCODE };
        }
    }
    if low <= 5 { low } else { OTHER_RCODE }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: [u8; 2], counts: [u16; 4]) -> Vec<u8> {
        let mut packet = vec![0x12, 0x34, flags[0], flags[1]];
        for count in counts {
            packet.extend_from_slice(&count.to_be_bytes());
        }
        packet
    }

    fn question(packet: &mut Vec<u8>, qtype: u16) {
        packet.extend_from_slice(b"\x03web\x07service\x05local\x00");
        packet.extend_from_slice(&qtype.to_be_bytes());
        packet.extend_from_slice(&[0, 1]);
    }

    #[test]
    fn query_types_are_read_from_the_question() {
        for (qtype, name) in [(1, "A"), (33, "SRV"), (65, "HTTPS"), (99, "other")] {
            let mut query = header([0, 0], [1, 0, 0, 0]);
            question(&mut query, qtype);
            let slot = qtype_slot(&query);
            assert_eq!(QTYPES.get(slot).map_or("other", |(_, n)| *n), name);
        }
        assert_eq!(qtype_slot(&[0; 5]), QTYPES.len());
        assert_eq!(qtype_slot(&header([0, 0], [1, 0, 0, 0])), QTYPES.len());
    }

    #[test]
    fn response_codes_include_badvers_from_the_opt_record() {
        let nxdomain = header([0x84, 0x03], [1, 0, 1, 0]);
        assert_eq!(RCODES[rcode_slot(&nxdomain)], "NXDOMAIN");
        let mut badvers = header([0x84, 0x00], [1, 0, 0, 1]);
        question(&mut badvers, 1);
        badvers.extend_from_slice(&[0, 0, 41, 4, 0xd0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(RCODES[rcode_slot(&badvers)], "BADVERS");
        let mut noerror_with_opt = header([0x84, 0x00], [1, 0, 0, 1]);
        question(&mut noerror_with_opt, 1);
        noerror_with_opt.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(RCODES[rcode_slot(&noerror_with_opt)], "other");
        assert_eq!(RCODES[rcode_slot(&header([0x84, 0x09], [0; 4]))], "other");
    }

    #[test]
    fn observe_counts_answers_truncations_latency_and_drops() {
        let metrics = DnsMetrics::default();
        let mut query = header([0, 0], [1, 0, 0, 0]);
        question(&mut query, 33);
        let truncated = header([0x86, 0x00], [1, 0, 0, 0]);
        let refused = header([0x80, 0x05], [1, 0, 0, 0]);
        for response in [&truncated, &refused, &refused] {
            metrics.observe(&query, Transport::Udp, || Some(response.as_slice()));
        }
        metrics.observe(&query, Transport::Tcp, || None);
        let totals = metrics.totals();
        let answers: Vec<_> = totals.answers().collect();
        assert_eq!(
            answers,
            [("udp", "SRV", "NOERROR", 1), ("udp", "SRV", "REFUSED", 2)]
        );
        assert_eq!(totals.refused(), 2);
        assert_eq!(totals.truncated, [1, 0]);
        assert_eq!(totals.dropped, [0, 1]);
        assert_eq!(totals.latency.iter().sum::<u64>(), 3);
    }
}
