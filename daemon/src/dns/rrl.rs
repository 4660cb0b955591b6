//! Response-rate limiting with NSD/Knot semantics: at most `rate` responses per second for each
//! (source prefix, response) pair over UDP; beyond it responses are dropped, every `slip`-th one
//! sent truncated instead (TC=1, no records) so a real client behind a spoofed flood retries
//! over TCP, which cannot be spoofed.
//!
//! A response is keyed as Knot does: its class (positive, NODATA, NXDOMAIN, error), the source
//! prefix, and for positive and NODATA answers the query name and type; every NXDOMAIN under
//! the zone shares one key (the zone's apex), so a random-name flood is one bucket, and errors
//! carry no name at all. summond gives no referrals (there are no delegations under the zone).
//!
//! The table is fixed-size and set-associative: `table_size` buckets in sets of [`WAYS`], each
//! set behind its own mutex; a key lives in the set its hash picks, and a new key evicts the
//! bucket of that set whose loss forgets least: the one with the most tokens after refill (a
//! full bucket is the same as no bucket), the least recently used among equals. A
//! spoofed-source flood therefore costs no memory beyond the table and churns only its own
//! nearly full buckets: it cannot evict the bucket of a source that is being limited, which
//! NSD's and Knot's overwrite-on-collision tables can.
//! Keys are hashed with a per-process random SipHash key, so an attacker cannot aim collisions.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use hickory_proto::rr::{LowerName, RecordType};

use crate::config::{IpNet, RrlConfig};

/// Buckets per set.
pub const WAYS: usize = 4;

/// One milli-token: buckets count in thousandths of a response so a refill of `rate` per
/// second loses nothing to integer division at millisecond resolution.
const MILLI: u64 = 1000;

/// What a response is, for the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// An answer with records.
    Positive,
    /// NOERROR without records for the name and type.
    NoData,
    /// NXDOMAIN: keyed by the zone, not the name.
    NxDomain,
    /// REFUSED, SERVFAIL, FORMERR, NOTIMP, BADVERS: keyed by the source only.
    Error,
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it truncated: TC=1, the question, no records.
    Slip,
    Drop,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Hash of the key; 0 is an empty bucket.
    key: u64,
    /// Milli-tokens left, at most `rate × MILLI` (one second's burst).
    tokens: u64,
    /// Milliseconds since the limiter started, at the last refill (wraps after 49 days; a
    /// bucket idle that long is refilled as if idle for the remainder, which is harmless).
    stamp: u32,
    /// Responses limited so far; every `slip`-th slips.
    limited: u32,
}

/// The source prefix a client counts as (`ipv4_prefix`, `ipv6_prefix`): the limiter's key and
/// the unit of fairness in the UDP loop, so both see one spoofed /24 as one client.
#[derive(Debug, Clone, Copy)]
pub struct Prefixes {
    ipv4_mask: u32,
    ipv6_mask: u128,
}

impl Prefixes {
    pub fn new(cfg: &RrlConfig) -> Prefixes {
        Prefixes {
            ipv4_mask: crate::config::prefix_mask(cfg.ipv4_prefix),
            ipv6_mask: match cfg.ipv6_prefix {
                0 => 0,
                p => u128::MAX << (128 - u32::from(p.min(128))),
            },
        }
    }

    /// `src`'s prefix; a v4-mapped IPv6 address counts as its IPv4 address.
    pub fn of(&self, src: IpAddr) -> SourcePrefix {
        match src.to_canonical() {
            IpAddr::V4(a) => SourcePrefix::V4(u32::from(a) & self.ipv4_mask),
            IpAddr::V6(a) => SourcePrefix::V6(u128::from(a) & self.ipv6_mask),
        }
    }
}

/// A client's source prefix, the family kept apart: `::1` and `0.0.0.1` are two clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourcePrefix {
    V4(u32),
    V6(u128),
}

pub struct Rrl {
    rate: u64,
    slip: u32,
    prefixes: Prefixes,
    whitelist: Vec<IpNet>,
    sets: Box<[Mutex<[Bucket; WAYS]>]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
}

impl Rrl {
    /// The limiter `cfg` describes, or `None` when it is off (`rate = 0`).
    pub fn new(cfg: &RrlConfig) -> Option<Rrl> {
        if cfg.rate == 0 {
            return None;
        }
        let nsets = cfg.table_size.div_ceil(WAYS).max(1);
        Some(Rrl {
            rate: u64::from(cfg.rate),
            slip: cfg.slip,
            prefixes: Prefixes::new(cfg),
            whitelist: cfg.whitelist.clone(),
            sets: (0..nsets)
                .map(|_| Mutex::new([Bucket::default(); WAYS]))
                .collect(),
            hasher: Default::default(),
            start: Instant::now(),
        })
    }

