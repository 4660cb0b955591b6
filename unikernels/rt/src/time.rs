//! Clocks: monotonic from the TSC (rdtsc runs natively in ring 3; CR4.TSD is clear) scaled by the
//! tender's `cpu_cycle_freq` (hvt) or a calibrated frequency (virtio), wall clock from the
//! platform (WALLTIME on hvt, the CMOS RTC on virtio).

use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_START: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);

pub(crate) fn init(cpu_cycle_freq: u64) {
    TSC_START.store(rdtsc(), Ordering::Relaxed);
    if cpu_cycle_freq != 0 {
        TSC_HZ.store(cpu_cycle_freq, Ordering::Relaxed);
    }
}

/// The raw time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no memory effects and is allowed in ring 3 here.
    unsafe { _rdtsc() }
}

/// Nanoseconds since the guest started.
pub fn monotonic_ns() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_START.load(Ordering::Relaxed));
    (u128::from(ticks) * 1_000_000_000 / u128::from(TSC_HZ.load(Ordering::Relaxed))) as u64
}

/// Nanoseconds since the Unix epoch (the host's CLOCK_REALTIME).
pub fn wall_ns() -> u64 {
    crate::platform::walltime()
}

/// TSC ticks in `ns` nanoseconds.
pub fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(TSC_HZ.load(Ordering::Relaxed)) / 1_000_000_000) as u64
}
