//! Ethernet MAC addresses: the one parser and formatter used by the config, the VMM, libvirt
//! domain XML, `summon-run` and the tests.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MAC address {0:?} (expected xx:xx:xx:xx:xx:xx)")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }

    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// A unicast MAC (group bit clear) that is not all zero: one a NIC may have.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// A locally administered unicast MAC derived from an IPv4 address (02:53:a:b:c:d), so a
    /// guest keeps its MAC across restarts without the operator picking one.
    pub const fn from_ipv4(ip: Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x02, 0x53, o[0], o[1], o[2], o[3]])
    }

    /// A random unicast, locally administered MAC.
    pub fn random_local() -> MacAddr {
        let mut mac = [0u8; 6];
        // SAFETY: getrandom writes at most `mac.len()` bytes into `mac`, which outlives the call.
        let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
        if n != mac.len() as isize {
            // getrandom on 6 bytes does not fail after boot; fall back to time and pid anyway.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id()) << 32;
            mac.copy_from_slice(&t.to_le_bytes()[..6]);
        }
        mac[0] = (mac[0] & 0xfe) | 0x02;
        MacAddr(mac)
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(octets: [u8; 6]) -> MacAddr {
        MacAddr(octets)
    }
}

impl From<MacAddr> for [u8; 6] {
    fn from(mac: MacAddr) -> [u8; 6] {
        mac.0
    }
}

impl PartialEq<[u8; 6]> for MacAddr {
    fn eq(&self, other: &[u8; 6]) -> bool {
        self.0 == *other
    }
}

/// Six two-digit hex groups separated by `:` (or `-`), either case.
impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<MacAddr, MacParseError> {
        let bad = || MacParseError(s.to_string());
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in mac.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(MacAddr(mac)),
            Some(_) => Err(bad()),
        }
    }
}

/// Lower-case `aa:bb:cc:dd:ee:ff`.
impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let m: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.octets(), [0x52, 0x54, 0, 0xab, 0xcd, 1]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(
            "02-00-00-00-00-2a".parse::<MacAddr>().unwrap(),
            MacAddr::new([2, 0, 0, 0, 0, 0x2a])
        );
        for bad in [
            "",
            "zz",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "2:00:00:00:00:01",
            "+2:00:00:00:00:01",
            "02:00:00:00:00:0g",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_and_random_macs_are_local_unicast() {
        assert_eq!(
            MacAddr::from_ipv4(Ipv4Addr::new(10, 77, 0, 10)).octets(),
            [0x02, 0x53, 10, 77, 0, 10]
        );
        for _ in 0..64 {
            let m = MacAddr::random_local().octets();
            assert_eq!(m[0] & 0x03, 0x02, "{m:x?}");
        }
        assert!(!MacAddr::new([1, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!MacAddr::new([0; 6]).is_unicast());
        assert!(MacAddr::new([2, 0, 0, 0, 0, 1]).is_unicast());
    }
}
