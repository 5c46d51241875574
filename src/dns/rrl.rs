//! Response-rate limiting (RRL) for DNS over UDP, so that srvdns cannot be used as an
//! amplifier against a spoofed source.
//!
//! Responses are counted per source *prefix* (/24 for IPv4, /56 for IPv6 by default: one
//! customer network, as BIND and Knot count them), each prefix with a token bucket of `rate`
//! responses a second and a burst of `burst`. Beyond that, a response is *slipped* or dropped:
//! every `slip`-th limited response goes out truncated — the header and the question with TC
//! set and no records, smaller than the query — so that a real client retries over TCP, which
//! a spoofed source cannot; the others are dropped. `slip = 1` (the default, as Knot's)
//! truncates every limited response; `slip = 0` drops them all. Loopback sources are exempt
//! unless configured otherwise. TCP is never limited: it cannot be spoofed.
//!
//! Memory is bounded and fixed: a table of [`TABLE_SLOTS`] atomic words, one bucket per slot,
//! indexed by a keyed hash of the prefix (the key is random per process, so a flooder cannot
//! aim at a victim's slot). Each word holds a 16-bit tag of the prefix and the bucket's
//! *theoretical arrival time* (GCRA, the token bucket in one number) in microseconds. Two
//! prefixes that share a slot while both are active share their bucket, as in Knot: the
//! worst case limits an innocent prefix together with a flooder, and it still gets TC answers.
//!
//! [`RateLimiter::check`] is pure in time (the caller passes "now") and lock-free, so it
//! can sit on the UDP hot path and be unit-tested without sleeping.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Buckets in the table (a power of two): 512 KiB.
pub const TABLE_SLOTS: usize = 1 << 16;

/// The largest truncated answer: a header and one question (a name of at most 255 bytes).
const SLIP_CAPACITY: usize = 12 + 255 + 4;

/// How responses are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrlConfig {
    /// Responses a second per prefix; 0 turns rate limiting off.
    pub rate: u32,
    /// Responses a prefix may get at once after a quiet spell.
    pub burst: u32,
    /// Every `slip`-th limited response is sent truncated (TC); the others are dropped.
    /// 1 truncates them all, 0 drops them all.
    pub slip: u32,
    /// Prefix length IPv4 sources are counted by.
    pub ipv4_prefix: u8,
    /// Prefix length IPv6 sources are counted by.
    pub ipv6_prefix: u8,
    /// Whether loopback sources are limited too (off by default: local tools and tests).
    pub limit_loopback: bool,
}

impl Default for RrlConfig {
    fn default() -> Self {
        Self {
            rate: 1000,
            burst: 2000,
            slip: 1,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            limit_loopback: false,
        }
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it as it is.
    Send,
    /// Send it truncated: header and question, TC set, no records.
    Slip,
    /// Send nothing.
    Drop,
}

/// A truncated copy of a response, built without allocating.
#[derive(Debug)]
pub struct SlipBuffer {
    bytes: [u8; SLIP_CAPACITY],
    len: usize,
}

impl Default for SlipBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; SLIP_CAPACITY],
            len: 0,
        }
    }
}

/// The rate limiter. Share it (`Arc`) between every task that answers UDP.
pub struct RateLimiter {
    config: RrlConfig,
    /// Microseconds between two responses at `rate`.
    interval_us: u64,
    /// How far ahead of now a bucket's arrival time may run: `burst` intervals.
    tolerance_us: u64,
    table: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    limited: AtomicU64,
    epoch: Instant,
}

const TAG_BITS: u32 = 16;
const TIME_MASK: u64 = (1 << (64 - TAG_BITS)) - 1;

