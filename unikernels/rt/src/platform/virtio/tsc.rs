//! The TSC frequency, for the monotonic clock: from the hypervisor's CPUID timing leaf
//! (0x40000010, EAX = TSC kHz; KVM/QEMU expose it when the TSC is invariant and known), else
//! CPUID 0x15 (crystal ratio), else measured against PIT channel 2 over about 2 ms.

use core::arch::x86_64::__cpuid;

use super::pio::{inb, outb};
use crate::time::rdtsc;

/// How the frequency was found, for the docs and the curious (`rt::platform::virtio::tsc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    HypervisorLeaf,
    Cpuid15,
    Pit,
}

static mut SOURCE: Source = Source::Pit;

/// Where the frequency came from.
pub fn source() -> Source {
    // SAFETY: written once in `frequency` during start-up, before anything reads it.
    unsafe { SOURCE }
}

fn set_source(s: Source) {
    // SAFETY: start-up only, one CPU.
    unsafe { SOURCE = s }
}

/// TSC ticks per second.
pub fn frequency() -> u64 {
    let hv = __cpuid(0x4000_0000);
    if hv.eax >= 0x4000_0010 {
        let khz = __cpuid(0x4000_0010).eax;
        if khz != 0 {
            set_source(Source::HypervisorLeaf);
            return u64::from(khz) * 1000;
        }
    }
    let max = __cpuid(0).eax;
    if max >= 0x15 {
        let l = __cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            set_source(Source::Cpuid15);
            return u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax);
        }
    }
    set_source(Source::Pit);
    pit_calibrate()
}

const PIT_HZ: u64 = 1_193_182;
/// PIT ticks to measure over: about 2 ms.
const PIT_SPAN: u16 = 2400;

/// Counts TSC ticks while PIT channel 2 (gated on through port 0x61, no speaker) counts down
/// PIT_SPAN. Each reading latches the count between two TSC reads and takes their midpoint, so
/// the cost of the port exits does not bias the result.
fn pit_calibrate() -> u64 {
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0
    outb(0x42, 0xff);
    outb(0x42, 0xff);
    let (t0, c0) = read_pit();
    let (mut t1, mut c1) = (t0, c0);
    // Bounded: a missing PIT (microvm has none unless asked; reads give 0xffff) is noticed
    // after 64 unchanged reads and falls back to a guess below.
    let mut unchanged = 0;
    for _ in 0..1_000_000 {
        let (t, c) = read_pit();
        unchanged = if c == c1 { unchanged + 1 } else { 0 };
        (t1, c1) = (t, c);
        if c0.wrapping_sub(c1) >= PIT_SPAN || unchanged >= 64 {
            break;
        }
    }
    let ticks = u64::from(c0.wrapping_sub(c1));
    if ticks < u64::from(PIT_SPAN) || t1 <= t0 {
        crate::println!("rt: no PIT to calibrate the TSC against; assuming 1 GHz");
        return 1_000_000_000;
    }
    (t1 - t0) * PIT_HZ / ticks
}

fn read_pit() -> (u64, u16) {
    let before = rdtsc();
    outb(0x43, 0x80); // latch channel 2
    let after = rdtsc();
    let lo = inb(0x42);
    let hi = inb(0x42);
    (before / 2 + after / 2, u16::from_le_bytes([lo, hi]))
}
