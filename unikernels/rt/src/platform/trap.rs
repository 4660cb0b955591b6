//! CPU exceptions (a null-pointer access, a stack overflow into unmapped memory, `ud2`): the
//! only unplanned entry into ring 0 after boot. Reported on the console, then HALT 255.

use core::arch::asm;

extern "C" {
    /// The IDT's first word (shared.rs defines the table: 32 gates on hvt, 256 on
    /// virtio).
    static mut rt_idt: u64;
    static rt_trap_stubs: u8;
}

/// Points IDT gate `vector` at `handler`: a 64-bit interrupt gate, present, code selector 0x08,
/// no IST, callable from ring `dpl` with `int`.
///
/// # Safety
/// `vector` must be inside the platform's IDT, and no interrupt or exception may be in flight.
pub(crate) unsafe fn set_gate(vector: usize, handler: u64, dpl: u64) {
    let idt = &raw mut rt_idt;
    let low = (handler & 0xffff)
        | (0x08 << 16)
        | ((0x8e00 | (dpl & 3) << 13) << 32)
        | ((handler >> 16) & 0xffff) << 48;
    // SAFETY: the caller keeps `vector` inside the table; the IDT is plain memory that the CPU
    // reads only when it delivers an interrupt or exception.
    unsafe {
        idt.add(2 * vector).write_volatile(low);
        idt.add(2 * vector + 1).write_volatile(handler >> 32);
    }
}

/// Clears every gate of an IDT of `vectors` entries, so that the next exception escalates to a
/// triple fault (how the virtio platform powers off when nothing else works).
///
/// # Safety
/// `vectors` must not exceed the platform's IDT.
#[cfg_attr(not(feature = "virtio"), allow(dead_code))]
pub(crate) unsafe fn clear(vectors: usize) {
    // SAFETY: the caller bounds `vectors`.
    unsafe { (&raw mut rt_idt).write_bytes(0, 2 * vectors) }
}

/// Points the 32 exception gates at their stubs. Runs in ring 3: the IDT is plain memory and
/// the CPU reads it only when an exception arrives, so this costs no emulated instructions.
pub(crate) fn install() {
    let base = &raw const rt_trap_stubs as u64;
    for vector in 0..32 {
        // SAFETY: every platform's IDT has at least 32 gates; nothing is in flight at start-up.
        unsafe { set_gate(vector, base + 16 * vector as u64, 0) };
    }
}

/// What the CPU and the stub pushed.
#[repr(C)]
pub struct TrapFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

/// Called by the stubs in ring 0 on the trap stack; never returns.
#[unsafe(no_mangle)]
extern "C" fn rt_trap(frame: &TrapFrame) -> ! {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effect; this runs in ring 0.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("?");
    crate::println!(
        "rt: fatal exception {} (vector {}, error {:#x}) at rip {:#x}, rsp {:#x}, cs {:#x}, rflags {:#x}, ss {:#x}{}",
        name,
        frame.vector,
        frame.error,
        frame.rip,
        frame.rsp,
        frame.cs,
        frame.rflags,
        frame.ss,
        Cr2(frame.vector, cr2),
    );
    crate::halt(summon_hvt_abi::exit::ABORT)
}

struct Cr2(u64, u64);

impl core::fmt::Display for Cr2 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == 14 {
            write!(f, ", address {:#x}", self.1)
        } else {
            Ok(())
        }
    }
}