impl RateLimiter {
    /// A limiter, or `None` when the configuration turns rate limiting off.
    pub fn new(config: RrlConfig) -> Option<Self> {
        if config.rate == 0 {
            return None;
        }
        let interval_us = (1_000_000 / u64::from(config.rate)).max(1);
        let table = (0..TABLE_SLOTS).map(|_| AtomicU64::new(0)).collect();
        Some(Self {
            config,
            interval_us,
            tolerance_us: interval_us * u64::from(config.burst.max(1)),
            table,
            hasher: std::collections::hash_map::RandomState::new(),
            limited: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Decides for one response to `source`, now.
    pub fn check_now(&self, source: IpAddr) -> Verdict {
        self.check(source, self.epoch.elapsed())
    }

    /// Decides for one response to `source` at `now` (time since any fixed start; it must
    /// not go backwards by more than a burst).
    pub fn check(&self, source: IpAddr, now: Duration) -> Verdict {
        let source = source.to_canonical();
        if source.is_loopback() && !self.config.limit_loopback {
            return Verdict::Send;
        }
        let (slot, tag) = self.slot_and_tag(source);
        // +1 so that a zero word (an unused slot) is always stale.
        let now_us = (now.as_micros() as u64).saturating_add(1) & TIME_MASK;
        let cell = &self.table[slot];
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let (old_tag, old_tat) = (current >> (64 - TAG_BITS), current & TIME_MASK);
            // A bucket whose arrival time is past is full: whoever owned it, it is ours now.
            // An active one is shared, whoever owns it.
            let (owner, tat) = if old_tat <= now_us {
                (tag, now_us)
            } else {
                (old_tag, old_tat)
            };
            if tat - now_us >= self.tolerance_us {
                return self.limited();
            }
            let next = (owner << (64 - TAG_BITS)) | ((tat + self.interval_us) & TIME_MASK);
            match cell.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Verdict::Send,
                Err(actual) => current = actual,
            }
        }
    }

    fn limited(&self) -> Verdict {
        match self.config.slip {
            0 => Verdict::Drop,
            1 => Verdict::Slip,
            n => {
                let count = self.limited.fetch_add(1, Ordering::Relaxed);
                if count.is_multiple_of(u64::from(n)) {
                    Verdict::Slip
                } else {
                    Verdict::Drop
                }
            }
        }
    }

    /// Applies the verdict for `source` to a response: the response itself, its truncated
    /// form (built in `slip`), or nothing.
    pub fn apply<'a>(
        &self,
        source: IpAddr,
        response: &'a [u8],
        slip: &'a mut SlipBuffer,
    ) -> Option<&'a [u8]> {
        match self.check_now(source) {
            Verdict::Send => Some(response),
            Verdict::Drop => None,
            Verdict::Slip => truncate(response, slip),
        }
    }

    fn slot_and_tag(&self, source: IpAddr) -> (usize, u64) {
        let mut hasher = self.hasher.build_hasher();
        match source {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4) & prefix_mask_32(self.config.ipv4_prefix);
                hasher.write_u8(4);
                hasher.write_u32(bits);
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & prefix_mask_128(self.config.ipv6_prefix);
                hasher.write_u8(6);
                hasher.write_u128(bits);
            }
        }
        let hash = hasher.finish();
        let slot = (hash as usize) & (TABLE_SLOTS - 1);
        let tag = hash >> (64 - TAG_BITS);
        (slot, tag)
    }
}

fn prefix_mask_32(len: u8) -> u32 {
    match len {
        0 => 0,
        len if len >= 32 => u32::MAX,
        len => u32::MAX << (32 - u32::from(len)),
    }
}

fn prefix_mask_128(len: u8) -> u128 {
    match len {
        0 => 0,
        len if len >= 128 => u128::MAX,
        len => u128::MAX << (128 - u32::from(len)),
    }
}

