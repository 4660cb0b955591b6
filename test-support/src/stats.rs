//! Millisecond samples and their percentiles for the libvirt benches (the launcher's
//! libvirt_boot and summon-tests' libvirt_cold), so both compute their figures the same way.

use std::time::Duration;

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank `p`-th percentile of `v` (sorted in place); `p` = 100 is the maximum.
pub fn pct(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() * p).div_ceil(100))
        .saturating_sub(1)
        .min(v.len() - 1);
    v[i]
}
