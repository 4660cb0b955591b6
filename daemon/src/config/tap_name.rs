//! The name of a service's tap: decided here, once, from the service's name, so that the config
//! check (two services whose names would collide) and the network plumbing agree.

use summon_launcher::tap;

/// Every interface summond creates starts with this, so leftovers can be found after a crash.
pub const TAP_PREFIX: &str = "sm-";

/// The interface name for a service: `sm-NAME`, or `sm-PREFIX-HASH` when that would not fit
/// in IFNAMSIZ (15 bytes plus NUL). Deterministic, so a restarted daemon finds the same name.
pub fn tap_name(service: &str) -> String {
    let max = tap::MAX_NAME_LEN;
    if TAP_PREFIX.len() + service.len() <= max {
        return format!("{TAP_PREFIX}{service}");
    }
    // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in service.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let head: String = service.chars().take(6).collect();
    let head = head.trim_end_matches('-');
    format!("{TAP_PREFIX}{head}-{:05x}", h & 0xf_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_are_stable() {
        assert_eq!(tap_name("hello"), "sm-hello");
        assert_eq!(tap_name("abcdefghijkl"), "sm-abcdefghijkl");
        let long = tap_name("a-very-long-service-name");
        assert!(long.len() <= 15, "{long}");
        assert!(long.starts_with("sm-a-very"));
        assert_eq!(long, tap_name("a-very-long-service-name"));
        assert_ne!(long, tap_name("a-very-long-service-nama"));
        let dashy = tap_name("abcde--------------x");
        assert!(dashy.len() <= 15 && !dashy.contains("--"), "{dashy}");
    }
}
