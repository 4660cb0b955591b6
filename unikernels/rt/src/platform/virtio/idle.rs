//! Sleeping without burning the host's CPU. A ring-3 guest cannot `hlt` — so it does, at
//! `rt_sleep_hlt`, and the #GP gate in entry.rs, recognising that address, arms the TSC
//! deadline (`wrmsr` IA32_TSC_DEADLINE with EDX:EAX), runs `sti; hlt; cli` and returns past the
//! `hlt`: ten emulated instructions plus the timer interrupt's `iretq`. (An `int` gate or
//! `syscall` would be the classic choice; on PVM neither reaches ring 0, see entry.rs.) The
//! local APIC's timer is put in TSC-deadline mode from ring 3 (its registers are memory-mapped
//! and the page tables map them for ring 3), every vector from 32 up points at a bare `iretq`,
//! and ring 3 writes the EOI after the gate returns. The legacy PICs are masked.
//!
//! The vCPU wakes at the deadline or when a device interrupt routed with `route_level_irq`
//! (virtio-net's receive interrupt, through the IOAPIC) arrives; without such a route the net
//! event loop bounds each sleep to a millisecond and looks at the used ring after it. Without a
//! TSC-deadline timer (CPUID.1:ECX[24]) the sleeps spin with `pause` instead.

use core::arch::x86_64::__cpuid;
use core::sync::atomic::{AtomicBool, Ordering};

use super::pio::outb;
use crate::platform::trap;
use crate::time::rdtsc;

const LAPIC: u64 = 0xfee0_0000;
const LAPIC_EOI: u64 = LAPIC + 0xb0;
const LAPIC_SVR: u64 = LAPIC + 0xf0;
const LAPIC_LVT_TIMER: u64 = LAPIC + 0x320;
const TIMER_VECTOR: u32 = 0x20;
/// The device interrupt's vector (a higher priority class than the timer's).
const DEVICE_VECTOR: u32 = 0x30;
const IOAPIC: u64 = 0xfec0_0000;
const SPURIOUS_VECTOR: u32 = 0xff;

static HALT_OK: AtomicBool = AtomicBool::new(false);

extern "C" {
    static rt_irq_return: u8;
    static rt_gp_gate: u8;
    fn rt_sleep(deadline_lo: u32, deadline_hi: u32);
    fn rt_flush_tlb();
}

const GP_VECTOR: usize = 13;

fn lapic_write(reg: u64, value: u32) {
    // SAFETY: the local APIC's registers are identity-mapped (user, read-write) at 0xfee00000;
    // these writes only configure its timer and acknowledge interrupts.
    unsafe { (reg as *mut u32).write_volatile(value) }
}

pub(crate) fn init() {
    // Mask both 8259s: nothing the firmware left running may interrupt a `hlt`.
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    let irq_return = &raw const rt_irq_return as u64;
    for vector in 32..256 {
        // SAFETY: the virtio IDT has 256 gates; interrupts are off.
        unsafe { trap::set_gate(vector, irq_return, 0) };
    }

    // SAFETY: as above; the gate passes every other #GP on to the fatal report.
    unsafe { trap::set_gate(GP_VECTOR, &raw const rt_gp_gate as u64, 0) };
    let deadline_timer = __cpuid(1).ecx & (1 << 24) != 0;
    if deadline_timer {
        lapic_write(LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
        lapic_write(LAPIC_LVT_TIMER, (2 << 17) | TIMER_VECTOR);
        HALT_OK.store(true, Ordering::Relaxed);
    }
}

/// Whether sleeping halts the vCPU (true) or spins (no TSC-deadline timer).
pub fn halts() -> bool {
    HALT_OK.load(Ordering::Relaxed)
}

/// Routes ISA/PCI interrupt line `irq` (a level-triggered, active-high PCI interrupt as QEMU's
/// `pc` machine routes it through the PIIX to IOAPIC pin `irq`) to the CPU, so that it ends a
/// sleep. Returns false (and routes nothing) if sleeping cannot halt or `irq` is not 1-15.
pub fn route_level_irq(irq: u8) -> bool {
    if !halts() || !(1..=15).contains(&irq) {
        return false;
    }
    let ioapic_write = |reg: u32, value: u32| {
        // SAFETY: the IOAPIC's two registers (select, window) are identity-mapped for ring 3 at
        // 0xfec00000; this only programs redirection entry `irq`.
        unsafe {
            (IOAPIC as *mut u32).write_volatile(reg);
            ((IOAPIC + 0x10) as *mut u32).write_volatile(value);
        }
    };
    let reg = 0x10 + 2 * u32::from(irq);
    ioapic_write(reg + 1, 0); // destination: APIC ID 0
    ioapic_write(reg, DEVICE_VECTOR | (1 << 15)); // fixed, physical, active high, level, unmasked
    true
}

/// Sleeps until the TSC reaches `deadline` (or a little after), or a routed device interrupt
/// arrives; `ack` runs before the local APIC's EOI (it must quiet a level-triggered device).
pub fn sleep_until_then(deadline: u64, ack: impl FnOnce()) {
    if !halts() {
        while rdtsc() < deadline {
            core::hint::spin_loop();
        }
        ack();
        return;
    }
    // SAFETY: rt_sleep's `hlt` traps to the gate, which arms the TSC deadline, halts with
    // interrupts on until an interrupt arrives and returns past the `hlt`; it touches no memory
    // of ours. The interrupts' `iretq` frames use the trap stack (TSS.RSP0).
    unsafe { rt_sleep(deadline as u32, (deadline >> 32) as u32) };
    ack();
    // Both the device's and the timer's interrupt may have been taken (the second in the
    // instant between the gate's `iretq` and `cli`); an EOI with nothing in service is ignored.
    lapic_write(LAPIC_EOI, 0);
    lapic_write(LAPIC_EOI, 0);
}

/// Sleeps until the TSC reaches `deadline` (or a little after).
pub fn sleep_until(deadline: u64) {
    if !halts() {
        while rdtsc() < deadline {
            core::hint::spin_loop();
        }
        return;
    }
    // SAFETY: rt_sleep's `hlt` traps to the gate, which arms the TSC deadline, halts with
    // interrupts on until the timer fires and returns past the `hlt`; it touches no memory of
    // ours. The timer's `iretq` uses the trap stack (TSS.RSP0).
    unsafe { rt_sleep(deadline as u32, (deadline >> 32) as u32) };
    lapic_write(LAPIC_EOI, 0);
}

/// Drops every cached address translation (nine ring-0 instructions through the #GP gate),
/// after ring 3 made a page table entry not present.
pub fn flush_tlb() {
    // SAFETY: rt_flush_tlb's `mov %cr3` traps to the gate, which reloads CR3 with its own value
    // and returns past it; RAX is clobbered, which the C ABI allows.
    unsafe { rt_flush_tlb() }
}