    /// Buckets in the table: fixed at creation, whatever the traffic.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Whether a UDP response of `class` to `src` may go out. `name` is the query name for
    /// positive and NODATA answers, the zone's apex for NXDOMAIN inside the zone (the query
    /// name outside it), ignored for errors.
    pub fn check(
        &self,
        src: IpAddr,
        class: ResponseClass,
        qtype: RecordType,
        name: &LowerName,
    ) -> Verdict {
        let ms = self.start.elapsed().as_millis();
        // Truncation is the intended wrap (see `Bucket::stamp`).
        self.check_at(src, class, qtype, name, ms as u32)
    }

    fn check_at(
        &self,
        src: IpAddr,
        class: ResponseClass,
        qtype: RecordType,
        name: &LowerName,
        now: u32,
    ) -> Verdict {
        let src = src.to_canonical();
        if self.whitelist.iter().any(|n| n.contains(&src)) {
            return Verdict::Send;
        }
        let prefix = self.prefixes.of(src);
        let key = match class {
            ResponseClass::Error => self.hasher.hash_one((class, prefix)),
            ResponseClass::NxDomain => self.hasher.hash_one((class, prefix, name)),
            _ => self
                .hasher
                .hash_one((class, prefix, u16::from(qtype), name)),
        }
        .max(1);
        let set = &self.sets[(key % self.sets.len() as u64) as usize];
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = match set.iter().position(|b| b.key == key) {
            Some(i) => &mut set[i],
            None => {
                // Evict the bucket whose loss forgets least: the one with the most tokens
                // after refill (a full one is the same as a new one), the oldest among equals.
                let victim = set
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, b)| {
                        if b.key == 0 {
                            (u64::MAX, 0)
                        } else {
                            let idle = since(now, b.stamp).unwrap_or(0);
                            ((b.tokens + idle * self.rate).min(self.rate * MILLI), idle)
                        }
                    })
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                set[victim] = Bucket {
                    key,
                    tokens: self.rate * MILLI,
                    stamp: now,
                    limited: 0,
                };
                &mut set[victim]
            }
        };
        let elapsed = match since(now, bucket.stamp) {
            Some(ms) => {
                bucket.stamp = now;
                ms
            }
            // A response whose clock was read before another's took the lock: no refill, and
            // the bucket keeps the later stamp.
            None => 0,
        };
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate * MILLI);
        if bucket.tokens >= MILLI {
            bucket.tokens -= MILLI;
            return Verdict::Send;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        if self.slip != 0 && bucket.limited % self.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// Milliseconds from `stamp` to `now` on the wrapping clock; `None` when `now` is (slightly)
/// earlier, which happens when responses race for a bucket. Anything more than a minute
/// "earlier" is really a bucket idle for most of a wrap (49 days): as good as a full refill.
fn since(now: u32, stamp: u32) -> Option<u64> {
    const RACE: u32 = 60_000;
    let d = now.wrapping_sub(stamp);
    if d <= u32::MAX - RACE {
        Some(u64::from(d))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn rrl(rate: u32, slip: u32, whitelist: &[&str], table_size: usize) -> Rrl {
        Rrl::new(&RrlConfig {
            rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            whitelist: whitelist.iter().map(|n| n.parse().unwrap()).collect(),
            table_size,
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn name(s: &str) -> LowerName {
        LowerName::from_str(s).unwrap()
    }

    fn ask(r: &Rrl, src: &str, n: &str, now: u32) -> Verdict {
        r.check_at(
            ip(src),
            ResponseClass::Positive,
            RecordType::A,
            &name(n),
            now,
        )
    }

    fn sent(r: &Rrl, src: &str, n: &str, now: u32, count: usize) -> usize {
        (0..count)
            .filter(|_| ask(r, src, n, now) == Verdict::Send)
            .count()
    }

    #[test]
    fn off_at_rate_zero() {
        assert!(Rrl::new(&RrlConfig {
            rate: 0,
            ..RrlConfig::default()
        })
        .is_none());
    }

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let r = rrl(10, 0, &[], 1024);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 0, 100), 10);
        // 100 ms refill one response at 10/s.
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 100, 100), 1);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 150, 100), 0);
        // Fractions carry over: 50 + 50 ms make one more.
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 200, 100), 1);
        // Over 3 s of flood: the burst plus rate × time.
        let total: usize = (300..3300)
            .map(|t| sent(&r, "192.0.2.1", "a.test.", t, 2))
            .sum();
        assert_eq!(total, 30);
        // A long pause refills only up to one second's worth.
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 100_000, 100), 10);
        // Responses that read the clock before a later one took the bucket refill nothing.
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 100_500, 5), 5);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 100_499, 100), 0);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 100_400, 100), 0);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 100_600, 100), 1);
        // Across the clock's wrap.
        let r = rrl(10, 0, &[], 64);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", u32::MAX - 50, 100), 10);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 49, 100), 1);
    }

    #[test]
    fn keyed_by_prefix_name_type_and_class() {
        let r = rrl(2, 0, &[], 1024);
        assert_eq!(sent(&r, "192.0.2.1", "a.test.", 0, 10), 2);
        // Same /24: same bucket.
        assert_eq!(sent(&r, "192.0.2.200", "a.test.", 0, 10), 0);
        // Another /24, another name, another type, another class: fresh buckets.
        assert_eq!(sent(&r, "192.0.3.1", "a.test.", 0, 10), 2);
        assert_eq!(sent(&r, "192.0.2.1", "b.test.", 0, 10), 2);
        let aaaa = (0..10)
            .filter(|_| {
                r.check_at(
                    ip("192.0.2.1"),
                    ResponseClass::Positive,
                    RecordType::AAAA,
                    &name("a.test."),
                    0,
                ) == Verdict::Send
            })
            .count();
        assert_eq!(aaaa, 2);
        // NXDOMAINs are keyed by the zone passed in, errors by nothing but the source.
        let nx = |n: &str| {
            r.check_at(
                ip("192.0.2.1"),
                ResponseClass::NxDomain,
                RecordType::A,
                &name(n),
                0,
            )
        };
        assert_eq!(nx("test."), Verdict::Send);
        assert_eq!(nx("test."), Verdict::Send);
        assert_eq!(nx("test."), Verdict::Drop);
        let err = |t: RecordType, n: &str| {
            r.check_at(ip("192.0.2.9"), ResponseClass::Error, t, &name(n), 0)
        };
        assert_eq!(err(RecordType::A, "x.example."), Verdict::Send);
        assert_eq!(err(RecordType::MX, "y.example."), Verdict::Send);
        assert_eq!(err(RecordType::TXT, "z.example."), Verdict::Drop);
        // IPv6 by /56; a v4-mapped source counts as its IPv4 address.
        assert_eq!(sent(&r, "2001:db8:0:1::1", "a.test.", 0, 10), 2);
        assert_eq!(sent(&r, "2001:db8:0:ff::2", "a.test.", 0, 10), 0);
        assert_eq!(sent(&r, "2001:db8:0:100::1", "a.test.", 0, 10), 2);
        assert_eq!(sent(&r, "::ffff:192.0.3.7", "a.test.", 0, 10), 0);
    }

    #[test]
    fn an_ipv6_client_never_shares_an_ipv4_clients_bucket() {
        // With whole-address prefixes `::1` and `0.0.0.1` have the same 128-bit value.
        let r = Rrl::new(&RrlConfig {
            rate: 2,
            slip: 0,
            ipv4_prefix: 32,
            ipv6_prefix: 128,
            whitelist: Vec::new(),
            table_size: 1024,
        })
        .unwrap();
        assert_eq!(sent(&r, "0.0.0.1", "a.test.", 0, 10), 2);
        assert_eq!(sent(&r, "::1", "a.test.", 0, 10), 2);
        assert_eq!(sent(&r, "::", "a.test.", 0, 10), 2);
        assert_eq!(sent(&r, "0.0.0.0", "a.test.", 0, 10), 2);
    }

    #[test]
    fn slip_sends_every_nth_limited_response_truncated() {
        for (slip, want) in [(0, 0), (1, 10), (2, 5), (3, 3)] {
            let r = rrl(1, slip, &[], 64);
            assert_eq!(ask(&r, "192.0.2.1", "a.test.", 0), Verdict::Send);
            let v: Vec<Verdict> = (0..10)
                .map(|_| ask(&r, "192.0.2.1", "a.test.", 0))
                .collect();
            let slipped = v.iter().filter(|v| **v == Verdict::Slip).count();
            assert_eq!(slipped, want, "slip {slip}: {v:?}");
            assert!(v.iter().all(|v| *v != Verdict::Send));
            if slip == 2 {
                assert_eq!(v[0], Verdict::Drop);
                assert_eq!(v[1], Verdict::Slip);
            }
        }
    }

    #[test]
    fn whitelisted_sources_are_never_limited() {
        let r = rrl(1, 2, &["198.51.100.0/24", "::1/128"], 64);
        assert_eq!(sent(&r, "198.51.100.7", "a.test.", 0, 1000), 1000);
        assert_eq!(sent(&r, "::1", "a.test.", 0, 1000), 1000);
        assert_eq!(sent(&r, "::ffff:198.51.100.7", "a.test.", 0, 10), 10);
        assert_eq!(sent(&r, "198.51.101.7", "a.test.", 0, 1000), 1);
    }

    #[test]
    fn the_table_is_bounded_and_a_flood_of_new_keys_does_not_free_a_limited_source() {
        let r = rrl(5, 0, &[], 64);
        assert_eq!(r.capacity(), 64);
        let victim = |t: u32| sent(&r, "203.0.113.1", "hot.test.", t, 50);
        assert_eq!(victim(0), 5);
        for t in 1..=200u32 {
            // Each ms: 500 responses to spoofed sources (100,000 keys in all), and the hot
            // source keeps asking.
            for i in 0..500u32 {
                let a = std::net::Ipv4Addr::from(0x0a00_0000 + ((t * 500 + i) << 8));
                r.check_at(
                    IpAddr::V4(a),
                    ResponseClass::Positive,
                    RecordType::A,
                    &name("hot.test."),
                    t,
                );
            }
            // 5/s over 200 ms is one response: only the refill, never a fresh burst.
            let _ = victim(t);
        }
        assert_eq!(r.capacity(), 64);
        assert!(victim(201) <= 1);
    }
}