/// The truncated form of `response`: its header with TC set and every count but the
/// question's zeroed, and its question. `None` when the response is not one srvdns could
/// have written (then nothing is sent).
fn truncate<'a>(response: &[u8], slip: &'a mut SlipBuffer) -> Option<&'a [u8]> {
    let header = response.get(..12)?;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    let mut end = 12;
    if questions > 0 {
        // One question: a name (labels, or a pointer, which ends it), then type and class.
        loop {
            let len = usize::from(*response.get(end)?);
            if len & 0xC0 == 0xC0 {
                end += 2;
                break;
            }
            end += 1 + len;
            if len == 0 {
                break;
            }
        }
        end += 4;
    }
    let copied = response.get(..end).filter(|q| q.len() <= SLIP_CAPACITY)?;
    slip.bytes[..end].copy_from_slice(copied);
    slip.bytes[2] |= 0x02; // TC
    slip.bytes[4..6].copy_from_slice(&u16::from(questions > 0).to_be_bytes());
    slip.bytes[6..12].fill(0);
    slip.len = end;
    Some(&slip.bytes[..slip.len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, slip: u32) -> RateLimiter {
        RateLimiter::new(RrlConfig {
            rate,
            burst,
            slip,
            ..RrlConfig::default()
        })
        .unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sent(limiter: &RateLimiter, source: &str, at: Duration, count: usize) -> usize {
        (0..count)
            .filter(|_| limiter.check(ip(source), at) == Verdict::Send)
            .count()
    }

    #[test]
    fn rate_zero_turns_limiting_off() {
        assert!(
            RateLimiter::new(RrlConfig {
                rate: 0,
                ..RrlConfig::default()
            })
            .is_none()
        );
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills() {
        let limiter = limiter(10, 5, 1);
        let start = Duration::from_secs(100);
        assert_eq!(sent(&limiter, "192.0.2.1", start, 20), 5);
        assert_eq!(limiter.check(ip("192.0.2.1"), start), Verdict::Slip);
        // 10 a second: after 300 ms, 3 more.
        assert_eq!(
            sent(
                &limiter,
                "192.0.2.1",
                start + Duration::from_millis(300),
                20
            ),
            3
        );
        // After a quiet spell the full burst is back, never more.
        assert_eq!(
            sent(&limiter, "192.0.2.1", start + Duration::from_secs(60), 20),
            5
        );
    }

    #[test]
    fn sources_are_counted_by_prefix() {
        let limiter = limiter(10, 5, 1);
        let at = Duration::from_secs(1);
        // The same /24: one bucket.
        assert_eq!(sent(&limiter, "192.0.2.1", at, 3), 3);
        assert_eq!(sent(&limiter, "192.0.2.200", at, 10), 2);
        // Another /24 is unaffected.
        assert_eq!(sent(&limiter, "192.0.3.1", at, 10), 5);
        // IPv6: the same /56, then another.
        assert_eq!(sent(&limiter, "2001:db8:0:1::1", at, 3), 3);
        assert_eq!(sent(&limiter, "2001:db8:0:ff::2", at, 10), 2);
        assert_eq!(sent(&limiter, "2001:db8:0:100::1", at, 10), 5);
        // An IPv4-mapped IPv6 source is its IPv4 address.
        assert_eq!(sent(&limiter, "::ffff:192.0.2.9", at, 10), 0);
    }

    #[test]
    fn loopback_is_exempt_unless_configured() {
        let exempt = limiter(1, 1, 1);
        assert_eq!(sent(&exempt, "127.0.0.1", Duration::from_secs(1), 100), 100);
        assert_eq!(sent(&exempt, "::1", Duration::from_secs(1), 100), 100);
        let strict = RateLimiter::new(RrlConfig {
            rate: 1,
            burst: 1,
            limit_loopback: true,
            ..RrlConfig::default()
        })
        .unwrap();
        assert_eq!(sent(&strict, "127.0.0.1", Duration::from_secs(1), 100), 1);
    }

    #[test]
    fn slip_sends_every_nth_limited_response_truncated() {
        let at = Duration::from_secs(1);
        let drop_all = limiter(1, 1, 0);
        assert_eq!(drop_all.check(ip("192.0.2.1"), at), Verdict::Send);
        assert_eq!(drop_all.check(ip("192.0.2.1"), at), Verdict::Drop);
        let every_third = limiter(1, 1, 3);
        every_third.check(ip("192.0.2.1"), at);
        let verdicts: Vec<Verdict> = (0..6)
            .map(|_| every_third.check(ip("192.0.2.1"), at))
            .collect();
        let slips = verdicts.iter().filter(|v| **v == Verdict::Slip).count();
        assert_eq!(slips, 2, "{verdicts:?}");
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Drop).count(), 4);
    }

    #[test]
    fn memory_stays_fixed_under_many_prefixes() {
        let limiter = limiter(10, 20, 1);
        let at = Duration::from_secs(1);
        for i in 0..200_000u32 {
            limiter.check(IpAddr::from((i << 8).to_be_bytes()), at);
        }
        assert_eq!(limiter.table.len(), TABLE_SLOTS);
        // 200,000 active prefixes in 65,536 slots share buckets, a few per slot: a new
        // prefix still gets answers at once.
        let fresh = (0..100u8)
            .filter(|i| limiter.check(IpAddr::from([198, 51, *i, 1]), at) == Verdict::Send)
            .count();
        assert_eq!(fresh, 100);
    }

    #[test]
    fn truncation_keeps_header_and_question() {
        // ID 0xBEEF, QR AA, NOERROR, 1 question, 2 answers, 0, 1 additional.
        let mut response = vec![0xBE, 0xEF, 0x84, 0x00, 0, 1, 0, 2, 0, 0, 0, 1];
        response.extend_from_slice(b"\x03web\x07service\x05local\x00\x00\x01\x00\x01");
        let question_end = response.len();
        response.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        let mut slip = SlipBuffer::default();
        let truncated = truncate(&response, &mut slip).unwrap();
        assert_eq!(truncated.len(), question_end);
        assert_eq!(&truncated[..4], &[0xBE, 0xEF, 0x86, 0x00]);
        assert_eq!(&truncated[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&truncated[12..], &response[12..question_end]);
        // A header-only answer (FORMERR) stays a header.
        let formerr = [0, 1, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(truncate(&formerr, &mut slip).unwrap().len(), 12);
        // Garbage is not answered.
        assert!(truncate(&[0, 1, 2], &mut slip).is_none());
        assert!(truncate(&[0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'a'], &mut slip).is_none());
    }
}
