//! The only ring-0 code on the boot path, and the static data it loads.
//!
//! The tender enters `_start` in 64-bit ring 0 with RSP = top of memory and RDI = boot info.
//! On nested hosts ring-0 code is emulated at about 1 µs per instruction while ring 3 runs
//! natively, so everything that can be built at link time is (page tables with user bits here,
//! GDT with the TSS descriptor in hvt.ld) and the entry is straight-line: load CR3, GDTR, IDTR
//! and TR, then `iretq` to `rt_start` in ring 3 with IOPL=3 (so `out` to the hypercall ports and
//! nothing else privileged keeps working there). No loops, no bss zeroing (the tender hands over
//! zeroed memory), interrupts stay off for good (hvt guests wait in POLL).
//!
//! Page tables (0..0xffff not present as a null guard, 0x10000..0xfffff read-only: boot info,
//! manifest, command line), the 32-entry IDT and the exception stubs are shared with virtio
//! (`platform::shared`); exceptions land on a static ring-0 stack (TSS.RSP0) and `rt_trap`
//! reports the fault and halts with 255.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .text.rt_entry, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    mov $rt_pml4, %eax
    mov %rax, %cr3
    lgdt rt_gdt_ptr(%rip)
    lidt rt_idt_ptr(%rip)
    mov $0x28, %ax
    ltr %ax
    mov %rsp, %rax
    pushq $0x1b
    push %rax
    pushq $0x3002
    pushq $0x23
    pushq $rt_start
    iretq
    .global rt_entry_end
rt_entry_end:
    .size _start, . - _start

    .section .data.rt_tss, "aw", @progbits
    .balign 16
    .global rt_tss
rt_tss:
    .long 0
    .quad rt_trap_stack_top
    .fill 11, 8, 0
    .short 0
    .short 104
    .fill 0xa0, 1, 0xff
    .byte 0, 0
    .byte 0xff
    .global rt_tss_end
rt_tss_end:
"#,
    options(att_syntax)
);
