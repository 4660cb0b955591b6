//! CPU exceptions (a null-pointer access, a stack overflow into unmapped memory, `ud2`): the
//! only thing that ever enters ring 0 after boot. Reported on the console, then HALT 255.

use core::arch::asm;
use core::ptr::addr_of_mut;

use super::hypercall;

extern "C" {
    static mut rt_idt: [u64; 64];
    static rt_trap_stubs: u8;
}

/// Points the 32 exception gates at their stubs. Runs in ring 3: the IDT is plain memory and
/// the CPU reads it only when an exception arrives, so this costs no emulated instructions.
pub(crate) fn install() {
    let base = &raw const rt_trap_stubs as u64;
    // SAFETY: rt_idt is the 512-byte table from entry.rs that IDTR points at; nothing else
    // writes it and no exception can be in flight while the gates are written.
    let idt = unsafe { &mut *addr_of_mut!(rt_idt) };
    for vector in 0..32u64 {
        let handler = base + 16 * vector;
        // 64-bit interrupt gate, present, DPL 0, code selector 0x08, no IST.
        idt[2 * vector as usize] =
            (handler & 0xffff) | (0x08 << 16) | (0x8e00 << 32) | ((handler >> 16) & 0xffff) << 48;
        idt[2 * vector as usize + 1] = handler >> 32;
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
    hypercall::halt(summon_hvt_abi::exit::ABORT)
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
