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
//! Page tables identity-map 4 GiB: the first 2 MiB with 4 KiB pages (0..0xffff not present as a
//! null guard, 0x10000..0xfffff read-only: boot info, manifest, command line), the rest with
//! 2 MiB pages; every entry has the user bit and its accessed/dirty bits already set, so the CPU
//! never writes to them.
//!
//! Exceptions (there are no interrupts) go through a 32-entry IDT whose gates ring-3 code fills
//! in at start-up (`trap::install`) to per-vector stubs here, onto a static ring-0 stack
//! (TSS.RSP0); `rt_trap` reports the fault and halts with 255.

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
rt_pt:
    .fill 16, 8, 0
    .set rt_i, 16
    .rept 240
    .quad (rt_i << 12) | 0x25
    .set rt_i, rt_i + 1
    .endr
    .rept 256
    .quad (rt_i << 12) | 0x67
    .set rt_i, rt_i + 1
    .endr

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

    .section .data.rt_idt_ptr, "aw", @progbits
    .balign 8
    .short 0, 0, 0
rt_idt_ptr:
    .short 32 * 16 - 1
    .quad rt_idt

    .section .bss.rt_idt, "aw", @nobits
    .balign 16
    .global rt_idt
rt_idt:
    .skip 32 * 16

    .section .bss.rt_trap_stack, "aw", @nobits
    .balign 16
    .skip 16384
rt_trap_stack_top:
"#,
    options(att_syntax)
);
