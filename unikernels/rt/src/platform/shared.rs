//! Ring-0 code and data both platforms lay out the same way: the exception stubs, the identity
//! page tables, the IDT and the ring-0 trap stack. The entries (hvt/entry.rs, virtio/entry.rs)
//! keep only what differs: how the CPU arrives, the TSS, and virtio's sleep gate.
//!
//! Page tables identity-map 4 GiB: the first 2 MiB with 4 KiB pages (the first
//! `NULL_GUARD_PAGES` not present, the rest of the first MiB user read-only for what the loader
//! puts there), the rest with 2 MiB pages; every entry has the user bit and its accessed/dirty
//! bits already set, so the CPU never writes to them.
//!
//! The IDT holds `IDT_VECTORS` gates; ring-3 code points the 32 exception gates at the stubs
//! here (`trap::install`). Each stub pushes a zero error code where the CPU pushes none, then
//! its vector, and goes to `rt_trap` on the ring-0 stack (TSS.RSP0 = `rt_trap_stack_top`).

use core::arch::global_asm;

/// hvt: 0..0xffff is the null guard; the tender's boot info, manifest and command line sit at
/// 0x10000..0xfffff.
#[cfg(not(feature = "virtio"))]
const NULL_GUARD_PAGES: usize = 16;
/// virtio: only page 0; the firmware puts the start info and the command line below 1 MiB.
#[cfg(feature = "virtio")]
const NULL_GUARD_PAGES: usize = 1;

/// hvt: exceptions only (interrupts stay off for good).
#[cfg(not(feature = "virtio"))]
const IDT_VECTORS: usize = 32;
/// virtio: exceptions and the device and timer interrupts the sleep gate waits for.
#[cfg(feature = "virtio")]
const IDT_VECTORS: usize = 256;

global_asm!(
    r#"
    .section .text.rt_traps, "ax", @progbits
    .balign 16
    .global rt_trap_stubs
rt_trap_stubs:
    .set rt_v, 0
    .rept 32
    .balign 16
    .if (rt_v == 8) || ((rt_v >= 10) && (rt_v <= 14)) || (rt_v == 17) || (rt_v == 21) || (rt_v == 29) || (rt_v == 30)
    .else
    pushq $0
    .endif
    pushq $rt_v
    jmp rt_trap_common
    .set rt_v, rt_v + 1
    .endr
rt_trap_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call rt_trap
    ud2

    .section .data.rt_pagetables, "aw", @progbits
    .balign 4096
    .global rt_pml4
rt_pml4:
    .quad rt_pdpt + 0x27
    .fill 511, 8, 0
rt_pdpt:
    .quad rt_pd + 0x0000 + 0x27
    .quad rt_pd + 0x1000 + 0x27
    .quad rt_pd + 0x2000 + 0x27
    .quad rt_pd + 0x3000 + 0x27
    .fill 508, 8, 0
rt_pd:
    .quad rt_pt + 0x27
    .set rt_i, 1
    .rept 2047
    .quad (rt_i << 21) | 0xe7
    .set rt_i, rt_i + 1
    .endr
    .global rt_pt
rt_pt:
    .fill {guard}, 8, 0
    .set rt_i, {guard}
    .rept 256 - {guard}
    .quad (rt_i << 12) | 0x25
    .set rt_i, rt_i + 1
    .endr
    .rept 256
    .quad (rt_i << 12) | 0x67
    .set rt_i, rt_i + 1
    .endr

    .section .data.rt_idt_ptr, "aw", @progbits
    .balign 8
    .short 0, 0, 0
    .global rt_idt_ptr
rt_idt_ptr:
    .short {vectors} * 16 - 1
    .quad rt_idt

    .section .bss.rt_idt, "aw", @nobits
    .balign 16
    .global rt_idt
rt_idt:
    .skip {vectors} * 16

    .section .bss.rt_trap_stack, "aw", @nobits
    .balign 16
    .skip 16384
    .global rt_trap_stack_top
rt_trap_stack_top:
"#,
    guard = const NULL_GUARD_PAGES,
    vectors = const IDT_VECTORS,
    options(att_syntax)
);
