/* A PVH guest for the libvirt tests: QEMU's direct kernel boot (or Xen PVH) enters _start in
 * 32-bit protected mode. It prints a greeting on COM1, then "tick N" about every 2^28 TSC
 * cycles, N counting a..z and around: a resumed guest continues its count, a rebooted one would
 * greet again. */
    .section .note.Xen, "a"
    .align 4
    .long 4, 4, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start

    .text
    .code32
    .globl _start
_start:
    mov $greeting, %esi
    call puts
    mov $'a', %bl
tick:
    rdtsc
    mov %edx, %edi          /* wait until the TSC's bit 28 and up change */
    shrd $28, %edx, %eax
    mov %eax, %ebp
1:  pause
    rdtsc
    shrd $28, %edx, %eax
    cmp %eax, %ebp
    je 1b
    mov $ticktext, %esi
    call puts
    mov %bl, %al
    call putc
    mov $'\n', %al
    call putc
    inc %bl
    cmp $'z'+1, %bl
    jne tick
    mov $'a', %bl
    jmp tick

puts:
    movb (%esi), %al
    test %al, %al
    jz 2f
    call putc
    inc %esi
    jmp puts
2:  ret

putc:
    mov $0x3f8, %dx
    outb %al, %dx
    ret

greeting: .asciz "summon-libvirt-guest: hello from PVH\n"
ticktext: .asciz "tick "
