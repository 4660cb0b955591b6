//! The ring-0 part of the virtio platform: the PVH entry and the sleep gate.
//!
//! QEMU (`-kernel`, through its firmware) and Xen PVH enter `rt_pvh_start` in 32-bit protected
//! mode with paging off and EBX = the `hvm_start_info` address. On nested hosts ring 0 is
//! emulated at ~1 µs per instruction, so, as on hvt, everything is static data (page tables,
//! GDT in virtio.ld) and the entry is straight-line: enable PAE and long mode, load CR3 and the
//! GDT, far-jump to 64-bit code, load IDTR and TR, `iretq` to `rt_start` in ring 3 — 25
//! instructions. The TSS lives in .bss (it and its I/O bitmap cost the file nothing), so the
//! entry stores its two non-zero fields (RSP0, I/O map base) itself.
//!
//! Page tables, IDT (256 gates here) and exception stubs are shared with hvt
//! (`platform::shared`), except that only page 0 is the null guard: the firmware puts the
//! start info and the command line below 1 MiB, mapped user read-only.
//!
//! After boot ring 0 is entered only by exceptions: the shared `rt_trap` report, and two #GP
//! raised on purpose as a gate (`rt_gp_gate`): ring 3's `hlt` at `rt_sleep_hlt` sleeps until a
//! TSC deadline or a device interrupt (10 ring-0 instructions plus the interrupt's bare
//! `iretq`; ring 3 writes the LAPIC EOI), and, once at boot and only if the loader put its
//! structures in page 0, its `mov %cr3` at `rt_flush_mov` flushes the TLB (9). Why not `int N` or `syscall`: on PVM,
//! `int N` from ring 3 raises #UD and `syscall` does not leave ring 3 (PVM wants its own
//! paravirtual MSRs for that); exceptions are delivered through the IDT as on hardware.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4, 8, 18              /* namesz "Xen", descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad rt_pvh_start

    .section .text.rt_entry, "ax", @progbits
    .code32
    .global rt_pvh_start
    .type rt_pvh_start, @function
rt_pvh_start:
    mov $rt_pml4, %eax
    mov %eax, %cr3
    mov $0x20, %eax             /* CR4.PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER.LME */
    mov $0x100, %eax
    xor %edx, %edx
    wrmsr
    mov $0x80000011, %eax       /* CR0.PG | ET | PE */
    mov %eax, %cr0
    lgdt rt_gdt_ptr
    movl $rt_trap_stack_top, rt_tss + 4
    movw $104, rt_tss + 102
    mov $rt_trap_stack_top, %esp
    mov %ebx, %edi
    ljmp $0x08, $rt_entry64
    .code64
rt_entry64:
    lidt rt_idt_ptr(%rip)
    mov $0x28, %ax
    ltr %ax
    pushq $0x1b
    pushq $rt_boot_stack_top - 8
    pushq $0x3002
    pushq $0x23
    pushq $rt_start
    iretq
    .global rt_entry_end
rt_entry_end:
    .size rt_pvh_start, . - rt_pvh_start

    .section .text.rt_traps, "ax", @progbits
    .balign 16
    .global rt_irq_return
rt_irq_return:
    iretq

    /* The two ring-0 services. Ring 3 asks for one by executing a privileged instruction
     * at a known address (rt_sleep_hlt: `hlt`; rt_flush_mov: `mov %cr3, %rax`); the #GP that
     * follows lands here, which checks the faulting RIP and either serves the request and
     * returns past the instruction, or goes on to the fatal-exception report. Sleep: arm the
     * TSC deadline (EDX:EAX from ring 3), `sti; hlt; cli`. */
    .balign 16
    .global rt_gp_gate
rt_gp_gate:
    cmpq $rt_sleep_hlt, 8(%rsp)   /* [rsp] error code, [rsp + 8] RIP */
    jne 1f
    mov $0x6e0, %ecx            /* IA32_TSC_DEADLINE = EDX:EAX */
    wrmsr
    sti
    hlt
    cli
    addq $1, 8(%rsp)            /* past the 1-byte hlt */
    add $8, %rsp
    iretq
1:  cmpq $rt_flush_mov, 8(%rsp)
    jne rt_trap_stubs + 13 * 16
    mov %cr3, %rax              /* reload CR3: drops every cached translation */
    mov %rax, %cr3
    addq $3, 8(%rsp)            /* past the 3-byte mov from CR3 */
    add $8, %rsp
    iretq

    /* Ring 3's side of the two services (see idle.rs). */
    .section .text.rt_services, "ax", @progbits
    .global rt_sleep
rt_sleep:                       /* (deadline_lo: edi -> eax, deadline_hi: esi -> edx) */
    mov %edi, %eax
    mov %esi, %edx
    .global rt_sleep_hlt
rt_sleep_hlt:
    hlt
    ret
    .global rt_flush_tlb
rt_flush_tlb:
    .global rt_flush_mov
rt_flush_mov:
    mov %cr3, %rax
    ret

    .section .bss.rt_tss, "aw", @nobits
    .balign 16
    .global rt_tss
rt_tss:
    .skip 104 + 8192 + 1
    .global rt_tss_end
rt_tss_end:

    .section .bss.rt_boot_stack, "aw", @nobits
    .balign 16
    .skip 16384
    .global rt_boot_stack_top
rt_boot_stack_top:
"#,
    options(att_syntax)
);
